// The forwarding modes through the real balancer (BPF_PROG_TEST_RUN): the
// exact frame l2dsr and GUE send for each family, GUE's source-port entropy,
// and that an established flow follows its service's mode.

import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

let clientV4 = "203.0.113.7"
let clientV6 = "2001:db8:c::7"
let backendMAC: [UInt8] = [0x02, 0xbe, 0x00, 0x00, 0x00, 0x21]
let guePort: UInt16 = 6080

extension TestDataplane {
    func setForwarding(_ mode: sl_forwarding, of service: String, mac: [UInt8] = [0, 0, 0, 0, 0, 0]) throws {
        try dataplane.setForwarding(mode, of: service, mac: mac)
    }

    func setTunnel(mtu: UInt16) throws { try dataplane.setTunnel(mtu: mtu, guePort: guePort) }

    /// Runs `frame` and returns the output with the counters it moved.
    func runCounted(_ frame: [UInt8]) throws -> (verdict: UInt32, output: [UInt8], counted: NodeStats) {
        let before = try nodeStats()
        let (verdict, output) = try run(frame)
        return (verdict, output, try nodeStats() - before)
    }
}

/// The GUE frame the balancer must send for `input` to `backend` with UDP source port `sport`:
/// the IP-in-IP frame's link layer (to the gateway, from our MAC, the tag kept), outer IP + UDP
/// from the node's source, the input's IP packet and what followed it.
func expectedGUEFrame(input: [UInt8], backend: IPAddress, node: NodeConfig, sport: UInt16) -> [UInt8] {
    let range = ipPacketRange(ofFrame: input)!
    let readdressed = TestDataplane.gatewayMAC + Array(input[0..<6]) + Array(input[12...])
    let source = node.source(for: backend.family)!
    return GUEFrame.wrap(readdressed, from: source.description, to: backend.description, sourcePort: sport,
                         port: guePort, inner: Array(input[range])) + input[range.upperBound...]
}

func be16Bytes(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }

/// tshark's expert errors (malformed frames, bad checksums) for `frames`, or nil.
func tsharkErrors(_ frames: [[UInt8]]) async throws -> String? {
    let file = "/tmp/sluice-wire-\(UInt32.random(in: 0...UInt32.max)).pcap"
    defer { unlink(file) }
    try Data(pcap(frames)).write(to: URL(fileURLWithPath: file))
    return try await TShark.expertErrors(pcap: file, guePort: Int(guePort))
}

/// Where the UDP header of a GUE frame starts (untagged frames).
func gueUDPOffset(_ frame: [UInt8]) -> Int { frame.be16(12) == 0x0800 ? 14 + 20 : 14 + 40 }

@Suite("Forwarding modes", requiresRoot)
struct ForwardingModeTests {
    @Test("l2dsr: only the Ethernet header changes, to the backend's MAC from ours", arguments: [
        ("web", clientV4, "198.51.100.10", UInt16(80)), ("web6", clientV6, "2001:db8::80", UInt16(443)),
    ])
    func l2dsrFrame(service: String, client: String, vip: String, port: UInt16) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(SL_FWD_L2DSR, of: service, mac: backendMAC)
        try lb.setTunnel(mtu: 1500)
        for frame in [PacketBuilder().tcp(from: client, 40000, to: vip, port),
                      PacketBuilder().tcp(from: client, 40000, to: vip, port, flags: [.ack], payload: Array(repeating: 7, count: 1460))] {
            let (verdict, output, counted) = try lb.runCounted(frame)
            #expect(verdict == XDPVerdict.tx.rawValue)
            #expect(output == backendMAC + Array(frame[0..<6]) + Array(frame[12...]), "dst = backend, src = ours, the rest untouched")
            #expect(counted.mssClamped == 0 && counted.icmpTooBig == 0, "l2dsr grows nothing: no clamp, no ICMP")
        }
    }

    @Test("l2dsr: a backend whose MAC is not resolved is a counted drop")
    func l2dsrUnresolved() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(SL_FWD_L2DSR, of: "web")
        let (verdict, _, counted) = try lb.runCounted(PacketBuilder().tcp(from: clientV4, 40000, to: "198.51.100.10", 80))
        #expect(verdict == XDPVerdict.drop.rawValue)
        #expect(counted == NodeStats(.drop, drop: .noNeighbour), "a SYN: placed, recorded nowhere, dropped")
        // The flow's next packet is recorded by its conntrack miss before the drop, as a forwarded one would be.
        let (ackVerdict, _, ackCounted) = try lb.runCounted(
            PacketBuilder().tcp(from: clientV4, 40000, to: "198.51.100.10", 80, flags: [.ack]))
        #expect(ackVerdict == XDPVerdict.drop.rawValue)
        #expect(ackCounted == NodeStats(.drop, drop: .noNeighbour, newFlows: 1, ctMisses: 1))
    }

    @Test("gue: outer IP + UDP to gue_port, source port from the flow, IPv6 checksum valid", arguments: [
        ("web", clientV4, "198.51.100.10", UInt16(80), false), ("dns", clientV4, "198.51.100.10", UInt16(53), true),
        ("web6", clientV6, "2001:db8::80", UInt16(443), false), ("dns6", clientV6, "2001:db8::53", UInt16(53), true),
        ("mixed", clientV4, "198.51.100.20", UInt16(8080), false),
    ])
    func gueFrame(service: String, client: String, vip: String, port: UInt16, udp: Bool) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(SL_FWD_GUE, of: service)
        try lb.setTunnel(mtu: 0)
        let b = PacketBuilder()
        let frame = udp ? b.udp(from: client, 5353, to: vip, port, payload: Array(0..<77))
                        : b.tcp(from: client, 40001, to: vip, port, payload: Array(repeating: 0x5a, count: 301))
        let (verdict, output) = try lb.run(frame)
        #expect(verdict == XDPVerdict.tx.rawValue)
        let backend = try #require(lb.model.backend(for: IPFlow(frame: frame)!)).address
        let at = gueUDPOffset(output)
        let sport = output.be16(at)
        #expect((49152...65535).contains(sport), "source port in the dynamic range")
        let expected = expectedGUEFrame(input: frame, backend: backend, node: lb.serviceFile.node, sport: sport)
        #expect(output == expected, "\(hex(output)) != \(hex(expected))")
        if backend.family == .v6 {
            #expect(output.be16(at + 6) != 0, "IPv6 outer: a real UDP checksum")
        }
        let (_, again) = try lb.run(frame)
        #expect(again.be16(at) == sport, "one flow, one source port")
    }

    @Test("gue over IPv6: an inner IPv4 UDP datagram without a checksum goes with checksum 0")
    func gueZeroChecksum() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(SL_FWD_GUE, of: "mixed")
        // mixed is TCP; a v4 UDP VIP with v6 backends is what needs it: make dns's backends v6.
        var file = lb.serviceFile
        let dns = file.services.firstIndex { $0.name == "dns" }!
        file.services[dns].backends = [Backend(address: IPAddress("2001:db8:2::53")!)]
        try lb.apply(file)
        try lb.setForwarding(SL_FWD_GUE, of: "dns")
        try lb.setTunnel(mtu: 0)
        var frame = PacketBuilder().udp(from: clientV4, 5353, to: "198.51.100.10", 53, payload: Array(0..<40))
        frame.setBE16(14 + 20 + 6, 0)
        let (verdict, output) = try lb.run(frame)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output.be16(gueUDPOffset(output) + 6) == 0)
        #expect(Array(output.suffix(frame.count - 14)) == Array(frame[14...]), "inner packet untouched")
    }

    @Test("gue: 10,000 flows use over 1,000 source ports")
    func gueEntropy() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setForwarding(SL_FWD_GUE, of: "web")
        try lb.setTunnel(mtu: 0)
        var ports = Set<UInt16>()
        for i in 0..<10_000 {
            let client = "203.0.\(113 + i / 5000).\(i % 250 + 1)"
            let frame = PacketBuilder().tcp(from: client, UInt16(20000 + i % 20), to: "198.51.100.10", 80)
            let (verdict, output) = try lb.run(frame)
            #expect(verdict == XDPVerdict.tx.rawValue)
            ports.insert(output.be16(gueUDPOffset(output)))
        }
        #expect(ports.count >= 1000, "\(ports.count) distinct source ports")
        #expect(ports.allSatisfy { $0 >= 49152 })
    }

    @Test("an established flow follows its service's mode from its next packet, on the same backend")
    func modeChangeKeepsBackend() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        let syn = PacketBuilder().tcp(from: clientV4, 41000, to: "198.51.100.10", 80)
        let handshakeACK = PacketBuilder().tcp(from: clientV4, 41000, to: "198.51.100.10", 80, flags: [.ack])
        let ack = PacketBuilder().tcp(from: clientV4, 41000, to: "198.51.100.10", 80, flags: [.ack], payload: [1, 2, 3])
        let (_, first) = try lb.run(syn)
        let backend = try TunnelFrame(first).outerDestination
        // The handshake's ACK establishes the flow: placed where the SYN went and recorded.
        let (_, established, recorded) = try lb.runCounted(handshakeACK)
        #expect(try TunnelFrame(established).outerDestination == backend)
        #expect(recorded == NodeStats(.tx, newFlows: 1, ctMisses: 1), "\(recorded)")
        // Move every other backend's weight away, as a new Maglev table would place the flow elsewhere.
        var file = lb.serviceFile
        let web = file.services.firstIndex { $0.name == "web" }!
        for i in file.services[web].backends.indices where file.services[web].backends[i].address != backend {
            file.services[web].backends[i].weight = 5
        }
        try lb.apply(file)
        try lb.setForwarding(SL_FWD_GUE, of: "web")
        try lb.setTunnel(mtu: 1500)
        let (verdict, output, counted) = try lb.runCounted(ack)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(counted.ctHits == 1, "still the conntrack entry")
        let sport = output.be16(gueUDPOffset(output))
        #expect(output == expectedGUEFrame(input: ack, backend: backend, node: lb.serviceFile.node, sport: sport))
        try lb.setForwarding(SL_FWD_L2DSR, of: "web", mac: backendMAC)
        let (_, l2) = try lb.run(ack)
        #expect(Array(l2[0..<6]) == backendMAC)
    }
}

@Suite("Forwarding modes on the wire", requiresRoot)
struct ForwardingWireTests {
    /// One frame of every kind the new modes send: l2dsr, GUE over both outers (TCP, UDP,
    /// 4in6), clamped SYNs, ICMP and ICMPv6 "too big" answers, steered ICMP errors.
    func framesOfEveryKind() async throws -> [[UInt8]] {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        try lb.setTunnel(mtu: 1500)
        var out: [[UInt8]] = []
        func send(_ frame: [UInt8]) throws {
            let (verdict, output) = try lb.run(frame)
            #expect(verdict == XDPVerdict.tx.rawValue)
            out.append(output)
        }
        var syn = PacketBuilder()
        syn.tcpOptions = mssOption(1460) + [1, 1, 4, 2]
        var df = PacketBuilder()
        df.dontFragment = true
        let b = PacketBuilder()
        try lb.setForwarding(SL_FWD_L2DSR, of: "web", mac: backendMAC)
        try send(b.tcp(from: clientV4, 43000, to: "198.51.100.10", 80, payload: Array(repeating: 1, count: 100)))
        for service in ["web", "dns", "web6", "dns6", "mixed"] { try lb.setForwarding(SL_FWD_GUE, of: service) }
        try send(syn.tcp(from: clientV4, 43001, to: "198.51.100.10", 80))
        try send(b.udp(from: clientV4, 43002, to: "198.51.100.10", 53, payload: Array(0..<64)))
        try send(syn.tcp(from: clientV6, 43003, to: "2001:db8::80", 443))
        try send(b.udp(from: clientV6, 43004, to: "2001:db8::53", 53, payload: Array(0..<64)))
        try send(b.tcp(from: clientV4, 43005, to: "198.51.100.20", 8080, flags: [.ack], payload: Array(repeating: 2, count: 500)))
        try send(df.tcp(from: clientV4, 43006, to: "198.51.100.10", 80, flags: [.ack], payload: Array(repeating: 3, count: 1460)))
        try send(b.tcp(from: clientV6, 43007, to: "2001:db8::80", 443, flags: [.ack], payload: Array(repeating: 4, count: 1440)))
        let quote6 = quotedReply(vip: "2001:db8::80", port: 443, client: clientV6, clientPort: 43003, keep: 1232)
        try send(b.icmpError(from: routerV6, to: "2001:db8::80", type: 2, code: 0, rest: 1400, quoting: quote6))
        try lb.setForwarding(SL_FWD_IPIP, of: "web")
        try send(syn.tcp(from: clientV4, 43008, to: "198.51.100.10", 80))
        let quote4 = quotedReply(vip: "198.51.100.10", port: 80, client: clientV4, clientPort: 43008, keep: 548)
        try send(b.icmpError(from: routerV4, to: "198.51.100.10", type: 3, code: 4, rest: 1400, quoting: quote4))
        return out
    }

    @Test("tshark reads every frame the modes send without a malformed or bad-checksum mark")
    func tsharkFindsNoError() async throws {
        let frames = try await framesOfEveryKind()
        #expect(frames.count == 11)
        let errors = try await tsharkErrors(frames)
        #expect(errors == nil, "\(errors ?? "")")
        // The check itself: one flipped payload byte is a bad checksum to tshark.
        var broken = frames
        broken[1][broken[1].count - 1] ^= 0xff
        #expect(try await tsharkErrors(broken) != nil, "tshark must flag a corrupted GUE frame")
    }
}
