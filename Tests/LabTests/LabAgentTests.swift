// lbctl agent in the lab: it runs in the balancer's namespace over the lab's pinned
// balancer (adopting it), while real clients send TCP and UDP through the VIPs. A real
// Prometheus server scrapes it; a kill -9 and restart in the middle of a burst of new
// connections loses no connection, no service and no counter.
import Foundation
import Glibc
import SluiceTestSupport
import Testing

@Suite("lbctl agent in the namespace lab")
struct LabAgentTests {
    static let vip4 = "198.51.100.10"

    @Test("a Prometheus server scraping the agent every second sees per-backend packet counters equal to lbctl stats; promtool accepts /metrics")
    func prometheusScrapesTheAgent() async throws {
        try await Lab.withLab { lab in
            let agent = try await LabAgent(lab: lab)
            let http = try await lab.client(.http, Self.vip4, 80, count: 60)
            try #require(http.ok == 60 && http.failed == 0, "HTTP burst failed:\n\(http.output)")
            let udp = try await lab.client(.udp, Self.vip4, 53, count: 40)
            try #require(udp.ok == 40 && udp.failed == 0, "UDP burst failed:\n\(udp.output)")
            // The clients have exited; a scrape that starts after this instant (with 200 ms to
            // spare) holds all their packets.
            let trafficEnd = Date().timeIntervalSince1970 + 0.2

            let metrics = try await agent.request("GET", "/metrics")
            try #require(metrics.status == 200, "\(metrics)")
            let metricsFile = agent.directory + "/metrics.txt"
            try metrics.body.write(to: URL(fileURLWithPath: metricsFile))
            let check = try await Command.run("/bin/sh", ["-c", "promtool check metrics < '\(metricsFile)'"])
            #expect(check.status == 0, "promtool check metrics:\n\(check)")

            let port = try #require(agent.baseURL.split(separator: ":").last.map(String.init), "\(agent.baseURL)")
            let prometheus = try PrometheusServer(namespace: agent.namespace, targets: ["127.0.0.1:\(port)"])
            try await withCleanup {
                var expected: [String: Int] = [:], seen: [String: Int] = [:], lastScrape = 0.0
                let deadline = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(500))
                    try #require(prometheus.isRunning, "prometheus exited:\n\(prometheus.log)")
                    expected = [:]
                    for service in try await lab.stats().services {
                        for backend in service.backends { expected["\(service.name) \(service.vip) \(backend.address)"] = backend.packets }
                    }
                    // The time of the latest successful scrape, then the series (from that scrape or a later one).
                    guard let up = try await prometheus.query(#"timestamp(up{job="sluice"} == 1)"#),
                          let scraped = up.first.flatMap(Self.value), scraped >= trafficEnd,
                          let series = try await prometheus.query("sluice_packets_total") else { continue }
                    lastScrape = scraped
                    seen = [:]
                    for sample in series {
                        guard let labels = sample["metric"] as? [String: String], let value = Self.value(sample) else { continue }
                        seen["\(labels["service"] ?? "?") \(labels["vip"] ?? "?") \(labels["backend"] ?? "?")"] = Int(value)
                    }
                    if seen == expected { break }
                }
                #expect(lastScrape >= trafficEnd, "no scrape after the traffic within 20 s:\n\(prometheus.log)\n\(agent.process.stderr)")
                let backendCount = try await lab.status().services.reduce(0) { $0 + $1.backends.count }
                #expect(expected.count == backendCount && backendCount >= 14, "every (service, backend) in lbctl stats: \(expected)")
                #expect(seen == expected, "Prometheus's sluice_packets_total (left) against lbctl stats --json (right)")
                let web = expected.filter { $0.key.hasPrefix("web \(Self.vip4) ") }.values.reduce(0, +)
                let dns = expected.filter { $0.key.hasPrefix("dns \(Self.vip4) ") }.values.reduce(0, +)
                #expect(web >= 60 * 3 && dns == 40, "the traffic was counted: web \(web) packets, dns \(dns)")
            } cleanup: {
                await prometheus.stop()
            }
        }
    }

    @Test("kill -9 of the agent during a burst of new connections: no client fails, GET /v1/services is unchanged, no _total counter goes back")
    func killNineAndRestart() async throws {
        try await Lab.withLab { lab in
            let agent = try await LabAgent(lab: lab)
            let yaml = try String(contentsOfFile: lab.directory + "/services.yaml", encoding: .utf8)
            let put = try await agent.request("PUT", "/v1/services", body: yaml, token: agent.token)
            try #require(put.status == 200, "\(put)")
            try #require(FileManager.default.fileExists(atPath: agent.servicesPath), "the PUT set was persisted")
            let servicesBefore = try await agent.request("GET", "/v1/services")
            try #require(servicesBefore.status == 200, "\(servicesBefore)")

            // Clients open new connections (and send new UDP flows) in batches, back to back,
            // from before the kill until a batch that starts after the restart has finished.
            let restarted = Flag()
            // Child tasks: each awaits its client processes, so neither holds a thread.
            async let http = Self.burstsUntil(restarted) { try await lab.client(.http, Self.vip4, 80, count: 100) }
            async let udp = Self.burstsUntil(restarted) { try await lab.client(.udp, Self.vip4, 53, count: 50) }
            let startedBursts = ContinuousClock.now
            while restarted.batchesStarted < 2 && ContinuousClock.now - startedBursts < .seconds(10) {
                try await Task.sleep(for: .milliseconds(20))  // until both clients are sending
            }
            try await Task.sleep(for: .milliseconds(300))
            let metricsBefore = try await agent.request("GET", "/metrics")
            try #require(metricsBefore.status == 200, "\(metricsBefore)")
            let killedAt = Date()
            let status = await agent.kill()
            #expect(status == SIGKILL, "the agent died of SIGKILL (status \(String(describing: status)))")
            try await Task.sleep(for: .milliseconds(500))
            try await agent.start()
            restarted.set()
            let httpRun = try await http, udpRun = try await udp

            for (kind, run) in [("HTTP", httpRun), ("UDP", udpRun)] {
                #expect(run.firstStart < killedAt && run.batches >= 2, "\(kind) clients ran across the kill: \(run.batches) batches")
                #expect(run.sent > 0 && run.ok == run.sent && run.failed == 0,
                        "\(kind): \(run.ok) of \(run.sent) answered, \(run.failed) failed\n\(run.failures.joined(separator: "\n"))")
            }

            let servicesAfter = try await agent.request("GET", "/v1/services")
            try #require(servicesAfter.status == 200, "\(servicesAfter)")
            let before = try JSONSerialization.jsonObject(with: servicesBefore.body) as? NSDictionary
            let after = try JSONSerialization.jsonObject(with: servicesAfter.body) as? NSDictionary
            #expect(before != nil && before == after, "GET /v1/services changed across the restart:\n\(servicesBefore.text)\n\(servicesAfter.text)")

            let metricsAfter = try await agent.request("GET", "/metrics")
            try #require(metricsAfter.status == 200, "\(metricsAfter)")
            let old = Self.totals(metricsBefore.text), new = Self.totals(metricsAfter.text)
            #expect(old.count > 20, "the counters before the kill: \(old.keys.sorted())")
            for (series, value) in old.sorted(by: { $0.key < $1.key }) {
                let now = new[series]
                #expect(now != nil && now! >= value, "\(series): \(value) before the kill, \(now.map { "\($0)" } ?? "missing") after")
            }
            #expect((new[#"sluice_xdp_verdicts_total{verdict="tx"}"#] ?? 0) > (old[#"sluice_xdp_verdicts_total{verdict="tx"}"#] ?? 0),
                    "the data plane kept forwarding")
        }
    }

    /// Set once, read from other tasks; counts the batches begun, too.
    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        private var started = 0
        func set() { lock.withLock { value = true } }
        var isSet: Bool { lock.withLock { value } }
        func batchStarted() { lock.withLock { started += 1 } }
        var batchesStarted: Int { lock.withLock { started } }
    }

    struct BurstRun: Sendable {
        var sent = 0, ok = 0, failed = 0, batches = 0
        var firstStart = Date.distantFuture
        var failures: [String] = []
    }

    /// Runs `batch` back to back until `flag` is set, then once more.
    static func burstsUntil(_ flag: Flag, _ batch: @Sendable () async throws -> Lab.ClientResult) async throws -> BurstRun {
        var run = BurstRun()
        var last = false
        while true {
            last = flag.isSet
            if run.batches == 0 {
                run.firstStart = Date()
                flag.batchStarted()
            }
            let result = try await batch()
            run.batches += 1
            run.sent += result.sent
            run.ok += result.ok
            run.failed += result.failed
            if result.failed > 0 { run.failures.append(result.output) }
            if last { return run }
        }
    }

    /// A query result's value (`"value": [time, "string"]`) as a number.
    static func value(_ sample: [String: Any]) -> Double? {
        guard let pair = sample["value"] as? [Any], pair.count == 2, let text = pair[1] as? String else { return nil }
        return Double(text)
    }

    /// The samples of every `…_total` series (full name and labels, as written) to their values.
    static func totals(_ text: String) -> [String: Double] {
        var samples: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = String(line[..<space])
            let name = series.split(separator: "{", maxSplits: 1).first.map(String.init) ?? series
            if name.hasSuffix("_total") { samples[series] = value }
        }
        return samples
    }
}
