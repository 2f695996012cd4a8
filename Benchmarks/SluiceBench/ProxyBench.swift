// The PROXY v2 rows of `make bench`: on a full-NAT service with client_address: proxy-v2,
// the client's segment that carries the header (the tail-called path: the frame grows and
// its headers move) and an established packet each way once the header is acknowledged
// (the sequence or acknowledgement number offset on the common path), beside the plain
// full-NAT figures of the same run. Target: an established PROXY-flow packet within 10%
// of a plain full-NAT one.
import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport

extension ConfigRun {
    private static let proxyHop: [UInt8] = [0x02, 0x4e, 0x48, 0x00, 0x00, 0x02]
    private static let proxyBackendPort: UInt16 = 8080
    private static let proxySNAT = [IPAddress("192.0.2.20")!, IPAddress("192.0.2.21")!]

    /// The client's segment of the bench flow with sequence number `seq`.
    private func clientSegment(seq: UInt32, payload: [UInt8] = []) -> [UInt8] {
        var builder = Frames.builder
        builder.sequence = seq
        return builder.tcp(from: Frames.client4, 40009, to: Frames.vip4, 80, flags: [.ack], payload: payload)
    }

    private static func be32(_ frame: [UInt8], at offset: Int) -> UInt32 {
        frame[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func measureProxy(into report: inout BenchReport) throws {
        let hit = Target.encap(2.2, "<= 2.2x encap floor")
        try balancer.apply(file(.tcp4))
        try balancer.dataplane.setNAT(SL_FWD_FULLNAT, of: "bench-tcp4", port: Self.proxyBackendPort, nextHop: Self.proxyHop)
        try balancer.dataplane.setSNATPool(Self.proxySNAT, ports: 1024...65535)
        try balancer.dataplane.setProxyV2(of: "bench-tcp4")
        let syn = Frames.syn(of: clientSegment(seq: 0x1000_0001))
        let opened = try balancer.program.testRun(syn)
        guard opened.verdict == 3 else { throw DataplaneBenchError("proxy: opening the flow: \(opened.verdictName)") }
        let seen = FrameAddresses(opened.output)
        let start: UInt32 = 0x1000_0002, length = 28
        let l4 = Frames.l4Offset(syn)

        // The header: the client's ACK at the start, every pass (the backend never acknowledges
        // it here). Written once before timing, so every timed pass is a resend.
        let carrier = clientSegment(seq: start)
        let first = try balancer.program.testRun(carrier)
        guard first.output.count == carrier.count + length else { throw DataplaneBenchError("proxy: no header in \(first.output.count) bytes") }
        let header = Subject(program: balancer.program, frame: carrier, varyOffset: l4 + 8, verdict: 3, checkOutput: { output, input in
            guard output.count == input.count + length, output[(l4 + 20)..<(l4 + 32)].elementsEqual([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]) else {
                throw DataplaneBenchError("proxy header: not the segment expected (\(output.count) bytes)")
            }
        }, balancer: balancer, expected: { NodeStats(.tx, ctHits: $0, proxyResent: $0, packets: $0) })
        _ = try figure("mode.fullnat_proxy.header_v4", "fullnat + proxy-v2: the client's segment that carries the header", header,
                       target: .encap(6.0, "<= 6x encap floor (once or twice a connection)"), into: &report)
        if let figure = report.record(named: "dataplane.mode.fullnat_proxy.header_v4.\(suffix)") {
            report.add("dataplane.mode.fullnat_proxy_vs_syn.header_v4.\(suffix)", group: "dataplane",
                       "fullnat + proxy-v2: the header's segment over the SYN of a new full-NAT flow", value: figure.value,
                       unit: "ns/packet", reference: "dataplane.mode.fullnat.syn_v4_new_flow.\(suffix)", limit: 0.5,
                       target: "<= 0.5x the connection's SYN")
        }

        // The backend acknowledges the header: from now on only the offsets.
        var builder = Frames.builder
        builder.sequence = 0x5000_0001
        builder.acknowledgment = start + UInt32(length) + 100
        let ack = builder.tcp(from: seen.destination.description, Self.proxyBackendPort, to: seen.source.description, seen.sourcePort,
                              flags: [.ack])
        guard try balancer.program.testRun(ack).verdict == 3 else { throw DataplaneBenchError("proxy: the backend's ACK was not translated") }

        let established = clientSegment(seq: start + 100)
        let forward = Subject(program: balancer.program, frame: established, varyOffset: l4 + 8, verdict: 3, checkOutput: { output, input in
            guard output.count == input.count, Self.be32(output, at: l4 + 4) == start + 100 + UInt32(length),
                  FrameAddresses(output) == seen else {
                throw DataplaneBenchError("proxy forward: not the translation expected (\(FrameAddresses(output)))")
            }
        }, balancer: balancer, expected: { NodeStats(.tx, ctHits: $0, packets: $0) })
        _ = try figure("mode.fullnat_proxy.established_v4", "fullnat + proxy-v2: established v4, client to backend (seq offset)",
                       forward, target: hit, into: &report)
        let back = Subject(program: balancer.program, frame: ack, varyOffset: l4 + 4, verdict: 3, checkOutput: { output, input in
            guard output.count == input.count, Self.be32(output, at: l4 + 8) == start + 100 else {
                throw DataplaneBenchError("proxy reply: not the acknowledgement expected")
            }
        }, balancer: balancer, expected: { NodeStats(.tx, natReplies: $0, packets: $0) })
        _ = try figure("mode.fullnat_proxy.reply_v4", "fullnat + proxy-v2: established v4, backend's reply to client (ack offset)",
                       back, target: hit, into: &report)

        for (proxy, plain, what) in [("established_v4", "established_v4", "client to backend"), ("reply_v4", "reply_v4", "backend to client")] {
            guard let figure = report.record(named: "dataplane.mode.fullnat_proxy.\(proxy).\(suffix)") else { continue }
            report.add("dataplane.mode.fullnat_proxy_vs_fullnat.\(proxy).\(suffix)", group: "dataplane",
                       "fullnat + proxy-v2 over plain fullnat: established v4, \(what)", value: figure.value, unit: "ns/packet",
                       reference: "dataplane.mode.fullnat.\(plain).\(suffix)", limit: 1.1, target: "<= 1.1x plain fullnat")
        }
        report.method["dataplane.proxy"] = "dataplane.mode.fullnat_proxy.*: the fullnat setup of dataplane.nat with client_address: proxy-v2 on the VIP; header_v4: the client's ACK at the stream's start before the backend acknowledged the header (the frame grows by 28 bytes, the tail-called sl_proxy), written once before timing; established_v4 / reply_v4: once the backend's ACK covered the header, a client segment past the start (sequence + 28) and the backend's ACK (acknowledgement - 28); *_vs_fullnat: over the plain fullnat figure of this run"
    }
}
