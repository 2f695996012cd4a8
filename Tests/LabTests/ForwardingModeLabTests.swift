// The forwarding modes end to end (issue #11): gue and l2dsr services in the lab whose
// balancer shares the backends' segment, and ipip and gue services over a path whose
// MTU is the client's own 1500 bytes, where only MSS clamping and the balancer's ICMP
// answers let big packets through. One lab per test; every frame the balancer sent and
// the backends received is captured and must pass tshark's checksum and malformed checks.
import Foundation
import SluiceTestSupport
import Testing

@Suite("forwarding modes in the lab")
struct ForwardingModeLabTests {
    static let vip4 = "198.51.100.10", vip4in6 = "198.51.100.20", vip6 = "2001:db8:100::10"
    static let clientV4 = "10.10.1.2", clientV6 = "fd10:1::2"
    static let webWeights = [1, 2, 3]

    /// A burst to one service, and how its backends must log it.
    struct Burst: CustomStringConvertible {
        var kind: Lab.ClientKind
        var vip: String
        var port: Int
        var count: Int
        var weights: [Int]?
        var client: String { vip.contains(":") ? ForwardingModeLabTests.clientV6 : ForwardingModeLabTests.clientV4 }
        var logProto: String { kind == .udp ? "udp" : "http" }
        var description: String { "\(count) \(kind) to \(vip):\(port)" }
    }

    /// Runs `burst` and checks it: every answer, the weights, the client's address at the
    /// backends and no reply through the balancer.
    func check(_ burst: Burst, in lab: Lab, mode: String) async throws {
        let before = try await lab.traffic()
        let result = try await lab.client(burst.kind, burst.vip, burst.port, count: burst.count)
        let traffic = try await lab.traffic() - before
        try #require(result.ok == burst.count && result.failed == 0, "\(mode): \(burst) failed:\n\(result.output)")
        var problems = try lab.clientAddressProblems(result, proto: burst.logProto, local: "\(burst.vip):\(burst.port)",
                                                     client: burst.client)
        problems += traffic.directReturnProblems(flows: burst.count, tcp: burst.kind != .udp)
        if let weights = burst.weights { problems += lab.weightProblems(result, weights: weights) }
        for backend in lab.backends where (result.backends[backend] ?? 0) == 0 {
            problems.append("\(backend) answered none: \(result.backends)")
        }
        for problem in problems { Issue.record("\(mode), \(burst): \(problem)") }
    }

    /// Stops every capture and records tshark's expert errors; returns the frames by capture.
    func finish(_ captures: [Lab.Capture], guePort: Int) async throws -> [[[UInt8]]] {
        for capture in captures { await capture.stop() }
        var frames: [[[UInt8]]] = []
        for capture in captures {
            if let errors = try await capture.expertErrors(guePort: guePort) { Issue.record("tshark: \(errors)") }
            frames.append(try capture.frames())
        }
        return frames
    }

    @Test("shared segment: gue (backends decapsulating) then l2dsr (no decapsulator): 300 TCP and 300 UDP each, by weight, client seen, replies direct")
    func sharedSegmentGUEAndL2DSR() async throws {
        try await Lab.withLab(Lab.Variant(sharedSegment: true)) { lab in
            let guePort = try #require(Int(try lab.info("gue_port")))
            try await lab.apply([
                .init("web-gue", vip: Self.vip4in6, port: 80, forwarding: "gue", weights: Self.webWeights),
                .init("dns-gue", vip: Self.vip4in6, port: 53, protocol: "udp", forwarding: "gue"),
                .init("web6-gue", vip: Self.vip6, port: 80, forwarding: "gue", ipv6Backends: true),
                .init("web-l2", vip: Self.vip4, port: 80, forwarding: "l2dsr", weights: Self.webWeights),
                .init("dns-l2", vip: Self.vip4, port: 53, protocol: "udp", forwarding: "l2dsr"),
            ])
            let fromLB = try await lab.capture("router", try lab.info("router_lb_if"))
            var atBackends: [Lab.Capture] = []
            for backend in lab.backends { atBackends.append(try await lab.capture(backend, "eth0")) }

            for burst in [Burst(kind: .http, vip: Self.vip4in6, port: 80, count: 300, weights: Self.webWeights),
                          Burst(kind: .udp, vip: Self.vip4in6, port: 53, count: 300),
                          Burst(kind: .http, vip: Self.vip6, port: 80, count: 60)] {
                try await check(burst, in: lab, mode: "gue")
            }

            try await lab.setDecap(false)
            for backend in lab.backends {
                let program = try await lab.xdpProgram(namespace: "\(lab.name)-\(backend)", interface: "eth0")
                #expect(program == nil, "\(backend) still runs XDP program \(String(describing: program))")
            }
            for burst in [Burst(kind: .http, vip: Self.vip4, port: 80, count: 300, weights: Self.webWeights),
                          Burst(kind: .udp, vip: Self.vip4, port: 53, count: 300)] {
                try await check(burst, in: lab, mode: "l2dsr")
            }

            let frames = try await finish([fromLB] + atBackends, guePort: guePort)
            // What left the balancer: GUE to the backends (outer IPv4 and IPv6) and, for
            // l2dsr, the client's packets unchanged but for the Ethernet destination.
            var gue4 = 0, gue6 = 0, l2SYNs = 0, l2UDP = 0, other: [String] = []
            for frame in frames[0] {
                guard let flow = IPFlow(frame: frame) else { continue }  // ARP, ND
                if flow.protocolNumber == 17 && Int(flow.destinationPort) == guePort {
                    if flow.source.family == .v4 { gue4 += 1 } else { gue6 += 1 }
                } else if flow.destination.description == Self.vip4 && flow.source.description == Self.clientV4 {
                    if flow.protocolNumber == 17 { l2UDP += 1 } else if Self.mss(frame) != nil { l2SYNs += 1 }
                } else if flow.protocolNumber == 6 || flow.protocolNumber == 17 {
                    other.append(flow.description)
                }
            }
            // At least a SYN (the frames with an MSS option) per connection, and each datagram.
            #expect(gue4 >= 300 + 300 && gue6 >= 60, "GUE frames from the balancer: \(gue4) over IPv4, \(gue6) over IPv6; \(fromLB.output)")
            #expect(l2SYNs >= 300 && l2UDP >= 300, "l2dsr frames from the balancer: \(l2SYNs) SYNs, \(l2UDP) datagrams; \(fromLB.output)")
            #expect(other.isEmpty, "other TCP/UDP from the balancer: \(other.prefix(5))")
            for (backend, received) in zip(lab.backends, frames.dropFirst()) {
                #expect(!received.isEmpty, "\(backend) captured nothing")
            }
        }
    }

    @Test("1500-byte path: 4 MiB uploads through ipip and gue complete, SYNs arrive with the clamped MSS, a DF datagram too big gets ICMP 'fragmentation needed'")
    func fullSizePath() async throws {
        try await Lab.withLab(Lab.Variant(tunnelMTU: 1500)) { lab in
            let guePort = try #require(Int(try lab.info("gue_port")))
            let mtu = 1500
            try await lab.apply([
                .init("up-ipip", vip: Self.vip4, port: 9, forwarding: "ipip"),
                .init("up-gue", vip: Self.vip4in6, port: 9, forwarding: "gue"),
                .init("dns-ipip", vip: Self.vip4, port: 53, protocol: "udp", forwarding: "ipip"),
                .init("dns-gue", vip: Self.vip4in6, port: 53, protocol: "udp", forwarding: "gue"),
            ], tunnelMTU: mtu)
            // Outer IPv4 (20) [+ UDP (8)] + inner IPv4 and TCP (40).
            let expected: [(vip: String, mss: Int, udpMTU: Int)] = [(Self.vip4, mtu - 20 - 40, mtu - 20),
                                                                    (Self.vip4in6, mtu - 28 - 40, mtu - 28)]
            let clientNS = try lab.info("client_ns")
            let synFilter = ["tcp", "port", "9", "and", "tcp[tcpflags]", "&", "tcp-syn", "!=", "0"]
            let icmp = try await lab.capture("client", "eth0", filter: ["icmp"])
            let clientSYNs = try await lab.capture("client", "eth0", bothWays: true,
                                                   filter: ["src", "host", Self.clientV4, "and"] + synFilter)
            let fromLB = try await lab.capture("router", try lab.info("router_lb_if"), count: 3000)
            var syns: [Lab.Capture] = []
            for backend in lab.backends { syns.append(try await lab.capture(backend, "eth0", filter: synFilter)) }

            for (vip, _, _) in expected {
                let upload = try await lab.client(.upload, vip, 9, count: 2, megabytes: 4)
                #expect(upload.ok == 2 && upload.failed == 0, "4 MiB uploads to \(vip):9:\n\(upload.output)")
            }
            // The uploads taught the client the path MTUs (TCP's own ICMP answers): forget them.
            try await Command.check("/usr/sbin/ip", ["-n", clientNS, "route", "flush", "cache"])
            for (vip, _, udpMTU) in expected {
                let df = try await lab.dfUDP(vip, 53, size: mtu - 28)
                #expect(df.mtuBefore == mtu && df.mtu == udpMTU, "DF datagrams of \(mtu - 28) bytes to \(vip):53: \(df)")
                let route = try await Command.check("/usr/sbin/ip", ["-n", clientNS, "route", "get", vip]).stdout
                #expect(route.contains("mtu \(udpMTU)"), "the client's route to \(vip): \(route)")
            }

            let frames = try await finish([icmp, clientSYNs, fromLB] + syns, guePort: guePort)
            // ICMP type 3 code 4 from each VIP with its next-hop MTU (bytes 6-7 of the ICMP header).
            var learned: Set<String> = []
            for frame in frames[0] {
                guard let range = ipPacketRange(ofFrame: frame) else { continue }
                let ip = Array(frame[range])
                guard ip.count >= 28, ip[9] == 1, ip[20] == 3, ip[21] == 4 else { continue }
                let source = ip[12..<16].map(String.init).joined(separator: ".")
                learned.insert("\(source) mtu \(Int(ip[26]) << 8 | Int(ip[27]))")
            }
            for (vip, _, udpMTU) in expected {
                #expect(learned.contains("\(vip) mtu \(udpMTU)"), "ICMP 'fragmentation needed' the client got: \(learned)")
            }
            let oversize = frames[2].filter { $0.count > mtu + 14 }.count
            #expect(!frames[2].isEmpty && oversize == 0, "\(oversize) of \(frames[2].count) frames from the balancer exceed \(mtu) bytes of IP")
            // The client asks for its own MSS (1460) before it has learned a path MTU; every
            // SYN reaches a backend with its mode's.
            func mssSeen(_ frames: [[UInt8]]) -> Set<String> {
                Set(frames.compactMap { frame in
                    guard let flow = IPFlow(frame: frame), let mss = Self.mss(frame) else { return nil }
                    return "\(flow.destination) mss \(mss)"
                })
            }
            let asked = mssSeen(frames[1]), arrived = mssSeen(frames.dropFirst(3).flatMap { $0 })
            for (vip, mss, _) in expected {
                #expect(asked.contains("\(vip) mss \(mtu - 40)"), "the client's SYNs: \(asked)")
                #expect(arrived.contains("\(vip) mss \(mss)"), "SYNs at the backends: \(arrived)")
            }
            #expect(arrived.count == expected.count, "every SYN clamped to its mode's MSS: \(arrived)")
        }
    }

    /// The MSS option of an IPv4 TCP SYN frame, nil without one.
    static func mss(_ frame: [UInt8]) -> Int? {
        guard let range = ipPacketRange(ofFrame: frame) else { return nil }
        let ip = Array(frame[range])
        guard ip.count >= 20, ip[0] >> 4 == 4, ip[9] == 6 else { return nil }
        let tcp = Int(ip[0] & 0x0f) * 4
        guard ip.count >= tcp + 20 else { return nil }
        let end = min(ip.count, tcp + Int(ip[tcp + 12] >> 4) * 4)
        var at = tcp + 20
        while at < end {
            switch ip[at] {
            case 0: return nil
            case 1: at += 1
            case 2 where at + 3 < end: return Int(ip[at + 2]) << 8 | Int(ip[at + 3])
            default:
                guard at + 1 < end, ip[at + 1] >= 2 else { return nil }
                at += Int(ip[at + 1])
            }
        }
        return nil
    }
}
