// The fixture table: one frame per behaviour of the balancer, each with the
// verdict, the output and the node counters it must produce. Every case runs
// on a fresh data plane loaded with Config.standard.

import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

struct PacketCase: Sendable, CustomTestStringConvertible {
    enum Output: Sendable {
        /// Tunnelled to the backend the model predicts, whose family this is.
        case tunnel(IPAddress.Family)
        /// Handed to the kernel byte for byte as it came.
        case unchanged
        /// Dropped; the output does not matter.
        case dropped
    }

    let description: String
    let frame: [UInt8]
    let verdict: XDPVerdict
    let output: Output
    /// The exact change of every node counter.
    let counters: NodeStats

    var testDescription: String { description }
}

private let client4 = "203.0.113.7"
private let client6 = "2001:db8:c::7"
private let plain = PacketBuilder()

private func builder(_ edit: (inout PacketBuilder) -> Void) -> PacketBuilder {
    var b = PacketBuilder()
    edit(&b)
    return b
}

/// A forwarded TCP SYN: placed by Maglev without a conntrack lookup, and recorded nowhere
/// (no new flow: its handshake's ACK records it).
private let forwardedSYN = NodeStats(.tx)
/// A forwarded TCP packet of an unknown flow that is not a SYN: a conntrack miss, then
/// Maglev, and the flow recorded in sl_conntrack.
private let forwardedMiss = NodeStats(.tx, newFlows: 1, ctMisses: 1)
/// A forwarded first UDP datagram of a flow: a conntrack miss, then Maglev, and the flow
/// held in sl_ct_unconfirmed (recorded, a new flow, only by its second datagram).
private let forwardedFirstUDP = NodeStats(.tx, ctMisses: 1, ctUnconfirmed: 1)
private let passed = NodeStats(.pass)
private let fragment = NodeStats(.pass, fragments: 1)
private let truncated = NodeStats(.drop, drop: .truncated)
private let malformed = NodeStats(.drop, drop: .malformed)

extension PacketCase {
    static let tunnelled: [PacketCase] = [
        PacketCase(description: "an IPv4 TCP SYN to an IPv4 VIP is tunnelled 4in4 with its TOS copied",
                   frame: builder { $0.tos = 0xb8 }.tcp(from: client4, 40001, to: "198.51.100.10", 80),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedSYN),
        PacketCase(description: "an IPv4 TCP SYN with a payload is tunnelled 4in4 whole",
                   frame: plain.tcp(from: "198.18.5.200", 65535, to: "198.51.100.10", 80,
                                    payload: Array(repeating: 0x5a, count: 1200)),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedSYN),
        PacketCase(description: "a UDP datagram to an IPv4 VIP is tunnelled 4in4 after a conntrack miss",
                   frame: plain.udp(from: client4, 5353, to: "198.51.100.10", 53, payload: Array(0..<32)),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedFirstUDP),
        PacketCase(description: "an ACK of a flow conntrack does not know is tunnelled 4in4 and recorded after a miss",
                   frame: plain.tcp(from: client4, 40018, to: "198.51.100.10", 80, flags: [.ack],
                                    payload: Array(repeating: 0x33, count: 100)),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedMiss),
        PacketCase(description: "an IPv6 TCP SYN to an IPv6 VIP is tunnelled 6in6 with its traffic class copied",
                   frame: builder { $0.tos = 0x2e }.tcp(from: client6, 40002, to: "2001:db8::80", 443),
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedSYN),
        PacketCase(description: "an IPv6 UDP datagram to an IPv6 VIP is tunnelled 6in6",
                   frame: plain.udp(from: client6, 33000, to: "2001:db8::53", 53, payload: Array(0..<40)),
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedFirstUDP),
        PacketCase(description: "an IPv4 TCP SYN to an IPv4 VIP with IPv6 backends is tunnelled 4in6",
                   frame: builder { $0.tos = 0x28 }.tcp(from: client4, 40003, to: "198.51.100.20", 8080),
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedSYN),
        PacketCase(description: "a VLAN-tagged IPv4 SYN is tunnelled 4in4 under the same tag",
                   frame: builder { $0.vlan = 0x2064 }.tcp(from: client4, 40004, to: "198.51.100.10", 80),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedSYN),
        PacketCase(description: "a VLAN-tagged IPv4 SYN tunnelled 4in6 gets the IPv6 ethertype inside the tag",
                   frame: builder { $0.vlan = 0x0fff }.tcp(from: client4, 40005, to: "198.51.100.20", 8080),
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedSYN),
        PacketCase(description: "a VLAN-tagged IPv6 SYN is tunnelled 6in6 under the same tag",
                   frame: builder { $0.vlan = 0xe001 }.tcp(from: client6, 40006, to: "2001:db8::80", 443),
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedSYN),
        PacketCase(description: "an 802.1ad-tagged IPv4 SYN keeps its 0x88a8 tag",
                   frame: {
                       var f = builder { $0.vlan = 0x0123 }.tcp(from: client4, 40007, to: "198.51.100.10", 80)
                       f.setBE16(12, 0x88a8)
                       return f
                   }(),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedSYN),
        PacketCase(description: "an IPv4 SYN with options is forwarded, options kept in the inner header, and counted",
                   frame: builder { $0.ipv4Options = [0x94, 0x04, 0x00, 0x00] }
                       .tcp(from: client4, 40008, to: "198.51.100.10", 80),
                   verdict: .tx, output: .tunnel(.v4), counters: NodeStats(.tx, ipOptions: 1)),
        PacketCase(description: "an IPv4 SYN with 40 bytes of options (IHL 15) is forwarded whole",
                   frame: builder { $0.ipv4Options = Array(repeating: 0x01, count: 39) + [0x00] }
                       .tcp(from: client4, 40009, to: "198.51.100.10", 80),
                   verdict: .tx, output: .tunnel(.v4), counters: NodeStats(.tx, ipOptions: 1)),
        PacketCase(description: "an IPv4 UDP datagram with options to a VIP is forwarded 4in4",
                   frame: builder { $0.ipv4Options = [0x01, 0x01, 0x01, 0x00] }
                       .udp(from: client4, 5000, to: "198.51.100.10", 53),
                   verdict: .tx, output: .tunnel(.v4), counters: NodeStats(.tx, ctMisses: 1, ctUnconfirmed: 1, ipOptions: 1)),
        PacketCase(description: "a short UDP datagram with Ethernet padding gets its outer length from the inner header",
                   frame: paddedToEthernetMinimum(plain.udp(from: client4, 5001, to: "198.51.100.10", 53)),
                   verdict: .tx, output: .tunnel(.v4), counters: forwardedFirstUDP),
        PacketCase(description: "a padded TCP SYN tunnelled 4in6 gets its payload length from the inner header",
                   frame: paddedToEthernetMinimum(plain.tcp(from: client4, 5002, to: "198.51.100.20", 8080)),
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedSYN),
        PacketCase(description: "an IPv6 datagram followed by trailing bytes is tunnelled without them in the outer length",
                   frame: plain.udp(from: client6, 5003, to: "2001:db8::53", 53) + [0, 0, 0, 0, 0, 0],
                   verdict: .tx, output: .tunnel(.v6), counters: forwardedFirstUDP),
    ]

    static let passedUntouched: [PacketCase] = [
        PacketCase(description: "TCP to an address that is no VIP passes untouched",
                   frame: plain.tcp(from: client4, 40010, to: "203.0.113.99", 80),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "TCP to a VIP address on a port it does not serve passes untouched",
                   frame: plain.tcp(from: client4, 40011, to: "198.51.100.10", 81),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "UDP to a VIP port that is served for TCP only passes untouched",
                   frame: plain.udp(from: client4, 40012, to: "198.51.100.10", 80),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "TCP to an IPv6 VIP port that is served for UDP only passes untouched",
                   frame: plain.tcp(from: client6, 40013, to: "2001:db8::53", 53),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "IPv6 TCP to an address that is no VIP passes untouched",
                   frame: plain.tcp(from: client6, 40014, to: "2001:db8::81", 443),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "an IPv4 packet of another protocol (GRE) to a VIP address passes untouched",
                   frame: editingIPv4(plain.udp(from: client4, 40015, to: "198.51.100.10", 80)) { $0[l3 + 9] = 47 },
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "an ICMP echo to a VIP address passes untouched",
                   frame: plain.icmpEcho(from: client4, to: "198.51.100.10"),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "an ICMPv6 echo to an IPv6 VIP passes untouched",
                   frame: plain.icmpEcho(from: client6, to: "2001:db8::80"),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "an ARP request for a VIP passes untouched",
                   frame: plain.arpRequest(from: client4, to: "198.51.100.10"),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "a VLAN-tagged frame to no VIP passes untouched",
                   frame: builder { $0.vlan = 0x0064 }.tcp(from: client4, 40016, to: "203.0.113.99", 80),
                   verdict: .pass, output: .unchanged, counters: passed),
        PacketCase(description: "an IPv4 packet with options to no VIP passes and is not counted as options",
                   frame: builder { $0.ipv4Options = [0x94, 0x04, 0x00, 0x00] }.tcp(from: client4, 40017, to: "203.0.113.99", 80),
                   verdict: .pass, output: .unchanged, counters: passed),
    ]

    static let fragments: [PacketCase] = [
        PacketCase(description: "a first IPv4 fragment (MF set) to a VIP passes and is counted",
                   frame: builder { $0.moreFragments = true }.udp(from: client4, 40020, to: "198.51.100.10", 53,
                                                                  payload: Array(repeating: 1, count: 64)),
                   verdict: .pass, output: .unchanged, counters: fragment),
        PacketCase(description: "a later IPv4 fragment (offset 100) to a VIP passes and is counted",
                   frame: builder { $0.fragmentOffset = 100 }.tcp(from: client4, 40021, to: "198.51.100.10", 80),
                   verdict: .pass, output: .unchanged, counters: fragment),
        PacketCase(description: "a middle IPv4 fragment (MF and an offset) to a VIP passes and is counted",
                   frame: builder { $0.fragmentOffset = 1; $0.moreFragments = true }
                       .tcp(from: client4, 40022, to: "198.51.100.10", 80),
                   verdict: .pass, output: .unchanged, counters: fragment),
        PacketCase(description: "an IPv6 packet with a fragment header to an IPv6 VIP passes and is counted",
                   frame: builder { $0.moreFragments = true }.udp(from: client6, 40023, to: "2001:db8::53", 53,
                                                                  payload: Array(repeating: 2, count: 64)),
                   verdict: .pass, output: .unchanged, counters: fragment),
    ]

    static let truncatedHeaders: [PacketCase] = {
        let syn4 = plain.tcp(from: client4, 40030, to: "198.51.100.10", 80)
        let syn6 = plain.tcp(from: client6, 40031, to: "2001:db8::80", 443)
        let udp4 = plain.udp(from: client4, 40032, to: "198.51.100.10", 53, payload: Array(repeating: 3, count: 16))
        let udp6 = plain.udp(from: client6, 40033, to: "2001:db8::53", 53, payload: Array(repeating: 4, count: 16))
        let options = builder { $0.ipv4Options = Array(repeating: 1, count: 8) }.tcp(from: client4, 40034, to: "198.51.100.10", 80)
        let tagged = builder { $0.vlan = 5 }.tcp(from: client4, 40035, to: "198.51.100.10", 80)
        return [
            PacketCase(description: "an IPv4 ethertype with no IP header at all is dropped as truncated",
                       frame: Array(syn4.prefix(14)), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "an IPv4 header cut after 10 bytes is dropped as truncated",
                       frame: Array(syn4.prefix(l3 + 10)), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "IPv4 options cut short of the IHL are dropped as truncated",
                       frame: Array(options.prefix(l3 + 24)), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "an IPv4 tot_len beyond the end of the frame is dropped as truncated",
                       frame: Array(udp4.dropLast(8)), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "a TCP header cut after 10 bytes is dropped as truncated",
                       frame: cuttingL4(syn4, keep: 10), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "a TCP header one byte short is dropped as truncated",
                       frame: cuttingL4(syn4, keep: 19), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "a UDP header cut after 4 bytes is dropped as truncated",
                       frame: cuttingL4(udp4, keep: 4), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "an IPv6 header cut after 30 bytes is dropped as truncated",
                       frame: Array(syn6.prefix(l3 + 30)), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "an IPv6 payload_len beyond the end of the frame is dropped as truncated",
                       frame: Array(udp6.dropLast(8)), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "an IPv6 TCP header cut after 12 bytes is dropped as truncated",
                       frame: cuttingL4(syn6, keep: 12), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "an IPv6 UDP header cut after 6 bytes is dropped as truncated",
                       frame: cuttingL4(udp6, keep: 6), verdict: .drop, output: .dropped, counters: truncated),
            PacketCase(description: "a VLAN tag cut short is dropped as truncated",
                       frame: Array(tagged.prefix(16)), verdict: .drop, output: .dropped, counters: truncated),
        ]
    }()

    static let malformedHeaders: [PacketCase] = {
        let syn4 = plain.tcp(from: client4, 40040, to: "198.51.100.10", 80)
        let syn6 = plain.tcp(from: client6, 40041, to: "2001:db8::80", 443)
        let options = builder { $0.ipv4Options = [1, 1, 1, 0] }.tcp(from: client4, 40042, to: "198.51.100.10", 80)
        return [
            PacketCase(description: "an IPv4 header with IHL 4 is dropped as malformed",
                       frame: editingIPv4(syn4) { $0[l3] = 0x44 }, verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "an IPv4 header with IHL 0 is dropped as malformed",
                       frame: editingIPv4(syn4) { $0[l3] = 0x40 }, verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "version 6 under the IPv4 ethertype is dropped as malformed",
                       frame: editingIPv4(syn4) { $0[l3] = 0x65 }, verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "version 4 under the IPv6 ethertype is dropped as malformed",
                       frame: { var f = syn6; f[l3] = 0x40 | (f[l3] & 0x0f); return f }(),
                       verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "an IPv4 tot_len shorter than the 20-byte header is dropped as malformed",
                       frame: editingIPv4(syn4) { $0.setBE16(l3 + 2, 16) }, verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "an IPv4 tot_len shorter than IHL * 4 with options is dropped as malformed",
                       frame: editingIPv4(options) { $0.setBE16(l3 + 2, 22) }, verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "a TCP data offset of 4 is dropped as malformed",
                       frame: { var f = syn4; f[l3 + 20 + 12] = 4 << 4; return f }(),
                       verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "an IPv6 TCP data offset of 0 is dropped as malformed",
                       frame: { var f = syn6; f[l3 + 40 + 12] = 0; return f }(),
                       verdict: .drop, output: .dropped, counters: malformed),
            // The frame holds a whole header after the IP packet's end: padding, not a header.
            PacketCase(description: "an IPv4 tot_len that ends inside the TCP header is dropped as malformed",
                       frame: editingIPv4(syn4) { $0.setBE16(l3 + 2, 30) }, verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "an IPv4 tot_len with no room for the UDP header is dropped as malformed",
                       frame: editingIPv4(plain.udp(from: client4, 40043, to: "198.51.100.10", 53)) { $0.setBE16(l3 + 2, 20) },
                       verdict: .drop, output: .dropped, counters: malformed),
            PacketCase(description: "an IPv6 payload_len of 0 before a TCP header is dropped as malformed",
                       frame: { var f = syn6; f.setBE16(l3 + 4, 0); return f }(),
                       verdict: .drop, output: .dropped, counters: malformed),
        ]
    }()

    static let noBackend: [PacketCase] = [
        PacketCase(description: "a SYN to a VIP whose every backend has weight 0 is dropped as no_backend",
                   frame: plain.tcp(from: client4, 40050, to: "198.51.100.30", 80),
                   verdict: .drop, output: .dropped, counters: NodeStats(.drop, drop: .noBackend)),
        PacketCase(description: "an unknown ACK to a fully drained VIP misses conntrack and is dropped as no_backend",
                   frame: plain.tcp(from: client4, 40051, to: "198.51.100.30", 80, flags: [.ack]),
                   verdict: .drop, output: .dropped, counters: NodeStats(.drop, drop: .noBackend, ctMisses: 1)),
    ]

    static let all = tunnelled + passedUntouched + fragments + truncatedHeaders + malformedHeaders + noBackend
}

@Suite(requiresRoot)
struct PacketTableTests {
    @Test(arguments: PacketCase.all)
    func eachFrameGetsTheVerdictOutputAndCountersTheSpecificationGivesIt(_ c: PacketCase) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        let before = try lb.nodeStats()
        let (verdict, output) = try lb.run(c.frame)
        let delta = try lb.nodeStats() - before
        let traffic = try lb.counters().services

        #expect(XDPVerdict(rawValue: verdict) == c.verdict, "verdict \(verdict)")
        #expect(delta == c.counters, "counters moved: \(delta)")

        var expectedOutput: [UInt8]?
        switch c.output {
        case .unchanged:
            expectedOutput = c.frame
            #expect(output == c.frame, "a passed frame is not modified")
            #expect(traffic.allSatisfy { $0.packets == 0 }, "no service counts a passed frame")
        case .dropped:
            #expect(traffic.allSatisfy { $0.packets == 0 }, "no service counts a dropped frame")
        case .tunnel(let family):
            let flow = try #require(IPFlow(frame: c.frame))
            let service = try #require(lb.model.service(for: flow))
            let backend = try #require(lb.model.backend(for: flow), "the model places \(flow)")
            #expect(backend.address.family == family)
            expectedOutput = expectedTunnelFrame(input: c.frame, backend: backend.address, node: lb.serviceFile.node)
            #expect(output == expectedOutput, "the whole frame, byte for byte")
            try expectTunnel(output, for: c.frame, to: backend.address, node: lb.serviceFile.node)

            // Counted once, for its service and its backend, with the input frame's length.
            for counted in traffic {
                let isTarget = counted.name == service.name
                #expect(counted.packets == (isTarget ? 1 : 0), "\(counted.name) packets")
                #expect(counted.bytes == (isTarget ? UInt64(c.frame.count) : 0), "\(counted.name) bytes")
                for b in counted.backends {
                    let isChosen = isTarget && b.address == backend.address.description
                    #expect(b.packets == (isChosen ? 1 : 0), "\(counted.name) backend \(b.address) packets")
                }
            }
        }
        if XDPVerdict(rawValue: verdict) != c.verdict || expectedOutput.map({ $0 != output }) == true {
            attachPcap(named: c.description, [c.frame, output] + (expectedOutput.map { [$0] } ?? []))
        }
    }

    @Test func aVIPPacketIsDroppedAsNoGatewayUntilTheNextHopMACIsSet() async throws {
        let lb = try await TestDataplane.make(gateway: nil)
        try lb.apply(yaml: Config.standard)
        let syn = PacketBuilder().tcp(from: client4, 40060, to: "198.51.100.10", 80)

        var before = try lb.nodeStats()
        #expect(try lb.run(syn).verdict == XDPVerdict.drop.rawValue)
        #expect(try lb.nodeStats() - before == NodeStats(.drop, drop: .noGateway))

        try lb.setGateway(TestDataplane.gatewayMAC)
        before = try lb.nodeStats()
        let (verdict, output) = try lb.run(syn)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(try lb.nodeStats() - before == forwardedSYN)
        #expect(try TunnelFrame(output).destinationMAC == TestDataplane.gatewayMAC)
    }

    @Test func aFrameIsPassedUntouchedWhenNoServiceIsConfigured() async throws {
        let lb = try await TestDataplane.make()
        let syn = PacketBuilder().tcp(from: client4, 40061, to: "198.51.100.10", 80)
        let (verdict, output) = try lb.run(syn)
        #expect(verdict == XDPVerdict.pass.rawValue)
        #expect(output == syn)
        #expect(try lb.nodeStats() == NodeStats(.pass))
    }
}
