// Turns a validated service file into map writes: plan every slot first, then write in an order
// that never lets a packet see a half-built service.
import CLibbpf
import CSluice
import SluiceBPF
import SluiceCore

public struct ApplyResult: Sendable {
    public init(diff: ConfigDiff, tablesWritten: Int, bytesWritten: Int, healthChanged: Bool = false,
                unresolved: [UnresolvedNeighbour] = [], disruption: [ServiceDisruption] = []) {
        self.diff = diff
        self.disruption = disruption
        self.tablesWritten = tablesWritten
        self.bytesWritten = bytesWritten
        self.healthChanged = healthChanged
        self.unresolved = unresolved
    }

    /// What changes in the data plane's configuration (health checks are not part of it).
    public var diff: ConfigDiff
    /// A backend's health state, or whether it is left out of its table for it, changes.
    public var healthChanged: Bool
    /// Maglev tables built and switched in.
    public var tablesWritten: Int
    /// Bytes written into maps (tables, backends, services, VIPs).
    public var bytesWritten: Int
    /// l2dsr and NAT backends applied without a next-hop MAC (the neighbour did not answer in time).
    public var unresolved: [UnresolvedNeighbour]
    /// On a dry run: what the change would disturb in each service served now that it changes.
    public var disruption: [ServiceDisruption]
}

/// What an agent's health checks found, handed to `Applier.apply`.
public struct HealthVerdicts: Sendable, Equatable {
    /// Every service the agent checks, by name, with the addresses of its backends found down.
    public var down: [String: Set<IPAddress>]

    public init(down: [String: Set<IPAddress>]) {
        self.down = down
    }
}

enum Applier {
    /// Applies `desired` (its health checks aside: the maps keep none). With `health`, the
    /// backends' health flags are set from it and down backends are left out of their tables
    /// (HealthPolicy); without, the flags the maps hold are kept. Nothing is written when
    /// nothing changes or on a dry run. l2dsr and NAT services are checked against the
    /// interfaces the balancer runs on first (bad input when it is not attached or a backend
    /// cannot be reached through them) and, unless on a dry run, their next hops' MACs
    /// resolved (up to a second).
    static func apply(_ desired: ServiceFile, to dataplane: Dataplane, dryRun: Bool = false,
                             health: HealthVerdicts? = nil) throws(ControlError) -> ApplyResult {
        let state = try AppliedState.read(from: dataplane)
        let target = desired.withoutHealthChecks
        let attached = XDPHook.attachedInterfaces(programID: try dataplane.programID()).map(\.name)
        var nextHops = try NextHops(checking: target, attached: attached)
        if !dryRun { nextHops.resolve() }
        let diff = ConfigDiff.between(current: state.serviceFile, desired: target)
        let plan = try Plan(state: state, desired: target, health: health, hops: { nextHops.slotFields(for: $0) },
                            interfaceMTU: attached.compactMap { NetworkInterface.mtu(of: $0) }.min())
        let unresolved = dryRun ? [] : nextHops.unresolved(in: target)
        if dryRun {
            return ApplyResult(diff: diff, tablesWritten: 0, bytesWritten: 0, healthChanged: plan.healthChanged,
                               disruption: try DisruptionPreview.compute(plan, size: target.node.maglevTableSize, dataplane: dataplane))
        }
        guard !diff.isEmpty || plan.hasWrites else {
            return ApplyResult(diff: diff, tablesWritten: 0, bytesWritten: 0, healthChanged: plan.healthChanged)
        }
        var writer = Writer(dataplane: dataplane)
        do {
            try writer.write(plan, state: state, desired: target)
        } catch {
            throw .bpf(error, while: "applying the configuration to \(dataplane.pinPath)")
        }
        return ApplyResult(diff: diff, tablesWritten: writer.tables, bytesWritten: writer.bytes,
                           healthChanged: plan.healthChanged, unresolved: unresolved)
    }
}

/// Slot and backend-id assignments for the desired set, decided before any write.
struct Plan {
    struct Entry {
        var service: Service
        var slot: UInt32
        var backendIDs: [UInt32]          // parallel to service.backends
        var flags: [UInt8]                // parallel to service.backends: sl_backend.flags
        var slots: [sl_backend]           // parallel to service.backends: what sl_backends must hold
        var newBackendIDs: Set<UInt32>
        var needsTable: Bool
        /// Only the forwarding mode or the client address changed: sl_service_info is
        /// rewritten (and for the client address sl_vips), the table stays.
        var needsInfo: Bool
        /// Only the client address changed among what sl_vips holds: the VIP is rewritten.
        var needsVIP: Bool
        var isNewSlot: Bool
        var previous: AppliedService?
    }
    var entries: [Entry] = []
    var removedServices: [AppliedService] = []
    var freedBackendIDs: [UInt32] = []
    /// In use for no service (AppliedState.orphanBackendIDs): released before anything else.
    var orphanBackendIDs: [UInt32] = []
    /// A kept backend's flags change (new backends are in the diff anyway).
    var healthChanged = false
    /// sl_config as the desired set wants it.
    var config: sl_config
    /// sl_snat_pools as the desired set wants them: [IPv4, IPv6].
    var pools: [sl_snat_pool]
    /// Something must be written even when the diff is empty: sl_config (an interface's MTU,
    /// the first GUE port) or a backend slot (health flags, a MAC).
    var hasWrites = false

    /// `hops`: the l2dsr and NAT backends' next hops found now, by address; `interfaceMTU`:
    /// the smallest MTU of the interfaces the balancer is attached to.
    init(state: AppliedState, desired: ServiceFile, health: HealthVerdicts?,
         hops: (IPAddress) -> BackendHop? = { _ in nil }, interfaceMTU: Int? = nil) throws(ControlError) {
        config = Self.config(state.config, node: desired.node, interfaceMTU: interfaceMTU)
        config.setNAT(desired.services.contains { $0.forwarding.translates } || Writer.holdsNATSlots(state.backendSlots))
        pools = SNATPools.arrange(current: state.snatPools, node: desired.node)
        hasWrites = !bytewiseEqual(config, state.config) || !zip(pools, state.snatPools).allSatisfy { bytewiseEqual($0, $1) }
        let size = desired.node.maglevTableSize
        let desiredNames = Set(desired.services.map(\.name))
        removedServices = state.services.filter { !desiredNames.contains($0.service.name) }

        var usedSlots = Set(state.services.map(\.slot))  // a removed service's slot is cleared after the writes: not reusable yet
        var freeSlots = (0..<UInt32(SL_MAX_VIPS)).lazy.filter { !usedSlots.contains($0) }.makeIterator()
        var allocator = BackendAllocator(slots: state.backendSlots)
        orphanBackendIDs = state.orphanBackendIDs
        hasWrites = hasWrites || !orphanBackendIDs.isEmpty

        for service in desired.services {
            let previous = state.service(named: service.name)
            let slot: UInt32
            if let previous { slot = previous.slot } else {
                guard let free = freeSlots.next() else { throw .badInput("services: more than \(SL_MAX_VIPS) services") }
                slot = free
                usedSlots.insert(free)
            }
            let known = Dictionary(uniqueKeysWithValues: (previous?.backends ?? []).map { ($0.address, $0.id) })
            var ids: [UInt32] = []
            var fresh = Set<UInt32>()
            for backend in service.backends {
                if let id = known[backend.address] { ids.append(id); continue }
                guard let id = allocator.next() else {
                    throw .badInput("service \"\(service.name)\": no free backend slot (at most \(SL_MAX_BACKENDS))")
                }
                ids.append(id)
                fresh.insert(id)
            }
            let keep = Set(service.backends.map(\.address))
            freedBackendIDs += (previous?.backends ?? []).filter { !keep.contains($0.address) }.map(\.id)
            let flags = Self.flags(service, previous: previous, health: health)
            let excludedBefore = Set((previous?.backends ?? []).filter(\.isExcluded).map(\.address))
            let excluded = Set(zip(service.backends, flags).filter { $1 & Self.excludedFlag != 0 }.map(\.0.address))
            // The mode and the backends' ports live in the backend slots: the table stays.
            let needsTable = previous.map {
                Self.tableShape($0.service) != Self.tableShape(service) || $0.maglevSize != size || excludedBefore != excluded
                    || !$0.hasTable
            } ?? true
            let slots = zip(zip(service.backends, ids), flags).map { pair, flags in
                Self.backendSlot(pair.0, service: service, slot: slot, flags: flags,
                                 hop: Self.keepingMAC(hops(pair.0.address), id: pair.1, state: state, service: service))
            }
            hasWrites = hasWrites || previous?.isPublished == false || zip(ids, slots).contains { id, new in
                Int(id) >= state.backendSlots.count || !bytewiseEqual(state.backendSlots[Int(id)], new)
            }
            let before = Dictionary((previous?.backends ?? []).map { ($0.address, $0.flags) }, uniquingKeysWith: { a, _ in a })
            healthChanged = healthChanged || zip(service.backends, flags).contains { backend, new in
                before[backend.address].map { $0 != new } ?? false
            }
            entries.append(Entry(service: service, slot: slot, backendIDs: ids, flags: flags, slots: slots, newBackendIDs: fresh,
                                 needsTable: needsTable,
                                 needsInfo: !needsTable && (previous?.service.forwarding != service.forwarding
                                                            || previous?.service.clientAddress != service.clientAddress),
                                 needsVIP: !needsTable && (previous?.service.clientAddress != service.clientAddress
                                                           || previous?.isPublished == false),
                                 isNewSlot: previous == nil, previous: previous))
        }
        freedBackendIDs += removedServices.flatMap { $0.backends.map(\.id) }
    }

    static let excludedFlag = UInt8(SL_BACKEND_F_EXCLUDED.rawValue)

    /// What the Maglev table of `service` depends on: not its mode, nor its backends' ports.
    static func tableShape(_ service: Service) -> Service {
        var shape = service
        shape.forwarding = .ipip
        shape.clientAddress = .none
        for i in shape.backends.indices { shape.backends[i].port = nil }
        return shape
    }

    /// sl_config for `node`: tunnel_mtu from the file (marked as such), else from the attached
    /// interfaces, else as attach wrote it (0 when a file's value is all there was); the GUE
    /// port in network order; the NAT flow budget in effect (the default when unset).
    static func config(_ current: sl_config, node: NodeConfig, interfaceMTU: Int?) -> sl_config {
        var config = current
        config.setSources(v4: node.sourceV4, v6: node.sourceV6)
        config.maglev_size = UInt32(node.maglevTableSize)
        if let mtu = node.tunnelMTU {
            config.setTunnelMTU(mtu, fromFile: true)
        } else if let mtu = interfaceMTU {
            config.setTunnelMTU(mtu, fromFile: false)
        } else if current.fileTunnelMTU != nil {
            config.setTunnelMTU(0, fromFile: false)
        }
        config.gue_port = node.effectiveGUEPort.bigEndian
        config.nat_flow_budget = node.effectiveNATFlowBudget
        return config
    }

    /// What sl_backends holds for one backend of `service`: l2dsr adds the next hop's MAC, the
    /// NAT modes also the backend's port and the interface toward it with our MAC there.
    static func backendSlot(_ backend: Backend, service: Service, slot: UInt32, flags: UInt8, hop: BackendHop?) -> sl_backend {
        var value = sl_backend()
        value.addr = backend.address.words
        value.family = backend.address.family.rawValue
        value.flags = flags
        value.weight = UInt16(backend.weight)
        value.service_id = slot
        value.forwarding = service.forwarding.cValue
        if service.forwarding == .l2dsr { value.setMAC(hop?.mac) }
        if service.forwarding.translates {
            value.port = backend.effectivePort(in: service).bigEndian
            value.setMAC(hop?.mac)
            value.setSourceMAC(hop?.sourceMAC)
            value.ifindex = hop?.interfaceIndex ?? 0
        }
        return value
    }

    /// A next hop whose neighbour did not answer now keeps the MAC its slot holds, when the
    /// slot was already sent the same way (l2dsr, or a NAT mode out of the same interface).
    private static func keepingMAC(_ hop: BackendHop?, id: UInt32, state: AppliedState, service: Service) -> BackendHop? {
        guard var hop, hop.mac == nil, Int(id) < state.backendSlots.count else { return hop }
        let slot = state.backendSlots[Int(id)]
        guard let old = Forwarding(cValue: slot.forwarding) else { return hop }
        let sameWay = service.forwarding == .l2dsr ? old == .l2dsr : old.translates && slot.ifindex == hop.interfaceIndex
        if sameWay { hop.mac = slot.macAddress }
        return hop
    }

    /// Each backend's sl_backend.flags: from the verdicts when given, else as the maps hold them
    /// (a new backend is unchecked and up); then HealthPolicy says which are left out.
    static func flags(_ service: Service, previous: AppliedService?, health: HealthVerdicts?) -> [UInt8] {
        let known = Dictionary((previous?.backends ?? []).map { ($0.address, $0) }, uniquingKeysWith: { a, _ in a })
        let checked: [Bool], down: Set<IPAddress>
        if let health {
            let verdict = health.down[service.name]
            checked = service.backends.map { _ in verdict != nil }
            down = verdict ?? []
        } else {
            checked = service.backends.map { known[$0.address]?.isChecked ?? false }
            down = Set(service.backends.filter { known[$0.address]?.isDown ?? false }.map(\.address))
        }
        let excludedNow = Set(service.backends.filter { known[$0.address]?.isExcluded ?? false }.map(\.address))
        let excluded = HealthPolicy.excluded(service.backends, down: down, excludedNow: excludedNow)
        return zip(service.backends, checked).map { backend, checked in
            var flags = UInt8(SL_BACKEND_F_IN_USE.rawValue)
            if checked { flags |= UInt8(SL_BACKEND_F_CHECKED.rawValue) }
            if down.contains(backend.address) { flags |= UInt8(SL_BACKEND_F_DOWN.rawValue) }
            if excluded.contains(backend.address) { flags |= excludedFlag }
            return flags
        }
    }
}

/// Hands out backend ids, never-used slots first, so an id that established
/// flows may still point at is reused as late as possible.
struct BackendAllocator {
    private var neverUsed: [UInt32]
    private var released: [UInt32]

    init(slots: [sl_backend]) {
        let inUse = UInt8(SL_BACKEND_F_IN_USE.rawValue)
        var never: [UInt32] = [], old: [UInt32] = []
        for id in 0..<UInt32(SL_MAX_BACKENDS) {
            let slot = Int(id) < slots.count ? slots[Int(id)] : sl_backend()
            if slot.family == 0 { never.append(id) } else if slot.flags & inUse == 0 { old.append(id) }
        }
        neverUsed = never.reversed()
        released = old.reversed()
    }

    mutating func next() -> UInt32? { neverUsed.popLast() ?? released.popLast() }
}

/// Performs a plan's writes and counts them.
struct Writer {
    let dataplane: Dataplane
    var tables = 0
    var bytes = 0
    /// The tables switched in by this apply, by slot.
    var installed: [UInt32: BPFMap] = [:]

    mutating func write(_ plan: Plan, state: AppliedState, desired: ServiceFile) throws(BPFError) {
        let size = desired.node.maglevTableSize
        // First, what a killed apply left in use for no service: a service given that slot
        // now must not find them among its backends.
        for id in plan.orphanBackendIDs { try release(id, state: state) }
        if !bytewiseEqual(plan.config, state.config) {
            try dataplane[.config].update(UInt32(0), plan.config)
            bytes += MemoryLayout<sl_config>.size
        }
        // Before any VIP is published: a new full-NAT service finds its pool.
        for (index, pool) in plan.pools.enumerated() where !bytewiseEqual(pool, state.snatPools[index]) {
            try dataplane[.snatPools].update(UInt32(index), pool)
            bytes += MemoryLayout<sl_snat_pool>.size
        }
        // The prefilter must never hide a VIP, not even for one packet: every
        // desired VIP's bit is set before any VIP is published, and bits only
        // removed VIPs needed are cleared after those are withdrawn (below). The
        // reply bits of NAT backends (VIPFilter) go the same way.
        let current = VIPFilter(words: try dataplane[.vipFilter].arrayValues(as: UInt64.self))
        let desiredFilter = VIPFilter(services: desired.services)
            .union(Self.keptReplyBits(state.backendSlots, desired: desired.services))
        let widened = current.union(desiredFilter)
        try writeFilter(widened, over: current)
        let changed = plan.entries.filter(\.needsTable)
        // The VIP's M and its table change in two writes; order them so every
        // index a packet can compute stays inside the table it finds: a shrinking
        // M is published before its table, a growing (or new) one after.
        let shrinking = { (entry: Plan.Entry) in size < (entry.previous?.maglevSize ?? size) }
        for entry in changed {
            try writeBackends(entry, state: state)
            if entry.isNewSlot {
                try dataplane[.vipStats].updatePerCPU(entry.slot, sl_counter())
            }
            if shrinking(entry) { try writeVIP(entry, size: size) }
        }
        // Services whose table stays: health flags (bookkeeping), MACs and a new forwarding
        // mode, which the data plane reads from each backend: established flows keep their
        // backend and their next packet goes the new way.
        for entry in plan.entries where !entry.needsTable {
            try writeBackends(entry, state: state)
            if entry.needsInfo { try writeServiceInfo(entry, size: size, generation: entry.previous?.generation ?? 0) }
            // New flows of the service get (or no longer get) a PROXY v2 header; open ones
            // keep what they were opened with.
            if entry.needsVIP { try writeVIP(entry, size: size) }
        }
        try switchTables(changed, size: size)
        for entry in changed {
            try writeServiceInfo(entry, size: size, generation: (entry.previous?.generation ?? 0) &+ 1)
            if !shrinking(entry) || entry.isNewSlot { try writeVIP(entry, size: size) }
        }
        // Withdraw every VIP no desired service owns any more (removed services,
        // moved VIPs) before their tables go. A key that moved to another
        // service, or whose service was renamed, was rewritten above and stays.
        let desiredKeys = desired.services.map { sl_vip_key(service: $0) }
        for applied in state.services {
            let key = sl_vip_key(service: applied.service)
            if !desiredKeys.contains(where: { $0.sameKey(as: key) }) { try dataplane[.vips].delete(key) }
        }
        try writeFilter(desiredFilter, over: widened)
        // A delete from sl_maglev (a map-in-map) returns only once every
        // program that was running has finished (the kernel's
        // synchronize_rcu), so no packet that found a withdrawn VIP is still
        // in flight after it: the epoch bumps below come after that wait.
        var waited = false
        for removed in plan.removedServices {
            if try dataplane[.maglev].delete(removed.slot) { waited = true }
            try dataplane[.services].update(removed.slot, sl_service_info())
            bytes += MemoryLayout<sl_service_info>.size
        }
        // Retire the conntrack entries of every freed slot and of every slot
        // whose VIP key changed: their epoch moves, so a hit recorded for the
        // old VIP is stale and goes through sl_vips (where that VIP is gone).
        // Backend and weight changes keep the epoch, so established flows
        // stay on their backends.
        let rekeyed = plan.entries.filter { entry in
            entry.previous.map { !sl_vip_key(service: $0.service).sameKey(as: sl_vip_key(service: entry.service)) } ?? false
        }.map(\.slot)
        let retired = plan.removedServices.map(\.slot) + rekeyed
        if !retired.isEmpty {
            if !waited { try waitForRunningPrograms(retired: retired) }
            for slot in retired {
                let epoch = try dataplane[.vipEpochs].lookup(slot, as: UInt32.self) ?? 0
                try dataplane[.vipEpochs].update(slot, epoch &+ 1)
                bytes += MemoryLayout<UInt32>.size
            }
        }
        // Released backends keep their address so established flows still reach them.
        for id in plan.freedBackendIDs { try release(id, state: state) }
    }

    /// Marks a backend slot free, keeping its address.
    private mutating func release(_ id: UInt32, state: AppliedState) throws(BPFError) {
        var slot = state.backendSlots[Int(id)]
        slot.flags &= ~UInt8(SL_BACKEND_F_IN_USE.rawValue)
        try dataplane[.backends].update(id, slot)
        bytes += MemoryLayout<sl_backend>.size
    }

    /// Returns once every program that was running has finished: an update
    /// of sl_maglev (a map-in-map) waits for them in the kernel. A slot whose
    /// VIP key changed got its table in this apply, and installing it again
    /// changes nothing; a freed slot is published by no VIP, so a scratch
    /// table may come and go there.
    private mutating func waitForRunningPrograms(retired: [UInt32]) throws(BPFError) {
        if let slot = retired.first(where: { installed[$0] != nil }), let table = installed[slot] {
            try dataplane[.maglev].update(slot, innerMap: table)
            return
        }
        guard let slot = retired.first else { return }
        let scratch = try Self.createMaglevTable(name: "sl_maglev_sync", entries: 1)
        try dataplane[.maglev].update(slot, innerMap: scratch)
        try dataplane[.maglev].delete(slot)
    }

    /// Writes the words of `filter` that differ from `old` (what the map holds).
    /// Whether a NAT backend slot is in the maps (in use, or kept for its established flows).
    static func holdsNATSlots(_ slots: [sl_backend]) -> Bool {
        let nat = [UInt8(SL_FWD_NAT.rawValue), UInt8(SL_FWD_FULLNAT.rawValue)]
        return slots.contains { $0.family != 0 && nat.contains($0.forwarding) }
    }

    /// The reply bits of the NAT backend slots the maps hold for backends no desired NAT
    /// service lists: a backend removed from its service keeps its established flows
    /// (conntrack names its slot until the slot is given to another backend), so their
    /// replies must still find their translation. A backend still listed has its bits from
    /// `desired` (a changed port breaks its flows anyway). A bit no flow needs any more only
    /// costs its packets one lookup.
    static func keptReplyBits(_ slots: [sl_backend], desired: [Service]) -> VIPFilter {
        var filter = VIPFilter()
        let nat = [UInt8(SL_FWD_NAT.rawValue), UInt8(SL_FWD_FULLNAT.rawValue)]
        let listed = Set(desired.filter(\.forwarding.translates).flatMap { $0.backends.map(\.address) })
        for slot in slots where slot.family != 0 && nat.contains(slot.forwarding) {
            guard let address = IPAddress(cWords: slot.addr, family: slot.family), !listed.contains(address) else { continue }
            for proto in [L4Protocol.tcp, .udp] {
                filter.insert(address: address, port: UInt16(bigEndian: slot.port),
                              protocolNumber: proto.number | VIPFilter.replyFlag)
            }
        }
        return filter
    }

    private mutating func writeFilter(_ filter: VIPFilter, over old: VIPFilter) throws(BPFError) {
        let changed = filter.words.indices.filter { filter.words[$0] != old.words[$0] }
        try dataplane[.vipFilter].updateBatch(keys: changed.map { UInt32($0) }, values: changed.map { filter.words[$0] })
        bytes += changed.count * MemoryLayout<UInt64>.size
    }

    /// Writes the backend slots that are new or differ in any byte (weight, flags, mode, MAC).
    private mutating func writeBackends(_ entry: Plan.Entry, state: AppliedState) throws(BPFError) {
        for (id, slot) in zip(entry.backendIDs, entry.slots) {
            if entry.newBackendIDs.contains(id) {
                try dataplane[.backendStats].updatePerCPU(id, sl_counter())
            } else if Int(id) < state.backendSlots.count, bytewiseEqual(state.backendSlots[Int(id)], slot) {
                continue
            }
            try dataplane[.backends].update(id, slot)
            bytes += MemoryLayout<sl_backend>.size
        }
    }

    /// Builds each table aside in a new inner map and switches them all in with one
    /// batched update of sl_maglev: each slot still changes in one step, and the kernel
    /// waits out running programs (an RCU grace period, ~10-20 ms here) once per
    /// update call of a map of maps, not once per service.
    private mutating func switchTables(_ entries: [Plan.Entry], size: Int) throws(BPFError) {
        var inners: [BPFMap] = []
        for entry in entries {
            let pairs = Self.maglevPairs(entry.maglevTable(size: size))
            let inner = try Self.createMaglevTable(name: "sl_maglev_\(entry.slot)", entries: pairs.count)
            try inner.writeMapped(pairs)
            inners.append(inner)
            bytes += pairs.count * MemoryLayout<sl_maglev_pair>.size
        }
        try dataplane[.maglev].updateBatch(keys: entries.map(\.slot), values: inners.map { UInt32(bitPattern: $0.fd) })
        for (entry, inner) in zip(entries, inners) { installed[entry.slot] = inner }
        tables += entries.count
    }

    /// An inner map for sl_maglev; the flags and value must match its template (bpf/maps.h).
    private static func createMaglevTable(name: String, entries: Int) throws(BPFError) -> BPFMap {
        try BPFMap.create(type: BPF_MAP_TYPE_ARRAY, name: name, keySize: 4, valueSize: MemoryLayout<sl_maglev_pair>.size,
                          maxEntries: entries, flags: UInt32(BPF_F_INNER_MAP | BPF_F_MMAPABLE))
    }

    /// A table's slots two to an entry, as the data plane reads them: slot s is half
    /// s & 1 of entry s >> 1; an odd table's last entry ends in SL_NO_BACKEND.
    static func maglevPairs(_ table: [UInt32]) -> [sl_maglev_pair] {
        stride(from: 0, to: table.count, by: 2).map { index in
            sl_maglev_pair(backend: (table[index], index + 1 < table.count ? table[index + 1] : SL_NO_BACKEND))
        }
    }

    private mutating func writeServiceInfo(_ entry: Plan.Entry, size: Int, generation: UInt32) throws(BPFError) {
        var info = sl_service_info()
        info.setName(entry.service.name)
        info.vip = sl_vip_key(service: entry.service)
        info.maglev_size = UInt32(size)
        info.generation = generation
        info.forwarding = entry.service.forwarding.cValue
        info.vip_flags = entry.service.vipFlags
        try dataplane[.services].update(entry.slot, info)
        bytes += MemoryLayout<sl_service_info>.size
    }

    private mutating func writeVIP(_ entry: Plan.Entry, size: Int) throws(BPFError) {
        try dataplane[.vips].update(sl_vip_key(service: entry.service), sl_vip(id: entry.slot, maglev_size: UInt32(size), forwarding: entry.service.forwarding.cValue, flags: entry.service.vipFlags, pad: (0, 0)))
        bytes += MemoryLayout<sl_vip>.size
    }
}

extension Service {
    /// sl_vip.flags of this service.
    var vipFlags: UInt8 { clientAddress == .proxyV2 ? UInt8(SL_VIP_F_PROXY_V2.rawValue) : 0 }
}

extension sl_vip_key {
    /// The same VIP (address, port, protocol, family): byte for byte, padding included
    /// (every key is built zeroed).
    func sameKey(as other: sl_vip_key) -> Bool { bytewiseEqual(self, other) }
}
