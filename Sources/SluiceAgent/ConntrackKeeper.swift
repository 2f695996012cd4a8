// The agent's care of the connection table: it ticks the clock the data plane stamps entries
// with, and every sweep reads the table (and the NAT translations) whole, deletes the flows
// idle past the timeout of their state,
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
    private let latestNAT = Mutex<(translations: Int?, snatInUse: [IPAddress: Int])>((nil, [:]))
    private let expiredTotal = Atomic<UInt64>(0)
    private let translationsExpiredTotal = Atomic<UInt64>(0)
    private let refresh: (@Sendable ([FlowRecord]) async -> Void)?

    /// Sweeps this often: a third of the shortest timeout, between 1 and 10 seconds.
    public var sweepSeconds: UInt32 { min(10, max(1, timeouts.shortest / 3)) }

    /// `refresh` gets this node's flows seen since the last call, a third of the shortest
    /// idle timeout (tcp, udp: what peers age their copies by) apart, so peers keep them young.
    public init(dataplane: DataplaneOwner, timeouts: IdleTimeouts, logger: Logger,
                refresh: (@Sendable ([FlowRecord]) async -> Void)? = nil) async throws(ControlError) {
        self.dataplane = dataplane
        self.timeouts = timeouts
        self.logger = logger
        self.refresh = refresh
        try await dataplane.tickClock(ConntrackClock.now())
        let swept = try? await dataplane.sweepConntrack(now: ConntrackClock.now(), timeouts: timeouts, expire: false)
        latest.withLock { $0 = swept?.entries }
        latestNAT.withLock { $0 = (swept?.translations, swept?.snatInUse ?? [:]) }
    }

    /// The entries at the last sweep (nil if reading the table failed).
    public var entries: Int? { latest.withLock { $0 } }
    /// Flows deleted as idle since the agent started.
    public var expired: UInt64 { expiredTotal.load(ordering: .relaxed) }
    /// The NAT figures of the last sweep, and the translations deleted since the agent started.
    public var nat: NATFigures {
        let (translations, inUse) = latestNAT.withLock { $0 }
        return NATFigures(translations: translations, expired: translationsExpiredTotal.load(ordering: .relaxed), snatInUse: inUse)
    }

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

                // An entry touched while no agent ticked carries an old stamp: a timeout's
                // flows are expired only once the clock has run for that whole timeout.
                let due = self.timeouts.due(uptime: now &- started)
                let refreshing = self.refresh != nil && now &- lastRefresh >= max(1, self.timeouts.shortestIdle / 3)
                do throws(ControlError) {
                    let sweep = try await self.dataplane.sweepConntrack(now: now, timeouts: due, expire: true,
                                                     activeSince: refreshing ? lastRefresh : nil)
                    self.latest.withLock { $0 = sweep.entries }
                    self.latestNAT.withLock { $0 = (sweep.translations, sweep.snatInUse) }
                    self.expiredTotal.add(UInt64(sweep.expired), ordering: .relaxed)
                    self.translationsExpiredTotal.add(UInt64(sweep.translationsExpired), ordering: .relaxed)
                    if refreshing, let refresh = self.refresh {
                        lastRefresh = now
                        await refresh(sweep.active)
                    }
                } catch {
                    self.latest.withLock { $0 = nil }
                    self.latestNAT.withLock { $0 = (nil, [:]) }
                    self.logger.error("conntrack: \(error.message)")
                }
            }
        }
    }
}

/// The agent's figures of the translation table, from its last sweep (ConntrackKeeper).
public struct NATFigures: Sendable, Equatable {
    /// sl_nat entries at the last sweep, or nil when not counted.
    public var translations: Int?
    /// Translations the agent deleted since it started (with their flow, or alone).
    public var expired: UInt64
    /// Full-NAT translations holding a port, by SNAT address.
    public var snatInUse: [IPAddress: Int]

    public init(translations: Int? = nil, expired: UInt64 = 0, snatInUse: [IPAddress: Int] = [:]) {
        self.translations = translations
        self.expired = expired
        self.snatInUse = snatInUse
    }
}
