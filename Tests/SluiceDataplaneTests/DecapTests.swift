// The backend-side decapsulator (bpf/decap.bpf.c) through BPF_PROG_TEST_RUN:
// one frame per behaviour with the verdict, the output and the counters it
// must produce; tunnels made by the balancer itself are stripped back to the
// client's packet; GUE (UDP to the configured port) is stripped like IP-in-IP;
// the address sets, the GUE port and the pins are the control plane's.

import CSluice
import Glibc
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// The product's decapsulator counters, which subtract and compare.
typealias DecapCounts = DecapCounters

/// One decapsulator per test, loaded by the Swift loader into a private bpffs.
final class TestDecap {
    /// The backend's own addresses and the VIPs it serves, as in Config.standard.
    static let locals = ["10.1.0.21", "10.1.0.22", "10.1.0.23", "10.1.0.53", "10.1.0.54", "2001:db8:1::21", "2001:db8:1::22",
                         "2001:db8:2::1", "2001:db8:2::2"]
    static let vips = ["198.51.100.10", "2001:db8::80", "198.51.100.20"]

    let mount: BPFFSMount
    let pinPath: String
    let decap: DecapDataplane

    /// The GUE port the fixture strips (lbctl decap attach's default).
    static let guePort = UInt16(SL_GUE_DEFAULT_PORT)

    init(locals: [String] = TestDecap.locals, vips: [String] = TestDecap.vips) throws {
        mount = try BPFFSMount()
        pinPath = mount.path + "/lb"
        do {
            decap = try DecapDataplane.openOrLoad(pinPath: pinPath)
            try decap.setAddresses(locals: locals.map { IPAddress($0)! }, vips: vips.map { IPAddress($0)! })
            try decap.setGUEPort(Self.guePort)
        } catch {
            DecapDataplane.removePins(at: pinPath)
            mount.close()
            throw error
        }
    }

    /// As `init`, on a thread of its own (the object load is the verifier's work).
    static func make(locals: [String] = TestDecap.locals, vips: [String] = TestDecap.vips) async throws -> TestDecap {
        try await offPool { try TestDecap(locals: locals, vips: vips) }
    }

    deinit {
        DecapDataplane.removePins(at: pinPath)
        mount.close()
    }

    func run(_ frame: [UInt8]) throws -> (verdict: XDPVerdict?, output: [UInt8]) {
        let result = try decap.program.testRun(frame)
        return (XDPVerdict(rawValue: result.verdict), result.output)
    }

    func counts() throws -> DecapCounts { try decap.counters() }
}

// MARK: - Tunnel frames by hand

/// The link header of `frame` (Ethernet and its tag, if any) up to the ethertype.
private func linkHeaderLength(_ frame: [UInt8]) -> Int {
    vlanTag(of: frame) == nil ? 14 : 18
}

/// Wraps the IP packet of `frame` (or `inner`, if given) in an outer header
/// from `from` to `to`, keeping the frame's link header and tag. The outer
/// protocol follows the inner packet's version unless `proto` says otherwise;
/// an IPv4 outer header gets `options` and `fragment` (frag_off) as given.
private func tunnel(_ frame: [UInt8], from: String, to: String, proto: UInt8? = nil, inner: [UInt8]? = nil,
                    options: [UInt8] = [], fragment: UInt16 = 0x4000) -> [UInt8] {
    let link = linkHeaderLength(frame)
    let innerPacket = inner ?? Array(frame[link...])
    let src = IPAddress(from)!, dst = IPAddress(to)!
    let innerProto: UInt8 = proto ?? (frame[link] >> 4 == 4 ? 4 : 41)
    var out = Array(frame.prefix(link))
    var outer: [UInt8]
    if src.family == .v4 {
        out.setBE16(link - 2, 0x0800)
        outer = [UInt8(0x40 | (20 + options.count) / 4), 0, 0, 0, 0x12, 0x34, 0, 0, 64, innerProto, 0, 0]
        outer.setBE16(2, UInt16(20 + options.count + innerPacket.count))
        outer.setBE16(6, fragment)
        outer += src.bytes + dst.bytes + options
        outer.setBE16(10, internetChecksum(outer))
    } else {
        out.setBE16(link - 2, 0x86dd)
        outer = [0x60, 0, 0, 0, 0, 0, innerProto, 64]
        outer.setBE16(4, UInt16(innerPacket.count))
        outer += src.bytes + dst.bytes
    }
    return out + outer + innerPacket
}

struct DecapCase: Sendable, CustomTestStringConvertible {
    enum Output: Sendable {
        /// The outer header is gone: exactly this frame (link header + inner packet).
        case stripped([UInt8])
        /// Handed to the kernel byte for byte as it came.
        case unchanged
        /// Dropped; the output does not matter.
        case dropped
    }

    let description: String
    let frame: [UInt8]
    let verdict: XDPVerdict
    let output: Output
    let counts: DecapCounts

    var testDescription: String { description }
}

private let lbV4 = "192.0.2.10"
private let lbV6 = "2001:db8:ffff::10"
private let client4 = "203.0.113.7"
private let client6 = "2001:db8:c::7"
private let plain = PacketBuilder()
private func tagged(_ tci: UInt16) -> PacketBuilder {
    var b = PacketBuilder()
    b.vlan = tci
    return b
}

private let withOptions: PacketBuilder = {
    var b = PacketBuilder()
    b.ipv4Options = [0x94, 0x04, 0, 0]
    return b
}()
private let fragmenting: PacketBuilder = {
    var b = PacketBuilder()
    b.moreFragments = true
    return b
}()
private let fragmentPayload: [UInt8] = (0..<16).map { UInt8($0) }

private let synV4 = plain.tcp(from: client4, 40001, to: "198.51.100.10", 80)
private let synV6 = plain.tcp(from: client6, 40002, to: "2001:db8::80", 443)
private let synMixed = plain.tcp(from: client4, 40003, to: "198.51.100.20", 8080)
private let udpV4 = plain.udp(from: client4, 5353, to: "198.51.100.10", 53, payload: Array(0..<32))

/// The IP packet of an untagged frame.
private func ipPacket(_ frame: [UInt8]) -> [UInt8] { Array(frame[14...]) }

extension DecapCase {
    static func strip(_ description: String, _ frame: [UInt8], to expected: [UInt8]) -> DecapCase {
        DecapCase(description: description, frame: frame, verdict: .pass, output: .stripped(expected),
                  counts: DecapCounts(decapsulated: 1))
    }

    static let stripped: [DecapCase] = [
        strip("a 4in4 TCP SYN to a local address for a VIP here is stripped to the client's packet",
              tunnel(synV4, from: lbV4, to: "10.1.0.21"), to: synV4),
        strip("a 4in4 UDP datagram with a payload is stripped",
              tunnel(udpV4, from: lbV4, to: "10.1.0.22"), to: udpV4),
        strip("a 6in6 TCP SYN is stripped to the IPv6 packet with the IPv6 ethertype",
              tunnel(synV6, from: lbV6, to: "2001:db8:1::21"), to: synV6),
        strip("a 4in6 TCP SYN is stripped to the IPv4 packet with the IPv4 ethertype",
              tunnel(synMixed, from: lbV6, to: "2001:db8:2::1", proto: 4), to: synMixed),
        strip("a VLAN-tagged 4in4 SYN is stripped and keeps its tag",
              tunnel(tagged(0x2064).tcp(from: client4, 40004, to: "198.51.100.10", 80), from: lbV4, to: "10.1.0.23"),
              to: tagged(0x2064).tcp(from: client4, 40004, to: "198.51.100.10", 80)),
        strip("a VLAN-tagged 4in6 SYN is stripped and gets the IPv4 ethertype inside the tag",
              tunnel(tagged(0x0fff).tcp(from: client4, 40005, to: "198.51.100.20", 8080), from: lbV6, to: "2001:db8:2::2", proto: 4),
              to: tagged(0x0fff).tcp(from: client4, 40005, to: "198.51.100.20", 8080)),
        strip("an 802.1ad-tagged 6in6 SYN keeps its 0x88a8 tag",
              {
                  var f = tunnel(tagged(0x0123).tcp(from: client6, 40006, to: "2001:db8::80", 443), from: lbV6, to: "2001:db8:1::22")
                  f.setBE16(12, 0x88a8)
                  return f
              }(),
              to: {
                  var f = tagged(0x0123).tcp(from: client6, 40006, to: "2001:db8::80", 443)
                  f.setBE16(12, 0x88a8)
                  return f
              }()),
        strip("a 4in4 SYN whose inner header carries options is stripped whole",
              tunnel(withOptions
                  .tcp(from: client4, 40007, to: "198.51.100.10", 80), from: lbV4, to: "10.1.0.21"),
              to: withOptions
                  .tcp(from: client4, 40007, to: "198.51.100.10", 80)),
        strip("a 4in4 inner fragment is stripped (the kernel reassembles it)",
              tunnel(fragmenting
                  .udp(from: client4, 5000, to: "198.51.100.10", 53, payload: fragmentPayload), from: lbV4, to: "10.1.0.21"),
              to: fragmenting
                  .udp(from: client4, 5000, to: "198.51.100.10", 53, payload: fragmentPayload)),
    ]

    static func untouched(_ description: String, _ frame: [UInt8], _ counts: DecapCounts) -> DecapCase {
        DecapCase(description: description, frame: frame, verdict: .pass, output: .unchanged, counts: counts)
    }

    static let passedUntouched: [DecapCase] = [
        untouched("plain TCP to the host passes untouched", plain.tcp(from: client4, 40010, to: "10.1.0.21", 22),
                  DecapCounts(passed: 1)),
        untouched("plain TCP straight to a VIP passes untouched", synV4, DecapCounts(passed: 1)),
        untouched("plain IPv6 UDP passes untouched", plain.udp(from: client6, 40011, to: "2001:db8:1::21", 53),
                  DecapCounts(passed: 1)),
        untouched("ARP passes untouched", plain.arpRequest(from: "10.1.0.1", to: "10.1.0.21"), DecapCounts(passed: 1)),
        untouched("ICMP echo passes untouched", plain.icmpEcho(from: client4, to: "10.1.0.21"), DecapCounts(passed: 1)),
        untouched("ICMPv6 echo passes untouched", plain.icmpEcho(from: client6, to: "2001:db8:1::21"), DecapCounts(passed: 1)),
        untouched("a frame of an Ethernet header only passes untouched", Array(synV4.prefix(14)), DecapCounts(passed: 1)),
        untouched("a VLAN-tagged frame cut inside its tag passes untouched",
                  Array(tagged(7).tcp(from: client4, 40012, to: "10.1.0.21", 22).prefix(16)), DecapCounts(passed: 1)),
        untouched("an outer IPv4 header with options is no tunnel handled here: passed untouched",
                  tunnel(synV4, from: lbV4, to: "10.1.0.21", options: [0x94, 0x04, 0, 0]), DecapCounts(passed: 1)),
        untouched("an outer IPv4 fragment (more fragments) is passed untouched",
                  tunnel(synV4, from: lbV4, to: "10.1.0.21", fragment: 0x2000), DecapCounts(passed: 1)),
        untouched("an outer IPv4 fragment (offset) is passed untouched",
                  tunnel(synV4, from: lbV4, to: "10.1.0.21", fragment: 0x0010), DecapCounts(passed: 1)),
        untouched("GRE (protocol 47) to a local address is passed untouched",
                  tunnel(synV4, from: lbV4, to: "10.1.0.21", proto: 47), DecapCounts(passed: 1)),
        untouched("an outer IPv4 tot_len past the frame is the kernel's to judge: passed untouched",
                  {
                      var f = tunnel(synV4, from: lbV4, to: "10.1.0.21")
                      f.setBE16(16, f.be16(16) + 8)
                      return f
                  }(), DecapCounts(passed: 1)),
        untouched("an IPv6 packet with next header 59 (none) is passed untouched",
                  tunnel(synV6, from: lbV6, to: "2001:db8:1::21", proto: 59), DecapCounts(passed: 1)),
    ]

    static let notOurs: [DecapCase] = [
        untouched("a 4in4 tunnel to another host's address is left alone",
                  tunnel(synV4, from: lbV4, to: "10.1.0.99"), DecapCounts(notLocal: 1)),
        untouched("a 6in6 tunnel to another host's address is left alone",
                  tunnel(synV6, from: lbV6, to: "2001:db8:1::99"), DecapCounts(notLocal: 1)),
        untouched("a 4in6 tunnel to another host's address is left alone",
                  tunnel(synMixed, from: lbV6, to: "2001:db8:2::99", proto: 4), DecapCounts(notLocal: 1)),
        untouched("a 4in4 tunnel to us for an address that is no VIP here is left alone",
                  tunnel(plain.tcp(from: client4, 40020, to: "198.51.100.99", 80), from: lbV4, to: "10.1.0.21"),
                  DecapCounts(notVIP: 1)),
        untouched("a 6in6 tunnel to us for an address that is no VIP here is left alone",
                  tunnel(plain.tcp(from: client6, 40021, to: "2001:db8::99", 443), from: lbV6, to: "2001:db8:1::21"),
                  DecapCounts(notVIP: 1)),
        untouched("a 4in6 tunnel to us whose inner destination is an IPv6 VIP's bytes read as IPv4 is no VIP",
                  tunnel(plain.tcp(from: client4, 40022, to: "32.1.13.184", 443), from: lbV6, to: "2001:db8:2::1", proto: 4),
                  DecapCounts(notVIP: 1)),
    ]

    static func dropped(_ description: String, _ frame: [UInt8]) -> DecapCase {
        DecapCase(description: description, frame: frame, verdict: .drop, output: .dropped, counts: DecapCounts(malformed: 1))
    }

    static let malformedInner: [DecapCase] = [
        dropped("a 4in4 tunnel to us with a truncated inner header is dropped",
                tunnel(synV4, from: lbV4, to: "10.1.0.21", inner: Array(ipPacket(synV4).prefix(10)))),
        dropped("a 4in4 tunnel to us carrying no inner packet at all is dropped",
                tunnel(synV4, from: lbV4, to: "10.1.0.21", inner: [])),
        dropped("a 6in6 tunnel to us with a truncated inner header is dropped",
                tunnel(synV6, from: lbV6, to: "2001:db8:1::21", inner: Array(ipPacket(synV6).prefix(30)))),
        dropped("a 4in6 tunnel to us with a truncated inner header is dropped",
                tunnel(synMixed, from: lbV6, to: "2001:db8:2::1", proto: 4, inner: Array(ipPacket(synMixed).prefix(19)))),
        dropped("protocol IPIP carrying an IPv6 packet (version mismatch) is dropped",
                tunnel(synV6, from: lbV4, to: "10.1.0.21", proto: 4)),
        dropped("next header 41 carrying an IPv4 packet (version mismatch) is dropped",
                tunnel(synV4, from: lbV6, to: "2001:db8:1::21", proto: 41)),
        dropped("an inner IPv4 header with IHL 4 is dropped",
                tunnel(synV4, from: lbV4, to: "10.1.0.21", inner: { var p = ipPacket(synV4); p[0] = 0x44; return p }())),
        dropped("an inner IPv4 header whose options run past the packet is dropped",
                tunnel(synV4, from: lbV4, to: "10.1.0.21", inner: { var p = Array(ipPacket(synV4).prefix(24)); p[0] = 0x4f; p.setBE16(2, 24); return p }())),
        dropped("an inner tot_len longer than the outer packet carries is dropped",
                tunnel(synV4, from: lbV4, to: "10.1.0.21", inner: { var p = ipPacket(synV4); p.setBE16(2, p.be16(2) + 1); return p }())),
        dropped("an inner tot_len shorter than its header is dropped",
                tunnel(synV4, from: lbV4, to: "10.1.0.21", inner: { var p = ipPacket(synV4); p.setBE16(2, 19); return p }())),
        dropped("an inner IPv6 payload_len longer than the outer packet carries is dropped",
                tunnel(synV6, from: lbV6, to: "2001:db8:1::21", inner: { var p = ipPacket(synV6); p.setBE16(4, p.be16(4) + 1); return p }())),
    ]

    static let gue: [DecapCase] = [
        strip("GUE over IPv4 carrying an IPv4 SYN is stripped to the client's packet",
              gueFrame(synV4, from: lbV4, to: "10.1.0.21"), to: synV4),
        strip("GUE over IPv4 carrying an IPv6 SYN is stripped with the IPv6 ethertype",
              gueFrame(synV6, from: lbV4, to: "10.1.0.22"), to: synV6),
        strip("GUE over IPv6 carrying an IPv6 SYN is stripped to the client's packet",
              gueFrame(synV6, from: lbV6, to: "2001:db8:1::21"), to: synV6),
        strip("GUE over IPv6 carrying an IPv4 SYN is stripped with the IPv4 ethertype",
              gueFrame(synMixed, from: lbV6, to: "2001:db8:2::1"), to: synMixed),
        strip("GUE over IPv4 carrying a UDP datagram with a payload is stripped",
              gueFrame(udpV4, from: lbV4, to: "10.1.0.23"), to: udpV4),
        strip("a VLAN-tagged GUE-over-IPv6 SYN keeps its tag and gets the IPv4 ethertype inside it",
              gueFrame(tagged(0x0abc).tcp(from: client4, 40030, to: "198.51.100.20", 8080), from: lbV6, to: "2001:db8:2::2"),
              to: tagged(0x0abc).tcp(from: client4, 40030, to: "198.51.100.20", 8080)),
        untouched("GUE over IPv4 to another host's address is left alone",
                  gueFrame(synV4, from: lbV4, to: "10.1.0.99"), DecapCounts(notLocal: 1)),
        untouched("GUE over IPv6 to another host's address is left alone, even with a UDP length that is wrong",
                  gueFrame(synV6, from: lbV6, to: "2001:db8:1::99", udpLength: 9), DecapCounts(notLocal: 1)),
        untouched("GUE to us for an address that is no VIP here is left alone",
                  gueFrame(plain.tcp(from: client4, 40031, to: "198.51.100.99", 80), from: lbV4, to: "10.1.0.21"),
                  DecapCounts(notVIP: 1)),
        untouched("GUE over IPv6 to us for an IPv6 address that is no VIP here is left alone",
                  gueFrame(plain.tcp(from: client6, 40032, to: "2001:db8::99", 443), from: lbV6, to: "2001:db8:1::21"),
                  DecapCounts(notVIP: 1)),
        untouched("UDP to another port on us is plain UDP: passed untouched",
                  gueFrame(synV4, from: lbV4, to: "10.1.0.21", port: TestDecap.guePort + 1), DecapCounts(passed: 1)),
        untouched("UDP over IPv6 to another port on us is plain UDP: passed untouched",
                  gueFrame(synV6, from: lbV6, to: "2001:db8:1::21", port: 4789), DecapCounts(passed: 1)),
        untouched("an IP payload too short for a UDP header is the kernel's to judge: passed untouched",
                  gueFrame(synV4, from: lbV4, to: "10.1.0.21", inner: []).dropLastIPBytes(1), DecapCounts(passed: 1)),
        dropped("GUE to us whose UDP length is longer than the IP payload is dropped",
                gueFrame(synV4, from: lbV4, to: "10.1.0.21", udpLength: UInt16(8 + ipPacket(synV4).count + 1))),
        dropped("GUE over IPv6 to us whose UDP length is shorter than the IP payload is dropped",
                gueFrame(synV6, from: lbV6, to: "2001:db8:1::21", udpLength: UInt16(8 + ipPacket(synV6).count - 1))),
        dropped("GUE to us with a variant 0 header (first nibble 0) is dropped",
                gueFrame(synV4, from: lbV4, to: "10.1.0.21", inner: [0x00, 0x00, 0x00, 0x00] + ipPacket(synV4))),
        dropped("GUE to us whose inner first nibble is 5 is dropped",
                gueFrame(synV4, from: lbV4, to: "10.1.0.21", inner: { var p = ipPacket(synV4); p[0] = 0x55; return p }())),
        dropped("GUE to us carrying nothing after the UDP header is dropped",
                gueFrame(synV4, from: lbV4, to: "10.1.0.21", inner: [])),
        dropped("GUE to us with a truncated inner IPv4 header is dropped",
                gueFrame(synV4, from: lbV4, to: "10.1.0.21", inner: Array(ipPacket(synV4).prefix(12)))),
        dropped("GUE over IPv6 to us whose inner IPv6 payload_len runs past the datagram is dropped",
                gueFrame(synV6, from: lbV6, to: "2001:db8:1::21", inner: { var p = ipPacket(synV6); p.setBE16(4, p.be16(4) + 1); return p }())),
    ]

    static let all = stripped + passedUntouched + notOurs + malformedInner + gue
}

/// A GUE frame to the fixture's port unless `port` says otherwise.
private func gueFrame(_ frame: [UInt8], from: String, to: String, port: UInt16 = TestDecap.guePort, inner: [UInt8]? = nil,
                      udpLength: UInt16? = nil) -> [UInt8] {
    GUEFrame.wrap(frame, from: from, to: to, sourcePort: 50123, port: port, inner: inner, udpLength: udpLength)
}

extension Array where Element == UInt8 {
    /// An untagged IPv4 frame whose packet is `n` bytes shorter (tot_len and the checksum follow).
    fileprivate func dropLastIPBytes(_ n: Int) -> [UInt8] {
        var f = Array(dropLast(n))
        f.setBE16(16, f.be16(16) - UInt16(n))
        f.setBE16(24, 0)
        f.setBE16(24, internetChecksum(f[14..<34]))
        return f
    }
}

/// Client frames the balancer tunnels (Config.standard), by tunnel kind, with their service.
private let balancerTunnels: [(String, String, [UInt8])] = [
    ("4in4", "web", plain.tcp(from: client4, 41001, to: "198.51.100.10", 80, payload: [UInt8](repeating: 0x5a, count: 300))),
    ("6in6", "web6", plain.tcp(from: client6, 41002, to: "2001:db8::80", 443)),
    ("4in6", "mixed", plain.tcp(from: client4, 41003, to: "198.51.100.20", 8080)),
    ("4in4 under a VLAN tag", "dns", tagged(0x0064).udp(from: client4, 41004, to: "198.51.100.10", 53, payload: (0..<40).map { UInt8($0) })),
    ("4in6 under a VLAN tag", "mixed", tagged(0x0065).tcp(from: client4, 41005, to: "198.51.100.20", 8080)),
]

@Suite(requiresRoot)
struct DecapTests {
    @Test(arguments: DecapCase.all)
    func eachFrameGetsTheVerdictOutputAndCounterTheDecapsulatorGivesIt(_ c: DecapCase) async throws {
        let decap = try await TestDecap.make()
        let before = try decap.counts()
        let (verdict, output) = try decap.run(c.frame)
        let delta = try decap.counts() - before

        #expect(verdict == c.verdict, "verdict \(String(describing: verdict))")
        #expect(delta == c.counts, "counters moved: \(delta)")
        switch c.output {
        case .stripped(let expected):
            #expect(output == expected, "the link header + the inner packet, byte for byte")
            if output != expected { attachPcap(named: c.description, [c.frame, output, expected]) }
        case .unchanged:
            #expect(output == c.frame, "a passed frame is not modified")
        case .dropped:
            break
        }
    }

    /// The balancer tunnels a client's frame to one of its backends, in IP-in-IP or GUE
    /// (to the decapsulator's port); the decapsulator on that backend gives the kernel the
    /// client's IP packet under the tunnel frame's link header.
    @Test(arguments: balancerTunnels, [SL_FWD_IPIP, SL_FWD_GUE])
    func whatTheBalancerTunnelsIsStrippedBackToTheClientPacket(_ tunnel: (String, String, [UInt8]), _ mode: sl_forwarding) async throws {
        let (name, service, client) = tunnel
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(mode, of: service)
        try lb.setTunnel(mtu: 0)  // GUE to 6080, the port TestDecap strips
        let (lbVerdict, tunnelled) = try lb.run(client)
        try #require(XDPVerdict(rawValue: lbVerdict) == .tx, "the balancer tunnels the \(name) frame (mode \(mode.rawValue))")

        let decap = try await TestDecap.make()
        let before = try decap.counts()
        let (verdict, output) = try decap.run(tunnelled)
        #expect(verdict == .pass)
        #expect(try decap.counts() - before == DecapCounts(decapsulated: 1))

        let linkLength = vlanTag(of: client) == nil ? 14 : 18
        let clientPacket = Array(client[linkLength...])
        var link = Array(tunnelled.prefix(linkLength))
        link.setBE16(linkLength - 2, client.be16(linkLength - 2))
        #expect(output == link + clientPacket, "\(name), mode \(mode.rawValue): Ethernet (tag kept) + the client's packet, byte for byte")
        #expect(vlanTag(of: output)?.tci == vlanTag(of: client)?.tci)
    }

    @Test func rewritingTheAddressSetsReplacesThem() async throws {
        let decap = try await TestDecap.make(locals: ["10.1.0.21"], vips: ["198.51.100.10"])
        let toFirst = tunnel(synV4, from: lbV4, to: "10.1.0.21")
        let toSecond = tunnel(synV4, from: lbV4, to: "10.1.0.22")
        #expect(try decap.run(toFirst).output == synV4)
        #expect(try decap.run(toSecond).output == toSecond)

        try decap.decap.setAddresses(locals: [IPAddress("10.1.0.22")!], vips: [IPAddress("198.51.100.10")!, IPAddress("2001:db8::80")!])
        #expect(try decap.decap.addresses(in: .locals) == [IPAddress("10.1.0.22")!])
        #expect(try decap.decap.addresses(in: .vips) == [IPAddress("198.51.100.10")!, IPAddress("2001:db8::80")!])
        let before = try decap.counts()
        #expect(try decap.run(toFirst).output == toFirst)
        #expect(try decap.run(toSecond).output == synV4)
        #expect(try decap.counts() - before == DecapCounts(decapsulated: 1, notLocal: 1))
    }

    /// GUE stripping follows sl_decap_config: port 0 turns it off, another port moves it.
    @Test func theGUEPortDecidesWhichUDPIsATunnel() async throws {
        let decap = try await TestDecap.make()
        let at6080 = gueFrame(synV4, from: lbV4, to: "10.1.0.21")
        let at7000 = gueFrame(synV4, from: lbV4, to: "10.1.0.21", port: 7000)
        #expect(try decap.decap.guePort() == TestDecap.guePort)
        #expect(try decap.run(at6080).output == synV4)

        try decap.decap.setGUEPort(0)
        #expect(try decap.decap.guePort() == 0)
        var before = try decap.counts()
        #expect(try decap.run(at6080).output == at6080, "GUE off: UDP to 6080 is plain UDP")
        #expect(try decap.counts() - before == DecapCounts(passed: 1))

        try decap.decap.setGUEPort(7000)
        before = try decap.counts()
        #expect(try decap.run(at6080).output == at6080)
        #expect(try decap.run(at7000).output == synV4)
        #expect(try decap.counts() - before == DecapCounts(decapsulated: 1, passed: 1))
    }

    @Test func theDecapsulatorPinsBesideTheBalancerAndRemovesOnlyItsOwnPins() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        let decap = try DecapDataplane.openOrLoad(pinPath: lb.pinPath)
        let names = [SL_PROG_DECAP] + DecapDataplane.Map.allCases.map(\.rawValue)
        for name in names { #expect(access("\(lb.pinPath)/\(name)", F_OK) == 0, "\(name) is pinned") }
        #expect(try decap.program.identity().name == SL_PROG_DECAP)

        // Opening again finds the same program.
        let again = try DecapDataplane.openOrLoad(pinPath: lb.pinPath)
        #expect(try again.program.identity().id == decap.program.identity().id)

        DecapDataplane.removePins(at: lb.pinPath)
        for name in names { #expect(access("\(lb.pinPath)/\(name)", F_OK) != 0, "\(name) is unpinned") }
        #expect(Dataplane.isPinned(at: lb.pinPath), "the balancer's pins stay")
        #expect(access("\(lb.pinPath)/\(Dataplane.Map.conntrack.rawValue)", F_OK) == 0)
    }
}
