// The forwarding-mode rows of `make bench`: each mode's established and SYN
// figures through the same harness as the rest of the data-plane section,
// with tunnel_mtu 1500 (so the size check and the MSS clamp run as in
// production), and each mode against ipip measured in the same run: l2dsr
// does less work and must cost less; gue must stay within 10% of ipip.
import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport

extension ConfigRun {
    private static let backendMAC: [UInt8] = [0x02, 0xbe, 0x00, 0x00, 0x00, 0x01]

    private static let modes: [(mode: sl_forwarding, name: String)] = [
        (SL_FWD_IPIP, "ipip"), (SL_FWD_GUE, "gue"), (SL_FWD_L2DSR, "l2dsr"),
    ]

    /// What one pass must send for `kind`'s VIP in `mode`.
    private func modeOutput(_ kind: ServiceKind, _ mode: sl_forwarding, family: IPAddress.Family,
                            proto: UInt8) -> (_ output: [UInt8], _ input: [UInt8]) throws -> Void {
        switch mode {
        case SL_FWD_L2DSR:
            return { output, input in
                guard output == Self.backendMAC + Array(input[0..<6]) + Array(input[12...]) else {
                    throw DataplaneBenchError("l2dsr: not the input readdressed to the backend's MAC")
                }
            }
        case SL_FWD_GUE:
            let addresses = Set(kind.service(backends: backends).backends.map(\.address))
            return { output, input in
                let outer = family == .v4 ? 20 : 40, udp = 14 + outer
                let proto = output[14 + (family == .v4 ? 9 : 6)]
                let destination = IPAddress(bytes: Array(family == .v4 ? output[30..<34] : output[38..<54]))
                guard output.count == input.count + outer + 8, proto == 17, let destination, addresses.contains(destination),
                      UInt16(output[udp + 2]) << 8 | UInt16(output[udp + 3]) == UInt16(SL_GUE_DEFAULT_PORT),
                      Array(output[(udp + 8)...]) == Array(input[14...]) else {
                    throw DataplaneBenchError("gue: not the input in UDP to port \(SL_GUE_DEFAULT_PORT) of a backend")
                }
            }
        default:
            return tunnel(kind, family: family, proto: proto)
        }
    }

    /// Each mode's figures, and gue and l2dsr against ipip.
    mutating func measureModes(into report: inout BenchReport) throws {
        let hit = Target.encap(1.5, "<= 1.5x encap floor")
        let newFlow = Target.encap(2.5, "<= 2.5x encap floor")
        let cases: [(kind: ServiceKind, service: String, frame: [UInt8], family: IPAddress.Family, proto: UInt8, scenario: String)] = [
            (.tcp4, "bench-tcp4", Frames.established4, .v4, 4, "established_v4"),
            (.tcp6, "bench-tcp6", Frames.established6, .v6, 41, "established_6in6"),
        ]
        for c in cases {
            try balancer.apply(file(c.kind))
            for (mode, name) in Self.modes {
                try balancer.dataplane.setForwarding(mode, of: c.service, mac: Self.backendMAC)
                try balancer.dataplane.setTunnel(mtu: 1500)
                try record(Frames.syn(of: c.frame), then: c.frame, "mode.\(name).\(c.scenario)")
                let check = modeOutput(c.kind, mode, family: c.family, proto: c.proto)
                let established = Subject(program: balancer.program, frame: c.frame,
                                          varyOffset: Frames.tcpSequenceOffset(c.frame), verdict: 3, checkOutput: check,
                                          balancer: balancer, expected: { NodeStats(.tx, ctHits: $0, packets: $0) })
                _ = try figure("mode.\(name).\(c.scenario)", "\(name): \(c.scenario.replacingOccurrences(of: "_", with: " ")) (ct hit)",
                               established, target: hit, into: &report)
                guard c.kind == .tcp4 else { continue }
                let syn = Subject(program: balancer.program, frame: Frames.syn4,
                                  varyOffset: Frames.tcpSequenceOffset(Frames.syn4), verdict: 3,
                                  checkOutput: modeOutput(.tcp4, mode, family: .v4, proto: 4), balancer: balancer,
                                  expected: { NodeStats(.tx, packets: $0) })
                _ = try figure("mode.\(name).syn_v4_one_flow", "\(name): SYN v4, one flow", syn, target: newFlow, into: &report)
            }
        }
        compareModes(into: &report)
        report.method["dataplane.modes"] = "dataplane.mode.*: 1 VIP, \(backends) backends, the set applied through the real Applier, then each backend's mode (and, for l2dsr, a MAC: the bench has no neighbour table) and tunnel_mtu 1500 written into the maps as an apply writes them, so the size check (and for SYNs the MSS option walk: the frames carry no options) runs as in production; *_vs_ipip: the same figure over the ipip one of this run"
    }

    /// gue and l2dsr over ipip, figure by figure.
    private func compareModes(into report: inout BenchReport) {
        for scenario in ["established_v4", "established_6in6", "syn_v4_one_flow"] {
            let ipip = "dataplane.mode.ipip.\(scenario).\(suffix)"
            for (name, limit, target) in [("gue", 1.10, "<= 1.10x ipip"), ("l2dsr", 1.0, "< ipip")] {
                guard let figure = report.record(named: "dataplane.mode.\(name).\(scenario).\(suffix)") else { continue }
                report.add("dataplane.mode.\(name)_vs_ipip.\(scenario).\(suffix)", group: "dataplane",
                           "\(name) over ipip: \(scenario.replacingOccurrences(of: "_", with: " "))", value: figure.value,
                           unit: "ns/packet", reference: ipip, limit: limit, target: target)
            }
        }
    }
}
