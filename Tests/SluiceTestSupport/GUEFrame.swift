// Builds GUE frames as the balancer sends them (GUE variant 1, direct IP
// encapsulation, what Linux's `ip fou add port N gue` and Katran use): the
// frame's link header, an outer IPv4 or IPv6 header, UDP to the GUE port, then
// the inner IP packet itself. Outer fields follow the IP-in-IP tunnels (ID 0,
// DF, TTL/hop limit 64, TOS/traffic class copied, flow label 0); the UDP
// checksum is 0 under IPv4 and computed over the pseudo header under IPv6
// (where 0 is not allowed).

import SluiceCore

public enum GUEFrame {
    public static let protocolUDP: UInt8 = 17

    /// Wraps the IP packet of `frame` (or `inner`, if given) in outer IP + UDP
    /// from `from` to `to`, keeping the frame's Ethernet header and VLAN tag.
    /// `udpLength` overrides the UDP length field (for malformed frames); the
    /// IPv6 checksum is computed with whatever length is written.
    public static func wrap(_ frame: [UInt8], from: String, to: String, sourcePort: UInt16 = 49152,
                            port: UInt16 = 6080, inner: [UInt8]? = nil, udpLength: UInt16? = nil) -> [UInt8] {
        guard let src = IPAddress(from), let dst = IPAddress(to), src.family == dst.family else {
            preconditionFailure("GUE outer addresses \(from), \(to): two addresses of one family")
        }
        let link = TunnelFrame.vlanTPIDs.contains(frame.be16(at: 12)) ? 18 : 14
        let packet = inner ?? Array(frame[link...])
        let tos = innerTOS(packet)

        var udp: [UInt8] = []
        udp.appendBig(sourcePort)
        udp.appendBig(port)
        udp.appendBig(udpLength ?? UInt16(8 + packet.count))
        udp.appendBig(UInt16(0))
        udp += packet

        var out = Array(frame.prefix(link))
        if src.family == .v4 {
            out.putBE16(link - 2, TunnelFrame.ipv4EtherType)
            var header: [UInt8] = [0x45, tos]
            header.appendBig(UInt16(20 + udp.count))
            header += [0, 0, 0x40, 0, 64, protocolUDP, 0, 0]
            header += src.bytes + dst.bytes
            header.putBE16(10, internetChecksum(header))
            out += header
        } else {
            out.putBE16(link - 2, TunnelFrame.ipv6EtherType)
            var header: [UInt8] = []
            header.appendBig(UInt32(6) << 28 | UInt32(tos) << 20)
            header.appendBig(UInt16(udp.count))
            header += [protocolUDP, 64]
            header += src.bytes + dst.bytes
            udp.putBE16(6, udpChecksumV6(udp, from: src, to: dst))
            out += header
        }
        return out + udp
    }

    /// The UDP checksum of `datagram` (its checksum field taken as 0) between
    /// two IPv6 addresses, with a computed 0 sent as 0xffff (RFC 8200 8.1).
    public static func udpChecksumV6(_ datagram: [UInt8], from src: IPAddress, to dst: IPAddress) -> UInt16 {
        var zeroed = datagram
        zeroed.putBE16(6, 0)
        var pseudo = src.bytes + dst.bytes
        pseudo.appendBig(UInt32(datagram.count))
        pseudo += [0, 0, 0, protocolUDP]
        let sum = internetChecksum(pseudo + zeroed)
        return sum == 0 ? 0xffff : sum
    }

    /// IPv4 TOS or IPv6 traffic class of an IP packet (0 when it is neither).
    private static func innerTOS(_ packet: [UInt8]) -> UInt8 {
        guard packet.count >= 2 else { return 0 }
        switch packet[0] >> 4 {
        case 4: return packet[1]
        case 6: return (packet[0] & 0x0f) << 4 | packet[1] >> 4
        default: return 0
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func putBE16(_ offset: Int, _ value: UInt16) {
        self[offset] = UInt8(value >> 8)
        self[offset + 1] = UInt8(value & 0xff)
    }
}
