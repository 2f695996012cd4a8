// The programs of bpf/bench_live.bpf.c: the live-frames generator, the sink
// on the generator's veth and the MAC-swap floor, with their counters.
import CLibbpf
import Foundation
import Glibc
import SluiceBPF

/// struct live_count of bench_live.bpf.c, summed over CPUs.
struct LiveCount: Sendable {
    var packets: UInt64 = 0
    var bytes: UInt64 = 0
    var ipip: UInt64 = 0

    static func - (lhs: LiveCount, rhs: LiveCount) -> LiveCount {
        LiveCount(packets: lhs.packets &- rhs.packets, bytes: lhs.bytes &- rhs.bytes, ipip: lhs.ipip &- rhs.ipip)
    }
}

final class LivePrograms {
    static let objectName = "bench_live.bpf.o"
    /// LIVE_FRAME_LEN: the generator writes exactly this many bytes.
    static let frameLength = 64
    /// LIVE_GEN_VARY_SOURCE.
    static let varySource: UInt32 = 1

    let object: BPFObject
    let generator: BPFProgram
    let sink: BPFProgram
    let swap: BPFProgram
    private let generatorConfig: BPFMap
    private let sinkCount: BPFMap
    private let swapCount: BPFMap

    init(directory: String) throws {
        let path = "\(directory)/\(Self.objectName)"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LiveError("\(path) not found: build it with `make bpf` (or pass --objects DIR)")
        }
        object = try BPFObject(elf: [UInt8](data), name: "bench_live", pinRoot: nil)
        try object.load()
        generator = try object.program(named: "live_gen")
        sink = try object.program(named: "live_sink")
        swap = try object.program(named: "live_swap")
        generatorConfig = try object.map(named: "live_gen_cfg")
        sinkCount = try object.map(named: "live_sink_count")
        swapCount = try object.map(named: "live_swap_count")
    }

    /// Sets the frame every generated packet starts as and whether each
    /// gets a new source address and port; restarts the flow counter.
    func configureGenerator(frame: [UInt8], varySource: Bool) throws {
        precondition(frame.count == Self.frameLength)
        var value = frame + [UInt8](repeating: 0, count: 8)
        value.withUnsafeMutableBytes { $0.storeBytes(of: varySource ? Self.varySource : 0, toByteOffset: Self.frameLength, as: UInt32.self) }
        precondition(value.count == generatorConfig.info.valueSize)
        var key: UInt32 = 0
        let rc = value.withUnsafeMutableBytes { bpf_map_update_elem(generatorConfig.fd, &key, $0.baseAddress, UInt64(BPF_ANY)) }
        guard rc == 0 else { throw LiveError("live_gen_cfg update: \(String(cString: strerror(errno)))") }
    }

    func sinkTotal() throws -> LiveCount { try total(sinkCount) }
    func swapTotal() throws -> LiveCount { try total(swapCount) }

    private func total(_ map: BPFMap) throws -> LiveCount {
        try map.lookupPerCPU(UInt32(0), as: LiveCount.self).reduce(into: LiveCount()) {
            $0.packets &+= $1.packets
            $0.bytes &+= $1.bytes
            $0.ipip &+= $1.ipip
        }
    }

    /// What one generator run sent.
    struct Burst {
        var frames: UInt64
        /// The generator's own time, as the kernel measured it (BPF_PROG_TEST_RUN's
        /// duration x repeat): the frames went out during it.
        var activeSeconds: Double
        /// Wall time, also counting each call's set-up and tear-down (20-100 ms
        /// here, sending nothing) and any time the thread was preempted.
        var wallSeconds: Double
        var calls: Int
    }

    /// Transmits frames on `ifindex` for about `seconds` of generator time:
    /// BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES) of
    /// live_gen, whose XDP_TX the kernel turns into a transmit on the ingress
    /// interface, in batches of 64 (as a NAPI poll). Each call costs 20-100 ms
    /// of set-up and tear-down during which nothing is sent, so calls are
    /// long: the first of `firstChunk` frames, the next sized from the
    /// rate seen. Must run on a thread inside the interface's namespace (the
    /// ifindex is looked up there).
    func generate(ifindex: UInt32, seconds: Double, firstChunk: UInt32 = 1 << 19) throws -> Burst {
        // The template; live_gen overwrites the first 64 bytes of every frame anyway.
        var frame = [UInt8](repeating: 0, count: Self.frameLength)
        var ctx = xdp_md()
        ctx.data = 0
        ctx.data_end = UInt32(frame.count)
        ctx.ingress_ifindex = ifindex
        var burst = Burst(frames: 0, activeSeconds: 0, wallSeconds: 0, calls: 0)
        var chunk = firstChunk
        let start = LiveSystem.now()
        repeat {
            var opts = bpf_test_run_opts()
            opts.sz = MemoryLayout<bpf_test_run_opts>.size
            opts.repeat = Int32(chunk)
            opts.flags = UInt32(BPF_F_TEST_XDP_LIVE_FRAMES)
            let rc = frame.withUnsafeMutableBytes { data in
                withUnsafeMutablePointer(to: &ctx) { ctxPointer in
                    opts.data_in = UnsafeRawPointer(data.baseAddress)
                    opts.data_size_in = UInt32(data.count)
                    opts.ctx_in = UnsafeRawPointer(ctxPointer)
                    opts.ctx_size_in = UInt32(MemoryLayout<xdp_md>.size)
                    return bpf_prog_test_run_opts(generator.fd, &opts)
                }
            }
            guard rc == 0 else {
                throw LiveError("bpf_prog_test_run_opts(live_gen, live frames): \(String(cString: strerror(errno)))")
            }
            burst.frames += UInt64(chunk)
            burst.activeSeconds += Double(opts.duration) * Double(chunk) / 1e9
            burst.calls += 1
            let left = seconds - burst.activeSeconds
            guard left > seconds * 0.05, burst.activeSeconds > 0 else { break }
            let rate = Double(burst.frames) / burst.activeSeconds
            chunk = UInt32(min(max(rate * left, 65536), Double(Int32.max)))
        } while true
        burst.wallSeconds = LiveSystem.now() - start
        return burst
    }
}
