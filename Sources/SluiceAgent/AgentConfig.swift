// The agent's configuration file (`lbctl agent --config FILE`): where to listen, which
// data plane to drive, the token that guards writes and the file the desired set lives in.
// Unknown keys are errors, as in the service file, so a typo never goes unnoticed.
import Foundation
import SluiceControl
import SluiceCore
import Yams

public struct AgentConfig: Sendable, Equatable {
    public static let defaultListen = "127.0.0.1:9300"
    public static let defaultServicesFile = "/var/lib/sluice/services.yaml"

    /// Host and port to listen on; the port may be 0 (the kernel picks one; the agent prints it).
    public var host: String
    public var port: Int
    public var pinPath: String
    public var tokenFile: String
    public var servicesFile: String
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// Timings of every health check that does not set its own.
    public var healthDefaults: HealthCheckDefaults
    /// Connection-state sync with peer balancers; nil = off.
    public var sync: SyncConfig?
    /// How long a flow may stay unseen before the agent deletes it from the connection table.
    public var idleTimeouts = IdleTimeouts()

    public init(host: String = "127.0.0.1", port: Int = 9300, pinPath: String = Dataplane.defaultPinPath,
                tokenFile: String, servicesFile: String = AgentConfig.defaultServicesFile,
                tlsCertificate: String? = nil, tlsKey: String? = nil, healthDefaults: HealthCheckDefaults = .builtIn) {
        self.host = host
        self.port = port
        self.pinPath = pinPath
        self.tokenFile = tokenFile
        self.servicesFile = servicesFile
        self.tlsCertificate = tlsCertificate
        self.tlsKey = tlsKey
        self.healthDefaults = healthDefaults
        sync = nil
    }

    static let keys = ["listen", "pin_path", "token_file", "services_file", "tls", "healthcheck_defaults", "sync", "conntrack"]
    static let conntrackKeys = ["tcp_idle_timeout", "udp_idle_timeout"]
    static let tlsKeys = ["cert", "key"]
    static let healthKeys = ["interval", "timeout", "rise", "fall"]

    /// Reads and checks `path`. Every error names the file and the key (ControlError.badInput: exit 2).
    public static func load(path: String) throws(ControlError) -> AgentConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw .badInput("\(path): cannot read the agent configuration: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ControlError) -> AgentConfig {
        func bad(_ key: String?, _ message: String) -> ControlError {
            .badInput("\(file): " + (key.map { "field \"\($0)\": " } ?? "") + message)
        }
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch { throw bad(nil, "not valid YAML: \(error)") }
        guard let top = root as? [String: Any] else {
            throw bad(nil, "the top level must be a mapping with keys \(keys.joined(separator: ", "))")
        }
        if let unknown = top.keys.sorted().first(where: { !keys.contains($0) }) {
            throw bad(unknown, "unknown key (known: \(keys.joined(separator: ", ")))")
        }
        func string(_ value: Any?, _ key: String) throws(ControlError) -> String? {
            guard let value else { return nil }
            guard let text = value as? String, !text.isEmpty else { throw bad(key, "must be a non-empty string") }
            return text
        }
        guard let tokenFile = try string(top["token_file"], "token_file") else {
            throw bad("token_file", "missing: writes to the control API need a bearer token")
        }
        var config = AgentConfig(tokenFile: tokenFile)
        if let listen = try string(top["listen"], "listen") {
            guard let (host, port) = splitHostPort(listen) else {
                throw bad("listen", "\(String(reflecting: listen)) is not HOST:PORT (e.g. 127.0.0.1:9300 or [::1]:9300)")
            }
            config.host = host
            config.port = port
        }
        if let pinPath = try string(top["pin_path"], "pin_path") { config.pinPath = pinPath }
        if let services = try string(top["services_file"], "services_file") { config.servicesFile = services }
        if let tls = top["tls"] {
            guard let table = tls as? [String: Any] else { throw bad("tls", "must be a mapping with keys cert, key") }
            if let unknown = table.keys.sorted().first(where: { !tlsKeys.contains($0) }) {
                throw bad("tls.\(unknown)", "unknown key (known: cert, key)")
            }
            guard let cert = try string(table["cert"], "tls.cert") else { throw bad("tls.cert", "missing") }
            guard let key = try string(table["key"], "tls.key") else { throw bad("tls.key", "missing") }
            config.tlsCertificate = cert
            config.tlsKey = key
        }
        if let health = top["healthcheck_defaults"] {
            config.healthDefaults = try parseHealthDefaults(health, bad: bad)
        }
        if let sync = top["sync"] {
            config.sync = try SyncConfig.parse(sync, bad: bad)
        }
        if let conntrack = top["conntrack"] {
            guard let table = conntrack as? [String: Any] else {
                throw bad("conntrack", "must be a mapping with keys \(conntrackKeys.joined(separator: ", "))")
            }
            if let unknown = table.keys.sorted().first(where: { !conntrackKeys.contains($0) }) {
                throw bad("conntrack.\(unknown)", "unknown key (known: \(conntrackKeys.joined(separator: ", ")))")
            }
            for key in conntrackKeys {
                guard let raw = table[key] else { continue }
                guard let milliseconds = HealthCheck.parseDuration("\(raw)"), milliseconds % 1000 == 0,
                      (1...86_400).contains(milliseconds / 1000) else {
                    throw bad("conntrack.\(key)", "\(String(reflecting: "\(raw)")) is not a whole number of seconds from 1s to 24h (e.g. 300s, 15m)")
                }
                if key == "tcp_idle_timeout" {
                    config.idleTimeouts.tcpSeconds = UInt32(milliseconds / 1000)
                } else {
                    config.idleTimeouts.udpSeconds = UInt32(milliseconds / 1000)
                }
            }
        }
        return config
    }

    private static func parseHealthDefaults(_ value: Any, bad: (String?, String) -> ControlError) throws(ControlError) -> HealthCheckDefaults {
        guard let table = value as? [String: Any] else {
            throw bad("healthcheck_defaults", "must be a mapping with keys \(healthKeys.joined(separator: ", "))")
        }
        if let unknown = table.keys.sorted().first(where: { !healthKeys.contains($0) }) {
            throw bad("healthcheck_defaults.\(unknown)", "unknown key (known: \(healthKeys.joined(separator: ", ")))")
        }
        var defaults = HealthCheckDefaults.builtIn
        func duration(_ key: String, _ range: ClosedRange<Int>) throws(ControlError) -> Int? {
            guard let raw = table[key] else { return nil }
            let text = "\(raw)"
            guard let value = HealthCheck.parseDuration(text), range.contains(value) else {
                throw bad("healthcheck_defaults.\(key)", "\(String(reflecting: text)) is not a duration from \(HealthCheck.formatDuration(range.lowerBound)) to \(HealthCheck.formatDuration(range.upperBound)) (e.g. 500ms, 2s, 1m)")
            }
            return value
        }
        if let interval = try duration("interval", HealthCheck.intervalRange) { defaults.intervalMilliseconds = interval }
        if let timeout = try duration("timeout", HealthCheck.timeoutRange) { defaults.timeoutMilliseconds = timeout }
        guard defaults.timeoutMilliseconds <= defaults.intervalMilliseconds else {
            throw bad("healthcheck_defaults.timeout", "\(HealthCheck.formatDuration(defaults.timeoutMilliseconds)) is longer than the interval (\(HealthCheck.formatDuration(defaults.intervalMilliseconds)))")
        }
        for key in ["rise", "fall"] {
            guard let raw = table[key] else { continue }
            guard let count = raw as? Int, HealthCheck.countRange.contains(count) else {
                throw bad("healthcheck_defaults.\(key)", "\(String(reflecting: "\(raw)")) is not a count from 1 to 100")
            }
            if key == "rise" { defaults.rise = count } else { defaults.fall = count }
        }
        return defaults
    }

    /// `127.0.0.1:9300`, `[::1]:9300`, `localhost:0`.
    static func splitHostPort(_ text: String) -> (String, Int)? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            return nil  // an IPv6 address needs brackets
        }
        return host.isEmpty ? nil : (host, port)
    }

    /// The bearer token: the token file's first line, without surrounding whitespace.
    public func readToken() throws(ControlError) -> String {
        let text: String
        do { text = try String(contentsOfFile: tokenFile, encoding: .utf8) } catch {
            throw .badInput("token_file \(tokenFile): cannot read it: \(error.localizedDescription)")
        }
        let token = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !token.isEmpty else { throw .badInput("token_file \(tokenFile): the file is empty") }
        return token
    }
}
