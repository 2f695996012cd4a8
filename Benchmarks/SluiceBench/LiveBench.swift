// The live section of `make bench`: packets per second the balancer forwards
// on one core through real (veth) interfaces, beside a MAC-swap XDP_TX program
// measured on the same path, with the generator's offered rate.
//
//  generator namespace                          balancer namespace
//  live_gen: BPF_PROG_TEST_RUN, live frames,
//  XDP_TX on slgNNNN     ------- veth ------->  slbNNNN: sl_balancer (or live_swap)
//  slgNNNN: live_sink    <------------------    XDP_TX, tunnelled to the gateway MAC
//  counts and drops                             (= slgNNNN)
//
// The balancer's veth runs threaded NAPI: its receive processing, the XDP
// program and its XDP_TX run in one kernel thread, pinned alone to one CPU;
// the generator thread and the sink's NAPI thread share the other CPU. The
// figure is the forwarder's XDP_TX count per second of CPU time that thread
// used (schedstat); the wall-clock rate, the offered rate and the sink's count
// are in the details. Benchmarks print figures; they never fail on time.
import CLibbpf
import CSluice
import Foundation
import Glibc
import SluiceControl
import SluiceTestSupport

struct LiveBench {
    var options: BenchOptions

    /// One figure: what is on the balancer's veth and what the generator sends.
    struct Case {
        var name: String
        var description: String
        var forwarder: LiveTestbed.Forwarder
        var flags: Set<TCPFlag>
        var varySource: Bool
    }

    static let floorName = "live.floor.swap_tx"
    static let cases = [
        Case(name: floorName, description: "live floor: MAC-swap XDP_TX, per core", forwarder: .swap,
             flags: [.ack], varySource: false),
        Case(name: "live.established_v4", description: "live established TCP v4 (1 flow), per core",
             forwarder: .balancer, flags: [.ack], varySource: false),
        Case(name: "live.syn_v4", description: "live TCP SYN v4 (new flow each, full conntrack), per core",
             forwarder: .balancer, flags: [.syn], varySource: true),
    ]

    /// One generator run and what every counter saw during it.
    struct Sample {
        var seconds: Double       // the generator's active time: the window
        var wallSeconds: Double   // including its calls' set-up and tear-down
        var offered: UInt64
        var reached: UInt64    // frames the forwarder ran on
        var forwarded: UInt64  // its XDP_TX verdicts
        var sunk: UInt64       // frames the sink counted
        var tunnels: UInt64    // of which IPv4-in-IPv4
        var newFlows: UInt64
        var ctHits: UInt64
        var napi: LiveSystem.SchedTimes? // the balancer's NAPI thread, when threaded

        var achievedRate: Double { Double(forwarded) / seconds }
        /// Forwarded frames per second of CPU time the forwarder's thread ran;
        /// without a thread of its own, the rate per second of generator time.
        var coreRate: Double {
            guard let napi, napi.run > 0 else { return achievedRate }
            return Double(forwarded) / (Double(napi.run) / 1e9)
        }
        var busy: Double? { napi.map { Double($0.run) / (wallSeconds * 1e9) } }
        var waiting: Double? { napi.map { Double($0.wait) / (wallSeconds * 1e9) } }
    }

    func run(into report: inout BenchReport) throws {
        BenchReport.printHeader("Live forwarding through a veth pair (packets per second of one core)")
        let seconds = options.quick ? 0.15 : 0.5
        let runs = options.quick ? min(options.runs, 2) : options.runs
        let started = LiveSystem.now()
        let programs = try LivePrograms(directory: options.objectDirectory)
        let bed = try LiveTestbed(programs: programs)
        let signals = LiveSignalCleanup { bed.close() }
        defer {
            signals.cancel()
            bed.close()
            let left = bed.leftovers
            if !left.isEmpty {
                FileHandle.standardError.write(Data("sluice-bench: namespaces left behind: \(left)\n".utf8))
            }
        }

        let cpus = LiveSystem.allowedCPUs()
        let generatorCPU = cpus.first ?? 0
        let balancerCPU = cpus.count >= 2 ? cpus[1] : nil
        let napi = try balancerCPU.map { try placeNAPI(bed, generatorCPU: generatorCPU, balancerCPU: $0) }
        let prefilled = try bed.fillConntrack()

        var samples: [String: [Sample]] = [:]
        for round in 0..<runs {
            for c in Self.cases {
                let sample = try measure(c, on: bed, seconds: seconds, warmUp: round == 0 ? seconds / 2 : 0.05,
                                         generatorCPU: generatorCPU, napi: napi)
                samples[c.name, default: []].append(sample)
            }
        }

        for c in Self.cases {
            let all = samples[c.name] ?? []
            let rates = all.map(\.coreRate)
            let mid = median(rates)
            // The run whose rate is nearest the median supplies the counts.
            let typical = all.min { abs($0.coreRate - mid) < abs($1.coreRate - mid) }!
            var details: [String: Double] = [
                "min": rates.min()!, "max": rates.max()!, "runs": Double(all.count),
                "ns_per_packet": 1e9 / mid,
                "achieved_pps": median(all.map(\.achievedRate)),
                "offered_pps": median(all.map { Double($0.offered) / $0.seconds }),
                "reached_pps": median(all.map { Double($0.reached) / $0.seconds }),
                "sink_pps": median(all.map { Double($0.sunk) / $0.seconds }),
                "seconds_per_run": typical.seconds,
                "wall_seconds_per_run": typical.wallSeconds,
                "offered_frames": Double(typical.offered),
                "forwarded_frames": Double(typical.forwarded),
                "sink_frames": Double(typical.sunk),
            ]
            if c.forwarder == .balancer {
                details["sink_ipip_frames"] = Double(typical.tunnels)
                details["new_flows"] = Double(typical.newFlows)
                details["conntrack_hits"] = Double(typical.ctHits)
            }
            if let busy = typical.busy { details["balancer_core_busy"] = busy }
            if let waiting = typical.waiting { details["balancer_core_wait"] = waiting }
            report.add(c.name, group: "live", c.description, value: mid, unit: "packets/s",
                       reference: c.name == Self.floorName ? nil : Self.floorName, details: details)
            // The rates over the generator's active time, beside the per-core figure.
            report.add("\(c.name).achieved", group: "live", "  achieved (forwarded / generator time)",
                       value: details["achieved_pps"]!, unit: "packets/s")
            report.add("\(c.name).offered", group: "live", "  offered by the generator",
                       value: details["offered_pps"]!, unit: "packets/s")
        }
        let elapsed = LiveSystem.now() - started
        let waits = samples.values.joined().compactMap(\.waiting)
        if !waits.isEmpty, median(waits) > 0.05 {
            print(String(format: "note: other work held the balancer's CPU %.0f%% of the time (balancer_core_wait): "
                         + "these figures are low; rerun on a quiet machine", median(waits) * 100))
        }

        report.method["live.path"] = "Two network namespaces joined by one veth pair. Generator: BPF_PROG_TEST_RUN with "
            + "BPF_F_TEST_XDP_LIVE_FRAMES (batches of 64) of live_gen (bpf/bench_live.bpf.c), ingress = its veth; it writes "
            + "a 64-byte TCP frame from a template into every page (the source address and port counted up per frame for "
            + "SYNs) and returns XDP_TX, which the kernel sends out that veth. Balancer: attached natively to the peer with "
            + "SluiceControl's Attacher (as lbctl attach) and the Applier (1 IPv4 VIP, TCP, 10 backends; conntrack "
            + "\(SL_CT_DEFAULT_SIZE) entries, prefilled with \(prefilled) flows so that SYNs evict as on a busy node); its "
            + "gateway MAC is the generator's veth, where live_sink counts (IPv4-in-IPv4 separately) and drops. "
            + "The floor replaces the balancer by live_swap (MAC swap, XDP_TX) with an atomic XDP replace on the same veth."
        if let balancerCPU, let napi {
            report.method["live.core"] = "Threaded NAPI on both veths. The balancer's NAPI thread (pid "
                + napi.balancer.map(String.init).joined(separator: ",") + ") runs the veth receive, the XDP program and "
                + "its XDP_TX, pinned alone to CPU \(balancerCPU); the generator thread and the sink's NAPI thread are "
                + "pinned to CPU \(generatorCPU). value = XDP_TX verdicts of the forwarder / CPU time of the balancer's "
                + "NAPI thread (schedstat): packets per second of one fully used core. The rate per second of "
                + "generator time (achieved_pps) is bounded by more than the balancer here: one generator core offers a "
                + "few Mpps (offered_pps), not always more than the forwarder takes, and veth's 256-frame ring overflows "
                + "whenever the balancer's thread, having emptied it, waits to be woken (offered - reached = frames the "
                + "ring refused). "
                + "achieved_pps = XDP_TX / the generator's active time (BPF_PROG_TEST_RUN's duration x repeat, which leaves "
                + "out each call's 20-100 ms of set-up and tear-down and any preemption), offered_pps = frames sent / the "
                + "same time; balancer_core_busy and _wait = the thread's run and run-queue wait time / wall time "
                + "(wait > 0: other load on that CPU). The sink shares the generator's CPU and drops "
                + "what its own ring cannot take, so sink_pps < achieved_pps; sink_ipip_frames = sink_frames shows "
                + "every frame that came back was a tunnel."
        } else {
            report.method["live.core"] = "Only one CPU: generator, balancer and sink all run on CPU \(generatorCPU) (the "
                + "veths' NAPI runs in the softirq after each generator batch); value = XDP_TX / the generator's active "
                + "time (BPF_PROG_TEST_RUN's duration x repeat), which includes the generator's and the sink's cost."
        }
        report.method["live.window"] = "\(runs) runs of \(seconds) s of generator time per figure after a warm-up, the three figures "
            + "interleaved run by run, median reported (min and max in details); section took "
            + String(format: "%.1f s", elapsed) + "."
    }

    /// The NAPI threads of both veths, once threaded NAPI is on.
    struct NAPIThreads {
        var balancer: [pid_t] = []
        var generator: [pid_t] = []
    }

    /// Turns threaded NAPI on for both veths and pins the balancer's thread to
    /// its own CPU, the sink's beside the generator.
    func placeNAPI(_ bed: LiveTestbed, generatorCPU: Int, balancerCPU: Int) throws -> NAPIThreads {
        var threads = NAPIThreads()
        try LiveSystem.setThreadedNAPI(bed.balancerNamespace, bed.balancerInterface)
        try LiveSystem.setThreadedNAPI(bed.generatorNamespace, bed.generatorInterface)
        threads.balancer = LiveSystem.napiThreads(of: bed.balancerInterface)
        threads.generator = LiveSystem.napiThreads(of: bed.generatorInterface)
        guard !threads.balancer.isEmpty, !threads.generator.isEmpty else {
            throw LiveError("threaded NAPI is on, but no napi/\(bed.balancerInterface)-* or napi/\(bed.generatorInterface)-* thread")
        }
        for pid in threads.balancer { try LiveSystem.pin(pid, to: balancerCPU) }
        for pid in threads.generator { try LiveSystem.pin(pid, to: generatorCPU) }
        return threads
    }

    func measure(_ c: Case, on bed: LiveTestbed, seconds: Double, warmUp: Double, generatorCPU: Int,
                 napi: NAPIThreads?) throws -> Sample {
        try bed.use(c.forwarder)
        try bed.programs.configureGenerator(frame: bed.frame(flags: c.flags), varySource: c.varySource)
        let programs = bed.programs, ifindex = bed.generatorIndex
        if warmUp > 0 {
            _ = try bed.inGenerator(cpu: generatorCPU) {
                try programs.generate(ifindex: ifindex, seconds: warmUp, firstChunk: 1 << 18)
            }
            usleep(20_000)
        }

        let balancer0 = try bed.balancerStats(), swap0 = try programs.swapTotal(), sink0 = try programs.sinkTotal()
        let napi0 = napi.map { LiveSystem.schedTimes(of: $0.balancer) }
        let burst = try bed.inGenerator(cpu: generatorCPU) { try programs.generate(ifindex: ifindex, seconds: seconds) }
        let napiTimes = napi.map { LiveSystem.schedTimes(of: $0.balancer) - napi0! }
        usleep(30_000) // what is still in the veth rings (a few hundred frames at most) lands
        let balancer = try bed.balancerStats() - balancer0
        let swap = try programs.swapTotal() - swap0
        let sink = try programs.sinkTotal() - sink0

        let isBalancer = c.forwarder == .balancer
        return Sample(seconds: burst.activeSeconds, wallSeconds: burst.wallSeconds, offered: burst.frames,
                      reached: isBalancer ? balancer.verdicts.values.reduce(0, &+) : swap.packets,
                      forwarded: isBalancer ? balancer[.tx] : swap.packets,
                      sunk: sink.packets, tunnels: sink.ipip, newFlows: balancer.newFlows, ctHits: balancer.ctHits,
                      napi: napiTimes)
    }
}

/// Removes the namespaces when the run is interrupted (SIGINT, SIGTERM), then
/// dies of the signal as it would have.
final class LiveSignalCleanup: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []
    static let signals = [SIGINT, SIGTERM]

    init(_ cleanup: @escaping @Sendable () -> Void) {
        for number in Self.signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                cleanup()
                signal(number, SIG_DFL)
                kill(getpid(), number)
            }
            source.resume()
            sources.append(source)
        }
    }

    func cancel() {
        for source in sources { source.cancel() }
        sources = []
        for number in Self.signals { signal(number, SIG_DFL) }
    }
}
