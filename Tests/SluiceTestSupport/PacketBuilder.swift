// Builds Ethernet frames byte by byte for data-plane and end-to-end tests.
//
// Every frame is written out field by field, in network order, so a test can
// see exactly what the program under test receives. IPv4 header checksums are
// always correct; TCP, UDP and ICMP checksums are computed over the usual
// pseudo header too (the balancer does not check them, but a real stack does).

import SluiceCore

public enum TCPFlag: UInt8, Sendable {
    case fin = 0x01, syn = 0x02, rst = 0x04, psh = 0x08, ack = 0x10
}

public struct PacketBuilder: Sendable {
    public var sourceMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0xaa]
    public var destinationMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0xbb]
    /// 802.1Q TCI; nil = untagged.
    public var vlan: UInt16? = nil
    /// IPv4 options, padded with zero (end-of-options) bytes to a multiple of 4.
    public var ipv4Options: [UInt8] = []
    /// IPv4 TTL or IPv6 hop limit.
    public var ttl: UInt8 = 64
    /// IPv4 TOS or IPv6 traffic class.
    public var tos: UInt8 = 0
    /// Fragment offset in 8-byte units. For IPv6, a non-zero offset or
    /// `moreFragments` adds a fragment extension header.
    public var fragmentOffset: UInt16 = 0
    public var moreFragments = false
    /// IPv4 DF (don't fragment).
    public var dontFragment = false
    /// TCP options, padded with zero (end-of-options) bytes to a multiple of 4.
    public var tcpOptions: [UInt8] = []
    /// TCP sequence number; nil = 0x10000001.
    public var sequence: UInt32? = nil
    /// TCP acknowledgment number; nil = 0x20000001 with ACK set, else 0.
    public var acknowledgment: UInt32? = nil

    public init() {}

    public func tcp(from: String, _ sport: UInt16, to: String, _ dport: UInt16,
                    flags: Set<TCPFlag> = [.syn], payload: [UInt8] = []) -> [UInt8] {
        let (src, dst) = Self.addresses(from, to)
        var segment: [UInt8] = []
        segment.appendBig(sport)
        segment.appendBig(dport)
        segment.appendBig(sequence ?? 0x1000_0001)                              // sequence number
        segment.appendBig(acknowledgment ?? (flags.contains(.ack) ? 0x2000_0001 : 0)) // acknowledgment number
        var options = tcpOptions
        while options.count % 4 != 0 { options.append(0) }
        precondition(options.count <= 40, "TCP options are at most 40 bytes")
        segment.append(UInt8(5 + options.count / 4) << 4)                // data offset, reserved 0
        segment.append(flags.reduce(0) { $0 | $1.rawValue })
        segment.appendBig(UInt16(65535))                                 // window
        segment.appendBig(UInt16(0))                                     // checksum, below
        segment.appendBig(UInt16(0))                                     // urgent pointer
        segment += options + payload
        Self.setChecksum(&segment, at: 16, pseudo: Self.pseudoHeader(src, dst, protocol: 6, length: segment.count))
        return frame(ip(src, dst, protocol: 6, payload: segment))
    }

    public func udp(from: String, _ sport: UInt16, to: String, _ dport: UInt16, payload: [UInt8] = []) -> [UInt8] {
        let (src, dst) = Self.addresses(from, to)
        var datagram: [UInt8] = []
        datagram.appendBig(sport)
        datagram.appendBig(dport)
        datagram.appendBig(UInt16(8 + payload.count))
        datagram.appendBig(UInt16(0))
        datagram += payload
        Self.setChecksum(&datagram, at: 6, pseudo: Self.pseudoHeader(src, dst, protocol: 17, length: datagram.count))
        // In UDP a computed 0 is sent as 0xffff (0 means "no checksum").
        if datagram[6] == 0, datagram[7] == 0 { datagram[6] = 0xff; datagram[7] = 0xff }
        return frame(ip(src, dst, protocol: 17, payload: datagram))
    }

    public func icmpEcho(from: String, to: String) -> [UInt8] {
        let (src, dst) = Self.addresses(from, to)
        let v6 = src.family == .v6
        var message: [UInt8] = [v6 ? 128 : 8, 0, 0, 0]
        message.appendBig(UInt16(0x5d1c))   // identifier
        message.appendBig(UInt16(1))        // sequence
        message += Array("sluice-ping".utf8)
        let proto: UInt8 = v6 ? 58 : 1
        // ICMPv4 has no pseudo header; ICMPv6 does.
        Self.setChecksum(&message, at: 2, pseudo: v6 ? Self.pseudoHeader(src, dst, protocol: proto, length: message.count) : [])
        return frame(ip(src, dst, protocol: proto, payload: message))
    }

    /// An ICMP or ICMPv6 error from `from` (a router) to `to` with `type`, `code`, the 32-bit
    /// word after the checksum (`rest`: unused, or the MTU) and `quoting` (an IP packet, as
    /// much of it as a router would quote) as its body.
    public func icmpError(from: String, to: String, type: UInt8, code: UInt8, rest: UInt32 = 0,
                          quoting quote: [UInt8]) -> [UInt8] {
        let (src, dst) = Self.addresses(from, to)
        let v6 = src.family == .v6
        var message: [UInt8] = [type, code, 0, 0]
        message.appendBig(rest)
        message += quote
        let proto: UInt8 = v6 ? 58 : 1
        Self.setChecksum(&message, at: 2, pseudo: v6 ? Self.pseudoHeader(src, dst, protocol: proto, length: message.count) : [])
        return frame(ip(src, dst, protocol: proto, payload: message))
    }

    /// A who-has request from `from` (sourceMAC) for `to`, sent to broadcast.
    public func arpRequest(from: String, to: String) -> [UInt8] {
        let (src, dst) = Self.addresses(from, to)
        precondition(src.family == .v4, "ARP is IPv4 only")
        var arp: [UInt8] = []
        arp.appendBig(UInt16(1))            // hardware type: Ethernet
        arp.appendBig(UInt16(0x0800))       // protocol type: IPv4
        arp += [6, 4]
        arp.appendBig(UInt16(1))            // request
        arp += sourceMAC + src.bytes
        arp += [UInt8](repeating: 0, count: 6) + dst.bytes
        return ethernet(destination: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], etherType: 0x0806, payload: arp)
    }

    // MARK: - Layers

    private func frame(_ ipPacket: (etherType: UInt16, bytes: [UInt8])) -> [UInt8] {
        ethernet(destination: destinationMAC, etherType: ipPacket.etherType, payload: ipPacket.bytes)
    }

    private func ethernet(destination: [UInt8], etherType: UInt16, payload: [UInt8]) -> [UInt8] {
        precondition(destination.count == 6 && sourceMAC.count == 6, "a MAC address is 6 bytes")
        var out = destination + sourceMAC
        if let vlan {
            out.appendBig(UInt16(0x8100))
            out.appendBig(vlan)
        }
        out.appendBig(etherType)
        return out + payload
    }

    private func ip(_ src: IPAddress, _ dst: IPAddress, protocol proto: UInt8, payload: [UInt8]) -> (etherType: UInt16, bytes: [UInt8]) {
        src.family == .v4 ? (0x0800, ipv4(src, dst, protocol: proto, payload: payload))
                          : (0x86dd, ipv6(src, dst, protocol: proto, payload: payload))
    }

    private func ipv4(_ src: IPAddress, _ dst: IPAddress, protocol proto: UInt8, payload: [UInt8]) -> [UInt8] {
        var options = ipv4Options
        while options.count % 4 != 0 { options.append(0) }
        precondition(options.count <= 40, "IPv4 options are at most 40 bytes")
        let headerLength = 20 + options.count
        var header: [UInt8] = [0x40 | UInt8(headerLength / 4), tos]
        header.appendBig(UInt16(headerLength + payload.count))
        header.appendBig(UInt16(0x1234))                                  // identification
        header.appendBig((dontFragment ? 0x4000 : 0) | (moreFragments ? 0x2000 : 0) | (fragmentOffset & 0x1fff))
        header += [ttl, proto, 0, 0]
        header += src.bytes + dst.bytes + options
        let sum = internetChecksum(header)
        header[10] = UInt8(sum >> 8)
        header[11] = UInt8(sum & 0xff)
        return header + payload
    }

    private func ipv6(_ src: IPAddress, _ dst: IPAddress, protocol proto: UInt8, payload: [UInt8]) -> [UInt8] {
        var body = payload
        var nextHeader = proto
        if fragmentOffset != 0 || moreFragments {
            var fragment: [UInt8] = [proto, 0]
            fragment.appendBig(UInt16((fragmentOffset & 0x1fff) << 3) | (moreFragments ? 1 : 0))
            fragment.appendBig(UInt32(0x5eed_f00d))                      // identification
            body = fragment + payload
            nextHeader = 44
        }
        var header: [UInt8] = []
        header.appendBig(UInt32(6) << 28 | UInt32(tos) << 20)             // version, traffic class, flow label 0
        header.appendBig(UInt16(body.count))
        header += [nextHeader, ttl]
        header += src.bytes + dst.bytes
        return header + body
    }

    // MARK: - Helpers

    private static func addresses(_ from: String, _ to: String) -> (IPAddress, IPAddress) {
        guard let src = IPAddress(from) else { preconditionFailure("not an IP address: \(from)") }
        guard let dst = IPAddress(to) else { preconditionFailure("not an IP address: \(to)") }
        precondition(src.family == dst.family, "\(from) and \(to) are of different families")
        return (src, dst)
    }

    private static func pseudoHeader(_ src: IPAddress, _ dst: IPAddress, protocol proto: UInt8, length: Int) -> [UInt8] {
        var pseudo = src.bytes + dst.bytes
        if src.family == .v4 {
            pseudo += [0, proto]
            pseudo.appendBig(UInt16(length))
        } else {
            pseudo.appendBig(UInt32(length))
            pseudo += [0, 0, 0, proto]
        }
        return pseudo
    }

    private static func setChecksum(_ bytes: inout [UInt8], at offset: Int, pseudo: [UInt8]) {
        let sum = internetChecksum(pseudo + bytes)
        bytes[offset] = UInt8(sum >> 8)
        bytes[offset + 1] = UInt8(sum & 0xff)
    }
}

/// The RFC 1071 one's-complement checksum of `bytes` (an odd tail is padded with 0).
/// Over a header whose checksum field is filled in, a valid header gives 0.
public func internetChecksum<C: Collection>(_ bytes: C) -> UInt16 where C.Element == UInt8 {
    var sum: UInt32 = 0
    var iterator = bytes.makeIterator()
    while let high = iterator.next() {
        let low = iterator.next() ?? 0
        sum += UInt32(high) << 8 | UInt32(low)
    }
    while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
    return ~UInt16(sum)
}

extension Array where Element == UInt8 {
    mutating func appendBig(_ value: UInt16) {
        append(UInt8(value >> 8))
        append(UInt8(value & 0xff))
    }

    mutating func appendBig(_ value: UInt32) {
        appendBig(UInt16(value >> 16))
        appendBig(UInt16(value & 0xffff))
    }
}
