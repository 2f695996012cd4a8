// What the control API and /metrics do, apart from HTTP: applies ordered on the data plane's
// own thread, reads beside them, the desired set and its persistence.
import Foundation
import Glibc
import Logging
import SluiceControl
import SluiceCore
import Synchronization

/// The agent's version, shown by `lbctl --version` and in `sluice_build_info`.
public enum AgentBuild {
    public static let version = "0.1.0"
}

/// A request the agent refuses, with the HTTP status and the JSON error body.
public struct APIError: Error, Sendable {
    public var status: Int
    public var body: ErrorBody

    public struct ErrorBody: Codable, Sendable, Equatable {
        public var error: String
        /// For a bad document: the service, its index, the field and the line, when known.
        public var service: String?
        public var serviceIndex: Int?
        public var field: String?
        public var line: Int?

        enum CodingKeys: String, CodingKey {
            case error, service, field, line
            case serviceIndex = "service_index"
        }

        // Unset values are written as null, so clients always find every key.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(error, forKey: .error)
            try container.encode(service, forKey: .service)
            try container.encode(serviceIndex, forKey: .serviceIndex)
            try container.encode(field, forKey: .field)
            try container.encode(line, forKey: .line)
        }
    }

    public init(status: Int, _ message: String) {
        self.status = status
        body = ErrorBody(error: message)
    }

    public init(_ error: ConfigError) {
        status = 400
        body = ErrorBody(error: error.description, service: error.service, serviceIndex: error.serviceIndex,
                         field: error.field, line: error.line)
    }

    public init(_ error: ControlError) {
        self.init(status: error.kind == .badInput ? 400 : 500, error.message)
    }

    public static let unauthorized = APIError(status: 401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
}

/// The answer to PUT /v1/services and POST /v1/services/validate.
public struct ApplyResponse: Codable, Sendable, Equatable {
    /// False for validate (a dry run): nothing was written.
    public var applied: Bool
    public var changed: Bool
    /// One line per change, as `lbctl apply` prints them.
    public var changes: [String]
    public var diff: ConfigDiff
    public var tablesWritten: Int
    public var bytesWritten: Int
    /// l2dsr backends applied without a MAC (nil for validate, and from older agents).
    public var unresolvedNeighbours: [UnresolvedNeighbour]?
    /// validate only: what the change would disturb in each service served now that it changes
    /// (nil for a PUT, and from older agents).
    public var disruption: [ServiceDisruption]?

    enum CodingKeys: String, CodingKey {
        case applied, changed, changes, diff, disruption
        case tablesWritten = "tables_written"
        case bytesWritten = "bytes_written"
        case unresolvedNeighbours = "unresolved_neighbours"
    }
}

/// What the API does, apart from HTTP. Its writes (restore, health reconciles, PUT) run on
/// the data plane owner's thread: an apply and what surrounds it (staging, fsync and rename
/// of the services file) are one step no other write can come between, and none of it
/// blocks the cooperative pool. Its reads (status, the applied set, validate, /metrics) run
/// on the owner's reader thread and never wait for a write.
public actor AgentController {
    public nonisolated let config: AgentConfig
    /// The agent's one handle on the pinned data plane.
    public nonisolated let dataplane: DataplaneOwner
    /// The bearer token, re-read when its file changes (TokenStore).
    private nonisolated let tokens: TokenStore
    /// What the read paths need of this actor's state, kept where they read it without a hop.
    private struct Shared {
        /// When this agent last applied a change (seconds since the epoch; 0: never).
        var lastApply: Double = 0
        /// The health checks of the desired set, by service name.
        var checks: [String: HealthCheck?] = [:]
    }
    private nonisolated let shared = Mutex(Shared())
    /// The desired set this agent applies, health checks included (nil until one is restored or PUT).
    private var desired: ServiceFile?
    private nonisolated let logger: Logger
    /// Ticks the conntrack clock, ages out idle flows and counts the table; a service beside the server.
    public nonisolated let conntrack: ConntrackKeeper
    /// Keeps l2dsr backends' MACs current; a service beside the server.
    public nonisolated let neighbours: NeighbourKeeper
    /// Runs the services' health checks; run it as a service beside the server.
    public nonisolated let health: HealthMonitor
    /// Connection-state sync with peer balancers (nil: not configured); a service beside the server.
    public nonisolated let sync: SyncService?
    /// Announces the VIPs through BIRD (nil: no `bgp:`); a service beside the server.
    public nonisolated let fleet: FleetAnnouncer?
    /// Request bodies larger than this are refused (a 4096-service file is ~1 MB).
    public static let maxBody = 16 << 20

    public nonisolated var unownedExecutor: UnownedSerialExecutor { dataplane.unownedExecutor }

    /// Adopts what is pinned at the configured pin path (loading and pinning the balancer only
    /// when nothing is; it never attaches or reattaches anything). `restore()` then re-applies
    /// the persisted desired set if there is one.
    public init(config: AgentConfig, logger: Logger = Logger(label: "sluice.agent")) async throws(ControlError) {
        self.config = config
        self.logger = logger
        tokens = try TokenStore(config: config)
        let dataplane = try await DataplaneOwner.openOrLoad(pinPath: config.pinPath)
        self.dataplane = dataplane
        health = HealthMonitor(defaults: config.healthDefaults, logger: logger)
        neighbours = NeighbourKeeper(dataplane: dataplane, logger: logger)
        let sync: SyncService?
        if let syncConfig = config.sync {
            sync = try await SyncService(config: syncConfig, dataplane: dataplane, logger: logger)
        } else {
            sync = nil
            try await dataplane.stopSyncReporting()
        }
        self.sync = sync
        fleet = config.bgp.map { bgp in
            FleetAnnouncer(config: bgp, dataplane: dataplane, drainMarker: config.drainMarker, logger: logger,
                           isReady: { sync?.isReady ?? true })
        }
        var refresh: (@Sendable ([FlowRecord]) async -> Void)?
        if let sync { refresh = { records in await sync.refresh(records) } }
        conntrack = try await ConntrackKeeper(dataplane: dataplane, timeouts: config.idleTimeouts, logger: logger,
                                              refresh: refresh)
        if let attributes = try? FileManager.default.attributesOfItem(atPath: config.servicesFile),
           let modified = attributes[.modificationDate] as? Date {
            shared.withLock { $0.lastApply = modified.timeIntervalSince1970 }
        }
    }

    /// Runs `body` isolated to the data plane's owner without a suspension: this actor runs
    /// on the owner's thread, so nothing can come between what it does before, during and
    /// after a write.
    private func owned<T: Sendable>(_ body: @Sendable (isolated DataplaneOwner) throws(ControlError) -> T) throws(ControlError) -> T {
        try dataplane.assumeIsolated { owner in Result { () throws(ControlError) -> T in try body(owner) } }.get()
    }

    private func setDesired(_ file: ServiceFile) {
        desired = file
        shared.withLock { $0.checks = Dictionary(file.services.map { ($0.name, $0.healthCheck) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// Re-applies the persisted desired set, if any. Returns the diff (empty when the
    /// pinned maps already hold it, as after a restart of the agent alone).
    /// Health verdicts start from what the maps recorded, so a restart neither brings a down
    /// backend back early nor takes anything out.
    public func restore() async throws -> ConfigDiff? {
        health.setOnChange { [weak self] in await self?.reconcileHealth() }
        guard FileManager.default.fileExists(atPath: config.servicesFile) else { return nil }
        let desired = try ServiceFileParser.load(path: config.servicesFile)
        let state = try await dataplane.appliedState()
        let down = state.services.flatMap { applied in
            applied.backends.filter { $0.isChecked && $0.isDown }.map { HealthMonitor.Key(service: applied.service.name, backend: $0.address) }
        }
        health.update(desired, down: Set(down))
        let verdicts = HealthVerdicts(down: health.verdicts(for: desired))
        let result = try owned { owner throws(ControlError) in try owner.apply(desired, health: verdicts) }
        setDesired(desired)
        fleet?.poke()
        return result.diff
    }

    /// Re-applies the desired set with the current health verdicts (after a backend's flips).
    func reconcileHealth() {
        guard let desired else { return }
        do {
            let verdicts = health.verdicts(for: desired)
            let result = try owned { owner throws(ControlError) in try owner.apply(desired, health: HealthVerdicts(down: verdicts)) }
            if result.tablesWritten > 0 {
                logger.notice("health: \(result.tablesWritten) Maglev table(s) rebuilt")
            }
            // A VIP that lost (or regained) its last backend is withdrawn (or announced) at the
            // announcer's next look.
            fleet?.poke()
            for service in desired.services {
                let candidates = service.backends.filter { $0.weight > 0 }.map(\.address)
                if let down = verdicts[service.name], !candidates.isEmpty, candidates.allSatisfy(down.contains) {
                    logger.warning("health: every backend of service \(service.name) is down: its last Maglev table stays in place")
                }
            }
        } catch {
            logger.error("health: applying the verdicts failed: \(error.message)")
        }
    }

    /// What is applied, in the service-file schema, with the health checks this agent runs.
    private nonisolated func current() async throws(ControlError) -> ServiceFile {
        var file = try await dataplane.appliedState().serviceFile
        let checks = shared.withLock { $0.checks }
        for index in file.services.indices {
            file.services[index].healthCheck = checks[file.services[index].name] ?? nil
        }
        return file
    }

    /// Compares the bearer token in constant time (for a given token length); the token
    /// file is re-read when it changed (at most once a second).
    public nonisolated func isAuthorized(_ header: String?) -> Bool {
        tokens.isAuthorized(header)
    }

    public nonisolated func status() async throws -> StatusReport {
        do {
            var report = try await dataplane.status()
            report.bgp = fleet?.status
            return report
        } catch { throw APIError(error) }
    }

    /// This node's announcements (409 without `bgp:`).
    public nonisolated func fleetStatus() throws -> FleetStatus {
        try announcer().status
    }

    /// Withdraws every VIP and waits for new flows to stop (see FleetAnnouncer.drain).
    public nonisolated func drain(timeout: Duration?) async throws -> DrainReport {
        do { return try await announcer().drain(timeout: timeout) } catch let error as ControlError { throw APIError(error) }
    }

    public nonisolated func undrain() async throws -> FleetStatus {
        try await announcer().undrain()
    }

    private nonisolated func announcer() throws(APIError) -> FleetAnnouncer {
        guard let fleet else { throw APIError(status: 409, "this agent announces nothing: its configuration has no bgp: section") }
        return fleet
    }

    /// The applied set, read back from the maps, in the service-file schema.
    public nonisolated func services() async throws -> ServiceFile {
        do { return try await current() } catch { throw APIError(error) }
    }

    /// Parses `body` and diffs it against what is applied; writes nothing.
    public nonisolated func validate(_ body: String) async throws -> ApplyResponse {
        let desired = try Self.parse(body)
        let diff: ConfigDiff, disruption: [ServiceDisruption]
        do {
            disruption = try await dataplane.dryRun(desired).disruption
            diff = ConfigDiff.between(current: try await current(), desired: desired)
        } catch { throw APIError(error) }
        return ApplyResponse(applied: false, changed: !diff.isEmpty, changes: diff.lines, diff: diff,
                             tablesWritten: 0, bytesWritten: 0, disruption: disruption)
    }

    /// Replaces the whole desired set: all or nothing. The document is written beside the
    /// services file first, applied, then renamed over it, so a failure at any step leaves
    /// both the data plane and the persisted set as they were.
    public func replace(_ body: String) throws -> ApplyResponse {
        let desired = try Self.parse(body)
        let path = config.servicesFile
        let staged = path + ".new"
        let verdicts = HealthVerdicts(down: health.verdicts(for: desired))
        let before: AppliedState, result: ApplyResult
        do throws(ControlError) {
            (before, result) = try owned { owner throws(ControlError) -> (AppliedState, ApplyResult) in
            let before = try owner.appliedStateNow()
            do {
                try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                        withIntermediateDirectories: true)
                try Self.writeDurably(body, to: staged)
            } catch {
                throw .runtime("writing \(staged): \(error.localizedDescription)")
            }
            do throws(ControlError) {
                return (before, try owner.apply(desired, health: verdicts))
            } catch {
                unlink(staged)
                throw error
            }
            }
        } catch { throw APIError(error) }
        guard rename(staged, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(staged)
            throw APIError(status: 500, "applied, but persisting it to \(path) failed: \(reason)")
        }
        let checks = shared.withLock { $0.checks }
        var previous = before.serviceFile
        for index in previous.services.indices {
            previous.services[index].healthCheck = checks[previous.services[index].name] ?? nil
        }
        setDesired(desired)
        health.update(desired)
        fleet?.poke()
        let diff = ConfigDiff.between(current: previous, desired: desired)
        if !diff.isEmpty { shared.withLock { $0.lastApply = Date().timeIntervalSince1970 } }
        return ApplyResponse(applied: true, changed: !diff.isEmpty, changes: diff.lines, diff: diff,
                             tablesWritten: result.tablesWritten, bytesWritten: result.bytesWritten,
                             unresolvedNeighbours: result.unresolved)
    }

    public nonisolated func metrics() async throws -> [UInt8] {
        do {
            let input = try await dataplane.metrics(conntrackEntries: conntrack.entries, conntrackExpired: conntrack.expired,
                                                    lastApply: shared.withLock { $0.lastApply }, sync: sync?.stats.snapshot,
                                                    nat: conntrack.nat)
            var withFleet = input
            withFleet.fleet = fleet?.status
            return MetricsRenderer.render(withFleet)
        } catch { throw APIError(error) }
    }

    private static func parse(_ body: String) throws(APIError) -> ServiceFile {
        do { return try ServiceFileParser.parse(body, file: "request body") } catch { throw APIError(error) }
    }

    /// Writes `text` to `path` and fsyncs it, so a rename after it publishes whole contents.
    static func writeDurably(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, bytes.count - written) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            written += n
        }
        guard fsync(fd) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }
}
