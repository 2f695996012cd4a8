// What the agent announces through BIRD: the verdict per VIP (attached, ready, draining, a
// backend up), and the include file it writes, taken by a real BIRD: the routes it holds and
// the attributes its export filter gives them.
import Foundation
@testable import SluiceAgent
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

@Suite("agent: BGP announcements")
struct FleetAnnouncerTests {
    /// A status as the data plane reports it: VIP .10 with a live service (web) and a dead
    /// one (dns), .11 with only down backends, .12 with only a drained (weight 0) backend,
    /// .13 with every backend failing its check (its last table kept).
    static func report(attached: Bool = true) throws -> StatusReport {
        func backend(_ address: String, weight: Int = 1, state: String, health: String = "up") -> String {
            #"{"address": "\#(address)", "weight": \#(weight), "state": "\#(state)", "health": "\#(health)", "id": 1, "mac": null, "port": null}"#
        }
        func service(_ name: String, _ vip: String, _ backends: [String]) -> String {
            #"{"name": "\#(name)", "vip": "\#(vip)", "port": 80, "protocol": "tcp", "forwarding": "ipip", "maglev_table_size": 65537, "generation": 1, "backends": [\#(backends.joined(separator: ","))]}"#
        }
        let services = [
            service("web", "198.51.100.10", [backend("10.0.0.1", state: "active"), backend("10.0.0.2", state: "down")]),
            service("dns", "198.51.100.10", [backend("10.0.0.1", state: "down")]),
            service("web6", "2001:db8::11", [backend("fd00::1", state: "down")]),
            service("echo", "198.51.100.12", [backend("10.0.0.3", weight: 0, state: "drained")]),
            // Every backend failing: the last table stays, its backends "active" but down.
            service("mail", "198.51.100.13", [backend("10.0.0.4", state: "active", health: "down")]),
        ]
        let json = """
            {"pin_path": "/p", "program_id": 1, "interfaces": [\(attached ? #"{"name": "lb0", "mode": "native"}"# : "")],
             "node": {"maglev_table_size": 65537, "gue_port": 6080, "snat_v4": [], "snat_v6": [], "snat_ports": "1024-65535"}, "services": [\(services.joined(separator: ","))]}
            """
        return try JSONDecoder().decode(StatusReport.self, from: Data(json.utf8))
    }

    static func reasons(_ vips: [FleetStatus.VIP]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: vips.map { ($0.vip, $0.reason ?? "announce") })
    }

    @Test("a VIP is announced only while attached, ready, not draining and with a backend up")
    func verdicts() throws {
        let report = try Self.report()
        var (vips, wanted) = FleetAnnouncer.verdicts(report, draining: false, ready: true, announced: [], announceWhen: .anyServiceUp)
        #expect(wanted == [IPAddress("198.51.100.10")!])
        #expect(Self.reasons(vips) == ["198.51.100.10": "announce", "2001:db8::11": "no backend up (service web6)",
                                       "198.51.100.12": "no backend up (service echo)", "198.51.100.13": "no backend up (service mail)"])
        #expect(vips.first { $0.vip == "198.51.100.10" }?.services == ["web", "dns"])
        #expect(vips.allSatisfy { !$0.announced }, "nothing is announced before BIRD took it")

        (vips, wanted) = FleetAnnouncer.verdicts(report, draining: false, ready: true, announced: [], announceWhen: .allServicesUp)
        #expect(wanted.isEmpty)
        #expect(Self.reasons(vips)["198.51.100.10"] == "no backend up (service dns)")

        (vips, wanted) = FleetAnnouncer.verdicts(report, draining: false, ready: false, announced: [], announceWhen: .anyServiceUp)
        #expect(wanted.isEmpty && Self.reasons(vips)["198.51.100.10"] == "not ready: copying the connection table from peers")
        (vips, wanted) = FleetAnnouncer.verdicts(report, draining: true, ready: true, announced: [], announceWhen: .anyServiceUp)
        #expect(wanted.isEmpty && Set(Self.reasons(vips).values) == ["draining"])
        (vips, wanted) = FleetAnnouncer.verdicts(try Self.report(attached: false), draining: false, ready: true, announced: [],
                                                 announceWhen: .anyServiceUp)
        #expect(wanted.isEmpty && Self.reasons(vips)["198.51.100.10"] == "not attached")
        (vips, wanted) = FleetAnnouncer.verdicts(nil, draining: false, ready: true, announced: [], announceWhen: .anyServiceUp)
        #expect(wanted.isEmpty && vips.isEmpty, "an unreadable data plane announces nothing")
    }

    /// A BIRD whose configuration includes the agent's file before a BGP session exporting
    /// through its filter, as the README's bird.conf does (the neighbour never answers: the
    /// namespace has no other end).
    static func bird(in namespace: TestNamespace, config: BGPConfig = BGPConfig()) async throws -> (BIRDProcess, BGPConfig) {
        var config = config
        let bird = try await BIRDProcess(namespace: namespace, config: { directory in
            """
            router id 10.99.0.1;
            protocol device {}
            include "\(directory)/sluice-vips.conf";
            protocol bgp upstream4 { local 10.99.0.1 as 65100; neighbor 10.99.0.2 as 65000; ipv4 { import none; export filter sluice_export; }; }
            protocol bgp upstream6 { local fd99::1 as 65100; neighbor fd99::2 as 65000; ipv6 { import none; export filter sluice_export; }; }
            """
        }, prepare: { directory in
            config.includeFile = directory + "/sluice-vips.conf"
            config.birdSocket = directory + "/bird.ctl"
            // What `lbctl withdraw` writes: BIRD needs the file before it starts.
            try BIRDInclude.render([]) { _ in BGPConfig.Attributes() }.write(toFile: config.includeFile, atomically: true, encoding: .utf8)
        })
        return (bird, config)
    }

    /// A control for the test's BIRD. Its calls block (up to the timeout), so they run off the
    /// pool; the timeout is long because a loaded CI machine kept BIRD from answering within
    /// the agent's 5 s, and these tests are about what BIRD answers, not how fast.
    static func control(_ config: BGPConfig) -> BIRDControl {
        var control = BIRDControl(socketPath: config.birdSocket)
        control.timeoutSeconds = 60
        return control
    }

    /// `command`'s reply lines, joined.
    static func run(_ control: BIRDControl, _ command: String) async throws -> String {
        try await offPool { try control.run(command) }.joined(separator: "\n")
    }

    @Test("BIRD takes the include file: the routes to announce, with MED, local preference and communities set by the export filter",
          .enabled(if: BIRDProcess.isInstalled, "needs Debian's bird2"))
    func birdTakesTheIncludeFile() async throws {
        let namespace = try await TestNamespace(prefix: "slbird")
        try await withCleanup {
            var base = BGPConfig()
            base.attributes.med = 10
            base.attributes.communities = [BGPConfig.Community("65100:100")!]
            var standby = base.attributes
            standby.med = 50
            standby.localPref = 90
            base.vipAttributes[IPAddress("2001:db8::10")!] = standby
            let (bird, config) = try await Self.bird(in: namespace, config: base)
            let control = Self.control(config)
            let vips = [IPAddress("198.51.100.10")!, IPAddress("2001:db8::10")!]
            let include = BIRDInclude.render(vips) { config.attributes(for: $0) }
            try await offPool { try FleetAnnouncer.install(include, config: config, bird: control) }

            let routes = try await Self.run(control, "show route filter sluice_export all")
            #expect(routes.contains("198.51.100.10/32") && routes.contains("2001:db8::10/128"), "\(routes)")
            let v4 = try await Self.run(control, "show route 198.51.100.10/32 filter sluice_export all")
            #expect(v4.contains("BGP.med: 10") && v4.contains("BGP.community: (65100,100)") && !v4.contains("local_pref"), "\(v4)")
            let v6 = try await Self.run(control, "show route 2001:db8::10/128 filter sluice_export all")
            #expect(v6.contains("BGP.med: 50") && v6.contains("BGP.local_pref: 90"), "\(v6)")

            // Withdrawn: the static protocols hold nothing any more.
            _ = try await offPool { try FleetAnnouncer.withdrawAll(config: config) }
            let none = try await Self.run(control, "show route protocol sluice_vips4")
            #expect(!none.contains("198.51.100.10"), "\(none)")
            #expect(try String(contentsOfFile: config.includeFile, encoding: .utf8) == BIRDInclude.render([]) { _ in BGPConfig.Attributes() })
            _ = bird
        } cleanup: {
            await namespace.remove()
        }
    }

    @Test("BIRD's errors and a BIRD that is not running are reported, not swallowed",
          .enabled(if: BIRDProcess.isInstalled, "needs Debian's bird2"))
    func birdErrors() async throws {
        let namespace = try await TestNamespace(prefix: "slbird")
        try await withCleanup {
            let (bird, config) = try await Self.bird(in: namespace)
            let control = Self.control(config)
            let refused = await #expect(throws: BIRDControl.Failure.self) { try await Self.run(control, "configure \"/nonexistent/bird.conf\"") }
            #expect(refused?.message.contains("/nonexistent/bird.conf: No such file or directory") == true, "\(String(describing: refused))")
            // A broken include file: BIRD keeps its running configuration and says why.
            let broken = await #expect(throws: BIRDControl.Failure.self) {
                try await offPool { try FleetAnnouncer.install("protocol static sluice_vips4 { ipv4; route nonsense; }\n", config: config, bird: control) }
            }
            #expect(broken?.message.contains("sluice-vips.conf") == true, "\(String(describing: broken))")
            await bird.kill()
            let gone = await #expect(throws: BIRDControl.Failure.self) { try await offPool { try control.configure() } }
            #expect(gone?.message.contains("is bird running?") == true, "\(String(describing: gone))")
        } cleanup: {
            await namespace.remove()
        }
    }
}
