// The NAT rows of `make bench`: an established packet of a nat and of a fullnat
// flow in each direction (the client's packet forwarded, the backend's reply
// translated back) and a new full-NAT flow, source allocation included, beside
// the same floors as every data-plane figure. Target: an established packet,
// either direction, within 2x the encapsulation floor.
import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport

extension ConfigRun {
    private static let nextHopMAC: [UInt8] = [0x02, 0x4e, 0x48, 0x00, 0x00, 0x01]
    private static let backendPort: UInt16 = 8080
    private static let snat = [IPAddress("192.0.2.20")!, IPAddress("192.0.2.21")!]
    /// Passes of one new-flow run: a fresh (emptied) table each run holds them all below
    /// half the pool, so that each pass allocates as a new flow does.
    private static let newFlowPasses: UInt32 = 50_000

    private func natOutput(_ check: @escaping (FrameAddresses) -> Bool, _ what: String) -> (_ output: [UInt8], _ input: [UInt8]) throws -> Void {
        { output, input in
            guard output.count == input.count, check(FrameAddresses(output)) else {
                throw DataplaneBenchError("\(what): not the translation expected (\(FrameAddresses(output)))")
            }
        }
    }

    /// The client's SYN sent once, which opens the translation; returns what the backend sees.
    private func open(_ frame: [UInt8], _ name: String) throws -> FrameAddresses {
        let result = try balancer.program.testRun(Frames.syn(of: frame))
        guard result.verdict == 3 else { throw DataplaneBenchError("\(name): opening the flow: \(result.verdictName)") }
        return FrameAddresses(result.output)
    }

    /// Forgets every translation (and its conntrack entry), as the agent's sweep would.
    private static func clearTranslations(_ dataplane: Dataplane) throws {
        for (key, entry) in try dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self) where entry.nat != 0 {
            _ = try dataplane[.conntrack].delete(key)
        }
        for (key, _) in try dataplane[.nat].hashEntries(key: sl_flow_key.self, value: sl_nat_entry.self) {
            _ = try dataplane[.nat].delete(key)
        }
    }

    mutating func measureNAT(into report: inout BenchReport) throws {
        let hit = Target.encap(2.0, "<= 2x encap floor")
        let backends = Set(ServiceKind.tcp4.service(backends: self.backends).backends.map(\.address))
        let vip = IPAddress(Frames.vip4)!
        for (mode, name) in [(SL_FWD_NAT, "nat"), (SL_FWD_FULLNAT, "fullnat")] {
            try balancer.apply(file(.tcp4))
            try balancer.dataplane.setNAT(mode, of: "bench-tcp4", port: Self.backendPort, nextHop: Self.nextHopMAC)
            try balancer.dataplane.setSNATPool(Self.snat, ports: 1024...65535)
            let seen = try open(Frames.established4, "\(name) established")
            let forward = Subject(program: balancer.program, frame: Frames.established4,
                                  varyOffset: Frames.tcpSequenceOffset(Frames.established4), verdict: 3,
                                  checkOutput: natOutput({ $0 == seen }, "\(name) forward"), balancer: balancer,
                                  expected: { NodeStats(.tx, ctHits: $0, packets: $0) })
            _ = try figure("mode.\(name).established_v4", "\(name): established v4, client to backend (ct hit)", forward,
                           target: hit, into: &report)

            let reply = PacketBuilder().tcp(from: seen.destination.description, Self.backendPort, to: seen.source.description,
                                            seen.sourcePort, flags: [.ack])
            let back = Subject(program: balancer.program, frame: reply, varyOffset: Frames.tcpSequenceOffset(reply), verdict: 3,
                               checkOutput: natOutput({ $0.source == vip && $0.sourcePort == 80 && $0.destinationPort == 40001 },
                                                      "\(name) reply"),
                               balancer: balancer, expected: { NodeStats(.tx, natReplies: $0, packets: $0) })
            _ = try figure("mode.\(name).reply_v4", "\(name): established v4, backend's reply to client", back,
                           target: hit, into: &report)
        }
        // A new full-NAT flow every pass: the source port varies, and each run starts from
        // emptied tables so that every pass opens a flow and allocates its source.
        let newFlow = Subject(program: balancer.program, frame: Frames.syn4, varyOffset: Frames.sourcePortOffset(Frames.syn4),
                              verdict: 3,
                              checkOutput: natOutput({ Self.snat.contains($0.source) && backends.contains($0.destination) },
                                                     "fullnat new flow"),
                              balancer: balancer, maxRepeat: Self.newFlowPasses, prepare: { [dataplane = balancer.dataplane] in try Self.clearTranslations(dataplane) })
        // The new-flow target of the DSR rows, and against the DSR flow's recording packet of
        // this run (its first ACK; its SYN writes nothing): a full-NAT flow writes two table
        // entries (conntrack and sl_nat) where DSR writes one.
        _ = try figure("mode.fullnat.syn_v4_new_flow", "fullnat: SYN v4, a new flow every packet (source allocated)", newFlow,
                       target: .encap(2.5, "<= 2.5x encap floor"), into: &report)
        let dsr = "dataplane.first_ack_v4.ct_empty.\(suffix)"
        if let figure = report.record(named: "dataplane.mode.fullnat.syn_v4_new_flow.\(suffix)") {
            report.add("dataplane.mode.fullnat_vs_dsr.syn_v4_new_flow.\(suffix)", group: "dataplane",
                       "fullnat over DSR (ipip): a new flow every packet, SYN against the DSR flow's first ACK", value: figure.value, unit: "ns/packet",
                       reference: dsr, limit: 2.2, target: "<= 2.2x (two inserts for one)")
        }
        report.method["dataplane.nat"] = "dataplane.mode.nat.* and mode.fullnat.*: 1 VIP, \(self.backends) backends applied through the real Applier, then each backend's mode, port \(Self.backendPort) and next hop written into the maps as an apply writes them, and a pool of 2 SNAT addresses x 1024-65535; established: the flow opened by its SYN once, then its ACK (forward) or the backend's ACK to the translated source (reply); syn_v4_new_flow: \(Self.newFlowPasses) passes a run at most, a new source port each, from tables emptied before each run"
    }
}
