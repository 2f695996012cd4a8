// An ELF BPF object opened from memory, sized, loaded, and the handles to its maps and programs.
import CLibbpf
import Glibc

/// Owns a `struct bpf_object`: open from the embedded ELF bytes, adjust map
/// sizes, load (which creates or reuses pinned maps), then hand out maps and
/// programs. Closing the object closes its descriptors, not what is pinned.
public final class BPFObject {
    private let handle: OpaquePointer
    private let bytes: [UInt8]  // libbpf keeps pointers into the ELF until load

    /// - Parameter pinRoot: where maps declared `LIBBPF_PIN_BY_NAME` are pinned
    ///   or, when already pinned and compatible, reused.
    public init(elf: [UInt8], name: String, pinRoot: String?) throws(BPFError) {
        let elfBytes = elf
        var opts = bpf_object_open_opts()
        opts.sz = libbpfOptsSize(through: \bpf_object_open_opts.kernel_log_level)
        let object: OpaquePointer? = name.withCString { cName in
            withOptionalCString(pinRoot) { cPin in
                opts.object_name = cName
                opts.pin_root_path = cPin
                return elfBytes.withUnsafeBytes { raw in
                    bpf_object__open_mem(raw.baseAddress, raw.count, &opts)
                }
            }
        }
        handle = try check(object, "bpf_object__open_mem", name)
        bytes = elfBytes
    }

    deinit { bpf_object__close(handle) }

    /// Resizes a map before `load()` (e.g. the conntrack table).
    public func setMaxEntries(map name: String, _ entries: UInt32) throws(BPFError) {
        let map = try check(bpf_object__find_map_by_name(handle, name), "bpf_object__find_map_by_name", name)
        try check(bpf_map__set_max_entries(map, entries), "bpf_map__set_max_entries", name)
    }

    public func load() throws(BPFError) {
        try check(bpf_object__load(handle), "bpf_object__load")
    }

    /// A loaded map of this object. The descriptor stays owned by the object.
    public func map(named name: String) throws(BPFError) -> BPFMap {
        let map = try check(bpf_object__find_map_by_name(handle, name), "bpf_object__find_map_by_name", name)
        return try BPFMap(borrowing: try check(bpf_map__fd(map), "bpf_map__fd", name), name: name, owner: self)
    }

    /// A loaded program of this object. The descriptor stays owned by the object.
    public func program(named name: String) throws(BPFError) -> BPFProgram {
        let prog = try check(bpf_object__find_program_by_name(handle, name), "bpf_object__find_program_by_name", name)
        return BPFProgram(borrowing: try check(bpf_program__fd(prog), "bpf_program__fd", name), name: name, owner: self)
    }

    /// The names of every map in the object, in ELF order.
    public var mapNames: [String] { mapDeclarations.map(\.name) }

    /// A map as the object declares it (before or after load).
    public struct MapDeclaration: Sendable, Equatable {
        public var name: String
        public var type: bpf_map_type
        public var keySize: Int
        public var valueSize: Int
    }

    /// Every map of the object as declared, in ELF order.
    public var mapDeclarations: [MapDeclaration] {
        var declarations: [MapDeclaration] = []
        var map = bpf_object__next_map(handle, nil)
        while let current = map {
            declarations.append(MapDeclaration(name: String(cString: bpf_map__name(current)), type: bpf_map__type(current),
                                               keySize: Int(bpf_map__key_size(current)),
                                               valueSize: Int(bpf_map__value_size(current))))
            map = bpf_object__next_map(handle, current)
        }
        return declarations
    }
}

func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}
