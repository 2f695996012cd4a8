// A BPF ring buffer read from user space through libbpf. The consumer drains it on its own
// schedule (ring_buffer__consume) rather than waiting in epoll: producers that submit
// without a wakeup (BPF_RB_NO_WAKEUP) never wake a poller.
import CLibbpf
import Glibc

public final class BPFRingBuffer: @unchecked Sendable {
    /// Where libbpf's callback puts each record during one drain.
    private final class Collector {
        var records: [[UInt8]] = []
    }

    private let ring: OpaquePointer
    private let collector = Collector()
    /// Keeps the map's descriptor open as long as the ring is read.
    private let map: BPFMap

    public init(map: BPFMap) throws(BPFError) {
        self.map = map
        let context = Unmanaged.passUnretained(collector).toOpaque()
        ring = try check(ring_buffer__new(map.fd, { context, data, size in
            let collector = Unmanaged<Collector>.fromOpaque(context!).takeUnretainedValue()
            collector.records.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            return 0
        }, context, nil), "ring_buffer__new", map.name)
    }

    deinit { ring_buffer__free(ring) }

    /// Every record waiting, oldest first, each loaded as a `T` (records shorter than `T`
    /// are skipped). One consumer at a time.
    public func drain<T: BitwiseCopyable>(as: T.Type = T.self) throws(BPFError) -> [T] {
        collector.records.removeAll(keepingCapacity: true)
        try check(ring_buffer__consume(ring), "ring_buffer__consume", map.name)
        return collector.records.compactMap { bytes in
            bytes.count >= MemoryLayout<T>.size ? bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) } : nil
        }
    }
}
