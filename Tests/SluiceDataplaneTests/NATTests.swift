// NAT and full NAT through the real balancer (BPF_PROG_TEST_RUN): the exact frame
// each way for each mode and family, TCP and UDP, against frames built from scratch
// (so every checksum is recomputed by the test, not derived from the program's);
// the source allocation's uniqueness and exhaustion; the TCP flags each side saw;
// retransmitted SYNs; next hops and interfaces.

import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// Our MAC (the destination of the client's frames) and the client side's next hop (their source).
let ourMAC = PacketBuilder().destinationMAC
let clientSideMAC = PacketBuilder().sourceMAC
/// The next hop toward the backends, and our MAC on that side when it is another interface.
let backendHopMAC: [UInt8] = [0x02, 0x4e, 0x48, 0x00, 0x00, 0x01]
let backendSideMAC: [UInt8] = [0x02, 0x4e, 0x48, 0x00, 0x00, 0xfe]
let snatV4 = ["192.0.2.20", "192.0.2.21"].map { IPAddress($0)! }
let snatV6 = [IPAddress("2001:db8:ffff::20")!]
let snatPorts: ClosedRange<UInt16> = 1024...65535

/// A NAT case: a service of Config.standard, a client, and the backend port it is given.
struct NATCase: CustomTestStringConvertible, Sendable {
    var service: String
    var client: String
    var vip: String
    var port: UInt16
    var proto: L4Protocol
    var backendPort: UInt16
    var testDescription: String { "\(service) \(proto) \(vip):\(port) -> :\(backendPort)" }
}

let natCases = [
    NATCase(service: "web", client: clientV4, vip: "198.51.100.10", port: 80, proto: .tcp, backendPort: 8080),
    NATCase(service: "dns", client: clientV4, vip: "198.51.100.10", port: 53, proto: .udp, backendPort: 8053),
    NATCase(service: "web6", client: clientV6, vip: "2001:db8::80", port: 443, proto: .tcp, backendPort: 443),
    NATCase(service: "dns6", client: clientV6, vip: "2001:db8::53", port: 53, proto: .udp, backendPort: 5300),
]

/// A frame from `src`:`sport` to `dst`:`dport` between two MACs, built from scratch.
func natFrame(_ proto: L4Protocol, from src: String, _ sport: UInt16, to dst: String, _ dport: UInt16,
              flags: Set<TCPFlag> = [.syn], payload: [UInt8] = [], macs: (src: [UInt8], dst: [UInt8])) -> [UInt8] {
    var builder = PacketBuilder()
    builder.sourceMAC = macs.src
    builder.destinationMAC = macs.dst
    return proto == .tcp ? builder.tcp(from: src, sport, to: dst, dport, flags: flags, payload: payload)
                         : builder.udp(from: src, sport, to: dst, dport, payload: payload)
}

func flowKey(_ proto: L4Protocol, from src: IPAddress, _ sport: UInt16, to dst: IPAddress, _ dport: UInt16) -> sl_flow_key {
    var key = sl_flow_key()
    key.src = src.words
    key.dst = dst.words
    key.sport = sport.bigEndian
    key.dport = dport.bigEndian
    key.proto = proto.number
    key.family = src.family.rawValue
    return key
}

extension TestDataplane {
    /// Config.standard with `cases`' services in `mode`, next hop backendHopMAC, and the SNAT pools.
    static func nat(_ mode: sl_forwarding, cases: [NATCase] = natCases, ifindex: UInt32 = 0,
                    ports: ClosedRange<UInt16> = snatPorts, conntrackSize: UInt32 = TestDataplane.conntrackSize,
                    yaml: String = Config.standard) async throws -> TestDataplane {
        let lb = try await TestDataplane.make(yaml: yaml, conntrackSize: conntrackSize, natSize: conntrackSize)
        for c in cases {
            try lb.dataplane.setNAT(mode, of: c.service, port: c.backendPort, nextHop: backendHopMAC,
                                    localMAC: backendSideMAC, ifindex: ifindex)
        }
        try lb.dataplane.setSNATPool(snatV4, ports: ports)
        try lb.dataplane.setSNATPool(snatV6, ports: ports)
        return lb
    }

    func natEntry(_ key: sl_flow_key) throws -> sl_nat_entry? { try dataplane[.nat].lookup(key, as: sl_nat_entry.self) }
    func ctEntry(_ key: sl_flow_key) throws -> sl_ct_entry? { try dataplane[.conntrack].lookup(key, as: sl_ct_entry.self) }
}

@Suite("NAT and full NAT", requiresRoot)
struct NATTests {
    @Test("nat: the destination becomes backend:port, the reply's source VIP:port; checksums recomputed", arguments: natCases)
    func natBothWays(c: NATCase) async throws {
        let lb = try await TestDataplane.nat(SL_FWD_NAT)
        defer { lb.close() }
        let flow = IPFlow(source: IPAddress(c.client)!, destination: IPAddress(c.vip)!, protocolNumber: c.proto.number,
                          sourcePort: 40000, destinationPort: c.port)
        let backend = try #require(lb.model.backend(for: flow)).address.description
        let payload: [UInt8] = Array("GET / HTTP/1.0\r\n\r\n".utf8)
        for (flags, first) in [(Set<TCPFlag>([.syn]), true), ([.ack, .psh], false)] {
            let input = natFrame(c.proto, from: c.client, 40000, to: c.vip, c.port, flags: flags, payload: payload,
                                 macs: (clientSideMAC, ourMAC))
            let (verdict, output, counted) = try lb.runCounted(input)
            #expect(verdict == XDPVerdict.tx.rawValue)
            #expect(output == natFrame(c.proto, from: c.client, 40000, to: backend, c.backendPort, flags: flags,
                                       payload: payload, macs: (ourMAC, backendHopMAC)),
                    "only the destination changes; the frame goes to the next hop from our MAC")
            // A UDP flow's first datagram is no SYN: a conntrack miss, then placed.
            let placed = NodeStats(.tx, newFlows: 1, ctMisses: c.proto == .udp ? 1 : 0, natCreated: 1)
            #expect(counted == (first ? placed : NodeStats(.tx, ctHits: 1)))
            if c.proto == .udp { break }
        }
        let reply = natFrame(c.proto, from: backend, c.backendPort, to: c.client, 40000, flags: [.syn, .ack],
                             payload: payload, macs: (backendHopMAC, ourMAC))
        let (verdict, output, counted) = try lb.runCounted(reply)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output == natFrame(c.proto, from: c.vip, c.port, to: c.client, 40000, flags: [.syn, .ack],
                                   payload: payload, macs: (ourMAC, clientSideMAC)),
                "the reply leaves from VIP:port to the MAC the client's packets came from")
        #expect(counted == NodeStats(.tx, natReplies: 1))
    }

    @Test("fullnat: the source becomes a SNAT address:port of the pool, and the reply finds its client", arguments: natCases)
    func fullNATBothWays(c: NATCase) async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        defer { lb.close() }
        let flow = IPFlow(source: IPAddress(c.client)!, destination: IPAddress(c.vip)!, protocolNumber: c.proto.number,
                          sourcePort: 40000, destinationPort: c.port)
        let backend = try #require(lb.model.backend(for: flow)).address
        let pool = backend.family == .v4 ? snatV4 : snatV6
        let syn = natFrame(c.proto, from: c.client, 40000, to: c.vip, c.port, payload: [1, 2, 3], macs: (clientSideMAC, ourMAC))
        let (verdict, output, counted) = try lb.runCounted(syn)
        #expect(verdict == XDPVerdict.tx.rawValue)
        let seen = FrameAddresses(output)
        #expect(pool.contains(seen.source) && snatPorts.contains(seen.sourcePort), "source \(seen.source):\(seen.sourcePort)")
        #expect(output == natFrame(c.proto, from: seen.source.description, seen.sourcePort, to: backend.description,
                                   c.backendPort, payload: [1, 2, 3], macs: (ourMAC, backendHopMAC)))
        #expect(counted.natCreated == 1 && counted.newFlows == 1 && counted[.tx] == 1)

        // The translation is where the agent and `lbctl flows` read it.
        let replyKey = flowKey(c.proto, from: backend, c.backendPort, to: seen.source, seen.sourcePort)
        let nat = try #require(try lb.natEntry(replyKey))
        #expect(nat.mode == UInt8(SL_FWD_FULLNAT.rawValue) && nat.ifindex == 1, "came in on lo, as BPF_PROG_TEST_RUN runs")
        let ct = try #require(try lb.ctEntry(flowKey(c.proto, from: IPAddress(c.client)!, 40000, to: IPAddress(c.vip)!, c.port)))
        #expect(ct.nat == UInt8(SL_FWD_FULLNAT.rawValue) && UInt16(bigEndian: ct.snat_port) == seen.sourcePort)
        #expect(pool[Int(ct.snat_index)] == seen.source)

        // An established packet keeps the same source.
        let data = natFrame(c.proto, from: c.client, 40000, to: c.vip, c.port, flags: [.ack], payload: [4], macs: (clientSideMAC, ourMAC))
        let (_, again) = try lb.run(data)
        #expect(FrameAddresses(again) == seen)

        let reply = natFrame(c.proto, from: backend.description, c.backendPort, to: seen.source.description, seen.sourcePort,
                             flags: [.syn, .ack], payload: [9], macs: (backendHopMAC, ourMAC))
        let (replyVerdict, back, replyCounted) = try lb.runCounted(reply)
        #expect(replyVerdict == XDPVerdict.tx.rawValue)
        #expect(back == natFrame(c.proto, from: c.vip, c.port, to: c.client, 40000, flags: [.syn, .ack], payload: [9],
                                 macs: (ourMAC, clientSideMAC)))
        #expect(replyCounted == NodeStats(.tx, natReplies: 1))
    }

    @Test("An IPv4 UDP datagram without a checksum keeps none; one with a checksum never gets 0", arguments: [SL_FWD_NAT, SL_FWD_FULLNAT])
    func udpZeroChecksum(mode: sl_forwarding) async throws {
        let lb = try await TestDataplane.nat(mode)
        defer { lb.close() }
        var input = natFrame(.udp, from: clientV4, 40001, to: "198.51.100.10", 53, payload: [7, 7], macs: (clientSideMAC, ourMAC))
        input[40] = 0
        input[41] = 0
        let (verdict, output) = try lb.run(input)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output[40] == 0 && output[41] == 0)
        #expect(FrameAddresses(output).destinationPort == 8053)
    }

    @Test("Replies to no translation, and packets for no VIP, pass untouched")
    func unknownRepliesPass() async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        defer { lb.close() }
        for frame in [natFrame(.tcp, from: "10.1.0.21", 8080, to: "192.0.2.20", 5555, flags: [.syn, .ack], macs: (backendHopMAC, ourMAC)),
                      natFrame(.tcp, from: "10.1.0.21", 22, to: "192.0.2.20", 5555, flags: [.ack], macs: (backendHopMAC, ourMAC)),
                      natFrame(.udp, from: "10.9.9.9", 5353, to: clientV4, 40000, macs: (backendHopMAC, ourMAC))] {
            let (verdict, output, counted) = try lb.runCounted(frame)
            #expect(verdict == XDPVerdict.pass.rawValue && output == frame)
            #expect(counted == NodeStats(.pass))
        }
    }

    @Test("A next hop that is not resolved drops the new flow before a source is taken")
    func unresolvedNextHop() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.dataplane.setNAT(SL_FWD_FULLNAT, of: "web", nextHop: [0, 0, 0, 0, 0, 0])
        try lb.dataplane.setSNATPool(snatV4, ports: snatPorts)
        let (verdict, _, counted) = try lb.runCounted(natFrame(.tcp, from: clientV4, 40000, to: "198.51.100.10", 80,
                                                                macs: (clientSideMAC, ourMAC)))
        #expect(verdict == XDPVerdict.drop.rawValue)
        #expect(counted == NodeStats(.drop, drop: .noNeighbour))
        #expect(try lb.dataplane[.nat].hashEntries(key: sl_flow_key.self, value: sl_nat_entry.self).isEmpty)
    }

    @Test("Toward a backend on another interface: redirected there, from that interface's MAC")
    func otherInterface() async throws {
        let lb = try await TestDataplane.nat(SL_FWD_NAT, ifindex: 7)
        defer { lb.close() }
        let (verdict, output) = try lb.run(natFrame(.tcp, from: clientV4, 40000, to: "198.51.100.10", 80, macs: (clientSideMAC, ourMAC)))
        #expect(verdict == XDPVerdict.redirect.rawValue)
        #expect(Array(output[0..<12]) == backendHopMAC + backendSideMAC)
    }

    @Test("fullnat: 100,000 flows get 100,000 distinct (SNAT address, port) toward each backend port")
    func allocationIsUnique() async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT, cases: [natCases[0]], conntrackSize: 1 << 17)
        defer { lb.close() }
        var seen = Set<FrameAddresses>()
        let count = 100_000
        for i in 0..<count {
            let client = "10.200.\(i / 250 % 250).\(i % 250 + 1)"
            let frame = natFrame(.tcp, from: client, UInt16(10000 + i / 62500), to: "198.51.100.10", 80, macs: (clientSideMAC, ourMAC))
            let (verdict, output) = try lb.run(frame)
            guard verdict == XDPVerdict.tx.rawValue else {
                Issue.record("flow \(i) from \(client): verdict \(verdict), counters \(try lb.nodeStats())")
                return
            }
            let a = FrameAddresses(output)
            #expect(snatV4.contains(a.source) && snatPorts.contains(a.sourcePort))
            seen.insert(a)
        }
        #expect(seen.count == count, "every flow has its own (SNAT, port) toward its backend:port")
        let entries = try lb.dataplane[.nat].hashEntries(key: sl_flow_key.self, value: sl_nat_entry.self)
        #expect(entries.count == count)
        let stats = try lb.nodeStats()
        #expect(stats.natCreated == UInt64(count) && stats[drop: .snatExhausted] == 0)
        // Both SNAT addresses are used.
        #expect(Set(seen.map(\.source)) == Set(snatV4))
    }

    @Test("fullnat: a pool of 4 ports holds at most 4 flows per backend port; the rest are counted drops, and the open ones keep working")
    func exhaustion() async throws {
        let yaml = """
            node:
              source_v4: 192.0.2.10
            services:
              - name: api
                vip: 198.51.100.20
                port: 443
                protocol: tcp
                backends:
                  - { address: 10.2.0.11 }
            """
        let c = NATCase(service: "api", client: clientV4, vip: "198.51.100.20", port: 443, proto: .tcp, backendPort: 8443)
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT, cases: [c], ports: 40000...40003, yaml: yaml)
        defer { lb.close() }
        try lb.dataplane.setSNATPool([snatV4[0]], ports: 40000...40003)
        var open: [UInt16: FrameAddresses] = [:]
        var dropped = 0
        for port in UInt16(41000)..<41016 {
            let (verdict, output) = try lb.run(natFrame(.tcp, from: clientV4, port, to: c.vip, 443, macs: (clientSideMAC, ourMAC)))
            if verdict == XDPVerdict.tx.rawValue { open[port] = FrameAddresses(output) } else { dropped += 1 }
        }
        #expect(open.count <= 4 && open.count >= 3, "with 16 tries, 4 ports fill (\(open.count) opened)")
        #expect(Set(open.values.map(\.sourcePort)).count == open.count && open.values.allSatisfy { (40000...40003).contains($0.sourcePort) })
        let stats = try lb.nodeStats()
        #expect(stats[drop: .snatExhausted] == UInt64(dropped) && dropped == 16 - open.count)
        for (port, addresses) in open {
            let (verdict, output) = try lb.run(natFrame(.tcp, from: clientV4, port, to: c.vip, 443, flags: [.ack], macs: (clientSideMAC, ourMAC)))
            #expect(verdict == XDPVerdict.tx.rawValue && FrameAddresses(output) == addresses, "an open flow keeps its source")
        }
        // Released (as the agent does when a flow ends): the port is free for the next flow.
        let (released, addresses) = try #require(open.first)
        #expect(try lb.dataplane[.conntrack].delete(flowKey(.tcp, from: IPAddress(clientV4)!, released, to: IPAddress(c.vip)!, 443)))
        #expect(try lb.dataplane[.nat].delete(flowKey(.tcp, from: IPAddress("10.2.0.11")!, 8443, to: addresses.source, addresses.sourcePort)))
        var reused = false
        for port in UInt16(42000)..<42016 where !reused {
            let (verdict, output) = try lb.run(natFrame(.tcp, from: clientV4, port, to: c.vip, 443, macs: (clientSideMAC, ourMAC)))
            reused = verdict == XDPVerdict.tx.rawValue && FrameAddresses(output).sourcePort == addresses.sourcePort
        }
        #expect(reused, "a released port is allocated again")
    }

    @Test("The agent's sweep expires NAT flows by the TCP state the program recorded: half-open, closed, established")
    func stateDrivenExpiry() async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        defer { lb.close() }
        let vip = "198.51.100.10"
        try lb.dataplane.tickClock(1000)
        func client(_ port: UInt16, _ flags: Set<TCPFlag>) throws -> FrameAddresses {
            FrameAddresses(try lb.run(natFrame(.tcp, from: clientV4, port, to: vip, 80, flags: flags, macs: (clientSideMAC, ourMAC))).output)
        }
        func backend(_ seen: FrameAddresses, _ flags: Set<TCPFlag>) throws {
            _ = try lb.run(natFrame(.tcp, from: seen.destination.description, 8080, to: seen.source.description, seen.sourcePort,
                                    flags: flags, macs: (backendHopMAC, ourMAC)))
        }
        let halfOpen = try client(41001, [.syn])
        let closed = try client(41002, [.syn])
        try backend(closed, [.syn, .ack])
        _ = try client(41002, [.ack])
        let established = try client(41003, [.syn])
        try backend(established, [.syn, .ack])
        _ = try client(41003, [.ack])
        try lb.dataplane.tickClock(1010)
        _ = try client(41002, [.fin, .ack])
        try backend(closed, [.fin, .ack])
        _ = try client(41002, [.ack])
        func alive(_ port: UInt16, _ seen: FrameAddresses) throws -> (ct: Bool, nat: Bool) {
            (try lb.ctEntry(flowKey(.tcp, from: IPAddress(clientV4)!, port, to: IPAddress(vip)!, 80)) != nil,
             try lb.natEntry(flowKey(.tcp, from: seen.destination, 8080, to: seen.source, seen.sourcePort)) != nil)
        }
        let timeouts = IdleTimeouts(tcpSeconds: 900, udpSeconds: 300, tcpSynSeconds: 30, tcpClosingSeconds: 60)
        // At 1040 the SYN-only flow is 40 s old (> 30): gone, both entries; the others stay.
        var sweep = try lb.dataplane.sweepConntrack(now: 1040, timeouts: timeouts, expire: true)
        #expect(sweep.expired == 1 && sweep.translationsExpired == 1, "\(sweep)")
        #expect(try alive(41001, halfOpen) == (false, false))
        #expect(try alive(41002, closed) == (true, true) && (try alive(41003, established)) == (true, true))
        // At 1071 the closed flow's last packet is 61 s old (> 60): gone; the established one
        // (71 s < 900) stays.
        sweep = try lb.dataplane.sweepConntrack(now: 1071, timeouts: timeouts, expire: true)
        #expect(sweep.expired == 1 && sweep.translationsExpired == 1, "\(sweep)")
        #expect(try alive(41002, closed) == (false, false))
        #expect(try alive(41003, established) == (true, true))
    }

    @Test("Each side's TCP flags are kept: the client's in conntrack, the backend's in the translation")
    func tcpState() async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        defer { lb.close() }
        let vip = "198.51.100.10"
        let key = flowKey(.tcp, from: IPAddress(clientV4)!, 40000, to: IPAddress(vip)!, 80)
        func send(_ flags: Set<TCPFlag>) throws -> FrameAddresses {
            FrameAddresses(try lb.run(natFrame(.tcp, from: clientV4, 40000, to: vip, 80, flags: flags, macs: (clientSideMAC, ourMAC))).output)
        }
        let out = try send([.syn])
        let replyKey = flowKey(.tcp, from: out.destination, 8080, to: out.source, out.sourcePort)
        func reply(_ flags: Set<TCPFlag>) throws {
            _ = try lb.run(natFrame(.tcp, from: out.destination.description, 8080, to: out.source.description, out.sourcePort,
                                    flags: flags, macs: (backendHopMAC, ourMAC)))
        }
        let syn = UInt8(SL_TCP_SEEN_SYN.rawValue), ack = UInt8(SL_TCP_SEEN_ACK.rawValue)
        let fin = UInt8(SL_TCP_SEEN_FIN.rawValue), rst = UInt8(SL_TCP_SEEN_RST.rawValue)
        #expect(try lb.ctEntry(key)?.tcp_seen == syn)
        #expect(try lb.natEntry(replyKey)?.tcp_seen == 0)
        try reply([.syn, .ack])
        #expect(try lb.natEntry(replyKey)?.tcp_seen == syn)
        #expect(try send([.syn]) == out, "a retransmitted SYN keeps its translation")
        _ = try send([.ack])
        #expect(try lb.ctEntry(key)?.tcp_seen == syn | ack)
        // A SYN that itself carries FIN or RST (no stack sends one) does not close the open flow it lands on.
        #expect(try send([.syn, .fin]) == out && (try send([.syn, .rst])) == out, "the flow's state before the SYN decides")
        #expect(try lb.ctEntry(key)?.tcp_seen == syn | ack)
        _ = try send([.fin, .ack])
        #expect(try lb.ctEntry(key)?.tcp_seen == syn | ack | fin)
        try reply([.rst])
        #expect(try lb.natEntry(replyKey)?.tcp_seen == syn | rst)

        // After the flow closed, a SYN on the same 5-tuple is a new connection: a new source.
        let reopened = try send([.syn])
        #expect(reopened.sourcePort != out.sourcePort || reopened.source != out.source)
        #expect(try lb.ctEntry(key)?.tcp_seen == syn)
    }
}

/// A packet as an ICMP error quotes it: the IP packet cut to `keep` bytes (its transport
/// checksum still that of the whole packet).
func quoted(_ proto: L4Protocol, from src: String, _ sport: UInt16, to dst: String, _ dport: UInt16, keep: Int) -> [UInt8] {
    let packet = proto == .tcp
        ? PacketBuilder().tcp(from: src, sport, to: dst, dport, flags: [.ack], payload: Array(repeating: 9, count: 1400))
        : PacketBuilder().udp(from: src, sport, to: dst, dport, payload: Array(repeating: 9, count: 1400))
    return Array(packet[14..<(14 + keep)])
}

func icmpFrame(from src: String, to dst: String, type: UInt8, code: UInt8, quoting quote: [UInt8],
               macs: (src: [UInt8], dst: [UInt8])) -> [UInt8] {
    var builder = PacketBuilder()
    builder.sourceMAC = macs.src
    builder.destinationMAC = macs.dst
    return builder.icmpError(from: src, to: dst, type: type, code: code, rest: 1400, quoting: quote)
}

@Suite("ICMP errors through NAT", requiresRoot)
struct NATICMPTests {
    static let modes = [(SL_FWD_NAT, natCases[0]), (SL_FWD_FULLNAT, natCases[0]), (SL_FWD_NAT, natCases[2]),
                        (SL_FWD_FULLNAT, natCases[2]), (SL_FWD_NAT, natCases[1]), (SL_FWD_FULLNAT, natCases[3])]

    /// Opens the flow from clientPort 40000 and returns what the backend sees: its address and the source.
    func open(_ lb: TestDataplane, _ c: NATCase) throws -> FrameAddresses {
        let (verdict, output) = try lb.run(natFrame(c.proto, from: c.client, 40000, to: c.vip, c.port, macs: (clientSideMAC, ourMAC)))
        #expect(verdict == XDPVerdict.tx.rawValue)
        return FrameAddresses(output)
    }

    @Test("A router's error about a reply reaches the backend as an error about what the backend sent", arguments: modes)
    func towardBackend(mode: sl_forwarding, c: NATCase) async throws {
        let lb = try await TestDataplane.nat(mode)
        defer { lb.close() }
        let seen = try open(lb, c)
        let v6 = c.client.contains(":")
        let router = v6 ? routerV6 : routerV4
        let (type, code): (UInt8, UInt8) = v6 ? (2, 0) : (3, 4)
        let keep = v6 ? 1232 : 548
        let error = icmpFrame(from: router, to: c.vip, type: type, code: code,
                              quoting: quoted(c.proto, from: c.vip, c.port, to: c.client, 40000, keep: keep),
                              macs: (clientSideMAC, ourMAC))
        let (verdict, output, counted) = try lb.runCounted(error)
        #expect(verdict == XDPVerdict.tx.rawValue)
        let outerSource = mode == SL_FWD_FULLNAT ? seen.source.description : router
        let expected = icmpFrame(from: outerSource, to: seen.destination.description, type: type, code: code,
                                 quoting: quoted(c.proto, from: seen.destination.description, c.backendPort,
                                                 to: seen.source.description, seen.sourcePort, keep: keep),
                                 macs: (ourMAC, backendHopMAC))
        #expect(output == expected, "outer and quoted headers readdressed, every checksum valid")
        #expect(counted == NodeStats(.tx, natICMP: 1))
    }

    @Test("An error about a translated packet (a backend's port unreachable, a router's too big) reaches the client", arguments: modes)
    func towardClient(mode: sl_forwarding, c: NATCase) async throws {
        let lb = try await TestDataplane.nat(mode)
        defer { lb.close() }
        let seen = try open(lb, c)
        let v6 = c.client.contains(":")
        let keep = v6 ? 1232 : 548
        let quote = quoted(c.proto, from: seen.source.description, seen.sourcePort, to: seen.destination.description,
                           c.backendPort, keep: keep)
        let clientQuote = quoted(c.proto, from: c.client, 40000, to: c.vip, c.port, keep: keep)
        // From the backend itself: the outer source becomes the VIP.
        let (type, code): (UInt8, UInt8) = v6 ? (1, 4) : (3, 3)
        let fromBackend = icmpFrame(from: seen.destination.description, to: seen.source.description, type: type, code: code,
                                    quoting: quote, macs: (backendHopMAC, ourMAC))
        let (verdict, output, counted) = try lb.runCounted(fromBackend)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output == icmpFrame(from: c.vip, to: c.client, type: type, code: code, quoting: clientQuote,
                                    macs: (ourMAC, clientSideMAC)))
        #expect(counted == NodeStats(.tx, natICMP: 1))
        // From a router on the backend's side: its own address stays.
        let router = v6 ? "2001:db8:1::fe" : "10.1.0.254"
        let (tooBig, tooBigCode): (UInt8, UInt8) = v6 ? (2, 0) : (3, 4)
        let fromRouter = icmpFrame(from: router, to: seen.source.description, type: tooBig, code: tooBigCode,
                                   quoting: quote, macs: (backendHopMAC, ourMAC))
        let (routerVerdict, routed) = try lb.run(fromRouter)
        #expect(routerVerdict == XDPVerdict.tx.rawValue)
        #expect(routed == icmpFrame(from: router, to: c.client, type: tooBig, code: tooBigCode, quoting: clientQuote,
                                    macs: (ourMAC, clientSideMAC)))
    }

    @Test("Errors about no translation pass; echo requests to a VIP pass to the kernel")
    func unknownPass() async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        defer { lb.close() }
        let stray = icmpFrame(from: "10.1.0.21", to: "192.0.2.20", type: 3, code: 3,
                              quoting: quoted(.udp, from: "192.0.2.20", 5000, to: "10.1.0.21", 5353, keep: 548),
                              macs: (backendHopMAC, ourMAC))
        let echo = PacketBuilder().icmpEcho(from: clientV4, to: "198.51.100.10")
        for frame in [stray, echo] {
            let (verdict, output, counted) = try lb.runCounted(frame)
            #expect(verdict == XDPVerdict.pass.rawValue && output == frame)
            #expect(counted == NodeStats(.pass))
        }
    }
}

@Suite("NAT on the wire", requiresRoot)
struct NATWireTests {
    /// One frame of every kind the NAT modes send, both ways: forward and reply for each mode,
    /// family and protocol, and ICMP errors translated toward the backend and the client.
    func framesOfEveryKind() async throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        for mode in [SL_FWD_NAT, SL_FWD_FULLNAT] {
            let lb = try await TestDataplane.nat(mode)
            defer { lb.close() }
            func send(_ frame: [UInt8]) throws -> [UInt8] {
                let (verdict, output) = try lb.run(frame)
                #expect(verdict == XDPVerdict.tx.rawValue)
                out.append(output)
                return output
            }
            for c in natCases {
                let seen = FrameAddresses(try send(natFrame(c.proto, from: c.client, 41000, to: c.vip, c.port,
                                                            payload: Array(0..<200), macs: (clientSideMAC, ourMAC))))
                _ = try send(natFrame(c.proto, from: seen.destination.description, c.backendPort, to: seen.source.description,
                                      seen.sourcePort, flags: [.syn, .ack], payload: Array(0..<100), macs: (backendHopMAC, ourMAC)))
                guard c.proto == .tcp else { continue }
                let v6 = c.client.contains(":"), keep = v6 ? 1232 : 548
                _ = try send(icmpFrame(from: v6 ? routerV6 : routerV4, to: c.vip, type: v6 ? 2 : 3, code: v6 ? 0 : 4,
                                       quoting: quoted(.tcp, from: c.vip, c.port, to: c.client, 41000, keep: keep),
                                       macs: (clientSideMAC, ourMAC)))
                _ = try send(icmpFrame(from: seen.destination.description, to: seen.source.description, type: v6 ? 1 : 3,
                                       code: v6 ? 4 : 3,
                                       quoting: quoted(.tcp, from: seen.source.description, seen.sourcePort,
                                                       to: seen.destination.description, c.backendPort, keep: keep),
                                       macs: (backendHopMAC, ourMAC)))
            }
        }
        return out
    }

    @Test("tshark reads every translated frame, both ways, without a malformed or bad-checksum mark")
    func tsharkFindsNoError() async throws {
        let frames = try await framesOfEveryKind()
        let perMode = natCases.count * 2 + 2 * 2  // forward and reply per case; two ICMP errors per TCP case
        #expect(frames.count == 2 * perMode)
        let errors = try await tsharkErrors(frames)
        #expect(errors == nil, "\(errors ?? "")")
        var broken = frames
        broken[1][broken[1].count - 1] ^= 0xff
        #expect(try await tsharkErrors(broken) != nil, "tshark must flag a corrupted reply")
    }
}
