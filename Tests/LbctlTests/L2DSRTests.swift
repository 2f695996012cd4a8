// l2dsr on a real veth: the balancer's namespace holds lb0 (10.77.0.1/24, fd77::1/64), a
// backend's namespace its peer (10.77.0.2/24, fd77::2/64). lbctl refuses l2dsr before attach and for an off-link backend, resolves
// the peer's MAC through ARP on apply, and a running agent follows the peer's MAC when it changes.
import Foundation
import SluiceCore
import SluiceTestSupport
import Testing

@Suite("l2dsr neighbours on a real veth")
struct L2DSRTests {
    private func services(_ backends: [String]) -> String {
        """
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp
            forwarding: l2dsr
            backends: [\(backends.map { "{address: \($0)}" }.joined(separator: ", "))]
          - name: web6
            vip: "2001:db8::10"
            port: 80
            protocol: tcp
            forwarding: l2dsr
            backends: [ {address: "fd77::2"} ]
        """
    }

    /// The MACs `lbctl status --json` shows for the l2dsr backends (NSNull: unresolved), and the node.
    private func status(_ pin: String, in namespace: TestNamespace) async throws -> (macs: [String: Any], node: [String: Any]) {
        let result = try await Lbctl.run("status", "--json", pinPath: pin, in: namespace)
        try #require(result.status == 0, "\(result)")
        let report = try #require(try result.json() as? [String: Any])
        let node = try #require(report["node"] as? [String: Any])
        let services = try #require(report["services"] as? [[String: Any]])
        var macs: [String: Any] = [:]
        for service in services {
            #expect(service["forwarding"] as? String == "l2dsr")
            for backend in service["backends"] as? [[String: Any]] ?? [] { macs[backend["address"] as! String] = backend["mac"] ?? "missing" }
        }
        return (macs, node)
    }

    @Test("refused before attach and off-link; the peer's MAC resolved on apply and followed by the agent")
    func neighboursAreResolvedAndFollowed() async throws {
        try await withTestNamespace { balancer in
            try await withTestNamespace(prefix: "sltest") { backend in
                let bpffs = try BPFFSMount()
                try await withCleanup {
                    try await run(balancer: balancer, backend: backend, pin: bpffs.path + "/lb")
                } cleanup: { bpffs.close() }
            }
        }
    }

    private func run(balancer: TestNamespace, backend: TestNamespace, pin: String) async throws {
        try await balancer.addVethPair("lb0", peer: "peer0")
        try await balancer.ip("link", "set", "peer0", "netns", backend.name)
        try await backend.ip("link", "set", "peer0", "up")
        try await balancer.ip("addr", "add", "10.77.0.1/24", "dev", "lb0")
        try await backend.ip("addr", "add", "10.77.0.2/24", "dev", "peer0")
        // The test namespaces start with IPv6 off; these two links get it (no DAD: usable at once).
        for (namespace, link, address) in [(balancer, "lb0", "fd77::1/64"), (backend, "peer0", "fd77::2/64")] {
            try await namespace.exec(["/bin/sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
                                      + "echo 0 > /proc/sys/net/ipv6/conf/\(link)/disable_ipv6"], check: true)
            try await namespace.ip("addr", "add", address, "dev", link, "nodad")
        }
        let files = try ScratchDirectory()
        let good = try files.write("good.yaml", services(["10.77.0.2", "10.77.0.3"]))

        let early = try await Lbctl.run("apply", "-f", good, pinPath: pin, in: balancer)
        #expect(early.status == 2, "\(early)")
        #expect(early.stderr.contains(#"service "web": forwarding l2dsr needs the balancer attached to an interface (lbctl attach IFACE)"#), "\(early)")

        let attached = try await Lbctl.run("attach", "lb0", "--gateway-mac", Fixtures.gatewayMAC, pinPath: pin, in: balancer)
        try #require(attached.status == 0, "\(attached)")
        let afterAttach = try await status(pin, in: balancer).node
        #expect(afterAttach["tunnel_mtu"] as? Int == 1500, "attach writes lb0's MTU: \(afterAttach)")

        let offLink = try await Lbctl.run("apply", "-f", try files.write("off.yaml", services(["10.77.0.2", "10.99.0.5"])),
                                          pinPath: pin, in: balancer)
        #expect(offLink.status == 2, "\(offLink)")
        #expect(offLink.stderr.contains(#"service "web": backend 10.99.0.5 is not on-link on lb0"#), "\(offLink)")
        #expect(try await status(pin, in: balancer).macs.isEmpty, "nothing was applied")

        let applied = try await Lbctl.run("apply", "-f", good, pinPath: pin, in: balancer)
        try #require(applied.status == 0, "\(applied)")
        #expect(applied.stderr.contains("backend 10.77.0.3 has no neighbour entry on lb0"), "\(applied)")
        let peerMAC = try MACAddress(bytes: await backend.macAddress(of: "peer0"))!.description
        let (macs, node) = try await status(pin, in: balancer)
        #expect(macs["10.77.0.2"] as? String == peerMAC, "\(macs)")
        #expect(macs["fd77::2"] as? String == peerMAC, "resolved by neighbour discovery: \(macs)")
        #expect(macs["10.77.0.3"] is NSNull, "unresolved: \(macs)")
        #expect(node["tunnel_mtu"] as? Int == 1500 && node["tunnel_mtu_source"] as? String == "interface", "\(node)")
        #expect(node["gue_port"] as? Int == 6080, "\(node)")
        let table = try await Lbctl.run("status", pinPath: pin, in: balancer)
        #expect(table.stdout.contains(peerMAC) && table.stdout.contains("unresolved"), "\(table)")

        // The agent keeps the MACs current; the backend announces its new MAC (arp_notify, ndisc_notify).
        try "sluice-test-token\n".write(toFile: files.path + "/token", atomically: true, encoding: .utf8)
        let config = try files.write("agent.yaml", """
            listen: 127.0.0.1:0
            pin_path: \(pin)
            token_file: \(files.path)/token
            services_file: \(files.path)/services.yaml
            """)
        let agent = try await AgentProcess(configPath: config, namespace: balancer.name)
        try await withCleanup {
            try await backend.exec(["/bin/sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/peer0/arp_notify && "
                                    + "echo 1 > /proc/sys/net/ipv6/conf/peer0/ndisc_notify"], check: true)
            let newMAC = "02:5c:00:00:77:02"
            try await backend.ip("link", "set", "dev", "peer0", "address", newMAC)
            let changed = ContinuousClock.now
            let deadline = changed + .seconds(10)
            var seen: [String: Any] = [:]
            while true {
                seen = try await status(pin, in: balancer).macs
                let followed = ["10.77.0.2", "fd77::2"].allSatisfy { seen[$0] as? String == newMAC }
                if followed || ContinuousClock.now >= deadline { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            for address in ["10.77.0.2", "fd77::2"] {
                #expect(seen[address] as? String == newMAC, "\(address) after \(ContinuousClock.now - changed): \(seen)\n\(agent.stderr)")
            }
            print("l2dsr: the agent wrote the new MAC \(ContinuousClock.now - changed) after the change")
        } cleanup: { await agent.stop() }
    }
}
