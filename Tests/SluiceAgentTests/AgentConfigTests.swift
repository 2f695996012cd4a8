// The agent's configuration file: defaults, every key, and refusals in the service file's
// format, `FILE:LINE: field "x.y": message`, with the line of the offending key or value.
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// A configuration the agent must refuse, and the exact error.
struct BadAgentConfig: Sendable, CustomTestStringConvertible {
    var label: String
    var text: String
    var line: Int?
    var field: String?
    var message: String
    var testDescription: String { label }

    var error: String {
        "a.yaml" + (line.map { ":\($0)" } ?? "") + ": " + (field.map { "field \"\($0)\": " } ?? "") + message
    }

    /// The configuration is refused with exactly this error.
    func expectRefused() {
        do {
            let config = try AgentConfig.parse(text, file: "a.yaml")
            Issue.record("accepted: \(config)")
        } catch {
            #expect(error.description == self.error)
            #expect(error.line == line && error.field == field && error.service == nil)
        }
    }
}

@Suite("agent: configuration")
struct AgentConfigTests {
    @Test("defaults, and every key read")
    func everyKey() throws {
        let minimal = try AgentConfig.parse("token_file: /t\n", file: "a.yaml")
        #expect(minimal == AgentConfig(tokenFile: "/t"))
        #expect(minimal.host == "127.0.0.1" && minimal.port == 9300 && minimal.pinPath == "/sys/fs/bpf/sluice")
        #expect(minimal.servicesFile == "/var/lib/sluice/services.yaml" && minimal.tlsCertificate == nil && minimal.sync == nil)
        #expect(minimal.healthDefaults == .builtIn && minimal.idleTimeouts == IdleTimeouts())
        let full = try AgentConfig.parse("""
            listen: "[::1]:9400"
            pin_path: /sys/fs/bpf/lb2
            token_file: /t
            services_file: /s.yaml
            tls: { cert: /c.pem, key: /k.pem }
            healthcheck_defaults: { interval: 5s, timeout: 1500ms, rise: 3, fall: 4 }
            conntrack: { tcp_idle_timeout: 1h, udp_idle_timeout: 30s, tcp_syn_timeout: 10s, tcp_closing_timeout: 2m }
            sync:
              listen: 10.0.0.1:9311
              peers: ["10.0.0.2:9301", "[fd00::3]:9302"]
              key_file: /sync.key
              batch_interval: 20ms
              resync_timeout: 1m
            """, file: "a.yaml")
        var expected = AgentConfig(host: "::1", port: 9400, pinPath: "/sys/fs/bpf/lb2", tokenFile: "/t",
                                   servicesFile: "/s.yaml", tlsCertificate: "/c.pem", tlsKey: "/k.pem",
                                   healthDefaults: HealthCheckDefaults(intervalMilliseconds: 5000, timeoutMilliseconds: 1500,
                                                                       rise: 3, fall: 4))
        expected.idleTimeouts = IdleTimeouts(tcpSeconds: 3600, udpSeconds: 30, tcpSynSeconds: 10, tcpClosingSeconds: 120)
        expected.sync = full.sync  // checked on its own below
        #expect(full == expected)
        let sync = try #require(full.sync)
        #expect(sync.host == "10.0.0.1" && sync.port == 9311 && sync.keyFile == "/sync.key")
        #expect(sync.peers.map(\.description) == ["10.0.0.2:9301", "[fd00::3]:9302"])
        #expect(sync.peers.map(\.address) == [IPAddress("10.0.0.2")!, IPAddress("fd00::3")!])
        #expect(sync.batchIntervalMilliseconds == 20 && sync.resyncTimeoutMilliseconds == 60_000)

        let syncDefaults = try AgentConfig.parse("token_file: /t\nsync: { key_file: /k }\n", file: "a.yaml").sync
        #expect(syncDefaults == SyncConfig(keyFile: "/k"))
        #expect(syncDefaults?.host == "127.0.0.1" && syncDefaults?.port == 9301 && syncDefaults?.peers == [])
        #expect(syncDefaults?.batchIntervalMilliseconds == 50 && syncDefaults?.resyncTimeoutMilliseconds == 10_000)
    }

    static let allowedTop = "listen, pin_path, token_file, services_file, tls, healthcheck_defaults, sync, bgp, conntrack"
    static let durationTiming = "(e.g. 500ms, 2s, 1m)"

    static let bad: [BadAgentConfig] = [
        BadAgentConfig(label: "an unknown key at the top level",
                       text: "listen: 127.0.0.1:0\ntoken_file: /t\ncolour: red\n", line: 3, field: nil,
                       message: "unknown key \"colour\" (allowed keys: \(allowedTop))"),
        BadAgentConfig(label: "an unknown key in tls",
                       text: "token_file: /t\ntls:\n  cert: /c\n  key: /k\n  ca: /x\n", line: 5, field: "tls",
                       message: "unknown key \"ca\" (allowed keys: cert, key)"),
        BadAgentConfig(label: "an unknown key in sync",
                       text: "token_file: /t\nsync:\n  key_file: /k\n  peer: [10.0.0.2:9301]\n", line: 4, field: "sync",
                       message: "unknown key \"peer\" (allowed keys: listen, peers, key_file, batch_interval, resync_timeout)"),
        BadAgentConfig(label: "an unknown key in healthcheck_defaults",
                       text: "token_file: /t\nhealthcheck_defaults:\n  interval: 2s\n  fal: 2\n", line: 4, field: "healthcheck_defaults",
                       message: "unknown key \"fal\" (allowed keys: interval, timeout, rise, fall)"),
        BadAgentConfig(label: "an unknown key in conntrack (a flow mapping)",
                       text: "token_file: /t\nconntrack: { tcp_idle: 5m }\n", line: 2, field: "conntrack",
                       message: "unknown key \"tcp_idle\" (allowed keys: tcp_idle_timeout, udp_idle_timeout, tcp_syn_timeout, tcp_closing_timeout)"),
        BadAgentConfig(label: "a tcp_syn_timeout of a fraction of a second",
                       text: "token_file: /t\nconntrack:\n  tcp_syn_timeout: 1500ms\n", line: 3, field: "conntrack.tcp_syn_timeout",
                       message: "\"1500ms\" is not a whole number of seconds from 1s to 24h (e.g. 300s, 15m)"),
        BadAgentConfig(label: "a tcp_closing_timeout of zero",
                       text: "token_file: /t\nconntrack:\n  tcp_closing_timeout: 0s\n", line: 3, field: "conntrack.tcp_closing_timeout",
                       message: "\"0s\" is not a whole number of seconds from 1s to 24h (e.g. 300s, 15m)"),
        BadAgentConfig(label: "a bad sync duration",
                       text: "token_file: /t\nsync:\n  key_file: /k\n  batch_interval: 1d\n", line: 4, field: "sync.batch_interval",
                       message: "\"1d\" is not a duration from 1ms to 10s (e.g. 50ms, 10s)"),
        BadAgentConfig(label: "a resync_timeout out of range",
                       text: "token_file: /t\nsync:\n  key_file: /k\n  resync_timeout: 11m\n", line: 4, field: "sync.resync_timeout",
                       message: "\"11m\" is not a duration from 100ms to 10m (e.g. 50ms, 10s)"),
        BadAgentConfig(label: "a health interval without a unit",
                       text: "token_file: /t\nhealthcheck_defaults:\n  interval: 5\n", line: 3, field: "healthcheck_defaults.interval",
                       message: "\"5\" is not a duration from 100ms to 1h \(durationTiming)"),
        BadAgentConfig(label: "a default timeout longer than the interval",
                       text: "token_file: /t\nhealthcheck_defaults:\n  interval: 500ms\n", line: 3, field: "healthcheck_defaults.timeout",
                       message: "1s is longer than the interval (500ms)"),
        BadAgentConfig(label: "a rise of 0",
                       text: "token_file: /t\nhealthcheck_defaults: { rise: 0 }\n", line: 2, field: "healthcheck_defaults.rise",
                       message: "0 is not a count from 1 to 100"),
        BadAgentConfig(label: "healthcheck_defaults that is not a mapping",
                       text: "token_file: /t\nhealthcheck_defaults: 2s\n", line: 2, field: "healthcheck_defaults",
                       message: "expected a mapping (key: value), found the value \"2s\""),
        BadAgentConfig(label: "an idle timeout that is not whole seconds",
                       text: "token_file: /t\nconntrack:\n  udp_idle_timeout: 1500ms\n", line: 3, field: "conntrack.udp_idle_timeout",
                       message: "\"1500ms\" is not a whole number of seconds from 1s to 24h (e.g. 300s, 15m)"),
        BadAgentConfig(label: "a listen address without a port",
                       text: "token_file: /t\nlisten: nowhere\n", line: 2, field: "listen",
                       message: "\"nowhere\" is not HOST:PORT (e.g. 127.0.0.1:9300 or [::1]:9300)"),
        BadAgentConfig(label: "an IPv6 listen address without brackets",
                       text: "token_file: /t\nlisten: ::1:80\n", line: 2, field: "listen",
                       message: "\"::1:80\" is not HOST:PORT (e.g. 127.0.0.1:9300 or [::1]:9300)"),
        BadAgentConfig(label: "a listen port out of range",
                       text: "token_file: /t\nlisten: 1.2.3.4:70000\n", line: 2, field: "listen",
                       message: "\"1.2.3.4:70000\" is not HOST:PORT (e.g. 127.0.0.1:9300 or [::1]:9300)"),
        BadAgentConfig(label: "a sync peer named by host name",
                       text: "token_file: /t\nsync:\n  key_file: /k\n  peers:\n    - 10.0.0.2:9301\n    - lb2:9301\n",
                       line: 6, field: "sync.peers[1]",
                       message: "\"lb2:9301\" is not ADDRESS:PORT with an IP address (e.g. 10.0.0.2:9301, [fd00::2]:9301)"),
        BadAgentConfig(label: "a missing token_file",
                       text: "listen: 127.0.0.1:0\npin_path: /p\n", line: 1, field: "token_file",
                       message: "required key is missing: writes to the control API need a bearer token"),
        BadAgentConfig(label: "a token_file with no value",
                       text: "listen: 127.0.0.1:0\ntoken_file:\n", line: 2, field: "token_file",
                       message: "required key has no value"),
        BadAgentConfig(label: "a token_file that YAML reads as a number",
                       text: "token_file: 3\n", line: 1, field: "token_file",
                       message: "must be a non-empty string, found the value 3"),
        BadAgentConfig(label: "tls without its key",
                       text: "token_file: /t\ntls: { cert: /c }\n", line: 2, field: "tls.key",
                       message: "required key is missing"),
        BadAgentConfig(label: "sync without key_file",
                       text: "token_file: /t\nsync:\n  peers: [10.0.0.2:9301]\n", line: 3, field: "sync.key_file",
                       message: "required key is missing: peers authenticate each other's batches with this shared key"),
        BadAgentConfig(label: "a list at the top level",
                       text: "- a\n", line: 1, field: nil,
                       message: "the top level must be a mapping with keys \(allowedTop), found a list"),
        BadAgentConfig(label: "an empty file",
                       text: "", line: 1, field: nil,
                       message: "the file is empty; expected a mapping with keys \(allowedTop)"),
    ]

    @Test("a bad configuration is refused with the file, the line, the field and the value", arguments: bad)
    func refusal(_ bad: BadAgentConfig) {
        bad.expectRefused()
    }

    @Test("a YAML syntax error names the line")
    func syntaxError() {
        let error = #expect(throws: ConfigError.self) {
            try AgentConfig.parse("token_file: /t\ntls: { cert: /c\n", file: "a.yaml")
        }
        #expect(error?.line != nil && error?.description.hasPrefix("a.yaml:") == true, "\(String(describing: error))")
        #expect(error?.message.contains("invalid YAML") == true, "\(String(describing: error))")
    }

    @Test("lbctl agent --config exits 2 with the error on one line; a missing file names the path")
    func commandLine() async throws {
        let files = try ScratchDirectory()
        let path = try files.write("agent.yaml", "token_file: /t\nsync:\n  key_file: /k\n  batch_interval: 1d\n")
        let result = try await Lbctl.run(["agent", "--config", path])
        #expect(result.status == 2, "\(result)")
        #expect(result.stderr == "lbctl: error: \(path):4: field \"sync.batch_interval\": \"1d\" is not a duration from 1ms to 10s (e.g. 50ms, 10s)\n",
                "\(result)")

        let missing = files.path + "/nonexistent.yaml"
        let absent = try await Lbctl.run(["agent", "--config", missing])
        #expect(absent.status == 2 && absent.stderr == "lbctl: error: \(missing): cannot open: No such file or directory\n", "\(absent)")
    }

    @Test("an unreadable token file is bad input naming token_file")
    func unreadableToken() {
        let config = AgentConfig(tokenFile: "/nonexistent/sluice-token")
        let error = #expect(throws: ControlError.self) { try config.readToken() }
        #expect(error?.kind == .badInput, "\(String(describing: error))")
        #expect(error?.message.hasPrefix("token_file /nonexistent/sluice-token: cannot read it") == true, "\(String(describing: error))")
    }

    @Test("the sync key file: one key, or two during a rotation (the first seals); a bad line is named")
    func syncKeyFile() throws {
        let files = try ScratchDirectory()
        let first = String(repeating: "a", count: 32), second = String(repeating: "b", count: 64)
        func keys(_ text: String) throws(ControlError) -> SyncKeyRing {
            try SyncConfig(keyFile: try! files.write("sync.key", text)).readKeys()
        }
        let one = try keys(first + "\n")
        #expect(one.keys.count == 1 && one.sealing == SyncKey(secret: Data(first.utf8)))
        let two = try keys("\n  \(second)  \n\(first)\n\n")
        #expect(two.keys == [SyncKey(secret: Data(second.utf8)), SyncKey(secret: Data(first.utf8))], "in file order, spaces and blank lines ignored")
        for (text, message) in [
            ("\(first)\nshort\n", ":2: the key is 5 bytes; at least 32 are needed"),
            ("\n\n", ": no key in the file"),
            ("\(first)\n\(second)\n\(String(repeating: "c", count: 32))\n", ": 3 keys; at most 2"),
            ("\(first)\n\(first)\n", ":2: the same key twice"),
        ] {
            let error = #expect(throws: ControlError.self) { try keys(text) }
            #expect(error?.kind == .badInput && error?.message.hasPrefix("sync.key_file \(files.path)/sync.key\(message)") == true,
                    "\(String(describing: error))")
        }
    }
}
