// Service files as operators and attackers write them: seeded mutations of valid files fed
// to the parser (3,000 in `make test`, 100,000 in `make fuzz`), then a sample of them to
// the real `lbctl apply` over a pinned data plane (15, and 1,000). Every document parses or
// is refused with the file, the line and a message; `lbctl apply` exits 0 or 2, never
// anything else, and a refused apply leaves every byte of every pinned map as it was.
import Foundation
import SluiceCore
import SluiceTestSupport
import Testing

enum FuzzSeeds {
    /// Valid service files that use every key between them.
    static let serviceFiles = [
        Fixtures.good,
        """
        node:
          source_v4: 192.0.2.10
          source_v6: "2001:db8:ffff::10"
          maglev_table_size: 251
          tunnel_mtu: 1500
          gue_port: 6080
          nat_flow_budget: 125000
          snat_v4: [192.0.2.20, 192.0.2.21]
          snat_v6: ["2001:db8:ffff::20"]
          snat_ports: 1024-65535
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp
            forwarding: gue
            backends:
              - { address: 10.1.0.21, weight: 1 }
              - { address: 10.1.0.22, weight: 2 }
            healthcheck:
              type: http
              port: 8080
              path: /healthz
              expect_status: 200
              interval: 2s
              timeout: 1s
              rise: 2
              fall: 3
          - name: api
            vip: 198.51.100.20
            port: 443
            protocol: tcp
            forwarding: fullnat
            client_address: proxy-v2
            backends:
              - { address: 10.2.0.11, port: 8443, weight: 1 }
          - name: dns
            vip: "2001:db8:100::53"
            port: 53
            protocol: udp
            forwarding: nat
            backends:
              - address: "2001:db8:3::53"
                port: 5353
            healthcheck: { type: udp, send: "ping", expect: "pong", interval: 1s, timeout: 500ms }
          - name: l2
            vip: 198.51.100.30
            port: 8080
            protocol: tcp
            forwarding: l2dsr
            backends:
              - address: 10.1.0.40
        """,
        // Tunnel modes only: `lbctl apply` takes it into a data plane attached nowhere.
        """
        node:
          source_v4: 192.0.2.10
          source_v6: "2001:db8:ffff::10"
          maglev_table_size: 251
          tunnel_mtu: 1500
          gue_port: 6080
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp
            backends:
              - { address: 10.1.0.21, weight: 1 }
              - { address: 10.1.0.22, weight: 2 }
            healthcheck: { type: tcp, interval: 2s, timeout: 1s, rise: 2, fall: 3 }
          - name: web6
            vip: "2001:db8:100::10"
            port: 443
            protocol: tcp
            forwarding: gue
            backends:
              - address: "2001:db8:3::1"
              - address: "2001:db8:3::2"
                weight: 0
          - name: dns
            vip: 198.51.100.10
            port: 53
            protocol: udp
            backends:
              - address: 10.1.0.53
        """,
    ]

    /// Documents per run: SLUICE_FUZZ_DOCUMENTS (`make fuzz` sets 100,000), else 3,000.
    static var documents: Int {
        ProcessInfo.processInfo.environment["SLUICE_FUZZ_DOCUMENTS"].flatMap(Int.init) ?? 3_000
    }

    /// Files applied with lbctl per run: SLUICE_FUZZ_APPLIES (`make fuzz` sets 1,000), else 15.
    static var applies: Int {
        ProcessInfo.processInfo.environment["SLUICE_FUZZ_APPLIES"].flatMap(Int.init) ?? 15
    }

    /// SLUICE_FUZZ_SEED, else a new one (printed, so a failure can be replayed).
    static var seed: UInt64 { SplitMix64.testSeed }
}

@Suite("service files, fuzzed")
struct ServiceFileFuzzTests {
    @Test("every mutated service file parses or is refused naming the file, the line and what is wrong")
    func theParserNamesTheLineOfEveryRefusal() async throws {
        for seedFile in FuzzSeeds.serviceFiles {
            #expect(throws: Never.self) { try ServiceFileParser.parse(seedFile, file: "seed.yaml") }
        }
        let seed = FuzzSeeds.seed, count = FuzzSeeds.documents
        // Seconds of CPU: on a thread of its own, and while no lab (whose tests measure time) is up.
        let (accepted, refused, withField, unplaced) = try await LabSlots.shared.withPermits(LabSlots.shared.permits) {
            try await offPool {
                var mutator = DocumentMutator(seed: seed)
                var accepted = 0, refused = 0, withField = 0
                var unplaced: [String] = []
                for index in 0..<count {
                    let document = mutator.mutate(FuzzSeeds.serviceFiles[index % FuzzSeeds.serviceFiles.count])
                    do throws(ConfigError) {
                        _ = try ServiceFileParser.parse(document, file: "fuzz.yaml")
                        accepted += 1
                    } catch {
                        refused += 1
                        if error.field != nil { withField += 1 }
                        if error.file != "fuzz.yaml" || error.line == nil || error.message.isEmpty || !error.description.hasPrefix("fuzz.yaml:") {
                            unplaced.append("\(error.description)\n--- document:\n\(document)")
                        }
                    }
                }
                return (accepted, refused, withField, unplaced)
            }
        }
        print("service files fuzzed (seed \(seed)): \(count) documents, \(accepted) accepted, \(refused) refused (\(withField) naming a field)")
        #expect(unplaced.isEmpty, "\(unplaced.count) refusals without a line (seed \(seed)); the first:\n\(unplaced.prefix(3).joined(separator: "\n=====\n"))")
    }

    @Test("lbctl apply of mutated files exits 0 or 2, and a refused one leaves every pinned map byte for byte as it was")
    func lbctlApplyRefusesWithoutChangingAMap() async throws {
        // Half a minute of both cores: while no lab (whose tests measure time) is up.
        try await LabSlots.shared.withPermits(LabSlots.shared.permits) { try await applyMutatedFiles() }
    }

    private func applyMutatedFiles() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        try #require(try await Lbctl.run("apply", "-f", try files.write("seed.yaml", FuzzSeeds.serviceFiles[2]), pinPath: pin).status == 0)

        func maps() async throws -> [String: [UInt8]] { try await offPool { try PinnedMapBytes.snapshot(pin) } }
        var before = try await maps()
        try #require(before["sl_vips"] != nil && before["sl_maglev"] != nil, "\(before.keys.sorted())")

        let seed = FuzzSeeds.seed
        var mutator = DocumentMutator(seed: seed)
        var outcomes: [Int32: Int] = [:]
        for index in 0..<FuzzSeeds.applies {
            let path = try files.write("fuzz.yaml", mutator.mutate(FuzzSeeds.serviceFiles[2]))
            let result = try await Lbctl.run("apply", "-f", path, pinPath: pin)
            outcomes[result.status, default: 0] += 1
            switch result.status {
            case 0:
                before = try await maps()
            case 2:
                #expect(result.stderr.hasPrefix("lbctl: error: \(path):"), "document \(index) (seed \(seed)): \(result)")
                let after = try await maps()
                #expect(after == before, "document \(index) (seed \(seed)) was refused but changed \(after.keys.filter { after[$0] != before[$0] }.sorted())\n\(result)")
            default:
                Issue.record("document \(index) (seed \(seed)): exit \(result.status)\n\(result)")
            }
        }
        print("lbctl apply of mutated files (seed \(seed)): \(outcomes.sorted { $0.key < $1.key }.map { "exit \($0.key): \($0.value)" }.joined(separator: ", "))")
    }
}
