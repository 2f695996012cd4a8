// Three balancers behind a router, every route from BGP: each node's agent drives its BIRD
// and announces a VIP only while the node can serve it. The router's ECMP spreads new
// connections over the nodes that announce; health, restarts, drains and hard failures
// move them, and with connection sync no session breaks.
import Foundation
import Glibc
import SluiceTestSupport
import Testing

@Suite("a fleet of three balancers announced over BGP through BIRD")
struct FleetBGPTests {
    static let vip4 = "198.51.100.10", vip6 = "2001:db8:100::10", vip4in6 = "198.51.100.20"
    static let echoPort = 7

    /// A three-balancer BGP lab with an agent on every node (sync and bgp), all ready and
    /// announced: the router sends every VIP to all three.
    static func withFleet(_ body: (Lab, SyncedAgents) async throws -> Void) async throws {
        try await Lab.withLab(balancers: 3, routing: .bgp) { lab in
            try #require(lab.balancers == [.lb, .lb2, .lb3] && lab.routing == .bgp, "lab.sh info: \(lab.info)")
            let agents = try await SyncedAgents.fleet(lab)
            try await agents.requireReady()
            for vip in [vip4, vip6, vip4in6] { try await lab.waitNextHops(vip, Set(lab.balancers)) }
            try await body(lab, agents)
        }
    }

    /// Waits until every node's own echo flows are in every other node's table.
    static func waitAllSynced(_ lab: Lab, _ agents: SyncedAgents) async throws {
        for from in lab.balancers {
            for to in lab.balancers where to != from {
                let synced = try await agents.waitSynced(from: from, to: to)
                try #require(synced.missing == 0, "\(synced.missing) of \(from)'s \(synced.local) echo flows never reached \(to)")
            }
        }
    }

    @Test("three ready nodes: the router holds three next hops per VIP and 300 connections spread over all three; a dead agent leaves its routes, lbctl withdraw takes them")
    func threeNodesShareTheVIPs() async throws {
        try await Self.withFleet { lab, agents in
            for balancer in lab.balancers {
                let bgp = try await agents.bgp(balancer)
                #expect(bgp.ready && bgp.attached && !bgp.draining && bgp.errors == 0, "\(balancer): \(bgp)")
                #expect([Self.vip4, Self.vip6, Self.vip4in6].allSatisfy(bgp.announced), "\(balancer): \(bgp)")
                #expect(try await agents.metric(balancer, "sluice_bgp_announced") == 3)
                #expect(try await agents.metric(balancer, "sluice_draining") == 0)
            }
            let status = try Lab.checked(await agents.lbctlThroughAgent(.lb2, ["status"]))
            let vipLine = status.stdout.split(separator: "\n").first { $0.hasPrefix(Self.vip4 + " ") }
            #expect(status.stdout.contains("bgp:        serving") && vipLine?.contains(" announced ") == true, "\(status.stdout)")

            let before = try await ECMPFailoverTests.newFlows(lab)
            let burst = try await lab.client(.echo, Self.vip4, Self.echoPort, count: 300)
            let carried = ECMPFailoverTests.delta(try await ECMPFailoverTests.newFlows(lab), before)
            print("300 connections over the BGP fleet (lab \(lab.name)): " + lab.balancers.map { "\($0) \(carried[$0] ?? 0)" }.joined(separator: ", "))
            #expect(burst.ok == 300, "\(burst.output)")
            #expect(carried.values.reduce(0, +) >= 300, "\(carried)")
            for balancer in lab.balancers { #expect(carried[balancer] ?? 0 >= 50, "\(balancer) carried \(carried[balancer] ?? 0) of 300") }

            // The agent dies: BIRD keeps announcing what it last did and the data plane keeps
            // forwarding, so the router keeps all three (watched for 3 s) and lb still carries.
            await agents[.lb].kill()
            let changed = await lab.watchNextHops(Self.vip4, timeout: .seconds(3)) { $0 != Set(lab.balancers) }.outcome
            #expect(!changed.satisfied, "the router dropped a next hop when only the agent died")
            let whileDead = try await lab.stats(of: .lb).newFlows
            let more = try await lab.client(.echo, Self.vip4, Self.echoPort, count: 60)
            let afterDeath = try await lab.stats(of: .lb).newFlows
            #expect(more.ok == 60 && afterDeath > whileDead, "\(more.output)")
            // What a supervisor runs once the agent is gone: every VIP withdrawn.
            let withdraw = try Lab.checked(await Command.run(TestNamespace.nsenter, [
                "--net=/run/netns/\(agents[.lb].namespace)", Lbctl.path, "withdraw", "--config", agents[.lb].configPath]))
            #expect(withdraw.stdout.contains("BIRD reconfigured"), "\(withdraw)")
            try await lab.waitNextHops(Self.vip4, [.lb2, .lb3], timeout: .seconds(5))
            try await lab.waitNextHops(Self.vip6, [.lb2, .lb3], timeout: .seconds(5))
        }
    }

    @Test("a node whose backends all fail their health checks withdraws the VIP within interval x fall + 2 s; no new connection reaches it; it comes back when they pass")
    func unhealthyNodeWithdraws() async throws {
        try await Self.withFleet { lab, agents in
            for balancer in lab.balancers {
                let file = try Lab.checked(await Lab.run("services", lab.name, ["", balancer.rawValue])).stdout
                let reply = try await agents[balancer].request("PUT", "/v1/services", body: try LabHealthTests.checked(file, echo: true),
                                                               token: agents[balancer].token)
                try #require(reply.status == 200, "PUT on \(balancer): \(reply)")
            }
            try await lab.waitNextHops(Self.vip4, Set(lab.balancers))
            // lb2 loses its backends (its probes dropped on the way out, as a partition would):
            // every service on the VIP goes down there, and only there.
            let bound = Duration.seconds(LabHealthTests.interval * Double(LabHealthTests.fall) + 2)
            let watch = lab.watchNextHops(Self.vip4, timeout: bound + .seconds(5)) { $0 == [.lb, .lb3] }
            // From just before nft was spawned (a late resumption of this task before it is not
            // counted; nft's own start-up is, so the figure errs long).
            let cut = try await lab.nft("lb2", """
                table inet sluice_probes {
                  chain out { type filter hook output priority 0; ip daddr 10.10.3.0/24 drop; ip6 daddr fd10:3::/64 drop; }
                }
                """).started
            let outcome = await watch.outcome
            let lb2 = try await agents.bgp(.lb2)
            let took = try #require(outcome.satisfied ? outcome.look : nil, "lb2 was never withdrawn: \(lb2)").finished - cut
            print("health withdrawal (lab \(lab.name)): the router dropped lb2 \(took) after its probes were cut (bound \(bound))")
            #expect(took <= bound)
            let reason = try await agents.bgp(.lb2).vips.first { $0.vip == Self.vip4 }?.reason
            #expect(reason?.hasPrefix("no backend up") == true, "\(String(describing: reason))")
            #expect(try await lab.nextHops(Self.vip6) == Set(lab.balancers), "web6 has no health check: still announced everywhere")

            let before = try await ECMPFailoverTests.newFlows(lab)
            let burst = try await lab.client(.echo, Self.vip4, Self.echoPort, count: 100)
            let carried = ECMPFailoverTests.delta(try await ECMPFailoverTests.newFlows(lab), before)
            #expect(burst.ok == 100 && carried[.lb2] == 0, "\(carried) \(burst.output)")

            try Lab.checked(await Lab.run("exec", lab.name, ["lb2", "/usr/sbin/nft", "delete", "table", "inet", "sluice_probes"]))
            try await lab.waitNextHops(Self.vip4, Set(lab.balancers), timeout: .seconds(15))
        }
    }

    @Test("a restarted node is not announced until /readyz: 100 long-lived sessions across the fleet, none broken")
    func restartedNodeWaitsForReadiness() async throws {
        try await Self.withFleet { lab, agents in
            for balancer in lab.balancers { try await agents.put(balancer, echo: "be1:1,be2:1,be3:1") }
            let count = 100
            try await lab.withSessions(Self.vip4, Self.echoPort, count: count) { sessions in
                let started = try await sessions.wait { $0.opened == count && $0.rounds >= 3 }
                try #require(started?.opened == count && started?.broken == 0, "sessions: \(started?.summary ?? "none") \(sessions.output)")
                try await Self.waitAllSynced(lab, agents)

                // lb3 goes down for a restart: agent and BIRD gone, what the supervisor runs
                // before BIRD starts (nothing announced), the data plane reloaded empty.
                await agents[.lb3].kill()
                try await lab.stopBird(.balancer(.lb3))
                try await lab.waitNextHops(Self.vip4, [.lb, .lb2], timeout: .seconds(5))
                let withdraw = try Lab.checked(await Command.run(TestNamespace.nsenter, [
                    "--net=/run/netns/\(agents[.lb3].namespace)", Lbctl.path, "withdraw", "--config", agents[.lb3].configPath]))
                #expect(withdraw.stdout.contains("BIRD is not running"), "\(withdraw)")
                try Lab.checked(await lab.lbctl(on: .lb3, ["detach", "lb0"]))
                try Lab.checked(await lab.lbctl(on: .lb3, ["attach", "lb0"]))
                #expect(try await agents.echoFlows(.lb3).isEmpty, "a reloaded data plane starts with an empty table")

                // BIRD back first: its session comes up announcing nothing.
                try await lab.startBird(.balancer(.lb3))
                let deadline = ContinuousClock.now + .seconds(15)
                while true {
                    let protocols = try await lab.bird(.router, ["show", "protocols"]).stdout
                    if protocols.split(separator: "\n").contains(where: { $0.hasPrefix("lb3_v4") && $0.contains("Established") }) { break }
                    try #require(ContinuousClock.now < deadline, "lb3's BGP session never came back:\n\(protocols)")
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(try await lab.nextHops(Self.vip4) == [.lb, .lb2], "lb3 announced with no agent")

                // The agent: it restores the services, copies the table, and only then announces.
                try await agents[.lb3].start()
                var looks = 0, notReadyLooks = 0
                while true {
                    // The route first, then readiness: a route seen before a 503 was there before the agent was ready.
                    let hops = try await lab.nextHops(Self.vip4)
                    let ready = (try? await agents[.lb3].request("GET", "/readyz"))?.status == 200
                    looks += 1
                    if !ready {
                        notReadyLooks += 1
                        #expect(!hops.contains(.lb3), "the router used lb3 before its agent was ready")
                    }
                    if ready { break }
                    if ContinuousClock.now >= deadline + .seconds(30) {
                        let why = await agents.diagnose(.lb3)
                        try #require(Bool(false), "lb3's agent never became ready: \(why)")
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                print("restart (lab \(lab.name)): \(notReadyLooks) of \(looks) looks before /readyz, lb3 absent from the router in each")
                try await lab.waitNextHops(Self.vip4, Set(lab.balancers), timeout: .seconds(5))
                let copied = try await agents.echoFlows(.lb3)
                #expect(copied.count >= count, "lb3 has \(copied.count) of the \(count) sessions' flows once ready")

                let after = try await sessions.waitRounds(5)
                let state = try #require(after, "no sessions state")
                print("restart with BGP and sync (lab \(lab.name)): \(state.summary)")
                #expect(state.broken == 0 && state.alive == count, "\(state.summary)")
            }
        }
    }

    @Test("a graceful drain under 100 sessions and a stream of new connections: none broken or failed, then no new flow on the drained node; undrain and SIGTERM")
    func gracefulDrain() async throws {
        try await Self.withFleet { lab, agents in
            let count = 100
            try await lab.withSessions(Self.vip4, Self.echoPort, count: count) { sessions in
                let started = try await sessions.wait { $0.opened == count && $0.rounds >= 3 }
                try #require(started?.opened == count && started?.broken == 0, "sessions: \(started?.summary ?? "none") \(sessions.output)")
                try await Self.waitAllSynced(lab, agents)

                let streamBefore = try await ECMPFailoverTests.newFlows(lab).values.reduce(0, +)
                async let stream = lab.client(.echo, Self.vip4, Self.echoPort, count: 600)
                // The drain starts once the stream is under way: new flows counted on the nodes.
                let streaming = ContinuousClock.now + .seconds(20)
                while try await ECMPFailoverTests.newFlows(lab).values.reduce(0, +) < streamBefore + 20 {
                    try #require(ContinuousClock.now < streaming, "the stream of new connections never started")
                    try await Task.sleep(for: .milliseconds(20))
                }
                let drain = try Lab.checked(await agents.lbctlThroughAgent(.lb2, ["drain", "--json"]))
                let connections = try await stream
                let report = try #require(try JSONSerialization.jsonObject(with: drain.stdoutData) as? [String: Any], "\(drain)")
                print("drain of lb2 (lab \(lab.name)): \(drain.stdout) stream \(connections.ok)/\(connections.sent) ok")
                #expect(report["quiet"] as? Bool == true && report["draining"] as? Bool == true, "\(drain.stdout)")
                #expect((report["withdrawn"] as? [String] ?? []).contains(Self.vip4), "\(drain.stdout)")
                #expect(connections.ok == 600 && connections.failed == 0, "\(connections.output)")
                #expect(try await lab.nextHops(Self.vip4) == [.lb, .lb3])
                let bgp = try await agents.bgp(.lb2)
                #expect(bgp.draining && bgp.vips.allSatisfy { !$0.announced && $0.reason == "draining" }, "\(bgp)")
                #expect(try await agents.metric(.lb2, "sluice_draining") == 1)

                let before = try await ECMPFailoverTests.newFlows(lab)
                let after = try await lab.client(.echo, Self.vip4, Self.echoPort, count: 100)
                let carried = ECMPFailoverTests.delta(try await ECMPFailoverTests.newFlows(lab), before)
                #expect(after.ok == 100 && carried[.lb2] == 0, "after the drain: \(carried)")
                let state = try #require(try await sessions.waitRounds(3))
                #expect(state.broken == 0 && state.alive == count, "\(state.summary)")

                // A drain outlives the agent: restarted, it stays withdrawn.
                try await agents[.lb2].start()
                try #require(try await agents.waitReady(.lb2))
                #expect(try await agents.bgp(.lb2).draining)
                try Lab.checked(await agents.lbctlThroughAgent(.lb2, ["undrain"]))
                try await lab.waitNextHops(Self.vip4, Set(lab.balancers), timeout: .seconds(5))

                // SIGTERM: lb3 withdraws before it exits.
                let gone = lab.watchNextHops(Self.vip4, timeout: .seconds(15)) { !$0.contains(.lb3) }
                let stop = await agents[.lb3].process.stop(signal: SIGTERM)
                let withdrawn = await gone.outcome
                #expect(stop.status == 0 && withdrawn.satisfied, "SIGTERM: \(stop), route \(withdrawn.satisfied)")
                let final = try #require(try await sessions.waitRounds(3))
                #expect(final.broken == 0 && final.alive == count, "\(final.summary)")
            }
        }
    }

    /// Cuts `balancer`'s link silently and measures until the router stops using it.
    static func cutAndMeasure(_ lab: Lab, _ balancer: Lab.Balancer) async throws -> Duration {
        let remaining = Set(lab.balancers).subtracting([balancer])
        let watch = lab.watchNextHops(vip4, every: .milliseconds(20), timeout: .seconds(15)) { $0 == remaining }
        // From just before lab.sh was spawned to make the cut (its start-up counted: errs long).
        let cut = try await lab.cut(balancer, true).started
        let outcome = await watch.outcome
        return try #require(outcome.satisfied ? outcome.look : nil, "the router kept using \(balancer)").finished - cut
    }

    @Test("a hard failure (a silent link cut) with sync on: the router stops using the node after the hold time, or BFD's detection time; no session breaks")
    func hardFailure() async throws {
        try await Self.withFleet { lab, agents in
            let count = 100
            // A session breaks on a reset or on 10 s without its echo (TCP's retransmissions
            // carry it over the seconds before the router notices).
            try await lab.withSessions(Self.vip4, Self.echoPort, count: count, timeout: 10) { sessions in
                let started = try await sessions.wait { $0.opened == count && $0.rounds >= 3 }
                try #require(started?.opened == count && started?.broken == 0, "sessions: \(started?.summary ?? "none") \(sessions.output)")
                try await Self.waitAllSynced(lab, agents)
                let onLb3 = try await agents.echoFlows(.lb3).filter { $0.origin == "local" }.count

                let withoutBFD = try await Self.cutAndMeasure(lab, .lb3)
                let afterCut = try #require(try await sessions.waitRounds(4, timeout: .seconds(40)))
                try await lab.cut(.lb3, false)
                try await lab.waitNextHops(Self.vip4, Set(lab.balancers))
                try await Self.waitAllSynced(lab, agents)

                try await lab.setBFD(true)
                try await lab.waitNextHops(Self.vip4, Set(lab.balancers))
                let withBFD = try await Self.cutAndMeasure(lab, .lb3)
                let afterBFDCut = try #require(try await sessions.waitRounds(4, timeout: .seconds(40)))
                try await lab.cut(.lb3, false)

                print("hard failure of lb3 (lab \(lab.name); \(onLb3) of \(count) sessions placed there): the router stopped using it "
                      + "\(withoutBFD) after the cut without BFD (hold time 3 s), \(withBFD) with BFD (3 x 100 ms); "
                      + "sessions: \(afterCut.summary) / \(afterBFDCut.summary)")
                #expect(withoutBFD <= .milliseconds(4500), "hold time 3 s")
                #expect(withBFD <= .milliseconds(1500), "BFD 3 x 100 ms")
                #expect(afterCut.broken == 0 && afterBFDCut.broken == 0 && afterBFDCut.alive == count, "\(afterBFDCut.summary)")
            }
        }
    }
}
