// The two-balancer lab (`Lab.withLab(balancers: 2)`, lab.sh's LAB_BALANCERS=2): NAME-lb and
// NAME-lb2 behind an ECMP multipath route on the router, hashed on layer 4, so the
// connections of one client spread over both. `route(.lb2)` withdraws lb from the
// router as a failed node would be; `route(.both)` restores ECMP. Plus `Sessions`, many
// long-lived echo connections in one background client (`lab-client.py sessions`),
// for what happens to established flows when a balancer goes away.
import Foundation
import Glibc

extension Lab {
    /// A balancer of the lab: `lb` (always there) or `lb2` (two-balancer labs).
    public enum Balancer: String, Sendable, CaseIterable { case lb, lb2 }

    /// Where the router sends the VIPs: over both balancers (ECMP) or only one.
    public enum Route: String, Sendable { case both, lb, lb2 }

    /// 1, or 2 for a lab brought up with `balancers: 2` (info's `balancers`).
    public var balancerCount: Int { Int(info["balancers"] ?? "1") ?? 1 }

    /// The balancers this lab has.
    public var balancers: [Balancer] { balancerCount == 2 ? [.lb, .lb2] : [.lb] }

    /// `lab.sh route NAME both|lb|lb2`: replaces the router's VIP routes.
    public func route(_ route: Route) async throws {
        try Self.checked(await Self.run("route", name, [route.rawValue]))
    }

    /// `lbctl ARGS... --pin-path <lb2's>` in lb2's namespace.
    public func lbctl2(_ arguments: String...) async throws -> CommandResult {
        try await lbctl(on: .lb2, arguments)
    }

    /// `lbctl ARGS...` on `balancer`, with its pin path, in its namespace.
    public func lbctl(on balancer: Balancer, _ arguments: [String]) async throws -> CommandResult {
        try await Self.run(balancer == .lb ? "lbctl" : "lbctl2", name, arguments)
    }

    /// `lbctl ARGS...` on each of `balancers`, run side by side again and again off the
    /// concurrency pool (CommandWatch, which starts at once) until `condition` holds for
    /// their results, in the order of `balancers`. Each look runs lbctl as `lab.sh lbctl`
    /// does (nsenter into the balancer's namespace, its pin path) but without the script,
    /// a third less per look: the looks are what a timed change is seen through.
    public func watchLbctl(_ arguments: [String], on balancers: [Balancer] = [.lb], every interval: Duration = .milliseconds(50),
                           timeout: Duration, until condition: @escaping @Sendable ([CommandResult]) -> Bool) throws -> CommandWatch {
        let commands = try balancers.map { balancer in
            let namespace = try info(balancer == .lb ? "lb_ns" : "lb2_ns"), pin = try info(balancer == .lb ? "pin_path" : "lb2_pin_path")
            return (TestNamespace.nsenter, ["--net=/run/netns/\(namespace)", Lbctl.path] + arguments + ["--pin-path", pin])
        }
        return CommandWatch(commands, every: interval, timeout: timeout, until: condition)
    }

    /// `lbctl stats --json` of `balancer`, decoded.
    public func stats(of balancer: Balancer) async throws -> Stats {
        try decode(Stats.self, Self.checked(await lbctl(on: balancer, ["stats", "--json"])))
    }

    /// `lbctl status --json` of `balancer`, decoded.
    public func status(of balancer: Balancer) async throws -> Status {
        try decode(Status.self, Self.checked(await lbctl(on: balancer, ["status", "--json"])))
    }

    /// Per-service packet counters of `lbctl stats --json` (what a balancer tunnelled).
    public struct ServiceCounters: Decodable, Sendable {
        public struct Backend: Decodable, Sendable { public var address: String, packets: Int }
        public struct Service: Decodable, Sendable {
            public var name: String
            public var packets: Int
            public var backends: [Backend]
        }
        public var services: [Service]
        /// Packets of service `name` (0 when there is no such service).
        public func packets(_ name: String) -> Int { services.first { $0.name == name }?.packets ?? 0 }
    }

    /// The per-service counters of `balancer`.
    public func serviceCounters(of balancer: Balancer) async throws -> ServiceCounters {
        try decode(ServiceCounters.self, Self.checked(await lbctl(on: balancer, ["stats", "--json"])))
    }

    // MARK: Many long-lived sessions

    /// A running `lab.sh client NAME sessions HOST PORT COUNT STATEFILE INTERVAL`:
    /// COUNT echo connections, each checked every `interval` seconds.
    public func startSessions(_ host: String, _ port: Int, count: Int, interval: Double = 0.3) throws -> Sessions {
        try Sessions(lab: self, host: host, port: port, count: count, interval: interval)
    }

    /// Sessions for `body`, stopped (awaited) however `body` ends.
    public func withSessions<T>(_ host: String, _ port: Int, count: Int, interval: Double = 0.3,
                                _ body: (Sessions) async throws -> T) async throws -> T {
        let sessions = try startSessions(host, port, count: count, interval: interval)
        return try await withCleanup { try await body(sessions) } cleanup: { await sessions.stop() }
    }

    /// Many long-lived connections in one client process; the client is ended
    /// (SIGTERM, then SIGKILL) by `stop()`, or killed on deinit.
    public final class Sessions: @unchecked Sendable {
        /// One connection's record: what the one-connection session client writes.
        public typealias Connection = Session.State

        /// What the client writes after every round.
        public struct State: Decodable, Sendable {
            public var connections: Int
            public var opened: Int
            public var rounds: Int
            public var alive: Int
            public var broken: Int
            public var perConnection: [Connection]
            enum CodingKeys: String, CodingKey {
                case connections, opened, rounds, alive, broken, perConnection = "per_connection"
            }

            /// Connections per backend that answered them (be1...).
            public var backends: [String: Int] {
                perConnection.reduce(into: [:]) { counts, connection in
                    if let backend = connection.backend { counts[backend, default: 0] += 1 }
                }
            }

            /// Broken connections per error text.
            public var errors: [String: Int] {
                perConnection.reduce(into: [:]) { counts, connection in
                    if connection.failed > 0 { counts[connection.lastError ?? "?", default: 0] += 1 }
                }
            }

            public var summary: String {
                "\(opened)/\(connections) opened, \(rounds) rounds, \(alive) alive, \(broken) broken; "
                    + "backends \(backends.sorted { $0.key < $1.key }); errors \(errors)"
            }
        }

        /// The background process (the same mechanism as `Lab.Session`).
        private let client: Session
        public let count: Int

        init(lab: Lab, host: String, port: Int, count: Int, interval: Double) throws {
            self.count = count
            client = try Session(lab: lab, prefix: "sessions") {
                ["sessions", host, String(port), String(count), $0, String(interval)]
            }
        }

        public var stateFile: String { client.stateFile }
        /// The output the client printed (errors, usually nothing).
        public var output: String { client.output }
        public var isRunning: Bool { client.isRunning }

        /// The latest state, nil until the connections are opened.
        public func state() -> State? { client.decodeState(State.self) }

        /// Polls until `condition` holds for the state (or the client exits, or
        /// `timeout` passes) and returns the last state seen.
        public func wait(timeout: Duration = .seconds(20), until condition: (State) -> Bool) async throws -> State? {
            try await client.poll(State.self, timeout: timeout, until: condition)
        }

        /// Waits for `rounds` more rounds than the state shows now.
        public func waitRounds(_ rounds: Int, timeout: Duration = .seconds(20)) async throws -> State? {
            let start = state()?.rounds ?? 0
            return try await wait(timeout: timeout) { $0.rounds >= start + rounds }
        }

        /// Ends the client with SIGTERM (it then writes every connection `closed`) and
        /// awaits its exit; returns its exit status. Safe to call twice.
        @discardableResult
        public func stop(timeout: Duration = .seconds(5)) async -> Int32 { await client.stop(timeout: timeout) }
    }
}
