// The machinery of the data-plane figures: bench.bpf.o (the floors and the
// restore-and-tail-call wrapper), a balancer loaded into a private bpffs, its
// counters, and the connection-table fill. DataplaneBench.swift decides what
// is measured; this file knows how.
import CLibbpf
import CSluice
import Foundation
import Glibc
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport

struct DataplaneBenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Throws with errno's text when a raw bpf(2) wrapper fails.
private func checked(_ rc: Int32, _ what: @autoclosure () -> String) throws {
    guard rc < 0 else { return }
    let code = rc == -1 ? errno : -rc
    throw DataplaneBenchError("\(what()): \(String(cString: strerror(code)))")
}

/// bench.bpf.o, read from disk: the floors and the wrapper that restores the
/// frame before every pass and tail-calls slot 0 of `bench_target`.
final class BenchPrograms {
    /// BENCH_FRAME_MAX and the layout of struct bench_frame in bpf/bench.bpf.c.
    static let frameCapacity = 128
    private static let headerSize = 16  // len, vary_off, seq, pad: four __u32

    let object: BPFObject
    let wrapper: BPFProgram
    let pass: BPFProgram
    let swapTX: BPFProgram
    let encap: BPFProgram
    let encapLookup: BPFProgram
    let fibSwap: BPFProgram
    private let template: BPFMap
    private let target: BPFMap

    init(objectDirectory: String) throws {
        let path = "\(objectDirectory)/bench.bpf.o"
        guard let elf = FileManager.default.contents(atPath: path) else {
            throw DataplaneBenchError("cannot read \(path) (build it with 'make bpf', or pass --objects DIR)")
        }
        LibbpfLog.warningsToStderr()
        object = try BPFObject(elf: [UInt8](elf), name: "sluice_bench", pinRoot: nil)
        try object.load()
        wrapper = try object.program(named: "bench_wrapper")
        pass = try object.program(named: "bench_pass")
        swapTX = try object.program(named: "bench_swap_tx")
        encap = try object.program(named: "bench_encap")
        encapLookup = try object.program(named: "bench_encap_lookup")
        fibSwap = try object.program(named: "bench_fib_swap")
        template = try object.map(named: "bench_template")
        target = try object.map(named: "bench_target")
        guard template.info.valueSize == Self.headerSize + Self.frameCapacity else {
            throw DataplaneBenchError("\(path): struct bench_frame is \(template.info.valueSize) bytes, this binary expects \(Self.headerSize + Self.frameCapacity): rebuild both")
        }
    }

    /// Puts `program` in the wrapper's slot 0 (the prog array holds a reference to it).
    func setTarget(_ program: BPFProgram) throws {
        var key: UInt32 = 0
        var fd = program.fd
        try checked(bpf_map_update_elem(target.fd, &key, &fd, UInt64(BPF_ANY)), "bench_target: putting \(program.name) in slot 0")
    }

    /// Empties slot 0, dropping the reference to the last program under test.
    func clearTarget() {
        var key: UInt32 = 0
        _ = bpf_map_delete_elem(target.fd, &key)
    }

    /// The frame every pass starts from and where the wrapper writes its 16-bit
    /// pass counter; resets the counter to 0.
    func setFrame(_ frame: [UInt8], varyOffset: Int) throws {
        precondition(frame.count >= 14 && frame.count <= Self.frameCapacity && varyOffset >= 0 && varyOffset + 2 <= frame.count)
        var value = [UInt8](repeating: 0, count: Self.headerSize + Self.frameCapacity)
        value.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(frame.count), toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: UInt32(varyOffset), toByteOffset: 4, as: UInt32.self)
        }
        value.replaceSubrange(Self.headerSize..<(Self.headerSize + frame.count), with: frame)
        var key: UInt32 = 0
        try checked(bpf_map_update_elem(template.fd, &key, &value, UInt64(BPF_ANY)), "bench_template: writing the frame")
    }

    /// The template as the last pass copied it (with its pass counter written
    /// in), and the number of passes since `setFrame`.
    func readFrame() throws -> (frame: [UInt8], passes: UInt32) {
        var value = [UInt8](repeating: 0, count: Self.headerSize + Self.frameCapacity)
        var key: UInt32 = 0
        try checked(bpf_map_lookup_elem(template.fd, &key, &value), "bench_template: reading the frame")
        let (length, seq) = value.withUnsafeBytes { ($0.load(fromByteOffset: 0, as: UInt32.self), $0.load(fromByteOffset: 8, as: UInt32.self)) }
        return (Array(value[Self.headerSize..<(Self.headerSize + Int(length))]), seq)
    }
}

/// The real balancer (the object lbctl embeds), loaded into a private bpffs
/// with the default connection-table size, a gateway MAC, and a service file
/// applied through the real Applier.
final class BenchBalancer {
    static let gatewayMAC: [UInt8] = [0x02, 0x47, 0x57, 0x00, 0x00, 0x01]

    let mount: BPFFSMount
    let pinPath: String
    let dataplane: Dataplane
    private var closed = false

    init() throws {
        mount = try BPFFSMount()
        pinPath = mount.path + "/lb"
        do {
            dataplane = try Dataplane.openOrLoad(pinPath: pinPath, conntrackSize: UInt32(SL_CT_DEFAULT_SIZE))
            var config = try dataplane[.config].lookup(UInt32(0), as: sl_config.self) ?? zeroed(sl_config.self)
            withUnsafeMutableBytes(of: &config.gateway_mac) { raw in
                for (i, byte) in Self.gatewayMAC.enumerated() { raw[i] = byte }
            }
            config.flags |= UInt8(SL_CFG_HAS_GATEWAY.rawValue)
            try dataplane[.config].update(UInt32(0), config)
        } catch {
            Dataplane.removePins(at: pinPath)
            mount.close()
            throw error
        }
    }

    deinit { close() }

    /// Removes the pins and the bpffs; the kernel frees the maps once the last
    /// descriptor (and the wrapper's prog array slot) lets go.
    func close() {
        guard !closed else { return }
        closed = true
        Dataplane.removePins(at: pinPath)
        mount.close()
    }

    var program: BPFProgram { dataplane.program }

    func apply(_ file: ServiceFile) throws {
        try file.validate(file: "bench")
        _ = try dataplane.apply(file)
    }

    func counters() throws -> NodeStats {
        try dataplane.nodeCounters()
    }

    /// Inserts `count` distinct TCP flows to `vip`:`port` (sources 10.128.0.0
    /// upwards) with BPF_MAP_UPDATE_BATCH, or one update at a time if the
    /// kernel refuses batches on this map. Returns how it was done. The entries
    /// are filler no measured frame belongs to, so their service slot and
    /// epoch (0 and 0) do not matter.
    func fillConntrack(count: Int, vip: IPAddress, port: UInt16, backendID: UInt32) throws -> String {
        precondition(vip.family == .v4)
        let chunk = 65536
        var keys = [sl_flow_key](repeating: zeroed(sl_flow_key.self), count: chunk)
        let values = [sl_ct_entry](repeating: sl_ct_entry(backend_id: backendID, service_id: 0, epoch: 0, last_seen: 0, origin: UInt8(SL_ORIGIN_LOCAL), tcp_seen: UInt8(SL_TCP_SEEN_SYN.rawValue), nat: 0, snat_index: 0, snat_port: 0, proxy: 0, pad: 0, proxy_seq: 0), count: chunk)
        let dst = vip.words.0
        var batched = true
        var start = 0
        while start < count {
            let n = min(chunk, count - start)
            for i in 0..<n {
                let index = UInt32(start + i)
                var key = zeroed(sl_flow_key.self)
                key.src.0 = (UInt32(0x0a80_0000) + index).bigEndian  // 10.128.0.0 + index
                key.dst.0 = dst
                key.sport = UInt16(1024 + index % 60000).bigEndian
                key.dport = port.bigEndian
                key.proto = 6
                key.family = UInt8(SL_FAMILY_V4.rawValue)
                keys[i] = key
            }
            if batched {
                var opts = bpf_map_batch_opts()
                opts.sz = MemoryLayout<bpf_map_batch_opts>.size
                var done = UInt32(n)
                let rc = keys.withUnsafeBytes { k in
                    values.withUnsafeBytes { v in bpf_map_update_batch(dataplane[.conntrack].fd, k.baseAddress, v.baseAddress, &done, &opts) }
                }
                if rc < 0 {
                    let code = rc == -1 ? errno : -rc
                    guard start == 0, done == 0, code == EINVAL || code == ENOTSUP || code == EOPNOTSUPP else {
                        throw DataplaneBenchError("sl_conntrack: bpf_map_update_batch after \(start + Int(done)) flows: \(String(cString: strerror(code)))")
                    }
                    batched = false
                }
            }
            if !batched {
                for i in 0..<n {
                    try dataplane[.conntrack].update(keys[i], values[i])
                }
            }
            start += n
        }
        return batched ? "bpf_map_update_batch" : "bpf_map_update_elem"
    }

    /// Entries in sl_conntrack.
    func conntrackCount() throws -> Int {
        try dataplane[.conntrack].countEntries(chunk: 65536)
    }
}

extension BPFProgram.TestRun {
    /// The XDP action's name, for messages.
    var verdictName: String {
        XDPVerdict(rawValue: verdict).map(\.description) ?? "verdict \(verdict)"
    }
}
