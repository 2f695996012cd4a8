// The NAT lab (lab.sh with LAB_SEGMENT=nat, issue #12): the balancer on two interfaces,
// plain backends (nginx and lab-server.py's echoes on their own addresses: no VIP, no
// decapsulator) behind it for nat and behind the router for fullnat. What its tests
// drive: service files with SNAT pools and backend ports, the counters of translation,
// what each backend logged since a mark, and where every captured frame went.
import Foundation
import SluiceCore

extension Lab {
    /// be1-be3: behind the lb's backend-side link, default route via the lb (nat's).
    public var natBackends: [String] { (info["nat_backends"] ?? "").split(separator: ",").map(String.init) }
    /// be4-be6: on the router's subnet, default route via the router (fullnat's).
    public var fullnatBackends: [String] { (info["fullnat_backends"] ?? "").split(separator: ",").map(String.init) }
    /// The lab's SNAT addresses (node.snat_v4, node.snat_v6 of `services NAME`).
    public var snatV4: [String] { (info["snat_v4"] ?? "").split(separator: ",").map(String.init) }
    public var snatV6: [String] { (info["snat_v6"] ?? "").split(separator: ",").map(String.init) }

    /// One backend of a NAT service: a lab backend (be1...), its weight, its port if it is
    /// not the service's.
    public struct NATBackend: Sendable {
        public var backend: String
        public var weight: Int
        public var port: Int?
        public init(_ backend: String, weight: Int = 1, port: Int? = nil) {
            self.backend = backend
            self.weight = weight
            self.port = port
        }
    }

    /// One nat or fullnat service of a generated file.
    public struct NATService: Sendable {
        public var name: String
        public var vip: String
        public var port: Int
        public var `protocol`: String
        public var forwarding: String
        public var backends: [NATBackend]

        public init(_ name: String, vip: String, port: Int, protocol: String = "tcp", forwarding: String,
                    backends: [NATBackend]) {
            self.name = name
            self.vip = vip
            self.port = port
            self.protocol = `protocol`
            self.forwarding = forwarding
            self.backends = backends
        }

        /// The backends' family follows the VIP's.
        var ipv6: Bool { vip.contains(":") }
    }

    /// A service file of `services` with the lab's node addresses and SNAT pool (or the
    /// given addresses and port range).
    public func natServiceFile(_ services: [NATService], snatV4: [String]? = nil, snatV6: [String]? = nil,
                               snatPorts: String? = nil) throws -> String {
        func list(_ items: [String]) -> String { "[" + items.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        let ports = try snatPorts ?? info("snat_ports")
        var text = """
            node:
              source_v4: \(try info("lb_v4"))
              source_v6: "\(try info("lb_v6"))"
              snat_v4: \(list(snatV4 ?? self.snatV4))
              snat_v6: \(list(snatV6 ?? self.snatV6))
              snat_ports: \(ports)
            services:

            """
        for service in services {
            text += """
                  - name: \(service.name)
                    vip: "\(service.vip)"
                    port: \(service.port)
                    protocol: \(service.protocol)
                    forwarding: \(service.forwarding)
                    backends:

                """
            for backend in service.backends {
                let address = try info("\(backend.backend)_\(service.ipv6 ? "v6" : "v4")")
                let port = backend.port.map { ", port: \($0)" } ?? ""
                text += "      - { address: \"\(address)\"\(port), weight: \(backend.weight) }\n"
            }
        }
        return text
    }

    /// Writes `natServiceFile(...)` into the lab's directory and `lbctl apply`s it; returns
    /// the file's path with the result.
    @discardableResult
    public func applyNAT(_ services: [NATService], snatV4: [String]? = nil, snatV6: [String]? = nil,
                         snatPorts: String? = nil) async throws -> (path: String, result: CommandResult) {
        let path = "\(directory)/services-nat-\(UUID().uuidString.prefix(8)).yaml"
        try natServiceFile(services, snatV4: snatV4, snatV6: snatV6, snatPorts: snatPorts)
            .write(toFile: path, atomically: true, encoding: .utf8)
        return (path, try Self.checked(await lbctl("apply", "-f", path)))
    }

    /// `lab.sh client NAME parallel KIND HOST PORT COUNT TIMEOUT`: COUNT at one instant.
    public func parallelClient(_ kind: ClientKind, _ host: String, _ port: Int, count: Int, timeout: Double) async throws -> ClientResult {
        let result = try await Self.run("client", name, ["parallel", kind.rawValue, host, String(port), String(count), String(timeout)])
        guard var decoded = try? JSONDecoder().decode(ClientResult.self, from: result.stdoutData) else {
            throw CommandError("lab client printed no result:\n\(result)")
        }
        decoded.output = result.description
        return decoded
    }

    // MARK: Counters

    /// What the NAT tests read of `lbctl stats --json`: the node's counters by name (the
    /// NAT ones optional, so that their absence is reported, not a decoding error).
    public struct NATStats: Decodable, Sendable {
        public var verdicts: [String: Int]
        public var drops: [String: Int]
        public var newFlows: Int
        public var natCreated: Int?
        public var natReplies: Int?
        public var snatCollisions: Int?
        public var services: [Stats.ServiceCounters]
        enum CodingKeys: String, CodingKey {
            case verdicts, drops, services, newFlows = "new_flows", natCreated = "nat_created", natReplies = "nat_replies"
            case snatCollisions = "snat_collisions"
        }

        public func drops(_ reason: String) -> Int { drops[reason] ?? 0 }
        public func packets(service: String) -> Int { services.first { $0.name == service }?.packets ?? 0 }
    }

    public func natStats() async throws -> NATStats {
        try decode(NATStats.self, Self.checked(await lbctl("stats", "--json")))
    }

    // MARK: What the backends logged

    /// How many lines each backend has logged so far: `logged(since:)` reads what follows.
    public func logMark() throws -> [String: Int] {
        try Dictionary(uniqueKeysWithValues: backends.map { ($0, try log(of: $0).count) })
    }

    /// Each backend's lines after `mark`.
    public func logged(since mark: [String: Int]) throws -> [String: [LogLine]] {
        try Dictionary(uniqueKeysWithValues: backends.map { backend in
            (backend, Array(try log(of: backend).dropFirst(mark[backend] ?? 0)))
        })
    }

    /// Why the lines `backends` logged since `mark` for `proto` on their own address and
    /// `port` do not match `result`'s answers one for one, each from one of `clients`; empty
    /// when they do. Waits (5 s at most) for lines still being written.
    public func natLogProblems(_ result: ClientResult, since mark: [String: Int], backends: [String], proto: String,
                               port: Int, ipv6: Bool, clients: Set<String>) async throws -> [String] {
        func lines() throws -> [String: [LogLine]] {
            let all = try logged(since: mark)
            return try Dictionary(uniqueKeysWithValues: backends.map { backend in
                let local = "\(try info("\(backend)_\(ipv6 ? "v6" : "v4")")):\(port)"
                return (backend, (all[backend] ?? []).filter { $0.proto == proto && $0.local == local })
            })
        }
        let deadline = ContinuousClock.now + .seconds(5)
        var seen = try lines()
        while backends.contains(where: { (seen[$0]?.count ?? 0) < (result.backends[$0] ?? 0) }), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            seen = try lines()
        }
        var problems: [String] = []
        for backend in backends {
            let got = seen[backend] ?? [], answered = result.backends[backend] ?? 0
            if got.count != answered { problems.append("\(backend) logged \(got.count) \(proto) requests on port \(port) but answered \(answered)") }
            let from = Set(got.map(\.client))
            if !from.isSubset(of: clients) { problems.append("\(backend) saw clients \(from.sorted()), not only \(clients.sorted())") }
        }
        for (name, count) in result.backends where !backends.contains(name) {
            problems.append("\(name), not a backend of this service, answered \(count)")
        }
        return problems
    }

    // MARK: Frames

    /// The TCP/UDP flows of `frames` (ARP, ND and other ICMP left out), with how often each
    /// (source, destination, protocol) pair of addresses occurred.
    public static func addressPairs(_ frames: [[UInt8]]) -> [String: Int] {
        frames.reduce(into: [:]) { pairs, frame in
            guard let flow = IPFlow(frame: frame) else { return }
            pairs["\(flow.source) > \(flow.destination) \(flow.protocolNumber == 6 ? "tcp" : "udp")", default: 0] += 1
        }
    }
}
