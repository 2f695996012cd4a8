// Announces through BIRD exactly the VIPs this node can serve now: the data plane is
// attached and has a service on the VIP with a backend up, the agent is ready (its sync
// copy arrived or timed out) and the node is not draining. It reads the data plane once a
// second, and within 200 ms of a change the agent made (an apply, a health verdict, a
// drain) or of readiness; it rewrites BIRD's include file and sends `configure` only when
// the announcement changed. BIRD's own calls block, so they run on a thread of their own.
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import SluiceControl
import SluiceCore
import Synchronization

public final class FleetAnnouncer: ServiceLifecycle.Service, Sendable {
    public let config: BGPConfig
    private let dataplane: DataplaneOwner
    private let isReady: @Sendable () -> Bool
    private let logger: Logger
    private let bird: BIRDControl
    /// Writes the include file and talks to BIRD, one change after another.
    private let thread = DedicatedThread(name: "sluice-bird")
    /// Present while the node is drained: a drain outlives an agent restart.
    private let drainMarker: String
    /// How often the agent's own changes and readiness are looked at.
    public static let interval = Duration.milliseconds(200)
    /// How often the data plane is read when nothing happened (an attach, a local apply).
    public static let fullInterval = Duration.seconds(1)
    /// Set by `poke()`: something the agent did may change what to announce.
    private let dirty = Atomic<Bool>(true)

    private struct State {
        var draining = false
        /// Set by a SIGTERM: every VIP stays withdrawn until the agent exits.
        var stopping = false
        var attached = false
        var ready = false
        var vips: [FleetStatus.VIP] = []
        /// What BIRD last took (nil: nothing yet, or the last attempt failed).
        var configured: String?
        var announced: Set<IPAddress> = []
        var updates: UInt64 = 0
        var errors: UInt64 = 0
        var lastError: String?
        var lastAttempt: ContinuousClock.Instant?
    }
    private let state = Mutex(State())

    public init(config: BGPConfig, dataplane: DataplaneOwner, drainMarker: String, logger: Logger,
                isReady: @escaping @Sendable () -> Bool) {
        self.config = config
        self.dataplane = dataplane
        self.drainMarker = drainMarker
        self.logger = logger
        self.isReady = isReady
        bird = BIRDControl(socketPath: config.birdSocket)
        let drained = FileManager.default.fileExists(atPath: drainMarker)
        state.withLock { $0.draining = drained }
        if drained { logger.notice("bgp: this node is drained (\(drainMarker) exists): lbctl undrain announces it again") }
    }

    public var isDraining: Bool { state.withLock { $0.draining } }

    public var status: FleetStatus {
        state.withLock { s in
            FleetStatus(draining: s.draining, attached: s.attached, ready: s.ready, vips: s.vips, birdSocket: config.birdSocket,
                        includeFile: config.includeFile, updates: s.updates, errors: s.errors, lastError: s.lastError)
        }
    }

    /// Something changed that may change what to announce: looked at within `interval`.
    public func poke() {
        dirty.store(true, ordering: .relaxed)
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var last = ContinuousClock.now, wasReady = self.isReady()
            while !Task.isCancelled {
                let ready = self.isReady()
                if self.dirty.exchange(false, ordering: .relaxed) || ready != wasReady || ContinuousClock.now - last >= Self.fullInterval {
                    wasReady = ready
                    last = .now
                    await self.evaluate()
                }
                try? await Task.sleep(for: Self.interval)
            }
        }
        // However the agent stops gracefully, it stops announcing.
        state.withLock { $0.stopping = true }
        await evaluate()
    }

    /// Looks at the data plane and the agent and brings BIRD in line; returns once BIRD took
    /// it (or refused). A failed attempt is repeated at most once a second.
    @discardableResult
    func evaluate() async -> Bool {
        let report: StatusReport?
        do throws(ControlError) { report = try await dataplane.status() } catch {
            logger.error("bgp: reading the data plane failed: \(error.message)")
            report = nil
        }
        let ready = isReady()
        let (vips, wanted) = state.withLock { s -> ([FleetStatus.VIP], [IPAddress]) in
            s.attached = !(report?.interfaces.isEmpty ?? true)
            s.ready = ready
            return Self.verdicts(report, draining: s.draining || s.stopping, ready: ready, announced: s.announced,
                                 announceWhen: config.announceWhen)
        }
        state.withLock { $0.vips = vips }
        return await thread.run { [self] in apply(wanted) }
    }

    /// Per VIP of `report`: announce it or why not. (The VIPs announced, in order.)
    static func verdicts(_ report: StatusReport?, draining: Bool, ready: Bool, announced: Set<IPAddress>,
                         announceWhen: BGPConfig.AnnounceWhen) -> ([FleetStatus.VIP], [IPAddress]) {
        guard let report else { return ([], []) }
        var byVIP: [String: [StatusReport.ServiceStatus]] = [:]
        for service in report.services { byVIP[service.vip, default: []].append(service) }
        var vips: [FleetStatus.VIP] = [], wanted: [IPAddress] = []
        for (vip, services) in byVIP.sorted(by: { $0.key < $1.key }) {
            guard let address = IPAddress(vip) else { continue }
            // Up: in the Maglev table and not failing its check (with every backend failing,
            // the last table stays in place, so "active" alone is not enough).
            let dead = services.filter { !$0.backends.contains { $0.state == "active" && $0.health != "down" } }.map(\.name)
            let servable = announceWhen == .anyServiceUp ? dead.count < services.count : dead.isEmpty
            let reason: String? =
                draining ? "draining"
                : report.interfaces.isEmpty ? "not attached"
                : !ready ? "not ready: copying the connection table from peers"
                : !servable ? "no backend up (service \(dead.joined(separator: ", ")))"
                : nil
            if reason == nil { wanted.append(address) }
            vips.append(FleetStatus.VIP(vip: vip, announced: reason == nil && announced.contains(address), reason: reason,
                                        services: services.map(\.name)))
        }
        return (vips, wanted)
    }

    /// On the BIRD thread: writes the include file for `wanted` and has BIRD take it, unless
    /// that is what BIRD took last. A drain or a stop that came since `wanted` was computed wins.
    private func apply(_ wanted: [IPAddress]) -> Bool {
        let (withdrawAll, configured, lastAttempt) = state.withLock { ($0.draining || $0.stopping, $0.configured, $0.lastAttempt) }
        let vips = withdrawAll ? [] : wanted
        let text = BIRDInclude.render(vips) { config.attributes(for: $0) }
        if text == configured { return true }
        if configured == nil, let lastAttempt, ContinuousClock.now - lastAttempt < .seconds(1), state.withLock({ $0.lastError != nil }) {
            return false
        }
        state.withLock { $0.lastAttempt = .now }
        do {
            try Self.install(text, config: config, bird: bird)
        } catch {
            state.withLock {
                if $0.lastError != error.message { logger.error("bgp: \(error.message)") }
                $0.errors += 1
                $0.lastError = error.message
                $0.configured = nil
            }
            return false
        }
        let announced = Set(vips)
        state.withLock { s in
            let added = announced.subtracting(s.announced), removed = s.announced.subtracting(announced)
            if !added.isEmpty { logger.notice("bgp: announcing \(added.map(\.description).sorted().joined(separator: ", "))") }
            if !removed.isEmpty { logger.notice("bgp: withdrawing \(removed.map(\.description).sorted().joined(separator: ", "))") }
            s.configured = text
            s.announced = announced
            s.updates += 1
            s.lastError = nil
            for index in s.vips.indices {
                s.vips[index].announced = IPAddress(s.vips[index].vip).map(announced.contains) ?? false
            }
        }
        return true
    }

    /// Writes `text` over the include file (a rename: BIRD never reads half of it) and
    /// has BIRD re-read its configuration.
    public static func install(_ text: String, config: BGPConfig, bird: BIRDControl) throws(BIRDControl.Failure) {
        let path = config.includeFile, staged = path + ".new"
        do {
            try AgentController.writeDurably(text, to: staged)
        } catch {
            throw BIRDControl.Failure(message: "writing \(staged): \(error.localizedDescription)")
        }
        guard rename(staged, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(staged)
            throw BIRDControl.Failure(message: "renaming \(staged) to \(path): \(reason)")
        }
        try bird.configure()
    }

    /// With the agent gone (for a supervisor: systemd's ExecStopPost, or before BIRD starts):
    /// withdraws every VIP. False when BIRD is not running: it reads the emptied file when it starts.
    @discardableResult
    public static func withdrawAll(config: BGPConfig) throws(BIRDControl.Failure) -> Bool {
        do {
            try install(BIRDInclude.render([]) { _ in BGPConfig.Attributes() }, config: config,
                        bird: BIRDControl(socketPath: config.birdSocket))
            return true
        } catch let error where error.notRunning {
            return false
        }
    }

    // MARK: - Drain

    /// Withdraws every VIP (persistently: a restarted agent stays drained) and waits until new
    /// flows stop arriving (none for drain_quiet) or `timeout` (drain_timeout by default) passes.
    public func drain(timeout: Duration? = nil) async throws(ControlError) -> DrainReport {
        let before = state.withLock { s in
            s.draining = true
            return s.announced.map(\.description).sorted()
        }
        try? FileManager.default.createDirectory(atPath: (drainMarker as NSString).deletingLastPathComponent,
                                                 withIntermediateDirectories: true)
        if !FileManager.default.createFile(atPath: drainMarker, contents: Data("drained by lbctl drain\n".utf8)) {
            logger.warning("bgp: could not write \(drainMarker): the drain will not outlive a restart of the agent")
        }
        logger.notice("bgp: draining: withdrawing every VIP")
        guard await evaluate() else {
            throw .runtime("draining, but BIRD did not take the withdrawal: \(status.lastError ?? "?") (the agent keeps trying)")
        }
        return try await waitQuiet(withdrawn: before, timeout: timeout ?? .milliseconds(config.drainTimeoutMilliseconds))
    }

    /// Ends a drain: the VIPs are announced again as soon as they are servable.
    public func undrain() async -> FleetStatus {
        state.withLock { $0.draining = false }
        unlink(drainMarker)
        logger.notice("bgp: drain ended")
        await evaluate()
        return status
    }

    /// SIGTERM: withdraw, then wait up to shutdown_grace for new flows to stop.
    public func stopAnnouncing() async {
        let before = state.withLock { s in
            s.stopping = true
            return s.announced.map(\.description).sorted()
        }
        guard await evaluate() else {
            logger.error("bgp: stopping, but BIRD did not take the withdrawal: \(status.lastError ?? "?")")
            return
        }
        guard config.shutdownGraceMilliseconds > 0, !before.isEmpty else { return }
        let report = try? await waitQuiet(withdrawn: before, timeout: .milliseconds(config.shutdownGraceMilliseconds))
        if let report {
            logger.notice("bgp: withdrawn for shutdown; \(report.newFlowsAfterWithdraw) new flow(s) after it, \(report.quiet ? "quiet" : "not quiet") after \(String(format: "%.1f", report.waitedSeconds)) s")
        }
    }

    private func waitQuiet(withdrawn: [String], timeout: Duration) async throws(ControlError) -> DrainReport {
        let clock = ContinuousClock(), start = clock.now
        let quiet = Duration.milliseconds(config.drainQuietMilliseconds)
        let first = try await dataplane.nodeCounters().newFlows
        var last = first, lastChange = start
        while true {
            let now = clock.now
            if now - lastChange >= quiet || now - start >= timeout || Task.isCancelled {
                let waited = (now - start).components
                return DrainReport(draining: isDraining, withdrawn: withdrawn, newFlowsAfterWithdraw: last &- first,
                                   waitedSeconds: Double(waited.seconds) + Double(waited.attoseconds) / 1e18,
                                   quiet: now - lastChange >= quiet)
            }
            try? await Task.sleep(for: .milliseconds(100))
            let count = try await dataplane.nodeCounters().newFlows
            if count != last {
                last = count
                lastChange = clock.now
            }
        }
    }
}
