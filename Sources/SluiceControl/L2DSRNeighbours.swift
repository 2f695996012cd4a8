// What an apply of l2dsr services needs before it writes: the balancer attached, every l2dsr
// backend on-link on an attached interface, and the backends' MACs from the neighbour table.
import SluiceCore

/// An l2dsr backend applied without a MAC: the data plane drops its packets (no_neighbour)
/// until the neighbour answers and a later apply or the agent writes its MAC.
public struct UnresolvedNeighbour: Sendable, Equatable, Codable, CustomStringConvertible {
    public var service: String
    public var backend: IPAddress
    public var interface: String

    public var description: String {
        "service \"\(service)\": backend \(backend) has no neighbour entry on \(interface) (MAC unresolved: its packets are dropped as no_neighbour until it answers)"
    }
}

struct L2DSRNeighbours {
    /// The interface each l2dsr backend is on-link on, by address.
    var interfaces: [IPAddress: NetworkInterface] = [:]
    /// The MACs found (all of them after `resolve`, when every neighbour answered).
    var macs: [IPAddress: MACAddress] = [:]

    /// Checks `desired`'s l2dsr services against the interfaces the balancer runs on; a
    /// service that cannot be served is bad input, and nothing is written.
    init(checking desired: ServiceFile, attached: [String]) throws(ControlError) {
        let services = desired.services.filter { $0.forwarding == .l2dsr }
        guard !services.isEmpty else { return }
        let routes = Route.table()
        for service in services {
            guard !attached.isEmpty else {
                throw .badInput("service \"\(service.name)\": forwarding l2dsr needs the balancer attached to an interface (lbctl attach IFACE)")
            }
            for backend in service.backends {
                guard let name = Route.onLinkInterface(for: backend.address, among: attached, routes: routes) else {
                    throw .badInput("service \"\(service.name)\": backend \(backend.address) is not on-link on \(attached.joined(separator: ", ")) (no connected route covers it); forwarding l2dsr needs backends on the balancer's segment")
                }
                interfaces[backend.address] = try NetworkInterface.named(name)
            }
        }
    }

    /// Reads the neighbour table and makes the kernel resolve the missing ones, all at once,
    /// waiting up to `timeout` in all.
    mutating func resolve(timeout: Duration = .seconds(1)) {
        macs = Neighbours.resolve(interfaces, timeout: timeout)
    }

    /// The l2dsr backends of `desired` without a MAC.
    func unresolved(in desired: ServiceFile) -> [UnresolvedNeighbour] {
        desired.services.filter { $0.forwarding == .l2dsr }.flatMap { service in
            service.backends.filter { macs[$0.address] == nil }.map {
                UnresolvedNeighbour(service: service.name, backend: $0.address, interface: interfaces[$0.address]?.name ?? "?")
            }
        }
    }
}

extension Dataplane {
    /// Brings the MACs of the applied l2dsr backends in line with the neighbour table, and pokes
    /// the neighbours that are missing or not confirmed so the kernel checks them again (the
    /// agent calls it every second). A neighbour that vanished keeps its last MAC. Returns how
    /// many backend slots changed.
    public func refreshNeighbourMACs() throws(ControlError) -> Int {
        let backends = try appliedState().services.flatMap(\.neighbourBackends)
        guard !backends.isEmpty else { return 0 }
        let attached = XDPHook.attachedInterfaces(programID: try programID()).map(\.name)
        let routes = Route.table(), table = Neighbours.table()
        var changes: [UInt32: MACAddress] = [:]
        for backend in backends {
            guard let name = Route.onLinkInterface(for: backend.address, among: attached, routes: routes),
                  let interface = try? NetworkInterface.named(name) else { continue }
            let entry = table.first { $0.address == backend.address && $0.interfaceIndex == interface.index }
            if entry?.isConfirmed != true { Neighbours.poke(backend.address, via: interface) }
            if let mac = entry?.mac, mac != backend.mac { changes[backend.id] = mac }
        }
        return try setBackendMACs(changes)
    }
}
