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
    public var services: [ServiceTraffic]

    enum CodingKeys: String, CodingKey {
        case verdicts, drops, services, fragments
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
            var services: [ServiceTraffic] = []
            for applied in state.services {
                let vip = try sum(dataplane.vipStats.lookupPerCPU(applied.slot, as: sl_counter.self))
                var backends: [BackendTraffic] = []
                for backend in applied.backends {
                    let traffic = try sum(dataplane.backendStats.lookupPerCPU(backend.id, as: sl_counter.self))
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
                drops: Dictionary(uniqueKeysWithValues: zip(dropNames, drops)), services: services)
        } catch {
            throw .bpf(error, while: "reading counters")
        }
    }

    private static func sum(_ values: [sl_counter]) -> Traffic {
        Traffic(packets: values.reduce(0) { $0 &+ $1.packets }, bytes: values.reduce(0) { $0 &+ $1.bytes })
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
