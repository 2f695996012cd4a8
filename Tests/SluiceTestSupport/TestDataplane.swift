// One balancer per test: the embedded object loaded into a private bpffs,
// the gateway MAC set, a service file applied through the real Applier, and
// frames run through BPF_PROG_TEST_RUN. Also the Swift model of where the data
// plane must send a flow, the node counters as a Swift value, and the kernel's
// BTF view of a map (for the one-definition layout checks).

import CLibbpf
import CSluice
import Glibc
import SluiceBPF
import SluiceControl
import SluiceCore

/// XDP actions, as the kernel numbers them (enum xdp_action).
public enum XDPVerdict: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case aborted = 0, drop, pass, tx, redirect

    public var description: String { CounterSnapshot.verdictNames[Int(rawValue)] }

    /// The kernel header's values, in case order, for a test to compare.
    public static var kernelValues: [UInt32] {
        [XDP_ABORTED.rawValue, XDP_DROP.rawValue, XDP_PASS.rawValue, XDP_TX.rawValue, XDP_REDIRECT.rawValue]
    }
}

/// enum sl_drop_reason.
public enum DropReason: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case malformed = 0, truncated, noBackend, noSource, noGateway, encap, tooBig, noNeighbour, noSNAT, snatExhausted, proxy,
         natBudget

    public var description: String { CounterSnapshot.dropNames[Int(rawValue)] }
}

/// The product's node counters (`lbctl stats`' top level) as tests compare them: a test
/// states the whole expected delta, so a counter that moves when it should not fails it too.
public typealias NodeStats = NodeCounters

extension NodeCounters {
    /// One packet's expected effect: its verdict (and drop reason), plus the flow counters named.
    public init(_ verdict: XDPVerdict, drop: DropReason? = nil, newFlows: UInt64 = 0, ctHits: UInt64 = 0,
                ctMisses: UInt64 = 0, ctUnconfirmed: UInt64 = 0, fragments: UInt64 = 0, ipOptions: UInt64 = 0,
                mssClamped: UInt64 = 0, icmpTooBig: UInt64 = 0, icmpSteered: UInt64 = 0, natCreated: UInt64 = 0,
                natReplies: UInt64 = 0, natICMP: UInt64 = 0, snatCollisions: UInt64 = 0, proxyHeaders: UInt64 = 0,
                proxyResent: UInt64 = 0, proxyTFOTrimmed: UInt64 = 0, proxyMidstream: UInt64 = 0, packets: UInt64 = 1) {
        self.init()
        verdicts[verdict.description] = packets
        if let drop { drops[drop.description] = packets }
        self.newFlows = newFlows
        conntrackHits = ctHits
        conntrackMisses = ctMisses
        conntrackUnconfirmed = ctUnconfirmed
        self.fragments = fragments
        self.ipOptions = ipOptions
        self.mssClamped = mssClamped
        self.icmpTooBig = icmpTooBig
        self.icmpSteered = icmpSteered
        self.natCreated = natCreated
        self.natReplies = natReplies
        self.natICMP = natICMP
        self.snatCollisions = snatCollisions
        self.proxyHeaders = proxyHeaders
        self.proxyResent = proxyResent
        self.proxyTFOTrimmed = proxyTFOTrimmed
        self.proxyMidstream = proxyMidstream
    }

    public subscript(verdict: XDPVerdict) -> UInt64 { verdicts[verdict.description, default: 0] }
    public subscript(drop reason: DropReason) -> UInt64 { drops[reason.description, default: 0] }
    public var ctHits: UInt64 { conntrackHits }
    public var ctMisses: UInt64 { conntrackMisses }
    public var ctUnconfirmed: UInt64 { conntrackUnconfirmed }
}

/// Where the data plane must place a new flow, computed from the service file
/// alone: FlowHash -> slot -> the Maglev table built exactly as the Applier
/// builds it (backends in file order, keyed by address, size from the node).
public struct MaglevModel: Sendable {
    private struct VIPKey: Hashable, Sendable {
        var vip: IPAddress
        var port: UInt16
        var proto: UInt8
    }

    public let tableSize: Int
    private let services: [VIPKey: (service: Service, table: [UInt32])]

    public init(_ file: ServiceFile) {
        tableSize = file.node.maglevTableSize
        var services: [VIPKey: (service: Service, table: [UInt32])] = [:]
        for service in file.services {
            let backends = service.backends.map { MaglevBackend(key: MaglevKey.forBackend($0.address), weight: $0.weight) }
            services[VIPKey(vip: service.vip, port: service.port, proto: service.proto.number)] =
                (service, Maglev.table(for: backends, size: file.node.maglevTableSize))
        }
        self.services = services
    }

    /// The service whose VIP the flow is addressed to.
    public func service(for flow: IPFlow) -> Service? {
        services[VIPKey(vip: flow.destination, port: flow.destinationPort, proto: flow.protocolNumber)]?.service
    }

    /// The flow's Maglev slot.
    public func slot(for flow: IPFlow) -> Int {
        let hash = FlowHash.hash(source: flow.source, sourcePort: flow.sourcePort,
                                 destinationPort: flow.destinationPort, protocolNumber: flow.protocolNumber)
        return FlowHash.slot(hash: hash, tableSize: tableSize)
    }

    /// The backend Maglev gives a new flow; nil when the flow is for no VIP or
    /// every backend of its service is drained.
    public func backend(for flow: IPFlow) -> Backend? {
        guard let entry = services[VIPKey(vip: flow.destination, port: flow.destinationPort, proto: flow.protocolNumber)]
        else { return nil }
        let index = entry.table[slot(for: flow)]
        return index == Maglev.noBackend ? nil : entry.service.backends[Int(index)]
    }

    /// The service's table: slot -> index into its backends (or Maglev.noBackend).
    public func table(vip: IPAddress, port: UInt16, proto: L4Protocol) -> [UInt32]? {
        services[VIPKey(vip: vip, port: port, proto: proto.number)]?.table
    }
}

/// BPF_MAP_TYPE_ARRAY_OF_MAPS, for comparing with `BPFMap.info.type.rawValue`.
public let mapTypeArrayOfMaps = BPF_MAP_TYPE_ARRAY_OF_MAPS.rawValue
public let mapTypeRingBuffer = BPF_MAP_TYPE_RINGBUF.rawValue

public struct TestDataplaneError: Error, CustomStringConvertible {
    public let description: String
}

public final class TestDataplane {
    /// The next-hop MAC every test data plane is configured with.
    public static let gatewayMAC: [UInt8] = [0x02, 0x47, 0x57, 0x00, 0x00, 0x01]
    public static let conntrackSize: UInt32 = 65536
    /// sl_nat's size: smaller than conntrack's, as hundreds of test balancers exist at once.
    public static let natSize: UInt32 = 8192

    public let mount: BPFFSMount
    public let pinPath: String
    public let dataplane: Dataplane
    /// The last file applied (empty before the first apply).
    public private(set) var serviceFile = ServiceFile(services: [])
    /// The model of `serviceFile`.
    public private(set) var model = MaglevModel(ServiceFile(services: []))
    private var closed = false

    /// Loads a fresh balancer into its own bpffs; sets the gateway MAC unless
    /// `gateway` is nil; applies `yaml` if given.
    public init(yaml: String? = nil, gateway: [UInt8]? = TestDataplane.gatewayMAC,
                conntrackSize: UInt32 = TestDataplane.conntrackSize, natSize: UInt32 = TestDataplane.natSize) throws {
        let mount = try BPFFSMount()
        self.mount = mount
        pinPath = mount.path + "/lb"
        do {
            dataplane = try Dataplane.openOrLoad(pinPath: pinPath, conntrackSize: conntrackSize, natSize: natSize)
        } catch {
            Dataplane.removePins(at: mount.path + "/lb")
            mount.close()
            throw error
        }
        if let gateway { try setGateway(gateway) }
        if let yaml { try apply(yaml: yaml) }
    }

    /// Loads and configures a balancer as `init` does, on a thread of its own, so the
    /// verifier's work does not hold a thread of the concurrency pool.
    public static func make(yaml: String? = nil, gateway: [UInt8]? = TestDataplane.gatewayMAC,
                            conntrackSize: UInt32 = TestDataplane.conntrackSize,
                            natSize: UInt32 = TestDataplane.natSize) async throws -> TestDataplane {
        try await offPool { try TestDataplane(yaml: yaml, gateway: gateway, conntrackSize: conntrackSize, natSize: natSize) }
    }

    deinit { close() }

    /// Removes the pins and the private bpffs. Safe to call twice.
    public func close() {
        guard !closed else { return }
        closed = true
        Dataplane.removePins(at: pinPath)
        mount.close()
    }

    /// Writes the next-hop MAC into sl_config, keeping the rest.
    public func setGateway(_ mac: [UInt8]) throws {
        precondition(mac.count == 6)
        try dataplane.setGateway(MACAddress(bytes: mac)!)
    }

    /// Parses (and validates) `yaml` with ServiceFileParser and applies it.
    @discardableResult
    public func apply(yaml: String) throws -> ApplyResult {
        try apply(ServiceFileParser.parse(yaml, file: "test.yaml"))
    }

    /// Applies `file`; `health` as an agent passes its verdicts (nil: keep the maps' flags).
    @discardableResult
    public func apply(_ file: ServiceFile, health: HealthVerdicts? = nil) throws -> ApplyResult {
        let result = try dataplane.apply(file, health: health)
        serviceFile = file
        model = MaglevModel(file)
        return result
    }

    /// One BPF_PROG_TEST_RUN pass of the balancer over `frame`.
    public func run(_ frame: [UInt8]) throws -> (verdict: UInt32, output: [UInt8]) {
        let result = try dataplane.program.testRun(frame)
        return (result.verdict, result.output)
    }

    /// The node-wide counters, summed over CPUs.
    public func nodeStats() throws -> NodeStats {
        try dataplane.nodeCounters()
    }

    public func appliedState() throws -> AppliedState {
        try dataplane.appliedState()
    }

    /// What `lbctl stats` reports: node, per-service and per-backend counters.
    public func counters() throws -> CounterSnapshot {
        try dataplane.counters()
    }

    /// The id of the inner map sl_maglev holds for a service slot (nil if none).
    public func maglevInnerMapID(slot: UInt32) throws -> UInt32? {
        try dataplane[.maglev].lookup(slot, as: UInt32.self)
    }

    /// Every slot of the inner Maglev table with this id, for the table size of the
    /// last applied service file.
    public func maglevTable(mapID: UInt32) throws -> [UInt32] {
        try MapByID(id: mapID).maglevSlots(tableSize: serviceFile.node.maglevTableSize)
    }

    /// Holds a reference to a map by id, e.g. an inner Maglev table that is
    /// about to be replaced, so it can be read after the switch.
    public final class MapByID {
        public let fd: Int32
        public init(id: UInt32) throws {
            fd = bpf_map_get_fd_by_id(id)
            guard fd >= 0 else { throw TestDataplaneError(description: "bpf_map_get_fd_by_id(\(id)): \(String(cString: strerror(errno)))") }
        }
        deinit { Glibc.close(fd) }

        /// Slots 0..<tableSize of an inner Maglev table (struct sl_maglev_pair entries),
        /// read one entry at a time; throws unless the table has exactly the entries a
        /// table of that size needs and an odd size's unused last half is SL_NO_BACKEND.
        public func maglevSlots(tableSize: Int) throws -> [UInt32] {
            var info = bpf_map_info()
            var len = UInt32(MemoryLayout<bpf_map_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else {
                throw TestDataplaneError(description: "bpf_obj_get_info_by_fd: \(String(cString: strerror(errno)))")
            }
            guard info.value_size == MemoryLayout<sl_maglev_pair>.size, Int(info.max_entries) == (tableSize + 1) / 2 else {
                throw TestDataplaneError(description: "a table of \(tableSize) slots has \(info.max_entries) entries of \(info.value_size) bytes")
            }
            var slots: [UInt32] = []
            slots.reserveCapacity(2 * Int(info.max_entries))
            for index in 0..<info.max_entries {
                var key = index
                var pair = sl_maglev_pair()
                guard bpf_map_lookup_elem(fd, &key, &pair) == 0 else {
                    throw TestDataplaneError(description: "lookup of entry \(index): \(String(cString: strerror(errno)))")
                }
                slots += [pair.backend.0, pair.backend.1]
            }
            if slots.count > tableSize {
                guard slots.removeLast() == SL_NO_BACKEND else {
                    throw TestDataplaneError(description: "the unused last half of an odd table is not SL_NO_BACKEND")
                }
            }
            return slots
        }
    }
}

// MARK: - The kernel's view of a map's key and value types (BTF)

/// A BTF type as the kernel holds it for a loaded map: its resolved name and
/// size and, for a struct, each member's name and byte offset.
public struct BTFTypeLayout: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var size: Int
    public var members: [(name: String, offset: Int)]

    public init(name: String, size: Int, members: [(name: String, offset: Int)]) {
        self.name = name
        self.size = size
        self.members = members
    }

    public static func == (lhs: BTFTypeLayout, rhs: BTFTypeLayout) -> Bool {
        lhs.name == rhs.name && lhs.size == rhs.size
            && lhs.members.map(\.name) == rhs.members.map(\.name) && lhs.members.map(\.offset) == rhs.members.map(\.offset)
    }

    public var description: String {
        "\(name) (\(size) bytes) { " + members.map { "\($0.name)@\($0.offset)" }.joined(separator: ", ") + " }"
    }
}

/// Reads the BTF the kernel keeps for `map` and describes its key and value
/// types (typedefs and qualifiers resolved). Nil for a side without BTF.
public func mapBTFLayout(_ map: BPFMap) throws -> (key: BTFTypeLayout?, value: BTFTypeLayout?) {
    func fail(_ what: String) -> TestDataplaneError {
        TestDataplaneError(description: "\(map.name): \(what): \(String(cString: strerror(errno)))")
    }
    var info = bpf_map_info()
    var len = UInt32(MemoryLayout<bpf_map_info>.size)
    guard bpf_obj_get_info_by_fd(map.fd, &info, &len) == 0 else { throw fail("bpf_obj_get_info_by_fd") }
    guard info.btf_id != 0 else { return (nil, nil) }
    let btfFD = bpf_btf_get_fd_by_id(info.btf_id)
    guard btfFD >= 0 else { throw fail("bpf_btf_get_fd_by_id") }
    defer { Glibc.close(btfFD) }

    var btfInfo = bpf_btf_info()
    var btfLen = UInt32(MemoryLayout<bpf_btf_info>.size)
    guard bpf_obj_get_info_by_fd(btfFD, &btfInfo, &btfLen) == 0 else { throw fail("BTF info") }
    var raw = [UInt8](repeating: 0, count: Int(btfInfo.btf_size))
    let size = btfInfo.btf_size
    btfInfo = bpf_btf_info()
    btfInfo.btf_size = size
    let rc = raw.withUnsafeMutableBytes { buffer -> Int32 in
        btfInfo.btf = UInt64(UInt(bitPattern: buffer.baseAddress))
        return bpf_obj_get_info_by_fd(btfFD, &btfInfo, &btfLen)
    }
    guard rc == 0 else { throw fail("BTF data") }
    let btf = try RawBTF(raw)
    let keyID = info.btf_key_type_id, valueID = info.btf_value_type_id
    return (keyID == 0 ? nil : try btf.layout(of: keyID), valueID == 0 ? nil : try btf.layout(of: valueID))
}

/// A minimal reader of the BTF wire format (linux/btf.h), enough to resolve
/// typedefs and read struct members.
struct RawBTF {
    struct TypeEntry {
        var nameOffset: UInt32
        var kind: UInt32
        var vlen: Int
        var kindFlag: Bool
        var sizeOrType: UInt32
        var dataOffset: Int  // where the kind-specific data starts, in `bytes`
    }

    let bytes: [UInt8]
    let strings: Int
    var types: [TypeEntry] = []  // index = type id; 0 is void

    init(_ bytes: [UInt8]) throws {
        self.bytes = bytes
        func u32(_ at: Int) -> UInt32 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) } }
        guard bytes.count >= 24, bytes[0] == 0x9f, bytes[1] == 0xeb else {
            throw TestDataplaneError(description: "BTF: bad magic")
        }
        let headerLength = Int(u32(4))
        let typeOffset = headerLength + Int(u32(8)), typeLength = Int(u32(12))
        strings = headerLength + Int(u32(16))
        types.append(TypeEntry(nameOffset: 0, kind: 0, vlen: 0, kindFlag: false, sizeOrType: 0, dataOffset: 0))
        var at = typeOffset
        while at < typeOffset + typeLength {
            let info = u32(at + 4)
            let kind = (info >> 24) & 0x1f
            let vlen = Int(info & 0xffff)
            let entry = TypeEntry(nameOffset: u32(at), kind: kind, vlen: vlen, kindFlag: info >> 31 != 0,
                                  sizeOrType: u32(at + 8), dataOffset: at + 12)
            types.append(entry)
            at += 12
            switch kind {
            case 1, 14, 17: at += 4               // INT, VAR, DECL_TAG
            case 3: at += 12                      // ARRAY
            case 4, 5, 15, 19: at += 12 * vlen    // STRUCT, UNION, DATASEC, ENUM64
            case 6, 13: at += 8 * vlen            // ENUM, FUNC_PROTO
            default: break                        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            }
        }
    }

    private func u32(_ at: Int) -> UInt32 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) }
    }

    func name(_ offset: UInt32) -> String {
        let start = strings + Int(offset)
        let end = bytes[start...].firstIndex(of: 0) ?? bytes.count
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    /// Skips typedefs and qualifiers (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG).
    func resolve(_ id: UInt32) -> UInt32 {
        var id = id
        while Int(id) < types.count, [8, 9, 10, 11, 18].contains(types[Int(id)].kind) {
            id = types[Int(id)].sizeOrType
        }
        return id
    }

    func size(of id: UInt32) throws -> Int {
        let id = resolve(id)
        let t = types[Int(id)]
        switch t.kind {
        case 1, 4, 5, 6, 19: return Int(t.sizeOrType)  // INT, STRUCT, UNION, ENUM, ENUM64
        case 2: return 8                                // PTR
        case 3:                                         // ARRAY: elem type, index type, nelems
            return try size(of: u32(t.dataOffset)) * Int(u32(t.dataOffset + 8))
        default: throw TestDataplaneError(description: "BTF: no size for kind \(t.kind)")
        }
    }

    func layout(of id: UInt32) throws -> BTFTypeLayout {
        let id = resolve(id)
        let t = types[Int(id)]
        var members: [(name: String, offset: Int)] = []
        if t.kind == 4 || t.kind == 5 {
            for i in 0..<t.vlen {
                let at = t.dataOffset + 12 * i
                let rawOffset = u32(at + 8)
                let bitOffset = t.kindFlag ? rawOffset & 0xff_ffff : rawOffset
                members.append((name(u32(at)), Int(bitOffset / 8)))
            }
        }
        return BTFTypeLayout(name: name(t.nameOffset), size: try size(of: id), members: members)
    }
}
