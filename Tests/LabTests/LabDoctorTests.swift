// lbctl doctor in the namespace lab, which is set up the way the doctor asks: on the balancer
// and on every backend it finds nothing; the router's side of lb0 sending with checksum
// offload again is found, with a fix that names the router's namespace; the nat lab's two
// interfaces pass too.
import Foundation
import SluiceTestSupport
import Testing

@Suite("lbctl doctor in the namespace lab")
struct LabDoctorTests {
    /// The checks of `lbctl doctor --json` output, by name.
    static func checks(_ result: CommandResult) -> [String: Bool] {
        let list = (try? JSONSerialization.jsonObject(with: result.stdoutData)) as? [[String: Any]] ?? []
        return Dictionary(list.map { ($0["check"] as? String ?? "?", $0["ok"] as? Bool ?? false) }, uniquingKeysWith: { $0 && $1 })
    }

    @Test("the lab as built passes every check on lb0 and, with --backend, on every backend; r-lb offloading checksums again is the one finding, its fix in the router's namespace")
    func theLabIsSetUpRight() async throws {
        try await Lab.withLab { lab in
            let balancer = try await lab.lbctl("doctor", "lb0", "--json")
            let found = Self.checks(balancer)
            #expect(balancer.status == 0 && found.count >= 12 && found.values.allSatisfy { $0 }, "\(balancer)")
            for check in ["xdp", "xdp_native", "mtu", "veth_tx_checksum", "gateway"] { #expect(found[check] == true, "\(check): \(balancer)") }

            let bpffs = try lab.info("bpffs")
            for backend in lab.backends {
                let namespace = try #require(lab.namespaces.first { $0.hasSuffix("-\(backend)") })
                let result = try await Command.run(TestNamespace.nsenter, ["--net=/run/netns/\(namespace)", Lbctl.path, "doctor", "--backend",
                                                                           "-f", lab.directory + "/services.yaml", "--pin-path", "\(bpffs)/\(backend)", "--json"])
                let backendChecks = Self.checks(result)
                #expect(result.status == 0 && backendChecks["decap"] == true && backendChecks["vip_on_loopback"] == true
                        && backendChecks.values.allSatisfy { $0 }, "\(backend): \(result)")
            }

            let router = try #require(lab.namespaces.first { $0.hasSuffix("-router") })
            try await Command.check(TestNamespace.ip, ["netns", "exec", router, "/usr/sbin/ethtool", "-K", "r-lb", "tx", "on"])
            let wrong = try await lab.lbctl("doctor", "lb0", "--json")
            #expect(wrong.status == 1 && Self.checks(wrong).filter { !$0.value }.map(\.key) == ["veth_tx_checksum"], "\(wrong)")
            #expect(wrong.stdout.contains("ip netns exec \(router) ethtool -K r-lb tx off"), "\(wrong)")
        }
    }

    @Test("nat lab: lb0 and lb1 pass every check; lb1 has no default route, and the gateway check takes the MAC the balancer was attached to it with")
    func theNATLabIsSetUpRight() async throws {
        try await Lab.withLab(Lab.Variant(nat: true)) { lab in
            for interface in ["lb0", "lb1"] {
                let result = try await lab.lbctl("doctor", interface, "--json")
                #expect(result.status == 0 && Self.checks(result).values.allSatisfy { $0 } && Self.checks(result).count >= 12, "\(interface): \(result)")
            }
            let text = try await lab.lbctl("doctor", "lb1")
            #expect(text.stdout.contains("no default route via lb1; the balancer attached to it sends to the gateway MAC"), "\(text)")
        }
    }
}
