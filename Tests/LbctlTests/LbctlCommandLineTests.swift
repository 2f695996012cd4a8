// lbctl as a user runs it: exit codes (0 ok, 1 runtime, 2 bad input), the
// messages that name what is wrong, the diff an apply prints, and --json.
// Each test pins into its own bpffs; nothing here attaches to an interface
// outside a namespace the test made.
import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

@Suite("lbctl on the command line")
struct LbctlCommandLineTests {
    @Test("validate and apply refuse a bad service file with exit 2 and name the field", arguments: Fixtures.bad)
    func badFileIsRefused(_ bad: Fixtures.BadFile) async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let file = try files.write("bad.yaml", bad.text)

        for command in [["validate", "-f", file], ["apply", "-f", file, "--pin-path", "\(bpffs.path)/lb"]] {
            let result = try await Lbctl.run(command)
            #expect(result.status == 2, "\(result)")
            #expect(result.stdout.isEmpty, "\(result)")
            #expect(result.stderr.contains(file), "the message names the file\n\(result)")
            for mention in bad.mentions {
                #expect(result.stderr.contains(mention), "the message names \(mention)\n\(result)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: "\(bpffs.path)/lb"), "a refused apply loads nothing")
    }

    @Test("a refused apply leaves the applied configuration byte for byte as it was")
    func refusedApplyChangesNothing() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        let applied = try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), pinPath: pin)
        try #require(applied.status == 0, "\(applied)")
        let before = try await Lbctl.run("status", "--json", pinPath: pin)
        try #require(before.status == 0, "\(before)")

        for (index, bad) in Fixtures.bad.enumerated() {
            let result = try await Lbctl.run("apply", "-f", try files.write("bad\(index).yaml", bad.text), pinPath: pin)
            #expect(result.status == 2, "\(bad.label): \(result)")
            let after = try await Lbctl.run("status", "--json", pinPath: pin)
            #expect(after.stdoutData == before.stdoutData, "\(bad.label) changed the status:\n\(before.stdout)\n---\n\(after.stdout)")
        }
    }

    @Test("attach to an interface that does not exist exits 2 and names it")
    func attachToMissingInterface() async throws {
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        try await withTestNamespace { namespace in

            let result = try await Lbctl.run("attach", "nosuch0", "--gateway-mac", Fixtures.gatewayMAC,
                                             pinPath: "\(bpffs.path)/lb", in: namespace)
            #expect(result.status == 2, "\(result)")
            #expect(result.stderr.contains("nosuch0"), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: "\(bpffs.path)/lb"), "nothing is loaded for a missing interface")
        }
    }

    @Test("attach with a malformed --gateway-mac exits 2, names the option and attaches nothing")
    func attachWithBadGatewayMAC() async throws {
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        try await withTestNamespace { namespace in
            try await namespace.addVethPair("lb0", peer: "peer0")

            for mac in ["02:00:00:00:00", "zz:00:00:00:00:01", "02:00:00:00:00:01:07"] {
                let result = try await Lbctl.run("attach", "lb0", "--gateway-mac", mac, pinPath: "\(bpffs.path)/lb", in: namespace)
                #expect(result.status == 2, "\(result)")
                #expect(result.stderr.contains("--gateway-mac") && result.stderr.contains(mac), "\(result)")
            }
            #expect(try await namespace.xdpProgramID(of: "lb0") == nil)
            #expect(!FileManager.default.fileExists(atPath: "\(bpffs.path)/lb"))
        }
    }

    @Test("status, stats and flows exit 1 when nothing is pinned")
    func readCommandsNeedAPinnedDataPlane() async throws {
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        for command in ["status", "stats", "flows"] {
            for json in [false, true] {
                let result = try await Lbctl.run(json ? [command, "--json", "--pin-path", pin] : [command, "--pin-path", pin])
                #expect(result.status == 1, "\(result)")
                #expect(result.stderr.contains(pin), "\(result)")
            }
        }
    }

    @Test("status and stats --json parse and carry the documented keys")
    func jsonOutputHasTheDocumentedKeys() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        try #require(try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), pinPath: pin).status == 0)

        let status = try await Lbctl.run("status", "--json", pinPath: pin)
        try #require(status.status == 0, "\(status)")
        let report = try status.json() as? [String: Any]
        expectKeys(report, ["pin_path", "program_id", "interfaces", "node", "services"], in: "status")
        #expect(report?["pin_path"] as? String == pin)
        #expect((report?["interfaces"] as? [Any])?.isEmpty == true, "applied but attached nowhere")
        // gateway_mac is unset before attach; see the known-issue test below.
        expectKeys(report?["node"], ["source_v4", "source_v6", "maglev_table_size"], in: "status.node")
        let services = report?["services"] as? [[String: Any]] ?? []
        #expect(services.map { $0["name"] as? String } == ["web", "web6"])
        for service in services {
            expectKeys(service, ["name", "vip", "port", "protocol", "forwarding", "maglev_table_size", "generation", "backends"],
                       in: "status.services[]")
            for backend in service["backends"] as? [Any] ?? [] {
                expectKeys(backend, ["address", "weight", "state", "id"], in: "status.services[].backends[]")
            }
        }

        // The text form names the node settings too, the NAT flow budget among them.
        let text = try await Lbctl.run("status", pinPath: pin)
        #expect(text.status == 0 && text.stdout.contains("nat_flow_budget 125000 new translations a second per CPU")
                && text.stdout.contains("maglev_table_size") && text.stdout.contains("gue_port"), "\(text)")

        let stats = try await Lbctl.run("stats", "--json", pinPath: pin)
        try #require(stats.status == 0, "\(stats)")
        let counters = try stats.json() as? [String: Any]
        expectStatsKeys(counters)
        #expect((counters?["services"] as? [[String: Any]])?.map { $0["name"] as? String } == ["web", "web6"])

        let flows = try await Lbctl.run("flows", "--json", pinPath: pin)
        try #require(flows.status == 0, "\(flows)")
        #expect((try flows.json() as? [Any])?.isEmpty == true, "no traffic, no flows")
    }

    @Test("status --json prints unset node settings as null, as the README documents")
    func unsetNodeSettingsAreNull() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        let v4Only = """
            node:
              source_v4: \(Fixtures.sourceV4)
            services:
              - name: web
                vip: \(Fixtures.webVIP)
                port: 80
                protocol: tcp
                backends:
                  - address: \(Fixtures.webBackends[0])

            """
        let applied = try await Lbctl.run("apply", "-f", try files.write("v4.yaml", v4Only), pinPath: pin)
        try #require(applied.status == 0, "\(applied)")
        let node = (try await Lbctl.run("status", "--json", pinPath: pin).json() as? [String: Any])?["node"] as? [String: Any]
        // Swift's synthesized Encodable skips nil optionals, so the keys are absent instead of null.
        for key in ["source_v6", "gateway_mac"] {
            #expect(node?.keys.contains(key) == true && node?[key] is NSNull, "node.\(key) should be null: \(String(describing: node))")
        }
    }

    @Test("applying the same file twice prints \"no changes\" the second time")
    func secondApplyChangesNothing() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        let file = try files.write("good.yaml", Fixtures.good)

        let first = try await Lbctl.run("apply", "-f", file, pinPath: pin)
        #expect(first.status == 0, "\(first)")
        #expect(first.stdout.contains("+ service web \(Fixtures.webVIP):80/tcp (2 backends)"), "\(first)")
        #expect(first.stdout.contains("+ service web6 [\(Fixtures.web6VIP)]:443/tcp (2 backends)"), "\(first)")
        #expect(first.stdout.contains("applied:"), "\(first)")
        // Loading the program (the first apply loads and pins it) leaves libbpf nothing to warn about.
        #expect(first.stderr.isEmpty, "\(first)")
        let status = try await Lbctl.run("status", "--json", pinPath: pin).stdoutData

        let second = try await Lbctl.run("apply", "-f", file, pinPath: pin)
        #expect(second.status == 0, "\(second)")
        #expect(second.stdout == "no changes\n", "\(second)")
        #expect(try await Lbctl.run("status", "--json", pinPath: pin).stdoutData == status, "generation and slots are untouched")
    }

    @Test("apply --dry-run prints the change and writes nothing")
    func dryRunWritesNothing() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        try #require(try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), pinPath: pin).status == 0)
        let before = try await Lbctl.run("status", "--json", pinPath: pin)

        let dry = try await Lbctl.run("apply", "-f", try files.write("changed.yaml", Fixtures.changed), "--dry-run", pinPath: pin)
        #expect(dry.status == 0, "\(dry)")
        #expect(dry.stdout.contains("+ service dns 192.0.2.53:53/udp (1 backend)"), "\(dry)")
        #expect(dry.stdout.contains("disruption: web: ") && dry.stdout.contains("% of new-flow placements move ("), "\(dry)")
        #expect(dry.stdout.contains("disruption: web6: removed: every new-flow placement goes, 0 established flows lose their VIP"), "\(dry)")
        #expect(dry.stdout.contains("dry run: nothing applied"), "\(dry)")
        #expect(!dry.stdout.contains("applied:"), "\(dry)")
        #expect(try await Lbctl.run("status", "--json", pinPath: pin).stdoutData == before.stdoutData)
    }

    @Test("apply --dry-run on an empty pin path prints the change and pins nothing")
    func dryRunPinsNothing() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        let dry = try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), "--dry-run", pinPath: pin)
        #expect(dry.status == 0, "\(dry)")
        #expect(dry.stdout.contains("+ service web \(Fixtures.webVIP):80/tcp (2 backends)"), "\(dry)")
        #expect(dry.stdout.contains("dry run: nothing applied"), "\(dry)")
        // Apply opens the data plane with openOrLoad before it looks at --dry-run.
        #expect(!FileManager.default.fileExists(atPath: pin), "a dry run left a data plane pinned at \(pin)")
    }

    @Test("a service added while another is removed is served, in status and on the next apply")
    func addAndRemoveInOneApply() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        try #require(try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), pinPath: pin).status == 0)
        // web renamed to www: one service removed and one added, on the same VIP.
        let renamed = try files.write("renamed.yaml", Fixtures.good.replacingOccurrences(of: "name: web\n", with: "name: www\n"))
        let result = try await Lbctl.run("apply", "-f", renamed, pinPath: pin)
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.contains("+ service www \(Fixtures.webVIP):80/tcp (2 backends)"), "\(result)")
        #expect(result.stdout.contains("- service web\n"), "\(result)")

        let report = try await Lbctl.run("status", "--json", pinPath: pin).json() as? [String: Any]
        let names = (report?["services"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names.sorted() == ["web6", "www"], "\(String(describing: report))")
        let again = try await Lbctl.run("apply", "-f", renamed, pinPath: pin)
        #expect(again.stdout == "no changes\n", "\(again)")
    }

    @Test("a VIP that moves from one service to another in one apply stays published, for its new service")
    func vipMovesBetweenServices() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        func file(_ a: String, _ b: String) -> String {
            """
            node: { source_v4: 192.0.2.10 }
            services:
              - { name: a, vip: \(a), port: 80, protocol: tcp, backends: [{ address: 10.9.0.1 }] }
              - { name: b, vip: \(b), port: 80, protocol: tcp, backends: [{ address: 10.9.0.2 }] }

            """
        }
        try #require(try await Lbctl.run("apply", "-f", try files.write("1.yaml", file("198.51.100.1", "198.51.100.2")), pinPath: pin).status == 0)
        // b's VIP moves to a, and b takes a new one.
        let result = try await Lbctl.run("apply", "-f", try files.write("2.yaml", file("198.51.100.2", "198.51.100.3")), pinPath: pin)
        #expect(result.status == 0, "\(result)")

        let dataplane = try Dataplane.open(pinPath: pin)
        let state = try dataplane.appliedState()
        for (name, vip) in [("a", "198.51.100.2"), ("b", "198.51.100.3")] {
            let service = try #require(state.service(named: name))
            let key = sl_vip_key(service: service.service)
            #expect(service.service.vip == IPAddress(vip))
            let published = try dataplane[.vips].lookup(key, as: sl_vip.self)
            #expect(published?.id == service.slot, "VIP \(vip) of \(name) is not published for slot \(service.slot)")
        }
        let old = sl_vip_key(service: Service(name: "x", vip: IPAddress("198.51.100.1")!, port: 80, proto: .tcp, forwarding: .ipip, backends: []))
        #expect(try dataplane[.vips].lookup(old, as: sl_vip.self) == nil, "the VIP no service owns is still published")
    }

    @Test("a changed file prints its diff, and applying it again prints \"no changes\"")
    func changedFilePrintsItsDiff() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        try #require(try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), pinPath: pin).status == 0)
        let changed = try files.write("changed.yaml", Fixtures.changed)

        let result = try await Lbctl.run("apply", "-f", changed, pinPath: pin)
        #expect(result.status == 0, "\(result)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("+ service dns 192.0.2.53:53/udp (1 backend)"), "\(result)")
        #expect(lines.contains("- service web6"), "\(result)")
        let web = lines.first { $0.hasPrefix("~ service web:") } ?? ""
        #expect(web.contains("+ backend 10.1.0.3 (weight 1)"), "\(result)")
        #expect(web.contains("- backend \(Fixtures.webBackends[1])"), "\(result)")
        #expect(web.contains("weight \(Fixtures.webBackends[0]) 1 -> 3"), "\(result)")
        #expect(lines.last?.hasPrefix("applied:") == true, "\(result)")

        let report = try await Lbctl.run("status", "--json", pinPath: pin).json() as? [String: Any]
        let services = (report?["services"] as? [[String: Any]] ?? []).map { service in
            (service["name"] as? String ?? "?",
             (service["backends"] as? [[String: Any]] ?? []).map { "\($0["address"] ?? "?")/\($0["weight"] ?? "?")" })
        }
        #expect(services.map(\.0).sorted() == ["dns", "web"], "\(String(describing: report))")
        #expect(services.first { $0.0 == "web" }?.1.sorted() == ["10.1.0.1/3", "10.1.0.3/1"])
        #expect(services.first { $0.0 == "dns" }?.1 == ["10.1.0.9/1"])

        let again = try await Lbctl.run("apply", "-f", changed, pinPath: pin)
        #expect(again.status == 0, "\(again)")
        #expect(again.stdout == "no changes\n", "\(again)")
    }
}

/// The keys README documents for `lbctl stats --json`.
func expectStatsKeys(_ counters: [String: Any]?, sourceLocation: SourceLocation = #_sourceLocation) {
    expectKeys(counters, ["verdicts", "new_flows", "conntrack_hits", "conntrack_misses", "fragments", "ip_options",
                          "drops", "flow_events_lost", "mss_clamped", "icmp_too_big", "icmp_steered", "services"],
               in: "stats", sourceLocation: sourceLocation)
    expectKeys(counters?["verdicts"], ["aborted", "drop", "pass", "tx", "redirect"], in: "stats.verdicts",
               sourceLocation: sourceLocation)
    expectKeys(counters?["drops"], ["malformed", "truncated", "no_backend", "no_source", "no_gateway", "encap",
                                    "too_big", "no_neighbour"],
               in: "stats.drops", sourceLocation: sourceLocation)
    for service in counters?["services"] as? [Any] ?? [] {
        expectKeys(service, ["name", "vip", "port", "protocol", "packets", "bytes", "backends"], in: "stats.services[]",
                   sourceLocation: sourceLocation)
        for backend in (service as? [String: Any])?["backends"] as? [Any] ?? [] {
            expectKeys(backend, ["address", "packets", "bytes"], in: "stats.services[].backends[]",
                       sourceLocation: sourceLocation)
        }
    }
}
