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
    static func health(_ lab: Lab, _ address: String) throws -> [String: String] {
        var seen: [String: String] = [:]
        for service in try lab.status().services where ["web", "dns"].contains(service.name) {
            if let backend = service.backends.first(where: { $0.address == address }) {
                seen[service.name] = "\(backend.state)/\(backend.health)"
            }
        }
        return seen
    }

    /// Polls until `condition` holds; returns the time it took, or nil after `timeout`. It
    /// blocks its thread rather than awaiting: a test run keeps Swift's few concurrency
    /// threads busy, and a resumption waiting for one would add its wait to the time measured.
    static func timeUntil(timeout: Duration, _ condition: () throws -> Bool) throws -> Duration? {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            if try condition() { return ContinuousClock.now - start }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return nil
    }

    @Test("a backend whose servers stop is taken out within interval x fall (+1 s): no new connection or datagram reaches it; it is back after rise")
    func aDeadBackendIsTakenOutAndPutBack() throws {
        let lab = try Lab()
        defer {
            do { try lab.down() } catch { Issue.record(error, "lab \(lab.name) did not come down") }
        }
        let agent = try LabAgent(lab: lab)
        let put = try agent.request("PUT", "/v1/services", body: try Self.checkedServices(lab), token: agent.token)
        try #require(put.status == 200, "\(put)")
        let be1 = try lab.info("be1_v4")
        let up = try Self.timeUntil(timeout: .seconds(10)) { try Self.health(lab, be1) == ["web": "active/up", "dns": "active/up"] }
        try #require(up != nil, "be1 is not up and checked: \((try? Self.health(lab, be1)) ?? [:])\n\(agent.process.stderr)")

        // be1's servers die: within interval x fall + 1 s it is out of both tables.
        let stopping = ContinuousClock.now
        try lab.setServer("be1", running: false)
        let stopped = ContinuousClock.now - stopping
        try #require(stopped < .seconds(1), "stopping be1's servers took \(stopped)")
        let bound = Duration.seconds(Self.interval * Double(Self.fall) + 1)
        let out = try Self.timeUntil(timeout: .seconds(15)) { try Self.health(lab, be1) == ["web": "down/down", "dns": "down/down"] }
        let took = try #require(out.map { $0 + stopped }, "be1 was not taken out: \((try? Self.health(lab, be1)) ?? [:])\n\(agent.process.stderr)")
        print("health (lab \(lab.name)): be1 out \(took) after its servers stopped (bound \(bound))")
        #expect(took <= bound, "be1 was taken out after \(took), more than interval x fall + 1 s = \(bound)")
        let metrics = try agent.request("GET", "/metrics").text
        #expect(metrics.contains(#"sluice_backend_up{service="web",vip="198.51.100.10",backend="\#(be1)"} 0"#), "\(metrics)")
        #expect(metrics.contains(#"sluice_backend_active{service="web",vip="198.51.100.10",backend="\#(be1)"} 0"#))

        // New connections and datagrams all go to be2 and be3, so every one is answered.
        let before = try lab.log(of: "be1").count
        let http = try lab.client(.http, Self.vip4, 80, count: 60)
        #expect(http.ok == 60 && http.failed == 0 && (http.backends["be1"] ?? 0) == 0, "HTTP with be1 down:\n\(http.output)")
        let udp = try lab.client(.udp, Self.vip4, 53, count: 40)
        #expect(udp.ok == 40 && udp.failed == 0 && (udp.backends["be1"] ?? 0) == 0, "UDP with be1 down:\n\(udp.output)")
        #expect(try lab.log(of: "be1").count == before, "be1's servers are down: nothing may have reached them")

        // be1 comes back: after `rise` passing probes it is put back and takes new flows.
        try lab.setServer("be1", running: true)
        let back = try Self.timeUntil(timeout: .seconds(15)) { try Self.health(lab, be1) == ["web": "active/up", "dns": "active/up"] }
        let returned = try #require(back, "be1 did not come back: \((try? Self.health(lab, be1)) ?? [:])\n\(agent.process.stderr)")
        print("health (lab \(lab.name)): be1 back \(returned) after its servers started (rise \(Self.rise) x \(Self.interval) s)")
        #expect(returned >= .seconds(Self.interval * Double(Self.rise - 1)), "back after \(returned): sooner than rise allows")
        let again = try lab.client(.http, Self.vip4, 80, count: 60)
        #expect(again.ok == 60 && again.failed == 0 && (again.backends["be1"] ?? 0) > 0, "HTTP with be1 back:\n\(again.output)")
    }
}
