// lbctl doctor against a test namespace set up wrong on purpose, where it must name each
// finding and exit 1, and then set up right, where every check passes and it exits 0; and
// against drivers with and without XDP, and a veth whose peer is in another namespace.
import Foundation
import SluiceControl
import SluiceTestSupport
import Testing

@Suite("lbctl doctor", .enabled(if: getuid() == 0, "needs root: namespaces, XDP and bpffs"))
struct DoctorTests {
    /// `lbctl doctor ARGS --json` in `namespace`: the exit status and check -> ok.
    static func doctor(_ arguments: [String], pin: String, in namespace: TestNamespace) async throws -> (status: Int32, checks: [String: Bool], output: String) {
        let result = try await Lbctl.run(["doctor"] + arguments + ["--json", "--pin-path", pin], in: namespace)
        let list = try JSONSerialization.jsonObject(with: result.stdoutData) as? [[String: Any]] ?? []
        var checks: [String: Bool] = [:]
        // A check made several times (one per VIP, per service) passes when every one does.
        for check in list { checks[check["check"] as? String ?? "?", default: true] = checks[check["check"] as? String ?? "?", default: true] && check["ok"] as? Bool == true }
        return (result.status, checks, "\(result)")
    }

    static func sysctl(_ key: String, in namespace: TestNamespace) async throws {
        try await Command.check(TestNamespace.ip, ["netns", "exec", namespace.name, "/usr/sbin/sysctl", "-qw", key])
    }

    static func ethtool(_ arguments: String..., in namespace: TestNamespace) async throws {
        try await ethtool(arguments, in: namespace)
    }

    static func ethtool(_ arguments: [String], in namespace: TestNamespace) async throws {
        try await Command.check(TestNamespace.ip, ["netns", "exec", namespace.name, "/usr/sbin/ethtool"] + arguments)
    }

    @Test("balancer: another XDP program, a 1500 MTU under tunnels, the veth's peer offloading checksums, strict rp_filter and no gateway are each found (exit 1); fixed, every check passes (exit 0)")
    func balancerChecks() async throws {
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        try await withTestNamespace { ns in
            try await ns.addVethPair("lb0", peer: "gw0")
            try await ns.ip("addr", "add", "10.89.0.2/24", "dev", "lb0")
            try await ns.ip("link", "set", "lb0", "mtu", "1500")
            try await Self.sysctl("net.ipv4.conf.all.rp_filter=1", in: ns)
            try await ns.attachXDPPass(to: "lb0")

            let wrong = try await Self.doctor(["lb0"], pin: bpffs.path + "/lb", in: ns)
            #expect(wrong.status == 1, "\(wrong.output)")
            for check in ["xdp", "mtu", "veth_tx_checksum", "rp_filter", "gateway"] { #expect(wrong.checks[check] == false, "\(check) not found: \(wrong.output)") }
            for check in ["kernel", "btf", "bpffs", "memlock", "xdp_native"] { #expect(wrong.checks[check] == true, "\(check): \(wrong.output)") }
            let text = try await Lbctl.run(["doctor", "lb0", "--pin-path", bpffs.path + "/lb"], in: ns)
            #expect(text.status == 1 && text.stdout.contains("FINDING xdp:") && text.stdout.contains("fix: "), "\(text)")
            #expect(text.stdout.contains("5 findings of"), "\(text)")

            try await ns.ip("link", "set", "lb0", "xdp", "off")
            try await ns.ip("link", "set", "lb0", "mtu", "1600")
            try await ns.ip("link", "set", "gw0", "mtu", "1600")
            try await Self.sysctl("net.ipv4.conf.all.rp_filter=2", in: ns)
            try await Self.sysctl("net.ipv4.conf.lb0.rp_filter=2", in: ns)
            try await ns.ip("route", "add", "default", "via", "10.89.0.1", "dev", "lb0")
            try await ns.ip("neigh", "replace", "10.89.0.1", "lladdr", "02:00:00:00:89:01", "nud", "permanent", "dev", "lb0")
            try await Self.ethtool("-K", "gw0", "tx", "off", in: ns)
            let right = try await Self.doctor(["lb0"], pin: bpffs.path + "/lb", in: ns)
            #expect(right.status == 0 && right.checks.values.allSatisfy { $0 } && right.checks.count >= 12, "\(right.output)")
        }
    }

    @Test("balancer: a bridge (no XDP in its driver) is an xdp_native finding, a veth is not; a veth's peer in another namespace is read there, and the fix names that namespace")
    func driverChecks() async throws {
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        try await withTestNamespace { ns in
            try await withTestNamespace { other in
                try await ns.ip("link", "add", "br0", "type", "bridge")
                let bridge = try await Self.doctor(["br0"], pin: bpffs.path + "/lb", in: ns)
                #expect(bridge.status == 1 && bridge.checks["xdp_native"] == false && bridge.checks["veth_tx_checksum"] == nil, "\(bridge.output)")
                #expect(bridge.output.contains("(bridge) has no native XDP") && bridge.output.contains("--mode generic"), "\(bridge.output)")

                try await ns.ip("link", "add", "lb0", "type", "veth", "peer", "name", "far0", "netns", other.name)
                let offloading = try await Self.doctor(["lb0"], pin: bpffs.path + "/lb", in: ns)
                #expect(offloading.checks["xdp_native"] == true && offloading.checks["veth_tx_checksum"] == false, "\(offloading.output)")
                #expect(offloading.output.contains("ip netns exec \(other.name) ethtool -K far0 tx off"), "\(offloading.output)")

                try await Self.ethtool("-K", "far0", "tx", "off", in: other)
                let computing = try await Self.doctor(["lb0"], pin: bpffs.path + "/lb", in: ns)
                #expect(computing.checks["veth_tx_checksum"] == true && computing.output.contains("far0 of the veth lb0 (in namespace \(other.name))"), "\(computing.output)")
            }
        }
    }

    @Test("the offload features read from the kernel (ETHTOOL_GFEATURES) are ethtool -k's, feature by feature, before and after some are switched")
    func offloadFeatures() async throws {
        try await withTestNamespace { ns in
            try await ns.addVethPair("lb0", peer: "gw0")
            // ethtool -k: "name: on|off [fixed|requested on]", a few legacy names for kernel ones.
            func ethtoolK() async throws -> [String: Bool] {
                let output = try await Command.check(TestNamespace.ip, ["netns", "exec", ns.name, "/usr/sbin/ethtool", "-k", "lb0"]).stdout
                let legacy = ["large-receive-offload": "rx-lro", "generic-receive-offload": "rx-gro", "rx-checksumming": "rx-checksum",
                              "ntuple-filters": "rx-ntuple-filter", "receive-hashing": "rx-hashing"]
                var features: [String: Bool] = [:]
                for line in output.split(separator: "\n") where line.hasPrefix("\t") || line.hasPrefix(" ") || line.contains(": ") {
                    let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                    guard parts.count == 2, !parts[1].isEmpty else { continue }
                    features[legacy[parts[0]] ?? parts[0]] = parts[1].hasPrefix("on")
                }
                return features
            }
            for switches in [[], ["gro", "on", "tx", "off", "sg", "off"]] {
                if !switches.isEmpty { try await Self.ethtool(["-K", "lb0"] + switches, in: ns) }
                let shown = try await ethtoolK()
                let read = try #require(try await ns.run { LinkFeatures.features(of: "lb0") })
                let common = Set(shown.keys).intersection(read.keys)
                #expect(common.count >= 30 && ["rx-lro", "rx-gro", "rx-gro-hw", "tx-scatter-gather"].allSatisfy(common.contains), "\(common.sorted())")
                for name in common.sorted() { #expect(read[name] == shown[name], "\(name) after \(switches): read \(read[name]!), ethtool -k \(shown[name]!)") }
                if !switches.isEmpty { #expect(read["rx-gro"] == true && read["tx-scatter-gather"] == false, "\(read)") }
            }
        }
    }

    @Test("backend: a DSR VIP missing from lo, ARP answering for an l2dsr VIP and no decapsulator are each found (exit 1); a decapsulator without a service's VIP, or stripping GUE to another port, is a decap finding per service; fixed, exit 0")
    func backendChecks() async throws {
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let files = try ScratchDirectory()
        let services = try files.write("services.yaml", """
            node: { source_v4: 192.0.2.10, gue_port: 7000 }
            services:
              - { name: web, vip: 198.51.100.90, port: 80, protocol: tcp, backends: [{address: 10.89.1.2}] }
              - { name: dns, vip: 198.51.100.91, port: 53, protocol: udp, forwarding: l2dsr, backends: [{address: 10.89.1.2}] }
              - { name: quic, vip: 198.51.100.92, port: 443, protocol: udp, forwarding: gue, backends: [{address: 10.89.1.2}] }
            """)
        try await withTestNamespace { ns in
            try await ns.addVethPair("bk0", peer: "lb0")
            try await ns.ip("addr", "add", "10.89.1.2/24", "dev", "bk0")
            let pin = bpffs.path + "/decap"
            let wrong = try await Self.doctor(["--backend", "-f", services], pin: pin, in: ns)
            #expect(wrong.status == 1, "\(wrong.output)")
            for check in ["vip_on_loopback", "arp", "decap"] { #expect(wrong.checks[check] == false, "\(check) not found: \(wrong.output)") }
            let none = try await Lbctl.run(["doctor", "--backend", "-f", services, "--pin-path", pin], in: ns)
            #expect(none.stdout.contains("FINDING decap: web (ipip to 198.51.100.90): no decapsulator") && none.stdout.contains("FINDING decap: quic (gue to 198.51.100.92)")
                    && none.stdout.contains("ip fou add port 7000 gue"), "\(none)")

            for vip in ["198.51.100.90", "198.51.100.91", "198.51.100.92"] { try await ns.ip("addr", "add", "\(vip)/32", "dev", "lo") }
            try await Self.sysctl("net.ipv4.conf.all.arp_ignore=1", in: ns)
            try await Self.sysctl("net.ipv4.conf.all.arp_announce=2", in: ns)
            func decap(_ arguments: String...) async throws -> CommandResult {
                let result = try await Lbctl.run(["decap", "attach", "bk0", "--pin-path", pin] + arguments, in: ns)
                try #require(result.status == 0, "\(result)")
                return try await Lbctl.run(["doctor", "--backend", "-f", services, "--pin-path", pin], in: ns)
            }
            let webOnly = try await decap("--vip", "198.51.100.90")
            #expect(webOnly.status == 1 && webOnly.stdout.contains("ok      decap: web (ipip to 198.51.100.90): the decapsulator at \(pin) strips it")
                    && webOnly.stdout.contains("198.51.100.92 is not in the VIP set") && webOnly.stdout.contains("1 finding of"), "\(webOnly)")
            let otherPort = try await decap("--vip", "198.51.100.90", "--vip", "198.51.100.92")
            #expect(otherPort.status == 1 && otherPort.stdout.contains("strips GUE to port 6080, the service file's node.gue_port is 7000")
                    && otherPort.stdout.contains("fix: lbctl decap attach IFACE --gue-port 7000"), "\(otherPort)")
            _ = try await decap("--gue-port", "7000")
            let right = try await Self.doctor(["--backend", "-f", services], pin: pin, in: ns)
            #expect(right.status == 0 && right.checks.values.allSatisfy { $0 } && right.checks["decap"] == true, "\(right.output)")
        }
    }

    @Test("the kernel's tunnel devices are read by kind and state; a tunnel counts as unwrapped by the kernel only with a device of the outer family's kind, up, taking the inner family, and for GUE a FOU port of that family")
    func kernelTunnels() async throws {
        try await withTestNamespace { ns in
            try await ns.addVethPair("bk0", peer: "lb0")
            try await ns.ip("link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789")
            let links = try await ns.run { KernelTunnels.links() }
            #expect(links.contains(KernelTunnels.Link(name: "bk0", kind: "veth", up: true, tunnelProtocol: nil)), "\(links)")
            #expect(links.contains(KernelTunnels.Link(name: "vx0", kind: "vxlan", up: false, tunnelProtocol: nil)), "\(links)")
            #expect(links.contains { $0.name == "lo" && $0.kind == "" }, "\(links)")
            // This kernel has neither ipip nor fou: nothing here takes a tunnel.
            let fou = try await ns.run { KernelTunnels.fouPorts() ?? [] }
            #expect(KernelTunnels.receivers(outer: .v4, inner: .v4, guePort: nil, links: links, fou: fou) == nil)
        }
        let tunl0 = KernelTunnels.Link(name: "tunl0", kind: "ipip", up: true, tunnelProtocol: 4)
        let ip6tnl0 = KernelTunnels.Link(name: "ip6tnl0", kind: "ip6tnl", up: true, tunnelProtocol: 41)
        let any6 = KernelTunnels.Link(name: "t6", kind: "ip6tnl", up: true, tunnelProtocol: 0)
        let gue4 = KernelTunnels.FOUPort(port: 6080, family: .v4, gue: true)
        #expect(KernelTunnels.receivers(outer: .v4, inner: .v4, guePort: nil, links: [tunl0], fou: []) == ["tunl0 (ipip)"])
        #expect(KernelTunnels.receivers(outer: .v4, inner: .v4, guePort: nil, links: [KernelTunnels.Link(name: "tunl0", kind: "ipip", up: false)], fou: []) == nil)
        #expect(KernelTunnels.receivers(outer: .v6, inner: .v4, guePort: nil, links: [ip6tnl0], fou: []) == nil)
        #expect(KernelTunnels.receivers(outer: .v6, inner: .v4, guePort: nil, links: [ip6tnl0, any6], fou: []) == ["t6 (ip6tnl)"])
        #expect(KernelTunnels.receivers(outer: .v4, inner: .v4, guePort: 6080, links: [tunl0], fou: [gue4]) == ["tunl0 (ipip)", "FOU port 6080 (gue, IPv4)"])
        #expect(KernelTunnels.receivers(outer: .v4, inner: .v4, guePort: 7000, links: [tunl0], fou: [gue4]) == nil)
        #expect(KernelTunnels.receivers(outer: .v6, inner: .v6, guePort: 6080, links: [ip6tnl0], fou: [gue4]) == nil)
    }

    @Test("a pin path on a file system that is not bpffs is a bpffs finding whose fix mounts it there")
    func notBPFFS() async throws {
        let scratch = try ScratchDirectory()
        let pin = scratch.path + "/lb"
        let result = try await Lbctl.run(["doctor", "--pin-path", pin])
        #expect(result.status == 1 && result.stdout.contains("FINDING bpffs: \(scratch.path) is not bpffs")
                && result.stdout.contains("fix: mount -t bpf bpf \(scratch.path)"), "\(result)")
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let mounted = try await Lbctl.run(["doctor", "--pin-path", bpffs.path + "/lb"])
        #expect(mounted.stdout.contains("ok      bpffs: \(bpffs.path) is bpffs"), "\(mounted)")
    }

    @Test("bad input is exit 2: --backend without --file, a service file that does not parse")
    func badInput() async throws {
        let missing = try await Lbctl.run(["doctor", "--backend"])
        #expect(missing.status == 2 && missing.stderr.contains("--file"), "\(missing)")
        let files = try ScratchDirectory()
        let bad = try files.write("bad.yaml", "services:\n  - { name: web, vip: 198.51.100.300, port: 80, protocol: tcp, backends: [] }\n")
        let result = try await Lbctl.run(["doctor", "--backend", "-f", bad])
        #expect(result.status == 2 && result.stderr.contains("bad.yaml:2"), "\(result)")
    }
}
