// Seeded frames through the real programs (BPF_PROG_TEST_RUN): valid frames of every family
// and protocol to the VIPs of IP-in-IP (4in4, 6in6, 4in6), GUE and l2dsr services, and mutations of
// them: truncations at and around every header boundary, IPv4 header and total lengths off by
// one either way, every fragment flag and offset, IPv6 extension headers, VLAN and QinQ tags,
// TCP flags and data offsets, ICMP errors quoting flows or noise, random bytes. For every frame:
// never XDP_ABORTED; a passed frame leaves byte-identical; a transmitted one is exactly the
// frame the Swift model predicts (Maglev's backend for the flow, or for the flow an ICMP error
// quotes; the tunnel around the input's IP packet, or the readdressed frame; valid checksums);
// the verdict counters add up to the frames tried. Then every
// tunnel the balancer sent, and mutations of those and of GUE frames, through the backends'
// decapsulator: never aborted; a frame passes untouched or stripped to exactly its inner
// packet. 20,000 frames a program in `make test`, 1,000,000 in `make fuzz`
// (SLUICE_FUZZ_FRAMES); SLUICE_FUZZ_SEED replays a run; a failing frame is attached as a pcap
// and printed in hex.
import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private let fuzzServices = """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"
      maglev_table_size: 251
      gue_port: 6080
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        backends:
          - { address: 10.1.0.21, weight: 1 }
          - { address: 10.1.0.22, weight: 2 }
          - { address: 10.1.0.23, weight: 0 }
      - name: dns
        vip: 198.51.100.10
        port: 53
        protocol: udp
        forwarding: gue
        backends:
          - { address: 10.1.0.53 }
          - { address: 10.1.0.54 }
      - name: web6
        vip: "2001:db8::80"
        port: 80
        protocol: tcp
        backends:
          - { address: "2001:db8:1::21" }
          - { address: "2001:db8:1::22" }
      - name: mixed
        vip: 198.51.100.20
        port: 443
        protocol: tcp
        backends:
          - { address: 10.1.0.21 }
          - { address: "2001:db8:2::1" }
          - { address: "2001:db8:2::2" }
    """

enum FrameFuzz {
    /// Frames per program and run: SLUICE_FUZZ_FRAMES (`make fuzz` sets 1,000,000), else 20,000.
    static var frames: Int {
        ProcessInfo.processInfo.environment["SLUICE_FUZZ_FRAMES"].flatMap(Int.init) ?? 20_000
    }
}

/// Valid frames to the fuzz services' VIPs (and to no VIP), and their mutations.
struct FrameMutator {
    var rng: SplitMix64
    let vips: [(vip: String, port: UInt16, tcp: Bool)]

    init(seed: UInt64, services: [Service]) {
        rng = SplitMix64(seed: seed)
        vips = services.map { ($0.vip.description, $0.port, $0.proto == .tcp) } + [("198.51.100.99", 80, true), ("2001:db8::99", 53, false)]
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    mutating func byte() -> UInt8 { UInt8.random(in: 0...255, using: &rng) }
    mutating func chance(_ percent: Int) -> Bool { int(1...100) <= percent }

    mutating func client(v6: Bool) -> String {
        v6 ? IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8, 0xc1] + (0..<11).map { _ in byte() })!.description
           : "203.0.\(int(0...255)).\(int(1...254))"
    }

    /// A valid frame: TCP (SYN, ACK, FIN, RST with or without data) or UDP to a VIP (or to none), sometimes tagged.
    mutating func valid() -> [UInt8] {
        let target = vips[int(0...vips.count - 1)]
        let v6 = target.vip.contains(":")
        var builder = PacketBuilder()
        builder.tos = chance(20) ? byte() : 0
        if chance(10) { builder.vlan = UInt16(int(1...4094)) }
        if !v6 && chance(5) { builder.ipv4Options = [0x01, 0x01, 0x01, 0x00] }
        builder.dontFragment = chance(50)
        let payload = (0..<int(0...48)).map { _ in byte() }
        let source = client(v6: v6), sport = UInt16(int(1...65535))
        guard target.tcp else { return builder.udp(from: source, sport, to: target.vip, target.port, payload: payload) }
        let flags: [Set<TCPFlag>] = [[.syn], [.ack], [.ack, .psh], [.fin, .ack], [.rst], [.syn, .ack]]
        return builder.tcp(from: source, sport, to: target.vip, target.port, flags: flags[int(0...flags.count - 1)], payload: payload)
    }

    /// Where the headers of `frame` end: after the link header (tags included), the IP header, the L4 header.
    func boundaries(_ frame: [UInt8]) -> [Int] {
        guard let range = ipPacketRange(ofFrame: frame) else { return [14] }
        let l3 = range.lowerBound
        let v4 = frame[l3] >> 4 == 4
        let l4 = v4 ? l3 + Int(frame[l3] & 0x0f) * 4 : l3 + 40
        return [l3, l4, l4 + 8, l4 + 20, range.upperBound]
    }

    /// The shortest frame BPF_PROG_TEST_RUN takes for XDP (and a NIC delivers): an Ethernet header.
    static let shortest = 14

    /// One mutation of `frame`, and its name.
    mutating func mutate(_ frame: [UInt8]) -> (frame: [UInt8], kind: String) {
        var f = frame
        let l3 = ipPacketRange(ofFrame: f)?.lowerBound ?? 14
        let v4 = f.count > l3 && f[l3] >> 4 == 4
        switch int(0...12) {
        case 0:
            let cut = boundaries(f)[int(0...boundaries(f).count - 1)] + int(-1...1)
            return (Array(f.prefix(max(Self.shortest, cut))), "truncated at a header boundary")
        case 1:
            return (Array(f.prefix(int(Self.shortest...max(Self.shortest, f.count)))), "truncated anywhere")
        case 2:
            for _ in 0..<int(1...4) where !f.isEmpty { f[int(0...f.count - 1)] = byte() }
            return (f, "random bytes")
        case 3 where v4:
            f[l3] = 0x40 | UInt8(int(0...15))
            return (f, "IPv4 IHL")
        case 4:
            let at = v4 ? l3 + 2 : l3 + 4
            guard f.count >= at + 2 else { return (f, "intact") }
            let length = Int(f.be16(at)) + [-1, 1, -20, 20, Int.random(in: -100...100, using: &rng)][int(0...4)]
            f.setBE16(at, UInt16(clamping: max(0, length)))
            return (f, v4 ? "IPv4 total length" : "IPv6 payload length")
        case 5 where v4:
            f.setBE16(l3 + 6, UInt16(int(0...0xffff)))
            return (f, "IPv4 flags and fragment offset")
        case 6:
            let l4 = boundaries(f).count > 1 ? boundaries(f)[1] : l3
            guard f.count > l4 + 13 else { return (f, "intact") }
            f[l4 + 13] = byte()
            return (f, "TCP flags (or a UDP payload byte)")
        case 7:
            let l4 = boundaries(f).count > 1 ? boundaries(f)[1] : l3
            guard f.count > l4 + 12 else { return (f, "intact") }
            f[l4 + 12] = UInt8(int(0...15)) << 4
            return (f, "TCP data offset (or a UDP payload byte)")
        case 8:
            // One or two more tags after the MAC addresses: 802.1Q or 802.1ad (QinQ).
            guard f.count >= 14 else { return (f, "intact") }
            for _ in 0..<int(1...2) {
                let tpid: UInt16 = chance(50) ? 0x8100 : 0x88a8
                f.insert(contentsOf: [UInt8(tpid >> 8), UInt8(tpid & 0xff), byte() & 0x0f, byte()], at: 12)
            }
            return (f, "VLAN and QinQ tags")
        case 9 where !v4 && f.count >= l3 + 40:
            // An extension header (hop-by-hop, routing, fragment, destination) before the L4 header.
            let next = f[l3 + 6]
            let type: UInt8 = [0, 43, 44, 60][int(0...3)]
            f[l3 + 6] = type
            f.insert(contentsOf: [next, 0, byte(), byte(), byte(), byte(), byte(), byte()], at: l3 + 40)
            f.setBE16(l3 + 4, f.be16(l3 + 4) &+ 8)
            return (f, "an IPv6 extension header")
        case 10:
            return ((0..<int(Self.shortest...160)).map { _ in byte() }, "random frame")
        case 11:
            // An ICMP error to a VIP from a router, quoting the VIP's packet to a client (or noise).
            let target = vips[int(0...vips.count - 1)]
            let v6 = target.vip.contains(":")
            let quoted: [UInt8]
            if chance(70) {
                let reply = target.tcp
                    ? PacketBuilder().tcp(from: target.vip, target.port, to: client(v6: v6), UInt16(int(1...65535)), flags: [.syn, .ack])
                    : PacketBuilder().udp(from: target.vip, target.port, to: client(v6: v6), UInt16(int(1...65535)), payload: [1, 2, 3, 4])
                quoted = Array(reply.dropFirst(14).prefix(int(0...80)))
            } else {
                quoted = (0..<int(0...80)).map { _ in byte() }
            }
            let (type, code): (UInt8, UInt8) = v6 ? ([1, 2, 3, 4][int(0...3)], UInt8(int(0...4))) : ([3, 11, 12][int(0...2)], UInt8(int(0...15)))
            let router = v6 ? "2001:db8:99::1" : "192.0.2.99"
            return (PacketBuilder().icmpError(from: router, to: target.vip, type: type, code: code,
                                              rest: UInt32(int(0...1500)), quoting: quoted), "an ICMP error")
        default:
            return (f, "intact")
        }
    }
}

/// A value handed to the one thread that uses it.
struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

@Suite(requiresRoot)
struct FrameFuzzTests {
    @Test("fuzzed frames: never aborted, passed untouched, sent exactly as the model predicts, counted; the decapsulator likewise")
    func fuzzedFramesKeepEveryInvariant() async throws {
        let lb = try await TestDataplane.make(yaml: fuzzServices)
        // The fuzz loops run on a thread of their own, each the only user of its program.
        let balancer = Unchecked(lb)
        let services = lb.serviceFile.services, node = lb.serviceFile.node
        let backends = Set(services.flatMap { $0.backends.map(\.address) })
        try lb.setForwarding(SL_FWD_L2DSR, of: "web6", mac: backendMAC)
        let seed = SplitMix64.testSeed, count = FrameFuzz.frames
        // Seconds of CPU: on a thread of its own.
        let (outcomes, failures, tunnels) = try await offPool {
            var mutator = FrameMutator(seed: seed, services: services)
            var outcomes: [String: Int] = [:], failures: [(String, [UInt8], [UInt8])] = [], tunnels: [[UInt8]] = []
            let lb = balancer.value
            let before = try lb.nodeStats()
            for _ in 0..<count {
                let (frame, kind) = mutator.chance(30) ? (mutator.valid(), "intact") : mutator.mutate(mutator.valid())
                let (verdict, output) = try lb.run(frame)
                let verdictName = XDPVerdict(rawValue: verdict)?.description ?? "verdict \(verdict)"
                outcomes["\(kind): \(verdictName)", default: 0] += 1
                func fail(_ why: String) { if failures.count < 20 { failures.append(("\(kind): \(why)", frame, output)) } }
                switch XDPVerdict(rawValue: verdict) {
                case .drop: break
                case .pass: if output != frame { fail("passed, changed") }
                case .tx:
                    // A TCP or UDP flow goes where the model says; an ICMP error to the backend of the flow
                    // it quotes; either way exactly the frame of that backend's mode.
                    guard let flow = IPFlow(frame: frame) ?? Self.quotedFlow(frame), let service = lb.model.service(for: flow),
                          let backend = lb.model.backend(for: flow)?.address else {
                        fail("sent, but the model has no backend for it")
                        continue
                    }
                    let mode = Self.modes[service.name] ?? .ipip
                    if output != Self.expected(mode, input: frame, output: output, backend: backend, node: node) {
                        fail("sent, not the model's frame (\(mode) to \(backend))")
                    } else if mode != .l2dsr && tunnels.count < count / 4 {
                        tunnels.append(output)
                    }
                default: fail("verdict \(verdictName)")
                }
            }
            let delta = try lb.nodeStats() - before
            let counted = delta.verdicts.values.reduce(0, +)
            if counted != UInt64(count) { failures.append(("the verdict counters moved by \(counted) for \(count) frames: \(delta)", [], [])) }
            return (outcomes, failures, tunnels)
        }
        report("balancer", seed: seed, count: count, outcomes: outcomes, failures: failures)

        // The decapsulator of a backend that holds every backend address and VIP.
        let decapsulator = Unchecked(try await TestDecap.make(locals: backends.map(\.description), vips: services.map(\.vip.description)))
        let (decapOutcomes, decapFailures) = try await offPool {
            let decap = decapsulator.value
            var mutator = FrameMutator(seed: seed ^ 0xdeca, services: services)
            var outcomes: [String: Int] = [:], failures: [(String, [UInt8], [UInt8])] = []
            for index in 0..<count {
                let tunnel = tunnels.isEmpty ? mutator.valid() : tunnels[index % tunnels.count]
                let (frame, kind) = mutator.chance(30) ? (tunnel, "intact") : mutator.mutate(tunnel)
                let (verdict, output) = try decap.run(frame)
                outcomes["\(kind): \(verdict?.description ?? "?")", default: 0] += 1
                func fail(_ why: String) { if failures.count < 20 { failures.append(("\(kind): \(why)", frame, output)) } }
                switch verdict {
                case .drop: break
                case .pass: if output != frame && !Self.isStripped(output, of: frame) { fail("passed, neither untouched nor stripped to its inner packet") }
                default: fail("verdict \(verdict?.description ?? "?")")
                }
            }
            return (outcomes, failures)
        }
        report("decapsulator", seed: seed, count: count, outcomes: decapOutcomes, failures: decapFailures)
    }

    enum Mode: String { case ipip, gue, l2dsr }
    /// The services' modes: as the file says, web6 switched to l2dsr (an unattached balancer has
    /// no neighbours to resolve, so the test writes the MAC).
    static let modes: [String: Mode] = ["dns": .gue, "web6": .l2dsr]

    /// The frame the balancer must send for `input` to `backend` in `mode`. GUE's UDP source port
    /// is the flow's entropy: read from `output`, everything else modelled.
    static func expected(_ mode: Mode, input: [UInt8], output: [UInt8], backend: IPAddress, node: NodeConfig) -> [UInt8] {
        switch mode {
        case .ipip:
            return expectedTunnelFrame(input: input, backend: backend, node: node)
        case .gue:
            guard let outer = ipPacketRange(ofFrame: output)?.lowerBound, output.count >= outer + (backend.family == .v4 ? 22 : 42) else { return [] }
            return expectedGUEFrame(input: input, backend: backend, node: node, sport: output.be16(outer + (backend.family == .v4 ? 20 : 40)))
        case .l2dsr:
            return backendMAC + Array(input[0..<6]) + Array(input[12...])
        }
    }

    /// The client's flow an ICMP error to a VIP is about: the packet it quotes (VIP -> client), turned round.
    static func quotedFlow(_ frame: [UInt8]) -> IPFlow? {
        guard let range = ipPacketRange(ofFrame: frame) else { return nil }
        let packet = Array(frame[range])
        let v4 = packet[0] >> 4 == 4
        let header = v4 ? Int(packet[0] & 0x0f) * 4 : 40
        guard packet.count > header + 8, packet[v4 ? 9 : 6] == (v4 ? 1 : 58),
              let quoted = IPFlow(ipPacket: Array(packet[(header + 8)...])) else { return nil }
        return IPFlow(source: quoted.destination, destination: quoted.source, protocolNumber: quoted.protocolNumber,
                      sourcePort: quoted.destinationPort, destinationPort: quoted.sourcePort)
    }

    /// `output` is `input` with its outer IP (and UDP and GUE) header taken out: the link
    /// header kept but for the ethertype, then a whole IP packet that ends `input`.
    static func isStripped(_ output: [UInt8], of input: [UInt8]) -> Bool {
        guard output.count < input.count, let range = ipPacketRange(ofFrame: output), range.lowerBound >= 14 else { return false }
        return Array(output[..<12]) == Array(input[..<12]) && input.suffix(output.count - range.lowerBound).elementsEqual(output[range.lowerBound...])
    }
}

/// Prints a fuzz run's outcomes by kind and expects no failure; the first failing frame (and
/// what came out) is attached as a pcap, the first five printed in hex.
func report(_ program: String, seed: UInt64, count: Int, outcomes: [String: Int], failures: [(String, [UInt8], [UInt8])]) {
    print("\(program) fuzzed (seed \(seed)): \(count) frames; " + outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    if let first = failures.first { attachPcap(named: "first-\(program)-fuzz-failure", [first.1, first.2]) }
    let first = failures.prefix(5).map { "\($0.0)\n  in:  \(hex($0.1))\n  out: \(hex($0.2))" }.joined(separator: "\n")
    #expect(failures.isEmpty, "\(program), seed \(seed): \(failures.count) failures; the first: \(first)")
}
