// Two balancers behind an ECMP router WITH connection-state sync: each node's agent sends
// the flows it places to the other, so the failover that breaks sessions in the baseline
// (ECMPFailoverTests) breaks none, and a node restarted with an empty table copies its
// peer's before it takes traffic again.
import Foundation
import SluiceTestSupport
import Testing

/// An agent with `sync:` on each balancer of a two- or three-balancer lab, each a peer of
/// the others, sharing one key. The agents go with this object (LabAgent's deinit) or with the lab.
final class SyncedAgents: @unchecked Sendable {
    let lab: Lab
    let agents: [Lab.Balancer: LabAgent]
    private let keyDirectory: String
    /// The key file every agent reads (`sync.key_file`).
    var keyFile: String { keyDirectory + "/sync.key" }

    /// `extra`: more agent configuration (top-level YAML), the same on every node;
    /// `perBalancer`: more of it for one node (its `bgp:` section).
    init(lab: Lab, resyncTimeout: String = "10s", extra: String = "",
         perBalancer: (Lab.Balancer) throws -> String = { _ in "" }) async throws {
        self.lab = lab
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-sync-\(lab.name)").path
        keyDirectory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        try (key + "\n").write(toFile: directory + "/sync.key", atomically: true, encoding: .utf8)
        let addresses = try Dictionary(uniqueKeysWithValues: lab.balancers.map { ($0, try lab.info("lb_v4", of: $0)) })
        var agents: [Lab.Balancer: LabAgent] = [:]
        for balancer in lab.balancers {
            let peers = lab.balancers.filter { $0 != balancer }.map { "\"\(addresses[$0]!):9301\"" }.joined(separator: ", ")
            agents[balancer] = try await LabAgent(lab: lab, balancer: balancer, extraConfig: """
                sync:
                  listen: \(addresses[balancer]!):9301
                  peers: [\(peers)]
                  key_file: \(directory)/sync.key
                  batch_interval: 50ms
                  resync_timeout: \(resyncTimeout)
                \(extra)
                \(try perBalancer(balancer))
                """)
        }
        self.agents = agents
    }

    deinit { try? FileManager.default.removeItem(atPath: keyDirectory) }

    subscript(balancer: Lab.Balancer) -> LabAgent { agents[balancer]! }

    /// Polls `GET /readyz` until it answers 200; false after `timeout`. It asks once more
    /// after every sleep before looking at the clock, so a late resumption of this task
    /// is not counted against the agent.
    func waitReady(_ balancer: Lab.Balancer, timeout: Duration = .seconds(40)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if (try? await self[balancer].request("GET", "/readyz"))?.status == 200 { return true }
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Why `balancer`'s agent is not ready: its last answer and what it logged.
    func diagnose(_ balancer: Lab.Balancer) async -> String {
        let answer = (try? await self[balancer].request("GET", "/readyz")).map { "\($0)" } ?? "no answer"
        return "\(balancer): /readyz \(answer)\nstderr:\n\(self[balancer].process.stderr)"
    }

    /// Both agents ready, or the test stops with why not.
    func requireReady() async throws {
        for balancer in lab.balancers {
            let ready = try await waitReady(balancer)
            let why = await (ready ? "" : diagnose(balancer))
            try #require(ready, "\(balancer)'s agent never became ready: \(why)")
        }
    }

    /// Replaces `balancer`'s services through its agent (persisted there) with the lab's file
    /// for it, the echo service's backends being `echo`.
    func put(_ balancer: Lab.Balancer, echo: String) async throws {
        let file = try Lab.checked(await Lab.run("services", lab.name, [echo, balancer.rawValue])).stdout
        let reply = try await self[balancer].request("PUT", "/v1/services", body: file, token: self[balancer].token)
        try #require(reply.status == 200, "PUT on \(balancer): \(reply)")
    }

    /// `lbctl flows --json` of `balancer`: (service, source:port, origin) of each flow.
    func flows(_ balancer: Lab.Balancer) async throws -> [(service: String, flow: String, origin: String)] {
        let result = try Lab.checked(await lab.lbctl(on: balancer, ["flows", "--json"]))
        let flows = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] ?? []
        return flows.map {
            ($0["service"] as? String ?? "?", "\($0["source"] ?? "?"):\($0["source_port"] ?? "?")", $0["origin"] as? String ?? "?")
        }
    }

    /// The flows of `service` on `balancer`: (source:port, origin).
    func echoFlows(_ balancer: Lab.Balancer, service: String = "echo") async throws -> [(flow: String, origin: String)] {
        try await flows(balancer).filter { $0.service == service }.map { ($0.flow, $0.origin) }
    }

    /// Waits until every flow of `service` that `from` placed itself is in `to`'s table too.
    func waitSynced(from: Lab.Balancer, to: Lab.Balancer, service: String = "echo",
                    timeout: Duration = .seconds(10)) async throws -> (missing: Int, local: Int) {
        let deadline = ContinuousClock.now + timeout
        while true {  // looks before the clock after every sleep, as waitReady does
            let mine = Set(try await echoFlows(from, service: service).filter { $0.origin == "local" }.map(\.flow))
            let theirs = Set(try await echoFlows(to, service: service).map(\.flow))
            let missing = mine.subtracting(theirs).count
            if missing == 0 || ContinuousClock.now >= deadline { return (missing, mine.count) }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// `sluice_sync_key_info` of `balancer`: the sealing key's id first, then any other accepted.
    func keyIDs(_ balancer: Lab.Balancer) async throws -> [String] {
        let text = try await self[balancer].request("GET", "/metrics").text
        let lines = text.split(separator: "\n").filter { $0.hasPrefix("sluice_sync_key_info{") }
        func id(_ line: Substring) -> String? {
            line.split(separator: "\"").dropFirst().first.map(String.init)  // key_id="…" comes first
        }
        return lines.filter { $0.contains("role=\"seal\"") }.compactMap(id) + lines.filter { $0.contains("role=\"accept\"") }.compactMap(id)
    }

    /// One counter of `balancer`'s /metrics (the sum of its series), or nil.
    func metric(_ balancer: Lab.Balancer, _ name: String) async throws -> Double? {
        let text = try await self[balancer].request("GET", "/metrics").text
        let values = text.split(separator: "\n").filter { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
            .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
        return values.isEmpty ? nil : values.reduce(0, +)
    }
}

@Suite("two balancers behind ECMP, with connection sync")
struct ECMPSyncTests {
    @Test("WITH connection sync: when balancer lb fails after the backend set grew, no session breaks")
    func failoverWithConnectionSyncBreaksNothing() async throws {
        try await ECMPFailoverTests.withTwoBalancerLab { lab in
            let agents = try await SyncedAgents(lab: lab)
            try await agents.requireReady()
            let outcome = try await ECMPFailoverTests.runFailoverScenario(lab: lab) {
                let synced = try await agents.waitSynced(from: .lb, to: .lb2)
                try #require(synced.missing == 0, "\(synced.missing) of lb's \(synced.local) echo flows never reached lb2")
            }
            print("ECMP failover WITH connection sync (lab \(lab.name)): \(outcome.description)")
            #expect((outcome.carried[.lb] ?? 0) > 0, "lb carried no session, so its failure tests nothing: \(outcome.description)")
            #expect(outcome.total == 100 && outcome.broken == 0, "\(outcome.description)")
            // The records crossed, authenticated, and none was refused.
            #expect(try await agents.metric(.lb2, "sluice_sync_records_applied_total") ?? 0 >= Double(outcome.carried[.lb] ?? 0))
            #expect(try await agents.metric(.lb2, "sluice_sync_batches_rejected_total") == 0)
        }
    }

    @Test("a balancer restarted with an empty table copies its peer's before it is ready; back in ECMP, no session breaks")
    func restartedNodeResyncsBeforeTakingTraffic() async throws {
        try await ECMPFailoverTests.withTwoBalancerLab { lab in
            let agents = try await SyncedAgents(lab: lab)
            try await agents.requireReady()
            for balancer in lab.balancers { try await agents.put(balancer, echo: "be1:1,be2:1") }
            let count = 100
            try await lab.withSessions(ECMPFailoverTests.vip4, ECMPFailoverTests.echoPort, count: count) { sessions in
                let started = try await sessions.wait { $0.opened == count && $0.rounds >= 3 }
                try #require(started?.opened == count && started?.broken == 0, "sessions: \(started?.summary ?? "none") \(sessions.output)")

                // The backend set grows on both (through the agents, so a restarted agent restores
                // it): from now on Maglev alone would move some established flows.
                for balancer in lab.balancers { try await agents.put(balancer, echo: "be1:1,be2:1,be3:1") }
                let grown = try await sessions.waitRounds(2)
                try #require(grown?.broken == 0, "sessions broke when the set grew: \(grown?.summary ?? "none")")
                let synced = try await agents.waitSynced(from: .lb, to: .lb2)
                try #require(synced.missing == 0 && synced.local > 0, "lb's flows did not reach lb2: \(synced)")

                // Node A goes away for a restart: withdrawn from the router, agent killed, data
                // plane reloaded (its connection table is gone).
                try await lab.route(.lb2)
                await agents[.lb].kill()
                try Lab.checked(await lab.lbctl(on: .lb, ["detach", "lb0"]))
                try Lab.checked(await lab.lbctl(on: .lb, ["attach", "lb0"]))
                #expect(try await agents.echoFlows(.lb).isEmpty, "a reloaded data plane starts with an empty table")
                let whileDown = try await sessions.waitRounds(2)
                try #require(whileDown?.broken == 0, "sessions broke while lb was away: \(whileDown?.summary ?? "none")")

                // It comes back: the agent restores its services and copies lb2's table first.
                try await agents[.lb].start()
                let ready = try await agents.waitReady(.lb)
                let why = await (ready ? "" : agents.diagnose(.lb))
                try #require(ready, "the restarted agent never became ready: \(why)")
                let copied = try await agents.echoFlows(.lb)
                #expect(copied.count >= count, "lb has \(copied.count) of the \(count) sessions' flows once ready")
                #expect(try await agents.metric(.lb, "sluice_sync_ready") == 1)

                // Back in ECMP: flows hash to lb again and must find their backends there.
                let lbBefore = try await lab.stats(of: .lb).newFlows
                try await lab.route(.both)
                let after = try await sessions.waitRounds(5)
                let state = try #require(after, "no sessions state")
                print("restart with resync (lab \(lab.name)): \(state.summary)")
                #expect(state.broken == 0 && state.alive == count, "\(state.summary)")
                // lb forwarded them from the copied table (hits), placing none of them anew.
                #expect(try await lab.stats(of: .lb).newFlows == lbBefore, "lb re-placed flows it should have found in its table")
                let hits = try #require(try await agents.metric(.lb, "sluice_conntrack_hits_total"))
                #expect(hits > 0, "lb carried none of the sessions after the route came back")
            }
        }
    }

    @Test("the sync key is rotated under traffic in three steps (accept the new key, seal with it, drop the old) with no record lost or refused")
    func keyRotationUnderTraffic() async throws {
        try await ECMPFailoverTests.withTwoBalancerLab { lab in
            let agents = try await SyncedAgents(lab: lab)
            try await agents.requireReady()
            let old = try String(contentsOfFile: agents.keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let new = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            let oldID = try #require(try await agents.keyIDs(.lb).first, "no sluice_sync_key_info")
            try await lab.withSessions(ECMPFailoverTests.vip4, ECMPFailoverTests.echoPort, count: 20) { sessions in
                let started = try await sessions.wait { $0.opened == 20 && $0.rounds >= 2 }
                try #require(started?.opened == 20, "sessions: \(started?.summary ?? "none")")
                var newID: String?
                for (step, lines) in [[old, new], [new, old], [new]].enumerated() {
                    // One file for both agents, replaced whole (rename), as a secret store does.
                    try (lines.joined(separator: "\n") + "\n").write(toFile: agents.keyFile, atomically: true, encoding: .utf8)
                    // Each agent shows the step's keys in /metrics within about a second.
                    let deadline = ContinuousClock.now + .seconds(10)
                    var seen: [Lab.Balancer: [String]] = [:]
                    while true {
                        for balancer in lab.balancers { seen[balancer] = try await agents.keyIDs(balancer) }
                        if step == 0, newID == nil, let ids = seen[.lb], ids.count == 2 { newID = ids[1] }
                        let expected = [[oldID, newID ?? "?"], [newID ?? "?", oldID], [newID ?? "?"]][step]
                        if lab.balancers.allSatisfy({ seen[$0] == expected }) { break }
                        try #require(ContinuousClock.now < deadline, "step \(step + 1): the agents show keys \(seen), expected \(expected)")
                        try await Task.sleep(for: .milliseconds(200))
                    }
                    // New flows at this step, on both nodes (ECMP spreads them): each reaches the other.
                    let udp = try await lab.client(.udp2, ECMPFailoverTests.vip4, 53, count: 20)
                    try #require(udp.ok == 20, "step \(step + 1): \(udp.output)")
                    var placed = 0
                    for (from, to) in [(Lab.Balancer.lb, Lab.Balancer.lb2), (.lb2, .lb)] {
                        let synced = try await agents.waitSynced(from: from, to: to, service: "dns")
                        #expect(synced.missing == 0, "step \(step + 1): \(synced.missing) of \(from)'s \(synced.local) flows never reached \(to)")
                        placed += synced.local
                    }
                    // The client's ephemeral ports may repeat across steps: a repeated 5-tuple is one flow.
                    #expect(placed >= 20 * (step + 1) * 9 / 10, "step \(step + 1): the nodes placed \(placed) UDP flows so far")
                }
                #expect(newID != nil && newID != oldID)
                for balancer in lab.balancers {
                    #expect(try await agents.metric(balancer, "sluice_sync_batches_rejected_total") == 0, "\(balancer) refused frames")
                    #expect(try await agents.metric(balancer, "sluice_sync_records_applied_total") ?? 0 > 0)
                }
                let state = try #require(sessions.state())
                #expect(state.broken == 0 && state.alive == 20, "\(state.summary)")
            }
        }
    }

    @Test("flows age out on both nodes once idle past their timeout; a busy session stays on both, refreshed by the node that carries it")
    func idleFlowsAgeOutEverywhere() async throws {
        try await ECMPFailoverTests.withTwoBalancerLab { lab in
            let agents = try await SyncedAgents(lab: lab, extra: "conntrack: { tcp_idle_timeout: 6s, udp_idle_timeout: 6s }")
            try await agents.requireReady()
            try await lab.withSessions(ECMPFailoverTests.vip4, ECMPFailoverTests.echoPort, count: 20, interval: 0.3) { sessions in
                let started = try await sessions.wait { $0.opened == 20 && $0.rounds >= 2 }
                try #require(started?.opened == 20, "sessions: \(started?.summary ?? "none")")
                /// Flows of dns and echo in each balancer's `lbctl flows --json`.
                @Sendable func counts(_ results: [CommandResult]) -> [String] {
                    zip(lab.balancers, results).map { balancer, result in
                        let flows = (try? JSONSerialization.jsonObject(with: result.stdoutData)) as? [[String: Any]] ?? []
                        let services = flows.compactMap { $0["service"] as? String }
                        return "\(balancer): \(services.count(where: { $0 == "dns" })) dns, \(services.count(where: { $0 == "echo" })) echo"
                    }
                }
                func counts() async throws -> [String] {
                    var results: [CommandResult] = []
                    for balancer in lab.balancers { results.append(try Lab.checked(await lab.lbctl(on: balancer, ["flows", "--json"]))) }
                    return counts(results)
                }

                // Every UDP flow and session reaches both nodes, before the first UDP flow could age
                // out (6 s after its only datagram): watched off the concurrency pool from before
                // the burst, so a late resumption of this task cannot make it look too late.
                let everywhere = lab.balancers.map { "\($0): 20 dns, 20 echo" }
                let reached = try lab.watchLbctl(["flows", "--json"], on: lab.balancers, every: .milliseconds(100), timeout: .seconds(10)) { counts($0) == everywhere }
                // Two datagrams a flow: a UDP flow is recorded (and synced) by its second.
                let udp = try await lab.client(.udp2, ECMPFailoverTests.vip4, 53, count: 20)
                let burstEnd = udp.exited
                try #require(udp.ok == 20, "\(udp.output)")
                let outcome = await reached.outcome
                var seen = outcome.look.map { counts($0.results) } ?? [outcome.error ?? "no look"]
                // What each look saw, when it ended (since the burst began): the counts as they changed.
                var changes: [String] = []
                for look in outcome.looks where changes.last?.hasSuffix("\(counts(look.results))") != true {
                    changes.append("\(look.finished - udp.started): \(counts(look.results))")
                }
                #expect(outcome.satisfied && seen == everywhere,
                        "every UDP flow and session reached both nodes: \(seen); burst of \(udp.exited - udp.started)\n\(changes.joined(separator: "\n"))")

                // Well past the timeout (6 s, and a sweep every 2 s), 12 s after the burst: the UDP
                // flows went idle and are gone everywhere; the sessions kept talking and are still
                // on both nodes, also where they never pass (refreshed by the node that carries
                // them). Every look until then finds all 20 sessions' flows on both nodes; the last
                // one starts 12 s after the burst or later, however late this task resumes.
                let ageing = burstEnd + .seconds(12)
                var lookedAt = ContinuousClock.now
                while true {
                    lookedAt = ContinuousClock.now
                    seen = try await counts()
                    if lookedAt >= ageing || !seen.allSatisfy({ $0.hasSuffix(", 20 echo") }) { break }
                    try await Task.sleep(for: .milliseconds(500))
                }
                #expect(seen == lab.balancers.map { "\($0): 0 dns, 20 echo" }, "\(lookedAt - burstEnd) after the UDP burst")
                for balancer in lab.balancers {
                    #expect(try await agents.metric(balancer, "sluice_conntrack_expired_total") ?? 0 >= 1)
                }
                let state = try #require(sessions.state())
                #expect(state.broken == 0 && state.alive == 20, "\(state.summary)")
            }
        }
    }
}
