// What the forwarding-mode lab tests drive: a service file with per-service
// `forwarding` and the node's `gue_port` / `tunnel_mtu`, the backends'
// decapsulators on and off, DF datagrams that learn a path MTU, and the counters
// that show replies bypassing the balancer (direct server return).
import Foundation

extension Lab {
    /// One service of a generated service file.
    public struct Service: Sendable {
        public var name: String
        public var vip: String
        public var port: Int
        public var `protocol`: String
        /// ipip, gue or l2dsr.
        public var forwarding: String
        /// Backend weights for be1, be2, be3, on their IPv4 or IPv6 addresses.
        public var weights: [Int]
        public var ipv6Backends: Bool

        public init(_ name: String, vip: String, port: Int, protocol: String = "tcp", forwarding: String,
                    weights: [Int] = [1, 1, 1], ipv6Backends: Bool = false) {
            self.name = name
            self.vip = vip
            self.port = port
            self.protocol = `protocol`
            self.forwarding = forwarding
            self.weights = weights
            self.ipv6Backends = ipv6Backends
        }
    }

    /// A service file of `services` for the balancer (its node addresses, the lab's GUE
    /// port, `tunnelMTU` when given).
    public func serviceFile(_ services: [Service], tunnelMTU: Int? = nil) throws -> String {
        var text = """
            node:
              source_v4: \(try info("lb_v4"))
              source_v6: "\(try info("lb_v6"))"
              gue_port: \(try info("gue_port"))

            """
        if let tunnelMTU { text += "  tunnel_mtu: \(tunnelMTU)\n" }
        text += "services:\n"
        for service in services {
            text += """
                  - name: \(service.name)
                    vip: "\(service.vip)"
                    port: \(service.port)
                    protocol: \(service.protocol)
                    forwarding: \(service.forwarding)
                    backends:

                """
            for (backend, weight) in zip(backends, service.weights) {
                let address = try info("\(backend)_\(service.ipv6Backends ? "v6" : "v4")")
                text += "      - { address: \"\(address)\", weight: \(weight) }\n"
            }
        }
        return text
    }

    /// Writes `serviceFile(...)` into the lab's directory and `lbctl apply`s it.
    @discardableResult
    public func apply(_ services: [Service], tunnelMTU: Int? = nil) async throws -> CommandResult {
        let path = "\(directory)/services-\(UUID().uuidString.prefix(8)).yaml"
        try serviceFile(services, tunnelMTU: tunnelMTU).write(toFile: path, atomically: true, encoding: .utf8)
        return try Self.checked(await lbctl("apply", "-f", path))
    }

    /// `lab.sh decap NAME on|off`: every backend's decapsulator attached or detached.
    public func setDecap(_ on: Bool) async throws {
        try Self.checked(await Self.run("decap", name, [on ? "on" : "off"]))
    }

    /// The id of the XDP program on `interface` in `namespace`, nil when there is none.
    public func xdpProgram(namespace: String, interface: String) async throws -> Int? {
        struct Link: Decodable {
            struct XDP: Decodable { struct Prog: Decodable { var id: Int }; var prog: Prog? }
            var xdp: XDP?
        }
        let result = try await Command.check("/usr/sbin/ip", ["-n", namespace, "-j", "link", "show", "dev", interface])
        return try decode([Link].self, result).first?.xdp?.prog?.id
    }

    /// What `lab-client.py dfudp` prints.
    public struct PathMTUResult: Decodable, Sendable {
        public var sent: Int
        public var mtuBefore: Int
        public var mtu: Int
        public var errors: [String]
        enum CodingKeys: String, CodingKey { case sent, mtuBefore = "mtu_before", mtu, errors }
    }

    /// DF datagrams of `size` bytes to HOST:PORT until the client's path MTU drops (3 s at most).
    public func dfUDP(_ host: String, _ port: Int, size: Int) async throws -> PathMTUResult {
        let result = try await Self.run("client", name, ["dfudp", host, String(port), String(size)])
        return try decode(PathMTUResult.self, result)
    }

    // MARK: What a burst must show

    /// Why `result`'s answers per backend do not follow `weights` (be1, be2, be3) within
    /// `tolerance` of the total; empty when they do.
    public func weightProblems(_ result: ClientResult, weights: [Int], tolerance: Double = 0.10) -> [String] {
        let total = Double(weights.reduce(0, +)), count = Double(result.ok)
        return zip(backends, weights).compactMap { backend, weight in
            let share = Double(result.backends[backend] ?? 0) / max(count, 1), expected = Double(weight) / total
            return abs(share - expected) <= tolerance ? nil
                : "\(backend) got \(share * 100)% of the answers, its weight share is \(expected * 100)%: \(result.backends)"
        }
    }

    /// Why the backends' logs of `proto` requests to `local` (`VIP:PORT`) do not show exactly
    /// `result`'s answers, each from `client`; empty when they do (direct server return keeps
    /// the client's address).
    public func clientAddressProblems(_ result: ClientResult, proto: String, local: String, client: String) throws -> [String] {
        try backends.flatMap { backend -> [String] in
            let lines = try log(of: backend).filter { $0.proto == proto && $0.local == local }
            let answered = result.backends[backend] ?? 0
            var problems: [String] = []
            if lines.count != answered { problems.append("\(backend) logged \(lines.count) \(proto) requests to \(local) but answered \(answered)") }
            let clients = Set(lines.map(\.client))
            if !clients.isSubset(of: [client]) { problems.append("\(backend) saw clients \(clients), not only \(client)") }
            return problems
        }
    }

    // MARK: Direct server return

    /// The counters that tell where a burst's packets went.
    public struct Traffic: Sendable {
        public var clientTx = 0, clientRx = 0, lbRx = 0
        public var pass = 0, tx = 0, newFlows = 0

        public static func - (a: Traffic, b: Traffic) -> Traffic {
            Traffic(clientTx: a.clientTx - b.clientTx, clientRx: a.clientRx - b.clientRx, lbRx: a.lbRx - b.lbRx,
                    pass: a.pass - b.pass, tx: a.tx - b.tx, newFlows: a.newFlows - b.newFlows)
        }

        /// Why these deltas, for `flows` TCP connections (`tcp`) or datagrams, do not look like
        /// direct server return; empty when they do. (Datagrams from new sockets are not all
        /// new flows: the client's kernel may hand out a source port again.) Replies go backend ->
        /// router -> client, so lb0 receives about what the client sends (plus ARP/ND), far
        /// less than both directions; the balancer forwards (XDP_TX) and passes almost nothing.
        public func directReturnProblems(flows: Int, tcp: Bool) -> [String] {
            let counters = "lb0 rx +\(lbRx), client eth0 tx +\(clientTx) rx +\(clientRx); pass +\(pass), tx +\(tx), new_flows +\(newFlows)"
            var problems: [String] = []
            if clientTx < flows * (tcp ? 3 : 1) || clientRx < flows * (tcp ? 2 : 1) { problems.append("the client's counters hardly moved") }
            if lbRx > clientTx + 20 { problems.append("lb0 received more than the client sent") }
            if lbRx >= clientTx + clientRx / 2 { problems.append("replies seem to cross the balancer") }
            if pass > 20 { problems.append("the balancer passed more than ARP/ND to its kernel") }
            if tx < flows { problems.append("fewer packets forwarded than flows") }
            if tcp && newFlows < flows { problems.append("fewer new flows than connections") }
            return problems.map { "\($0): \(counters)" }
        }
    }

    /// The client's and lb0's interface counters and the balancer's verdicts, now.
    public func traffic() async throws -> Traffic {
        let client = try await linkCounters(namespace: info("client_ns"), interface: "eth0")
        let lb = try await linkCounters(namespace: info("lb_ns"), interface: info("lb_if"))
        let stats = try await stats()
        return Traffic(clientTx: client.tx.packets, clientRx: client.rx.packets, lbRx: lb.rx.packets,
                       pass: stats.verdicts.pass, tx: stats.verdicts.tx, newFlows: stats.newFlows)
    }
}
