// Health checks end to end: the agent in the balancer's namespace probes the backends'
// own addresses (HTTP :8080 for web, UDP :53 for dns); when a backend's servers stop it is
// taken out of the Maglev tables within interval x fall (+1 s), so new connections and
// datagrams all go to the others, and `lbctl status` and /metrics say so; when they start
// again it is put back after `rise` passes and takes new flows again.
import Foundation
import SluiceTestSupport
import Testing

@Suite("health checks in the namespace lab")
struct LabHealthTests {
    static let vip4 = "198.51.100.10"
    static let interval = 1.0, fall = 2, rise = 2

    /// The lab's service file with a health check on web (HTTP) and dns (UDP).
    static func checkedServices(_ lab: Lab) throws -> String {
        var yaml = try String(contentsOfFile: lab.directory + "/services.yaml", encoding: .utf8)
        let timings = "interval: \(Int(interval))s, timeout: 500ms, rise: \(rise), fall: \(fall)"
        for (service, check) in [("web", "type: http, port: 8080, path: /healthz, expect_status: 200"),
                                 ("dns", "type: udp, send: ping, expect: ping")] {
            let head = try #require(yaml.range(of: "  - name: \(service)\n"), "no service \(service) in\n\(yaml)")
            let backends = try #require(yaml.range(of: "    backends:\n", range: head.upperBound..<yaml.endIndex))
            yaml.insert(contentsOf: "    healthcheck: { \(check), \(timings) }\n", at: backends.lowerBound)
        }
        return yaml
    }

    /// Web's and dns's state and health of `backend` in `lbctl status --json`.
    static func health(_ lab: Lab, _ address: String) async throws -> [String: String] {
        var seen: [String: String] = [:]
        for service in try await lab.status().services where ["web", "dns"].contains(service.name) {
            if let backend = service.backends.first(where: { $0.address == address }) {
                seen[service.name] = "\(backend.state)/\(backend.health)"
            }
        }
        return seen
    }

    /// Polls `condition` until it holds and returns how long after `start` the look that first
    /// saw it hold ended (an upper bound of when the change happened), or nil after `timeout`.
    /// It awaits between looks, holding no thread, and looks once more after every sleep
    /// before it reads the clock. The waits between looks are short (100 ms) and nothing in
    /// the test process blocks a concurrency thread, so a look is never held back for long.
    static func timeUntil(since start: ContinuousClock.Instant = .now, timeout: Duration,
                          _ condition: () async throws -> Bool) async throws -> Duration? {
        while true {
            if try await condition() { return ContinuousClock.now - start }
            if ContinuousClock.now - start >= timeout { return nil }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    @Test("a backend whose servers stop is taken out within interval x fall (+1 s): no new connection or datagram reaches it; it is back after rise")
    func aDeadBackendIsTakenOutAndPutBack() async throws {
        try await Lab.withLab { lab in
            let agent = try await LabAgent(lab: lab)
            let put = try await agent.request("PUT", "/v1/services", body: try Self.checkedServices(lab), token: agent.token)
            try #require(put.status == 200, "\(put)")
            let be1 = try lab.info("be1_v4")
            func be1Health() async -> [String: String] { (try? await Self.health(lab, be1)) ?? [:] }
            let up = try await Self.timeUntil(timeout: .seconds(10)) { try await Self.health(lab, be1) == ["web": "active/up", "dns": "active/up"] }
            let notUp = await (up == nil ? be1Health() : [:])
            try #require(up != nil, "be1 is not up and checked: \(notUp)\n\(agent.process.stderr)")

            // be1's servers die: within interval x fall + 1 s it is out of both tables.
            let stopping = ContinuousClock.now
            let stop = try await lab.setServer("be1", running: false)
            try #require(stop.duration < .seconds(1), "stopping be1's servers took \(stop.duration)")
            let bound = Duration.seconds(Self.interval * Double(Self.fall) + 1)
            let out = try await Self.timeUntil(since: stopping, timeout: .seconds(15)) {
                try await Self.health(lab, be1) == ["web": "down/down", "dns": "down/down"]
            }
            let notOut = await (out == nil ? be1Health() : [:])
            let took = try #require(out, "be1 was not taken out: \(notOut)\n\(agent.process.stderr)")
            print("health (lab \(lab.name)): be1 out \(took) after its servers stopped (bound \(bound))")
            #expect(took <= bound, "be1 was taken out after \(took), more than interval x fall + 1 s = \(bound)")
            let metrics = try await agent.request("GET", "/metrics").text
            #expect(metrics.contains(#"sluice_backend_up{service="web",vip="198.51.100.10",backend="\#(be1)"} 0"#), "\(metrics)")
            #expect(metrics.contains(#"sluice_backend_active{service="web",vip="198.51.100.10",backend="\#(be1)"} 0"#))

            // New connections and datagrams all go to be2 and be3, so every one is answered.
            let before = try lab.log(of: "be1").count
            let http = try await lab.client(.http, Self.vip4, 80, count: 60)
            #expect(http.ok == 60 && http.failed == 0 && (http.backends["be1"] ?? 0) == 0, "HTTP with be1 down:\n\(http.output)")
            let udp = try await lab.client(.udp, Self.vip4, 53, count: 40)
            #expect(udp.ok == 40 && udp.failed == 0 && (udp.backends["be1"] ?? 0) == 0, "UDP with be1 down:\n\(udp.output)")
            #expect(try lab.log(of: "be1").count == before, "be1's servers are down: nothing may have reached them")

            // be1 comes back: after `rise` passing probes it is put back and takes new flows.
            try await lab.setServer("be1", running: true)
            let back = try await Self.timeUntil(timeout: .seconds(15)) {
                try await Self.health(lab, be1) == ["web": "active/up", "dns": "active/up"]
            }
            let notBack = await (back == nil ? be1Health() : [:])
            let returned = try #require(back, "be1 did not come back: \(notBack)\n\(agent.process.stderr)")
            print("health (lab \(lab.name)): be1 back \(returned) after its servers started (rise \(Self.rise) x \(Self.interval) s)")
            #expect(returned >= .seconds(Self.interval * Double(Self.rise - 1)), "back after \(returned): sooner than rise allows")
            let again = try await lab.client(.http, Self.vip4, 80, count: 60)
            #expect(again.ok == 60 && again.failed == 0 && (again.backends["be1"] ?? 0) > 0, "HTTP with be1 back:\n\(again.output)")
        }
    }
}
