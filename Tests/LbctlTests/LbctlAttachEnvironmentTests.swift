// lbctl attach in the situations an operator meets first: no --gateway-mac
// (the next hop comes from the kernel's routes and neighbours) and a user
// without the privileges BPF needs. Everything runs in a test namespace.
import Foundation
import SluiceTestSupport
import Testing

@Suite("lbctl attach and its environment")
struct LbctlAttachEnvironmentTests {
    /// A test namespace with veth lb0 <-> peer0 and a private bpffs (`body` gets its pin
    /// path), removed however `body` ends.
    func withLB0(_ body: (TestNamespace, String) async throws -> Void) async throws {
        try await withTestNamespace { namespace in
            let bpffs = try BPFFSMount()
            defer { bpffs.close() }
            try await namespace.addVethPair("lb0", peer: "peer0")
            try await body(namespace, "\(bpffs.path)/lb")
        }
    }

    @Test("without --gateway-mac, attach takes the MAC of the default route's neighbour")
    func gatewayComesFromTheKernel() async throws {
        try await withLB0 { namespace, pin in
            try await namespace.ip("addr", "add", "10.77.0.2/24", "dev", "lb0")
            try await namespace.ip("route", "add", "default", "via", "10.77.0.1", "dev", "lb0")
            try await namespace.ip("neigh", "replace", "10.77.0.1", "lladdr", "02:77:00:00:00:01", "dev", "lb0", "nud", "permanent")

            let attach = try await Lbctl.run("attach", "lb0", "--mode", "generic", pinPath: pin, in: namespace)
            #expect(attach.status == 0, "\(attach)")
            #expect(attach.stdout.contains("gateway 02:77:00:00:00:01"), "\(attach)")
            let status = try await Lbctl.run("status", "--json", pinPath: pin, in: namespace).json() as? [String: Any]
            let node = status?["node"] as? [String: Any]
            #expect(node?["gateway_mac"] as? String == "02:77:00:00:00:01", "\(String(describing: status))")
            #expect(try await Lbctl.run("detach", "lb0", pinPath: pin, in: namespace).status == 0)
        }
    }

    @Test("without a default route and without --gateway-mac, attach fails with exit 1, says why and pins nothing")
    func noRouteNoGateway() async throws {
        try await withLB0 { namespace, pin in

            let attach = try await Lbctl.run("attach", "lb0", pinPath: pin, in: namespace)
            #expect(attach.status == 1, "\(attach)")
            #expect(attach.stderr.contains("no IPv4 default route via lb0") && attach.stderr.contains("--gateway-mac"), "\(attach)")
            #expect(!FileManager.default.fileExists(atPath: pin), "a failed attach left pins at \(pin)")
            #expect(try await namespace.xdpProgramID(of: "lb0") == nil)
        }
    }

    @Test("a caller without CAP_BPF gets exit 1 and a message that names the missing privilege")
    func missingPrivileges() async throws {
        try await withLB0 { namespace, pin in

            // setpriv drops every capability (root keeps its uid, not its powers).
            let unprivileged = try await namespace.exec(["/usr/bin/setpriv", "--inh-caps=-all", "--bounding-set=-all",
                                                         Lbctl.path, "attach", "lb0", "--gateway-mac", "02:00:00:00:00:01",
                                                         "--pin-path", pin])
            #expect(unprivileged.status == 1, "\(unprivileged)")
            #expect(unprivileged.stderr.contains("needs root, or CAP_BPF"), "\(unprivileged)")
            #expect(try await namespace.xdpProgramID(of: "lb0") == nil)
        }
    }
}
