// When a flow is written into the connection table, through the real program: a SYN is
// placed by Maglev and writes nothing; the flow's next packet records it; a UDP flow's
// first packet is held in sl_ct_unconfirmed and its second records it; what a table switch
// between the two does; that sync reports a flow when it is recorded; and that floods of
// spoofed SYNs or of one-packet UDP flows leave every established flow where it was.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private func services(_ v4: [String], _ v6: [String]) -> String {
    let list = { (addresses: [String]) in addresses.map { "{address: \"\($0)\"}" }.joined(separator: ", ") }
    return """
        node: { source_v4: 192.0.2.10, source_v6: "2001:db8:ffff::10", maglev_table_size: 4099 }
        services:
          - { name: web, vip: 198.51.100.10, port: 80, protocol: tcp, backends: [\(list(v4))] }
          - { name: web6, vip: "2001:db8::10", port: 80, protocol: tcp, backends: [\(list(v6))] }
          - { name: dns, vip: 198.51.100.10, port: 53, protocol: udp, backends: [\(list(v4))] }
        """
}

private let four = services((1...4).map { "10.3.0.\($0)" }, (1...4).map { "2001:db8:5::\($0)" })
/// Two more backends: Maglev moves about a third of the flows.
private let six = services((1...6).map { "10.3.0.\($0)" }, (1...6).map { "2001:db8:5::\($0)" })

/// One client flow to a VIP.
private struct Flow: Hashable {
    var client: String
    var port: UInt16
    var vip: String
    var vipPort: UInt16 = 80
    var proto: L4Protocol = .tcp

    func packet(_ flags: Set<TCPFlag> = [.syn], payload: [UInt8] = []) -> [UInt8] {
        proto == .tcp ? PacketBuilder().tcp(from: client, port, to: vip, vipPort, flags: flags, payload: payload)
                      : PacketBuilder().udp(from: client, port, to: vip, vipPort, payload: payload)
    }

    var ip: IPFlow { IPFlow(frame: packet())! }
    var key: sl_flow_key { flowKey(proto, from: IPAddress(client)!, port, to: IPAddress(vip)!, vipPort) }
}

private let tcpFlows: [Flow] = (0..<200).flatMap { i in
    [Flow(client: "198.18.\(i / 256).\(i % 256)", port: UInt16(20_000 + i), vip: "198.51.100.10"),
     Flow(client: "2001:db8:c::\(String(i + 1, radix: 16))", port: UInt16(30_000 + i), vip: "2001:db8::10")]
}

@Suite(requiresRoot)
struct FlowRecordingTests {
    private func send(_ frame: [UInt8], through lb: TestDataplane, sourceLocation: SourceLocation = #_sourceLocation) throws -> IPAddress {
        let (verdict, output) = try lb.run(frame)
        try #require(verdict == XDPVerdict.tx.rawValue, "verdict \(verdict)", sourceLocation: sourceLocation)
        return try TunnelFrame(output).outerDestination
    }

    private func entry(_ flow: Flow, in lb: TestDataplane) throws -> sl_ct_entry? {
        try lb.dataplane[.conntrack].lookup(flow.key, as: sl_ct_entry.self)
    }

    private func held(_ flow: Flow, in lb: TestDataplane) throws -> sl_ct_entry? {
        try lb.dataplane[.ctUnconfirmed].lookup(flow.key, as: sl_ct_entry.self)
    }

    /// The backend slot id of `address` in the applied state, for TCP's services or, with
    /// `proto`, UDP's.
    private func backendID(_ address: IPAddress, in lb: TestDataplane, proto: L4Protocol = .tcp) throws -> UInt32 {
        try #require(try lb.appliedState().services.filter { $0.service.proto == proto }.flatMap(\.backends)
            .first { $0.address == address }?.id)
    }

    @Test func aSYNLeavesNoEntryAndTheNextPacketRecordsTheFlowOnTheBackendMaglevGaveTheSYN() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        var before = try lb.nodeStats()
        for flow in tcpFlows {
            let expected = try #require(lb.model.backend(for: flow.ip)?.address)
            #expect(try send(flow.packet(), through: lb) == expected, "\(flow.ip): the SYN placed by Maglev")
            #expect(try send(flow.packet(), through: lb) == expected, "\(flow.ip): its retransmission too")
            #expect(try entry(flow, in: lb) == nil, "\(flow.ip): a SYN writes no entry")
        }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, packets: UInt64(2 * tcpFlows.count)))
        #expect(try lb.dataplane[.conntrack].countEntries(chunk: 4096) == 0)

        before = try lb.nodeStats()
        for flow in tcpFlows {
            let expected = try #require(lb.model.backend(for: flow.ip)?.address)
            #expect(try send(flow.packet([.ack]), through: lb) == expected, "\(flow.ip): the handshake's ACK")
            let recorded = try #require(try entry(flow, in: lb), "\(flow.ip): the ACK records the flow")
            #expect(recorded.backend_id == (try backendID(expected, in: lb)))
            #expect(recorded.tcp_seen == UInt8(SL_TCP_SEEN_ACK.rawValue), "the client's SYN was never recorded")
        }
        #expect(try lb.nodeStats() - before ==
                NodeStats(.tx, newFlows: UInt64(tcpFlows.count), ctMisses: UInt64(tcpFlows.count), packets: UInt64(tcpFlows.count)))

        before = try lb.nodeStats()
        for flow in tcpFlows { _ = try send(flow.packet([.ack, .psh], payload: [1]), through: lb) }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: UInt64(tcpFlows.count), packets: UInt64(tcpFlows.count)))
    }

    /// The documented cost of not recording the SYN: a flow whose SYN and first ACK straddle
    /// a table switch is recorded where the new table puts it. For the flows Maglev moved that
    /// is another backend than the SYN's (it answers the ACK with a reset, the client
    /// connects again); every other flow is recorded where its SYN went.
    @Test func aTableSwitchBetweenSYNAndACKRecordsTheFlowWhereTheNewTablePutsIt() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        var synBackend: [Flow: IPAddress] = [:]
        for flow in tcpFlows { synBackend[flow] = try send(flow.packet(), through: lb) }
        try lb.apply(yaml: six)
        let moved = tcpFlows.filter { lb.model.backend(for: $0.ip)?.address != synBackend[$0] }
        try #require(!moved.isEmpty && moved.count < tcpFlows.count / 2, "\(moved.count) of \(tcpFlows.count) flows moved")

        var recorded: [Flow: IPAddress] = [:]
        for flow in tcpFlows {
            let now = try #require(lb.model.backend(for: flow.ip)?.address)
            #expect(try send(flow.packet([.ack]), through: lb) == now, "\(flow.ip): the ACK follows the new table")
            #expect(try entry(flow, in: lb)?.backend_id == (try backendID(now, in: lb)), "\(flow.ip) recorded there")
            recorded[flow] = now
        }
        // Recorded now: switching back moves none of them.
        try lb.apply(yaml: four)
        for flow in moved {
            #expect(lb.model.backend(for: flow.ip)?.address == synBackend[flow])
            #expect(try send(flow.packet([.ack]), through: lb) == recorded[flow], "\(flow.ip) stays where it was recorded")
        }
    }

    /// The documented limit of a SYN that writes nothing, not even a lookup: a new
    /// connection on the 5-tuple of an earlier one whose entry is still in the table is
    /// placed by Maglev for its SYN but follows that entry from its ACK on. It matters
    /// only where the table moved the 5-tuple since; once the entry is gone (aged out),
    /// the new connection is recorded where its SYN went.
    @Test func aSYNThatReusesAFiveTupleStillInTheTableWritesNothingAndItsACKFollowsTheEntry() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        for flow in tcpFlows {
            _ = try send(flow.packet(), through: lb)
            _ = try send(flow.packet([.ack]), through: lb)
        }
        var recorded: [Flow: IPAddress] = [:]
        for flow in tcpFlows { recorded[flow] = lb.model.backend(for: flow.ip)?.address }
        try lb.apply(yaml: six)
        let moved = tcpFlows.filter { lb.model.backend(for: $0.ip)?.address != recorded[$0] }
        try #require(!moved.isEmpty)

        for flow in moved.prefix(20) {
            let now = try #require(lb.model.backend(for: flow.ip)?.address)
            let old = try #require(try entry(flow, in: lb))
            #expect(try send(flow.packet(), through: lb) == now, "\(flow.ip): the SYN follows the table")
            let after = try #require(try entry(flow, in: lb))
            #expect(withUnsafeBytes(of: after) { Array($0) } == withUnsafeBytes(of: old) { Array($0) }, "the SYN left the entry as it was")
            #expect(try send(flow.packet([.ack]), through: lb) == recorded[flow], "\(flow.ip): the ACK follows the entry")

            #expect(try lb.dataplane[.conntrack].delete(flow.key), "the entry ages out")
            #expect(try send(flow.packet(), through: lb) == now)
            #expect(try send(flow.packet([.ack]), through: lb) == now, "\(flow.ip): recorded where its SYN went")
            #expect(try entry(flow, in: lb)?.backend_id == (try backendID(now, in: lb)))
        }
    }

    @Test func syncReportsAFlowWhenItIsRecordedNotWhenItsSYNOrItsFirstUDPPacketIsPlaced() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        let sync = try ConntrackSync(dataplane: lb.dataplane)
        try sync.setReporting(true)
        let flows = Array(tcpFlows.prefix(20))
        let udp = Flow(client: "198.18.9.9", port: 5353, vip: "198.51.100.10", vipPort: 53, proto: .udp)
        for flow in flows { _ = try send(flow.packet(), through: lb) }
        _ = try send(udp.packet(payload: [1]), through: lb)
        #expect(try sync.newFlows().isEmpty, "SYNs and a UDP flow's first packet are not reported")

        for flow in flows { _ = try send(flow.packet([.ack]), through: lb) }
        _ = try send(udp.packet(payload: [2]), through: lb)
        let reported = try sync.newFlows()
        #expect(reported.count == flows.count + 1, "\(reported)")
        for (flow, record) in zip(flows, reported) {
            #expect(record.source == IPAddress(flow.client) && UInt16(bigEndian: record.sourcePort) == flow.port)
            #expect(record.backend == lb.model.backend(for: flow.ip)?.address)
        }
        #expect(reported.last?.proto == 17 && reported.last?.source == IPAddress(udp.client))

        for flow in flows { _ = try send(flow.packet([.ack, .psh], payload: [3]), through: lb) }
        _ = try send(udp.packet(payload: [3]), through: lb)
        #expect(try sync.newFlows().isEmpty, "established flows are not reported again")
    }

    @Test func aUDPFlowIsHeldByItsFirstPacketAndRecordedByItsSecondOnTheSameBackendAcrossATableSwitch() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        let flows = (0..<200).map { Flow(client: "198.18.7.\($0 % 250)", port: UInt16(10_000 + $0), vip: "198.51.100.10", vipPort: 53, proto: .udp) }
        var first: [Flow: IPAddress] = [:]
        var before = try lb.nodeStats()
        for flow in flows {
            first[flow] = try send(flow.packet(payload: [1]), through: lb)
            #expect(first[flow] == lb.model.backend(for: flow.ip)?.address)
            #expect(try entry(flow, in: lb) == nil && (try held(flow, in: lb)) != nil, "\(flow.ip) held, not recorded")
        }
        #expect(try lb.nodeStats() - before ==
                NodeStats(.tx, ctMisses: UInt64(flows.count), ctUnconfirmed: UInt64(flows.count), packets: UInt64(flows.count)))

        try lb.apply(yaml: six)
        let moved = flows.filter { lb.model.backend(for: $0.ip)?.address != first[$0] }
        try #require(!moved.isEmpty, "the switch moves some of the held flows")
        before = try lb.nodeStats()
        for flow in flows {
            #expect(try send(flow.packet(payload: [2]), through: lb) == first[flow], "\(flow.ip): the second packet goes where the first went")
            #expect(try entry(flow, in: lb)?.backend_id == (try backendID(first[flow]!, in: lb, proto: .udp)), "\(flow.ip) recorded there")
        }
        #expect(try lb.nodeStats() - before ==
                NodeStats(.tx, newFlows: UInt64(flows.count), ctMisses: UInt64(flows.count), packets: UInt64(flows.count)))

        before = try lb.nodeStats()
        for flow in flows { #expect(try send(flow.packet(payload: [3]), through: lb) == first[flow]) }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: UInt64(flows.count), packets: UInt64(flows.count)))
    }

    @Test func aHeldUDPFlowOfAServiceWhoseSlotWasReusedIsNotTrusted() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        let flow = Flow(client: "198.18.7.1", port: 10_000, vip: "198.51.100.10", vipPort: 53, proto: .udp)
        _ = try send(flow.packet(payload: [1]), through: lb)
        let slot = try #require(try held(flow, in: lb)).service_id
        // The service goes and comes back: its slot's epoch moves on.
        try lb.apply(yaml: "node: { source_v4: 192.0.2.10, maglev_table_size: 4099 }\nservices: []\n")
        try lb.apply(yaml: four)
        let before = try lb.nodeStats()
        _ = try send(flow.packet(payload: [2]), through: lb)
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctMisses: 1, ctUnconfirmed: 1), "held again (slot \(slot)), not recorded")
        #expect(try entry(flow, in: lb) == nil)
    }

    /// 2^20 SYNs from spoofed sources, sixteen times the test table's capacity, against a
    /// table of established flows: had a SYN written an entry, the flood would have evicted
    /// them all.
    @Test func aFloodOfSpoofedSYNsLeavesEveryEstablishedEntryInPlace() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        for flow in tcpFlows {
            _ = try send(flow.packet(), through: lb)
            _ = try send(flow.packet([.ack]), through: lb)
        }
        let established = try lb.dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self)
        try #require(established.count == tcpFlows.count)
        try #require(TestDataplane.conntrackSize * 16 <= 1 << 20)

        let count = try flood(lb, PacketBuilder().tcp(from: "203.0.113.1", 1024, to: "198.51.100.10", 80), packets: 1 << 20)
        #expect(count.tx == 1 << 20, "every spoofed SYN was placed and sent on: \(count)")

        let after = try lb.dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self)
        #expect(after.count == established.count, "\(after.count) entries after the flood")
        let byKey = { (entries: [(sl_flow_key, sl_ct_entry)]) in
            Dictionary(uniqueKeysWithValues: entries.map { entry in (withUnsafeBytes(of: entry.0) { Array($0) }, entry.1.backend_id) })
        }
        #expect(byKey(after) == byKey(established), "every entry as it was, on its backend")
        for flow in tcpFlows.prefix(50) {
            #expect(try send(flow.packet([.ack, .psh], payload: [1]), through: lb) == lb.model.backend(for: flow.ip)?.address)
        }
    }

    /// The same against UDP: 2^18 one-packet flows (four times sl_ct_unconfirmed's capacity)
    /// churn the table of held flows and leave sl_conntrack's confirmed flows alone.
    @Test func aFloodOfOnePacketUDPFlowsLeavesEveryConfirmedFlowInPlace() async throws {
        let lb = try await TestDataplane.make(yaml: four)
        let flows = (0..<300).map { Flow(client: "198.18.8.\($0 % 250)", port: UInt16(10_000 + $0), vip: "198.51.100.10", vipPort: 53, proto: .udp) }
        for flow in flows {
            _ = try send(flow.packet(payload: [1]), through: lb)
            _ = try send(flow.packet(payload: [2]), through: lb)
        }
        try #require(try lb.dataplane[.conntrack].countEntries(chunk: 4096) == flows.count)
        let capacity = lb.dataplane[.ctUnconfirmed].info.maxEntries
        let packets = UInt32(4 * capacity)

        let before = try lb.nodeStats()
        let count = try flood(lb, PacketBuilder().udp(from: "203.0.113.1", 1024, to: "198.51.100.10", 53), packets: packets)
        #expect(count.tx == packets, "\(count)")
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctMisses: UInt64(packets), ctUnconfirmed: UInt64(packets), packets: UInt64(packets)))
        #expect(try lb.dataplane[.conntrack].countEntries(chunk: 4096) == flows.count, "no held flow reached sl_conntrack")
        for flow in flows {
            let before = try lb.nodeStats()
            _ = try send(flow.packet(payload: [3]), through: lb)
            #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: 1), "\(flow.ip) still known")
        }
    }

    /// Runs `packets` copies of the IPv4 frame `template`, each from another source address
    /// and port, one BPF_PROG_TEST_RUN each. Returns the verdicts counted.
    private func flood(_ lb: TestDataplane, _ template: [UInt8], packets: UInt32) throws -> (tx: UInt32, other: UInt32) {
        var frame = template
        var tx: UInt32 = 0, other: UInt32 = 0
        let sourceOffset = 14 + 12, portOffset = 14 + 20
        for i in 0..<packets {
            // 203.0.0.0/8 plus i's top bits, port from its low bits: all distinct.
            let address = 0xcb00_0000 | (i >> 4), port = UInt16(1024 + (i & 0xf))
            frame[sourceOffset + 1] = UInt8(truncatingIfNeeded: address >> 16)
            frame[sourceOffset + 2] = UInt8(truncatingIfNeeded: address >> 8)
            frame[sourceOffset + 3] = UInt8(truncatingIfNeeded: address)
            frame[portOffset] = UInt8(port >> 8)
            frame[portOffset + 1] = UInt8(truncatingIfNeeded: port)
            let result = try lb.dataplane.program.testRun(frame, outputCapacity: 0)
            if result.verdict == XDPVerdict.tx.rawValue { tx += 1 } else { other += 1 }
        }
        return (tx, other)
    }
}
