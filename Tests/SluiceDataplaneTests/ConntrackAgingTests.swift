// Ageing the connection table through the real program: a forwarded packet stamps its entry
// with the agent's clock (sl_clock), and a sweep deletes what has been idle past its
// protocol's timeout, keeps the rest, and names this node's flows seen since a time.

import CSluice
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private let services = webAndDNS(webBackends: "{address: 10.1.0.21}, {address: 10.1.0.22}")

@Suite(requiresRoot)
struct ConntrackAgingTests {
    private func entry(_ lb: TestDataplane, from client: String) throws -> sl_ct_entry? {
        try lb.dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self)
            .first { IPAddress(words: $0.0.src, family: $0.0.family) == IPAddress(client) }?.1
    }

    @Test func forwardingStampsTheEntryWithTheAgentsClock() async throws {
        let lb = try await TestDataplane.make(yaml: services)
        let aging = lb.dataplane
        try aging.tickClock(100)
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.0.1", 40000, to: "198.51.100.10", 80))
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.0.1", 40000, to: "198.51.100.10", 80, flags: [.ack]))
        #expect(try entry(lb, from: "198.18.0.1")?.last_seen == 100, "a recorded flow is stamped")
        try aging.tickClock(107)
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.0.1", 40000, to: "198.51.100.10", 80, flags: [.ack]))
        #expect(try entry(lb, from: "198.18.0.1")?.last_seen == 107, "a conntrack hit stamps it again")
    }

    @Test func aSweepDeletesWhatWasIdlePastItsProtocolsTimeoutOnly() async throws {
        let lb = try await TestDataplane.make(yaml: services)
        let aging = lb.dataplane
        try aging.tickClock(1000)
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.1.1", 40000, to: "198.51.100.10", 80))
        // The handshake's ACK: established, so the TCP timeout applies, not the half-open one.
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.1.1", 40000, to: "198.51.100.10", 80, flags: [.ack]))
        // Two datagrams each: the second records the flow.
        for _ in 0..<2 { _ = try lb.run(PacketBuilder().udp(from: "198.18.1.2", 5353, to: "198.51.100.10", 53)) }
        try aging.tickClock(1100)
        for _ in 0..<2 { _ = try lb.run(PacketBuilder().udp(from: "198.18.1.3", 5353, to: "198.51.100.10", 53)) }

        let timeouts = IdleTimeouts(tcpSeconds: 300, udpSeconds: 60)
        let listed = try aging.sweepConntrack(now: 1120, timeouts: timeouts, expire: false)
        #expect(listed.entries == 3 && listed.expired == 0, "without expire nothing goes")

        // At 1120 the UDP flow stamped 1000 is 120 s idle (> 60): gone. The TCP one (120 s < 300)
        // and the UDP one stamped 1100 (20 s) stay.
        let swept = try aging.sweepConntrack(now: 1120, timeouts: timeouts, expire: true, activeSince: 1100)
        #expect(swept.expired == 1 && swept.entries == 2, "\(swept)")
        #expect(try entry(lb, from: "198.18.1.2") == nil)
        #expect(try entry(lb, from: "198.18.1.1") != nil && (try entry(lb, from: "198.18.1.3")) != nil)
        #expect(swept.active.map(\.source) == [IPAddress("198.18.1.3")!], "only the flow seen since 1100 is active")

        // The expired flow's next datagram is a new flow again: a conntrack miss, held (its
        // first packet's hold is 100 s old, past SL_CT_UNCONFIRMED_TTL), and the one after
        // records it.
        var before = try lb.nodeStats()
        _ = try lb.run(PacketBuilder().udp(from: "198.18.1.2", 5353, to: "198.51.100.10", 53))
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctMisses: 1, ctUnconfirmed: 1))
        before = try lb.nodeStats()
        _ = try lb.run(PacketBuilder().udp(from: "198.18.1.2", 5353, to: "198.51.100.10", 53))
        #expect(try lb.nodeStats() - before == NodeStats(.tx, newFlows: 1, ctMisses: 1))
    }

    @Test func aPeersRecordIsStampedAndARefreshOfALocalFlowKeepsItYoung() async throws {
        let lb = try await TestDataplane.make(yaml: services)
        let aging = lb.dataplane
        let sync = try ConntrackSync(dataplane: lb.dataplane)
        try aging.tickClock(500)
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.2.1", 40000, to: "198.51.100.10", 80))
        _ = try lb.run(PacketBuilder().tcp(from: "198.18.2.1", 40000, to: "198.51.100.10", 80, flags: [.ack]))
        let local = try #require(try entry(lb, from: "198.18.2.1"))
        try aging.tickClock(900)
        let vip = IPAddress("198.51.100.10")!, port = UInt16(80).bigEndian
        let records = [
            FlowRecord(source: IPAddress("198.18.2.1")!, destination: vip, sourcePort: UInt16(40000).bigEndian,
                       destinationPort: port, proto: 6, backend: IPAddress("10.1.0.22")!),
            FlowRecord(source: IPAddress("198.18.2.2")!, destination: vip, sourcePort: UInt16(40000).bigEndian,
                       destinationPort: port, proto: 6, backend: IPAddress("10.1.0.21")!),
        ]
        let result = sync.insert(records, origin: 1)
        #expect(result.applied == 1 && result.rejected == [.localNewer: 1])
        let refreshed = try #require(try entry(lb, from: "198.18.2.1"))
        #expect(refreshed.last_seen == 900 && refreshed.backend_id == local.backend_id && refreshed.origin == 0,
                "the local entry keeps its backend and origin, and is young again")
        #expect(try entry(lb, from: "198.18.2.2")?.last_seen == 900, "a peer's record is stamped on arrival")
    }
}
