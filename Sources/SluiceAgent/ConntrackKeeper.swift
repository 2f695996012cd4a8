// The agent's care of the connection table: it ticks the clock the data plane stamps entries
// with, and every sweep reads the table whole, deletes the flows idle past their timeout,
// keeps the count /metrics shows (the kernel keeps none user space can read; a 1,048,576-
// flow table takes ~330 ms to read here, so it is never read during a scrape) and, with
// sync, tells the peers which of this node's flows are still alive.
import Logging
import ServiceLifecycle
import SluiceControl
import SluiceCore
import Synchronization

public final class ConntrackKeeper: ServiceLifecycle.Service, Sendable {
    /// The clock ticks and the sweeps run on the data plane's own thread, never on the pool.
    private let dataplane: DataplaneOwner
    private let timeouts: IdleTimeouts
    private let logger: Logger
    private let latest = Mutex<Int?>(nil)
    private let expiredTotal = Atomic<UInt64>(0)
    private let refresh: (@Sendable ([FlowRecord]) async -> Void)?

    /// Sweeps this often: a third of the shortest timeout, between 1 and 10 seconds.
    public var sweepSeconds: UInt32 { min(10, max(1, timeouts.shortest / 3)) }

    /// `refresh` gets this node's flows seen since the last call, a third of the shortest
    /// timeout apart, so peers keep them young.
    public init(dataplane: DataplaneOwner, timeouts: IdleTimeouts, logger: Logger,
                refresh: (@Sendable ([FlowRecord]) async -> Void)? = nil) async throws(ControlError) {
        self.dataplane = dataplane
        self.timeouts = timeouts
        self.logger = logger
        self.refresh = refresh
        try await dataplane.tickClock(ConntrackClock.now())
        let swept = try? await dataplane.sweepConntrack(now: ConntrackClock.now(), timeouts: timeouts, expire: false)
        latest.withLock { $0 = swept?.entries }
    }

    /// The entries at the last sweep (nil if reading the table failed).
    public var entries: Int? { latest.withLock { $0 } }
    /// Flows deleted as idle since the agent started.
    public var expired: UInt64 { expiredTotal.load(ordering: .relaxed) }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            let started = ConntrackClock.now()
            var lastSweep = started, lastRefresh = started
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { break }
                let now = ConntrackClock.now()
                do throws(ControlError) { try await self.dataplane.tickClock(now) } catch { self.logger.error("conntrack: \(error.message)") }
                guard now &- lastSweep >= self.sweepSeconds else { continue }
                lastSweep = now
                // An entry touched while no agent ticked carries an old stamp: a protocol's
                // flows are expired only once the clock has run for its whole timeout.
                let uptime = now &- started
                var due = self.timeouts
                if uptime < due.tcpSeconds { due.tcpSeconds = .max }
                if uptime < due.udpSeconds { due.udpSeconds = .max }
                let refreshing = self.refresh != nil && now &- lastRefresh >= max(1, self.timeouts.shortest / 3)
                do throws(ControlError) {
                    let sweep = try await self.dataplane.sweepConntrack(now: now, timeouts: due, expire: true,
                                                     activeSince: refreshing ? lastRefresh : nil)
                    self.latest.withLock { $0 = sweep.entries }
                    self.expiredTotal.add(UInt64(sweep.expired), ordering: .relaxed)
                    if refreshing, let refresh = self.refresh {
                        lastRefresh = now
                        await refresh(sweep.active)
                    }
                } catch {
                    self.latest.withLock { $0 = nil }
                    self.logger.error("conntrack: \(error.message)")
                }
            }
        }
    }
}
