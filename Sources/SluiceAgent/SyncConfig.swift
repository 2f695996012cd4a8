// The `sync:` section of the agent's configuration: where this node listens for its peers,
// who the peers are, the shared key that authenticates them, and the timings.
import Crypto
import Foundation
import SluiceControl
import SluiceCore
import Yams

public struct SyncConfig: Sendable, Equatable {
    public struct Peer: Sendable, Equatable, CustomStringConvertible {
        public var address: IPAddress
        public var port: Int
        public var description: String { address.family == .v6 ? "[\(address)]:\(port)" : "\(address):\(port)" }
    }

    public static let defaultPort = 9301
    public var host = "127.0.0.1"
    public var port = SyncConfig.defaultPort
    public var peers: [Peer] = []
    public var keyFile: String
    public var batchIntervalMilliseconds = 50
    public var resyncTimeoutMilliseconds = 10_000

    public init(keyFile: String) {
        self.keyFile = keyFile
    }

    static let keys = ["listen", "peers", "key_file", "batch_interval", "resync_timeout"]
    /// A key shorter than this is refused: it is the fleet's only defence against forged flows.
    static let minimumKeyBytes = 32

    static func parse(_ node: Node, reader: inout YAMLReader) throws(ConfigError) -> SyncConfig {
        let fields = try reader.mapping(node, path: "sync", allowed: keys)
        let keyFile = try reader.required(fields, "key_file", because: "peers authenticate each other's batches with this shared key")
        var config = SyncConfig(keyFile: try reader.string(keyFile, field: "sync.key_file"))
        if let listen = fields.values["listen"] {
            (config.host, config.port) = try AgentConfig.hostPort(listen, field: "sync.listen", examples: "10.0.0.1:9301", reader: reader)
        }
        if let peers = fields.values["peers"] {
            let items = try reader.sequence(peers, field: "sync.peers")
            for (index, item) in items.enumerated() {
                let field = "sync.peers[\(index)]"
                let text = try reader.scalar(item, field: field)
                guard let (host, port) = AgentConfig.splitHostPort(text), port > 0, let address = IPAddress(host) else {
                    throw reader.error(at: item, field: field, "\(String(reflecting: text)) is not ADDRESS:PORT with an IP address (e.g. 10.0.0.2:9301, [fd00::2]:9301)")
                }
                config.peers.append(Peer(address: address, port: port))
            }
            if config.peers.count > ConntrackSync.maxPeers {
                throw reader.error(at: peers, field: "sync.peers", "\(config.peers.count) peers exceed the limit of \(ConntrackSync.maxPeers)")
            }
        }
        func duration(_ key: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int? {
            guard let node = fields.values[key] else { return nil }
            return try reader.duration(node, field: fields.field(key), range: range, examples: "50ms, 10s")
        }
        if let interval = try duration("batch_interval", 1...10_000) { config.batchIntervalMilliseconds = interval }
        if let timeout = try duration("resync_timeout", 100...600_000) { config.resyncTimeoutMilliseconds = timeout }
        return config
    }

    /// Secrets a key file may hold: the one in use, and during a rotation the one coming
    /// in or going out.
    static let maximumKeys = 2

    /// The fleet's shared secrets: each non-empty line of the key file one (at least 32
    /// bytes), the first sealing what this node sends, every one opening what it receives.
    public func readKeys() throws(ControlError) -> SyncKeyRing {
        let text: String
        do { text = try String(contentsOfFile: keyFile, encoding: .utf8) } catch {
            throw .badInput("sync.key_file \(keyFile): cannot read it: \(error.localizedDescription)")
        }
        var keys: [SyncKey] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let secret = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if secret.isEmpty { continue }
            guard secret.utf8.count >= Self.minimumKeyBytes else {
                throw .badInput("sync.key_file \(keyFile):\(index + 1): the key is \(secret.utf8.count) bytes; at least \(Self.minimumKeyBytes) are needed (e.g. openssl rand -hex 32)")
            }
            let key = SyncKey(secret: Data(secret.utf8))
            guard !keys.contains(key) else { throw .badInput("sync.key_file \(keyFile):\(index + 1): the same key twice") }
            keys.append(key)
        }
        guard !keys.isEmpty else {
            throw .badInput("sync.key_file \(keyFile): no key in the file (one line of at least \(Self.minimumKeyBytes) bytes, e.g. openssl rand -hex 32)")
        }
        guard keys.count <= Self.maximumKeys else {
            throw .badInput("sync.key_file \(keyFile): \(keys.count) keys; at most \(Self.maximumKeys) (the key in use first, then the one being rotated in or out)")
        }
        return SyncKeyRing(keys)
    }
}
