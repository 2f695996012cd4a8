// The agent's one handle on the pinned data plane. Every map the agent reads or writes goes
// through it: writes (applies, the conntrack clock and sweeps, sync's reporting and peers'
// records) run in order on a thread of their own, and reads (status, counters, /metrics,
// the applied set, a table copy for a peer) on another, so that neither ever blocks the
// cooperative pool and a read never waits for a write.
import SluiceControl
import SluiceCore

public actor DataplaneOwner {
    public nonisolated let pinPath: String
    /// Runs this actor: the writes, one after another.
    private nonisolated let writer: DedicatedThread
    /// Runs the reads. A read between two writes of one apply sees the maps as they are then,
    /// as a concurrent `lbctl status` would; packets never see a half-written service.
    private nonisolated let reader: DedicatedThread
    private nonisolated let dataplane: Dataplane
    /// The data-plane side of sync (its ring-buffer reader and backend index), once started.
    private var sync: ConntrackSync?

    public nonisolated var unownedExecutor: UnownedSerialExecutor { writer.asUnownedSerialExecutor() }

    private init(dataplane: Dataplane, writer: DedicatedThread) {
        pinPath = dataplane.pinPath
        self.dataplane = dataplane
        self.writer = writer
        reader = DedicatedThread(name: "sluice-dataplane-reads")
    }

    /// Opens what is pinned at `pinPath`, or loads the embedded balancer and pins it.
    public static func openOrLoad(pinPath: String) async throws(ControlError) -> DataplaneOwner {
        let writer = DedicatedThread(name: "sluice-dataplane")
        let dataplane = try await writer.run { () throws(ControlError) in try Dataplane.openOrLoad(pinPath: pinPath) }
        return DataplaneOwner(dataplane: dataplane, writer: writer)
    }

    /// How many flows the connection table holds at most.
    public nonisolated var conntrackCapacity: Int { dataplane.conntrackCapacity }

    // MARK: - Writes, in order, on the data plane's thread

    /// Applies `desired` (all or nothing; see `Dataplane.apply`).
    public func apply(_ desired: ServiceFile, health: HealthVerdicts? = nil) throws(ControlError) -> ApplyResult {
        try dataplane.apply(desired, health: health)
    }

    /// What the maps say is applied, read in order with the writes.
    func appliedStateNow() throws(ControlError) -> AppliedState { try dataplane.appliedState() }

    /// Writes the l2dsr backends' MACs as the neighbour table has them now (see `Dataplane.refreshNeighbourMACs`).
    public func refreshNeighbourMACs() throws(ControlError) -> Int { try dataplane.refreshNeighbourMACs() }

    /// Publishes the conntrack clock.
    public func tickClock(_ seconds: UInt32) throws(ControlError) { try dataplane.tickClock(seconds) }

    /// Reads the connection table whole and, with `expire`, deletes what was idle too long.
    public func sweepConntrack(now: UInt32, timeouts: IdleTimeouts, expire: Bool,
                               activeSince: UInt32? = nil) throws(ControlError) -> ConntrackSweep {
        try dataplane.sweepConntrack(now: now, timeouts: timeouts, expire: expire, activeSince: activeSince)
    }

    /// Starts sync: records the peers (for `lbctl flows`) and turns on new-flow reports.
    public func startSync(peers: [IPAddress]) throws(ControlError) {
        let sync = try ConntrackSync(dataplane: dataplane)
        try sync.setPeers(peers)
        try sync.setReporting(true)
        self.sync = sync
    }

    /// Turns new-flow reports off (an agent without sync: nobody drains the ring).
    public func stopSyncReporting() throws(ControlError) {
        if let sync { return try sync.setReporting(false) }
        try ConntrackSync(dataplane: dataplane).setReporting(false)
    }

    /// The flows placed since the last call (after `startSync`).
    public func newFlows() throws(ControlError) -> [FlowRecord] {
        try sync?.newFlows() ?? []
    }

    /// Writes peers' records into the connection table (after `startSync`).
    public func insertPeerRecords(_ records: [FlowRecord], origin: UInt8) -> ConntrackSync.InsertResult {
        sync?.insert(records, origin: origin) ?? ConntrackSync.InsertResult()
    }

    // MARK: - Reads, on a thread of their own

    private nonisolated func read<T: Sendable>(_ body: @escaping @Sendable (Dataplane) throws(ControlError) -> T)
        async throws(ControlError) -> T {
        try await reader.run { [dataplane] () throws(ControlError) in try body(dataplane) }
    }

    public nonisolated func appliedState() async throws(ControlError) -> AppliedState {
        try await read { dataplane throws(ControlError) in try dataplane.appliedState() }
    }

    public nonisolated func status() async throws(ControlError) -> StatusReport {
        try await read { dataplane throws(ControlError) in try dataplane.status() }
    }

    /// The node's counters (new flows, verdicts, drops), summed over the CPUs.
    public nonisolated func nodeCounters() async throws(ControlError) -> NodeCounters {
        try await read { dataplane throws(ControlError) in try dataplane.nodeCounters() }
    }

    /// What applying `desired` would change; writes nothing.
    public nonisolated func dryRun(_ desired: ServiceFile) async throws(ControlError) -> ApplyResult {
        try await read { dataplane throws(ControlError) in try dataplane.apply(desired, dryRun: true) }
    }

    /// What one /metrics scrape shows (the agent's own figures passed in).
    public nonisolated func metrics(conntrackEntries: Int?, conntrackExpired: UInt64, lastApply: Double,
                                    sync: SyncStats.Snapshot?, nat: NATFigures = NATFigures()) async throws(ControlError) -> MetricsInput {
        try await read { dataplane throws(ControlError) in
            try MetricsInput.read(from: dataplane, conntrackEntries: conntrackEntries, conntrackExpired: conntrackExpired,
                                  lastApply: lastApply, sync: sync, nat: nat)
        }
    }

    /// Every flow the table trusts now, for a peer's full copy.
    public nonisolated func trustedFlows() async throws(ControlError) -> [FlowRecord] {
        try await read { dataplane throws(ControlError) in try dataplane.trustedFlows() }
    }
}
