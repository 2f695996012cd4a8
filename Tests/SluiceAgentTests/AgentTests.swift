// lbctl agent as an operator runs it: a separate process on a loopback port the kernel
// picks, over a data plane pinned in the test's own bpffs. The control API's refusals
// (401, 400) change nothing; a good PUT changes the maps and is persisted; /metrics is
// valid Prometheus text (promtool) with the kernel's counters; SIGTERM stops it cleanly
// and the data plane keeps forwarding.
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// A data plane in a private bpffs, a token, a config and a running agent over them.
final class AgentFixture: @unchecked Sendable {
    static let token = "s3cret-token-for-tests"
    let files: ScratchDirectory
    let dataplane: TestDataplane
    let configPath: String
    let tokenPath: String
    let servicesPath: String
    private(set) var agent: AgentProcess

    /// With `tls`, a test CA (`caPath`) and a certificate it signs for 127.0.0.1 are made
    /// (openssl) and the agent serves HTTPS.
    var caPath: String { files.path + "/ca.pem" }

    init(applied yaml: String? = Fixtures.good, persisted: String? = nil, tls: Bool = false) async throws {
        files = try ScratchDirectory()
        dataplane = try await TestDataplane.make(yaml: yaml)
        tokenPath = try files.write("token", Self.token + "\n")
        servicesPath = files.path + "/state/services.yaml"
        if let persisted {
            try FileManager.default.createDirectory(atPath: files.path + "/state", withIntermediateDirectories: true)
            try persisted.write(toFile: servicesPath, atomically: true, encoding: .utf8)
        }
        var tlsKeys = ""
        if tls {
            let dir = files.path
            let extensions = try files.write("leaf.ext", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
            for arguments in [
                ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sluice test CA",
                 "-keyout", dir + "/ca.key", "-out", dir + "/ca.pem"],
                ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", dir + "/key.pem", "-out", dir + "/leaf.csr"],
                ["x509", "-req", "-in", dir + "/leaf.csr", "-CA", dir + "/ca.pem", "-CAkey", dir + "/ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", extensions, "-out", dir + "/cert.pem"],
            ] {
                let made = try await Command.run("/usr/bin/openssl", arguments)
                try #require(made.status == 0, "\(made)")
            }
            tlsKeys = "tls:\n  cert: \(files.path)/cert.pem\n  key: \(files.path)/key.pem\n"
        }
        configPath = try files.write("agent.yaml", """
            listen: 127.0.0.1:0
            pin_path: \(dataplane.pinPath)
            token_file: \(tokenPath)
            services_file: \(servicesPath)
            \(tlsKeys)
            """)
        agent = try await AgentProcess(configPath: configPath)
    }

    /// A fixture for `body`; afterwards the agent is killed (and awaited) and the data
    /// plane closed, however `body` ends.
    static func with(applied yaml: String? = Fixtures.good, persisted: String? = nil, tls: Bool = false,
                     _ body: (AgentFixture) async throws -> Void) async throws {
        let fixture = try await AgentFixture(applied: yaml, persisted: persisted, tls: tls)
        try await withCleanup { try await body(fixture) } cleanup: {
            await fixture.agent.stop(signal: SIGKILL)
            fixture.dataplane.close()
        }
    }

    func restart() async throws {
        let stopped = await agent.stop()
        try #require(stopped.status == 0, "the agent exits 0 on SIGTERM\n\(agent.stderr)")
        agent = try await AgentProcess(configPath: configPath)
    }

    /// SIGKILL, without a restart.
    func kill() async { await agent.stop(signal: SIGKILL) }

    /// A new agent over the same config and data plane (after `kill`).
    func start() async throws { agent = try await AgentProcess(configPath: configPath) }

    func lbctl(_ arguments: String...) async throws -> CommandResult {
        try await Lbctl.run(arguments + ["--pin-path", dataplane.pinPath])
    }

    /// `lbctl status --json`, the applied state as a user reads it.
    func status() async throws -> Data {
        let result = try await lbctl("status", "--json")
        try #require(result.status == 0, "\(result)")
        return result.stdoutData
    }

    /// The services of `lbctl status --json`, without per-apply fields.
    func serviceNames() async throws -> [String] {
        let object = try JSONSerialization.jsonObject(with: try await status()) as? [String: Any]
        return ((object?["services"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }.sorted()
    }
}

@Suite("lbctl agent")
struct AgentTests {
    @Test("GET /healthz, /v1/status and /v1/services answer JSON about the adopted data plane")
    func readsAnswer() async throws {
        try await AgentFixture.with { fixture in
            let health = try await fixture.agent.request("GET", "/healthz")
            #expect(health.status == 200 && health.contentType == "application/json", "\(health)")
            #expect(try health.json()["status"] as? String == "ok")

            let status = try await fixture.agent.request("GET", "/v1/status")
            #expect(status.status == 200, "\(status)")
            let fromAgent = try status.json(), fromLbctl = try JSONSerialization.jsonObject(with: try await fixture.status()) as? [String: Any]
            #expect((fromAgent["services"] as? [Any])?.count == 2)
            #expect(fromAgent["program_id"] as? Int == fromLbctl?["program_id"] as? Int, "the agent adopted the pinned program")

            let services = try await fixture.agent.request("GET", "/v1/services")
            #expect(services.status == 200, "\(services)")
            let file = try JSONDecoder().decode(ServiceFile.self, from: services.body)
            #expect(file == (try ServiceFileParser.parse(Fixtures.good, file: "good")), "GET /v1/services is the applied set")
        }
    }

    @Test("a write without a token, or with a wrong one, is refused with 401 and changes nothing")
    func writesNeedTheToken() async throws {
        try await AgentFixture.with { fixture in
            let before = try await fixture.status()
            let attempts: [(String, String, String?)] = [
                ("PUT", "/v1/services", nil), ("PUT", "/v1/services", "wrong"), ("PUT", "/v1/services", AgentFixture.token + "x"),
                ("PUT", "/v1/services", String(AgentFixture.token.dropLast())), ("POST", "/v1/services/validate", nil),
                ("POST", "/v1/services/validate", "wrong"),
            ]
            for (method, path, token) in attempts {
                let reply = try await fixture.agent.request(method, path, body: Fixtures.changed, token: token)
                #expect(reply.status == 401, "\(method) \(path) token \(token ?? "none"): \(reply)")
                #expect((try reply.json()["error"] as? String)?.contains("token") == true, "\(reply)")
            }
            #expect(try await fixture.status() == before, "a refused write changed the data plane")
            #expect(!FileManager.default.fileExists(atPath: fixture.servicesPath), "a refused write persisted something")
        }
    }

    @Test("a bad document is refused with 400 naming the field, and nothing changes", arguments: Fixtures.bad)
    func badDocumentIsRefused(_ bad: Fixtures.BadFile) async throws {
        try await AgentFixture.with { fixture in
            let before = try await fixture.status()
            for (method, path) in [("POST", "/v1/services/validate"), ("PUT", "/v1/services")] {
                let reply = try await fixture.agent.request(method, path, body: bad.text, token: AgentFixture.token)
                #expect(reply.status == 400, "\(method) \(path): \(reply)")
                let message = try reply.json()["error"] as? String ?? ""
                for mention in bad.mentions where mention != "line" {
                    #expect(message.contains(mention), "\(method) \(path): the error names \(mention): \(message)")
                }
            }
            #expect(try await fixture.status() == before, "a refused document changed the data plane")
            #expect(!FileManager.default.fileExists(atPath: fixture.servicesPath), "a refused document was persisted")
        }
    }

    @Test("a good PUT answers the diff, changes the data plane and persists the set; validate changes nothing")
    func goodPutApplies() async throws {
        try await AgentFixture.with { fixture in
            let expected = ConfigDiff.between(current: try ServiceFileParser.parse(Fixtures.good, file: "good"),
                                              desired: try ServiceFileParser.parse(Fixtures.changed, file: "changed"))
            let before = try await fixture.status()
            let dry = try await fixture.agent.request("POST", "/v1/services/validate", body: Fixtures.changed, token: AgentFixture.token)
            #expect(dry.status == 200, "\(dry)")
            #expect(try dry.json()["changes"] as? [String] == expected.lines)
            #expect(try dry.json()["applied"] as? Bool == false)
            // web loses a backend and reweighs one, web6 leaves; dns is new and disturbs nothing.
            let disruption = try dry.json()["disruption"] as? [[String: Any]] ?? []
            #expect(disruption.compactMap { $0["service"] as? String } == ["web", "web6"], "\(dry)")
            if let web = disruption.first, let web6 = disruption.last {
                let share = web["moved_share"] as? Double ?? 0
                #expect(web["removed"] as? Bool == false && share > 0 && share < 1 && web["slots_moved"] as? Int ?? 0 > 0, "\(web)")
                #expect(web6["removed"] as? Bool == true && web6["moved_share"] as? Double == 1, "\(web6)")
                #expect(web["flows_on_removed_backends"] as? Int == 0 && web6["flows_on_removed_backends"] as? Int == 0)
            }
            #expect(try await fixture.status() == before, "validate changed the data plane")

            let put = try await fixture.agent.request("PUT", "/v1/services", body: Fixtures.changed, token: AgentFixture.token)
            #expect(put.status == 200, "\(put)")
            let answer = try put.json()
            #expect(answer["changes"] as? [String] == expected.lines)
            #expect(answer["applied"] as? Bool == true && answer["changed"] as? Bool == true)
            #expect(missingKeys(answer["diff"], ["services_added", "services_removed", "services_changed", "node_changed"]) == [], "diff: \(put)")
            #expect(try await fixture.serviceNames() == ["dns", "web"], "lbctl status shows the new set")
            #expect(try String(contentsOfFile: fixture.servicesPath, encoding: .utf8) == Fixtures.changed)

            let again = try await fixture.agent.request("PUT", "/v1/services", body: Fixtures.changed, token: AgentFixture.token)
            #expect(again.status == 200, "\(again)")
            #expect(try again.json()["changes"] as? [String] == [], "re-applying the same set changes nothing\n\(again)")
        }
    }

    @Test("a JSON document is accepted as well as YAML")
    func jsonDocument() async throws {
        try await AgentFixture.with { fixture in
            let file = try ServiceFileParser.parse(Fixtures.changed, file: "changed")
            let json = String(decoding: try JSONEncoder().encode(file), as: UTF8.self)
            let put = try await fixture.agent.request("PUT", "/v1/services", body: json, token: AgentFixture.token)
            #expect(put.status == 200, "\(put)")
            #expect(try await fixture.serviceNames() == ["dns", "web"])
        }
    }

    @Test("the persisted set is re-applied when the agent starts; a restart keeps the pinned program")
    func persistedSetSurvivesRestart() async throws {
        try await AgentFixture.with { fixture in
            let put = try await fixture.agent.request("PUT", "/v1/services", body: Fixtures.changed, token: AgentFixture.token)
            try #require(put.status == 200, "\(put)")
            let programBefore = (try JSONSerialization.jsonObject(with: try await fixture.status()) as? [String: Any])?["program_id"] as? Int

            // While the agent is down, someone applies another set locally; the agent restores its own.
            _ = await fixture.agent.stop()
            let local = try await fixture.lbctl("apply", "-f", try fixture.files.write("good.yaml", Fixtures.good))
            try #require(local.status == 0, "\(local)")
            #expect(try await fixture.serviceNames() == ["web", "web6"])
            try await fixture.restart()
            #expect(try await fixture.serviceNames() == ["dns", "web"], "the persisted set is back\n\(fixture.agent.stderr)")
            let programAfter = (try JSONSerialization.jsonObject(with: try await fixture.status()) as? [String: Any])?["program_id"] as? Int
            #expect(programAfter == programBefore, "the agent reused the pinned program")
        }
    }

    @Test("/metrics passes promtool check metrics and shows the counters lbctl stats shows")
    func metricsAreValidAndMatchStats() async throws {
        try await AgentFixture.with { fixture in
            // Traffic through the real program: 12 new flows to web, 3 to web6, each a SYN and an
            // ACK (established: a half-open flow would age out after tcp_syn_timeout, 30 s, which a
            // slow run of this test outlasts), and 2 packets not for a VIP.
            let builder = PacketBuilder()
            for flags in [Set<TCPFlag>([.syn]), [.ack]] {
                for port in 0..<12 {
                    _ = try fixture.dataplane.run(builder.tcp(from: "203.0.113.7", UInt16(40000 + port), to: Fixtures.webVIP, 80, flags: flags))
                }
                for port in 0..<3 {
                    _ = try fixture.dataplane.run(builder.tcp(from: "2001:db8:99::7", UInt16(40000 + port), to: Fixtures.web6VIP, 443,
                                                              flags: flags))
                }
            }
            for port in 0..<2 { _ = try fixture.dataplane.run(builder.udp(from: "203.0.113.7", UInt16(50000 + port), to: "192.0.2.99", 9)) }

            let reply = try await fixture.agent.request("GET", "/metrics")
            #expect(reply.status == 200, "\(reply)")
            #expect(reply.contentType?.hasPrefix("text/plain; version=0.0.4") == true, "\(reply.contentType ?? "-")")
            let check = try await promtoolCheck(reply.body)
            #expect(check.status == 0, "promtool check metrics:\n\(check)\n\(reply.text)")
            #expect(check.stdout.isEmpty && check.stderr.isEmpty, "promtool has lint remarks:\n\(check)")

            let stats = try await fixture.lbctl("stats", "--json")
            let snapshot = try JSONDecoder().decode(CounterSnapshot.self, from: stats.stdoutData)
            let samples = parseSamples(reply.text)
            var backendSeries = 0
            for service in snapshot.services {
                #expect(samples[#"sluice_vip_packets_total{service="\#(service.name)",vip="\#(service.vip)"}"#] == Double(service.packets))
                for backend in service.backends {
                    let labels = #"{service="\#(service.name)",vip="\#(service.vip)",backend="\#(backend.address)"}"#
                    #expect(samples["sluice_packets_total" + labels] == Double(backend.packets), "packets \(labels)")
                    #expect(samples["sluice_bytes_total" + labels] == Double(backend.bytes), "bytes \(labels)")
                    #expect(samples["sluice_backend_weight" + labels] != nil, "weight \(labels)")
                    backendSeries += 1
                }
            }
            #expect(backendSeries == 4)
            #expect(snapshot.services.reduce(0) { $0 + $1.packets } == 30, "the traffic was counted\n\(stats.stdout)")
            #expect(samples["sluice_new_flows_total"] == Double(snapshot.newFlows) && snapshot.newFlows == 15)
            #expect(samples[#"sluice_xdp_verdicts_total{verdict="tx"}"#] == 30)
            #expect(samples[#"sluice_xdp_verdicts_total{verdict="pass"}"#] == 2)
            #expect(samples[#"sluice_drops_total{reason="no_backend"}"#] == 0)
            #expect(samples["sluice_conntrack_entries"] != nil, "counted in the background: 0 when the agent started")
            #expect(samples["sluice_conntrack_capacity_entries"] == Double(TestDataplane.conntrackSize))
            let version = await AgentVersion.expected
            #expect(samples[#"sluice_build_info{version="\#(version)"}"#] == 1)
            for family in ["sluice_packets_total", "sluice_bytes_total", "sluice_drops_total", "sluice_config_generation",
                           "sluice_last_apply_timestamp_seconds", "sluice_conntrack_hits_total", "sluice_conntrack_misses_total"] {
                #expect(reply.text.contains("# HELP \(family) ") && reply.text.contains("# TYPE \(family) "), "\(family) has HELP and TYPE")
            }

            // Counters come from the kernel: a restarted agent shows the same totals.
            try await fixture.restart()
            let after = parseSamples(try await fixture.agent.request("GET", "/metrics").text)
            #expect(after[#"sluice_xdp_verdicts_total{verdict="tx"}"#] == 30, "counters survive an agent restart")
            #expect(after["sluice_conntrack_entries"] == 15, "the connection table is counted when the agent starts")
        }
    }

    /// What `lbctl apply --dry-run` prints for Fixtures.good -> changed: the diff, then what it
    /// disturbs (web changes its table, web6 leaves), then the verdict.
    static func isDryRunOutput(_ stdout: String, diff: [String]) -> Bool {
        let lines = stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count == diff.count + 4 else { return false }
        return Array(lines[..<diff.count]) == diff && lines[diff.count].hasPrefix("disruption: web: ")
            && lines[diff.count + 1] == "disruption: web6: removed: every new-flow placement goes, 0 established flows lose their VIP"
            && lines[diff.count + 2] == "dry run: nothing applied" && lines[diff.count + 3].isEmpty
    }

    @Test("lbctl apply --server pushes a file through the agent; --dry-run shows the diff and writes nothing")
    func lbctlApplyThroughTheAgent() async throws {
        try await AgentFixture.with { fixture in
            let changed = try fixture.files.write("changed.yaml", Fixtures.changed)
            let expected = ConfigDiff.between(current: try ServiceFileParser.parse(Fixtures.good, file: "good"),
                                              desired: try ServiceFileParser.parse(Fixtures.changed, file: "changed")).lines
            let server = fixture.agent.baseURL

            let dry = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath, "--dry-run"])
            #expect(dry.status == 0, "\(dry)")
            #expect(Self.isDryRunOutput(dry.stdout, diff: expected), "\(dry)")
            #expect(try await fixture.serviceNames() == ["web", "web6"])

            let wrongToken = try fixture.files.write("wrong-token", "nope\n")
            let refused = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", wrongToken])
            #expect(refused.status == 2 && refused.stderr.contains("401") && refused.stderr.contains("token"), "\(refused)")

            let bad = try fixture.files.write("bad.yaml", Fixtures.bad[3].text)
            let badApply = try await Lbctl.run(["apply", "-f", bad, "--server", server, "--token-file", fixture.tokenPath])
            #expect(badApply.status == 2 && badApply.stderr.contains("400") && badApply.stderr.contains("\"port\""), "\(badApply)")
            #expect(try await fixture.serviceNames() == ["web", "web6"])

            let applied = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath])
            #expect(applied.status == 0, "\(applied)")
            #expect(applied.stdout.hasPrefix(expected.joined(separator: "\n") + "\napplied: "), "\(applied)")
            #expect(try await fixture.serviceNames() == ["dns", "web"])
            let again = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath])
            #expect(again.status == 0 && again.stdout == "no changes\n", "\(again)")

            // Nothing listens there any more: a connection failure is a runtime failure (exit 1).
            _ = await fixture.agent.stop()
            let down = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath])
            #expect(down.status == 1 && down.stderr.contains("lbctl: error:"), "\(down)")
        }
    }

    @Test("SIGTERM and SIGINT stop the agent promptly with exit 0, and the data plane keeps forwarding",
          arguments: [SIGTERM, SIGINT])
    func signalStopsCleanly(_ signal: Int32) async throws {
        try await AgentFixture.with { fixture in
            let reply = try await fixture.agent.request("GET", "/healthz")
            #expect(reply.status == 200)
            let stopped = await fixture.agent.stop(signal: signal)
            #expect(stopped.status == 0, "exit status \(String(describing: stopped.status))\n\(fixture.agent.stderr)")
            #expect(stopped.elapsed < .seconds(5), "took \(stopped.elapsed)")
            let frame = PacketBuilder().tcp(from: "203.0.113.7", 40000, to: Fixtures.webVIP, 80)
            #expect(try fixture.dataplane.run(frame).verdict == XDPVerdict.tx.rawValue, "the pinned program still forwards")
        }
    }

    @Test("with tls.cert and tls.key the agent serves HTTPS (and not plain HTTP)")
    func servesTLS() async throws {
        try await AgentFixture.with(tls: true) { fixture in
            let base = fixture.agent.baseURL
            #expect(base.hasPrefix("https://127.0.0.1:"), "\(base)")
            let cert = fixture.caPath
            let health = try await Command.run("/usr/bin/curl", ["-sS", "--cacert", cert, base + "/healthz"])
            #expect(health.status == 0 && health.stdout.contains("\"ok\""), "\(health)")
            let body = try fixture.files.write("changed.yaml", Fixtures.changed)
            let put = try await Command.run("/usr/bin/curl", ["-sS", "--fail-with-body", "--cacert", cert, "-X", "PUT",
                                                              "-H", "Authorization: Bearer \(AgentFixture.token)",
                                                              "--data-binary", "@" + body, base + "/v1/services"])
            #expect(put.status == 0 && put.stdout.contains("\"applied\" : true"), "\(put)")
            #expect(try await fixture.serviceNames() == ["dns", "web"])
            let plain = try await Command.run("/usr/bin/curl", ["-sS", "--max-time", "5", base.replacingOccurrences(of: "https://", with: "http://") + "/healthz"])
            #expect(plain.status != 0 || !plain.stdout.contains("\"ok\""), "plain HTTP must not be served\n\(plain)")
        }
    }

    @Test("lbctl apply --server https://… --cacert trusts the agent's certificate; without --cacert it exits 1 naming the certificate problem")
    func lbctlApplyOverTLSWithCACert() async throws {
        try await AgentFixture.with(tls: true) { fixture in
            let server = fixture.agent.baseURL
            try #require(server.hasPrefix("https://"), "\(server)")
            let changed = try fixture.files.write("changed.yaml", Fixtures.changed)
            let expected = ConfigDiff.between(current: try ServiceFileParser.parse(Fixtures.good, file: "good"),
                                              desired: try ServiceFileParser.parse(Fixtures.changed, file: "changed")).lines

            let untrusted = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath])
            #expect(untrusted.status == 1, "\(untrusted)")
            #expect(untrusted.stderr.contains("lbctl: error:") && untrusted.stderr.contains("certificate")
                    && untrusted.stderr.contains("--cacert"), "the message names the certificate problem and the remedy\n\(untrusted)")
            #expect(try await fixture.serviceNames() == ["web", "web6"], "nothing was sent")

            // A CA that did not sign the agent's certificate is no better.
            let other = try await Command.run("/usr/bin/openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                                                                   "-subj", "/CN=another CA", "-keyout", fixture.files.path + "/other.key",
                                                                   "-out", fixture.files.path + "/other.pem"])
            try #require(other.status == 0, "\(other)")
            let wrongCA = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath,
                                               "--cacert", fixture.files.path + "/other.pem"])
            #expect(wrongCA.status == 1 && wrongCA.stderr.contains("certificate"), "\(wrongCA)")

            let dry = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath,
                                           "--cacert", fixture.caPath, "--dry-run"])
            #expect(dry.status == 0 && Self.isDryRunOutput(dry.stdout, diff: expected), "\(dry)")
            let applied = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath,
                                               "--cacert", fixture.caPath])
            #expect(applied.status == 0 && applied.stdout.hasPrefix(expected.joined(separator: "\n") + "\napplied: "), "\(applied)")
            #expect(try await fixture.serviceNames() == ["dns", "web"])

            let missing = try await Lbctl.run(["apply", "-f", changed, "--server", server, "--token-file", fixture.tokenPath,
                                               "--cacert", fixture.files.path + "/nonexistent.pem"])
            #expect(missing.status == 2 && missing.stderr.contains("nonexistent.pem"), "\(missing)")
            let plain = try await Lbctl.run(["apply", "-f", changed, "--token-file", fixture.tokenPath, "--cacert", fixture.caPath])
            #expect(plain.status == 2, "--cacert without --server is a usage error\n\(plain)")
        }
    }

    @Test("a token rotated in token_file is in force within about a second, without a restart; an empty file keeps the old token")
    func tokenRotation() async throws {
        try await AgentFixture.with { fixture in
            let pid = fixture.agent.pid
            let oldToken = AgentFixture.token, newToken = "rotated-\(UUID().uuidString)"
            func validate(_ token: String) async throws -> Int {
                try await fixture.agent.request("POST", "/v1/services/validate", body: Fixtures.good, token: token).status
            }
            #expect(try await validate(oldToken) == 200)

            /// Asks until `condition` holds, for at most `timeout`; it asks once more after every
            /// sleep before it looks at the clock, so a late resumption of this task costs nothing.
            func eventually(within timeout: Duration = .seconds(5), _ condition: () async throws -> Bool) async throws -> Bool {
                let deadline = ContinuousClock.now + timeout
                while true {
                    if try await condition() { return true }
                    if ContinuousClock.now >= deadline { return false }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }

            // Emptied in place (as a careless rewrite would leave it): the old token stays, with a
            // warning, logged by the first request that finds the file changed (the file is looked
            // at once a second at most). Every answer until then, and after, takes the old token.
            try "".write(toFile: fixture.tokenPath, atomically: false, encoding: .utf8)
            var answers: [Int] = []
            let warned = try await eventually {
                answers.append(try await validate(oldToken))
                return fixture.agent.stderr.contains("keeping the previous token")
            }
            #expect(answers.allSatisfy { $0 == 200 }, "an empty token file keeps the previous token: \(answers)")
            #expect(try await validate(oldToken) == 200, "an empty token file keeps the previous token")
            #expect(try await validate("") == 401)
            #expect(warned, "a warning is logged\n\(fixture.agent.stderr)")

            // Rotated by a rename over the file (a new inode), as secret managers do.
            try (newToken + "\n").write(toFile: fixture.tokenPath, atomically: true, encoding: .utf8)
            let rotated = try await eventually { try await validate(newToken) == 200 }
            #expect(rotated, "the new token is accepted within 5 s\n\(fixture.agent.stderr)")
            #expect(try await validate(oldToken) == 401, "the old token is refused")
            let put = try await fixture.agent.request("PUT", "/v1/services", body: Fixtures.changed, token: oldToken)
            #expect(put.status == 401, "\(put)")
            #expect(try await fixture.serviceNames() == ["web", "web6"], "a refused PUT changed nothing")

            // Rewritten in place: picked up as well.
            try ("third-" + newToken + "\n").write(toFile: fixture.tokenPath, atomically: false, encoding: .utf8)
            let rewritten = try await eventually { try await validate("third-" + newToken) == 200 }
            #expect(rewritten, "the rewritten token is accepted within 5 s\n\(fixture.agent.stderr)")
            #expect(try await validate(newToken) == 401)
            #expect(fixture.agent.pid == pid, "no restart")
        }
    }

    @Test("a bad agent configuration exits 2 and names the key")
    func badConfiguration() async throws {
        let files = try ScratchDirectory()
        let token = try files.write("token", "t\n")
        let cases: [(String, String)] = [
            ("listen: 127.0.0.1:0\ntoken_file: \(token)\ncolour: red\n", "colour"),
            ("listen: 127.0.0.1:0\n", "token_file"),
            ("listen: nowhere\ntoken_file: \(token)\n", "listen"),
            ("listen: 127.0.0.1:0\ntoken_file: \(token)\ntls: { cert: /nonexistent.pem }\n", "tls.key"),
        ]
        for (index, (text, key)) in cases.enumerated() {
            let config = try files.write("agent\(index).yaml", text)
            let result = try await Lbctl.run(["agent", "--config", config])
            #expect(result.status == 2 && result.stderr.contains("\"\(key)\""), "\(result)")
        }
    }
}

enum AgentVersion {
    /// The version lbctl reports (`lbctl --version`), asked once.
    static var expected: String {
        get async { await asked.value }
    }

    private static let asked = Task {
        (try? await Lbctl.run(["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? "?"
    }
}

/// `promtool check metrics` over `text` (stdin).
func promtoolCheck(_ text: Data) async throws -> CommandResult {
    let files = try ScratchDirectory()
    let path = try files.write("metrics.txt", String(decoding: text, as: UTF8.self))
    return try await Command.run("/bin/sh", ["-c", "promtool check metrics < '\(path)'"])
}

/// Sample lines of the exposition text by `name{labels}` (as written), to their values.
func parseSamples(_ text: String) -> [String: Double] {
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        samples[String(line[..<space])] = value
    }
    return samples
}
