// The data-plane section of `make bench`: ns per packet of the real balancer
// (sl_balancer) and of floors measured in the same run by the same method,
// BPF_PROG_TEST_RUN with a large repeat through bench_wrapper, which restores
// the frame before every pass and tail-calls the program under test.
//
// Every figure is checked before and after it is timed: one pass with repeat 1
// must give the verdict and the output the scenario means (the right tunnel to
// one of the VIP's backends, the packet untouched for no VIP), and after each
// timed run the balancer's counters must have moved by exactly the repeat
// count in the intended way (conntrack hits for an established flow, new flows
// for SYNs, passes for no VIP) and the wrapper must have run that many passes.
// A figure that would not measure its path is an error, never a row.
import CSluice
import Foundation
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport

struct DataplaneBench {
    var options: BenchOptions

    func run(into report: inout BenchReport) throws {
        let started = Date()
        BenchReport.printHeader("Dataplane: ns/packet, BPF_PROG_TEST_RUN through the restore-and-tail-call wrapper, median of \(options.runs) runs\(options.quick ? " (--quick: not figures to quote)" : "")")
        let programs = try BenchPrograms(objectDirectory: options.objectDirectory)
        defer { programs.clearTarget() }
        var meter = Meter(programs: programs, options: options)

        let floors = try meter.measureFloors(into: &report)
        let configs: [(vips: Int, backends: Int)] = options.quick ? [(1, 10), (1, 1000)] : [(1, 10), (1, 1000), (1000, 10), (1000, 1000)]
        var fills: [String] = []
        for config in configs {
            let balancer = try BenchBalancer()
            defer {
                programs.clearTarget()
                balancer.close()
            }
            var run = ConfigRun(meter: meter, floors: floors, balancer: balancer, vips: config.vips, backends: config.backends)
            try run.measure(into: &report, fillConntrack: !options.quick)
            if config == configs[0] {
                try run.measureModes(into: &report)
                try run.measureNAT(into: &report)
                try run.measureProxy(into: &report)
            }
            if let fill = run.fillNote { fills.append(fill) }
            meter = run.meter
        }
        meter.finishFloors(floors, in: &report)

        let seconds = Date().timeIntervalSince(started)
        report.method["dataplane.harness"] = "BPF_PROG_TEST_RUN (XDP, repeat > 1) of bench_wrapper (bpf/bench.bpf.c): before every pass it moves the head back to the template frame's length, copies the template over the frame (bpf_xdp_store_bytes) and tail-calls slot 0 of a prog array holding the program under test: a floor or the real sl_balancer. Floors and balancer go through the same wrapper."
        report.method["dataplane.timing"] = "the kernel's duration (mean ns per pass over the repeat, truncated to whole ns); repeat calibrated per figure so that one run takes ~\(options.quick ? 10 : 100) ms; median of \(options.runs) runs, min and max in details"
        report.method["dataplane.ratios"] = "ratio = median / the reference floor's median (floors measured at the start, round-robin); details.paired_ratio = median over runs of figure / reference floor run right after it; details.net_ratio = (figure - wrapper) / (floor - wrapper), dataplane.wrapper being the wrapper's own cost (wrapper + XDP_PASS minus XDP_PASS run bare)"
        report.method["dataplane.frames"] = "untagged, no padding: TCP/UDP over IPv4 54 bytes, TCP over IPv6 74 bytes; the encapsulation floor writes a fixed 20-byte outer IPv4 header (the balancer writes 20 for 4in4, 40 for 6in6 and 4in6)"
        report.method["dataplane.flows"] = "the wrapper writes a 16-bit pass counter into every frame. syn_v4: into the TCP source port, so the passes are 65,536 different flows, cycling (the counter restarts each run): each a Maglev pick and a conntrack update at a cold place of the table (an insert the first time round, then a replacement, which in an LRU hash is the same work: a new node in, the old one freed). syn_v4_one_flow: one flow repeated, the same work with the table's lines in cache (how a fixed test packet measures it). Other scenarios: into a field the balancer does not read (TCP sequence number, UDP checksum); established flows are recorded by one SYN before timing"
        report.method["dataplane[.conntrack]"] = "default size \(SL_CT_DEFAULT_SIZE) (LRU). ct_empty: only the scenario's own flows (at most 65,536 + a few); ct_1m: the SYN keys of ct_empty deleted, then 1,000,000 distinct flows inserted (\(fills.first ?? "not done")), not timed, so SYNs insert into a full LRU table and evict"
        report.method["dataplane.sets"] = "per figure: 1 or 1,000 VIPs (the VIP under test alone, or with 999 IPv4 TCP VIPs of 10 backends each), 10 or 1,000 backends for the VIP under test; Maglev M = 65537; applied through the real Applier\(options.quick ? "; --quick: 1 VIP only, no 1M fill" : "")"
        report.method["dataplane.profile"] = "why targets are missed, as profiled on the development machine (2-vCPU AMD EPYC VM, kernel 6.18; perf cpu-clock, and the same harness on cut-down programs): every kernel function return goes through the SRSO safe-RET thunk, so each hash-map lookup (a call chain: lookup, jhash, bucket walk, memcmp) costs ~25-38 ns, and the encapsulation floor plus one LRU lookup alone is ~1.45x, plus a VIP lookup ~2.0x (on a CPU without the thunk the floors fall further than the lookups: dataplane.floor.encap_lookup measures the encapsulation floor plus one conntrack-sized lookup in every run); an LRU update (conntrack insert) costs ~150-160 ns with the line in cache, more than the whole 2.5x budget, and with distinct flows adds DRAM misses on the bucket, the old and the new node and the Maglev slot"
        print(String(format: "(dataplane section: %.0f s)", seconds))
    }
}

// MARK: - Measuring one figure

/// Something timed through the wrapper: the program in slot 0, the frame it
/// starts from every pass, and what it must do.
struct Subject {
    var program: BPFProgram
    var frame: [UInt8]
    /// Where the wrapper writes its pass counter.
    var varyOffset: Int
    var verdict: UInt32
    /// Checks the output of one pass; `input` is the frame as that pass received it.
    var checkOutput: (_ output: [UInt8], _ input: [UInt8]) throws -> Void
    /// The balancer whose counters must move, and by how much for `n` passes.
    var balancer: BenchBalancer? = nil
    var expected: ((UInt64) -> NodeStats)? = nil
    /// At most this many passes a run, and `prepare` before each: for a subject whose
    /// passes use something up (a new full-NAT flow per pass takes a port), so that
    /// every pass of every run meets the same state.
    var maxRepeat: UInt32? = nil
    var prepare: (() throws -> Void)? = nil
}

/// One figure's runs.
struct Samples {
    var values: [Double] = []
    /// Each run over the reference floor's run right after it.
    var paired: [Double] = []
    var repeatCount: UInt32 = 0
    var middle: Double { median(values) }
}

/// The floors and the wrapper's own cost, as measured at the start.
struct Floors {
    var pass: Subject
    var encap: Subject
    var passRepeat: UInt32
    var encapRepeat: UInt32
    var passNs: Double
    var encapNs: Double
    /// The wrapper's own cost (restore + tail call), ns.
    var wrapperNs: Double
}

struct Meter {
    let programs: BenchPrograms
    let options: BenchOptions
    /// Runs of the floors taken beside the scenarios, for the drift note.
    var laterPass: [Double] = []
    var laterEncap: [Double] = []

    init(programs: BenchPrograms, options: BenchOptions) {
        self.programs = programs
        self.options = options
    }

    private var targetRunNs: Double { options.quick ? 10e6 : 100e6 }

    func load(_ s: Subject) throws {
        try programs.setTarget(s.program)
        try programs.setFrame(s.frame, varyOffset: s.varyOffset)
    }

    /// One pass with repeat 1, then the output and counter checks.
    func check(_ s: Subject, _ name: String) throws {
        try load(s)
        let before = try s.balancer?.counters()
        let result = try programs.wrapper.testRun(s.frame, repetitions: 1)
        guard result.verdict == s.verdict else {
            throw DataplaneBenchError("\(name): one pass gave \(result.verdictName), expected \(XDPVerdict(rawValue: s.verdict).map(\.description) ?? "verdict \(s.verdict)")")
        }
        let (input, passes) = try programs.readFrame()
        guard passes == 1 else { throw DataplaneBenchError("\(name): the wrapper counted \(passes) passes for one") }
        do { try s.checkOutput(result.output, input) } catch {
            throw DataplaneBenchError("\(name): the output of one pass is not what the scenario means: \(error)")
        }
        try checkCounters(s, name, since: before, passes: 1)
    }

    private func checkCounters(_ s: Subject, _ name: String, since before: NodeStats?, passes: UInt64) throws {
        guard let balancer = s.balancer, let expected = s.expected, let before else { return }
        let delta = try balancer.counters() - before
        guard delta == expected(passes) else {
            throw DataplaneBenchError("\(name): after \(passes) passes the balancer's counters moved by \(delta), expected \(expected(passes)) (the frame was not restored, or the path is not the intended one)")
        }
    }

    /// A timed run of the loaded subject: ns per pass, after the counter checks.
    func timed(_ s: Subject, _ name: String, repeat count: UInt32) throws -> Double {
        let before = try s.balancer?.counters()
        let passesBefore = try programs.readFrame().passes
        let result = try programs.wrapper.testRun(s.frame, repetitions: count)
        guard result.verdict == s.verdict else {
            throw DataplaneBenchError("\(name): the last of \(count) passes gave \(result.verdictName)")
        }
        let passes = try programs.readFrame().passes &- passesBefore
        guard passes == count else { throw DataplaneBenchError("\(name): the wrapper ran \(passes) passes, not \(count)") }
        try checkCounters(s, name, since: before, passes: UInt64(count))
        return Double(result.durationNanoseconds)
    }

    /// A repeat count that makes one run last about the target time.
    func calibrate(_ s: Subject, _ name: String) throws -> UInt32 {
        let probe: UInt32 = options.quick ? 2_000 : 20_000
        let ns = max(try timed(s, name, repeat: probe), 1)
        let wanted = targetRunNs / ns
        let rounded = (wanted / 1000).rounded() * 1000
        return min(UInt32(min(max(rounded, 1000), 50_000_000)), s.maxRepeat ?? .max)
    }

    /// Checks, calibrates and times `s`; after every run, one run of `reference` for the paired ratio.
    mutating func measure(_ s: Subject, _ name: String, reference: (subject: Subject, repeat: UInt32, isEncap: Bool)?) throws -> Samples {
        try s.prepare?()
        try check(s, name)
        try s.prepare?()
        var samples = Samples()
        samples.repeatCount = try calibrate(s, name)
        for _ in 0..<options.runs {
            try s.prepare?()
            try load(s)
            let value = try timed(s, name, repeat: samples.repeatCount)
            samples.values.append(value)
            if let reference {
                try load(reference.subject)
                let floor = try timed(reference.subject, "reference of \(name)", repeat: reference.repeat)
                samples.paired.append(value / max(floor, 1))
                if reference.isEncap { laterEncap.append(floor) } else { laterPass.append(floor) }
            }
        }
        return samples
    }

    // MARK: Floors

    /// The floors, the wrapper's cost and XDP_PASS run bare, round-robin.
    mutating func measureFloors(into report: inout BenchReport) throws -> Floors {
        let frame = Frames.established4
        let vary = Frames.tcpSequenceOffset(frame)
        let pass = Subject(program: programs.pass, frame: frame, varyOffset: vary, verdict: 2) { output, input in
            guard output == input else { throw DataplaneBenchError("XDP_PASS changed the frame") }
        }
        let swap = Subject(program: programs.swapTX, frame: frame, varyOffset: vary, verdict: 3) { output, input in
            guard output == Array(input[6..<12]) + Array(input[0..<6]) + Array(input[12...]) else {
                throw DataplaneBenchError("the MACs are not swapped")
            }
        }
        let encap = Subject(program: programs.encap, frame: frame, varyOffset: vary, verdict: 3) { output, input in
            let tunnel = try TunnelFrame(output)
            guard tunnel.destinationMAC == BenchBalancer.gatewayMAC, tunnel.outerFamily == .v4,
                  tunnel.protocolNumber == 4, tunnel.inner == Array(input[14...]), output.count == input.count + 20 else {
                throw DataplaneBenchError("not a fixed IPv4-in-IPv4 frame around the input")
            }
        }
        let fib = Subject(program: programs.fibSwap, frame: frame, varyOffset: vary, verdict: 3, checkOutput: swap.checkOutput)
        let lookup = Subject(program: programs.encapLookup, frame: frame, varyOffset: vary, verdict: 3, checkOutput: encap.checkOutput)
        let subjects = [("dataplane.floor.pass", pass), ("dataplane.floor.swap_tx", swap), ("dataplane.floor.encap", encap),
                        ("dataplane.floor.fib_lookup", fib), ("dataplane.floor.encap_lookup", lookup)]

        // XDP_PASS run bare: no wrapper, the kernel's loop and an empty program.
        let bare = try programs.pass.testRun(frame, repetitions: 1)
        guard bare.verdict == 2, bare.output == frame else { throw DataplaneBenchError("bench_pass run bare: not XDP_PASS of the frame untouched") }
        let bareProbe: UInt32 = options.quick ? 2_000 : 20_000
        let bareNs = max(Double(try programs.pass.testRun(frame, repetitions: bareProbe).durationNanoseconds), 1)
        let bareRepeat = UInt32(min(max((targetRunNs / bareNs / 1000).rounded() * 1000, 1000), 50_000_000))

        var repeats: [UInt32] = []
        for (name, subject) in subjects {
            try check(subject, name)
            repeats.append(try calibrate(subject, name))
        }
        var samples = [[Double]](repeating: [], count: subjects.count)
        var bareSamples: [Double] = []
        var wrapperSamples: [Double] = []
        for _ in 0..<options.runs {
            let bareRun = try programs.pass.testRun(frame, repetitions: bareRepeat)
            guard bareRun.verdict == 2 else { throw DataplaneBenchError("bench_pass run bare: \(bareRun.verdictName)") }
            bareSamples.append(Double(bareRun.durationNanoseconds))
            for (i, (name, subject)) in subjects.enumerated() {
                try load(subject)
                samples[i].append(try timed(subject, name, repeat: repeats[i]))
            }
            wrapperSamples.append(samples[0].last! - bareSamples.last!)
        }

        func spread(_ values: [Double], _ repeatCount: UInt32) -> [String: Double] {
            ["min": values.min()!, "max": values.max()!, "repeat": Double(repeatCount), "runs": Double(values.count)]
        }
        report.add("dataplane.floor.pass", group: "dataplane", "floor: XDP_PASS", value: median(samples[0]),
                   unit: "ns/packet", details: spread(samples[0], repeats[0]))
        report.add("dataplane.floor.swap_tx", group: "dataplane", "floor: swap MACs, XDP_TX", value: median(samples[1]),
                   unit: "ns/packet", reference: "dataplane.floor.pass", details: spread(samples[1], repeats[1]))
        report.add("dataplane.floor.encap", group: "dataplane", "floor: encap (+20 B head, fixed eth + IPv4), XDP_TX",
                   value: median(samples[2]), unit: "ns/packet", reference: "dataplane.floor.pass", details: spread(samples[2], repeats[2]))
        report.add("dataplane.floor.fib_lookup", group: "dataplane",
                   "bpf_fib_lookup of the destination, then swap MACs, XDP_TX (a next hop resolved per packet)",
                   value: median(samples[3]), unit: "ns/packet", reference: "dataplane.floor.swap_tx", details: spread(samples[3], repeats[3]))
        report.add("dataplane.floor.encap_lookup", group: "dataplane",
                   "one flow-table lookup (LRU hash, conntrack's 40 B key), then the encap floor's work",
                   value: median(samples[4]), unit: "ns/packet", reference: "dataplane.floor.encap", details: spread(samples[4], repeats[4]))
        report.add("dataplane.bare.pass", group: "dataplane", "XDP_PASS run bare (no wrapper)", value: median(bareSamples),
                   unit: "ns/packet", details: spread(bareSamples, bareRepeat))
        var wrapperDetails = spread(wrapperSamples, repeats[0])
        wrapperDetails["bare_pass"] = median(bareSamples)
        wrapperDetails["wrapped_pass"] = median(samples[0])
        report.add("dataplane.wrapper", group: "dataplane", "wrapper itself: restore + tail call (wrapped - bare)",
                   value: median(wrapperSamples), unit: "ns/packet", details: wrapperDetails)

        return Floors(pass: pass, encap: encap, passRepeat: repeats[0], encapRepeat: repeats[2],
                      passNs: median(samples[0]), encapNs: median(samples[2]), wrapperNs: median(wrapperSamples))
    }

    /// Adds to the floor records how they moved while the scenarios ran.
    func finishFloors(_ floors: Floors, in report: inout BenchReport) {
        for (name, later) in [("dataplane.floor.pass", laterPass), ("dataplane.floor.encap", laterEncap)] where !later.isEmpty {
            guard let index = report.records.firstIndex(where: { $0.name == name }) else { continue }
            report.records[index].details["later_median"] = median(later)
            report.records[index].details["later_min"] = later.min()!
            report.records[index].details["later_max"] = later.max()!
            report.records[index].details["later_runs"] = Double(later.count)
        }
    }
}

// MARK: - Frames

enum Frames {
    static let client4 = "100.64.7.1"
    /// The SYNs' own client, so that none of their 65,536 source ports is another scenario's flow.
    static let synClient4 = "100.64.7.2"
    static let client6 = "2001:db8:c::7"
    static let vip4 = "198.51.100.10"
    static let vip4in6 = "198.51.100.20"
    static let vip6 = "2001:db8::80"
    static let noVIP = "203.0.113.99"

    static let builder = PacketBuilder()
    static let established4 = builder.tcp(from: client4, 40001, to: vip4, 80, flags: [.ack])
    static let syn4 = builder.tcp(from: synClient4, 40000, to: vip4, 80, flags: [.syn])
    /// The first-ACK scenario's own client, for the same reason.
    static let ackClient4 = "100.64.7.3"
    static let firstACK4 = builder.tcp(from: ackClient4, 40000, to: vip4, 80, flags: [.ack])
    /// 12 bytes of payload: the same 54-byte frame as TCP.
    static let udp4 = builder.udp(from: client4, 40002, to: vip4, 53, payload: [UInt8](repeating: 0x5a, count: 12))
    static let established6 = builder.tcp(from: client6, 40003, to: vip6, 443, flags: [.ack])
    static let established4in6 = builder.tcp(from: client4, 40004, to: vip4in6, 8080, flags: [.ack])
    static let noVIP4 = builder.tcp(from: client4, 40005, to: noVIP, 80, flags: [.ack])

    /// The same flow's SYN, to record it before timing.
    static func syn(of frame: [UInt8]) -> [UInt8] {
        var out = frame
        out[l4Offset(frame) + 13] = 0x02
        return out
    }

    static func l4Offset(_ frame: [UInt8]) -> Int {
        frame[14] >> 4 == 4 ? 14 + Int(frame[14] & 0x0f) * 4 : 14 + 40
    }

    static func tcpSequenceOffset(_ frame: [UInt8]) -> Int { l4Offset(frame) + 4 }
    static func sourcePortOffset(_ frame: [UInt8]) -> Int { l4Offset(frame) }
    static func udpChecksumOffset(_ frame: [UInt8]) -> Int { l4Offset(frame) + 6 }
}

// MARK: - One set of VIPs and backends

/// The services of one figure: the VIP under test (alone, or with 999 others).
enum ServiceKind: CaseIterable {
    case tcp4, udp4, tcp6, tcp4in6

    func service(backends: Int) -> Service {
        func v4(_ i: Int) -> IPAddress { IPAddress("10.1.\(i / 250).\(i % 250 + 1)")! }
        func v6(_ i: Int) -> IPAddress { IPAddress("2001:db8:1::\(String(i + 1, radix: 16))")! }
        switch self {
        case .tcp4:
            return Service(name: "bench-tcp4", vip: IPAddress(Frames.vip4)!, port: 80, proto: .tcp,
                           backends: (0..<backends).map { Backend(address: v4($0)) })
        case .udp4:
            return Service(name: "bench-udp4", vip: IPAddress(Frames.vip4)!, port: 53, proto: .udp,
                           backends: (0..<backends).map { Backend(address: v4($0)) })
        case .tcp6:
            return Service(name: "bench-tcp6", vip: IPAddress(Frames.vip6)!, port: 443, proto: .tcp,
                           backends: (0..<backends).map { Backend(address: v6($0)) })
        case .tcp4in6:
            return Service(name: "bench-tcp4in6", vip: IPAddress(Frames.vip4in6)!, port: 8080, proto: .tcp,
                           backends: (0..<backends).map { Backend(address: v6($0)) })
        }
    }

    /// 999 other IPv4 TCP VIPs (198.18.0.0/15) of 10 backends each.
    static let others: [Service] = (0..<999).map { i in
        Service(name: "other-\(i)", vip: IPAddress("198.18.\(i / 250).\(i % 250 + 1)")!, port: 80, proto: .tcp,
                backends: (0..<10).map { Backend(address: IPAddress("10.\(2 + i / 256).\(i % 256).\($0 + 1)")!) })
    }
}

struct ConfigRun {
    var meter: Meter
    let floors: Floors
    let balancer: BenchBalancer
    let vips: Int
    let backends: Int
    var fillNote: String?

    init(meter: Meter, floors: Floors, balancer: BenchBalancer, vips: Int, backends: Int) {
        self.meter = meter
        self.floors = floors
        self.balancer = balancer
        self.vips = vips
        self.backends = backends
    }

    var suffix: String { "vips\(vips).backends\(backends)" }
    private var label: String { "\(vips) VIP\(vips == 1 ? "" : "s"), \(backends) backends" }

    func file(_ kind: ServiceKind) -> ServiceFile {
        // The NAT budget at its largest: checked on every new translation as in production,
        // never refusing one (a run creates far more than 125,000 a second).
        ServiceFile(node: NodeConfig(sourceV4: IPAddress("192.0.2.10")!, sourceV6: IPAddress("2001:db8:ffff::10")!,
                                     natFlowBudget: .max),
                    services: [kind.service(backends: backends)] + (vips > 1 ? Array(ServiceKind.others.prefix(vips - 1)) : []))
    }

    func tunnel(_ kind: ServiceKind, family: IPAddress.Family, proto: UInt8) -> (_ output: [UInt8], _ input: [UInt8]) throws -> Void {
        let addresses = Set(kind.service(backends: backends).backends.map(\.address))
        return { output, input in
            let t = try TunnelFrame(output)
            let outerLength = family == .v4 ? 20 : 40
            guard t.destinationMAC == BenchBalancer.gatewayMAC, t.sourceMAC == Array(input[0..<6]) else {
                throw DataplaneBenchError("Ethernet header: \(t.destinationMAC) <- \(t.sourceMAC)")
            }
            guard t.outerFamily == family, t.protocolNumber == proto else {
                throw DataplaneBenchError("outer \(t.outerFamily) protocol \(t.protocolNumber), expected \(family) protocol \(proto)")
            }
            guard addresses.contains(t.outerDestination) else {
                throw DataplaneBenchError("outer destination \(t.outerDestination) is no backend of the VIP")
            }
            guard t.inner == Array(input[14...]), output.count == input.count + outerLength else {
                throw DataplaneBenchError("the inner packet is not the input's IP packet")
            }
        }
    }

    /// Records a TCP flow through the balancer itself as a client opens it: its SYN (placed,
    /// nothing written), then `frame`, its handshake's ACK (a miss, which records it).
    /// A flow an earlier figure recorded on the same backend stays recorded: its ACK is a hit.
    func record(_ synFrame: [UInt8], then frame: [UInt8], _ name: String) throws {
        try expect(synFrame, [NodeStats(.tx)], name)
        try expect(frame, [NodeStats(.tx, newFlows: 1, ctMisses: 1), NodeStats(.tx, ctHits: 1)], name)
    }

    /// Records a UDP flow by sending two datagrams: the first is held, the second records it.
    private func recordUDP(_ frame: [UInt8], _ name: String) throws {
        try expect(frame, [NodeStats(.tx, ctMisses: 1, ctUnconfirmed: 1)], name)
        try expect(frame, [NodeStats(.tx, newFlows: 1, ctMisses: 1)], name)
    }

    private func expect(_ frame: [UInt8], _ expected: [NodeStats], _ name: String) throws {
        let before = try balancer.counters()
        let result = try balancer.program.testRun(frame)
        let delta = try balancer.counters() - before
        guard result.verdict == 3, expected.contains(delta) else {
            throw DataplaneBenchError("\(name): recording the flow: \(result.verdictName), counters \(delta), expected \(expected)")
        }
    }

    private func established(_ kind: ServiceKind, frame: [UInt8], family: IPAddress.Family, proto: UInt8, varyOffset: Int) -> Subject {
        Subject(program: balancer.program, frame: frame, varyOffset: varyOffset, verdict: 3,
                checkOutput: tunnel(kind, family: family, proto: proto), balancer: balancer,
                expected: { NodeStats(.tx, ctHits: $0, packets: $0) })
    }

    /// SYNs to the IPv4 VIP: with `distinct`, the pass counter is the source
    /// port (65,536 different flows, cycling); without, one flow repeated. A SYN writes
    /// nothing: no new flow is counted.
    private func syn(distinct: Bool) -> Subject {
        Subject(program: balancer.program, frame: Frames.syn4,
                varyOffset: distinct ? Frames.sourcePortOffset(Frames.syn4) : Frames.tcpSequenceOffset(Frames.syn4), verdict: 3,
                checkOutput: tunnel(.tcp4, family: .v4, proto: 4), balancer: balancer,
                expected: { NodeStats(.tx, packets: $0) })
    }

    /// The packet that records a TCP flow: the first ACK of a flow the table does not hold,
    /// each pass another source port (65,536 a run at most), the flows of the run before
    /// deleted before each run so that every pass is a miss that inserts.
    private func firstACK() -> Subject {
        Subject(program: balancer.program, frame: Frames.firstACK4, varyOffset: Frames.sourcePortOffset(Frames.firstACK4), verdict: 3,
                checkOutput: tunnel(.tcp4, family: .v4, proto: 4), balancer: balancer,
                expected: { NodeStats(.tx, newFlows: $0, ctMisses: $0, packets: $0) },
                maxRepeat: 65536, prepare: { [self] in try deleteFlows(of: Frames.ackClient4) })
    }

    enum Target {
        case encap(Double, String)  // limit, readable
        case pass(Double, String)
    }

    mutating func figure(_ scenario: String, _ description: String, _ subject: Subject, target: Target,
                                 extra: [String: Double] = [:], into report: inout BenchReport) throws -> Samples {
        let name = "dataplane.\(scenario).\(suffix)"
        let isEncap: Bool
        let limit: Double, readable: String
        switch target {
        case let .encap(l, r): (isEncap, limit, readable) = (true, l, r)
        case let .pass(l, r): (isEncap, limit, readable) = (false, l, r)
        }
        let reference = isEncap ? (subject: floors.encap, repeat: floors.encapRepeat, isEncap: true)
                                : (subject: floors.pass, repeat: floors.passRepeat, isEncap: false)
        let samples = try meter.measure(subject, name, reference: reference)
        let floorNs = isEncap ? floors.encapNs : floors.passNs
        var details = extra
        details["min"] = samples.values.min()!
        details["max"] = samples.values.max()!
        details["repeat"] = Double(samples.repeatCount)
        details["runs"] = Double(samples.values.count)
        details["paired_ratio"] = median(samples.paired)
        details["net_ratio"] = (samples.middle - floors.wrapperNs) / max(floorNs - floors.wrapperNs, 1)
        report.add(name, group: "dataplane", "\(description), \(label)", value: samples.middle, unit: "ns/packet",
                   reference: isEncap ? "dataplane.floor.encap" : "dataplane.floor.pass", limit: limit, target: readable,
                   details: details)
        return samples
    }

    mutating func measure(into report: inout BenchReport, fillConntrack: Bool) throws {
        let hit = Target.encap(1.5, "<= 1.5x encap floor")
        let newFlow = Target.encap(2.5, "<= 2.5x encap floor")

        // IPv4 TCP VIP: no VIP, established, SYN with a (nearly) empty table.
        try balancer.apply(file(.tcp4))
        let noVIP = Subject(program: balancer.program, frame: Frames.noVIP4, varyOffset: Frames.tcpSequenceOffset(Frames.noVIP4),
                            verdict: 2, checkOutput: { output, input in
                                guard output == input else { throw DataplaneBenchError("the packet for no VIP was changed") }
                            }, balancer: balancer, expected: { NodeStats(.pass, packets: $0) })
        _ = try figure("no_vip", "no VIP (pass-through)", noVIP, target: .pass(2, "<= 2x pass floor"), into: &report)

        try record(Frames.syn(of: Frames.established4), then: Frames.established4, "established_v4")
        _ = try figure("established_v4", "established v4 (ct hit)",
                       self.established(.tcp4, frame: Frames.established4, family: .v4, proto: 4,
                                        varyOffset: Frames.tcpSequenceOffset(Frames.established4)),
                       target: hit, into: &report)

        _ = try figure("syn_v4_one_flow.ct_empty", "SYN v4, one flow, ct ~empty", syn(distinct: false), target: newFlow,
                       extra: ["ct_entries_before": Double(try balancer.conntrackCount())], into: &report)
        try syncFigure(target: newFlow, into: &report)
        let before = try balancer.conntrackCount()
        _ = try figure("syn_v4.ct_empty", "SYN v4, new flows, ct ~empty", syn(distinct: true), target: newFlow,
                       extra: ["ct_entries_before": Double(before)], into: &report)
        // Each run's passes were distinct flows, and none of them wrote the table.
        let entries = try balancer.conntrackCount()
        guard entries == before else {
            throw DataplaneBenchError("syn_v4.ct_empty: the SYNs changed the table from \(before) to \(entries) entries")
        }
        _ = try figure("first_ack_v4.ct_empty", "first ACK v4 (records the flow), new flows, ct ~empty", firstACK(),
                       target: newFlow, extra: ["ct_entries_before": Double(before)], into: &report)

        // IPv4 UDP VIP.
        try balancer.apply(file(.udp4))
        try recordUDP(Frames.udp4, "udp_v4")
        _ = try figure("udp_v4", "UDP v4 (ct hit)",
                       self.established(.udp4, frame: Frames.udp4, family: .v4, proto: 4,
                                        varyOffset: Frames.udpChecksumOffset(Frames.udp4)),
                       target: hit, into: &report)

        // IPv6 VIP, IPv6 backends (6in6).
        try balancer.apply(file(.tcp6))
        try record(Frames.syn(of: Frames.established6), then: Frames.established6, "established_6in6")
        _ = try figure("established_6in6", "established 6in6 (ct hit)",
                       self.established(.tcp6, frame: Frames.established6, family: .v6, proto: 41,
                                        varyOffset: Frames.tcpSequenceOffset(Frames.established6)),
                       target: hit, into: &report)

        // IPv4 VIP, IPv6 backends (4in6).
        try balancer.apply(file(.tcp4in6))
        try record(Frames.syn(of: Frames.established4in6), then: Frames.established4in6, "established_4in6")
        _ = try figure("established_4in6", "established 4in6 (ct hit)",
                       self.established(.tcp4in6, frame: Frames.established4in6, family: .v6, proto: 4,
                                        varyOffset: Frames.tcpSequenceOffset(Frames.established4in6)),
                       target: hit, into: &report)

        guard fillConntrack else { return }
        // SYNs into a table holding 1,000,000 other flows: the first-ACK keys of
        // ct_empty go first, so the fill is what the table holds.
        try balancer.apply(file(.tcp4))
        try deleteFlows(of: Frames.ackClient4)
        let started = Date()
        let how = try balancer.fillConntrack(count: 1_000_000, vip: IPAddress(Frames.vip4)!, port: 80, backendID: 0)
        let fillSeconds = Date().timeIntervalSince(started)
        let filled = try balancer.conntrackCount()
        guard filled >= 1_000_000 else {
            throw DataplaneBenchError("syn_v4.ct_1m: after inserting 1,000,000 flows the table holds \(filled)")
        }
        fillNote = how
        _ = try figure("syn_v4_one_flow.ct_1m", "SYN v4, one flow, ct 1M", syn(distinct: false), target: newFlow,
                       extra: ["ct_entries_before": Double(filled), "fill_seconds": fillSeconds], into: &report)
        _ = try figure("syn_v4.ct_1m", "SYN v4, new flows, ct 1M", syn(distinct: true), target: newFlow,
                       extra: ["ct_entries_before": Double(try balancer.conntrackCount())], into: &report)
        // The established flow among a million others, its line no longer alone in cache
        // (recorded again: the fill may have evicted it).
        try record(Frames.syn(of: Frames.established4), then: Frames.established4, "established_v4.ct_1m")
        _ = try figure("established_v4.ct_1m", "established v4 (ct hit), ct 1M",
                       self.established(.tcp4, frame: Frames.established4, family: .v4, proto: 4,
                                        varyOffset: Frames.tcpSequenceOffset(Frames.established4)),
                       target: hit, into: &report)
        // The recording packet into the full table: its first run fills it past capacity,
        // so the LRU evicts from then on (a table that has cycled, as every production
        // table has).
        _ = try figure("first_ack_v4.ct_1m", "first ACK v4 (records the flow), new flows, ct 1M (cycled)", firstACK(),
                       target: newFlow, extra: ["ct_entries_before": Double(try balancer.conntrackCount())], into: &report)
        // Established traffic spread over the table: 65,536 recorded flows among the
        // million, each pass the next one, so each lookup meets lines another flow left.
        try recordEveryPort(Frames.firstACK4, varyOffset: Frames.sourcePortOffset(Frames.firstACK4), "established_v4.spread")
        let spread = Subject(program: balancer.program, frame: Frames.firstACK4, varyOffset: Frames.sourcePortOffset(Frames.firstACK4),
                             verdict: 3, checkOutput: tunnel(.tcp4, family: .v4, proto: 4), balancer: balancer,
                             expected: { NodeStats(.tx, ctHits: $0, packets: $0) })
        _ = try figure("established_v4.spread.ct_1m", "established v4 (ct hit), 65,536 flows cycling, ct 1M", spread,
                       target: hit, extra: ["ct_entries_before": Double(try balancer.conntrackCount())], into: &report)
    }

    /// Records the flows of `frame` with every value of the 16-bit field at `varyOffset`
    /// (what the wrapper's pass counter writes there), one test run each, not timed.
    private func recordEveryPort(_ frame: [UInt8], varyOffset: Int, _ name: String) throws {
        var frame = frame
        for port in 0..<65536 {
            frame[varyOffset] = UInt8(port >> 8)
            frame[varyOffset + 1] = UInt8(port & 0xff)
            let result = try balancer.program.testRun(frame)
            guard result.verdict == 3 else { throw DataplaneBenchError("\(name): recording port \(port): \(result.verdictName)") }
        }
    }

    /// The one-flow SYN again with sync reporting on, the new-flow ring drained by another
    /// thread the way the agent drains it: the price of sync on the path that pays it. The
    /// share of reports the ring lost is a record of its own.
    private mutating func syncFigure(target: Target, into report: inout BenchReport) throws {
        let sync = try ConntrackSync(dataplane: balancer.dataplane)
        let drainer = try RingDrainer(map: balancer.dataplane[.flowEvents])
        let lostBefore = try lostReports()
        try sync.setReporting(true)
        let samples: Samples
        do {
            samples = try figure("first_ack_v4.sync.ct_empty", "first ACK v4 (records the flow), sync on, ct ~empty", firstACK(),
                                 target: target, into: &report)
        } catch {
            try? sync.setReporting(false)
            _ = drainer.stop()
            throw error
        }
        try sync.setReporting(false)
        let drained = drainer.stop()
        let lost = try lostReports() - lostBefore
        report.add("dataplane.first_ack_v4.sync.lost.\(suffix)", group: "dataplane",
                   "  share of new-flow reports lost (ring full) while timed, \(label)",
                   value: Double(lost) / Double(max(UInt64(drained) + lost, 1)), unit: "fraction",
                   details: ["drained": Double(drained), "lost": Double(lost), "repeat": Double(samples.repeatCount)])
    }

    /// sl_stats.flow_events_lost summed over CPUs.
    private func lostReports() throws -> UInt64 {
        try balancer.dataplane[.stats].lookupPerCPU(UInt32(0), as: sl_stats.self).reduce(0) { $0 &+ $1.flow_events_lost }
    }

    /// Deletes the flows of `client` to the IPv4 VIP's port 80, every source port.
    private func deleteFlows(of client: String) throws {
        var key = zeroed(sl_flow_key.self)
        key.src.0 = IPAddress(client)!.words.0
        key.dst.0 = IPAddress(Frames.vip4)!.words.0
        key.dport = UInt16(80).bigEndian
        key.proto = 6
        key.family = UInt8(SL_FAMILY_V4.rawValue)
        for port in 0...UInt16.max {
            key.sport = port
            _ = try balancer.dataplane[.conntrack].delete(key)
        }
    }
}

/// Drains sl_flow_events on a thread of its own until stopped, counting the reports.
final class RingDrainer: @unchecked Sendable {
    private let ring: BPFRingBuffer
    private let lock = NSLock()
    private var stopping = false
    private var count = 0
    private let done = DispatchSemaphore(value: 0)

    init(map: BPFMap) throws {
        ring = try BPFRingBuffer(map: map)
        Thread.detachNewThread { [self] in
            while true {
                let drained = (try? ring.drain(as: sl_flow_event.self).count) ?? 0
                lock.lock()
                count += drained
                let stop = stopping
                lock.unlock()
                if stop { break }
                if drained == 0 { usleep(200) }
            }
            done.signal()
        }
    }

    /// Stops after one last drain; the reports drained in all.
    func stop() -> Int {
        lock.lock()
        stopping = true
        lock.unlock()
        done.wait()
        return lock.withLock { count }
    }
}
