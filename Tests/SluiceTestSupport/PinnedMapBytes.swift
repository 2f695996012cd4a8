// Every byte of every map pinned in a directory, read through bpf(2), for tests that must
// show a refused operation changed nothing: keys and values in key order (each CPU's copy
// for a per-CPU map; the id of the program or inner map for a prog array or map of maps).
// bpftool prints the same, but takes seconds for the 65,536-slot arrays.
import CLibbpf
import Glibc

public enum PinnedMapBytes {
    /// Map name -> its bytes, for each map pinned in `directory` but ring buffers (nothing to read).
    public static func snapshot(_ directory: String) throws -> [String: [UInt8]] {
        guard let dir = opendir(directory) else { throw CommandError("cannot list \(directory)") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") { names.append(name) }
        }
        var maps: [String: [UInt8]] = [:]
        for name in names.sorted() {
            let fd = bpf_obj_get("\(directory)/\(name)")
            guard fd >= 0 else { continue }
            defer { close(fd) }
            // Not a map (the program: its info would fill the map info's fields with its own), skipped.
            guard isMap(fd) else { continue }
            var info = bpf_map_info()
            var length = UInt32(MemoryLayout<bpf_map_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0, info.type != BPF_MAP_TYPE_RINGBUF.rawValue else { continue }
            maps[name] = try bytes(fd: fd, info: info, name: name)
        }
        return maps
    }

    /// Whether `fd` is a map: the kernel's fdinfo of one has a map_type line.
    private static func isMap(_ fd: Int32) -> Bool {
        guard let file = fopen("/proc/self/fdinfo/\(fd)", "r") else { return false }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            if String(cString: line).hasPrefix("map_type:") { return true }
        }
        return false
    }

    private static func bytes(fd: Int32, info: bpf_map_info, name: String) throws -> [UInt8] {
        let perCPU = [BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH].map(\.rawValue).contains(info.type)
        let cpus = perCPU ? Int(libbpf_num_possible_cpus()) : 1
        let valueSize = perCPU ? (Int(info.value_size) + 7) / 8 * 8 * cpus : Int(info.value_size)
        var key = [UInt8](repeating: 0, count: Int(info.key_size))
        var next = key
        var value = [UInt8](repeating: 0, count: max(valueSize, 8))
        var out: [UInt8] = []
        var first = true
        while true {
            let rc = first ? bpf_map_get_next_key(fd, nil, &next) : bpf_map_get_next_key(fd, &key, &next)
            if rc != 0 { break }
            first = false
            key = next
            guard bpf_map_lookup_elem(fd, &key, &value) == 0 else {
                if errno == ENOENT { continue }  // an entry gone between the two calls
                throw CommandError("\(name): lookup: \(String(cString: strerror(errno)))")
            }
            out += key
            out += value.prefix(valueSize)
        }
        return out
    }
}
