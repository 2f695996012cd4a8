// Parses what the balancer sends: Ethernet (with at most one VLAN tag), an
// outer IPv4 or IPv6 header, and the inner IP packet it carries. Throws, with
// a message that says which field is wrong, when the frame is not a
// well-formed IP-in-IP / IPv6-in-IPv6 / IPv4-in-IPv6 tunnel packet.

import SluiceCore

public struct TunnelFrameError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct TunnelFrame: Sendable {
    public static let ipv4EtherType: UInt16 = 0x0800
    public static let ipv6EtherType: UInt16 = 0x86dd
    public static let vlanTPIDs: Set<UInt16> = [0x8100, 0x88a8]
    /// IPPROTO_IPIP and IPPROTO_IPV6: the outer protocol for an IPv4 or IPv6 inner packet.
    public static let protocolIPIP: UInt8 = 4
    public static let protocolIPv6: UInt8 = 41

    // MARK: Link layer
    public let destinationMAC: [UInt8]
    public let sourceMAC: [UInt8]
    /// The tag's TPID (0x8100 or 0x88a8), nil when untagged.
    public let vlanTPID: UInt16?
    /// The tag's TCI, nil when untagged.
    public let vlan: UInt16?
    /// The L3 ethertype (after the tag, if any).
    public let etherType: UInt16
    /// Bytes of Ethernet + tag before the outer IP header.
    public let linkHeaderLength: Int

    // MARK: Outer IP header
    public let outerFamily: IPAddress.Family
    /// The outer IP header as it is on the wire (20 bytes + options, or 40).
    public let outerHeader: [UInt8]
    public let outerSource: IPAddress
    public let outerDestination: IPAddress
    /// TTL (IPv4) or hop limit (IPv6).
    public let ttl: UInt8
    public var hopLimit: UInt8 { ttl }
    /// Protocol (IPv4) or next header (IPv6): 4 or 41.
    public let protocolNumber: UInt8
    public var nextHeader: UInt8 { protocolNumber }
    /// IPv4 TOS or IPv6 traffic class.
    public let tos: UInt8
    public var trafficClass: UInt8 { tos }
    /// IPv6 flow label (0 for IPv4).
    public let flowLabel: UInt32
    /// IPv4 tot_len; nil for IPv6.
    public let outerTotalLength: Int?
    /// IPv6 payload_len; nil for IPv4.
    public let outerPayloadLength: Int?
    /// IPv4 identification (0 for IPv6).
    public let identification: UInt16
    /// IPv4 DF bit (false for IPv6).
    public let dontFragment: Bool
    /// IPv4 header checksum correct (true for IPv6, which has none).
    public let headerChecksumValid: Bool

    // MARK: Payload
    /// The inner IP packet, exactly the outer header's payload.
    public let inner: [UInt8]
    public let innerFamily: IPAddress.Family
    /// Bytes after the outer packet (Ethernet padding carried over from the input).
    public let trailer: [UInt8]

    /// - Parameter requireValidChecksum: false accepts a wrong IPv4 header
    ///   checksum (and reports it in `headerChecksumValid`).
    public init(_ frame: [UInt8], requireValidChecksum: Bool = true) throws {
        func fail(_ message: String) -> TunnelFrameError {
            TunnelFrameError("not a tunnel frame (\(frame.count) bytes): \(message)")
        }
        guard frame.count >= 14 else { throw fail("shorter than an Ethernet header") }
        destinationMAC = Array(frame[0..<6])
        sourceMAC = Array(frame[6..<12])
        var offset = 12
        var type = frame.be16(at: offset)
        offset += 2
        if Self.vlanTPIDs.contains(type) {
            guard frame.count >= offset + 4 else { throw fail("VLAN tag cut short") }
            vlanTPID = type
            vlan = frame.be16(at: offset)
            type = frame.be16(at: offset + 2)
            offset += 4
        } else {
            vlanTPID = nil
            vlan = nil
        }
        etherType = type
        linkHeaderLength = offset

        let packetLength: Int
        let headerLength: Int
        switch type {
        case Self.ipv4EtherType:
            outerFamily = .v4
            guard frame.count >= offset + 20 else { throw fail("outer IPv4 header cut short") }
            let version = frame[offset] >> 4
            let ihl = Int(frame[offset] & 0x0f)
            guard version == 4 else { throw fail("ethertype IPv4 but outer version \(version)") }
            guard ihl >= 5 else { throw fail("outer IHL \(ihl) < 5") }
            headerLength = ihl * 4
            guard frame.count >= offset + headerLength else { throw fail("outer IPv4 options cut short") }
            packetLength = Int(frame.be16(at: offset + 2))
            guard packetLength >= headerLength else {
                throw fail("outer tot_len \(packetLength) is shorter than its header (\(headerLength))")
            }
            guard frame.count >= offset + packetLength else {
                throw fail("outer tot_len \(packetLength) runs past the frame (\(frame.count - offset) bytes of IP)")
            }
            let header = Array(frame[offset..<(offset + headerLength)])
            headerChecksumValid = internetChecksum(header) == 0
            if requireValidChecksum, !headerChecksumValid {
                throw fail("outer IPv4 header checksum 0x\(String(frame.be16(at: offset + 10), radix: 16)) is wrong")
            }
            let fragment = frame.be16(at: offset + 6)
            guard fragment & 0x3fff == 0 else { throw fail("the outer packet is a fragment (frag_off 0x\(String(fragment, radix: 16)))") }
            outerHeader = header
            tos = frame[offset + 1]
            identification = frame.be16(at: offset + 4)
            dontFragment = fragment & 0x4000 != 0
            ttl = frame[offset + 8]
            protocolNumber = frame[offset + 9]
            outerSource = IPAddress(bytes: Array(frame[(offset + 12)..<(offset + 16)]))!
            outerDestination = IPAddress(bytes: Array(frame[(offset + 16)..<(offset + 20)]))!
            flowLabel = 0
            outerTotalLength = packetLength
            outerPayloadLength = nil
        case Self.ipv6EtherType:
            outerFamily = .v6
            headerLength = 40
            guard frame.count >= offset + 40 else { throw fail("outer IPv6 header cut short") }
            let word = frame.be32(at: offset)
            guard word >> 28 == 6 else { throw fail("ethertype IPv6 but outer version \(word >> 28)") }
            let payload = Int(frame.be16(at: offset + 4))
            packetLength = 40 + payload
            guard frame.count >= offset + packetLength else {
                throw fail("outer payload_len \(payload) runs past the frame (\(frame.count - offset - 40) bytes after the header)")
            }
            outerHeader = Array(frame[offset..<(offset + 40)])
            tos = UInt8((word >> 20) & 0xff)
            flowLabel = word & 0xfffff
            protocolNumber = frame[offset + 6]
            ttl = frame[offset + 7]
            outerSource = IPAddress(bytes: Array(frame[(offset + 8)..<(offset + 24)]))!
            outerDestination = IPAddress(bytes: Array(frame[(offset + 24)..<(offset + 40)]))!
            identification = 0
            dontFragment = false
            headerChecksumValid = true
            outerTotalLength = nil
            outerPayloadLength = payload
        default:
            throw fail("ethertype 0x\(String(type, radix: 16)) is neither IPv4 nor IPv6")
        }

        switch protocolNumber {
        case Self.protocolIPIP: innerFamily = .v4
        case Self.protocolIPv6: innerFamily = .v6
        default: throw fail("outer protocol \(protocolNumber) is neither IPIP (4) nor IPv6 (41)")
        }
        inner = Array(frame[(offset + headerLength)..<(offset + packetLength)])
        trailer = Array(frame[(offset + packetLength)...])

        // The inner packet must be exactly one IP packet of the announced family.
        guard let first = inner.first else { throw fail("the outer packet carries no payload") }
        let innerVersion = first >> 4
        switch innerFamily {
        case .v4:
            guard innerVersion == 4 else { throw fail("protocol IPIP but the inner packet is version \(innerVersion)") }
            guard inner.count >= 20 else { throw fail("inner IPv4 header cut short (\(inner.count) bytes)") }
            let innerLength = Int(inner.be16(at: 2))
            guard innerLength == inner.count else {
                throw fail("inner tot_len \(innerLength) != outer payload \(inner.count)")
            }
        case .v6:
            guard innerVersion == 6 else { throw fail("protocol IPv6 but the inner packet is version \(innerVersion)") }
            guard inner.count >= 40 else { throw fail("inner IPv6 header cut short (\(inner.count) bytes)") }
            let innerLength = 40 + Int(inner.be16(at: 4))
            guard innerLength == inner.count else {
                throw fail("inner length 40 + payload_len = \(innerLength) != outer payload \(inner.count)")
            }
        }
    }

    /// The inner packet's 5-tuple (nil unless it is an unfragmented TCP or UDP
    /// packet whose ports lie inside it).
    public var innerFlow: IPFlow? { IPFlow(ipPacket: inner) }
}

/// The addresses, protocol and ports of a TCP or UDP packet.
public struct IPFlow: Hashable, Sendable, CustomStringConvertible {
    public var source: IPAddress
    public var destination: IPAddress
    public var protocolNumber: UInt8
    public var sourcePort: UInt16
    public var destinationPort: UInt16

    public init(source: IPAddress, destination: IPAddress, protocolNumber: UInt8,
                sourcePort: UInt16, destinationPort: UInt16) {
        self.source = source
        self.destination = destination
        self.protocolNumber = protocolNumber
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
    }

    /// Reads an IPv4 (with options) or IPv6 (no extension headers) packet.
    public init?(ipPacket p: [UInt8]) {
        guard let first = p.first else { return nil }
        let l4: Int
        switch first >> 4 {
        case 4:
            l4 = Int(first & 0x0f) * 4
            guard p.count >= 20, p.be16(at: 6) & 0x3fff == 0 else { return nil }
            protocolNumber = p[9]
            source = IPAddress(bytes: Array(p[12..<16]))!
            destination = IPAddress(bytes: Array(p[16..<20]))!
        case 6:
            l4 = 40
            guard p.count >= 40 else { return nil }
            protocolNumber = p[6]
            source = IPAddress(bytes: Array(p[8..<24]))!
            destination = IPAddress(bytes: Array(p[24..<40]))!
        default:
            return nil
        }
        guard protocolNumber == 6 || protocolNumber == 17, p.count >= l4 + 4 else { return nil }
        sourcePort = p.be16(at: l4)
        destinationPort = p.be16(at: l4 + 2)
    }

    /// Reads the IP packet of an Ethernet frame (with at most one VLAN tag).
    public init?(frame: [UInt8]) {
        guard let range = ipPacketRange(ofFrame: frame) else { return nil }
        self.init(ipPacket: Array(frame[range]))
    }

    public var description: String {
        func host(_ a: IPAddress) -> String { a.family == .v6 ? "[\(a)]" : a.description }
        return "\(host(source)):\(sourcePort) -> \(host(destination)):\(destinationPort)/\(protocolNumber)"
    }
}

/// Where the IP packet of an Ethernet frame lies: from after the link header
/// to the end of the IP packet's own length (tot_len, or 40 + payload_len),
/// so Ethernet padding is left out. Nil when the frame is not IP or is cut.
public func ipPacketRange(ofFrame frame: [UInt8]) -> Range<Int>? {
    guard frame.count >= 14 else { return nil }
    var offset = 12
    var type = frame.be16(at: offset)
    offset += 2
    if TunnelFrame.vlanTPIDs.contains(type) {
        guard frame.count >= offset + 4 else { return nil }
        type = frame.be16(at: offset + 2)
        offset += 4
    }
    let length: Int
    switch type {
    case TunnelFrame.ipv4EtherType:
        guard frame.count >= offset + 4 else { return nil }
        length = Int(frame.be16(at: offset + 2))
    case TunnelFrame.ipv6EtherType:
        guard frame.count >= offset + 6 else { return nil }
        length = 40 + Int(frame.be16(at: offset + 4))
    default:
        return nil
    }
    guard frame.count >= offset + length else { return nil }
    return offset..<(offset + length)
}

extension Array where Element == UInt8 {
    func be16(at offset: Int) -> UInt16 {
        UInt16(self[offset]) << 8 | UInt16(self[offset + 1])
    }

    func be32(at offset: Int) -> UInt32 {
        UInt32(be16(at: offset)) << 16 | UInt32(be16(at: offset + 2))
    }
}
