// The data plane's per-CPU counters, summed into one snapshot per node, service and backend.
import CSluice
import SluiceBPF
import SluiceCore

public struct CounterSnapshot: Sendable, Codable, Equatable {
    /// The client's packets forwarded, and (nat, fullnat) the backend's replies translated back.
    public struct Traffic: Sendable, Codable, Equatable {
        public var packets: UInt64
        public var bytes: UInt64
        public var replyPackets: UInt64 = 0
        public var replyBytes: UInt64 = 0
        enum CodingKeys: String, CodingKey {
            case packets, bytes, replyPackets = "reply_packets", replyBytes = "reply_bytes"
        }
    }
    public struct BackendTraffic: Sendable, Codable, Equatable {
        public var address: String
        public var packets: UInt64
        public var bytes: UInt64
        public var replyPackets: UInt64 = 0
        public var replyBytes: UInt64 = 0
        enum CodingKeys: String, CodingKey {
            case address, packets, bytes, replyPackets = "reply_packets", replyBytes = "reply_bytes"
        }
    }
    public struct ServiceTraffic: Sendable, Codable, Equatable {
        public var name: String
        public var vip: String
        public var port: UInt16
        public var `protocol`: String
        public var packets: UInt64
        public var bytes: UInt64
        public var replyPackets: UInt64 = 0
        public var replyBytes: UInt64 = 0
        public var backends: [BackendTraffic]
        enum CodingKeys: String, CodingKey {
            case name, vip, port, `protocol`, packets, bytes, backends
            case replyPackets = "reply_packets", replyBytes = "reply_bytes"
        }
    }

    public var verdicts: [String: UInt64]
    /// Flows recorded in sl_conntrack: TCP by its first packet after the SYN, UDP by its
    /// second, nat/fullnat by the first.
    public var newFlows: UInt64
    public var conntrackHits: UInt64
    /// Non-SYN packets of a flow not in sl_conntrack (a TCP flow's first ACK, a UDP flow's
    /// first two packets, a flow from elsewhere).
    public var conntrackMisses: UInt64
    /// UDP flows' first packets, held in sl_ct_unconfirmed.
    public var conntrackUnconfirmed: UInt64 = 0
    public var fragments: UInt64
    public var ipOptions: UInt64
    public var drops: [String: UInt64]
    /// New flows the data plane could not report for sync (sl_flow_events was full).
    public var flowEventsLost: UInt64
    /// SYNs whose MSS was lowered to fit tunnel_mtu.
    public var mssClamped: UInt64
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" sent to clients.
    public var icmpTooBig: UInt64
    /// Inbound ICMP errors about a VIP's flow, forwarded to its backend.
    public var icmpSteered: UInt64
    /// Translations created (nat and fullnat flows opened).
    public var natCreated: UInt64 = 0
    /// Backends' packets translated back toward clients.
    public var natReplies: UInt64 = 0
    /// ICMP errors about a translated flow, translated (either way).
    public var natICMP: UInt64 = 0
    /// Full-NAT candidates found in use before one was free.
    public var snatCollisions: UInt64 = 0
    /// PROXY v2 headers written, a connection's first.
    public var proxyHeaders: UInt64 = 0
    /// PROXY v2 headers written again: the stream's start sent again before the backend acknowledged it.
    public var proxyResent: UInt64 = 0
    /// SYNs of proxy-v2 services whose data (TCP Fast Open) was removed.
    public var proxyTFOTrimmed: UInt64 = 0
    /// Flows of proxy-v2 services opened without their SYN: no header could be written.
    public var proxyMidstream: UInt64 = 0
    public var services: [ServiceTraffic]

    enum CodingKeys: String, CodingKey {
        case verdicts, drops, services, fragments
        case flowEventsLost = "flow_events_lost"
        case newFlows = "new_flows"
        case conntrackHits = "conntrack_hits"
        case conntrackMisses = "conntrack_misses"
        case conntrackUnconfirmed = "conntrack_unconfirmed"
        case ipOptions = "ip_options"
        case mssClamped = "mss_clamped"
        case icmpTooBig = "icmp_too_big"
        case icmpSteered = "icmp_steered"
        case natCreated = "nat_created"
        case natReplies = "nat_replies"
        case natICMP = "nat_icmp"
        case snatCollisions = "snat_collisions"
        case proxyHeaders = "proxy_headers"
        case proxyResent = "proxy_resent"
        case proxyTFOTrimmed = "proxy_tfo_trimmed"
        case proxyMidstream = "proxy_midstream"
    }

    /// Names of the XDP verdicts, indexed by action.
    public static let verdictNames = ["aborted", "drop", "pass", "tx", "redirect"]
    /// Names of enum sl_drop_reason, indexed by value.
    public static let dropNames = ["malformed", "truncated", "no_backend", "no_source", "no_gateway", "encap",
                                   "too_big", "no_neighbour", "no_snat", "snat_exhausted", "proxy",
                                   "nat_budget"]

    static func read(from dataplane: Dataplane, state: AppliedState) throws(ControlError) -> CounterSnapshot {
        let node = try NodeCounters.read(from: dataplane)
        var services: [ServiceTraffic] = []
        do {
            // One batched read of the slots in use (ids and slots are handed out lowest first),
            // not one lookup per VIP and backend: 11,000 syscalls at 1,000 x 10.
            let vipStats = try PerCPUTotals(dataplane[.vipStats], slots: state.services.map(\.slot))
            let backendStats = try PerCPUTotals(dataplane[.backendStats], slots: state.services.flatMap { $0.backends.map(\.id) })
            for applied in state.services {
                let vip = vipStats[applied.slot]
                var backends: [BackendTraffic] = []
                for backend in applied.backends {
                    let traffic = backendStats[backend.id]
                    backends.append(BackendTraffic(address: backend.address.description, packets: traffic.packets, bytes: traffic.bytes,
                                                   replyPackets: traffic.replyPackets, replyBytes: traffic.replyBytes))
                }
                services.append(ServiceTraffic(name: applied.service.name, vip: applied.service.vip.description,
                                               port: applied.service.port, protocol: applied.service.proto.rawValue,
                                               packets: vip.packets, bytes: vip.bytes, replyPackets: vip.replyPackets,
                                               replyBytes: vip.replyBytes, backends: backends))
            }
        } catch {
            throw .bpf(error, while: "reading counters")
        }
        return CounterSnapshot(verdicts: node.verdicts, newFlows: node.newFlows, conntrackHits: node.conntrackHits,
                               conntrackMisses: node.conntrackMisses, conntrackUnconfirmed: node.conntrackUnconfirmed,
                               fragments: node.fragments, ipOptions: node.ipOptions,
                               drops: node.drops, flowEventsLost: node.flowEventsLost, mssClamped: node.mssClamped,
                               icmpTooBig: node.icmpTooBig, icmpSteered: node.icmpSteered, natCreated: node.natCreated,
                               natReplies: node.natReplies, natICMP: node.natICMP, snatCollisions: node.snatCollisions,
                               proxyHeaders: node.proxyHeaders, proxyResent: node.proxyResent,
                               proxyTFOTrimmed: node.proxyTFOTrimmed, proxyMidstream: node.proxyMidstream,
                               services: services)
    }
}

/// The node-wide counters (sl_stats), summed over CPUs: what `CounterSnapshot` shows at its
/// top level, and what tests compare before and after a packet.
public struct NodeCounters: Sendable, Equatable {
    /// By name (CounterSnapshot.verdictNames).
    public var verdicts: [String: UInt64]
    /// Flows recorded in sl_conntrack: TCP by its first packet after the SYN, UDP by its
    /// second, nat/fullnat by the first.
    public var newFlows: UInt64 = 0
    public var conntrackHits: UInt64 = 0
    /// Non-SYN packets of a flow not in sl_conntrack (a TCP flow's first ACK, a UDP flow's
    /// first two packets, a flow from elsewhere).
    public var conntrackMisses: UInt64 = 0
    /// UDP flows' first packets, held in sl_ct_unconfirmed.
    public var conntrackUnconfirmed: UInt64 = 0
    public var fragments: UInt64 = 0
    public var ipOptions: UInt64 = 0
    /// By reason (CounterSnapshot.dropNames).
    public var drops: [String: UInt64]
    public var flowEventsLost: UInt64 = 0
    /// SYNs whose MSS option was lowered to fit tunnel_mtu.
    public var mssClamped: UInt64 = 0
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" answers sent to clients.
    public var icmpTooBig: UInt64 = 0
    /// Inbound ICMP errors about a VIP's flow, forwarded to the flow's backend.
    public var icmpSteered: UInt64 = 0
    /// Translations created (nat and fullnat flows opened).
    public var natCreated: UInt64 = 0
    /// Backends' packets translated back toward clients.
    public var natReplies: UInt64 = 0
    /// ICMP errors about a translated flow, translated.
    public var natICMP: UInt64 = 0
    /// Full-NAT candidates found in use before one was free.
    public var snatCollisions: UInt64 = 0
    /// PROXY v2 headers written (a connection's first), written again, SYN data removed, and
    /// flows opened without their SYN (no header possible).
    public var proxyHeaders: UInt64 = 0
    public var proxyResent: UInt64 = 0
    public var proxyTFOTrimmed: UInt64 = 0
    public var proxyMidstream: UInt64 = 0

    /// All zero.
    public init() {
        verdicts = Dictionary(uniqueKeysWithValues: CounterSnapshot.verdictNames.map { ($0, 0) })
        drops = Dictionary(uniqueKeysWithValues: CounterSnapshot.dropNames.map { ($0, 0) })
    }

    static func read(from dataplane: Dataplane) throws(ControlError) -> NodeCounters {
        precondition(CounterSnapshot.dropNames.count == Int(SL_DROP__MAX.rawValue)
                     && CounterSnapshot.verdictNames.count == Int(SL_VERDICTS))
        var total = sl_stats()
        do {
            for cpu in try dataplane[.stats].lookupPerCPU(UInt32(0), as: sl_stats.self) { total.add(cpu) }
        } catch {
            throw .bpf(error, while: "reading counters")
        }
        var counters = NodeCounters()
        let verdicts = withUnsafeBytes(of: total.verdicts) { Array($0.bindMemory(to: UInt64.self)) }
        let drops = withUnsafeBytes(of: total.drops) { Array($0.bindMemory(to: UInt64.self)) }
        counters.verdicts = Dictionary(uniqueKeysWithValues: zip(CounterSnapshot.verdictNames, verdicts))
        counters.drops = Dictionary(uniqueKeysWithValues: zip(CounterSnapshot.dropNames, drops))
        counters.newFlows = total.new_flows
        counters.conntrackHits = total.ct_hits
        counters.conntrackMisses = total.ct_misses
        counters.conntrackUnconfirmed = total.ct_unconfirmed
        counters.fragments = total.fragments
        counters.ipOptions = total.ip_options
        counters.flowEventsLost = total.flow_events_lost
        counters.mssClamped = total.mss_clamped
        counters.icmpTooBig = total.icmp_too_big
        counters.icmpSteered = total.icmp_steered
        counters.natCreated = total.nat_created
        counters.natReplies = total.nat_replies
        counters.natICMP = total.nat_icmp
        counters.snatCollisions = total.snat_collisions
        counters.proxyHeaders = total.proxy_headers
        counters.proxyResent = total.proxy_resent
        counters.proxyTFOTrimmed = total.proxy_tfo_trimmed
        counters.proxyMidstream = total.proxy_midstream
        return counters
    }

    /// What was counted between two readings.
    public static func - (lhs: NodeCounters, rhs: NodeCounters) -> NodeCounters {
        var out = NodeCounters()
        out.verdicts = lhs.verdicts.merging(rhs.verdicts) { $0 &- $1 }
        out.drops = lhs.drops.merging(rhs.drops) { $0 &- $1 }
        out.newFlows = lhs.newFlows &- rhs.newFlows
        out.conntrackHits = lhs.conntrackHits &- rhs.conntrackHits
        out.conntrackMisses = lhs.conntrackMisses &- rhs.conntrackMisses
        out.conntrackUnconfirmed = lhs.conntrackUnconfirmed &- rhs.conntrackUnconfirmed
        out.fragments = lhs.fragments &- rhs.fragments
        out.ipOptions = lhs.ipOptions &- rhs.ipOptions
        out.flowEventsLost = lhs.flowEventsLost &- rhs.flowEventsLost
        out.mssClamped = lhs.mssClamped &- rhs.mssClamped
        out.icmpTooBig = lhs.icmpTooBig &- rhs.icmpTooBig
        out.icmpSteered = lhs.icmpSteered &- rhs.icmpSteered
        out.natCreated = lhs.natCreated &- rhs.natCreated
        out.natReplies = lhs.natReplies &- rhs.natReplies
        out.natICMP = lhs.natICMP &- rhs.natICMP
        out.snatCollisions = lhs.snatCollisions &- rhs.snatCollisions
        out.proxyHeaders = lhs.proxyHeaders &- rhs.proxyHeaders
        out.proxyResent = lhs.proxyResent &- rhs.proxyResent
        out.proxyTFOTrimmed = lhs.proxyTFOTrimmed &- rhs.proxyTFOTrimmed
        out.proxyMidstream = lhs.proxyMidstream &- rhs.proxyMidstream
        return out
    }
}

extension NodeCounters: CustomStringConvertible {
    /// Only the non-zero counters, e.g. `tx=1 new_flows=1`.
    public var description: String {
        var parts: [String] = []
        for name in CounterSnapshot.verdictNames where verdicts[name, default: 0] != 0 { parts.append("\(name)=\(verdicts[name]!)") }
        for name in CounterSnapshot.dropNames where drops[name, default: 0] != 0 { parts.append("drop.\(name)=\(drops[name]!)") }
        for (name, value) in [("new_flows", newFlows), ("ct_hits", conntrackHits), ("ct_misses", conntrackMisses),
                              ("ct_unconfirmed", conntrackUnconfirmed), ("fragments", fragments), ("ip_options", ipOptions),
                              ("flow_events_lost", flowEventsLost),
                              ("mss_clamped", mssClamped), ("icmp_too_big", icmpTooBig), ("icmp_steered", icmpSteered),
                              ("nat_created", natCreated), ("nat_replies", natReplies), ("nat_icmp", natICMP),
                              ("snat_collisions", snatCollisions), ("proxy_headers", proxyHeaders),
                              ("proxy_resent", proxyResent), ("proxy_tfo_trimmed", proxyTFOTrimmed),
                              ("proxy_midstream", proxyMidstream)]
            where value != 0 { parts.append("\(name)=\(value)") }
        return parts.isEmpty ? "(none)" : parts.joined(separator: " ")
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
            var total = CounterSnapshot.Traffic(packets: 0, bytes: 0)
            for cpu in 0..<cpus {
                let value = values[index + cpu]
                total.packets &+= value.packets
                total.bytes &+= value.bytes
                total.replyPackets &+= value.reply_packets
                total.replyBytes &+= value.reply_bytes
            }
            totals.append(total)
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
