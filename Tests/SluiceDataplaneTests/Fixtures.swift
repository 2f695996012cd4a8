// Shared by the data-plane suites: the service files, frame surgery for
// malformed and truncated input, the byte-exact tunnel frame the balancer must
// produce, and a pcap dump attached to a failing case.

import Glibc
import SluiceCore
import SluiceTestSupport
import Testing

/// BPF_PROG_TEST_RUN and bpffs need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
let requiresRoot: ConditionTrait = .enabled(if: getuid() == 0, "needs root: loads the balancer and mounts bpffs")

/// The node every suite uses, and the services of the packet-level fixture table:
/// each kind of tunnel, a drained service, two protocols on one VIP address.
/// The tables are small (4099 slots) because every case loads its own data
/// plane; the atomicity suite covers the default size.
/// A small node (M = 251) with `web` (198.51.100.10:80/tcp, `webBackends` as a YAML flow
/// list's items, and `webExtra`, e.g. a healthcheck line, when given) and `dns`
/// (198.51.100.10:53/udp, one backend, 10.1.0.31): what the health, sync and ageing
/// suites drive.
func webAndDNS(webBackends: String, webExtra: String? = nil) -> String {
    let extra = webExtra.map { "\n    \($0)" } ?? ""  // the literal loses its 8-space margin; a field is at 4
    return """
        node: { source_v4: 192.0.2.10, maglev_table_size: 251 }
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp\(extra)
            backends: [ \(webBackends) ]
          - name: dns
            vip: 198.51.100.10
            port: 53
            protocol: udp
            backends: [ {address: 10.1.0.31} ]
        """
}

enum Config {
    static let sourceV4 = IPAddress("192.0.2.10")!
    static let sourceV6 = IPAddress("2001:db8:ffff::10")!

    static let standard = """
        node:
          source_v4: 192.0.2.10
          source_v6: "2001:db8:ffff::10"
          maglev_table_size: 4099
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp
            backends:
              - { address: 10.1.0.21, weight: 1 }
              - { address: 10.1.0.22, weight: 2 }
              - { address: 10.1.0.23, weight: 1 }
          - name: dns
            vip: 198.51.100.10
            port: 53
            protocol: udp
            backends:
              - { address: 10.1.0.53 }
              - { address: 10.1.0.54 }
          - name: web6
            vip: "2001:db8::80"
            port: 443
            protocol: tcp
            backends:
              - { address: "2001:db8:1::21" }
              - { address: "2001:db8:1::22", weight: 3 }
          - name: dns6
            vip: "2001:db8::53"
            port: 53
            protocol: udp
            backends:
              - { address: "2001:db8:1::53" }
              - { address: "2001:db8:1::54" }
          - name: mixed
            vip: 198.51.100.20
            port: 8080
            protocol: tcp
            backends:
              - { address: "2001:db8:2::1" }
              - { address: "2001:db8:2::2" }
          - name: drained
            vip: 198.51.100.30
            port: 80
            protocol: tcp
            backends:
              - { address: 10.1.0.31, weight: 0 }
              - { address: 10.1.0.32, weight: 0 }
        """
}

// MARK: - Frame surgery

/// Offset of the IP header in an untagged frame.
let l3 = 14

extension Array where Element == UInt8 {
    func be16(_ at: Int) -> UInt16 { UInt16(self[at]) << 8 | UInt16(self[at + 1]) }
    func be32(_ at: Int) -> UInt32 { UInt32(be16(at)) << 16 | UInt32(be16(at + 2)) }

    mutating func setBE16(_ at: Int, _ value: UInt16) {
        self[at] = UInt8(value >> 8)
        self[at + 1] = UInt8(value & 0xff)
    }
}

/// Rewrites the IPv4 header of an untagged frame, then fixes its checksum so
/// that only the change under test is wrong.
func editingIPv4(_ frame: [UInt8], _ edit: (inout [UInt8]) -> Void) -> [UInt8] {
    var out = frame
    edit(&out)
    let headerLength = max(Int(out[l3] & 0x0f) * 4, 20)
    out.setBE16(l3 + 10, 0)
    let end = min(l3 + headerLength, out.count)
    out.setBE16(l3 + 10, internetChecksum(out[l3..<end]))
    return out
}

/// Cuts the IP packet of an untagged frame to its header plus `l4Bytes` bytes
/// and makes its length field agree, so only the L4 header is short.
func cuttingL4(_ frame: [UInt8], keep l4Bytes: Int) -> [UInt8] {
    if frame[l3] >> 4 == 4 {
        let headerLength = Int(frame[l3] & 0x0f) * 4
        let cut = Array(frame.prefix(l3 + headerLength + l4Bytes))
        return editingIPv4(cut) { $0.setBE16(l3 + 2, UInt16(headerLength + l4Bytes)) }
    }
    var cut = Array(frame.prefix(l3 + 40 + l4Bytes))
    cut.setBE16(l3 + 4, UInt16(l4Bytes))
    return cut
}

/// Pads a frame with zeros to the Ethernet minimum (60 bytes without FCS).
func paddedToEthernetMinimum(_ frame: [UInt8]) -> [UInt8] {
    frame + [UInt8](repeating: 0, count: Swift.max(0, 60 - frame.count))
}

// MARK: - The tunnel the balancer must produce

/// The input's VLAN tag (TPID, TCI), if any.
func vlanTag(of frame: [UInt8]) -> (tpid: UInt16, tci: UInt16)? {
    let type = frame.be16(12)
    return type == 0x8100 || type == 0x88a8 ? (type, frame.be16(14)) : nil
}

/// The outer IP header the balancer must write for `inner` sent to `backend`.
func expectedOuterHeader(inner: [UInt8], backend: IPAddress, node: NodeConfig) -> [UInt8] {
    let innerIsV4 = inner[0] >> 4 == 4
    let tos = innerIsV4 ? inner[1] : UInt8((inner.be16(0) >> 4) & 0xff)
    if backend.family == .v4 {
        var header: [UInt8] = [0x45, tos, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0]
        header.setBE16(2, UInt16(20 + inner.count))
        header += node.sourceV4!.bytes + backend.bytes
        header.setBE16(10, internetChecksum(header))
        return header
    }
    var header: [UInt8] = [0x60 | tos >> 4, (tos & 0x0f) << 4, 0, 0, 0, 0, innerIsV4 ? 4 : 41, 64]
    header.setBE16(4, UInt16(inner.count))
    return header + node.sourceV6!.bytes + backend.bytes
}

/// The whole frame the balancer must send for `input` to `backend`:
/// gateway <- our MAC, the input's VLAN tag, the outer header, the input's IP
/// packet and whatever followed it (Ethernet padding).
func expectedTunnelFrame(input: [UInt8], backend: IPAddress, node: NodeConfig) -> [UInt8] {
    let range = ipPacketRange(ofFrame: input)!
    let inner = Array(input[range])
    var frame = TestDataplane.gatewayMAC + Array(input[0..<6])
    if let tag = vlanTag(of: input) {
        frame += [UInt8(tag.tpid >> 8), UInt8(tag.tpid & 0xff), UInt8(tag.tci >> 8), UInt8(tag.tci & 0xff)]
    }
    frame += backend.family == .v4 ? [0x08, 0x00] : [0x86, 0xdd]
    return frame + expectedOuterHeader(inner: inner, backend: backend, node: node) + inner + input[range.upperBound...]
}

/// Checks an output frame field by field (independently of
/// `expectedTunnelFrame`) and returns the parsed frame.
@discardableResult
func expectTunnel(_ output: [UInt8], for input: [UInt8], to backend: IPAddress, node: NodeConfig,
                  sourceLocation: SourceLocation = #_sourceLocation) throws -> TunnelFrame {
    let frame = try TunnelFrame(output)
    let range = ipPacketRange(ofFrame: input)!
    let inner = Array(input[range])
    let innerIsV4 = inner[0] >> 4 == 4
    let tos = innerIsV4 ? inner[1] : UInt8((inner.be16(0) >> 4) & 0xff)
    let outerLength = backend.family == .v4 ? 20 : 40

    #expect(frame.destinationMAC == TestDataplane.gatewayMAC, "eth dst is the gateway", sourceLocation: sourceLocation)
    #expect(frame.sourceMAC == Array(input[0..<6]), "eth src is the input's destination MAC", sourceLocation: sourceLocation)
    #expect(frame.vlanTPID == vlanTag(of: input)?.tpid, "VLAN TPID kept", sourceLocation: sourceLocation)
    #expect(frame.vlan == vlanTag(of: input)?.tci, "VLAN TCI kept", sourceLocation: sourceLocation)
    #expect(frame.etherType == (backend.family == .v4 ? 0x0800 : 0x86dd), sourceLocation: sourceLocation)
    #expect(frame.outerFamily == backend.family, sourceLocation: sourceLocation)
    #expect(frame.outerHeader.count == outerLength, "outer header has no options", sourceLocation: sourceLocation)
    #expect(frame.outerDestination == backend, sourceLocation: sourceLocation)
    #expect(frame.outerSource == node.source(for: backend.family), sourceLocation: sourceLocation)
    #expect(frame.ttl == 64, sourceLocation: sourceLocation)
    #expect(frame.protocolNumber == (innerIsV4 ? 4 : 41), sourceLocation: sourceLocation)
    #expect(frame.tos == tos, "TOS / traffic class copied from the inner packet", sourceLocation: sourceLocation)
    if backend.family == .v4 {
        #expect(frame.outerTotalLength == 20 + inner.count, sourceLocation: sourceLocation)
        #expect(frame.identification == 0, sourceLocation: sourceLocation)
        #expect(frame.dontFragment, sourceLocation: sourceLocation)
        #expect(frame.headerChecksumValid, sourceLocation: sourceLocation)
    } else {
        #expect(frame.outerPayloadLength == inner.count, sourceLocation: sourceLocation)
        #expect(frame.flowLabel == 0, sourceLocation: sourceLocation)
    }
    #expect(frame.inner == inner, "inner packet byte-identical to the input's IP packet", sourceLocation: sourceLocation)
    #expect(frame.trailer == Array(input[range.upperBound...]), "trailing bytes kept", sourceLocation: sourceLocation)
    #expect(output.count == input.count + outerLength, sourceLocation: sourceLocation)
    return frame
}

// MARK: - pcap

/// A classic pcap file (LINKTYPE_ETHERNET) of `frames`, for Wireshark.
func pcap(_ frames: [[UInt8]]) -> [UInt8] {
    func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
    var out = le32(0xa1b2_c3d4) + le16(2) + le16(4) + le32(0) + le32(0) + le32(65535) + le32(1)
    for (i, frame) in frames.enumerated() {
        out += le32(UInt32(i)) + le32(0) + le32(UInt32(frame.count)) + le32(UInt32(frame.count)) + frame
    }
    return out
}

/// Attaches input, output (and the expected frame) as a pcap to the current
/// test; `swift test --attachments-path DIR` saves it.
func attachPcap(named name: String, _ frames: [[UInt8]]) {
    let safe = String(name.map { $0.isLetter || $0.isNumber ? $0 : "-" })
    Attachment.record(pcap(frames), named: "\(safe).pcap")
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}
