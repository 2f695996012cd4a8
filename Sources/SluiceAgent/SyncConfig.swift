// The `sync:` section of the agent's configuration: where this node listens for its peers,
// who the peers are, the shared key that authenticates them, and the timings.
import Crypto
import Foundation
import SluiceControl
import SluiceCore

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

    static func parse(_ value: Any, bad: (String?, String) -> ControlError) throws(ControlError) -> SyncConfig {
        guard let table = value as? [String: Any] else { throw bad("sync", "must be a mapping with keys \(keys.joined(separator: ", "))") }
        if let unknown = table.keys.sorted().first(where: { !keys.contains($0) }) {
            throw bad("sync.\(unknown)", "unknown key (known: \(keys.joined(separator: ", ")))")
        }
        guard let keyFile = table["key_file"] as? String, !keyFile.isEmpty else {
            throw bad("sync.key_file", "missing: peers authenticate each other's batches with this shared key")
        }
        var config = SyncConfig(keyFile: keyFile)
        if let listen = table["listen"] {
            guard let text = listen as? String, let (host, port) = AgentConfig.splitHostPort(text) else {
                throw bad("sync.listen", "\(String(reflecting: "\(listen)")) is not HOST:PORT (e.g. 10.0.0.1:9301)")
            }
            config.host = host
            config.port = port
        }
        if let peers = table["peers"] {
            guard let list = peers as? [Any] else { throw bad("sync.peers", "must be a list of ADDRESS:PORT") }
            for (index, item) in list.enumerated() {
                guard let text = item as? String, let (host, port) = AgentConfig.splitHostPort(text), port > 0,
                      let address = IPAddress(host) else {
                    throw bad("sync.peers[\(index)]", "\(String(reflecting: "\(item)")) is not ADDRESS:PORT with an IP address (e.g. 10.0.0.2:9301, [fd00::2]:9301)")
                }
                config.peers.append(Peer(address: address, port: port))
            }
            if config.peers.count > ConntrackSync.maxPeers {
                throw bad("sync.peers", "\(config.peers.count) peers exceed the limit of \(ConntrackSync.maxPeers)")
            }
        }
        func duration(_ key: String, _ range: ClosedRange<Int>) throws(ControlError) -> Int? {
            guard let raw = table[key] else { return nil }
            guard let value = HealthCheck.parseDuration("\(raw)"), range.contains(value) else {
                throw bad("sync.\(key)", "\(String(reflecting: "\(raw)")) is not a duration from \(HealthCheck.formatDuration(range.lowerBound)) to \(HealthCheck.formatDuration(range.upperBound)) (e.g. 50ms, 10s)")
            }
            return value
        }
        if let interval = try duration("batch_interval", 1...10_000) { config.batchIntervalMilliseconds = interval }
        if let timeout = try duration("resync_timeout", 100...600_000) { config.resyncTimeoutMilliseconds = timeout }
        return config
    }

    /// The shared key: the key file's first line (at least 32 bytes).
    public func readKey() throws(ControlError) -> SymmetricKey {
        let text: String
        do { text = try String(contentsOfFile: keyFile, encoding: .utf8) } catch {
            throw .badInput("sync.key_file \(keyFile): cannot read it: \(error.localizedDescription)")
        }
        let key = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard key.utf8.count >= Self.minimumKeyBytes else {
            throw .badInput("sync.key_file \(keyFile): the key is \(key.utf8.count) bytes; at least \(Self.minimumKeyBytes) are needed (e.g. openssl rand -hex 32)")
        }
        return SymmetricKey(data: Data(key.utf8))
    }
}
