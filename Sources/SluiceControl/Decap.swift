// The backend side of direct server return (lbctl decap): the pinned sl_decap program, its address maps, attach and detach.
import CLibbpf
import CSluice
import Glibc
import SluiceBPF
import SluiceCore

/// Handles on the decapsulation program and its maps under one pin path
/// (the same directory the balancer uses; the names do not collide). The
/// maps are pinned by name (LIBBPF_PIN_BY_NAME), the program as `sl_decap`.
public final class DecapDataplane {
    public let pinPath: String
    public let program: BPFProgram
    public let locals: BPFMap
    public let vips: BPFMap
    public let stats: BPFMap
    private let object: BPFObject?

    private init(pinPath: String, program: BPFProgram, object: BPFObject?, map: (String) throws(BPFError) -> BPFMap) throws(BPFError) {
        self.pinPath = pinPath
        self.program = program
        self.object = object
        locals = try map(SL_MAP_DECAP_LOCALS)
        vips = try map(SL_MAP_DECAP_VIPS)
        stats = try map(SL_MAP_DECAP_STATS)
    }

    static func programPin(_ pinPath: String) -> String { "\(pinPath)/\(SL_PROG_DECAP)" }

    /// True when a decapsulator is pinned at `pinPath`.
    public static func isPinned(at pinPath: String) -> Bool {
        access(programPin(pinPath), F_OK) == 0
    }

    /// Opens what is pinned at `pinPath`.
    public static func open(pinPath: String) throws(ControlError) -> DecapDataplane {
        guard isPinned(at: pinPath) else {
            throw .runtime("no Sluice decapsulator is pinned at \(pinPath) (run 'lbctl decap attach IFACE' first)")
        }
        do {
            let program = try BPFProgram.openPinned(programPin(pinPath))
            return try DecapDataplane(pinPath: pinPath, program: program, object: nil) { name throws(BPFError) in
                try BPFMap.openPinned("\(pinPath)/\(name)")
            }
        } catch {
            throw .bpf(error, while: "opening the decapsulator pinned at \(pinPath)")
        }
    }

    /// Opens the pinned decapsulator, or loads the embedded object and pins it.
    public static func openOrLoad(pinPath: String) throws(ControlError) -> DecapDataplane {
        if isPinned(at: pinPath) { return try open(pinPath: pinPath) }
        try PinDirectory.prepare(pinPath)
        LibbpfLog.warningsToStderr()
        do {
            let object = try BPFObject(elf: EmbeddedObjects.decap, name: "sluice_decap", pinRoot: pinPath)
            try object.load()
            let program = try object.program(named: SL_PROG_DECAP)
            try program.pin(at: programPin(pinPath))
            return try DecapDataplane(pinPath: pinPath, program: program, object: object) { name throws(BPFError) in
                try object.map(named: name)
            }
        } catch {
            removePins(at: pinPath)
            throw .bpf(error, while: "loading the decapsulator into \(pinPath)")
        }
    }

    /// Removes the decapsulator's pins (never the balancer's), and the
    /// directory if it is then empty.
    public static func removePins(at pinPath: String) {
        PinDirectory.unpin([SL_PROG_DECAP, SL_MAP_DECAP_LOCALS, SL_MAP_DECAP_VIPS, SL_MAP_DECAP_STATS], at: pinPath)
    }

    /// Replaces the contents of both address sets: new addresses are added
    /// before stale ones are removed, so an address in both sets is never missing.
    public func setAddresses(locals: [IPAddress], vips: [IPAddress]) throws(ControlError) {
        for (map, addresses, what) in [(self.locals, locals, "local"), (self.vips, vips, "VIP")] {
            let unique = Set(addresses)
            guard unique.count <= Int(SL_MAX_DECAP_ADDRS) else {
                throw .badInput("\(unique.count) \(what) addresses: at most \(SL_MAX_DECAP_ADDRS) are supported")
            }
            do {
                let wanted = Set(unique.map(sl_addr_key.init(address:)).map(AddrKey.init))
                for key in wanted { try map.update(key.raw, UInt8(1)) }
                for key in try map.keys(as: sl_addr_key.self) where !wanted.contains(AddrKey(key)) {
                    _ = try map.delete(key)
                }
            } catch {
                throw .bpf(error, while: "writing the \(what) addresses")
            }
        }
    }

    /// The addresses in one of the sets (`locals` or `vips`), sorted.
    public func addresses(in map: BPFMap) throws(ControlError) -> [IPAddress] {
        do {
            return try map.keys(as: sl_addr_key.self).compactMap { IPAddress(words: $0.addr, family: $0.family) }.sorted()
        } catch {
            throw .bpf(error, while: "reading \(map.name)")
        }
    }

    /// The counters, summed over CPUs.
    public func counters() throws(ControlError) -> sl_decap_stats {
        do {
            var total = sl_decap_stats()
            for cpu in try stats.lookupPerCPU(UInt32(0), as: sl_decap_stats.self) {
                total.decapsulated &+= cpu.decapsulated
                total.not_local &+= cpu.not_local
                total.not_vip &+= cpu.not_vip
                total.malformed &+= cpu.malformed
                total.passed &+= cpu.passed
            }
            return total
        } catch {
            throw .bpf(error, while: "reading \(SL_MAP_DECAP_STATS)")
        }
    }
}

extension sl_addr_key {
    init(address: IPAddress) {
        self.init()
        addr = address.words
        family = address.family.rawValue
    }
}

/// sl_addr_key as a Hashable value (C structs are not).
private struct AddrKey: Hashable {
    let raw: sl_addr_key
    init(_ raw: sl_addr_key) { self.raw = raw }
    private var fields: [UInt32] { [raw.addr.0, raw.addr.1, raw.addr.2, raw.addr.3, UInt32(raw.family)] }
    static func == (lhs: AddrKey, rhs: AddrKey) -> Bool { lhs.fields == rhs.fields }
    func hash(into hasher: inout Hasher) { hasher.combine(fields) }
}

/// lbctl decap attach and detach.
public enum Decap {
    public struct Outcome: Sendable {
        public var interface: NetworkInterface
        public var mode: XDPMode
        public var locals: [IPAddress]
        public var vips: [IPAddress]
        public var alreadyAttached: Bool
    }

    /// Attaches the decapsulator pinned at `pinPath` (loading it first if
    /// needed) to `interface` and replaces its address sets. Without
    /// `locals`, every address on the interface; without `vips`, every
    /// address on `lo` except 127.0.0.0/8 and ::1. Re-running it only
    /// rewrites the sets; another program on the interface is an error.
    public static func attach(interface name: String, mode: XDPMode, vips: [IPAddress]?, locals: [IPAddress]?,
                              pinPath: String) throws(ControlError) -> Outcome {
        let interface = try NetworkInterface.named(name)
        // Everything that can be refused is checked before anything is loaded or written.
        let vipSet = (vips ?? loopbackVIPs()).uniqueSorted()
        guard !vipSet.isEmpty else { throw .badInput("no VIP on lo and no --vip given") }
        let localSet = (locals ?? addresses(of: name)).uniqueSorted()
        guard !localSet.isEmpty else { throw .badInput("no address on \(name) and no --local given") }
        for (set, what) in [(vipSet, "--vip"), (localSet, "--local")] where set.count > Int(SL_MAX_DECAP_ADDRS) {
            throw .badInput("\(what): \(set.count) addresses, at most \(SL_MAX_DECAP_ADDRS) are supported")
        }
        let existing = try XDPHook.query(interface)
        let pinned: UInt32? = DecapDataplane.isPinned(at: pinPath)
            ? try XDPHook.programID(try DecapDataplane.open(pinPath: pinPath).program) : nil
        try XDPHook.refuseOther(existing, ours: pinned, on: interface)

        let dataplane = try DecapDataplane.openOrLoad(pinPath: pinPath)
        do {
            try dataplane.setAddresses(locals: localSet, vips: vipSet)
            if let existing {
                return Outcome(interface: interface, mode: existing.mode, locals: localSet, vips: vipSet, alreadyAttached: true)
            }
            try XDPHook.attach(dataplane.program, to: interface, mode: mode)
        } catch {
            // A decapsulator loaded just now for this attach is not left pinned behind.
            if pinned == nil { DecapDataplane.removePins(at: pinPath) }
            throw error
        }
        return Outcome(interface: interface, mode: mode, locals: localSet, vips: vipSet, alreadyAttached: false)
    }

    public struct DetachOutcome: Sendable {
        public var wasAttached: Bool
        public var pinsRemoved: Bool
        /// Interfaces of this namespace still running the pinned decapsulator.
        public var stillAttached: [String]
    }

    /// Detaches the decapsulator from `interface` and, when no interface of
    /// this namespace still runs it, removes its pins (the balancer's stay).
    public static func detach(interface name: String, pinPath: String) throws(ControlError) -> DetachOutcome {
        let interface = try NetworkInterface.named(name)
        let ours: UInt32? = DecapDataplane.isPinned(at: pinPath)
            ? try XDPHook.programID(try DecapDataplane.open(pinPath: pinPath).program) : nil
        let wasAttached = try XDPHook.detach(interface, ours: ours, what: "the Sluice decapsulator pinned at \(pinPath)")
        let still = ours.map { id in XDPHook.attachedInterfaces(programID: id).map(\.name) } ?? []
        let remove = ours != nil && still.isEmpty
        if remove { DecapDataplane.removePins(at: pinPath) }
        return DetachOutcome(wasAttached: wasAttached, pinsRemoved: remove, stillAttached: still)
    }

    /// Every IPv4 and IPv6 address configured on `interface` in this
    /// network namespace (getifaddrs(3)).
    public static func addresses(of interface: String) -> [IPAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(first) }
        var result: [IPAddress] = []
        var entry: UnsafeMutablePointer<ifaddrs>? = first
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard let name = current.pointee.ifa_name, String(cString: name) == interface,
                  let address = current.pointee.ifa_addr else { continue }
            switch Int32(address.pointee.sa_family) {
            case AF_INET:
                let bytes = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    withUnsafeBytes(of: sin.pointee.sin_addr) { Array($0) }
                }
                if let ip = IPAddress(bytes: bytes) { result.append(ip) }
            case AF_INET6:
                let bytes = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    withUnsafeBytes(of: sin6.pointee.sin6_addr) { Array($0) }
                }
                if let ip = IPAddress(bytes: bytes) { result.append(ip) }
            default:
                continue
            }
        }
        return result
    }

    /// The addresses on `lo` that can be VIPs: all but 127.0.0.0/8 and ::1.
    public static func loopbackVIPs() -> [IPAddress] {
        addresses(of: "lo").filter { address in
            switch address.family {
            case .v4: address.bytes[0] != 127
            case .v6: address != IPAddress("::1")
            }
        }
    }
}

extension Array where Element == IPAddress {
    func uniqueSorted() -> [IPAddress] { Set(self).sorted() }
}
