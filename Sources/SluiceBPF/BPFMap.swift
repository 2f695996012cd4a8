// Typed access to one BPF map by descriptor: lookups, updates, iteration, per-CPU reads, pins.
import CLibbpf
import Glibc

/// A BPF map descriptor. Keys and values are C structs from lb_shared.h (or
/// plain integers); their Swift `MemoryLayout` must equal the map's sizes,
/// which every call checks before touching the kernel.
public final class BPFMap: @unchecked Sendable {
    public let fd: Int32
    public let name: String
    public let info: Info
    private let ownsDescriptor: Bool
    private let owner: AnyObject?

    public struct Info: Sendable, Equatable {
        public var type: bpf_map_type
        public var keySize: Int
        public var valueSize: Int
        public var maxEntries: Int
        public var flags: UInt32
        public var id: UInt32
    }

    init(borrowing fd: Int32, name: String, owner: AnyObject) throws(BPFError) {
        self.fd = fd
        self.name = name
        self.ownsDescriptor = false
        self.owner = owner
        self.info = try BPFMap.info(fd: fd, name: name)
    }

    private init(owning fd: Int32, name: String) throws(BPFError) {
        self.fd = fd
        self.name = name
        self.ownsDescriptor = true
        self.owner = nil
        do { self.info = try BPFMap.info(fd: fd, name: name) } catch { close(fd); throw error }
    }

    deinit { if ownsDescriptor { close(fd) } }

    /// Opens a map pinned in bpffs.
    public static func openPinned(_ path: String) throws(BPFError) -> BPFMap {
        let fd = try check(bpf_obj_get(path), "bpf_obj_get", path)
        return try BPFMap(owning: fd, name: path)
    }

    /// Opens a map by its kernel id (the value of a map-of-maps slot, read from user space).
    public static func open(id: UInt32) throws(BPFError) -> BPFMap {
        let fd = try check(bpf_map_get_fd_by_id(id), "bpf_map_get_fd_by_id", "id \(id)")
        return try BPFMap(owning: fd, name: "id \(id)")
    }

    /// Creates a map that belongs to no object, e.g. an inner Maglev table.
    public static func create(type: bpf_map_type, name: String, keySize: Int, valueSize: Int,
                              maxEntries: Int, flags: UInt32 = 0) throws(BPFError) -> BPFMap {
        var opts = bpf_map_create_opts()
        opts.sz = MemoryLayout<bpf_map_create_opts>.size
        opts.map_flags = flags
        let fd = try check(bpf_map_create(type, name, UInt32(keySize), UInt32(valueSize), UInt32(maxEntries), &opts),
                           "bpf_map_create", name)
        return try BPFMap(owning: fd, name: name)
    }

    private static func info(fd: Int32, name: String) throws(BPFError) -> Info {
        var raw = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        try check(bpf_obj_get_info_by_fd(fd, &raw, &len), "bpf_obj_get_info_by_fd", name)
        return Info(type: bpf_map_type(raw.type), keySize: Int(raw.key_size), valueSize: Int(raw.value_size),
                    maxEntries: Int(raw.max_entries), flags: raw.map_flags, id: raw.id)
    }

    public func pin(at path: String) throws(BPFError) {
        try check(bpf_obj_pin(fd, path), "bpf_obj_pin", path)
    }

    // MARK: Element access

    private func checkSizes<K, V>(_ key: K.Type, _ value: V.Type, perCPU: Bool = false) {
        precondition(MemoryLayout<K>.size == info.keySize,
                     "\(name): key is \(MemoryLayout<K>.size) bytes in Swift, \(info.keySize) in the kernel")
        precondition(MemoryLayout<V>.size == info.valueSize || perCPU,
                     "\(name): value is \(MemoryLayout<V>.size) bytes in Swift, \(info.valueSize) in the kernel")
    }

    /// The value under `key`, or nil when there is none.
    public func lookup<K, V>(_ key: K, as: V.Type = V.self) throws(BPFError) -> V? {
        checkSizes(K.self, V.self)
        var key = key
        var value = zeroed(V.self)
        let rc = bpf_map_lookup_elem(fd, &key, &value)
        if rc < 0 && (Glibc.errno == ENOENT || rc == -ENOENT) { return nil }
        try check(rc, "bpf_map_lookup_elem", name)
        return value
    }

    public func update<K, V>(_ key: K, _ value: V, flags: UInt64 = UInt64(BPF_ANY)) throws(BPFError) {
        checkSizes(K.self, V.self)
        var key = key
        var value = value
        try check(bpf_map_update_elem(fd, &key, &value, flags), "bpf_map_update_elem", name)
    }

    /// Points an outer (map-in-map) slot at `inner`.
    public func update<K>(_ key: K, innerMap inner: BPFMap) throws(BPFError) {
        precondition(MemoryLayout<K>.size == info.keySize)
        var key = key
        var innerFD = inner.fd
        try check(bpf_map_update_elem(fd, &key, &innerFD, UInt64(BPF_ANY)), "bpf_map_update_elem", name)
    }

    /// Deletes `key`; returns false when it was not there.
    @discardableResult
    public func delete<K>(_ key: K) throws(BPFError) -> Bool {
        precondition(MemoryLayout<K>.size == info.keySize)
        var key = key
        let rc = bpf_map_delete_elem(fd, &key)
        if rc < 0 && (Glibc.errno == ENOENT || rc == -ENOENT) { return false }
        try check(rc, "bpf_map_delete_elem", name)
        return true
    }

    /// Every key, in the kernel's iteration order.
    public func keys<K>(as: K.Type = K.self) throws(BPFError) -> [K] {
        precondition(MemoryLayout<K>.size == info.keySize)
        var result: [K] = []
        var current = zeroed(K.self)
        var next = zeroed(K.self)
        var first = true
        while true {
            let rc = first ? bpf_map_get_next_key(fd, nil, &next) : bpf_map_get_next_key(fd, &current, &next)
            if rc < 0 && (Glibc.errno == ENOENT || rc == -ENOENT) { break }
            try check(rc, "bpf_map_get_next_key", name)
            result.append(next)
            current = next
            first = false
        }
        return result
    }

    /// Every (key, value) pair. Entries deleted during the walk are skipped.
    public func entries<K, V>(key: K.Type = K.self, value: V.Type = V.self) throws(BPFError) -> [(K, V)] {
        var result: [(K, V)] = []
        for key in try keys(as: K.self) {
            if let value = try lookup(key, as: V.self) { result.append((key, value)) }
        }
        return result
    }

    /// The per-CPU values of one slot of a per-CPU map, one per possible CPU.
    public func lookupPerCPU<K, V>(_ key: K, as: V.Type = V.self) throws(BPFError) -> [V] {
        checkSizes(K.self, V.self, perCPU: true)
        let cpus = Int(try check(libbpf_num_possible_cpus(), "libbpf_num_possible_cpus"))
        // The kernel rounds each per-CPU value up to 8 bytes.
        let stride = (MemoryLayout<V>.size + 7) & ~7
        var buffer = [UInt8](repeating: 0, count: stride * cpus)
        var key = key
        try check(buffer.withUnsafeMutableBytes { bpf_map_lookup_elem(fd, &key, $0.baseAddress) },
                  "bpf_map_lookup_elem", name)
        return buffer.withUnsafeBytes { raw in
            (0..<cpus).map { raw.loadUnaligned(fromByteOffset: $0 * stride, as: V.self) }
        }
    }

    /// Writes `value` into every CPU's copy of one slot.
    public func updatePerCPU<K, V>(_ key: K, _ value: V) throws(BPFError) {
        checkSizes(K.self, V.self, perCPU: true)
        let cpus = Int(try check(libbpf_num_possible_cpus(), "libbpf_num_possible_cpus"))
        let stride = (MemoryLayout<V>.size + 7) & ~7
        var buffer = [UInt8](repeating: 0, count: stride * cpus)
        buffer.withUnsafeMutableBytes { raw in
            for cpu in 0..<cpus { raw.storeBytes(of: value, toByteOffset: cpu * stride, as: V.self) }
        }
        var key = key
        try check(buffer.withUnsafeMutableBytes { bpf_map_update_elem(fd, &key, $0.baseAddress, UInt64(BPF_ANY)) },
                  "bpf_map_update_elem", name)
    }

    /// Writes many array slots with one bpf(2) call (BPF_MAP_UPDATE_BATCH).
    public func updateBatch<V>(keys: [UInt32], values: [V]) throws(BPFError) {
        precondition(keys.count == values.count && MemoryLayout<V>.size == info.valueSize)
        guard !keys.isEmpty else { return }
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        var count = UInt32(keys.count)
        try check(keys.withUnsafeBytes { k in
            values.withUnsafeBytes { v in bpf_map_update_batch(fd, k.baseAddress, v.baseAddress, &count, &opts) }
        }, "bpf_map_update_batch", name)
    }

    /// Writes every slot of an array map created with BPF_F_MMAPABLE through a shared
    /// mapping: one copy in user space, where BPF_MAP_UPDATE_BATCH costs the kernel a
    /// copy and an update call per slot (~20 ms for a 65537-slot Maglev table here).
    /// The kernel lays an array's values out every round_up(value_size, 8) bytes.
    public func writeMapped<V: BitwiseCopyable>(_ values: [V]) throws(BPFError) {
        precondition(info.keySize == 4 && MemoryLayout<V>.size == info.valueSize && values.count == info.maxEntries)
        let stride = (info.valueSize + 7) & ~7
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = (info.maxEntries * stride + page - 1) / page * page
        guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw BPFError(function: "mmap", context: name, errno: Glibc.errno)
        }
        defer { munmap(base, length) }
        values.withUnsafeBytes { source in
            let size = MemoryLayout<V>.size
            if stride == size {
                base.copyMemory(from: source.baseAddress!, byteCount: source.count)
            } else {
                // Raw copies: a generic loop here would look up V's metadata per slot.
                for index in 0..<values.count {
                    (base + index * stride).copyMemory(from: source.baseAddress! + index * size, byteCount: size)
                }
            }
        }
    }

    /// Every slot of an array map, read with BPF_MAP_LOOKUP_BATCH (a few
    /// syscalls instead of one per slot).
    public func arrayValues<V>(as: V.Type = V.self) throws(BPFError) -> [V] {
        precondition(info.keySize == 4 && MemoryLayout<V>.size == info.valueSize)
        var result: [V] = []
        result.reserveCapacity(info.maxEntries)
        try forEachBatch(chunk: info.maxEntries, valueStride: info.valueSize) { _, values, count in
            for i in 0..<count { result.append(values.loadUnaligned(fromByteOffset: i * info.valueSize, as: V.self)) }
        }
        return result
    }

    /// Slots `0..<count` of a per-CPU array map, read with BPF_MAP_LOOKUP_BATCH (a few
    /// syscalls instead of one per slot); `values[slot * cpus + cpu]`.
    public func perCPUArrayValues<V>(count: Int, as: V.Type = V.self) throws(BPFError) -> (cpus: Int, values: [V]) {
        checkSizes(UInt32.self, V.self, perCPU: true)
        let cpus = Int(try check(libbpf_num_possible_cpus(), "libbpf_num_possible_cpus"))
        let total = min(count, info.maxEntries)
        guard total > 0 else { return (cpus, []) }
        // The kernel rounds each per-CPU value up to 8 bytes.
        let stride = (MemoryLayout<V>.size + 7) & ~7
        var result: [V] = []
        result.reserveCapacity(total * cpus)
        try forEachBatch(chunk: total, valueStride: cpus * stride, limit: total) { _, values, batch in
            for i in 0..<(batch * cpus) { result.append(values.loadUnaligned(fromByteOffset: i * stride, as: V.self)) }
        }
        return (cpus, result)
    }

    /// How many entries a hash map holds, counted with BPF_MAP_LOOKUP_BATCH (the kernel keeps
    /// no count it would tell us); costs a copy of the whole map through a chunk-sized buffer.
    public func countEntries(chunk: Int = 8192) throws(BPFError) -> Int {
        var total = 0
        try forEachBatch(chunk: chunk, valueStride: info.valueSize) { _, _, count in total += count }
        return total
    }

    /// Every (key, value) of a hash map, read with BPF_MAP_LOOKUP_BATCH, `chunk`
    /// entries per call (a few syscalls for the whole connection table).
    public func hashEntries<K, V>(key: K.Type = K.self, value: V.Type = V.self, chunk: Int = 8192) throws(BPFError) -> [(K, V)] {
        checkSizes(K.self, V.self)
        var result: [(K, V)] = []
        try forEachBatch(chunk: chunk, valueStride: info.valueSize) { keys, values, count in
            for i in 0..<count {
                result.append((keys.loadUnaligned(fromByteOffset: i * info.keySize, as: K.self),
                               values.loadUnaligned(fromByteOffset: i * info.valueSize, as: V.self)))
            }
        }
        return result
    }

    /// Walks the map with BPF_MAP_LOOKUP_BATCH, at most `chunk` entries (and `limit` in
    /// all) per call, handing each batch's keys and values (`valueStride` bytes apart) to
    /// `body`. The batch cursor is 4 bytes for arrays (an index) and hash maps (a bucket).
    private func forEachBatch(chunk: Int, valueStride: Int, limit: Int = .max,
                              _ body: (_ keys: UnsafeRawBufferPointer, _ values: UnsafeRawBufferPointer, _ count: Int) -> Void)
        throws(BPFError) {
        var keys = [UInt8](repeating: 0, count: chunk * info.keySize)
        var values = [UInt8](repeating: 0, count: chunk * valueStride)
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        var inBatch: UInt32 = 0
        var outBatch: UInt32 = 0
        var first = true
        var done = 0
        while done < limit {
            var count = UInt32(min(chunk, limit - done))
            let rc = keys.withUnsafeMutableBytes { k in
                values.withUnsafeMutableBytes { v in
                    withUnsafeMutablePointer(to: &inBatch) { cursor in
                        bpf_map_lookup_batch(fd, first ? nil : UnsafeMutableRawPointer(cursor), &outBatch,
                                             k.baseAddress, v.baseAddress, &count, &opts)
                    }
                }
            }
            // ENOENT: the walk is over; `count` still says what this last call read.
            let ended = rc < 0 && (Glibc.errno == ENOENT || rc == -ENOENT)
            if rc < 0 && !ended { try check(rc, "bpf_map_lookup_batch", name) }
            keys.withUnsafeBytes { k in values.withUnsafeBytes { v in body(k, v, Int(count)) } }
            done += Int(count)
            if ended { return }
            inBatch = outBatch
            first = false
        }
    }
}

/// An all-zero value of a C struct type (they have no Swift initialiser of that kind).
@inline(__always)
public func zeroed<T>(_: T.Type) -> T {
    withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { buffer in
        let raw = UnsafeMutableRawPointer(buffer.baseAddress!)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        return raw.load(as: T.self)
    }
}
