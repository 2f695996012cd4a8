// Ageing by TCP state and NAT flows as units, on a fake clock: entries are written straight
// into the real pinned sl_conntrack and sl_nat (as the data plane would leave them), a sweep
// runs at a chosen `now`, and the test checks what is left in both tables; then what
// `Dataplane.flows()` shows of a translation.
import CSluice
import Foundation
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private let now: UInt32 = 10_000
private let timeouts = IdleTimeouts(tcpSeconds: 900, udpSeconds: 300, tcpSynSeconds: 30, tcpClosingSeconds: 60)
private let syn = UInt8(SL_TCP_SEEN_SYN.rawValue), ack = UInt8(SL_TCP_SEEN_ACK.rawValue)
private let fin = UInt8(SL_TCP_SEEN_FIN.rawValue), rst = UInt8(SL_TCP_SEEN_RST.rawValue)
private let vip = IPAddress("198.51.100.20")!

private func key(_ source: IPAddress, _ sport: UInt16, _ destination: IPAddress, _ dport: UInt16, proto: UInt8 = 6) -> sl_flow_key {
    var key = sl_flow_key()
    key.src = source.words
    key.dst = destination.words
    key.sport = sport.bigEndian
    key.dport = dport.bigEndian
    key.proto = proto
    key.family = source.family.rawValue
    return key
}

/// The client's flow from 198.18.0.`n`:40000 to the VIP.
private func client(_ n: Int, proto: UInt8 = 6) -> sl_flow_key {
    key(IPAddress("198.18.0.\(n)")!, 40000, vip, 443, proto: proto)
}

@Suite(requiresRoot)
struct NATAgingTests {
    private func ct(_ lb: TestDataplane, _ key: sl_flow_key, lastSeen: UInt32, seen: UInt8, nat: UInt8 = 0,
                    snatIndex: UInt8 = 0, snatPort: UInt16 = 0) throws {
        var entry = sl_ct_entry()
        entry.backend_id = 0
        entry.last_seen = lastSeen
        entry.tcp_seen = seen
        entry.nat = nat
        entry.snat_index = snatIndex
        entry.snat_port = snatPort.bigEndian
        try lb.dataplane[.conntrack].update(key, entry)
    }

    /// The sl_nat entry of `flow`, keyed by the backend's reply (10.2.0.11:8443 -> `to`:`port`).
    @discardableResult
    private func natEntry(_ lb: TestDataplane, for flow: sl_flow_key, to: IPAddress, port: UInt16, lastSeen: UInt32,
                          seen: UInt8, mode: UInt8 = UInt8(SL_FWD_FULLNAT.rawValue)) throws -> sl_flow_key {
        let reply = key(IPAddress("10.2.0.11")!, 8443, to, port, proto: flow.proto)
        var entry = sl_nat_entry()
        entry.flow = flow
        entry.last_seen = lastSeen
        entry.tcp_seen = seen
        entry.mode = mode
        try lb.dataplane[.nat].update(reply, entry)
        return reply
    }

    private func has(_ lb: TestDataplane, _ key: sl_flow_key) throws -> Bool {
        try lb.dataplane[.conntrack].lookup(key, as: sl_ct_entry.self) != nil
    }

    private func hasNAT(_ lb: TestDataplane, _ key: sl_flow_key) throws -> Bool {
        try lb.dataplane[.nat].lookup(key, as: sl_nat_entry.self) != nil
    }

    @Test func everyFlowAgesByTheTimeoutOfItsTCPState() async throws {
        let lb = try await TestDataplane.make()
        let cases: [(sl_flow_key, UInt32, UInt8, Bool, String)] = [
            (client(1), now - 31, syn, false, "half-open past tcp_syn_timeout"),
            (client(2), now - 29, syn, true, "half-open within tcp_syn_timeout"),
            (client(3), now - 31, syn | ack, true, "established: tcp_idle_timeout"),
            (client(4), now - 61, ack | fin, false, "a FIN: tcp_closing_timeout"),
            (client(5), now - 59, ack | fin, true, "a FIN, within tcp_closing_timeout"),
            (client(6), now - 61, ack | rst, false, "a RST: tcp_closing_timeout"),
            (client(7), now - 61, 0, true, "no flags (a peer's entry): aged as established"),
            (client(8), now - 901, ack, false, "established past tcp_idle_timeout"),
            (client(9, proto: 17), now - 299, 0, true, "UDP within udp_idle_timeout"),
            (client(10, proto: 17), now - 301, 0, false, "UDP past udp_idle_timeout"),
        ]
        for (key, lastSeen, seen, _, _) in cases { try ct(lb, key, lastSeen: lastSeen, seen: seen) }
        let sweep = try lb.dataplane.sweepConntrack(now: now, timeouts: timeouts, expire: true)
        for (key, _, _, kept, what) in cases { #expect(try has(lb, key) == kept, "\(what)") }
        #expect(sweep.expired == cases.filter { !$0.3 }.count && sweep.entries == cases.filter(\.3).count)
        #expect(sweep.translations == 0 && sweep.translationsExpired == 0)
    }

    @Test func aNATFlowAgesAsAUnitByItsCombinedStateAndOrphansByTheirOwn() async throws {
        let lb = try await TestDataplane.make()
        let snatA = IPAddress("192.0.2.20")!, snatB = IPAddress("192.0.2.21")!
        let fullnat = UInt8(SL_FWD_FULLNAT.rawValue), nat = UInt8(SL_FWD_NAT.rawValue)

        // 1: the client side is old but the backend answered recently: both stay.
        try ct(lb, client(1), lastSeen: now - 1000, seen: syn | ack, nat: fullnat, snatPort: 20001)
        let reply1 = try natEntry(lb, for: client(1), to: snatA, port: 20001, lastSeen: now - 10, seen: syn | ack)
        // 2: both sides idle past tcp_idle_timeout: both go.
        try ct(lb, client(2), lastSeen: now - 1000, seen: syn | ack, nat: fullnat, snatPort: 20002)
        let reply2 = try natEntry(lb, for: client(2), to: snatA, port: 20002, lastSeen: now - 950, seen: syn | ack)
        // 3: the client saw no FIN, the backend did: the flow is closing (60 s) and both go.
        try ct(lb, client(3), lastSeen: now - 70, seen: syn | ack, nat: fullnat, snatIndex: 1, snatPort: 20003)
        let reply3 = try natEntry(lb, for: client(3), to: snatB, port: 20003, lastSeen: now - 61, seen: syn | ack | fin)
        // 4: the same combined state seen 59 s ago: the port stays taken (the TIME-WAIT rule).
        try ct(lb, client(4), lastSeen: now - 59, seen: syn | ack | fin, nat: fullnat, snatIndex: 1, snatPort: 20004)
        let reply4 = try natEntry(lb, for: client(4), to: snatB, port: 20004, lastSeen: now - 300, seen: syn | ack | fin)
        // 5: half NAT, half-open (the backend's SYN-ACK came, the client's ACK never did).
        try ct(lb, client(5), lastSeen: now - 40, seen: syn, nat: nat)
        let reply5 = try natEntry(lb, for: client(5), to: IPAddress("198.18.0.5")!, port: 40000, lastSeen: now - 31,
                                  seen: syn | ack, mode: nat)
        // 6, 7: translations whose flow entry was evicted: by their own stamp.
        let orphanOld = try natEntry(lb, for: client(6), to: snatA, port: 20006, lastSeen: now - 901, seen: syn | ack)
        let orphanYoung = try natEntry(lb, for: client(7), to: snatA, port: 20007, lastSeen: now - 100, seen: syn | ack)
        // 8: a flow entry whose translation was evicted: by its own stamp.
        try ct(lb, client(8), lastSeen: now - 100, seen: syn | ack, nat: fullnat, snatPort: 20008)

        let listed = try lb.dataplane.sweepConntrack(now: now, timeouts: timeouts, expire: false)
        #expect(listed.translations == 7 && listed.translationsExpired == 0)

        let sweep = try lb.dataplane.sweepConntrack(now: now, timeouts: timeouts, expire: true)
        #expect(try has(lb, client(1)) && hasNAT(lb, reply1), "alive while either side was seen")
        #expect(try !has(lb, client(2)) && !hasNAT(lb, reply2), "expired together")
        #expect(try !has(lb, client(3)) && !hasNAT(lb, reply3), "the backend's FIN makes the flow closing")
        #expect(try has(lb, client(4)) && hasNAT(lb, reply4))
        #expect(try !has(lb, client(5)) && !hasNAT(lb, reply5), "the client never ACKed: half-open")
        #expect(try !hasNAT(lb, orphanOld) && hasNAT(lb, orphanYoung))
        #expect(try has(lb, client(8)))
        #expect(sweep.expired == 3 && sweep.translationsExpired == 4, "\(sweep.expired) \(sweep.translationsExpired)")
        #expect(sweep.entries == 3 && sweep.translations == 3)
        #expect(sweep.snatInUse == [snatA: 2, snatB: 1], "the full-NAT translations left, by SNAT address")
    }

    @Test func theStateComesFromBothDirectionsFlags() {
        #expect(FlowState(client: 0, backend: nil) == .unknown)
        #expect(FlowState(client: syn, backend: nil) == .syn)
        #expect(FlowState(client: syn, backend: syn | ack) == .syn, "the backend's SYN-ACK alone is still half-open")
        #expect(FlowState(client: syn | ack, backend: syn | ack) == .established)
        #expect(FlowState(client: 0, backend: syn | ack) == .established, "a peer's entry with a local translation")
        #expect(FlowState(client: ack | fin, backend: ack) == .closing)
        #expect(FlowState(client: ack | fin, backend: ack | fin) == .closed)
        #expect(FlowState(client: ack, backend: rst) == .closed)
        #expect(timeouts.shortest == 30 && timeouts.longest == 900)
        let early = timeouts.due(uptime: 45)
        #expect(early.tcpSynSeconds == 30 && early.tcpClosingSeconds == .max && early.tcpSeconds == .max && early.udpSeconds == .max,
                "only the timeouts the clock has run for are due")
    }

    @Test func flowsShowEachTranslationWithItsStateAndAge() async throws {
        let lb = try await TestDataplane.make()
        try lb.dataplane.tickClock(now)
        let snat = IPAddress("192.0.2.21")!
        try ct(lb, client(1), lastSeen: now - 20, seen: syn | ack, nat: UInt8(SL_FWD_FULLNAT.rawValue), snatIndex: 1, snatPort: 20001)
        try natEntry(lb, for: client(1), to: snat, port: 20001, lastSeen: now - 5, seen: syn | ack | fin)
        try ct(lb, client(2, proto: 17), lastSeen: now - 3, seen: 0)
        // Flows are shown for trusted entries only: epoch 0 of slot 0 is what a fresh map holds.
        let flows = try lb.dataplane.flows()
        let translated = try #require(flows.first { $0.source == "198.18.0.1" })
        #expect(translated.nat == "fullnat" && translated.snatAddress == "192.0.2.21" && translated.snatPort == 20001)
        #expect(translated.backendPort == 8443 && translated.tcpState == "closing" && translated.ageSeconds == 5)
        let plain = try #require(flows.first { $0.source == "198.18.0.2" })
        #expect(plain.nat == nil && plain.snatAddress == nil && plain.tcpState == nil && plain.ageSeconds == 3)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(plain), as: UTF8.self)
        for key in [#""nat":null"#, #""snat_address":null"#, #""snat_port":null"#, #""backend_port":null"#,
                    #""tcp_state":null"#, #""age_seconds":3"#] {
            #expect(json.contains(key), "\(json)")
        }
    }
}
