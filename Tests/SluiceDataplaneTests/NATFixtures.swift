// The namespace the NAT tests run in: a balancer attached to lb0 (10.77.0.1/24) of a veth,
// a gateway 10.77.0.254 for 10.2.0.0/16 and a silent one (10.77.0.253) for 10.3.0.0/16, the
// gateway's and the on-link backend 10.77.0.2's neighbour entries permanent, so that apply
// resolves them without waiting on ARP.
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport

let gatewayMAC = "02:00:00:77:00:fe"
let onLinkMAC = "02:00:00:77:00:02"

/// Builds the namespace, attaches a fresh balancer to lb0 and runs `steps` on a thread in
/// it, handing it the balancer, lb0's index and lb0's MAC.
func withAttachedNATBalancer<T: Sendable>(_ steps: @escaping @Sendable (TestDataplane, Int32, String) -> T) async throws -> T {
    try await withTestNamespace { namespace in
        try await namespace.addVethPair("lb0", peer: "peer0")
        try await namespace.ip("addr", "add", "10.77.0.1/24", "dev", "lb0")
        try await namespace.ip("route", "add", "10.2.0.0/16", "via", "10.77.0.254", "dev", "lb0")
        try await namespace.ip("route", "add", "10.3.0.0/16", "via", "10.77.0.253", "dev", "lb0")  // a silent gateway
        try await namespace.ip("neigh", "replace", "10.77.0.254", "lladdr", gatewayMAC, "dev", "lb0", "nud", "permanent")
        try await namespace.ip("neigh", "replace", "10.77.0.2", "lladdr", onLinkMAC, "dev", "lb0", "nud", "permanent")
        let lbMAC = try MACAddress(bytes: await namespace.macAddress(of: "lb0"))!.description
        return try await namespace.run {
            let lb = try TestDataplane()
            defer { lb.close() }
            _ = try Attacher.attach(interface: "lb0", mode: .generic, gateway: MACAddress(bytes: TestDataplane.gatewayMAC),
                                    pinPath: lb.pinPath, conntrackSize: TestDataplane.conntrackSize)
            return steps(lb, Int32(if_nametoindex("lb0")), lbMAC)
        }
    }
}
