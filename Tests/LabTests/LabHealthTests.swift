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
        try checked(String(contentsOfFile: lab.directory + "/services.yaml", encoding: .utf8))
    }

    /// `yaml` (a lab service file) with health checks on web (HTTP), dns (UDP) and, with
    /// `echo`, echo (a TCP connect to the backend's HTTP port).
    static func checked(_ yaml: String, echo: Bool = false) throws -> String {
        var yaml = yaml
        let timings = "interval: \(Int(interval))s, timeout: 500ms, rise: \(rise), fall: \(fall)"
        var checks = [("web", "type: http, port: 8080, path: /healthz, expect_status: 200"),
                      ("dns", "type: udp, send: ping, expect: ping")]
        if echo { checks.append(("echo", "type: tcp, port: 8080")) }
        for (service, check) in checks {
            let head = try #require(yaml.range(of: "  - name: \(service)\n"), "no service \(service) in\n\(yaml)")
            let backends = try #require(yaml.range(of: "    backends:\n", range: head.upperBound..<yaml.endIndex))
            yaml.insert(contentsOf: "    healthcheck: { \(check), \(timings) }\n", at: backends.lowerBound)
        }
        return yaml
    }

    static let up = ["web": "active/up", "dns": "active/up"], down = ["web": "down/down", "dns": "down/down"]

    /// Web's and dns's state and health of backend `address` in `lbctl status --json` output.
    static func health(_ result: CommandResult?, _ address: String) -> [String: String] {
        guard let data = result?.stdoutData, let status = try? JSONDecoder().decode(Lab.Status.self, from: data) else { return [:] }
        var seen: [String: String] = [:]
        for service in status.services where ["web", "dns"].contains(service.name) {
            if let backend = service.backends.first(where: { $0.address == address }) {
                seen[service.name] = "\(backend.state)/\(backend.health)"
            }
        }
        return seen
    }

    /// Starts watching `lbctl status` until backend `address`'s health is `state` in web and
    /// dns. The watch runs off the concurrency pool (CommandWatch): its looks, and the time
    /// its first satisfied look ended, do not depend on when this test's task runs.
    static func watch(_ lab: Lab, _ address: String, until state: [String: String], timeout: Duration) throws -> CommandWatch {
        try lab.watchLbctl(["status", "--json"], timeout: timeout) { health($0.first, address) == state }
    }

    /// The look that saw `state`, or a failure saying what was seen last.
    static func satisfied(_ outcome: CommandWatch.Outcome, _ address: String, _ what: String, _ agent: LabAgent) throws -> CommandWatch.Look {
        let last = outcome.look.map { "\(health($0.results.first, address))" } ?? (outcome.error ?? "no look")
        return try #require(outcome.satisfied ? outcome.look : nil, "be1 \(what): last seen \(last)\n\(agent.process.stderr)")
    }

    @Test("a backend whose servers stop is taken out within interval x fall (+1 s): no new connection or datagram reaches it; it is back after rise")
    func aDeadBackendIsTakenOutAndPutBack() async throws {
        try await Lab.withLab { lab in
            let agent = try await LabAgent(lab: lab)
            let put = try await agent.request("PUT", "/v1/services", body: try Self.checkedServices(lab), token: agent.token)
            try #require(put.status == 200, "\(put)")
            let be1 = try lab.info("be1_v4")
            _ = try Self.satisfied(await Self.watch(lab, be1, until: Self.up, timeout: .seconds(10)).outcome, be1, "is not up and checked", agent)

            // be1's servers die: within interval x fall + 1 s it is out of both tables. Timed
            // from the start of the stop command to the end of the first look that saw it out
            // (watched from before the stop).
            let out = try Self.watch(lab, be1, until: Self.down, timeout: .seconds(15))
            let stop = try await lab.setServer("be1", running: false)
            try #require(stop.duration < .seconds(1), "stopping be1's servers took \(stop.duration)")
            let bound = Duration.seconds(Self.interval * Double(Self.fall) + 1)
            let outcome = await out.outcome
            let seen = try Self.satisfied(outcome, be1, "was not taken out", agent)
            let took = seen.finished - stop.started
            // A look reads the maps somewhere inside its run (nsenter + lbctl status: 0.1 s on
            // a quiet machine, 0.5-0.9 s when every core is busy with the other suites), so
            // the take-out is known to within one look: that much is added to the bound.
            let lookLength = seen.finished - seen.started
            let after = outcome.previous.map { "after \($0.started - stop.started), " } ?? ""
            let looks = outcome.previous.map { "looks of \($0.finished - $0.started) and \(outcome.look!.finished - outcome.look!.started)" } ?? ""
            print("health (lab \(lab.name)): be1 out \(took) after its servers stopped (\(after)\(looks); bound \(bound))")
            let logged = agent.process.stderr.split(separator: "\n").filter { $0.contains("health") }.joined(separator: "\n")
            #expect(took <= bound + lookLength,
                    "be1 was taken out \(after)by \(took), more than interval x fall + 1 s = \(bound) and the look that saw it (\(looks))\n\(logged)")
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
            // Timed from the end of the start command (its servers listen) to the end of the
            // first look that saw it back.
            let back = try Self.watch(lab, be1, until: Self.up, timeout: .seconds(20))
            let start = try await lab.setServer("be1", running: true)
            let returned = try Self.satisfied(await back.outcome, be1, "did not come back", agent).finished - start.exited
            print("health (lab \(lab.name)): be1 back \(returned) after its servers started (rise \(Self.rise) x \(Self.interval) s)")
            #expect(returned >= .seconds(Self.interval * Double(Self.rise - 1)), "back after \(returned): sooner than rise allows")
            let again = try await lab.client(.http, Self.vip4, 80, count: 60)
            #expect(again.ok == 60 && again.failed == 0 && (again.backends["be1"] ?? 0) > 0, "HTTP with be1 back:\n\(again.output)")
        }
    }
}
