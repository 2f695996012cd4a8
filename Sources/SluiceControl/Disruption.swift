// What an apply would disturb, per service, for `apply --dry-run` and the agent's validate:
// the share of Maglev slots (new-flow placements) that move to another backend, and the
// established flows whose backend leaves the set.
import CSluice
import SluiceCore

/// What applying a change does to one service that is already served.
public struct ServiceDisruption: Sendable, Codable, Equatable {
    public var service: String
    /// The service leaves: its placements go, and each of its flows loses its VIP.
    public var removed: Bool
    /// Slots of the table the comparison is over (the desired size; the current one for a
    /// removed service).
    public var slots: Int
    /// Slots whose backend differs between the table served now and the one the change
    /// builds: a new flow hashing there goes elsewhere. When the table size changes the slots
    /// are not comparable one to one; then this is the share of 2^20 evenly spread flow hashes
    /// that move, times `slots`.
    public var slotsMoved: Int
    /// slotsMoved / slots.
    public var movedShare: Double
    /// Flows the connection table holds now (current epoch) on a backend that leaves the
    /// service, or of a removed service. A changed service's stay on their backend until they
    /// end; a removed service's are passed to the kernel from the next packet.
    public var flowsOnRemovedBackends: Int

    public init(service: String, removed: Bool, slots: Int, slotsMoved: Int, flowsOnRemovedBackends: Int) {
        self.service = service
        self.removed = removed
        self.slots = slots
        self.slotsMoved = slotsMoved
        self.movedShare = slots == 0 ? 0 : Double(slotsMoved) / Double(slots)
        self.flowsOnRemovedBackends = flowsOnRemovedBackends
    }

    /// `disruption: web: 20.1% of new-flow placements move (13171 of 65537 slots), 3 established flows on removed backends (they stay until they end)`.
    public var line: String {
        let flows = "\(flowsOnRemovedBackends) established flow\(flowsOnRemovedBackends == 1 ? "" : "s")"
        if removed {
            return "disruption: \(service): removed: every new-flow placement goes, \(flows) lose their VIP"
        }
        let percent = (movedShare * 1000).rounded() / 10
        return "disruption: \(service): \(percent)% of new-flow placements move (\(slotsMoved) of \(slots) slots), "
            + "\(flows) on removed backends (they stay until they end)"
    }

    enum CodingKeys: String, CodingKey {
        case service, removed, slots
        case slotsMoved = "slots_moved"
        case movedShare = "moved_share"
        case flowsOnRemovedBackends = "flows_on_removed_backends"
    }
}

enum DisruptionPreview {
    /// Per service served now that the plan changes (a new table, or removed), sorted by name.
    /// The connection table is read only when a backend or a service leaves.
    static func compute(_ plan: Plan, size: Int, dataplane: Dataplane) throws(ControlError) -> [ServiceDisruption] {
        var leaving: [UInt32: Set<UInt32>] = [:]  // service slot -> backend ids that leave it
        var removedSlots = Set<UInt32>()
        var moves: [(name: String, slot: UInt32, slots: Int, moved: Int)] = []
        for entry in plan.entries {
            guard let previous = entry.previous, entry.needsTable else { continue }
            let kept = Set(entry.backendIDs)
            let gone = Set(previous.backends.map(\.id)).subtracting(kept)
            if !gone.isEmpty { leaving[entry.slot] = gone }
            let moved = movedSlots(from: previous.maglevTable, size: previous.maglevSize, to: entry.maglevTable(size: size), size: size)
            moves.append((entry.service.name, entry.slot, size, moved))
        }
        for service in plan.removedServices {
            removedSlots.insert(service.slot)
            moves.append((service.service.name, service.slot, service.maglevSize, service.maglevSize))
        }
        var flows: [UInt32: Int] = [:]
        if !leaving.isEmpty || !removedSlots.isEmpty {
            let table = try ConntrackTable.read(from: dataplane)
            for (_, entry) in table.entries {
                let slot = UInt32(entry.service_id)
                guard Int(slot) < table.epochs.count, UInt16(truncatingIfNeeded: table.epochs[Int(slot)]) == entry.epoch else { continue }
                if removedSlots.contains(slot) || leaving[slot]?.contains(entry.backend_id) == true { flows[slot, default: 0] += 1 }
            }
        }
        return moves.map {
            ServiceDisruption(service: $0.name, removed: removedSlots.contains($0.slot), slots: $0.slots, slotsMoved: $0.moved,
                              flowsOnRemovedBackends: flows[$0.slot] ?? 0)
        }.sorted { $0.service < $1.service }
    }

    /// Slots of `new` whose backend differs from `old`'s; across sizes, the share of 2^20 flow
    /// hashes spread evenly over 32 bits whose slot's backend differs, scaled to `size`.
    static func movedSlots(from old: [UInt32], size oldSize: Int, to new: [UInt32], size: Int) -> Int {
        if oldSize == size, old.count == new.count {
            return zip(old, new).reduce(0) { $0 + ($1.0 != $1.1 ? 1 : 0) }
        }
        let samples = 1 << 20
        var moved = 0
        for i in 0..<samples {
            let hash = UInt32(truncatingIfNeeded: i << 12 | 0x800)
            if old[Int(hash % UInt32(oldSize))] != new[Int(hash % UInt32(size))] { moved += 1 }
        }
        return Int((Double(moved) / Double(samples) * Double(size)).rounded())
    }
}

extension AppliedService {
    /// The table its last apply built (slot -> backend id), rebuilt from the backends the maps
    /// hold, as Writer builds it: a backend left out for its health counts as weight 0.
    var maglevTable: [UInt32] {
        let ids = backends.map(\.id)
        return Maglev.table(for: backends.map { MaglevBackend(key: MaglevKey.forBackend($0.address), weight: $0.isExcluded ? 0 : $0.weight) },
                            size: maglevSize).map { $0 == Maglev.noBackend ? SL_NO_BACKEND : ids[Int($0)] }
    }
}

extension Plan.Entry {
    /// The table this entry switches in (slot -> backend id).
    func maglevTable(size: Int) -> [UInt32] {
        // A backend left out for its health check counts as weight 0: no new flows.
        let backends = zip(service.backends, flags).map { backend, flags in
            MaglevBackend(key: MaglevKey.forBackend(backend.address), weight: flags & Plan.excludedFlag != 0 ? 0 : backend.weight)
        }
        return Maglev.table(for: backends, size: size).map { $0 == Maglev.noBackend ? SL_NO_BACKEND : backendIDs[Int($0)] }
    }
}
