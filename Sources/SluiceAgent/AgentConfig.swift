// The agent's configuration file (`lbctl agent --config FILE`): where to listen, which
// data plane to drive, the token that guards writes and the file the desired set lives in.
// Read with the service file's YAMLReader: unknown keys are errors, so a typo never goes
// unnoticed, and every error says `FILE:LINE: field "x.y": …`.
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
    /// Announcing the VIPs through the node's BIRD; nil = off.
    public var bgp: BGPConfig?
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
        bgp = nil
    }

    static let keys = ["listen", "pin_path", "token_file", "services_file", "tls", "healthcheck_defaults", "sync", "bgp", "conntrack"]
    static let conntrackKeys = ["tcp_idle_timeout", "udp_idle_timeout", "tcp_syn_timeout", "tcp_closing_timeout"]
    static let tlsKeys = ["cert", "key"]

    /// Reads and checks `path`. Every error names the file, the line, the key and the
    /// value, as the service file's do (ConfigError: exit 2).
    public static func load(path: String) throws(ConfigError) -> AgentConfig {
        try parse(try YAMLReader.readFile(path), file: path)
    }

    /// A key of the agent's own that is present must be valid (an explicit null is refused,
    /// not taken for the default); `healthcheck_defaults` reads as a service's `healthcheck`.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> AgentConfig {
        var (reader, top) = try YAMLReader.document(text, file: file, allowed: keys)
        let tokenFile = try reader.required(top, "token_file", because: "writes to the control API need a bearer token")
        var config = AgentConfig(tokenFile: try reader.string(tokenFile, field: "token_file"))
        if let listen = top.values["listen"] {
            (config.host, config.port) = try hostPort(listen, field: "listen", examples: "127.0.0.1:9300 or [::1]:9300", reader: reader)
        }
        if let pinPath = top.values["pin_path"] { config.pinPath = try reader.string(pinPath, field: "pin_path") }
        if let services = top.values["services_file"] { config.servicesFile = try reader.string(services, field: "services_file") }
        if let tls = top.values["tls"] {
            let fields = try reader.mapping(tls, path: "tls", allowed: tlsKeys)
            config.tlsCertificate = try reader.string(try reader.required(fields, "cert"), field: "tls.cert")
            config.tlsKey = try reader.string(try reader.required(fields, "key"), field: "tls.key")
        }
        if let health = top.values["healthcheck_defaults"] {
            config.healthDefaults = try HealthCheckParser.parseDefaults(health, path: "healthcheck_defaults", reader: &reader)
        }
        if let sync = top.values["sync"] {
            config.sync = try SyncConfig.parse(sync, reader: &reader)
        }
        if let bgp = top.values["bgp"] {
            config.bgp = try BGPConfig.parse(bgp, reader: &reader)
        }
        if let conntrack = top.values["conntrack"] {
            let fields = try reader.mapping(conntrack, path: "conntrack", allowed: conntrackKeys)
            for key in conntrackKeys {
                guard let node = fields.values[key] else { continue }
                let raw = try reader.scalar(node, field: fields.field(key))
                guard let milliseconds = HealthCheck.parseDuration(raw), milliseconds % 1000 == 0,
                      (1...86_400).contains(milliseconds / 1000) else {
                    throw reader.error(at: node, field: fields.field(key),
                                       "\(String(reflecting: raw)) is not a whole number of seconds from 1s to 24h (e.g. 300s, 15m)")
                }
                let seconds = UInt32(milliseconds / 1000)
                switch key {
                case "tcp_idle_timeout": config.idleTimeouts.tcpSeconds = seconds
                case "udp_idle_timeout": config.idleTimeouts.udpSeconds = seconds
                case "tcp_syn_timeout": config.idleTimeouts.tcpSynSeconds = seconds
                default: config.idleTimeouts.tcpClosingSeconds = seconds
                }
            }
        }
        return config
    }

    /// A listen address: HOST:PORT, [IPv6]:PORT.
    static func hostPort(_ node: Node, field: String, examples: String, reader: YAMLReader) throws(ConfigError) -> (String, Int) {
        let text = try reader.string(node, field: field)
        guard let hostPort = splitHostPort(text) else {
            throw reader.error(at: node, field: field, "\(String(reflecting: text)) is not HOST:PORT (e.g. \(examples))")
        }
        return hostPort
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

    /// Where a drained node records it (beside the services file), so a restart stays drained.
    public var drainMarker: String {
        ((servicesFile as NSString).deletingLastPathComponent as NSString).appendingPathComponent("drained")
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
