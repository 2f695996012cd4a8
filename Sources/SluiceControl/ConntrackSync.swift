// The data-plane side of connection-state sync: turning the new-flow reports of
// sl_flow_events into flow records (backends by address), writing peers' records into
// sl_conntrack under this node's own service slots, epochs and backend ids, and reading the
// whole table for a peer that asks for a copy. A translated flow also gets its sl_nat entry
// here, built from this node's backend slot and SNAT pool; with no interface or MACs known
// (ifindex 0), the data plane sends its replies back out the interface they came in on, to
// the configured gateway. The wire and the peers are the agent's.
import CLibbpf
import CSluice
import Foundation
import SluiceBPF
import SluiceCore

public final class ConntrackSync {
    /// Peers an agent may name (origin indexes 1...maxPeers).
    public static let maxPeers = Int(SL_MAX_PEERS)
    /// Why a peer's record was not written.
    public enum Rejection: String, Sendable, CaseIterable {
        /// Its destination is no VIP here (the nodes' service sets differ).
        case unknownService = "unknown_service"
        /// Its backend is no backend of that service here.
        case unknownBackend = "unknown_backend"
        /// This node placed the flow itself and still trusts that entry: it is the fresher.
        case localNewer = "local_newer"
        /// A full-NAT flow whose SNAT slot this node's pool does not have.
        case unknownSNAT = "unknown_snat"
        /// Its translation's key (backend:port -> SNAT address:port) is another flow's here.
        case natConflict = "nat_conflict"
    }

    public struct InsertResult: Sendable, Equatable {
        public var applied = 0
        public var rejected: [Rejection: Int] = [:]

        public init(applied: Int = 0, rejected: [Rejection: Int] = [:]) {
            self.applied = applied
            self.rejected = rejected
        }
    }

    private struct BackendKey: Hashable {
        var slot: UInt32
        var address: IPAddress
    }

    private let dataplane: Dataplane
    private let events: BPFRingBuffer
    /// (service slot, backend address) -> backend id, from the applied state.
    private var backendIDs: [BackendKey: UInt32] = [:]
    private var indexedAt: ContinuousClock.Instant?

    public init(dataplane: Dataplane) throws(ControlError) {
        self.dataplane = dataplane
        do { events = try BPFRingBuffer(map: dataplane[.flowEvents]) } catch {
            throw .bpf(error, while: "opening \(Dataplane.Map.flowEvents.rawValue)")
        }
    }

    /// Turns the data plane's reporting of new flows on or off (SL_CFG_SYNC in sl_config).
    public func setReporting(_ enabled: Bool) throws(ControlError) {
        let flag = UInt8(SL_CFG_SYNC.rawValue)
        try dataplane.updateConfig { config in config.flags = enabled ? config.flags | flag : config.flags & ~flag }
    }

    /// Records the peers' addresses by origin index (1...), for `lbctl flows`.
    public func setPeers(_ addresses: [IPAddress]) throws(ControlError) {
        do {
            for index in 1...Int(SL_MAX_PEERS) {
                var key = sl_addr_key()
                if index <= addresses.count {
                    key.addr = addresses[index - 1].words
                    key.family = addresses[index - 1].family.rawValue
                }
                try dataplane[.peers].update(UInt32(index), key)
            }
        } catch { throw .bpf(error, while: "writing \(Dataplane.Map.peers.rawValue)") }
    }

    /// The flows placed here since the last call, as records. A report whose backend slot
    /// is empty (a backend removed meanwhile) is left out.
    public func newFlows() throws(ControlError) -> [FlowRecord] {
        let reported: [sl_flow_event]
        do { reported = try events.drain(as: sl_flow_event.self) } catch {
            throw .bpf(error, while: "reading \(Dataplane.Map.flowEvents.rawValue)")
        }
        var addresses: [UInt32: IPAddress?] = [:]
        return reported.compactMap { event in
            if addresses[event.backend_id] == nil {
                let slot = try? dataplane[.backends].lookup(event.backend_id, as: sl_backend.self)
                addresses[event.backend_id] = slot.flatMap { IPAddress(cWords: $0.addr, family: $0.family) }
            }
            guard let backend = addresses[event.backend_id] ?? nil else { return nil }
            return FlowRecord(key: event.key, backend: backend, nat: event.nat, snatIndex: event.snat_index,
                              snatPort: event.snat_port, proxy: event.proxy, proxySeq: event.proxy_seq)
        }
    }

    /// Every flow the table trusts now (current epoch), for a peer's full copy.
    public func snapshot() throws(ControlError) -> [FlowRecord] { try dataplane.trustedFlows() }

    /// Writes peers' records into the connection table, each under this node's slot, epoch
    /// and backend id for it, marked with `origin` (the peer's index). An entry this node
    /// placed itself and still trusts is never overwritten; an older peer's entry is.
    public func insert(_ records: [FlowRecord], origin: UInt8) -> InsertResult {
        var result = InsertResult()
        let local = UInt8(SL_ORIGIN_LOCAL)
        let now = (try? dataplane[.clock].lookup(UInt32(0), as: UInt32.self)) ?? 0
        var epochs: [UInt32: UInt32] = [:]
        let pools = (try? dataplane[.snatPools].arrayValues(as: sl_snat_pool.self)) ?? []
        for record in records {
            var vipKey = sl_vip_key()
            vipKey.addr = record.destination.words
            vipKey.port = record.destinationPort
            vipKey.proto = record.proto
            vipKey.family = record.destination.family.rawValue
            guard let vip = try? dataplane[.vips].lookup(vipKey, as: sl_vip.self) else {
                result.rejected[.unknownService, default: 0] += 1
                continue
            }
            guard let backendID = backendID(slot: vip.id, address: record.backend) else {
                result.rejected[.unknownBackend, default: 0] += 1
                continue
            }
            if epochs[vip.id] == nil { epochs[vip.id] = (try? dataplane[.vipEpochs].lookup(vip.id, as: UInt32.self)) ?? 0 }
            let epoch = UInt16(truncatingIfNeeded: epochs[vip.id]!)
            let key = sl_flow_key(record)
            if var existing = try? dataplane[.conntrack].lookup(key, as: sl_ct_entry.self),
               existing.origin == local, existing.service_id == UInt16(vip.id), existing.epoch == epoch {
                // The peer still sees the flow: it stays young here too, on this node's backend.
                existing.last_seen = now
                try? dataplane[.conntrack].update(key, existing, flags: UInt64(BPF_EXIST))
                result.rejected[.localNewer, default: 0] += 1
                continue
            }
            var entry = sl_ct_entry(backend_id: backendID, service_id: UInt16(vip.id), epoch: epoch, last_seen: now,
                                    origin: origin, tcp_seen: 0, nat: 0, snat_index: 0, snat_port: 0, proxy: 0, pad: 0,
                                    proxy_seq: 0)
            if record.nat != 0 {
                if let rejection = translate(record, key: key, entry: &entry, pools: pools, now: now) {
                    result.rejected[rejection, default: 0] += 1
                    continue
                }
            }
            if (try? dataplane[.conntrack].update(key, entry)) != nil { result.applied += 1 }
        }
        return result
    }

    /// Installs the sl_nat entry of a peer's translated flow, from this node's backend slot
    /// (its address and port) and, for full NAT, its pool's address in the record's slot,
    /// and marks `entry` translated; nil when done. A record whose mode is not this node's for the backend
    /// is written as a plain flow: the data plane forwards it the way its service says.
    private func translate(_ record: FlowRecord, key: sl_flow_key, entry: inout sl_ct_entry, pools: [sl_snat_pool],
                           now: UInt32) -> Rejection? {
        guard let slot = try? dataplane[.backends].lookup(entry.backend_id, as: sl_backend.self),
              slot.forwarding == record.nat, slot.port != 0 else { return nil }
        var reply = sl_flow_key()
        reply.src = slot.addr
        reply.sport = slot.port
        reply.proto = key.proto
        reply.family = key.family
        if record.nat == UInt8(SL_FWD_FULLNAT.rawValue) {
            let index = key.family == UInt8(SL_FAMILY_V4.rawValue) ? 0 : 1
            guard index < pools.count, let family = IPAddress.Family(rawValue: key.family) else { return .unknownSNAT }
            let addresses = pools[index].addresses(family: family)
            guard Int(record.snatIndex) < addresses.count else { return .unknownSNAT }
            reply.dst = addresses[Int(record.snatIndex)].words
            reply.dport = record.snatPort
        } else {
            reply.dst = key.src
            reply.dport = key.sport
        }
        if let held = try? dataplane[.nat].lookup(reply, as: sl_nat_entry.self), !bytewiseEqual(held.flow, key) {
            return .natConflict
        }
        var translation = sl_nat_entry()
        translation.flow = key
        translation.backend_id = entry.backend_id
        translation.service_id = entry.service_id
        translation.mode = record.nat
        translation.last_seen = now
        // A PROXY v2 flow keeps its offsets here too. Whether the backend acknowledged the
        // header is the sender's to know: owed here, a segment at the stream's start carries
        // it again, which the backend takes as the duplicate it is.
        if let proxySeq = record.proxySeq, record.nat == UInt8(SL_FWD_FULLNAT.rawValue) {
            translation.proxy = UInt8(SL_PROXY_ON.rawValue)
            translation.proxy_seq = proxySeq
            entry.proxy = UInt8(SL_PROXY_ON.rawValue)
            entry.proxy_seq = proxySeq
        }
        // Before the flow's entry: a forwarded packet's reply finds its translation.
        guard (try? dataplane[.nat].update(reply, translation)) != nil else { return .natConflict }
        entry.nat = record.nat
        entry.snat_index = record.snatIndex
        entry.snat_port = record.snatPort
        return nil
    }

    /// The backend id of `address` in service `slot`, re-reading the applied state when it
    /// is unknown (an apply since the last read), at most once a second.
    private func backendID(slot: UInt32, address: IPAddress) -> UInt32? {
        let key = BackendKey(slot: slot, address: address)
        if let id = backendIDs[key] { return id }
        let now = ContinuousClock.now
        if let indexedAt, now - indexedAt < .seconds(1) { return nil }
        indexedAt = now
        guard let state = try? dataplane.appliedState() else { return nil }
        backendIDs = [:]
        for service in state.services {
            for backend in service.backends { backendIDs[BackendKey(slot: service.slot, address: backend.address)] = backend.id }
        }
        return backendIDs[key]
    }
}

extension FlowRecord {
    init?(key: sl_flow_key, backend: IPAddress, nat: UInt8 = 0, snatIndex: UInt8 = 0, snatPort: UInt16 = 0,
          proxy: UInt8 = 0, proxySeq: UInt32 = 0) {
        guard let source = IPAddress(cWords: key.src, family: key.family),
              let destination = IPAddress(cWords: key.dst, family: key.family) else { return nil }
        self.init(source: source, destination: destination, sourcePort: key.sport, destinationPort: key.dport,
                  proto: key.proto, backend: backend, nat: nat, snatIndex: snatIndex, snatPort: snatPort,
                  proxySeq: proxy & UInt8(SL_PROXY_ON.rawValue) != 0 ? proxySeq : nil)
    }
}

extension sl_flow_key {
    init(_ record: FlowRecord) {
        self.init()
        src = record.source.words
        dst = record.destination.words
        sport = record.sourcePort
        dport = record.destinationPort
        proto = record.proto
        family = record.source.family.rawValue
    }
}
