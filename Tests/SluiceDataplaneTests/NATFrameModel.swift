// The frame the balancer must send for a frame of a NAT or full-NAT flow, PROXY v2 included,
// computed from the frame and from the flow's entries as the maps held them before it: the
// translation's addresses and ports, the MACs, a PROXY flow's header, sequence and
// acknowledgement offsets, SACK edges and MSS, and every checksum the change touches, updated
// as RFC 1624 has it (so a frame that came with a wrong checksum leaves wrong by as much, and
// a valid one valid). The frame fuzzer checks every transmitted frame against it.
import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport

/// One's-complement sums modulo 0xffff of 16-bit big-endian words (RFC 1071).
enum OnesComplement {
    static func sum<C: Collection>(_ bytes: C) -> Int where C.Element == UInt8 {
        var total = 0, word = 0, high = true
        for byte in bytes {
            if high { word = Int(byte) << 8 } else { total += word | Int(byte) }
            high.toggle()
        }
        if !high { total += word }
        return total % 0xffff
    }

    /// A checksum after the words it covers changed from summing `old` to summing `new`
    /// (RFC 1624, eqn. 3), as an incremental update stores it: one of 0...0xfffe.
    static func updated(_ check: UInt16, old: Int, new: Int) -> UInt16 {
        UInt16(((Int(check) + old - new) % 0xffff + 0xffff) % 0xffff)
    }
}

/// A 32-bit big-endian field.
private func be32Bytes(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)] }

/// Where the headers of an IP frame lie (one VLAN tag at most, as the program parses).
struct IPFrameView {
    let l3: Int
    let ipEnd: Int
    let v4: Bool
    let l4: Int
    let proto: UInt8

    init?(_ frame: [UInt8]) {
        guard let range = ipPacketRange(ofFrame: frame), range.count >= 20 else { return nil }
        l3 = range.lowerBound
        ipEnd = range.upperBound
        v4 = frame[l3] >> 4 == 4
        l4 = l3 + (v4 ? Int(frame[l3] & 0x0f) * 4 : 40)
        proto = frame[l3 + (v4 ? 9 : 6)]
        guard l4 <= ipEnd, l4 <= frame.count else { return nil }
    }

    var addressLength: Int { v4 ? 4 : 16 }
    var sourceAt: Int { l3 + (v4 ? 12 : 8) }
    var destinationAt: Int { l3 + (v4 ? 16 : 24) }
    /// The offset of the IP length field: tot_len, or payload_len.
    var lengthAt: Int { l3 + (v4 ? 2 : 4) }
}

/// A TCP header's fields as the program reads them.
struct TCPView {
    let at: Int
    let flags: UInt8
    let headerLength: Int
    var syn: Bool { flags & 0x02 != 0 }
    var rst: Bool { flags & 0x04 != 0 }
    var ack: Bool { flags & 0x10 != 0 }
    init(_ frame: [UInt8], at: Int) {
        self.at = at
        flags = frame[at + 13]
        headerLength = Int(frame[at + 12] >> 4) * 4
    }
}

enum NATFrameModel {
    static let seenFIN = UInt8(SL_TCP_SEEN_FIN.rawValue), seenRST = UInt8(SL_TCP_SEEN_RST.rawValue)
    static let proxyOn = UInt8(SL_PROXY_ON.rawValue), proxyAcked = UInt8(SL_PROXY_ACKED.rawValue)

    static func proxyLength(v4: Bool) -> UInt32 { v4 ? UInt32(SL_PROXY_V2_LEN_V4) : UInt32(SL_PROXY_V2_LEN_V6) }

    /// The backend's acknowledgement `ack` in the client's stream: past the header, less its
    /// length; inside it, the stream's start.
    static func ackBack(_ ack: UInt32, proxySeq: UInt32, length: UInt32) -> UInt32 {
        Int32(bitPattern: ack &- proxySeq) >= Int32(length) ? ack &- length : proxySeq
    }

    /// Readdresses a TCP or UDP frame: the source and destination given (nil keeps that side)
    /// with their ports; the IPv4 header's and the transport checksum updated for them and for
    /// `tcpChange`, the sums of what else the caller changed in the TCP header.
    static func readdress(_ frame: [UInt8], source: (IPAddress, UInt16)?, destination: (IPAddress, UInt16)?,
                          tcpChange: (old: Int, new: Int) = (0, 0)) -> [UInt8] {
        guard let view = IPFrameView(frame) else { return [] }
        var out = frame
        var addressOld = 0, addressNew = 0, portOld = 0, portNew = 0
        func write(_ address: IPAddress, _ port: UInt16, addressAt: Int, portAt: Int) {
            addressOld += OnesComplement.sum(out[addressAt..<(addressAt + view.addressLength)])
            portOld += Int(out.be16(portAt))
            out.replaceSubrange(addressAt..<(addressAt + view.addressLength), with: address.bytes)
            out.setBE16(portAt, port)
            addressNew += OnesComplement.sum(address.bytes)
            portNew += Int(port)
        }
        if let (address, port) = source { write(address, port, addressAt: view.sourceAt, portAt: view.l4) }
        if let (address, port) = destination { write(address, port, addressAt: view.destinationAt, portAt: view.l4 + 2) }
        if view.v4 { out.setBE16(view.l3 + 10, OnesComplement.updated(out.be16(view.l3 + 10), old: addressOld, new: addressNew)) }
        let old = addressOld + portOld + tcpChange.old, new = addressNew + portNew + tcpChange.new
        if view.proto == 6 {
            out.setBE16(view.l4 + 16, OnesComplement.updated(out.be16(view.l4 + 16), old: old, new: new))
        } else if !(view.v4 && out.be16(view.l4 + 6) == 0) {
            let check = OnesComplement.updated(out.be16(view.l4 + 6), old: old, new: new)
            out.setBE16(view.l4 + 6, check == 0 ? 0xffff : check)  // RFC 768: a computed 0 is sent as all ones
        }
        return out
    }

    /// Sets a 32-bit TCP field and returns the sums of its old and new value.
    static func set32(_ frame: inout [UInt8], at: Int, _ value: UInt32) -> (old: Int, new: Int) {
        let old = OnesComplement.sum(frame[at..<(at + 4)])
        frame.replaceSubrange(at..<(at + 4), with: be32Bytes(value))
        return (old, OnesComplement.sum(be32Bytes(value)))
    }

    /// Sets the IP packet's length (and the IPv4 header's checksum for it).
    static func setIPLength(_ frame: inout [UInt8], _ view: IPFrameView, to length: Int) {
        if view.v4 {
            let old = Int(frame.be16(view.lengthAt))
            frame.setBE16(view.lengthAt, UInt16(length))
            frame.setBE16(view.l3 + 10, OnesComplement.updated(frame.be16(view.l3 + 10), old: old, new: length))
        } else {
            frame.setBE16(view.lengthAt, UInt16(length - 40))
        }
    }

    /// The bytes of the PROXY v2 header the program writes past the TCP header: `flow` is the client's (client -> VIP).
    static func insertHeader(_ frame: [UInt8], flow: IPFlow) -> [UInt8] {
        guard let view = IPFrameView(frame) else { return [] }
        let tcp = TCPView(frame, at: view.l4)
        let header = proxyV2Header(client: flow.source, flow.sourcePort, vip: flow.destination, flow.destinationPort)
        let at = view.l4 + tcp.headerLength
        guard at <= frame.count else { return [] }
        let tcpLength = view.ipEnd - view.l4
        var out = Array(frame[..<at]) + header + Array(frame[at...])
        setIPLength(&out, view, to: view.ipEnd - view.l3 + header.count)
        let lengthOld = OnesComplement.sum(be32Bytes(UInt32(tcpLength))), lengthNew = OnesComplement.sum(be32Bytes(UInt32(tcpLength + header.count)))
        out.setBE16(view.l4 + 16, OnesComplement.updated(out.be16(view.l4 + 16), old: lengthOld, new: lengthNew + OnesComplement.sum(header)))
        return out
    }

    /// A SYN without its data (TCP Fast Open), its TCP checksum computed anew over what remains.
    static func trimSYN(_ frame: [UInt8]) -> [UInt8] {
        guard let view = IPFrameView(frame) else { return [] }
        let tcp = TCPView(frame, at: view.l4)
        var out = Array(frame[..<(view.l4 + tcp.headerLength)])
        setIPLength(&out, view, to: view.l4 - view.l3 + tcp.headerLength)
        out.setBE16(view.l4 + 16, 0)
        let pseudo = OnesComplement.sum(out[view.sourceAt..<(view.sourceAt + view.addressLength)])
            + OnesComplement.sum(out[view.destinationAt..<(view.destinationAt + view.addressLength)]) + tcp.headerLength + 6
        out.setBE16(view.l4 + 16, OnesComplement.updated(0, old: 0, new: pseudo + OnesComplement.sum(out[view.l4...])))
        return out
    }

    /// A backend's TCP options in the client's terms: a SYN-ACK's MSS less the header's
    /// length, SACK edges offset back; the walk stops where the list ends or is malformed.
    static func optionsBack(_ options: [UInt8], syn: Bool, proxySeq: UInt32, length: UInt32) -> [UInt8] {
        var b = options, off = 0
        for _ in 0..<40 {
            guard off < b.count, off < 40, b[off] != 0 else { break }
            if b[off] == 1 {
                off += 1
                continue
            }
            let kind = b[off], olen = off + 1 < b.count ? Int(b[off + 1]) : 0
            guard olen >= 2, off + olen <= b.count else { break }
            if kind == 2 && olen == 4 && syn {
                let mss = UInt32(b.be16(off + 2))
                if mss > length { b.setBE16(off + 2, UInt16(mss - length)) }
            } else if kind == 5 {
                for edge in 0..<8 where 2 + edge * 4 + 4 <= olen {
                    let at = off + 2 + edge * 4
                    b.replaceSubrange(at..<(at + 4), with: be32Bytes(ackBack(b.be32(at), proxySeq: proxySeq, length: length)))
                }
            }
            off += olen
        }
        return b
    }

    /// A client's packet of a NAT flow, as it must reach `backend`:`backendPort` from `snat`
    /// (full NAT) or from the client itself (nat). `proxy` is the flow's PROXY state (nil for
    /// none) and whether this packet opens it.
    static func forward(_ frame: [UInt8], flow: IPFlow, backend: IPAddress, backendPort: UInt16, snat: (IPAddress, UInt16)?,
                        proxy: (state: UInt8, seq: UInt32)?) -> [UInt8] {
        guard let view = IPFrameView(frame) else { return [] }
        var out = frame, change = (old: 0, new: 0)
        enum Slow { case none, insert, trim }
        var slow = Slow.none
        if let proxy, view.proto == 6 {
            let tcp = TCPView(frame, at: view.l4)
            let payload = max(0, view.ipEnd - view.l4 - tcp.headerLength)
            let seq = frame.be32(view.l4 + 4)
            if tcp.syn {
                slow = payload > 0 ? .trim : .none
            } else if seq == proxy.seq && proxy.state & proxyAcked == 0 && !tcp.rst {
                slow = .insert
            } else if Int32(bitPattern: seq &- proxy.seq) >= -1 {
                change = set32(&out, at: view.l4 + 4, seq &+ proxyLength(v4: view.v4))
            }
        }
        out = readdress(out, source: snat, destination: (backend, backendPort), tcpChange: change)
        switch slow {
        case .insert: out = insertHeader(out, flow: flow)
        case .trim: out = trimSYN(out)
        case .none: break
        }
        guard out.count >= 12 else { return [] }
        out.replaceSubrange(0..<12, with: backendHopMAC + Array(frame[0..<6]))
        return out
    }

    /// A backend's packet of the translation `nat`, as it must reach the client.
    static func reply(_ frame: [UInt8], nat: sl_nat_entry) -> [UInt8] {
        guard let view = IPFrameView(frame) else { return [] }
        let flow = nat.flow
        guard let client = IPAddress(words: flow.src, family: flow.family), let vip = IPAddress(words: flow.dst, family: flow.family) else { return [] }
        var out = frame, change = (old: 0, new: 0)
        if nat.proxy != 0 && view.proto == 6 {
            let tcp = TCPView(frame, at: view.l4), length = proxyLength(v4: view.v4)
            let timestampOnly = tcp.headerLength == 32 && frame.count >= view.l4 + 24 && frame.be32(view.l4 + 20) == 0x0101_080a
            let fast = nat.proxy & proxyAcked != 0 && !tcp.syn && (tcp.headerLength == 20 || timestampOnly)
            if tcp.ack {
                change = set32(&out, at: view.l4 + 8, ackBack(frame.be32(view.l4 + 8), proxySeq: nat.proxy_seq, length: length))
            }
            if !fast && tcp.headerLength > 20 {
                let range = (view.l4 + 20)..<(view.l4 + tcp.headerLength)
                guard range.upperBound <= frame.count else { return [] }
                let options = optionsBack(Array(out[range]), syn: tcp.syn, proxySeq: nat.proxy_seq, length: length)
                change.old += OnesComplement.sum(out[range])
                change.new += OnesComplement.sum(options)
                out.replaceSubrange(range, with: options)
            }
        }
        let source = (vip, UInt16(bigEndian: flow.dport))
        out = nat.mode == UInt8(SL_FWD_FULLNAT.rawValue)
            ? readdress(out, source: source, destination: (client, UInt16(bigEndian: flow.sport)), tcpChange: change)
            : readdress(out, source: source, destination: nil, tcpChange: change)
        return toClient(out, input: frame, nat: nat)
    }

    /// The MACs of a frame sent back toward the client: to the MAC its packets came from (or
    /// the gateway, for a flow that knows none), from the one they were sent to.
    static func toClient(_ frame: [UInt8], input: [UInt8], nat: sl_nat_entry) -> [UInt8] {
        guard frame.count >= 12 else { return [] }
        let clientMAC = withUnsafeBytes(of: nat.client_mac) { Array($0) }
        var out = frame
        out.replaceSubrange(0..<12, with: (clientMAC.allSatisfy { $0 == 0 } ? TestDataplane.gatewayMAC : clientMAC) + Array(input[0..<6]))
        return out
    }

    /// The packet an ICMP error quotes, as the program reads it: its offset, addresses, ports, protocol.
    struct Quote {
        let at: Int
        let portsAt: Int
        let proto: UInt8
        let source: IPAddress
        let destination: IPAddress
        let sourcePort: UInt16
        let destinationPort: UInt16
        /// The flow it is about, turned round: the client's (client -> VIP), or the backend's reply as sl_nat keys it.
        var flow: IPFlow { IPFlow(source: destination, destination: source, protocolNumber: proto, sourcePort: destinationPort, destinationPort: sourcePort) }

        init?(_ frame: [UInt8], _ view: IPFrameView) {
            let icmpErrors: Set<UInt8> = view.v4 ? [3, 11] : [1, 2, 3]
            guard view.proto == (view.v4 ? 1 : 58), frame.count >= view.l4 + 8, icmpErrors.contains(frame[view.l4]) else { return nil }
            at = view.l4 + 8
            guard frame.count >= at + (view.v4 ? 20 : 40), frame[at] >> 4 == (view.v4 ? 4 : 6) else { return nil }
            let ihl = Int(frame[at] & 0x0f)
            guard !view.v4 || ihl >= 5 else { return nil }
            proto = frame[at + (view.v4 ? 9 : 6)]
            portsAt = at + (view.v4 ? ihl * 4 : 40)
            guard proto == 6 || proto == 17, frame.count >= portsAt + 4 else { return nil }
            let length = view.v4 ? 4 : 16, s = at + (view.v4 ? 12 : 8), d = at + (view.v4 ? 16 : 24)
            source = IPAddress(bytes: Array(frame[s..<(s + length)]))!
            destination = IPAddress(bytes: Array(frame[d..<(d + length)]))!
            sourcePort = frame.be16(portsAt)
            destinationPort = frame.be16(portsAt + 2)
        }
    }

    /// An ICMP error readdressed: its outer source (nil keeps it) and destination, and the
    /// quoted packet's addresses and ports; the outer IPv4 header's, the quoted IPv4 header's,
    /// the quoted transport checksum (when the quote holds it) and the ICMP checksum updated.
    static func icmp(_ frame: [UInt8], outerSource: IPAddress?, outerDestination: IPAddress,
                     quoteSource: (IPAddress, UInt16), quoteDestination: (IPAddress, UInt16)) -> [UInt8] {
        guard let view = IPFrameView(frame), let quote = Quote(frame, view) else { return [] }
        var out = frame
        func replace(_ at: Int, _ address: IPAddress) -> (Int, Int) {
            let range = at..<(at + view.addressLength)
            let old = OnesComplement.sum(out[range])
            out.replaceSubrange(range, with: address.bytes)
            return (old, OnesComplement.sum(address.bytes))
        }
        var outerOld = 0, outerNew = 0
        if let outerSource { (outerOld, outerNew) = replace(view.sourceAt, outerSource) }
        let (dOld, dNew) = replace(view.destinationAt, outerDestination)
        outerOld += dOld
        outerNew += dNew
        if view.v4 { out.setBE16(view.l3 + 10, OnesComplement.updated(out.be16(view.l3 + 10), old: outerOld, new: outerNew)) }

        var icmpOld = 0, icmpNew = 0
        let (qsOld, qsNew) = replace(quote.at + (view.v4 ? 12 : 8), quoteSource.0)
        let (qdOld, qdNew) = replace(quote.at + (view.v4 ? 16 : 24), quoteDestination.0)
        let addressOld = qsOld + qdOld, addressNew = qsNew + qdNew
        if view.v4 {
            let old = out.be16(quote.at + 10), new = OnesComplement.updated(old, old: addressOld, new: addressNew)
            out.setBE16(quote.at + 10, new)
            icmpOld += Int(old)
            icmpNew += Int(new)
        }
        let portOld = Int(out.be16(quote.portsAt)) + Int(out.be16(quote.portsAt + 2))
        out.setBE16(quote.portsAt, quoteSource.1)
        out.setBE16(quote.portsAt + 2, quoteDestination.1)
        let portNew = Int(quoteSource.1) + Int(quoteDestination.1)
        let checkAt = quote.portsAt + (quote.proto == 6 ? 16 : 6)
        if checkAt + 2 <= out.count && !(quote.proto == 17 && view.v4 && out.be16(checkAt) == 0) {
            let old = out.be16(checkAt)
            var new = OnesComplement.updated(old, old: addressOld + portOld, new: addressNew + portNew)
            if quote.proto == 17 && new == 0 { new = 0xffff }
            out.setBE16(checkAt, new)
            icmpOld += Int(old)
            icmpNew += Int(new)
        }
        icmpOld += addressOld + portOld
        icmpNew += addressNew + portNew
        if !view.v4 {  // ICMPv6's pseudo-header holds the outer addresses
            icmpOld += outerOld
            icmpNew += outerNew
        }
        out.setBE16(view.l4 + 2, OnesComplement.updated(out.be16(view.l4 + 2), old: icmpOld, new: icmpNew))
        return out
    }
}
