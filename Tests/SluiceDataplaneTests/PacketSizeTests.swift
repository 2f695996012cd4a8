// node.tunnel_mtu through the real balancer: a SYN's MSS clamped to what fits
// once encapsulated, and a packet that does not fit answered with ICMP
// "fragmentation needed" / ICMPv6 "packet too big" from the VIP.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// MSS option (kind 2, length 4).
func mssOption(_ mss: UInt16) -> [UInt8] { [2, 4] + be16Bytes(mss) }

/// The MSS option's value in a TCP segment, or nil.
func mss(inSegment segment: ArraySlice<UInt8>) -> UInt16? {
    let s = Array(segment)
    let end = Int(s[12] >> 4) * 4
    var i = 20
    while i < end {
        switch s[i] {
        case 0: return nil
        case 1: i += 1
        case 2: return s.be16(i + 2)
        default: i += Int(s[i + 1])
        }
    }
    return nil
}

/// The TCP segment of an IP packet (IPv4 with options, or IPv6).
func tcpSegment(ofPacket p: [UInt8]) -> ArraySlice<UInt8> {
    p[0] >> 4 == 4 ? p[(Int(p[0] & 0x0f) * 4)...] : p[40...]
}

/// The TCP checksum of `packet` verifies.
func tcpChecksumValid(_ packet: [UInt8]) -> Bool {
    let segment = Array(tcpSegment(ofPacket: packet))
    let pseudo: [UInt8] = packet[0] >> 4 == 4
        ? Array(packet[12..<20]) + [0, 6] + be16Bytes(UInt16(segment.count))
        : Array(packet[8..<40]) + [0, 0] + be16Bytes(UInt16(segment.count)) + [0, 0, 0, 6]
    return internetChecksum(pseudo + segment) == 0
}

@Suite("Packet size: MSS clamping and ICMP too big", requiresRoot)
struct PacketSizeTests {
    /// (service, mode, client, VIP, port, MSS the clamp leaves for tunnel_mtu 1500)
    static let clampCases: [(String, UInt32, String, String, UInt16, UInt16)] = [
        ("web", SL_FWD_IPIP.rawValue, clientV4, "198.51.100.10", 80, 1500 - 20 - 40),
        ("web", SL_FWD_GUE.rawValue, clientV4, "198.51.100.10", 80, 1500 - 28 - 40),
        ("web6", SL_FWD_IPIP.rawValue, clientV6, "2001:db8::80", 443, 1500 - 40 - 60),
        ("web6", SL_FWD_GUE.rawValue, clientV6, "2001:db8::80", 443, 1500 - 48 - 60),
        ("mixed", SL_FWD_IPIP.rawValue, clientV4, "198.51.100.20", 8080, 1500 - 40 - 40),
    ]

    @Test("a SYN's MSS is clamped to tunnel_mtu minus the tunnel and the headers", arguments: clampCases)
    func clamped(c: (String, UInt32, String, String, UInt16, UInt16)) async throws {
        let (service, mode, client, vip, port, clamp) = c
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(sl_forwarding(mode), of: service)
        try lb.setTunnel(mtu: 1500)
        // MSS at an even offset (first), and at an odd one (after one NOP), with other options around.
        for options in [mssOption(1460) + [1, 3, 3, 7], [1] + mssOption(1460) + [4, 2, 1], [1, 1] + mssOption(8960)] {
            var b = PacketBuilder()
            b.tcpOptions = options
            let syn = b.tcp(from: client, 40002, to: vip, port)
            let (verdict, output, counted) = try lb.runCounted(syn)
            #expect(verdict == XDPVerdict.tx.rawValue)
            #expect(counted.mssClamped == 1)
            let inner = try innerPacket(output, mode: mode)
            #expect(mss(inSegment: tcpSegment(ofPacket: inner)) == clamp)
            #expect(tcpChecksumValid(inner), "TCP checksum fixed for options \(options)")
            let original = Array(syn[ipPacketRange(ofFrame: syn)!])
            #expect(inner.count == original.count)
            // Only the MSS value and the TCP checksum differ.
            let segmentStart = original.count - tcpSegment(ofPacket: original).count
            let mssAt = segmentStart + 20 + options.firstIndex(of: 2)! + 2
            let differing = Set(inner.indices.filter { inner[$0] != original[$0] })
            #expect(differing.isSubset(of: [segmentStart + 16, segmentStart + 17, mssAt, mssAt + 1]), "\(differing)")
        }
    }

    @Test("a SYN whose MSS fits, a SYN without MSS, and a SYN with no limit set are left alone")
    func notClamped() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setTunnel(mtu: 1500)
        var b = PacketBuilder()
        for options in [mssOption(1440), mssOption(536), [1, 1, 4, 2]] {
            b.tcpOptions = options
            let syn = b.tcp(from: clientV4, 40003, to: "198.51.100.10", 80)
            let (verdict, output, counted) = try lb.runCounted(syn)
            #expect(verdict == XDPVerdict.tx.rawValue)
            #expect(counted.mssClamped == 0)
            try expectTunnel(output, for: syn, to: TunnelFrame(output).outerDestination, node: lb.serviceFile.node)
        }
        try lb.setTunnel(mtu: 0)
        b.tcpOptions = mssOption(8960)
        let (_, _, counted) = try lb.runCounted(b.tcp(from: clientV4, 40004, to: "198.51.100.10", 80))
        #expect(counted.mssClamped == 0, "tunnel_mtu 0: no limit")
    }

    @Test("an oversize IPv4 DF packet gets ICMP fragmentation needed from the VIP", arguments: [
        (SL_FWD_IPIP.rawValue, UInt16(1480)), (SL_FWD_GUE.rawValue, UInt16(1472)),
    ])
    func icmp4TooBig(mode: UInt32, mtu: UInt16) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(sl_forwarding(mode), of: "web")
        try lb.setTunnel(mtu: 1500)
        var b = PacketBuilder()
        b.dontFragment = true
        let fits = b.tcp(from: clientV4, 40005, to: "198.51.100.10", 80, flags: [.ack], payload: Array(repeating: 1, count: Int(mtu) - 40))
        #expect(try lb.runCounted(fits).counted.icmpTooBig == 0, "exactly tunnel_mtu once encapsulated: forwarded")
        let big = b.tcp(from: clientV4, 40005, to: "198.51.100.10", 80, flags: [.ack], payload: Array(repeating: 1, count: Int(mtu) - 39))
        let (verdict, output, counted) = try lb.runCounted(big)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(counted.icmpTooBig == 1)
        let icmpFrameLength = 14 + 20 + 8 + 128
        #expect(output.count == icmpFrameLength)
        #expect(Array(output[0..<6]) == Array(big[6..<12]), "back to the sender's MAC")
        #expect(Array(output[6..<12]) == Array(big[0..<6]), "from ours")
        #expect(output.be16(12) == 0x0800)
        let ip = Array(output[14..<34])
        let ipLength: UInt16 = 20 + 8 + 128
        #expect(ip[0] == 0x45 && ip[9] == 1 && ip.be16(2) == ipLength)
        #expect(internetChecksum(ip) == 0, "IPv4 header checksum")
        #expect(Array(ip[12..<16]) == IPAddress("198.51.100.10")!.bytes, "from the VIP")
        #expect(Array(ip[16..<20]) == IPAddress(clientV4)!.bytes, "to the client")
        let icmp = Array(output[34...])
        #expect(icmp[0] == 3 && icmp[1] == 4, "destination unreachable, fragmentation needed")
        #expect(icmp.be16(4) == 0 && icmp.be16(6) == mtu, "next-hop MTU")
        #expect(internetChecksum(icmp) == 0, "ICMP checksum")
        #expect(Array(icmp[8...]) == Array(big[14..<(14 + 128)]), "quotes the packet's first 128 bytes")
    }

    @Test("an oversize IPv4 packet without DF is dropped as too_big")
    func icmp4NoDF() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setTunnel(mtu: 1500)
        let big = PacketBuilder().udp(from: clientV4, 5353, to: "198.51.100.10", 53, payload: Array(repeating: 1, count: 1472))
        let (verdict, _, counted) = try lb.runCounted(big)
        #expect(verdict == XDPVerdict.drop.rawValue)
        // The flow's first datagram: a conntrack miss, held in sl_ct_unconfirmed, then dropped.
        #expect(counted == NodeStats(.drop, drop: .tooBig, ctMisses: 1, ctUnconfirmed: 1))
    }

    @Test("an oversize IPv6 packet gets ICMPv6 packet too big from the VIP", arguments: [
        (SL_FWD_IPIP.rawValue, UInt32(1460)), (SL_FWD_GUE.rawValue, UInt32(1452)),
    ])
    func icmp6TooBig(mode: UInt32, mtu: UInt32) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(sl_forwarding(mode), of: "web6")
        try lb.setTunnel(mtu: 1500)
        let big = PacketBuilder().tcp(from: clientV6, 40006, to: "2001:db8::80", 443, flags: [.ack],
                                      payload: Array(repeating: 1, count: Int(mtu) - 59))
        let (verdict, output, counted) = try lb.runCounted(big)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(counted.icmpTooBig == 1)
        let icmpFrameLength = 14 + 40 + 8 + 128
        #expect(output.count == icmpFrameLength)
        #expect(Array(output[0..<6]) == Array(big[6..<12]) && output.be16(12) == 0x86dd)
        let ip = Array(output[14..<54])
        let payloadLength: UInt16 = 8 + 128
        #expect(ip[0] >> 4 == 6 && ip.be16(4) == payloadLength && ip[6] == 58)
        #expect(Array(ip[8..<24]) == IPAddress("2001:db8::80")!.bytes && Array(ip[24..<40]) == IPAddress(clientV6)!.bytes)
        let icmp = Array(output[54...])
        #expect(icmp[0] == 2 && icmp[1] == 0, "packet too big")
        #expect(UInt32(icmp.be16(4)) << 16 | UInt32(icmp.be16(6)) == mtu)
        let pseudo = Array(ip[8..<40]) + [0, 0] + be16Bytes(UInt16(icmp.count)) + [0, 0, 0, 58]
        #expect(internetChecksum(pseudo + icmp) == 0, "ICMPv6 checksum")
        #expect(Array(icmp[8...]) == Array(big[14..<(14 + 128)]))
    }

    /// The inner IP packet of an IP-in-IP or GUE frame (untagged).
    func innerPacket(_ output: [UInt8], mode: UInt32) throws -> [UInt8] {
        let tunnel = output.be16(12) == 0x0800 ? 20 : 40
        return Array(output[(14 + tunnel + (mode == SL_FWD_GUE.rawValue ? 8 : 0))...])
    }
}
