// nat and fullnat end to end (issue #12), in the lab of LAB_SEGMENT=nat: the balancer on
// lb0 (toward the router and the client) and lb1 (toward be1-be3, whose default route
// it is), be4-be6 on the router's subnet. The backends are plain servers on their own
// addresses, nginx for HTTP and lab-server.py's echoes, with no VIP and no decapsulator:
// the balancer translates both ways. One lab per test; what crossed each side of the
// balancer is captured and must pass tshark's checksum and malformed checks.
import Foundation
import Glibc
import SluiceTestSupport
import Testing

@Suite("nat and fullnat in the lab")
struct NATLabTests {
    static let vip4 = "198.51.100.10", vip6 = "2001:db8:100::10"
    static let fullnatVIP4 = "198.51.100.30", fullnatVIP6 = "2001:db8:100::30"
    static let clientV4 = "10.10.1.2", clientV6 = "fd10:1::2"
    static let webWeights = [1, 2, 3]
    static let lab = Lab.Variant(nat: true)

    /// A burst to one service, and what its backends must log.
    struct Burst: CustomStringConvertible {
        var kind: Lab.ClientKind
        var vip: String
        var port: Int
        var count: Int
        var backends: [String]
        /// The port the backends listen on (the service's unless the file names another).
        var backendPort: Int
        var weights: [Int]?
        /// The source addresses the backends may see: the client's (nat) or the SNAT pool's.
        var clients: Set<String>
        var ipv6: Bool { vip.contains(":") }
        var logProto: String { kind == .udp ? "udp" : kind == .echo ? "echo" : "http" }
        var description: String { "\(count) \(kind) to \(vip.contains(":") ? "[\(vip)]" : vip):\(port)" }
    }

    /// Runs `burst`: every answer, from every backend, by weight, each logged once by the
    /// backend that answered, from an allowed source address.
    func check(_ burst: Burst, in lab: Lab, mode: String) async throws {
        let mark = try lab.logMark()
        let result = try await lab.client(burst.kind, burst.vip, burst.port, count: burst.count)
        try #require(result.ok == burst.count && result.failed == 0, "\(mode): \(burst) failed:\n\(result.output)")
        var problems = try await lab.natLogProblems(result, since: mark, backends: burst.backends, proto: burst.logProto,
                                                    port: burst.backendPort, ipv6: burst.ipv6, clients: burst.clients)
        if let weights = burst.weights { problems += Self.weightProblems(result, backends: burst.backends, weights: weights) }
        for backend in burst.backends where (result.backends[backend] ?? 0) == 0 {
            problems.append("\(backend) answered none: \(result.backends)")
        }
        for problem in problems { Issue.record("\(mode), \(burst): \(problem)") }
    }

    /// Why `result`'s answers do not follow `weights` (of `backends`) within `tolerance`.
    static func weightProblems(_ result: Lab.ClientResult, backends: [String], weights: [Int], tolerance: Double = 0.10) -> [String] {
        let total = Double(weights.reduce(0, +)), count = Double(max(result.ok, 1))
        return zip(backends, weights).compactMap { backend, weight in
            let share = Double(result.backends[backend] ?? 0) / count, expected = Double(weight) / total
            return abs(share - expected) <= tolerance ? nil
                : "\(backend) got \(Int(share * 100))% of the answers, its weight share is \(Int(expected * 100))%: \(result.backends)"
        }
    }

    /// Stops every capture, records tshark's expert errors, returns the frames by capture.
    func finish(_ captures: [Lab.Capture], lab: Lab) async throws -> [[[UInt8]]] {
        for capture in captures { await capture.stop() }
        let guePort = try #require(Int(try lab.info("gue_port")))
        var frames: [[[UInt8]]] = []
        for capture in captures {
            if let errors = try await capture.expertErrors(guePort: guePort) { Issue.record("tshark: \(errors)") }
            frames.append(try capture.frames())
        }
        return frames
    }

    /// The TCP/UDP frames of `frames` that are not between an address of `left` and one of
    /// `right` (either way), by address pair.
    static func stray(_ frames: [[UInt8]], between left: Set<String>, and right: Set<String>) -> [String: Int] {
        var stray: [String: Int] = [:]
        for frame in frames {
            guard let flow = IPFlow(frame: frame) else { continue }
            let s = flow.source.description, d = flow.destination.description
            if (left.contains(s) && right.contains(d)) || (right.contains(s) && left.contains(d)) { continue }
            stray["\(s) > \(d)", default: 0] += 1
        }
        return stray
    }

    /// Frames from one of `sources` to one of `destinations`.
    static func count(_ frames: [[UInt8]], from sources: Set<String>, to destinations: Set<String>) -> Int {
        frames.filter { frame in
            guard let flow = IPFlow(frame: frame) else { return false }
            return sources.contains(flow.source.description) && destinations.contains(flow.destination.description)
        }.count
    }

    func addresses(_ lab: Lab, _ backends: [String], v6: Bool = false) throws -> Set<String> {
        Set(try backends.map { try lab.info("\($0)_\(v6 ? "v6" : "v4")") })
    }

    /// No drop reason grew between `before` and `after`.
    static func dropProblems(_ before: Lab.NATStats, _ after: Lab.NATStats) -> [String] {
        after.drops.compactMap { reason, value in
            value > before.drops(reason) ? "drops.\(reason) grew by \(value - before.drops(reason))" : nil
        }
    }

    // MARK: nat

    @Test("nat: 300 HTTP connections to nginx and 300 UDP queries (and 60 HTTP over IPv6) through backends whose gateway is the balancer, spread by weight; the backends log the client's own address; replies leave lb0 from the VIP; tshark finds no bad frame on either side")
    func natEndToEnd() async throws {
        try await Lab.withLab(Self.lab) { lab in
            let near = lab.natBackends
            try #require(near.count == 3, "nat backends in lab.sh info: \(lab.info)")
            let before = try await lab.natStats()
            let clientSide = try await lab.capture("router", try lab.info("router_lb_if"), bothWays: true)
            var backendSide: [Lab.Capture] = []
            for backend in near { backendSide.append(try await lab.capture(backend, "eth0", bothWays: true)) }

            // lab.sh up applied `services NAME`: web-nat (1:2:3), dns-nat and web6-nat to be1-be3.
            let bursts = [
                Burst(kind: .http, vip: Self.vip4, port: 80, count: 300, backends: near, backendPort: 80,
                      weights: Self.webWeights, clients: [Self.clientV4]),
                Burst(kind: .udp, vip: Self.vip4, port: 53, count: 300, backends: near, backendPort: 53,
                      weights: [1, 1, 1], clients: [Self.clientV4]),
                Burst(kind: .http, vip: Self.vip6, port: 80, count: 60, backends: near, backendPort: 80,
                      clients: [Self.clientV6]),
            ]
            let started = ContinuousClock.now
            for burst in bursts { try await check(burst, in: lab, mode: "nat") }
            let elapsed = ContinuousClock.now - started
            let after = try await lab.natStats()

            // Both directions went through the balancer, across its two interfaces.
            let flows = 300 + 60
            let created = (after.natCreated ?? 0) - (before.natCreated ?? 0)
            let replies = (after.natReplies ?? 0) - (before.natReplies ?? 0)
            let redirected = (after.verdicts["redirect"] ?? 0) - (before.verdicts["redirect"] ?? 0)
            #expect(after.natCreated != nil && after.natReplies != nil, "lbctl stats --json has nat_created and nat_replies")
            #expect(created >= flows, "nat_created grew by \(created), want at least \(flows) (the TCP connections)")
            #expect(replies >= 660, "nat_replies grew by \(replies), want at least one per request (660)")
            #expect(redirected >= 2 * 660, "redirect verdicts grew by \(redirected): lb0 -> lb1 and back, for 660 exchanges")
            for problem in Self.dropProblems(before, after) { Issue.record("nat: \(problem)") }

            let frames = try await finish([clientSide] + backendSide, lab: lab)
            let clients: Set<String> = [Self.clientV4, Self.clientV6], vips: Set<String> = [Self.vip4, Self.vip6]
            let stray = Self.stray(frames[0], between: clients, and: vips)
            #expect(stray.isEmpty, "client side (router r-lb): TCP/UDP other than client <-> VIP: \(stray)")
            let answers = Self.count(frames[0], from: vips, to: clients)
            #expect(answers >= 660, "client side: \(answers) frames from the VIPs to the client; \(clientSide.output)")
            for (backend, received) in zip(near, frames.dropFirst()) {
                let own = try addresses(lab, [backend]).union(try addresses(lab, [backend], v6: true))
                let strayHere = Self.stray(received, between: clients, and: own)
                #expect(strayHere.isEmpty, "\(backend) eth0: TCP/UDP other than client <-> \(backend): \(strayHere)")
                #expect(Self.count(received, from: clients, to: own) > 0, "\(backend) received nothing from the client")
            }
            print("nat: 660 exchanges in \(elapsed); nat_created +\(created), nat_replies +\(replies), redirect +\(redirected); frames client side \(frames[0].count), backends \(frames.dropFirst().map(\.count))")
        }
    }

    // MARK: fullnat

    @Test("fullnat: 300 HTTP connections to nginx on port 8080 behind service port 80 and 300 UDP queries (and 60 over IPv6) to backends on the router's subnet, one-arm on lb0; 60 more across lb1; the backends see only SNAT addresses and ports; tshark finds no bad frame on either side")
    func fullNATEndToEnd() async throws {
        try await Lab.withLab(Self.lab) { lab in
            let far = lab.fullnatBackends, near = lab.natBackends
            let snat4 = Set(lab.snatV4), snat6 = Set(lab.snatV6)
            try #require(far.count == 3 && !snat4.isEmpty && !snat6.isEmpty, "lab.sh info: \(lab.info)")
            let port = try #require(Int(try lab.info("fullnat_backend_port")))
            let portRange = try lab.info("snat_ports").split(separator: "-").compactMap { Int($0) }
            try #require(portRange.count == 2, "snat_ports: \(lab.info)")
            let before = try await lab.natStats()
            let clientSide = try await lab.capture("router", try lab.info("router_lb_if"), bothWays: true)
            var backendSide: [Lab.Capture] = []
            for backend in far + near { backendSide.append(try await lab.capture(backend, "eth0", bothWays: true)) }

            // lab.sh up applied `services NAME`: web-fullnat (80 -> 8080, 1:2:3), dns-fullnat and
            // web6-fullnat to be4-be6; web-fullnat-lb1 (8080 -> 80) to be1-be3.
            let bursts = [
                Burst(kind: .http, vip: Self.fullnatVIP4, port: 80, count: 300, backends: far, backendPort: port,
                      weights: Self.webWeights, clients: snat4),
                Burst(kind: .udp, vip: Self.fullnatVIP4, port: 53, count: 300, backends: far, backendPort: 53,
                      weights: [1, 1, 1], clients: snat4),
                Burst(kind: .http, vip: Self.fullnatVIP6, port: 80, count: 60, backends: far, backendPort: port, clients: snat6),
                Burst(kind: .http, vip: Self.fullnatVIP4, port: port, count: 60, backends: near, backendPort: 80, clients: snat4),
            ]
            let started = ContinuousClock.now
            for burst in bursts { try await check(burst, in: lab, mode: "fullnat") }
            let elapsed = ContinuousClock.now - started
            let after = try await lab.natStats()

            let created = (after.natCreated ?? 0) - (before.natCreated ?? 0)
            let replies = (after.natReplies ?? 0) - (before.natReplies ?? 0)
            let sentBack = (after.verdicts["tx"] ?? 0) - (before.verdicts["tx"] ?? 0)
            let redirected = (after.verdicts["redirect"] ?? 0) - (before.verdicts["redirect"] ?? 0)
            let sent = sentBack + redirected
            #expect(after.natCreated != nil && after.natReplies != nil, "lbctl stats --json has nat_created and nat_replies")
            #expect(created >= 420, "nat_created grew by \(created), want at least the 420 TCP connections")
            #expect(replies >= 720, "nat_replies grew by \(replies), want at least one per request (720)")
            // be4-be6 both ways out of lb0, where it came in (XDP_TX, or a redirect to the same
            // interface); be1-be3 across lb1 (redirects only).
            #expect(sent >= 2 * 720, "tx +\(sentBack) and redirect +\(redirected) verdicts: fewer than both ways for 720 exchanges")
            #expect(redirected >= 2 * 60, "redirect verdicts grew by \(redirected): full NAT across lb1 both ways for 60")
            for problem in Self.dropProblems(before, after) { Issue.record("fullnat: \(problem)") }

            let frames = try await finish([clientSide] + backendSide, lab: lab)
            let clients: Set<String> = [Self.clientV4, Self.clientV6], vips: Set<String> = [Self.fullnatVIP4, Self.fullnatVIP6]
            let farAddresses = try addresses(lab, far).union(try addresses(lab, far, v6: true))
            // One-arm: lb0's link carries the client's flows and, translated, be4-be6's.
            var stray = Self.stray(frames[0], between: clients, and: vips)
            stray = stray.filter { pair, _ in
                let parts = pair.components(separatedBy: " > ")
                return !(Set(parts).isSubset(of: snat4.union(snat6).union(farAddresses))
                         && parts.contains(where: { snat4.contains($0) || snat6.contains($0) }))
            }
            #expect(stray.isEmpty, "client side (router r-lb): TCP/UDP other than client <-> VIP and SNAT <-> be4-be6: \(stray)")
            #expect(Self.count(frames[0], from: vips, to: clients) >= 720, "client side: too few frames from the VIPs to the client")

            var snatSeen: [String: Int] = [:], outOfRange: [String] = [], wrongPort: [String] = []
            for (backend, received) in zip(far + near, frames.dropFirst()) {
                let own = try addresses(lab, [backend]).union(try addresses(lab, [backend], v6: true))
                let strayHere = Self.stray(received, between: snat4.union(snat6), and: own)
                #expect(strayHere.isEmpty, "\(backend) eth0: TCP/UDP other than SNAT <-> \(backend): \(strayHere)")
                for frame in received {
                    guard let flow = IPFlow(frame: frame), own.contains(flow.destination.description) else { continue }
                    snatSeen["\(flow.source)", default: 0] += 1
                    if !(portRange[0]...portRange[1]).contains(Int(flow.sourcePort)) { outOfRange.append(flow.description) }
                    let expected: Set<Int> = near.contains(backend) ? [80] : [port, 53]
                    if !expected.contains(Int(flow.destinationPort)) { wrongPort.append(flow.description) }
                }
                #expect(Self.count(received, from: snat4.union(snat6), to: own) > 0, "\(backend) received nothing from a SNAT address")
            }
            #expect(outOfRange.isEmpty, "source ports outside snat_ports \(portRange): \(outOfRange.prefix(5)) (\(outOfRange.count))")
            #expect(wrongPort.isEmpty, "frames to a port the service does not translate to: \(wrongPort.prefix(5))")
            print("fullnat: 720 exchanges in \(elapsed); nat_created +\(created), nat_replies +\(replies), tx +\(sentBack), redirect +\(redirected); frames per SNAT source at the backends \(snatSeen)")
        }
    }

    // MARK: long-lived connections

    struct Mode: Sendable, CustomTestStringConvertible {
        var forwarding: String
        var vip: String
        /// nat: be1-be3 (behind the balancer); fullnat: be4-be6 (behind the router).
        var near: Bool
        var testDescription: String { forwarding }
        func backends(_ lab: Lab) -> [String] { near ? lab.natBackends : lab.fullnatBackends }
    }
    static let modes = [Mode(forwarding: "nat", vip: NATLabTests.vip4, near: true),
                        Mode(forwarding: "fullnat", vip: NATLabTests.fullnatVIP4, near: false)]

    @Test("12 long-lived TCP connections survive a grown backend set, the removal of a backend they do not use and the drain (weight 0) of one they do and then its removal; new connections avoid the removed and the drained", arguments: NATLabTests.modes)
    func sessionsSurviveChangeAndDrain(_ mode: Mode) async throws {
        try await Lab.withLab(Self.lab) { lab in
            let group = mode.backends(lab)
            let (a, b, c) = (group[0], group[1], group[2])
            func echo(_ backends: [Lab.NATBackend]) -> [Lab.NATService] {
                [.init("echo", vip: mode.vip, port: 7, forwarding: mode.forwarding, backends: backends)]
            }
            try await lab.applyNAT(echo([.init(a), .init(b)]))
            try await lab.withSessions(mode.vip, 7, count: 12, interval: 0.2) { sessions in
                let opened = try await sessions.wait { $0.opened == 12 && $0.rounds >= 3 }
                try #require(opened?.opened == 12 && opened?.broken == 0, "\(mode.forwarding): \(opened?.summary ?? "no state"); \(sessions.output)")
                let placed = opened!.perConnection.map(\.backend)
                try #require(placed.contains(a) && placed.contains(b), "12 connections over \(a) and \(b): \(opened!.summary)")

                func steady(_ step: String) async throws {
                    let state = try await sessions.waitRounds(3)
                    #expect(state?.broken == 0 && state?.alive == 12, "\(mode.forwarding), after \(step): \(state?.summary ?? "no state")")
                    #expect(state?.perConnection.map(\.backend) == placed, "\(mode.forwarding), after \(step): a connection moved")
                }
                func fresh(avoiding backend: String, _ step: String) async throws {
                    let result = try await lab.client(.echo, mode.vip, 7, count: 30)
                    #expect(result.ok == 30 && result.backends[backend] == nil, "new connections \(step): \(result.output)")
                }
                try await lab.applyNAT(echo([.init(a), .init(b), .init(c)]))
                try await steady("growing the set to \(a), \(b), \(c)")
                try await lab.applyNAT(echo([.init(a), .init(b)]))
                try await steady("removing \(c) again")
                try await fresh(avoiding: c, "once \(c) is removed")

                try await lab.applyNAT(echo([.init(a, weight: 0), .init(b)]))
                try await steady("draining \(a)")
                let address = try lab.info("\(a)_v4")
                let echoStatus = try await lab.status().service("echo")
                let drained = echoStatus?.backends.first { $0.address == address }
                #expect(drained?.state == "drained", "\(a) in lbctl status: \(String(describing: echoStatus?.backends))")
                try await fresh(avoiding: a, "while \(a) is drained")

                // Removed: its established flows stay on it, both ways (its reply bit stays set
                // while its slot holds it), and new flows avoid it.
                let before = try await lab.natStats()
                try await lab.applyNAT(echo([.init(b)]))
                let state = try #require(try await sessions.waitRounds(3), "no state")
                let after = try await lab.natStats()
                let onA = state.perConnection.enumerated().filter { placed[$0.offset] == a }.map(\.element)
                let others = state.perConnection.enumerated().filter { placed[$0.offset] != a }.map(\.element)
                #expect(others.allSatisfy { $0.failed == 0 && !$0.closed }, "\(mode.forwarding): connections to \(b) after removing \(a): \(state.summary)")
                #expect(!onA.isEmpty && onA.allSatisfy { $0.failed == 0 }, "\(mode.forwarding): \(onA.filter { $0.failed > 0 }.count) of \(onA.count) connections to \(a) broke once it was removed; pass verdicts +\((after.verdicts["pass"] ?? 0) - (before.verdicts["pass"] ?? 0)), nat_replies +\((after.natReplies ?? 0) - (before.natReplies ?? 0))")
                try await fresh(avoiding: a, "once \(a) is removed")

                let status = await sessions.stop()
                let final = sessions.state()
                let finalOthers = (final?.perConnection ?? []).enumerated().filter { placed[$0.offset] != a }.map(\.element)
                #expect(status == 0 && finalOthers.allSatisfy { $0.failed == 0 }, "\(mode.forwarding): exit \(status), \(final?.summary ?? "no state")")
                print("\(mode.forwarding) sessions: \(final?.summary ?? "-"); \(onA.count) on \(a)")
            }
        }
    }

    // MARK: the agent

    @Test("kill -9 of the agent under load: nat and fullnat HTTP and UDP bursts across the kill and the restart all answered, and long-lived connections of both modes unbroken (the pinned maps keep translating)")
    func killNineUnderLoad() async throws {
        try await Lab.withLab(Self.lab) { lab in
            let agent = try await LabAgent(lab: lab)
            let yaml = try String(contentsOfFile: lab.directory + "/services.yaml", encoding: .utf8)
            let put = try await agent.request("PUT", "/v1/services", body: yaml, token: agent.token)
            try #require(put.status == 200, "\(put)")
            let before = try await lab.natStats()

            try await lab.withSessions(Self.vip4, 7, count: 8, interval: 0.2) { natSessions in
                try await lab.withSessions(Self.fullnatVIP4, 7, count: 8, interval: 0.2) { fullSessions in
                    for sessions in [natSessions, fullSessions] {
                        let state = try await sessions.wait { $0.opened == 8 && $0.rounds >= 2 }
                        try #require(state?.opened == 8 && state?.broken == 0, "sessions: \(state?.summary ?? "no state"); \(sessions.output)")
                    }
                    let restarted = LabAgentTests.Flag()
                    async let natHTTP = LabAgentTests.burstsUntil(restarted) { try await lab.client(.http, Self.vip4, 80, count: 60) }
                    async let fullHTTP = LabAgentTests.burstsUntil(restarted) { try await lab.client(.http, Self.fullnatVIP4, 80, count: 60) }
                    async let natUDP = LabAgentTests.burstsUntil(restarted) { try await lab.client(.udp, Self.vip4, 53, count: 40) }
                    async let fullUDP = LabAgentTests.burstsUntil(restarted) { try await lab.client(.udp, Self.fullnatVIP4, 53, count: 40) }
                    /// Until the data plane has translated `count` more replies than now, or 10 s.
                    func replies(_ count: Int) async throws -> Bool {
                        let from = try await lab.natStats().natReplies ?? 0
                        let deadline = ContinuousClock.now + .seconds(10)
                        while try await (lab.natStats().natReplies ?? 0) < from + count, ContinuousClock.now < deadline {
                            try await Task.sleep(for: .milliseconds(20))
                        }
                        return try await (lab.natStats().natReplies ?? 0) >= from + count
                    }
                    let start = ContinuousClock.now
                    while restarted.batchesStarted < 4 && ContinuousClock.now - start < .seconds(10) {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    // Every client is under way and traffic is being translated before the kill.
                    try #require(try await replies(100), "no traffic before the kill")
                    let killedAt = Date()
                    let status = await agent.kill()
                    #expect(status == SIGKILL, "the agent died of SIGKILL (status \(String(describing: status)))")
                    // The clients keep going while no agent runs, translated by the pinned maps
                    // alone; then the same config again.
                    try #require(try await replies(200), "nothing was translated while the agent was dead")
                    try await agent.start()
                    restarted.set()
                    let runs = [("nat HTTP", try await natHTTP), ("fullnat HTTP", try await fullHTTP),
                                ("nat UDP", try await natUDP), ("fullnat UDP", try await fullUDP)]
                    for (kind, run) in runs {
                        #expect(run.firstStart < killedAt && run.batches >= 2, "\(kind) ran across the kill: \(run.batches) batches")
                        #expect(run.sent > 0 && run.ok == run.sent && run.failed == 0,
                                "\(kind): \(run.ok) of \(run.sent) answered\n\(run.failures.joined(separator: "\n"))")
                    }
                    for (name, sessions) in [("nat", natSessions), ("fullnat", fullSessions)] {
                        let state = try await sessions.waitRounds(3)
                        #expect(state?.broken == 0 && state?.alive == 8, "\(name) sessions after the restart: \(state?.summary ?? "no state")")
                    }
                    print("kill -9 under load: \(runs.map { "\($0.0) \($0.1.ok)/\($0.1.sent) in \($0.1.batches) batches" })")
                }
            }
            let after = try await lab.natStats()
            for problem in Self.dropProblems(before, after) { Issue.record("across the kill: \(problem)") }
        }
    }

    // MARK: SNAT exhaustion

    @Test("a SNAT range of 4 ports: 3 long-lived connections hold 3, a burst of 20 new connections at once gets at most the last one, the rest are dropped and counted as snat_exhausted; the long-lived ones never notice")
    func tinySNATRange() async throws {
        try await Lab.withLab(Self.lab) { lab in
            let backend = lab.fullnatBackends[0]
            let snat = [lab.snatV4[0]], ports = 40000...40003
            try await lab.applyNAT([.init("echo", vip: Self.fullnatVIP4, port: 7, forwarding: "fullnat", backends: [.init(backend)])],
                                   snatV4: snat, snatPorts: "\(ports.lowerBound)-\(ports.upperBound)")
            try await lab.withSessions(Self.fullnatVIP4, 7, count: 3, interval: 0.2) { sessions in
                let opened = try await sessions.wait { $0.opened == 3 && $0.rounds >= 3 }
                try #require(opened?.opened == 3 && opened?.broken == 0, "\(opened?.summary ?? "no state"); \(sessions.output)")
                let before = try await lab.natStats()

                let burst = try await lab.parallelClient(.echo, Self.fullnatVIP4, 7, count: 20, timeout: 3)
                let after = try await lab.natStats()
                let exhausted = after.drops("snat_exhausted") - before.drops("snat_exhausted")
                #expect(burst.ok <= ports.count - 3, "\(burst.ok) of the burst got through with \(ports.count - 3) port free: \(burst.output)")
                #expect(burst.failed >= 20 - (ports.count - 3), "\(burst.failed) of the burst failed: \(burst.output)")
                #expect(exhausted >= burst.failed, "drops.snat_exhausted grew by \(exhausted) for \(burst.failed) connections refused (each SYN tried at least once)")
                #expect(after.drops.keys.contains("snat_exhausted"), "lbctl stats --json names the drop reason snat_exhausted: \(after.drops)")

                let state = try await sessions.waitRounds(3)
                #expect(state?.broken == 0 && state?.alive == 3, "the long-lived connections during and after the burst: \(state?.summary ?? "no state")")
                let status = await sessions.stop()
                #expect(status == 0 && sessions.state()?.broken == 0, "sessions exit \(status): \(sessions.state()?.summary ?? "-")")
                print("tiny SNAT range: burst ok \(burst.ok), failed \(burst.failed), snat_exhausted +\(exhausted), snat_collisions \(String(describing: after.snatCollisions))")
            }
        }
    }
}
