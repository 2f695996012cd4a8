// contrib/grafana/sluice.json against what the agent exports: a real Prometheus scrapes a lab
// agent (sync on, health checks on, traffic through it) and every query of the dashboard —
// each panel's, and each variable's label_values() — gets data back.
import Foundation
import SluiceTestSupport
import Testing

@Suite("the Grafana dashboard against a real Prometheus")
struct GrafanaDashboardTests {
    static let path = Lbctl.packageRoot.appendingPathComponent("contrib/grafana/sluice.json").path

    /// The dashboard's panel queries, with Grafana's variables as Prometheus can take them,
    /// and its variables' label_values(METRIC, LABEL) as (METRIC, LABEL).
    static func queries() throws -> (panels: [(title: String, expr: String)], variables: [(metric: String, label: String)]) {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        var exprs: [(String, String)] = []
        for panel in panels where panel["type"] as? String != "row" {
            let title = panel["title"] as? String ?? "?"
            let targets = try #require(panel["targets"] as? [[String: Any]], "panel \(title) has no targets")
            try #require(!targets.isEmpty, "panel \(title) has no targets")
            for target in targets {
                let expr = try #require(target["expr"] as? String, "panel \(title): a target without expr")
                exprs.append((title, expr.replacingOccurrences(of: "$__rate_interval", with: "1m")
                    .replacingOccurrences(of: "$service", with: ".*").replacingOccurrences(of: "$instance", with: ".*")))
            }
        }
        let templating = try #require((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]])
        var variables: [(String, String)] = []
        for variable in templating where variable["type"] as? String == "query" {
            let definition = try #require(variable["definition"] as? String)
            let inner = try #require(definition.firstRange(of: "label_values(").map { definition[$0.upperBound...].dropLast() },
                                     "\(definition): not label_values(METRIC, LABEL)")
            let comma = try #require(inner.lastIndex(of: ","))
            variables.append((String(inner[..<comma]).replacingOccurrences(of: "$instance", with: ".*"),
                              inner[inner.index(after: comma)...].trimmingCharacters(in: .whitespaces)))
        }
        return (exprs, variables)
    }

    @Test("the dashboard is well formed and covers traffic, flows, health, drops and sync")
    func dashboardShape() throws {
        let (panels, variables) = try Self.queries()
        let all = panels.map(\.expr).joined(separator: "\n")
        for metric in ["sluice_vip_packets_total", "sluice_packets_total", "sluice_bytes_total", "sluice_new_flows_total",
                       "sluice_conntrack_entries", "sluice_backend_up", "sluice_drops_total", "sluice_sync_records_sent_total"] {
            #expect(all.contains(metric), "no panel queries \(metric)")
        }
        #expect(variables.map(\.label) == ["instance", "service"])
    }

    @Test("every panel's query and every variable's label_values gets data from a Prometheus scraping a lab agent under traffic")
    func everyQueryHasData() async throws {
        let (panels, variables) = try Self.queries()
        try await ECMPFailoverTests.withTwoBalancerLab { lab in
            let agents = try await SyncedAgents(lab: lab)
            try await agents.requireReady()
            let agent = agents[.lb]
            let file = try Lab.checked(await Lab.run("services", lab.name, ["be1:1,be2:1", "lb"])).stdout
            let put = try await agent.request("PUT", "/v1/services", body: try LabHealthTests.checked(file), token: agent.token)
            try #require(put.status == 200, "\(put)")
            let port = try #require(agent.baseURL.split(separator: ":").last.map(String.init), "\(agent.baseURL)")
            let prometheus = try PrometheusServer(namespace: agent.namespace, targets: ["127.0.0.1:\(port)"])
            try await withCleanup {
                // A scrape before the traffic, so that rate() sees the counters move.
                let scraped = ContinuousClock.now + .seconds(20)
                while try await prometheus.query(#"up{job="sluice"} == 1"#)?.isEmpty ?? true {
                    try #require(prometheus.isRunning && ContinuousClock.now < scraped, "no scrape within 20 s:\n\(prometheus.log)")
                    try await Task.sleep(for: .milliseconds(200))
                }
                let http = try await lab.client(.http, LabHealthTests.vip4, 80, count: 60)
                try #require(http.ok == 60, "HTTP burst failed:\n\(http.output)")
                let udp = try await lab.client(.udp, LabHealthTests.vip4, 53, count: 40)
                try #require(udp.ok == 40, "UDP burst failed:\n\(udp.output)")

                var empty: [String] = [], rate = 0.0
                let deadline = ContinuousClock.now + .seconds(30)
                while true {  // rate() needs a scrape after the traffic; the health checks a verdict
                    try #require(prometheus.isRunning, "prometheus exited:\n\(prometheus.log)")
                    // Data, and the traffic's: web's per-backend packet rate is above zero.
                    let web = try await prometheus.query(#"sum(rate(sluice_packets_total{service="web"}[1m]))"#) ?? []
                    rate = (web.first?["value"] as? [Any])?.last.flatMap { ($0 as? String).flatMap(Double.init) } ?? 0
                    empty = []
                    for (title, expr) in panels {
                        let result = try await prometheus.query(expr) ?? []
                        if result.isEmpty { empty.append("\(title): \(expr)") }
                    }
                    for (metric, label) in variables {
                        let result = try await prometheus.query(metric) ?? []
                        if !result.contains(where: { ($0["metric"] as? [String: String])?[label] != nil }) {
                            empty.append("variable \(label): label_values(\(metric), \(label))")
                        }
                    }
                    if (empty.isEmpty && rate > 0) || ContinuousClock.now >= deadline { break }
                    try await Task.sleep(for: .milliseconds(500))
                }
                #expect(empty.isEmpty, "queries with no data after 30 s:\n\(empty.joined(separator: "\n"))\n\(prometheus.log)")
                #expect(rate > 0, "web's packet rate in Prometheus after the traffic: \(rate)")
            } cleanup: {
                await prometheus.stop()
            }
        }
    }
}
