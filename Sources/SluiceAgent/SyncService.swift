// Connection-state sync between balancer nodes. Every batch interval the agent drains the
// data plane's new-flow reports and sends them to each peer over one TCP connection it
// keeps to that peer; what peers send arrives on connections they open to this node's
// listener and is written into the connection table (never over a fresher local entry).
// Each direction between two nodes uses exactly one connection, so a sender's sequence
// numbers reach a receiver in order and a replayed frame shows as a step back.
//
// A node that starts asks each peer for a full copy; it reports itself ready (GET /readyz,
// for whatever announces its routes) once one peer has sent its copy, or when the resync
// timeout passes.
import Crypto
import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import SluiceControl
import SluiceCore
import Synchronization

/// What /metrics shows of the sync, readable without waiting for the service.
public final class SyncStats: Sendable {
    public struct Snapshot: Sendable {
        public var ready = false
        public var sent: [String: UInt64] = [:]
        public var received: [String: UInt64] = [:]
        public var applied: UInt64 = 0
        public var batchesRejected: [String: UInt64] = [:]
        public var recordsRejected: [String: UInt64] = [:]
        public var connected: [String: Bool] = [:]
        /// Seconds between a peer stamping its last applied batch and this node writing it.
        public var lagSeconds: Double = 0
        public var framesDropped: UInt64 = 0
        /// The ids of the keys in force: the one sealing first, then any other one accepted.
        public var keyIDs: [String] = []

        public init() {}
    }

    private let state = Mutex(Snapshot())
    public var snapshot: Snapshot { state.withLock { $0 } }
    func update(_ body: (inout Snapshot) -> Void) { state.withLock { body(&$0) } }
}

public actor SyncService: ServiceLifecycle.Service {
    private let config: SyncConfig
    /// The shared secrets, read again when the key file changes (a rotation needs no restart).
    private let keys: WatchedFile<SyncKeyRing>
    /// Reads new flows, writes peers' records and copies the table, off the pool.
    private let dataplane: DataplaneOwner
    private let logger: Logger
    public nonisolated let stats = SyncStats()
    /// This process's identity in frames: random, so a restarted agent is a new sender.
    private let sender = UInt64.random(in: 1...UInt64.max)
    private let sequence = Atomic<UInt64>(0)
    private var guardian = SyncReplayGuard()
    /// Frames waiting to go to each connected peer (by index in `config.peers`).
    private var outboxes: [Int: AsyncStream<Outgoing>.Continuation] = [:]
    private var ready = false
    /// Peers that asked for a full copy while this node had no connection to them.
    private var copiesOwed: Set<Int> = []


    /// Records the peers in the data plane and turns on its new-flow reports.
    public init(config: SyncConfig, dataplane: DataplaneOwner, logger: Logger) async throws(ControlError) {
        self.config = config
        self.logger = logger
        self.dataplane = dataplane
        let stats = stats, path = config.keyFile
        do {
            keys = try WatchedFile(path: path, interval: .seconds(1), read: { try config.readKeys() }) { result in
                switch result {
                case let .success(ring):
                    stats.update { $0.keyIDs = ring.keys.map(\.idHex) }
                    logger.notice("sync.key_file \(path) changed: sealing with key \(ring.sealing.idHex), accepting \(ring.keys.map(\.idHex).joined(separator: ", "))")
                case let .failure(error):
                    logger.warning("sync.key_file \(path) changed but gives no keys (\(error)); keeping the keys in force")
                }
            }
        } catch let error as ControlError {
            throw error
        } catch {
            throw .badInput("sync.key_file \(path): \(error)")
        }
        let ids = keys.current().keys.map(\.idHex)
        stats.update { $0.keyIDs = ids }
        try await dataplane.startSync(peers: config.peers.map(\.address))
        if config.peers.isEmpty { ready = true }
        stats.update { [ready] in $0.ready = ready }
    }

    public nonisolated var isReady: Bool { stats.snapshot.ready }

    public func run() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: config.host, port: config.port) { channel in Self.framed(channel) }
        logger.info("sync: listening on \(config.host):\(config.port), \(config.peers.count) peer(s)")
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.accept(server) }
                for index in self.config.peers.indices {
                    group.addTask { await self.keepConnected(to: index) }
                }
                group.addTask { await self.sendNewFlows() }
                group.addTask { await self.readyAfterTimeout() }
                group.addTask { await self.watchKeys() }
            }
        }
    }

    /// Looks at the key file every second, so a rotated key is in force (and shown in
    /// /metrics) within about a second even while no frame comes or goes.
    private func watchKeys() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            _ = keys.current()
        }
    }

    // MARK: the connections

    private static func framed(_ channel: any Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, ByteBuffer>> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
                ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .fourBytes),
                                     maximumBufferSize: SyncFrame.maxSize + 4))
            try channel.pipeline.syncOperations.addHandler(LengthFieldPrepender(lengthFieldBitLength: .fourBytes))
            return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
        }
    }

    /// Reads what peers send on the connections they open to this node.
    private func accept(_ server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>) async {
        do {
            try await server.executeThenClose { connections in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in connections {
                        let remote = connection.channel.remoteAddress?.ipAddress.flatMap(IPAddress.init)
                        group.addTask { await self.read(connection, from: remote) }
                    }
                }
            }
        } catch {
            if !Task.isCancelled { logger.error("sync: the listener failed: \(error)") }
        }
    }

    private func read(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>, from remote: IPAddress?) async {
        let origin = remote.flatMap { address in config.peers.firstIndex { $0.address == address } }
        let name = remote?.description ?? "unknown"
        do {
            try await connection.executeThenClose { inbound, _ in
                for try await buffer in inbound {
                    await handle(Array(buffer.readableBytesView), peerIndex: origin, peerName: name)
                }
            }
        } catch {
            logger.debug("sync: connection from \(name) ended: \(error)")
        }
    }

    /// Keeps one connection to peer `index` open (retrying every second), sends it the
    /// batches, and, while this node is not ready, asks it for a full copy first.
    private func keepConnected(to index: Int) async {
        let peer = config.peers[index]
        while !Task.isCancelled {
            do {
                let connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connectTimeout(.seconds(2))
                    .connect(host: peer.address.description, port: peer.port) { channel in Self.framed(channel) }
                let (frames, outbox) = AsyncStream<Outgoing>.makeStream(bufferingPolicy: .bufferingOldest(4096))
                outboxes[index] = outbox
                stats.update { $0.connected[peer.description] = true }
                logger.info("sync: connected to peer \(peer)")
                if !ready { outbox.yield(Outgoing(kind: .resyncRequest)) }
                if copiesOwed.remove(index) != nil { await sendCopy(to: index) }
                try await connection.executeThenClose { _, outbound in
                    for await frame in frames {
                        try await outbound.write(ByteBuffer(bytes: seal(frame)))
                        if frame.kind == .records {
                            stats.update { $0.sent[peer.description, default: 0] += UInt64(frame.records.count) }
                        }
                    }
                }
            } catch {
                if outboxes[index] != nil || !Task.isCancelled {
                    logger.debug("sync: peer \(peer): \(error)")
                }
            }
            outboxes[index]?.finish()
            outboxes[index] = nil
            stats.update { $0.connected[peer.description] = false }
            try? await Task.sleep(for: copiesOwed.contains(index) ? .milliseconds(100) : .seconds(1))
        }
    }

    private func seal(_ frame: Outgoing) -> [UInt8] {
        let sequence = sequence.add(1, ordering: .relaxed).newValue
        return SyncFrame(kind: frame.kind, sender: sender, sequence: sequence, timestampMilliseconds: Self.now(),
                         records: frame.records).encoded(keys: keys.current())
    }

    private func enqueue(_ frame: Outgoing, to index: Int) {
        guard let outbox = outboxes[index] else { return }
        if case .dropped = outbox.yield(frame) { stats.update { $0.framesDropped += 1 } }
    }

    // MARK: what goes out

    /// Every batch interval: the flows placed here since the last one, to every connected peer.
    private func sendNewFlows() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(config.batchIntervalMilliseconds))
            let records: [FlowRecord]
            do { records = try await dataplane.newFlows() } catch {
                logger.error("sync: reading new flows failed: \(error.message)")
                continue
            }
            guard !records.isEmpty else { continue }
            for chunk in Self.chunks(records) {
                for index in outboxes.keys { enqueue(Outgoing(kind: .records, records: chunk), to: index) }
            }
        }
    }

    /// This node's flows that are still alive, sent again so peers do not age them out.
    public func refresh(_ records: [FlowRecord]) {
        for chunk in Self.chunks(records) {
            for index in outboxes.keys { enqueue(Outgoing(kind: .records, records: chunk), to: index) }
        }
    }

    private static func chunks(_ records: [FlowRecord]) -> [[FlowRecord]] {
        stride(from: 0, to: records.count, by: SyncFrame.maxRecords).map {
            Array(records[$0..<min($0 + SyncFrame.maxRecords, records.count)])
        }
    }

    // MARK: what comes in

    private func handle(_ bytes: [UInt8], peerIndex: Int?, peerName: String) async {
        let frame: SyncFrame
        do { frame = try SyncFrame.decode(bytes, keys: keys.current()) } catch {
            stats.update { $0.batchesRejected[error.rawValue, default: 0] += 1 }
            return
        }
        let verdict = guardian.check(frame, now: Self.now())
        guard verdict == .accept else {
            stats.update { $0.batchesRejected[verdict.rawValue, default: 0] += 1 }
            return
        }
        switch frame.kind {
        case .records:
            // Origin: the peer's index + 1 (0 is local); a sender at an unknown address gets the last index.
            let origin = UInt8(peerIndex.map { $0 + 1 } ?? ConntrackSync.maxPeers)
            let result = await dataplane.insertPeerRecords(frame.records, origin: origin)
            let lag = Double(Self.now().subtractingReportingOverflow(frame.timestampMilliseconds).partialValue) / 1000
            stats.update { stats in
                stats.received[peerName, default: 0] += UInt64(frame.records.count)
                stats.applied += UInt64(result.applied)
                for (reason, count) in result.rejected { stats.recordsRejected[reason.rawValue, default: 0] += UInt64(count) }
                stats.lagSeconds = max(0, lag)
            }
        case .resyncRequest:
            guard let peerIndex else {
                logger.warning("sync: a full copy was asked for by \(peerName), which is not a configured peer")
                return
            }
            // The peer has (re)started: this node's connection to it may be one to its old
            // process that has not failed yet. Open a new one and send the copy on that.
            copiesOwed.insert(peerIndex)
            outboxes[peerIndex]?.finish()
        case .resyncDone:
            if !ready { markReady("peer \(peerName) sent its whole table") }
        }
    }

    /// The whole connection table, then "done", on this node's connection to the peer.
    private func sendCopy(to index: Int) async {
        let records: [FlowRecord]
        do { records = try await dataplane.trustedFlows() } catch {
            logger.error("sync: reading the table for peer \(config.peers[index]) failed: \(error.message)")
            return
        }
        for chunk in Self.chunks(records) { enqueue(Outgoing(kind: .records, records: chunk), to: index) }
        enqueue(Outgoing(kind: .resyncDone), to: index)
        logger.info("sync: sent peer \(config.peers[index]) a full copy (\(records.count) flows)")
    }

    // MARK: readiness

    private func readyAfterTimeout() async {
        try? await Task.sleep(for: .milliseconds(config.resyncTimeoutMilliseconds))
        if !Task.isCancelled, !ready { markReady("no peer sent its table within \(config.resyncTimeoutMilliseconds) ms") }
    }

    private func markReady(_ why: String) {
        ready = true
        stats.update { $0.ready = true }
        logger.notice("sync: ready: \(why)")
    }

    static func now() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }
}

/// A frame's kind and records, before it is numbered, stamped and sealed.
struct Outgoing: Sendable {
    var kind: SyncFrame.Kind
    var records: [FlowRecord] = []
}
