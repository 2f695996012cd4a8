// The two- and three-balancer labs (`Lab.withLab(balancers: 2)`, lab.sh's LAB_BALANCERS=2
// or 3): NAME-lb, NAME-lb2 (and NAME-lb3) behind an ECMP multipath route on the router,
// hashed on layer 4, so the connections of one client spread over them. `route(.lb2)`
// withdraws the others from the router as failed nodes would be; `route(.both)` restores
// ECMP. With `routing: .bgp` (LAB_ROUTING=bgp) BIRD announces the routes instead: `bird`,
// `stopBird`/`startBird`, `setBFD` and `cut` (a silent link failure) drive it. Plus
// `Sessions`, many long-lived echo connections in one background client (`lab-client.py
// sessions`), for what happens to established flows when a balancer goes away.
import Foundation
import Glibc

extension Lab {
    /// A balancer of the lab: `lb` (always there), `lb2` (two- and three-balancer labs) or
    /// `lb3` (three-balancer labs). The raw value is its node name in lab.sh (`bird NAME lb2`).
    public enum Balancer: String, Sendable, CaseIterable {
        case lb, lb2, lb3

        /// This balancer's name for lb's info key `key`: lb's keys as they are, the others'
        /// with their own name (`lb_ns` -> `lb3_ns`, `router_lb_if` -> `router_lb3_if`,
        /// `lb_v4` -> `lb3_v4`), and lb's plain `pin_path` -> `lb3_pin_path`.
        public func infoKey(_ key: String) -> String {
            guard self != .lb else { return key }
            if key == "pin_path" { return "\(rawValue)_pin_path" }
            if key.hasPrefix("router_lb_") { return "router_\(rawValue)_" + String(key.dropFirst("router_lb_".count)) }
            if key.hasPrefix("lb_") { return "\(rawValue)_" + String(key.dropFirst("lb_".count)) }
            return key
        }

        /// The lab.sh command that runs lbctl on this balancer: `lbctl`, `lbctl2`, `lbctl3`.
        public var lbctlCommand: String {
            switch self {
            case .lb: return "lbctl"
            case .lb2: return "lbctl2"
            case .lb3: return "lbctl3"
            }
        }
    }

    /// Where the router sends the VIPs: over every balancer (ECMP; `both` in a
    /// three-balancer lab too) or only one.
    public enum Route: String, Sendable { case both, lb, lb2, lb3 }

    /// 1, 2 or 3 (info's `balancers`, absent in a one-balancer lab).
    public var balancerCount: Int { Int(info["balancers"] ?? "1") ?? 1 }

    /// The balancers this lab has, lb first.
    public var balancers: [Balancer] { Array(Balancer.allCases.prefix(max(1, min(balancerCount, Balancer.allCases.count)))) }

    /// `info(key)` of `balancer` (see `Balancer.infoKey`): `info("lb_ns", of: .lb3)` is lb3_ns.
    public func info(_ key: String, of balancer: Balancer) throws -> String {
        try info(balancer.infoKey(key))
    }

    /// `lab.sh route NAME both|lb|lb2|lb3`: replaces the router's VIP routes (not in a
    /// `routing: .bgp` lab, where lab.sh refuses: BGP brings the routes).
    public func route(_ route: Route) async throws {
        try Self.checked(await Self.run("route", name, [route.rawValue]))
    }

    // MARK: BGP (routing: .bgp)

    /// How the lab routes the VIPs (info's `routing`).
    public var routing: Routing { Routing(rawValue: info["routing"] ?? "static") ?? .static }

    /// A node that runs BIRD in a `routing: .bgp` lab: the router or a balancer.
    public enum BirdNode: Sendable, Hashable {
        case router
        case balancer(Balancer)
        /// The node's name in lab.sh and in info's `<node>_bird_*` keys.
        public var name: String {
            switch self {
            case .router: return "router"
            case .balancer(let balancer): return balancer.rawValue
            }
        }
    }

    /// `info("<node>_bird_socket")`, `_bird_conf`, `_bird_log` (what = socket, conf, log).
    public func birdPath(_ what: String, of node: BirdNode) throws -> String {
        try info("\(node.name)_bird_\(what)")
    }

    /// The BIRD include file of `balancer` (info's `<lb>_bird_include`): its VIP routes,
    /// which the Sluice agent owns.
    public func birdInclude(of balancer: Balancer) throws -> String {
        try info("\(balancer.rawValue)_bird_include")
    }

    /// `lab.sh bird NAME NODE ARGS...`: birdc on that node's control socket (not checked:
    /// birdc's exit status says little; read its output).
    public func bird(_ node: BirdNode, _ arguments: [String]) async throws -> CommandResult {
        try await Self.run("bird", name, [node.name] + arguments)
    }

    /// `lab.sh bird-stop NAME NODE`: SIGKILLs that BIRD (a crash) and waits until it is gone.
    public func stopBird(_ node: BirdNode) async throws {
        try Self.checked(await Self.run("bird-stop", name, [node.name]))
    }

    /// `lab.sh bird-start NAME NODE`: starts it again, same config; waits until it answers.
    public func startBird(_ node: BirdNode) async throws {
        try Self.checked(await Self.run("bird-start", name, [node.name]))
    }

    /// `lab.sh bfd NAME on|off`: every node's BIRD with or without BFD; returns when the
    /// router's sessions are Established again (and, with BFD, its BFD sessions Up).
    public func setBFD(_ on: Bool) async throws {
        try Self.checked(await Self.run("bfd", name, [on ? "on" : "off"]))
    }

    /// `lab.sh cut NAME LB on|off`: the router drops everything on its link to `balancer`
    /// (nftables; the carrier stays up, so only the hold timer or BFD notices), or no more.
    /// Returns lab.sh's result: its `started` and `exited` bracket when the cut took effect.
    @discardableResult
    public func cut(_ balancer: Balancer, _ on: Bool) async throws -> CommandResult {
        try Self.checked(await Self.run("cut", name, [balancer.rawValue, on ? "on" : "off"]))
    }

    /// `lbctl ARGS... --pin-path <lb2's>` in lb2's namespace.
    public func lbctl2(_ arguments: String...) async throws -> CommandResult {
        try await lbctl(on: .lb2, arguments)
    }

    /// `lbctl ARGS...` on `balancer`, with its pin path, in its namespace.
    public func lbctl(on balancer: Balancer, _ arguments: [String]) async throws -> CommandResult {
        try await Self.run(balancer.lbctlCommand, name, arguments)
    }

    /// `lbctl ARGS...` on each of `balancers`, run side by side again and again off the
    /// concurrency pool (CommandWatch, which starts at once) until `condition` holds for
    /// their results, in the order of `balancers`. Each look runs lbctl as `lab.sh lbctl`
    /// does (nsenter into the balancer's namespace, its pin path) but without the script,
    /// a third less per look: the looks are what a timed change is seen through.
    public func watchLbctl(_ arguments: [String], on balancers: [Balancer] = [.lb], every interval: Duration = .milliseconds(50),
                           timeout: Duration, until condition: @escaping @Sendable ([CommandResult]) -> Bool) throws -> CommandWatch {
        let commands = try balancers.map { balancer in
            let namespace = try info("lb_ns", of: balancer), pin = try info("pin_path", of: balancer)
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
    /// `timeout`: how long a round waits for each echo before that session is broken (2 s).
    public func startSessions(_ host: String, _ port: Int, count: Int, interval: Double = 0.3, timeout: Double = 2) throws -> Sessions {
        try Sessions(lab: self, host: host, port: port, count: count, interval: interval, timeout: timeout)
    }

    /// Sessions for `body`, stopped (awaited) however `body` ends.
    public func withSessions<T>(_ host: String, _ port: Int, count: Int, interval: Double = 0.3, timeout: Double = 2,
                                _ body: (Sessions) async throws -> T) async throws -> T {
        let sessions = try startSessions(host, port, count: count, interval: interval, timeout: timeout)
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

        init(lab: Lab, host: String, port: Int, count: Int, interval: Double, timeout: Double) throws {
            self.count = count
            client = try Session(lab: lab, prefix: "sessions") {
                ["sessions", host, String(port), String(count), $0, String(interval), String(timeout)]
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
