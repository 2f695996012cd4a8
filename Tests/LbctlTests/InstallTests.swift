// `make install-files` into a scratch root: lbctl, the systemd units (systemd-analyze
// verify finds nothing to say), completions for bash, zsh and fish, the man page and the
// example /etc/sluice; and the agent serving the example files with nothing but the
// capabilities its unit leaves it (setpriv), and not without CAP_BPF.
import Foundation
import SluiceTestSupport
import Testing

@Suite("make install: the pieces of a real install", .enabled(if: getuid() == 0, "needs root: bpffs, setpriv"))
struct InstallTests {
    static let manPage = Lbctl.packageRoot.appendingPathComponent("docs/lbctl.8").path

    /// Installs this build's lbctl under `root` (PREFIX root/usr, SYSCONFDIR root/etc).
    static func install(into root: String) async throws {
        let result = try await Command.run("/usr/bin/make", [
            "-C", Lbctl.packageRoot.path, "--no-print-directory", "install-files",
            "LBCTL=\(Lbctl.path)", "PREFIX=\(root)/usr", "SYSCONFDIR=\(root)/etc"])
        try #require(result.status == 0, "make install-files:\n\(result)")
    }

    /// The unit's CapabilityBoundingSet as setpriv's --bounding-set: `-all,+bpf,+net_admin…`.
    static func boundingSet(_ unit: String) throws -> [String] {
        let line = try #require(unit.split(separator: "\n").first { $0.hasPrefix("CapabilityBoundingSet=") })
        return line.dropFirst("CapabilityBoundingSet=".count).split(separator: " ").map { "+" + $0.dropFirst(4).lowercased() }
    }

    @Test("the scratch root holds every piece; both units pass systemd-analyze verify; completions and man page name every subcommand")
    func installedTree() async throws {
        let root = try ScratchDirectory()
        try await Self.install(into: root.path)
        let usr = root.path + "/usr"
        let files = ["sbin/lbctl", "lib/systemd/system/sluice-agent.service", "lib/systemd/system/sluice-attach@.service",
                     "share/bash-completion/completions/lbctl", "share/zsh/vendor-completions/_lbctl",
                     "share/fish/vendor_completions.d/lbctl.fish", "share/man/man8/lbctl.8"].map { usr + "/" + $0 }
            + ["agent.yaml", "services.yaml", "token"].map { root.path + "/etc/sluice/" + $0 }
        for file in files { #expect(FileManager.default.fileExists(atPath: file), "\(file) was not installed") }
        let token = try String(contentsOfFile: root.path + "/etc/sluice/token", encoding: .utf8)
        #expect(token.count == 65, "a fresh 32-byte hex token: \(token.count) characters")
        let mode = try FileManager.default.attributesOfItem(atPath: root.path + "/etc/sluice/token")[.posixPermissions] as? Int
        #expect(mode == 0o600, "the token is the owner's only: \(String(mode ?? 0, radix: 8))")

        // ExecStart names the installed lbctl, which verify checks is executable; the template
        // is checked as an instance; Documentation=man:lbctl(8) must be found by man.
        let units = usr + "/lib/systemd/system"
        let instance = try root.write("sluice-attach@lo.service",
                                      try String(contentsOfFile: units + "/sluice-attach@.service", encoding: .utf8))
        for unit in [units + "/sluice-agent.service", instance] {
            let text = try String(contentsOfFile: unit, encoding: .utf8)
            #expect(text.contains("ExecStart=\(usr)/sbin/lbctl "), "\(unit): ExecStart does not name the installed lbctl")
            #expect(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"), "\(unit) is not hardened")
            let verify = try await Command.run("/usr/bin/env", ["MANPATH=\(usr)/share/man", "systemd-analyze", "verify", unit])
            #expect(verify.status == 0 && verify.stdout.isEmpty && verify.stderr.isEmpty, "systemd-analyze verify \(unit):\n\(verify)")
        }

        let subcommands = ["attach", "detach", "apply", "validate", "status", "stats", "top", "flows", "explain", "doctor", "agent", "decap", "drain", "withdraw"]
        let bash = try String(contentsOfFile: usr + "/share/bash-completion/completions/lbctl", encoding: .utf8)
        let syntax = try await Command.run("/bin/bash", ["-n", usr + "/share/bash-completion/completions/lbctl"])
        #expect(syntax.status == 0, "bash -n: \(syntax)")
        let man = try String(contentsOfFile: usr + "/share/man/man8/lbctl.8", encoding: .utf8)
        #expect(man.contains(".Dt LBCTL 8"), "not a section-8 page for lbctl")
        for completion in ["zsh/vendor-completions/_lbctl", "fish/vendor_completions.d/lbctl.fish"] {
            let text = try String(contentsOfFile: usr + "/share/" + completion, encoding: .utf8)
            for name in subcommands { #expect(text.contains(name), "\(completion) does not complete \(name)") }
        }
        for name in subcommands {
            #expect(bash.contains(name), "the bash completion does not complete \(name)")
            #expect(man.contains("Em \(name)"), "the man page does not describe \(name)")
        }
        let validate = try await Lbctl.run(["validate", "-f", root.path + "/etc/sluice/services.yaml"])
        #expect(validate.status == 0, "the example service file: \(validate)")
    }

    @Test("docs/lbctl.8 is lbctl's as built: every subcommand and every long option of --experimental-dump-help is in it (else: make man)")
    func manPageIsCurrent() async throws {
        let dump = try await Lbctl.run(["--experimental-dump-help"])
        try #require(dump.status == 0, "\(dump)")
        let root = try #require((try JSONSerialization.jsonObject(with: dump.stdoutData) as? [String: Any])?["command"] as? [String: Any])
        let page = try String(contentsOfFile: Self.manPage, encoding: .utf8)
        var missing: [String] = []
        for command in root["subcommands"] as? [[String: Any]] ?? [] {
            let name = command["commandName"] as? String ?? "?"
            if !page.contains(".It Em \(name)") { missing.append(name) }
            for argument in command["arguments"] as? [[String: Any]] ?? [] {
                for option in argument["names"] as? [[String: Any]] ?? [] where option["kind"] as? String == "long" {
                    let flag = option["name"] as? String ?? "?"
                    if !page.contains("Fl -\(flag)") && !page.contains(" , -\(flag)") { missing.append("\(name) --\(flag)") }
                }
            }
        }
        #expect(missing.isEmpty, "docs/lbctl.8 lacks \(missing): run make man and commit it")
    }

    @Test("the agent serves the example set with only its unit's capabilities; without CAP_BPF it cannot load the balancer")
    func agentUnderItsUnitsCapabilities() async throws {
        let root = try ScratchDirectory()
        try await Self.install(into: root.path)
        let unit = try String(contentsOfFile: root.path + "/usr/lib/systemd/system/sluice-agent.service", encoding: .utf8)
        let caps = try Self.boundingSet(unit)
        #expect(caps.contains("+bpf") && !caps.contains("+sys_admin"), "\(caps)")
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        // The example config with this test's paths: its own bpffs, port and state directory.
        var config = try String(contentsOfFile: root.path + "/etc/sluice/agent.yaml", encoding: .utf8)
        for (from, to) in [("127.0.0.1:9300", "127.0.0.1:0"), ("/sys/fs/bpf/sluice", bpffs.path + "/lb"),
                           ("/etc/sluice/token", root.path + "/etc/sluice/token"),
                           ("/var/lib/sluice/services.yaml", root.path + "/state/services.yaml")] {
            try #require(config.contains(from), "the example agent.yaml has no \(from)")
            config = config.replacingOccurrences(of: from, with: to)
        }
        let configPath = try root.write("agent.yaml", config)

        func wrapper(_ set: [String]) throws -> String {
            let script = try root.write("lbctl-\(set.count)", """
                #!/bin/sh
                exec /usr/bin/setpriv --bounding-set=-all,\(set.joined(separator: ",")) --inh-caps=-all '\(Lbctl.path)' "$@"
                """)
            chmod(script, 0o755)
            return script
        }
        let denied = try await Command.run(try wrapper(caps.filter { $0 != "+bpf" }), ["agent", "--config", configPath])
        #expect(denied.status != 0 && denied.stderr.contains("loading the balancer"), "without CAP_BPF: \(denied)")

        let agent = try await AgentProcess(configPath: configPath, lbctl: try wrapper(caps))
        let token = try String(contentsOfFile: root.path + "/etc/sluice/token", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let services = try String(contentsOfFile: root.path + "/etc/sluice/services.yaml", encoding: .utf8)
        let put = try await agent.request("PUT", "/v1/services", body: services, token: token)
        #expect(put.status == 200, "\(put)")
        let metrics = try await agent.request("GET", "/metrics")
        #expect(metrics.status == 200 && String(decoding: metrics.body, as: UTF8.self).contains("sluice_services 2"), "\(metrics)")
        await agent.stop(signal: SIGTERM)
    }
}
