// The test tools themselves: PacketBuilder writes the headers it promises, and
// TunnelFrame accepts a well-formed tunnel and rejects every broken one. No
// kernel needed.

import SluiceCore
import SluiceTestSupport
import Testing

/// The sum over pseudo header + segment of a packet with a correct L4 checksum is 0.
private func l4ChecksumHolds(_ ip: [UInt8]) -> Bool {
    let v4 = ip[0] >> 4 == 4
    let headerLength = v4 ? Int(ip[0] & 0x0f) * 4 : 40
    let proto = v4 ? ip[9] : ip[6]
    let segment = Array(ip[headerLength...])
    var pseudo: [UInt8]
    if v4 {
        pseudo = Array(ip[12..<20]) + [0, proto, UInt8(segment.count >> 8), UInt8(segment.count & 0xff)]
        if proto == 1 { pseudo = [] }  // ICMPv4 has no pseudo header
    } else {
        pseudo = Array(ip[8..<40]) + [0, 0, UInt8(segment.count >> 8), UInt8(segment.count & 0xff), 0, 0, 0, proto]
    }
    return internetChecksum(pseudo + segment) == 0
}

@Suite struct PacketBuilderTests {
    let b = PacketBuilder()

    @Test func anIPv4TCPSegmentHasEveryHeaderFieldInPlace() {
        var builder = b
        builder.tos = 0xb8
        builder.ttl = 17
        let f = builder.tcp(from: "10.0.0.1", 1234, to: "10.0.0.2", 80, flags: [.syn, .ack], payload: [1, 2, 3])
        #expect(Array(f[0..<6]) == b.destinationMAC && Array(f[6..<12]) == b.sourceMAC)
        #expect(f.be16(12) == 0x0800)
        #expect(f[14] == 0x45 && f[15] == 0xb8)
        #expect(f.be16(16) == 20 + 20 + 3, "tot_len")
        #expect(f.be16(20) == 0, "no fragment bits")
        #expect(f[22] == 17 && f[23] == 6)
        #expect(internetChecksum(f[14..<34]) == 0, "IPv4 header checksum")
        #expect(Array(f[26..<30]) == [10, 0, 0, 1] && Array(f[30..<34]) == [10, 0, 0, 2])
        #expect(f.be16(34) == 1234 && f.be16(36) == 80)
        #expect(f[46] == 0x50, "data offset 5")
        #expect(f[47] == TCPFlag.syn.rawValue | TCPFlag.ack.rawValue)
        #expect(Array(f.suffix(3)) == [1, 2, 3])
        #expect(l4ChecksumHolds(Array(f[14...])))
        #expect(f.count == 14 + 20 + 20 + 3)
    }

    @Test func ipv6UDPAndTCPCarryCorrectChecksumsAndLengths() {
        var builder = b
        builder.tos = 0xa5
        let udp = builder.udp(from: "2001:db8::1", 53, to: "2001:db8::2", 5353, payload: Array(0..<11))
        #expect(udp.be16(12) == 0x86dd)
        #expect(udp[14] == 0x6a && udp[15] >> 4 == 0x5, "traffic class 0xa5")
        #expect(udp.be16(18) == 8 + 11, "payload_len")
        #expect(udp[20] == 17 && udp[21] == 64)
        #expect(udp.be16(54 + 4) == 8 + 11, "UDP length")
        #expect(l4ChecksumHolds(Array(udp[14...])))
        let tcp = b.tcp(from: "2001:db8::1", 1, to: "2001:db8::2", 2)
        #expect(l4ChecksumHolds(Array(tcp[14...])))
        #expect(l4ChecksumHolds(Array(b.udp(from: "10.0.0.1", 1, to: "10.0.0.2", 2, payload: [7])[14...])))
    }

    @Test func icmpEchoesAreEchoRequestsWithValidChecksums() {
        let v4 = b.icmpEcho(from: "10.0.0.1", to: "10.0.0.2")
        #expect(v4[23] == 1 && v4[34] == 8)
        #expect(l4ChecksumHolds(Array(v4[14...])))
        let v6 = b.icmpEcho(from: "2001:db8::1", to: "2001:db8::2")
        #expect(v6[20] == 58 && v6[54] == 128)
        #expect(l4ChecksumHolds(Array(v6[14...])))
    }

    @Test func aVLANTagOptionsAndFragmentBitsAreWrittenAsConfigured() {
        var builder = b
        builder.vlan = 0x2064
        builder.ipv4Options = [0x94, 0x04]
        builder.moreFragments = true
        builder.fragmentOffset = 3
        let f = builder.udp(from: "10.0.0.1", 1, to: "10.0.0.2", 2)
        #expect(f.be16(12) == 0x8100 && f.be16(14) == 0x2064 && f.be16(16) == 0x0800)
        #expect(f[18] == 0x46, "IHL 6: options padded to 4 bytes")
        #expect(Array(f[38..<42]) == [0x94, 0x04, 0, 0])
        #expect(f.be16(24) == 0x2003, "MF and offset 3")
        #expect(internetChecksum(f[18..<42]) == 0)

        var frag6 = b
        frag6.fragmentOffset = 5
        let g = frag6.udp(from: "2001:db8::1", 1, to: "2001:db8::2", 2)
        #expect(g[20] == 44, "fragment header")
        #expect(g[54] == 17 && g.be16(56) == 5 << 3)
        #expect(g.be16(18) == 8 + 8)
    }

    @Test func anARPRequestIsABroadcastWhoHas() {
        let f = b.arpRequest(from: "10.0.0.1", to: "10.0.0.2")
        #expect(Array(f[0..<6]) == [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        #expect(f.be16(12) == 0x0806 && f.be16(20) == 1)
        #expect(Array(f[22..<28]) == b.sourceMAC && Array(f[28..<32]) == [10, 0, 0, 1] && Array(f[38..<42]) == [10, 0, 0, 2])
    }
}

@Suite struct TunnelFrameTests {
    let node = NodeConfig(sourceV4: IPAddress("192.0.2.10"), sourceV6: IPAddress("2001:db8:ffff::10"))
    let input = PacketBuilder().tcp(from: "203.0.113.7", 1000, to: "198.51.100.10", 80, payload: [1, 2, 3, 4])

    @Test func aWellFormedTunnelParsesIntoItsFields() throws {
        let out = expectedTunnelFrame(input: input, backend: IPAddress("10.1.0.21")!, node: node)
        let frame = try TunnelFrame(out)
        #expect(frame.outerFamily == .v4 && frame.innerFamily == .v4)
        #expect(frame.outerSource == node.sourceV4 && frame.outerDestination == IPAddress("10.1.0.21"))
        #expect(frame.ttl == 64 && frame.protocolNumber == 4 && frame.dontFragment && frame.headerChecksumValid)
        #expect(frame.inner == Array(input[14...]))
        #expect(frame.innerFlow == IPFlow(frame: input))

        let six = try TunnelFrame(expectedTunnelFrame(input: input, backend: IPAddress("2001:db8::5")!, node: node))
        #expect(six.outerFamily == .v6 && six.nextHeader == 4 && six.outerPayloadLength == input.count - 14)
    }

    @Test func aBrokenTunnelIsRejectedWithAReason() {
        let good = expectedTunnelFrame(input: input, backend: IPAddress("10.1.0.21")!, node: node)
        var badChecksum = good
        badChecksum[24] ^= 0xff
        var longOuter = good
        longOuter.setBE16(16, longOuter.be16(16) + 4)
        var shortOuter = good
        shortOuter.setBE16(16, shortOuter.be16(16) - 4)
        var wrongProtocol = good
        wrongProtocol[23] = 41
        var notIP = good
        notIP.setBE16(12, 0x0806)
        let mismatched = expectedTunnelFrame(input: PacketBuilder().tcp(from: "2001:db8::1", 1, to: "2001:db8::2", 2),
                                             backend: IPAddress("2001:db8::5")!, node: node)
        var v6AsV4 = mismatched
        v6AsV4[20] = 4

        for (name, frame) in [("checksum", badChecksum), ("tot_len past the frame", longOuter), ("tot_len short of the inner", shortOuter),
                              ("protocol 41 over IPv4", wrongProtocol), ("not IP", notIP), ("IPv6 inner announced as IPv4", v6AsV4),
                              ("cut", Array(good.prefix(30)))] {
            #expect(throws: TunnelFrameError.self, "\(name)") { try TunnelFrame(frame) }
        }
        #expect((try? TunnelFrame(badChecksum, requireValidChecksum: false))?.headerChecksumValid == false)
    }
}
