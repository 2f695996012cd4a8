// The namespace lab (scripts/lab.sh) as a test fixture: a client, a router, the
// balancer and three backends with real servers, driven the way an operator
// drives it, through the script. Each Lab has a unique name, so labs run side
// by side (and beside the other suites), at most `LabSlots.shared.permits` at once.
// `Lab.withLab { }` brings one up and takes it down however the test ends; every
// command is awaited, never waited for on a thread.
import CLibbpf
import Foundation
import Glibc

public final class Lab: @unchecked Sendable {
    public static let script = Lbctl.packageRoot.appendingPathComponent("scripts/lab.sh").path
    /// Where labs put their directory (`$LAB_ROOT/sluice-lab-NAME`).
    public static let root = "/tmp"

    /// `sl` and 6 hex digits: short, because the namespaces are `NAME-client` etc.
    public static func uniqueName() -> String {
        "sl" + String(format: "%06x", UInt32.random(in: 0..<0x100_0000))
    }

    /// `lab.sh COMMAND NAME ARGS...` with the tests' lbctl and lab root as a command line;
    /// `environment` adds or overrides variables (PYTHON=/bin/false...). Through env(1):
    /// lab.sh closes inherited descriptors and its Python unblocks SIGTERM/SIGINT itself,
    /// so servers left running neither hold the socket through which Process learns of the
    /// script's exit nor ignore `down`.
    static func invocation(_ command: String, _ name: String, _ arguments: [String] = [],
                           environment: [String: String] = [:]) -> (String, [String]) {
        var env = ["LBCTL": Lbctl.path, "LAB_ROOT": root]
        env.merge(environment) { $1 }
        let assignments = env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        return ("/usr/bin/env", assignments + [script, command, name] + arguments)
    }

    /// Runs `lab.sh COMMAND NAME ARGS...` and awaits it.
    public static func run(_ command: String, _ name: String, _ arguments: [String] = [],
                           environment: [String: String] = [:]) async throws -> CommandResult {
        let (executable, full) = invocation(command, name, arguments, environment: environment)
        return try await Command.run(executable, full)
    }

    /// How the router learns the VIP routes (lab.sh's LAB_ROUTING).
    public enum Routing: String, Sendable {
        /// Routes written by lab.sh (`route NAME both|lb|lb2|lb3`).
        case `static`
        /// BIRD 2 on every node: eBGP from each balancer to the router, which installs ECMP
        /// routes; each balancer announces what its `<lb>_bird_include` file holds (needs
        /// 2 or 3 balancers; see LabECMP.swift).
        case bgp
    }

    /// How `lab.sh up` builds the lab: LAB_BALANCERS, LAB_SEGMENT, LAB_TUNNEL_MTU,
    /// LAB_ROUTING and LAB_BFD.
    public struct Variant: Sendable {
        /// 1, or 2 or 3 for NAME-lb2 (and NAME-lb3) behind an ECMP route (see LabECMP.swift).
        public var balancers = 1
        /// The balancer on the backends' segment (a port of their bridge), for l2dsr.
        public var sharedSegment = false
        /// The MTU of the balancer's and backends' links; nil = lab.sh's 1600 (room for tunnels;
        /// 1500 in a nat lab).
        public var tunnelMTU: Int?
        /// LAB_SEGMENT=nat: the balancer on two interfaces, plain backends behind it (nat) and
        /// behind the router (fullnat); see LabNAT.swift.
        public var nat = false
        /// LAB_ROUTING: static routes, or BGP (BIRD) between the balancers and the router.
        public var routing = Routing.static
        /// LAB_BFD=1: BFD on every BGP session from the start (`routing: .bgp` only).
        public var bfd = false
        /// LAB_CT_SIZE: the balancer's connection table (`lbctl attach --conntrack-size`); nil = lbctl's default.
        public var conntrackSize: Int?

        public init(balancers: Int = 1, sharedSegment: Bool = false, tunnelMTU: Int? = nil, nat: Bool = false,
                    routing: Routing = .static, bfd: Bool = false, conntrackSize: Int? = nil) {
            self.balancers = balancers
            self.sharedSegment = sharedSegment
            self.tunnelMTU = tunnelMTU
            self.nat = nat
            self.routing = routing
            self.bfd = bfd
            self.conntrackSize = conntrackSize
        }

        var environment: [String: String] {
            var env: [String: String] = [:]
            if balancers != 1 { env["LAB_BALANCERS"] = String(balancers) }
            if sharedSegment { env["LAB_SEGMENT"] = "shared" }
            if nat { env["LAB_SEGMENT"] = "nat" }
            if let tunnelMTU { env["LAB_TUNNEL_MTU"] = String(tunnelMTU) }
            if routing != .static { env["LAB_ROUTING"] = routing.rawValue }
            if bfd { env["LAB_BFD"] = "1" }
            if let conntrackSize { env["LAB_CT_SIZE"] = String(conntrackSize) }
            return env
        }
    }

    public let name: String
    /// `lab.sh info`: addresses, namespaces, interfaces and paths.
    public let info: [String: String]
    /// The `LabSlots.shared` permits this lab gives back when it comes down (0 for labs of
    /// `withLabs`, whose scope holds them).
    private let permits: Int

    private let lock = NSLock()
    private var isDown = false

    private init(name: String, info: [String: String], permits: Int) {
        self.name = name
        self.info = info
        self.permits = permits
    }

    /// Brings up a new lab (about a second) once one of `LabSlots.shared`'s permits is free,
    /// and holds it until `down()`. lab.sh cleans up after a failed bring-up itself; the
    /// thrown error carries its output. `balancers: 2` (or 3) adds NAME-lb2 (and NAME-lb3)
    /// behind an ECMP route (LAB_BALANCERS; see LabECMP.swift); `routing: .bgp` has BIRD
    /// announce the routes (LAB_ROUTING=bgp), `bfd: true` with BFD (LAB_BFD=1). Prefer
    /// `withLab { }`, which always takes it down.
    public static func up(name: String = Lab.uniqueName(), balancers: Int = 1, routing: Routing = .static,
                          bfd: Bool = false) async throws -> Lab {
        try await LabSlots.shared.acquire()
        do {
            return try await bringUp(name: name, variant: Variant(balancers: balancers, routing: routing, bfd: bfd), permits: 1)
        } catch {
            await LabSlots.shared.release()
            throw error
        }
    }

    private static func bringUp(name: String, variant: Variant, permits: Int) async throws -> Lab {
        try checked(await run("up", name, environment: variant.environment))
        do {
            let info = try parseInfo(checked(await run("info", name)).stdout)
            return Lab(name: name, info: info, permits: permits)
        } catch {
            _ = try? await run("down", name)
            throw error
        }
    }

    /// A fresh lab for `body`, taken down afterwards however `body` ends.
    public static func withLab<T>(balancers: Int = 1, routing: Routing = .static, bfd: Bool = false,
                                  _ body: (Lab) async throws -> T) async throws -> T {
        try await withLabs(1, variant: Variant(balancers: balancers, routing: routing, bfd: bfd)) { try await body($0[0]) }
    }

    /// The same for a lab of another `variant`.
    public static func withLab<T>(_ variant: Variant, _ body: (Lab) async throws -> T) async throws -> T {
        try await withLabs(1, variant: variant) { try await body($0[0]) }
    }

    /// `count` fresh labs at once for `body` (their permits taken together, so two tests
    /// that each need two cannot each hold one and wait for ever), all taken down
    /// afterwards however `body` ends. A lab that does not come down fails the test; when
    /// `body` failed already its error is the one thrown, the teardown's goes to stderr.
    public static func withLabs<T>(_ count: Int, balancers: Int = 1, routing: Routing = .static, bfd: Bool = false,
                                   _ body: ([Lab]) async throws -> T) async throws -> T {
        try await withLabs(count, variant: Variant(balancers: balancers, routing: routing, bfd: bfd), body)
    }

    private static func withLabs<T>(_ count: Int, variant: Variant, _ body: ([Lab]) async throws -> T) async throws -> T {
        try await LabSlots.shared.withPermits(count) {
            var labs: [Lab] = []
            let outcome: Result<T, any Error>
            do {
                for _ in 0..<count { labs.append(try await bringUp(name: uniqueName(), variant: variant, permits: 0)) }
                outcome = .success(try await body(labs))
            } catch {
                outcome = .failure(error)
            }
            var teardown: [String] = []
            for lab in labs {
                do { try await lab.down() } catch { teardown.append("lab \(lab.name) did not come down: \(error)") }
            }
            if !teardown.isEmpty {
                guard case .failure = outcome else { throw CommandError(teardown.joined(separator: "\n")) }
                FileHandle.standardError.write(Data((teardown.joined(separator: "\n") + "\n").utf8))
            }
            return try outcome.get()
        }
    }

    /// True for the first caller only.
    private func takeDown() -> Bool {
        lock.withLock {
            defer { isDown = true }
            return !isDown
        }
    }

    /// A lab nobody took down: `lab.sh down` is started, not awaited, and the permit goes
    /// back when it has finished.
    deinit {
        guard takeDown() else { return }
        let permits = self.permits
        let (executable, arguments) = Self.invocation("down", name)
        let null = FileHandle.nullDevice
        let child = try? ChildProcess(executable, arguments, stdout: null, stderr: null)
        guard permits > 0 || child != nil else { return }
        Task {
            await child?.exited()
            if permits > 0 { await LabSlots.shared.release(permits) }
        }
    }

    /// Removes the lab and gives back its permit; later calls do nothing.
    public func down() async throws {
        guard takeDown() else { return }
        let outcome: Result<CommandResult, any Error>
        do { outcome = .success(try await Self.run("down", name)) } catch { outcome = .failure(error) }
        if permits > 0 { await LabSlots.shared.release(permits) }
        try Self.checked(outcome.get())
    }

    public static func parseInfo(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            values[String(line[..<equals])] = String(line[line.index(after: equals)...])
                .trimmingCharacters(in: .whitespaces)
        }
        return values
    }

    /// An info value that must exist.
    public func info(_ key: String) throws -> String {
        guard let value = info[key] else { throw CommandError("lab \(name): no '\(key)' in lab.sh info: \(info)") }
        return value
    }

    public var directory: String { info["dir"] ?? "\(Self.root)/sluice-lab-\(name)" }
    /// `NAME-client`, `NAME-router`, `NAME-lb`, `NAME-be1`...
    public var namespaces: [String] { (info["namespaces"] ?? "").split(separator: " ").map(String.init) }
    public var backends: [String] { (info["backends"] ?? "be1,be2,be3").split(separator: ",").map(String.init) }

    // MARK: Traffic

    /// `udp2`: flows of two datagrams each, which the balancer records (one datagram is only held).
    public enum ClientKind: String, Sendable { case http, udp, udp2, echo, upload }

    /// What `lab-client.py http|udp|echo` prints.
    public struct ClientResult: Decodable, Sendable {
        public var sent: Int
        public var ok: Int
        public var failed: Int
        /// Answers per backend name (be1...).
        public var backends: [String: Int]
        public var errors: [String]
        /// The command's whole exchange, for failure messages.
        public var output: String = ""
        /// When the client started and exited, as the reaper saw it.
        public var started: ContinuousClock.Instant = .now
        public var exited: ContinuousClock.Instant = .now

        enum CodingKeys: String, CodingKey { case sent, ok, failed, backends, errors }
    }

    /// COUNT new connections (datagrams for udp) from the client to HOST:PORT.
    /// The client exits 1 when some failed; that is in the result, not an error.
    /// `upload` takes `megabytes` (MiB sent per connection).
    public func client(_ kind: ClientKind, _ host: String, _ port: Int, count: Int, megabytes: Int = 1) async throws -> ClientResult {
        let extra = kind == .upload ? [String(megabytes)] : []
        let result = try await Self.run("client", name, [kind.rawValue, host, String(port), String(count)] + extra)
        guard var decoded = try? JSONDecoder().decode(ClientResult.self, from: result.stdoutData) else {
            throw CommandError("lab client printed no result:\n\(result)")
        }
        decoded.output = result.description
        decoded.started = result.started
        decoded.exited = result.exited
        return decoded
    }

    /// Rewrites the echo service's backends (`be1:1,be2:0`) and applies them.
    @discardableResult
    public func applyEcho(_ spec: String) async throws -> CommandResult {
        try Self.checked(await Self.run("apply", name, [spec]))
    }

    /// `lab.sh server-stop|server-start NAME BACKEND`: takes a backend's servers away (as a
    /// crash would) or starts them again and waits until they listen.
    @discardableResult
    public func setServer(_ backend: String, running: Bool) async throws -> CommandResult {
        try Self.checked(await Self.run(running ? "server-start" : "server-stop", name, [backend]))
    }

    /// `lbctl ARGS... --pin-path <the lab's>` in the balancer's namespace.
    public func lbctl(_ arguments: String...) async throws -> CommandResult {
        try await lbctl(on: .lb, arguments)
    }

    /// `lbctl stats --json`, decoded.
    public func stats() async throws -> Stats {
        try await stats(of: .lb)
    }

    /// `lbctl status --json`, decoded.
    public func status() async throws -> Status {
        try await status(of: .lb)
    }

    /// The subset of `lbctl stats --json` the tests read.
    public struct Stats: Decodable, Sendable {
        public struct Verdicts: Decodable, Sendable { public var aborted, drop, pass, tx, redirect: Int }
        public struct BackendCounters: Decodable, Sendable { public var address: String, packets: Int, bytes: Int }
        public struct ServiceCounters: Decodable, Sendable {
            public var name, vip: String
            public var packets, bytes: Int
            public var backends: [BackendCounters]
        }
        public var verdicts: Verdicts
        public var newFlows: Int
        public var conntrackHits: Int
        public var conntrackMisses: Int
        /// Per service and backend: packets and bytes forwarded.
        public var services: [ServiceCounters]
        enum CodingKeys: String, CodingKey {
            case verdicts, services, newFlows = "new_flows", conntrackHits = "conntrack_hits", conntrackMisses = "conntrack_misses"
        }
    }

    /// The subset of `lbctl status --json` the tests read.
    public struct Status: Decodable, Sendable {
        public struct Backend: Decodable, Sendable { public var address: String, weight: Int, state: String, health: String }
        public struct Service: Decodable, Sendable {
            public var name, vip, `protocol`: String
            public var port: Int
            public var backends: [Backend]
        }
        public var services: [Service]
        public func service(_ name: String) -> Service? { services.first { $0.name == name } }
    }

    // MARK: Observation

    /// Packet and byte counters of one interface.
    public struct LinkCounters: Decodable, Sendable {
        public struct Direction: Decodable, Sendable { public var packets: Int, bytes: Int }
        public var rx: Direction
        public var tx: Direction
    }

    /// `ip -n NS -j -s link show dev IF` → stats64.
    public func linkCounters(namespace: String, interface: String) async throws -> LinkCounters {
        struct Link: Decodable { var stats64: LinkCounters }
        let result = try await Command.check("/usr/sbin/ip", ["-n", namespace, "-j", "-s", "link", "show", "dev", interface])
        guard let link = try decode([Link].self, result).first else { throw CommandError("no link in:\n\(result)") }
        return link.stats64
    }

    /// One request a backend's server logged: `PROTO VIP:PORT CLIENT_ADDRESS`.
    public struct LogLine: Sendable, Equatable {
        public var proto: String
        /// The local address and port (`198.51.100.10:80`, `2001:db8:100::10:80`).
        public var local: String
        public var client: String
    }

    /// Everything backend `backend` (be1...) has logged so far.
    public func log(of backend: String) throws -> [LogLine] {
        let text = try String(contentsOfFile: info("\(backend)_log"), encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            return fields.count == 3 ? LogLine(proto: fields[0], local: fields[1], client: fields[2]) : nil
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ result: CommandResult) throws -> T {
        do { return try JSONDecoder().decode(type, from: result.stdoutData) } catch {
            throw CommandError("cannot decode \(type): \(error)\n\(result)")
        }
    }

    /// `result` when it exited 0, else an error carrying its output.
    @discardableResult
    public static func checked(_ result: CommandResult) throws -> CommandResult {
        guard result.status == 0 else { throw CommandError("command failed:\n\(result)") }
        return result
    }

    /// True when a bpffs is mounted at `path`: statfs(2) of the path itself, which is
    /// atomic. (Scanning /proc/self/mounts is not: while other tests mount and unmount
    /// in parallel, a read of it can miss a line or show one already gone.)
    public static func isMounted(_ path: String) -> Bool {
        var fs = statfs()
        return statfs(path, &fs) == 0 && Int(fs.f_type) == 0xcafe_4a11  // BPF_FS_MAGIC
    }

    // MARK: Long-lived sessions

    /// A running `lab.sh client NAME session HOST PORT STATEFILE INTERVAL`.
    public func startSession(_ host: String, _ port: Int, interval: Double = 0.1) throws -> Session {
        try Session(lab: self, host: host, port: port, interval: interval)
    }

    /// A session for `body`, stopped (awaited) however `body` ends.
    public func withSession<T>(_ host: String, _ port: Int, interval: Double = 0.1,
                               _ body: (Session) async throws -> T) async throws -> T {
        let session = try startSession(host, port, interval: interval)
        return try await withCleanup { try await body(session) } cleanup: { await session.stop() }
    }

    public final class Session: @unchecked Sendable {
        /// What the session client writes after every exchange.
        public struct State: Decodable, Sendable {
            public var backend: String?
            public var ok: Int
            public var failed: Int
            public var lastError: String?
            public var closed: Bool
            enum CodingKeys: String, CodingKey { case backend, ok, failed, lastError = "last_error", closed }
        }

        public let stateFile: String
        public let outputFile: String
        private let child: ChildProcess

        convenience init(lab: Lab, host: String, port: Int, interval: Double) throws {
            try self.init(lab: lab, prefix: "session") { ["session", host, String(port), $0, String(interval)] }
        }

        /// Runs `lab.sh client NAME ARGUMENTS...` in the background, where `arguments`
        /// gets the state file's path (also used by `Lab.Sessions`).
        init(lab: Lab, prefix: String, arguments: (_ stateFile: String) -> [String]) throws {
            let base = "\(lab.directory)/\(prefix)-\(UUID().uuidString.prefix(8))"
            stateFile = base + ".json"
            outputFile = base + ".out"
            let (executable, full) = Lab.invocation("client", lab.name, arguments(stateFile))
            let output = URL(fileURLWithPath: outputFile)
            child = try Command.withOutputFiles(stdout: output, stderr: output) { out, err in
                try ChildProcess(executable, full, stdout: out, stderr: err)
            }
        }

        /// A session nobody stopped: SIGKILL, not awaited (lab.sh down ends it too).
        deinit { child.killInBackground() }

        /// The latest state, nil until the first exchange is done.
        public func state() -> State? { decodeState(State.self) }

        /// Polls until `condition` holds for the state (or the client exits, or
        /// `timeout` passes) and returns the last state seen.
        public func wait(timeout: Duration = .seconds(10), until condition: (State) -> Bool) async throws -> State? {
            try await poll(State.self, timeout: timeout) { condition($0) || $0.closed }
        }

        /// The state file as `T` (the client's modes write different states).
        func decodeState<T: Decodable>(_: T.Type) -> T? {
            guard let data = FileManager.default.contents(atPath: stateFile) else { return nil }
            return try? JSONDecoder().decode(T.self, from: data)
        }

        /// Polls the state file until `condition` holds, the client exits or `timeout` passes;
        /// it reads once more after every sleep before it looks at the clock.
        func poll<T: Decodable>(_: T.Type, timeout: Duration, until condition: (T) -> Bool) async throws -> T? {
            let deadline = ContinuousClock.now + timeout
            while true {
                if let current = decodeState(T.self), condition(current) { return current }
                if ContinuousClock.now >= deadline || !child.isRunning { return decodeState(T.self) }
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        /// Ends the client with SIGTERM (it then writes `closed`) and awaits its exit (SIGKILL
        /// after `timeout`); returns its exit status. Safe to call twice.
        @discardableResult
        public func stop(timeout: Duration = .seconds(5)) async -> Int32 {
            // lab.sh execs the client (through ip netns exec): the process is the client.
            if let status = await child.stop(signal: SIGTERM, timeout: timeout).status { return status }
            return await child.exited()
        }

        /// Whether the client is still running.
        public var isRunning: Bool { child.isRunning }

        /// The output the client printed (errors, usually nothing).
        public var output: String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }
    }
}
