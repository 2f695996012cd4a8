// Runs every service's health check against each of its backends and keeps each backend's
// verdict: `fall` failures in a row take an up backend down, `rise` successes in a row bring
// a down one back. On a flip it calls `onChange`, and the agent re-applies with the verdicts.
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SluiceCore
import Synchronization

/// Its state sits behind a lock rather than in an actor, so the controller reads the
/// verdicts and swaps the checked set in the same synchronous step as an apply.
public final class HealthMonitor: ServiceLifecycle.Service, Sendable {
    public struct Key: Hashable, Sendable {
        public var service: String
        public var backend: IPAddress

        public init(service: String, backend: IPAddress) {
            self.service = service
            self.backend = backend
        }
    }

    private struct Target {
        var probe: HealthProbe
        var timing: HealthCheckDefaults
        var up: Bool
        /// Results in a row that disagree with `up`.
        var streak = 0
        var lastFailure: String?
        /// Tells a late result of a replaced probe from the current one.
        var generation: Int
        var task: Task<Void, Never>?
    }

    private struct State {
        var targets: [Key: Target] = [:]
        var generation = 0
        var onChange: (@Sendable () async -> Void)?
    }

    private let defaults: HealthCheckDefaults
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())

    public init(defaults: HealthCheckDefaults, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.defaults = defaults
        self.logger = logger
        self.group = group
    }

    /// Called (in a task of its own) after any backend's verdict flips.
    public func setOnChange(_ action: @escaping @Sendable () async -> Void) {
        state.withLock { $0.onChange = action }
    }

    /// Checks what `file` asks for from now on. A backend keeps its verdict while its probe
    /// stays the same; a new one starts up, or down when `down` lists it (what the maps
    /// recorded before this agent started), and then needs `rise` successes.
    public func update(_ file: ServiceFile, down: Set<Key> = []) {
        var wanted: [Key: (HealthProbe, HealthCheckDefaults)] = [:]
        for service in file.services {
            guard let check = service.healthCheck else { continue }
            let timing = check.resolved(with: defaults)
            for backend in service.backends {
                wanted[Key(service: service.name, backend: backend.address)] = (
                    HealthProbe(check, backend: backend.address, servicePort: service.port,
                                timeoutMilliseconds: timing.timeoutMilliseconds), timing)
            }
        }
        state.withLock { state in
            for (key, target) in state.targets where wanted[key] == nil {
                target.task?.cancel()
                state.targets[key] = nil
            }
            for (key, (probe, timing)) in wanted {
                if let current = state.targets[key], current.probe == probe, current.timing == timing { continue }
                state.targets[key]?.task?.cancel()
                state.generation += 1
                let up = state.targets[key]?.up ?? !down.contains(key)
                var target = Target(probe: probe, timing: timing, up: up, generation: state.generation)
                target.task = start(key, probe: probe, intervalMilliseconds: timing.intervalMilliseconds,
                                    generation: state.generation)
                state.targets[key] = target
            }
        }
    }

    /// For every checked service of `file`: the addresses of its backends that are down.
    public func verdicts(for file: ServiceFile) -> [String: Set<IPAddress>] {
        state.withLock { state in
            var verdicts: [String: Set<IPAddress>] = [:]
            for service in file.services where service.healthCheck != nil {
                verdicts[service.name] = Set(service.backends.map(\.address).filter {
                    state.targets[Key(service: service.name, backend: $0)]?.up == false
                })
            }
            return verdicts
        }
    }

    /// Why a backend last failed its check, while it is down.
    public func lastFailure(_ key: Key) -> String? {
        state.withLock { $0.targets[key].flatMap { $0.up ? nil : $0.lastFailure } }
    }

    /// Stops every probe.
    public func stopAll() {
        state.withLock { state in
            for target in state.targets.values { target.task?.cancel() }
            state.targets = [:]
        }
    }

    /// Runs until graceful shutdown, then stops the probes.
    public func run() async throws {
        try? await gracefulShutdown()
        stopAll()
    }

    private func start(_ key: Key, probe: HealthProbe, intervalMilliseconds: Int, generation: Int) -> Task<Void, Never> {
        let group = self.group
        return Task { [weak self] in
            // A random first delay spreads the probes of many backends over the interval.
            try? await Task.sleep(for: .milliseconds(Int.random(in: 0..<intervalMilliseconds)))
            let clock = ContinuousClock()
            while !Task.isCancelled {
                let started = clock.now
                let failure = await probe.run(on: group)
                guard !Task.isCancelled, let self else { return }
                self.record(key, generation: generation, failure: failure)
                try? await Task.sleep(until: started + .milliseconds(intervalMilliseconds), clock: clock)
            }
        }
    }

    private func record(_ key: Key, generation: Int, failure: String?) {
        let flipped: (@Sendable () async -> Void)?? = state.withLock { state in
            guard var target = state.targets[key], target.generation == generation else { return nil }
            defer { state.targets[key] = target }
            let passed = failure == nil
            if let failure { target.lastFailure = failure }
            guard passed != target.up else {
                target.streak = 0
                return nil
            }
            target.streak += 1
            guard target.streak >= (target.up ? target.timing.fall : target.timing.rise) else { return nil }
            target.up = passed
            target.streak = 0
            return .some(state.onChange)
        }
        guard let flipped else { return }
        logger.notice("health: backend \(key.backend) of service \(key.service) is \(failure == nil ? "up" : "down")",
                      metadata: failure.map { ["reason": .string($0)] } ?? [:])
        if let onChange = flipped { Task { await onChange() } }
    }
}
