// The agent's configuration as operators write it, mutated (3,000 documents in `make test`,
// 100,000 in `make fuzz`, as for service files): every one parses or is refused naming the
// file, the line and what is wrong; none crashes the parser.
import Foundation
import SluiceAgent
import SluiceCore
import SluiceTestSupport
import Testing

@Suite("agent configuration, fuzzed")
struct AgentConfigFuzzTests {
    /// A valid configuration that uses every section.
    static let seedFile = """
        listen: "[::1]:9400"
        pin_path: /sys/fs/bpf/lb2
        token_file: /etc/sluice/token
        services_file: /var/lib/sluice/services.yaml
        tls: { cert: /c.pem, key: /k.pem }
        healthcheck_defaults: { interval: 5s, timeout: 1500ms, rise: 3, fall: 4 }
        conntrack:
          tcp_idle_timeout: 1h
          udp_idle_timeout: 30s
          tcp_syn_timeout: 10s
          tcp_closing_timeout: 2m
        sync:
          listen: 10.0.0.1:9311
          peers: ["10.0.0.2:9301", "[fd00::3]:9302"]
          key_file: /sync.key
          batch_interval: 20ms
          resync_timeout: 1m
        bgp:
          bird_socket: /run/bird/bird.ctl
          include_file: /var/lib/sluice/bird-vips.conf
          communities: ["65100:100"]
          med: 10
          local_pref: 200
        """

    @Test("every mutated agent configuration parses or is refused naming the file, the line and what is wrong")
    func theParserNamesTheLineOfEveryRefusal() async throws {
        _ = try AgentConfig.parse(Self.seedFile, file: "seed.yaml")
        let seed = SplitMix64.testSeed
        let count = ProcessInfo.processInfo.environment["SLUICE_FUZZ_DOCUMENTS"].flatMap(Int.init) ?? 3_000
        // Seconds of CPU: on a thread of its own, and while no lab (whose tests measure time) is up.
        let (accepted, refused, unplaced) = try await LabSlots.shared.withPermits(LabSlots.shared.permits) {
            try await offPool {
                var mutator = DocumentMutator(seed: seed)
                var accepted = 0, refused = 0
                var unplaced: [String] = []
                for _ in 0..<count {
                    let document = mutator.mutate(Self.seedFile)
                    do throws(ConfigError) {
                        _ = try AgentConfig.parse(document, file: "agent.yaml")
                        accepted += 1
                    } catch {
                        refused += 1
                        if error.line == nil || error.message.isEmpty || !error.description.hasPrefix("agent.yaml:") {
                            unplaced.append("\(error.description)\n--- document:\n\(document)")
                        }
                    }
                }
                return (accepted, refused, unplaced)
            }
        }
        print("agent configurations fuzzed (seed \(seed)): \(count) documents, \(accepted) accepted, \(refused) refused")
        #expect(unplaced.isEmpty, "\(unplaced.count) refusals without a line (seed \(seed)); the first:\n\(unplaced.prefix(3).joined(separator: "\n=====\n"))")
    }
}
