// The backend side of direct server return (lbctl decap): the pinned sl_decap program, its address maps and GUE port, attach and detach.
import CLibbpf
import CSluice
import Glibc
import SluiceBPF
import SluiceCore

/// The decapsulation program and its address maps under one pin path (the same
/// directory the balancer uses; the names do not collide). The maps are pinned by name
/// (LIBBPF_PIN_BY_NAME), the program as `sl_decap`.
public final class DecapDataplane: Sendable {
    /// The decapsulator's maps (bpf/decap_maps.h).
    package enum Map: String, MapList {
        case locals = "sl_decap_locals"
        case vips = "sl_decap_vips"
        case config = "sl_decap_config"
        case stats = "sl_decap_stats"

        package static let object = ObjectKind(what: "decapsulator", objectName: "sluice_decap", program: SL_PROG_DECAP,
                                               loadCommand: "lbctl decap attach IFACE", elf: { EmbeddedObjects.decap })
    }

    /// The two address sets a tunnel is checked against.
    public enum AddressSet: Sendable {
        /// Outer destinations that are this host.
        case locals
        /// Inner destinations served here.
        case vips
        var map: Map { self == .locals ? .locals : .vips }
    }

    fileprivate let pinned: PinnedObject<Map>

    fileprivate init(_ pinned: PinnedObject<Map>) { self.pinned = pinned }

    public var pinPath: String { pinned.pinPath }
    package var program: BPFProgram { pinned.program }
    package subscript(_ map: Map) -> BPFMap { pinned[map] }

    /// True when a decapsulator is pinned at `pinPath`.
    public static func isPinned(at pinPath: String) -> Bool { PinnedObject<Map>.isPinned(at: pinPath) }

    /// Opens what is pinned at `pinPath`.
    public static func open(pinPath: String) throws(ControlError) -> DecapDataplane {
        DecapDataplane(try PinnedObject<Map>.open(at: pinPath))
    }

    /// Opens the pinned decapsulator, or loads the embedded object and pins it.
    public static func openOrLoad(pinPath: String) throws(ControlError) -> DecapDataplane {
        DecapDataplane(try PinnedObject<Map>.openOrLoad(at: pinPath))
    }

    /// Removes the decapsulator's pins (never the balancer's), and the
    /// directory if it is then empty.
    public static func removePins(at pinPath: String) { PinnedObject<Map>.removePins(at: pinPath) }

    /// Replaces the contents of both address sets: new addresses are added
    /// before stale ones are removed, so an address in both sets is never missing.
    public func setAddresses(locals: [IPAddress], vips: [IPAddress]) throws(ControlError) {
        for (set, addresses, what) in [(AddressSet.locals, locals, "local"), (.vips, vips, "VIP")] {
            let unique = Set(addresses)
            guard unique.count <= Int(SL_MAX_DECAP_ADDRS) else {
                throw .badInput("\(unique.count) \(what) addresses: at most \(SL_MAX_DECAP_ADDRS) are supported")
            }
            let map = self[set.map]
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

    /// The UDP destination port of GUE tunnels to strip; 0 turns GUE stripping off.
    public func setGUEPort(_ port: UInt16) throws(ControlError) {
        var config = sl_decap_config()
        config.gue_port = port.bigEndian
        do { try self[.config].update(UInt32(0), config) } catch {
            throw .bpf(error, while: "writing \(Map.config.rawValue)")
        }
    }

    /// The GUE port being stripped (0: none).
    public func guePort() throws(ControlError) -> UInt16 {
        do { return UInt16(bigEndian: try self[.config].lookup(UInt32(0), as: sl_decap_config.self)?.gue_port ?? 0) } catch {
            throw .bpf(error, while: "reading \(Map.config.rawValue)")
        }
    }

    /// The addresses in one of the sets, sorted.
    public func addresses(in set: AddressSet) throws(ControlError) -> [IPAddress] {
        let map = self[set.map]
        do {
            return try map.keys(as: sl_addr_key.self).compactMap { IPAddress(words: $0.addr, family: $0.family) }.sorted()
        } catch {
            throw .bpf(error, while: "reading \(map.name)")
        }
    }

    /// The counters, summed over CPUs.
    public func counters() throws(ControlError) -> DecapCounters {
        do {
            var total = DecapCounters()
            for cpu in try self[.stats].lookupPerCPU(UInt32(0), as: sl_decap_stats.self) {
                total.decapsulated &+= cpu.decapsulated
                total.notLocal &+= cpu.not_local
                total.notVIP &+= cpu.not_vip
                total.malformed &+= cpu.malformed
                total.passed &+= cpu.passed
            }
            return total
        } catch {
            throw .bpf(error, while: "reading \(Map.stats.rawValue)")
        }
    }
}

/// What the decapsulator did with the packets it saw (sl_decap_stats, summed over CPUs).
public struct DecapCounters: Sendable, Equatable {
    /// Tunnels stripped and passed on as their inner packet.
    public var decapsulated: UInt64 = 0
    /// Tunnels to another host's address, passed untouched.
    public var notLocal: UInt64 = 0
    /// Tunnels to us whose inner destination is no VIP here, passed untouched.
    public var notVIP: UInt64 = 0
    /// Tunnels to us with a cut or inconsistent inner header, dropped.
    public var malformed: UInt64 = 0
    /// Everything else, passed untouched.
    public var passed: UInt64 = 0

    public init(decapsulated: UInt64 = 0, notLocal: UInt64 = 0, notVIP: UInt64 = 0, malformed: UInt64 = 0, passed: UInt64 = 0) {
        self.decapsulated = decapsulated
        self.notLocal = notLocal
        self.notVIP = notVIP
        self.malformed = malformed
        self.passed = passed
    }

    /// What happened between two readings.
    public static func - (lhs: DecapCounters, rhs: DecapCounters) -> DecapCounters {
        DecapCounters(decapsulated: lhs.decapsulated &- rhs.decapsulated, notLocal: lhs.notLocal &- rhs.notLocal,
                      notVIP: lhs.notVIP &- rhs.notVIP, malformed: lhs.malformed &- rhs.malformed,
                      passed: lhs.passed &- rhs.passed)
    }
}

extension DecapCounters: CustomStringConvertible {
    public var description: String {
        "decapsulated=\(decapsulated) not_local=\(notLocal) not_vip=\(notVIP) malformed=\(malformed) passed=\(passed)"
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
        /// The GUE port stripped (0: GUE off).
        public var guePort: UInt16
        public var alreadyAttached: Bool
    }

    /// Attaches the decapsulator pinned at `pinPath` (loading it first if
    /// needed) to `interface` and replaces its address sets. Without
    /// `locals`, every address on the interface; without `vips`, every
    /// address on `lo` except 127.0.0.0/8 and ::1. `guePort` is the UDP port of
    /// GUE tunnels to strip (0: none). Re-running it only rewrites the sets and
    /// the port; another program on the interface is an error.
    public static func attach(interface name: String, mode: XDPMode, vips: [IPAddress]?, locals: [IPAddress]?,
                              guePort: UInt16 = UInt16(SL_GUE_DEFAULT_PORT), pinPath: String) throws(ControlError) -> Outcome {
        _ = try NetworkInterface.named(name)  // refuses an unknown interface before anything is written
        // Everything that can be refused is checked before anything is loaded or written.
        let vipSet = (vips ?? loopbackVIPs()).uniqueSorted()
        guard !vipSet.isEmpty else { throw .badInput("no VIP on lo and no --vip given") }
        let localSet = (locals ?? addresses(of: name)).uniqueSorted()
        guard !localSet.isEmpty else { throw .badInput("no address on \(name) and no --local given") }
        for (set, what) in [(vipSet, "--vip"), (localSet, "--local")] where set.count > Int(SL_MAX_DECAP_ADDRS) {
            throw .badInput("\(what): \(set.count) addresses, at most \(SL_MAX_DECAP_ADDRS) are supported")
        }
        let check = try PinnedObject<DecapDataplane.Map>.checkAttach(name, pinPath: pinPath)
        let outcome = try PinnedObject<DecapDataplane.Map>.finishAttach(check, try DecapDataplane.openOrLoad(pinPath: pinPath).pinned,
                                                                         mode: mode) { pinned throws(ControlError) in
            let decap = DecapDataplane(pinned)
            try decap.setAddresses(locals: localSet, vips: vipSet)
            try decap.setGUEPort(guePort)
        }
        return Outcome(interface: outcome.interface, mode: outcome.mode, locals: localSet, vips: vipSet, guePort: guePort,
                       alreadyAttached: outcome.alreadyAttached)
    }

    /// Detaches the decapsulator from `interface` and, when no interface of this
    /// namespace still runs it, removes its pins (the balancer's stay).
    public static func detach(interface name: String, pinPath: String) throws(ControlError) -> DetachOutcome {
        try PinnedObject<DecapDataplane.Map>.detach(interface: name, pinPath: pinPath)
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
