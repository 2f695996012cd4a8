// The three-balancer BGP lab (`Lab.withLab(balancers: 3, routing: .bgp)`) with an agent on
// every balancer that syncs with the others and drives its node's BIRD; and what the
// router's kernel routes the VIPs over, which is what BGP and ECMP come down to.
import Foundation
import SluiceTestSupport
import Testing

extension SyncedAgents {
    /// Agents with `sync:` among every balancer and `bgp:` on each, pointing at the lab's
    /// BIRD of that node. `bgpExtra`: more keys of the bgp section (indented by two).
    static func fleet(_ lab: Lab, resyncTimeout: String = "10s", bgpExtra: String = "") async throws -> SyncedAgents {
        try await SyncedAgents(lab: lab, resyncTimeout: resyncTimeout) { balancer in
            """
            bgp:
              bird_socket: \(try lab.birdPath("socket", of: .balancer(balancer)))
              include_file: \(try lab.birdInclude(of: balancer))
              drain_quiet: 1s
              drain_timeout: 20s
              shutdown_grace: 2s
            \(bgpExtra)
            """
        }
    }

    /// GET /v1/bgp of `balancer`'s agent, decoded.
    func bgp(_ balancer: Lab.Balancer) async throws -> BGPAnswer {
        let reply = try await self[balancer].request("GET", "/v1/bgp")
        try #require(reply.status == 200, "GET /v1/bgp on \(balancer): \(reply)")
        return try JSONDecoder().decode(BGPAnswer.self, from: Data(reply.text.utf8))
    }

    /// `lbctl ARGS --server <balancer's agent> --token-file <its token>` in its namespace.
    func lbctlThroughAgent(_ balancer: Lab.Balancer, _ arguments: [String]) async throws -> CommandResult {
        let agent = self[balancer]
        return try await Command.run(TestNamespace.nsenter, ["--net=/run/netns/\(agent.namespace)", Lbctl.path] + arguments
                                     + ["--server", agent.baseURL, "--token-file", agent.tokenPath])
    }
}

/// What GET /v1/bgp answers (the fields the tests read).
struct BGPAnswer: Decodable, Sendable {
    struct VIP: Decodable, Sendable {
        var vip: String
        var announced: Bool
        var reason: String?
    }
    var draining: Bool
    var ready: Bool
    var attached: Bool
    var vips: [VIP]
    var updates: Int
    var errors: Int

    func announced(_ vip: String) -> Bool { vips.first { $0.vip == vip }?.announced ?? false }
}

extension Lab {
    /// `ip -j route show VIP` in the router's namespace.
    func routeCommand(_ vip: String) -> (String, [String]) {
        (TestNamespace.ip, ["-n", "\(name)-router", "-j"] + (vip.contains(":") ? ["-6"] : []) + ["route", "show", vip])
    }

    /// The balancers the router's kernel sends `vip` to, as `ip -j route` printed them.
    func nextHops(_ result: CommandResult) -> Set<Balancer> {
        let routes = (try? JSONSerialization.jsonObject(with: result.stdoutData)) as? [[String: Any]] ?? []
        var gateways: [String] = []
        for route in routes {
            if let gateway = route["gateway"] as? String { gateways.append(gateway) }
            for hop in route["nexthops"] as? [[String: Any]] ?? [] {
                if let gateway = hop["gateway"] as? String { gateways.append(gateway) }
            }
        }
        return Set(balancers.filter { balancer in
            gateways.contains { $0 == info[balancer.infoKey("lb_v4")] || $0 == info[balancer.infoKey("lb_v6")] }
        })
    }

    /// The balancers the router sends `vip` to now.
    func nextHops(_ vip: String) async throws -> Set<Balancer> {
        let (executable, arguments) = routeCommand(vip)
        return nextHops(try await Command.run(executable, arguments))
    }

    /// Watches the router's route for `vip` (off the concurrency pool) until its next hops are `wanted`.
    func watchNextHops(_ vip: String, every interval: Duration = .milliseconds(50), timeout: Duration,
                       until wanted: @escaping @Sendable (Set<Balancer>) -> Bool) -> CommandWatch {
        CommandWatch([routeCommand(vip)], every: interval, timeout: timeout) { [self] in wanted(nextHops($0[0])) }
    }

    /// Waits until the router sends `vip` to exactly `balancers`; the next hops last seen.
    @discardableResult
    func waitNextHops(_ vip: String, _ balancers: Set<Balancer>, timeout: Duration = .seconds(20)) async throws -> Set<Balancer> {
        let outcome = await watchNextHops(vip, every: .milliseconds(100), timeout: timeout) { $0 == balancers }.outcome
        let seen = outcome.look.map { nextHops($0.results[0]) } ?? []
        try #require(outcome.satisfied, "the router never sent \(vip) to exactly \(balancers.map(\.rawValue).sorted()); last seen \(seen.map(\.rawValue).sorted())")
        return seen
    }

    /// Runs `nft -f FILE` with `rules` in `node`'s namespace; the result's `started` and
    /// `exited` bracket when the rules took effect.
    @discardableResult
    func nft(_ node: String, _ rules: String) async throws -> CommandResult {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-nft-\(UUID().uuidString.prefix(8)).nft").path
        try rules.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        return try Self.checked(await Self.run("exec", name, [node, "/usr/sbin/nft", "-f", file]))
    }
}
