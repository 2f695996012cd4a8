// Health checks in the model: what the parser reads, how timings resolve against the
// agent's defaults, the JSON schema, diff lines, and which backends a table leaves out.
import Foundation
import Testing
@testable import SluiceCore

private func service(_ check: String) throws -> Service {
    let text = """
        node: { source_v4: 192.0.2.10 }
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp
            backends: [ {address: 10.1.0.21} ]
            healthcheck: \(check)
        """
    return try ServiceFileParser.parse(text, file: "s.yaml").services[0]
}

private let a = IPAddress("10.1.0.1")!, b = IPAddress("10.1.0.2")!, c = IPAddress("10.1.0.3")!

@Suite struct HealthCheckTests {
    @Test func everyFieldIsRead() throws {
        let http = try #require(try service("{ type: http, port: 8080, path: /healthz, expect_status: 204, interval: 500ms, timeout: 200ms, rise: 3, fall: 4 }").healthCheck)
        #expect(http == HealthCheck(kind: .http, port: 8080, path: "/healthz", expectStatus: 204, intervalMilliseconds: 500,
                                    timeoutMilliseconds: 200, rise: 3, fall: 4))
        let udp = try #require(try service("{ type: udp, send: ping, expect: pong, interval: 1m }").healthCheck)
        #expect(udp == HealthCheck(kind: .udp, send: "ping", expect: "pong", intervalMilliseconds: 60_000))
        #expect(try service("{ type: tcp }").healthCheck == HealthCheck(kind: .tcp))
    }

    @Test func unsetTimingsComeFromTheDefaultsAndTheTimeoutIsCappedAtTheInterval() {
        let defaults = HealthCheckDefaults(intervalMilliseconds: 2000, timeoutMilliseconds: 1000, rise: 2, fall: 3)
        #expect(HealthCheck(kind: .tcp).resolved(with: defaults) == defaults)
        #expect(HealthCheck(kind: .tcp, intervalMilliseconds: 500, fall: 1).resolved(with: defaults)
                == HealthCheckDefaults(intervalMilliseconds: 500, timeoutMilliseconds: 500, rise: 2, fall: 1))
    }

    @Test func durations() {
        #expect(HealthCheck.parseDuration("250ms") == 250)
        #expect(HealthCheck.parseDuration("2s") == 2000)
        #expect(HealthCheck.parseDuration("1m") == 60_000)
        for bad in ["2", "s", "1.5s", "-1s", "2 s", "1d", "１s", ""] {
            #expect(HealthCheck.parseDuration(bad) == nil, "\(bad)")
        }
        #expect(HealthCheck.parseDuration("1h") == 3_600_000)
        #expect(HealthCheck.formatDuration(90_000) == "90s")
        #expect(HealthCheck.formatDuration(1500) == "1500ms")
    }

    @Test func theJSONSchemaIsTheServiceFileSchema() throws {
        let check = HealthCheck(kind: .http, port: 8080, path: "/h", intervalMilliseconds: 1500, rise: 2)
        let data = try JSONEncoder().encode(check)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["type"] as? String == "http")
        #expect(object["interval"] as? String == "1500ms")
        #expect(object["timeout"] == nil, "unset keys are left out, as in the file")
        #expect(try JSONDecoder().decode(HealthCheck.self, from: data) == check)
        // And the JSON the agent answers parses as a service file again.
        var web = try service("{ type: http, port: 8080, path: /h, interval: 1500ms, rise: 2 }")
        let json = ServiceFile(node: NodeConfig(sourceV4: IPAddress("192.0.2.10")), services: [web])
        let text = String(decoding: try JSONEncoder().encode(json), as: UTF8.self)
        #expect(try ServiceFileParser.parse(text, file: "json").services[0] == web)
        web.healthCheck = nil
        #expect(!String(decoding: try JSONEncoder().encode(web), as: UTF8.self).contains("healthcheck"))
    }

    @Test func aChangedCheckIsADiffLine() throws {
        let before = try service("{ type: tcp }")
        let after = try service("{ type: http, path: /healthz, fall: 2 }")
        let diff = ConfigDiff.between(current: ServiceFile(services: [before]), desired: ServiceFile(services: [after]))
        #expect(diff.lines == ["~ service web: healthcheck tcp -> http /healthz fall 2"])
        let removed = ConfigDiff.between(current: ServiceFile(services: [after]), desired: ServiceFile(services: [before.withoutHealthCheck]))
        #expect(removed.lines == ["~ service web: healthcheck http /healthz fall 2 -> none"])
    }

    @Test func downBackendsAreLeftOutUnlessEveryOneIsDown() {
        let backends = [Backend(address: a), Backend(address: b, weight: 2), Backend(address: c, weight: 0)]
        #expect(HealthPolicy.excluded(backends, down: [], excludedNow: []) == [])
        #expect(HealthPolicy.excluded(backends, down: [a], excludedNow: []) == [a])
        // c is drained: it takes no new flows whatever its health, so it is never "left out".
        #expect(HealthPolicy.excluded(backends, down: [a, c], excludedNow: []) == [a])
        // Every backend with weight down: the table in effect (without a) stays.
        #expect(HealthPolicy.excluded(backends, down: [a, b], excludedNow: [a]) == [a])
        // ... and recovering b puts it back at once.
        #expect(HealthPolicy.excluded(backends, down: [a], excludedNow: [a]) == [a])
        // All down with nothing known about the table in effect: leave nothing out (fail open).
        #expect(HealthPolicy.excluded(backends, down: [a, b], excludedNow: []) == [])
        #expect(HealthPolicy.excluded(backends, down: [a, b], excludedNow: [a, b]) == [])
    }
}
