// The data plane's per-CPU counters, summed into one snapshot per node, service and backend.
import CSluice
import SluiceBPF
import SluiceCore

public struct CounterSnapshot: Sendable, Codable, Equatable {
    public struct Traffic: Sendable, Codable, Equatable {
        public var packets: UInt64
        public var bytes: UInt64
    }
    public struct BackendTraffic: Sendable, Codable, Equatable {
        public var address: String
        public var packets: UInt64
        public var bytes: UInt64
    }
    public struct ServiceTraffic: Sendable, Codable, Equatable {
        public var name: String
        public var vip: String
        public var port: UInt16
        public var `protocol`: String
        public var packets: UInt64
        public var bytes: UInt64
        public var backends: [BackendTraffic]
    }

    public var verdicts: [String: UInt64]
    public var newFlows: UInt64
    public var conntrackHits: UInt64
    public var conntrackMisses: UInt64
    public var fragments: UInt64
    public var ipOptions: UInt64
    public var drops: [String: UInt64]
    /// New flows the data plane could not report for sync (sl_flow_events was full).
    public var flowEventsLost: UInt64
    public var services: [ServiceTraffic]

    enum CodingKeys: String, CodingKey {
        case verdicts, drops, services, fragments
        case flowEventsLost = "flow_events_lost"
        case newFlows = "new_flows"
        case conntrackHits = "conntrack_hits"
        case conntrackMisses = "conntrack_misses"
        case ipOptions = "ip_options"
    }

    /// Names of the XDP verdicts, indexed by action.
    public static let verdictNames = ["aborted", "drop", "pass", "tx", "redirect"]
    /// Names of enum sl_drop_reason, indexed by value.
    public static let dropNames = ["malformed", "truncated", "no_backend", "no_source", "no_gateway", "encap"]

    public static func read(from dataplane: Dataplane, state: AppliedState) throws(ControlError) -> CounterSnapshot {
        precondition(dropNames.count == Int(SL_DROP__MAX.rawValue) && verdictNames.count == Int(SL_VERDICTS))
        do {
            var total = sl_stats()
            for cpu in try dataplane.stats.lookupPerCPU(UInt32(0), as: sl_stats.self) { total.add(cpu) }
            let verdicts = withUnsafeBytes(of: total.verdicts) { Array($0.bindMemory(to: UInt64.self)) }
            let drops = withUnsafeBytes(of: total.drops) { Array($0.bindMemory(to: UInt64.self)) }
            // One batched read of the slots in use (ids and slots are handed out lowest first),
            // not one lookup per VIP and backend: 11,000 syscalls at 1,000 x 10.
            let vipStats = try PerCPUTotals(dataplane.vipStats, slots: state.services.map(\.slot))
            let backendStats = try PerCPUTotals(dataplane.backendStats, slots: state.services.flatMap { $0.backends.map(\.id) })
            var services: [ServiceTraffic] = []
            for applied in state.services {
                let vip = vipStats[applied.slot]
                var backends: [BackendTraffic] = []
                for backend in applied.backends {
                    let traffic = backendStats[backend.id]
                    backends.append(BackendTraffic(address: backend.address.description, packets: traffic.packets, bytes: traffic.bytes))
                }
                services.append(ServiceTraffic(name: applied.service.name, vip: applied.service.vip.description,
                                               port: applied.service.port, protocol: applied.service.proto.rawValue,
                                               packets: vip.packets, bytes: vip.bytes, backends: backends))
            }
            return CounterSnapshot(
                verdicts: Dictionary(uniqueKeysWithValues: zip(verdictNames, verdicts)),
                newFlows: total.new_flows, conntrackHits: total.ct_hits, conntrackMisses: total.ct_misses,
                fragments: total.fragments, ipOptions: total.ip_options,
                drops: Dictionary(uniqueKeysWithValues: zip(dropNames, drops)), flowEventsLost: total.flow_events_lost,
                services: services)
        } catch {
            throw .bpf(error, while: "reading counters")
        }
    }

}

/// A per-CPU sl_counter array summed over CPUs, for the slots up to the highest one asked for.
private struct PerCPUTotals {
    private var totals: [CounterSnapshot.Traffic] = []

    init(_ map: BPFMap, slots: [UInt32]) throws(BPFError) {
        guard let highest = slots.max() else { return }
        let (cpus, values) = try map.perCPUArrayValues(count: Int(highest) + 1, as: sl_counter.self)
        totals.reserveCapacity(values.count / max(cpus, 1))
        var index = 0
        while index + cpus <= values.count {
            var packets: UInt64 = 0, bytes: UInt64 = 0
            for cpu in 0..<cpus {
                packets &+= values[index + cpu].packets
                bytes &+= values[index + cpu].bytes
            }
            totals.append(CounterSnapshot.Traffic(packets: packets, bytes: bytes))
            index += cpus
        }
    }

    subscript(slot: UInt32) -> CounterSnapshot.Traffic {
        Int(slot) < totals.count ? totals[Int(slot)] : CounterSnapshot.Traffic(packets: 0, bytes: 0)
    }
}

extension sl_stats {
    /// Adds another CPU's counters, field by field (the struct is all __u64).
    mutating func add(_ other: sl_stats) {
        var other = other
        withUnsafeMutableBytes(of: &self) { mine in
            withUnsafeBytes(of: &other) { theirs in
                let a = mine.bindMemory(to: UInt64.self), b = theirs.bindMemory(to: UInt64.self)
                for i in a.indices { a[i] &+= b[i] }
            }
        }
    }
}
