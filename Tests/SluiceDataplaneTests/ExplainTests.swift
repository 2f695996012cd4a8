// `lbctl explain` held to the program: per forwarding mode, ten thousand random packets
// (SYNs, segments of open and unknown connections, UDP, both families, packets for no
// VIP, NAT backends' replies, a backend set changed half way) are explained first and
// then run through the real balancer (BPF_PROG_TEST_RUN). The verdict, the drop reason
// (from the counters), the Ethernet addresses, the outer header or the rewritten
// addresses and ports, and the connection-table entries written must agree on every one.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private enum ExplainMode: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case ipip, gue, l2dsr, nat, fullnat
    var testDescription: String { rawValue }
    var translates: Bool { self == .nat || self == .fullnat }
}

/// The services the flows go to: Config.standard's, or its NAT subset.
private let services: [(name: String, vip: String, port: UInt16, proto: L4Protocol)] = [
    ("web", "198.51.100.10", 80, .tcp), ("dns", "198.51.100.10", 53, .udp), ("web6", "2001:db8::80", 443, .tcp),
    ("dns6", "2001:db8::53", 53, .udp), ("mixed", "198.51.100.20", 8080, .tcp), ("drained", "198.51.100.30", 80, .tcp),
]

/// Config.standard with web's and dns's backend sets changed: one leaves, one joins, weights move.
private let changedStandard = Config.standard
    .replacingOccurrences(of: "{ address: 10.1.0.23, weight: 1 }", with: "{ address: 10.1.0.24, weight: 3 }")
    .replacingOccurrences(of: "{ address: 10.1.0.54 }", with: "{ address: 10.1.0.55, weight: 2 }")

private let l2MAC: [UInt8] = [0x02, 0x12, 0x00, 0x00, 0x00, 0x01]
/// fullnat sends to the backends through another interface (a redirect), nat out of the same one.
private let redirectIndex: UInt32 = 7

/// A NAT flow the balancer opened, for a backend's reply to it.
private struct Translated {
    var proto: L4Protocol
    var backend: IPAddress, backendPort: UInt16
    var target: IPAddress, targetPort: UInt16
}

@Suite(requiresRoot)
struct ExplainTests {
    @Test(arguments: ExplainMode.allCases)
    fileprivate func explainAgreesWithTheProgramOnTenThousandRandomPackets(_ mode: ExplainMode) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard, natSize: TestDataplane.conntrackSize)
        try configure(lb, mode)
        var explainer = try lb.dataplane.explainer(ingressIndex: 1, localMAC: MACAddress(bytes: ourMAC))
        var rng = SeededGenerator(seed: 0xe1a1_0000 + UInt64(ExplainMode.allCases.firstIndex(of: mode)!))
        var replies: [Translated] = []
        var mismatches: [String] = []
        var seen: [String: Int] = [:]

        let count = 10_000
        for i in 0..<count {
            if i == count / 2 {
                try lb.apply(yaml: changedStandard)
                try configure(lb, mode)
                explainer = try lb.dataplane.explainer(ingressIndex: 1, localMAC: MACAddress(bytes: ourMAC))
            }
            let (query, flags) = randomPacket(mode, replies: replies, rng: &rng)
            let frame = natFrame(query.proto, from: query.source.description, query.sourcePort, to: query.destination.description,
                                 query.destinationPort, flags: flags, payload: [0x5a, 0x5a],
                                 macs: (clientSideMAC, ourMAC))
            let explained = try explainer.explain(query)
            let key = flowKey(query.proto, from: query.source, query.sourcePort, to: query.destination, query.destinationPort)
            let ctBefore = try lb.ctEntry(key) != nil
            let heldBefore = try lb.dataplane[.ctUnconfirmed].lookup(key, as: sl_ct_entry.self) != nil
            let dropsBefore = try lb.nodeStats().drops
            let (verdict, output) = try lb.run(frame)
            let dropsAfter = try lb.nodeStats().drops

            var problems = compare(explained, verdict: verdict, input: frame, output: output)
            if explained.verdict == "drop" {
                let grew = dropsAfter.filter { $0.value != dropsBefore[$0.key, default: 0] }.map(\.key)
                if grew != [explained.dropReason ?? "?"] { problems.append("drop counters that grew: \(grew)") }
            }
            // What the program wrote is what explain said it would write.
            let ctAfter = try lb.ctEntry(key)
            let heldAfter = try lb.dataplane[.ctUnconfirmed].lookup(key, as: sl_ct_entry.self) != nil
            if explained.records.contains("sl_conntrack") {
                if ctAfter == nil { problems.append("explain records sl_conntrack; the program wrote nothing") }
                if let be = explained.backend, let ctAfter, ctAfter.backend_id != be.id {
                    problems.append("sl_conntrack holds backend #\(ctAfter.backend_id), explain said #\(be.id)")
                }
            } else if !ctBefore && ctAfter != nil {
                problems.append("the program wrote sl_conntrack; explain's records are \(explained.records)")
            }
            if explained.records.contains("sl_ct_unconfirmed") != (heldAfter && !heldBefore) {
                problems.append("sl_ct_unconfirmed before \(heldBefore), after \(heldAfter); explain's records are \(explained.records)")
            }
            if explained.records.contains("sl_nat"), let rewrite = explained.output?.rewrite {
                let reply = Translated(proto: query.proto, backend: IPAddress(rewrite.destination!)!, backendPort: rewrite.destinationPort!,
                                       target: rewrite.source.flatMap(IPAddress.init) ?? query.source,
                                       targetPort: rewrite.sourcePort ?? query.sourcePort)
                let replyKey = flowKey(reply.proto, from: reply.backend, reply.backendPort, to: reply.target, reply.targetPort)
                if try lb.natEntry(replyKey) == nil { problems.append("explain records sl_nat; the program has no entry for the reply") }
                replies.append(reply)
            }
            if !problems.isEmpty {
                mismatches.append("\(query) flags \(flags): \(problems.joined(separator: "; ")) — explain: \(explained.verdict) \(explained.reason)")
            }
            let by = explained.dropReason ?? explained.placement?.by ?? explained.flow?.table ?? "-"
            seen["\(explained.verdict)/\(by)", default: 0] += 1
        }

        #expect(mismatches.isEmpty, "\(mismatches.count) of \(count) packets disagree; the first: \(mismatches.prefix(5))")
        // The random packets reached every kind of decision the mode has.
        let out = mode == .fullnat ? "redirect" : "tx"
        var expected: Set<String> = ["pass/-", "drop/no_backend", "\(out)/maglev", "\(out)/conntrack"]
        switch mode {
        case .ipip, .gue: expected.insert("tx/unconfirmed")
        case .l2dsr: expected.formUnion(["tx/unconfirmed", "drop/no_neighbour"])
        case .nat: expected.insert("tx/sl_nat")
        case .fullnat: expected.formUnion(["tx/sl_nat", "drop/snat_exhausted"])
        }
        #expect(expected.isSubset(of: Set(seen.keys)), "decisions seen: \(seen)")
    }

    /// The mode's settings, written as an apply of `forwarding:` writes them.
    private func configure(_ lb: TestDataplane, _ mode: ExplainMode) throws {
        switch mode {
        case .ipip:
            try lb.dataplane.setTunnel(mtu: 0)
        case .gue:
            try lb.dataplane.setTunnel(mtu: 1400, guePort: 6080)
            for s in services { try lb.dataplane.setForwarding(SL_FWD_GUE, of: s.name) }
        case .l2dsr:
            // web6's backends have no MAC yet: their packets are dropped for want of a neighbour.
            for s in services where s.name != "web6" { try lb.dataplane.setForwarding(SL_FWD_L2DSR, of: s.name, mac: l2MAC) }
            try lb.dataplane.setForwarding(SL_FWD_L2DSR, of: "web6")
        case .nat, .fullnat:
            let cases = natCases + [NATCase(service: "drained", client: clientV4, vip: "198.51.100.30", port: 80, proto: .tcp, backendPort: 80)]
            for c in cases {
                try lb.dataplane.setNAT(mode == .nat ? SL_FWD_NAT : SL_FWD_FULLNAT, of: c.service, port: c.backendPort,
                                        nextHop: backendHopMAC, localMAC: backendSideMAC, ifindex: mode == .nat ? 0 : redirectIndex)
            }
            try lb.dataplane.setSNATPool(snatV4, ports: 40000...40255)
            try lb.dataplane.setSNATPool(snatV6, ports: 40000...40031)  // small: candidates collide, some run out
            if mode == .fullnat { try lb.dataplane.setProxyV2(of: "web6") }
        }
    }

    /// A client's packet to a service (most), a packet for no VIP, or a backend's reply.
    private func randomPacket(_ mode: ExplainMode, replies: [Translated],
                              rng: inout SeededGenerator) -> (ExplainQuery, Set<TCPFlag>) {
        let roll = Int.random(in: 0..<100, using: &rng)
        if mode.translates, roll < 20, let reply = replies.randomElement(using: &rng) {
            var r = reply
            if roll < 3 { r.targetPort &+= 1 }  // answers no flow
            return (ExplainQuery(proto: r.proto, source: r.backend, sourcePort: r.backendPort, destination: r.target,
                                 destinationPort: r.targetPort), [.ack])
        }
        let pool = mode.translates ? services.filter { $0.name != "mixed" } : services
        let service = pool.randomElement(using: &rng)!
        let vip = IPAddress(service.vip)!
        let client = vip.family == .v4 ? IPAddress("203.0.113.\(Int.random(in: 1...40, using: &rng))")!
                                      : IPAddress("2001:db8:c::\(Int.random(in: 1...40, using: &rng))")!
        let sport = UInt16.random(in: 33000...33030, using: &rng)
        var destination = vip, port = service.port
        if roll >= 92 {  // no VIP: another address, or the VIP's address on another port
            if roll % 2 == 0 { destination = vip.family == .v4 ? IPAddress("198.51.100.99")! : IPAddress("2001:db8::99")! }
            else { port = 9 }
        }
        guard service.proto == .tcp else {
            return (ExplainQuery(proto: .udp, source: client, sourcePort: sport, destination: destination, destinationPort: port), [])
        }
        let syn = Bool.random(using: &rng)
        return (ExplainQuery(proto: .tcp, source: client, sourcePort: sport, destination: destination, destinationPort: port, syn: syn),
                syn ? [.syn] : [.ack, .psh])
    }

    /// What differs between the explanation and the program's verdict and frame.
    private func compare(_ e: Explanation, verdict: UInt32, input: [UInt8], output: [UInt8]) -> [String] {
        let expected: XDPVerdict = switch e.verdict {
        case "pass": .pass
        case "tx": .tx
        case "redirect": .redirect
        default: .drop
        }
        guard verdict == expected.rawValue else {
            return ["the program's verdict is \(XDPVerdict(rawValue: verdict).map(String.init(describing:)) ?? "\(verdict)"), explain's \(e.verdict)"]
        }
        if expected == .pass { return output == input ? [] : ["a passed frame was changed"] }
        guard expected != .drop, let out = e.output else { return [] }
        var problems: [String] = []
        func mac(_ at: Int) -> String { MACAddress(bytes: Array(output[at..<at + 6]))!.description }
        if mac(0) != out.ethernetDestination { problems.append("Ethernet destination \(mac(0)), explain \(out.ethernetDestination)") }
        if let source = out.ethernetSource, mac(6) != source { problems.append("Ethernet source \(mac(6)), explain \(source)") }
        let ip = Array(output[l3...])
        let v4 = ip[0] >> 4 == 4
        let (src, dst) = addresses(ip)
        let header = v4 ? Int(ip[0] & 0x0f) * 4 : 40
        if let outer = out.outer {
            let proto = v4 ? ip[9] : ip[6], ttl = v4 ? ip[8] : ip[7]
            if (v4 ? 4 : 6) != outer.family { problems.append("outer family \(v4 ? 4 : 6), explain \(outer.family)") }
            if src.description != outer.source || dst.description != outer.destination {
                problems.append("outer \(src) -> \(dst), explain \(outer.source) -> \(outer.destination)")
            }
            if proto != outer.protocol || ttl != outer.ttl { problems.append("outer protocol \(proto) ttl \(ttl), explain \(outer.protocol) \(outer.ttl)") }
            if v4 && (ip[6] & 0x40 != 0) != (outer.dontFragment ?? false) { problems.append("outer DF differs") }
            if let sport = outer.udpSourcePort, let dport = outer.udpDestinationPort,
               (ip.be16(header), ip.be16(header + 2)) != (sport, dport) {
                problems.append("GUE ports \(ip.be16(header)) -> \(ip.be16(header + 2)), explain \(sport) -> \(dport)")
            }
            if Array(ip[(header + (proto == 17 ? 8 : 0))...]) != Array(input[l3...]) { problems.append("the inner packet was changed") }
        } else if let rewrite = out.rewrite {
            let inIP = Array(input[l3...])
            let inHeader = v4 ? Int(inIP[0] & 0x0f) * 4 : 40
            let (inSrc, inDst) = addresses(inIP)
            let want = (rewrite.source ?? inSrc.description, rewrite.sourcePort ?? inIP.be16(inHeader),
                        rewrite.destination ?? inDst.description, rewrite.destinationPort ?? inIP.be16(inHeader + 2))
            let got = (src.description, ip.be16(header), dst.description, ip.be16(header + 2))
            if got != want { problems.append("rewritten to \(got), explain \(want)") }
        } else if ip != Array(input[l3...]) {
            problems.append("l2dsr changed the IP packet")
        }
        return problems
    }
}

/// The source and destination of an IP packet.
private func addresses(_ ip: [UInt8]) -> (IPAddress, IPAddress) {
    ip[0] >> 4 == 4 ? (IPAddress(bytes: Array(ip[12..<16]))!, IPAddress(bytes: Array(ip[16..<20]))!)
                    : (IPAddress(bytes: Array(ip[8..<24]))!, IPAddress(bytes: Array(ip[24..<40]))!)
}
