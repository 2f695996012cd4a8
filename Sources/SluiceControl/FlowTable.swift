// The connection-tracking table, read back as flows with their service, backend and origin
// (placed here, or synced from a peer balancer) and, for nat and fullnat, the translation:
// the SNAT address and port, the backend's port, the TCP state both directions' flags give
// and the age. Entries the data plane no longer trusts (their service slot's epoch moved on)
// are left out: they forward nothing.
import CSluice
import SluiceBPF
import SluiceCore

public struct FlowEntry: Sendable, Codable, Equatable {
    public var `protocol`: String
    /// The client.
    public var source: String
    public var sourcePort: UInt16
    /// The VIP.
    public var destination: String
    public var destinationPort: UInt16
    public var service: String?
    public var backend: String?
    public var backendID: UInt32
    /// "local" (placed by this node) or "peer" (synced from a peer balancer).
    public var origin: String
    /// The peer's address for a synced entry, when the agent recorded it.
    public var peer: String?
    /// "nat" or "fullnat" for a translated flow; nil for the other modes.
    public var nat: String?
    /// fullnat: the source address and port the backend sees.
    public var snatAddress: String?
    public var snatPort: UInt16?
    /// nat, fullnat: the port the backend's side of the flow uses.
    public var backendPort: UInt16?
    /// TCP: syn (half-open), established, closing (a FIN one way), closed (FIN both ways, or
    /// RST) or unknown (no flags recorded, e.g. a peer's entry); nil for UDP.
    public var tcpState: String?
    /// Seconds since either direction was last seen, on the agent's clock (nil: no agent
    /// ever ticked it).
    public var ageSeconds: UInt32?
    /// A flow that carries a PROXY v2 header (client_address: proxy-v2): "owed" (not written
    /// yet), "sent" (written, not yet acknowledged) or "acked"; nil for other flows.
    public var proxy: String?
    /// Such a flow's sequence offset: the header's length (28 IPv4, 52 IPv6), by which the
    /// client's sequence numbers grow toward the backend and the backend's acknowledgements
    /// shrink toward the client.
    public var seqOffset: UInt32?

    public init(protocol: String, source: String, sourcePort: UInt16, destination: String, destinationPort: UInt16,
                service: String?, backend: String?, backendID: UInt32, origin: String, peer: String?, nat: String? = nil,
                snatAddress: String? = nil, snatPort: UInt16? = nil, backendPort: UInt16? = nil, tcpState: String? = nil,
                ageSeconds: UInt32? = nil) {
        self.protocol = `protocol`
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
        self.service = service
        self.backend = backend
        self.backendID = backendID
        self.origin = origin
        self.peer = peer
        self.nat = nat
        self.snatAddress = snatAddress
        self.snatPort = snatPort
        self.backendPort = backendPort
        self.tcpState = tcpState
        self.ageSeconds = ageSeconds
    }

    enum CodingKeys: String, CodingKey {
        case `protocol`, source, destination, service, backend, origin, peer, nat
        case sourcePort = "source_port"
        case destinationPort = "destination_port"
        case backendID = "backend_id"
        case snatAddress = "snat_address"
        case snatPort = "snat_port"
        case backendPort = "backend_port"
        case tcpState = "tcp_state"
        case ageSeconds = "age_seconds"
        case proxy
        case seqOffset = "seq_offset"
    }

    // Unset values are written as null, so scripts always find every key.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(`protocol`, forKey: .protocol)
        try container.encode(source, forKey: .source)
        try container.encode(sourcePort, forKey: .sourcePort)
        try container.encode(destination, forKey: .destination)
        try container.encode(destinationPort, forKey: .destinationPort)
        try container.encode(service, forKey: .service)
        try container.encode(backend, forKey: .backend)
        try container.encode(backendID, forKey: .backendID)
        try container.encode(origin, forKey: .origin)
        try container.encode(peer, forKey: .peer)
        try container.encode(nat, forKey: .nat)
        try container.encode(snatAddress, forKey: .snatAddress)
        try container.encode(snatPort, forKey: .snatPort)
        try container.encode(backendPort, forKey: .backendPort)
        try container.encode(tcpState, forKey: .tcpState)
        try container.encode(ageSeconds, forKey: .ageSeconds)
        try container.encode(proxy, forKey: .proxy)
        try container.encode(seqOffset, forKey: .seqOffset)
    }

    static func read(from dataplane: Dataplane, state: AppliedState) throws(ControlError) -> [FlowEntry] {
        let serviceNames = Dictionary(state.services.map { (UInt32($0.slot), $0.service.name) }, uniquingKeysWith: { a, _ in a })
        let entries: [(sl_flow_key, sl_ct_entry)], epochs: [UInt32], peers: [sl_addr_key], clock: UInt32
        do {
            entries = try dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self)
            epochs = try dataplane[.vipEpochs].arrayValues(as: UInt32.self)
            peers = try dataplane[.peers].arrayValues(as: sl_addr_key.self)
            clock = try dataplane[.clock].lookup(UInt32(0), as: UInt32.self) ?? 0
        } catch {
            throw .bpf(error, while: "reading the connection table")
        }
        let nat = try NATTable.read(from: dataplane)
        return entries.compactMap { key, value in
            guard Int(value.service_id) < epochs.count, UInt16(truncatingIfNeeded: epochs[Int(value.service_id)]) == value.epoch,
                  let source = IPAddress(words: key.src, family: key.family),
                  let destination = IPAddress(words: key.dst, family: key.family) else { return nil }
            let peer = value.origin == UInt8(SL_ORIGIN_LOCAL) || Int(value.origin) >= peers.count ? nil
                : IPAddress(words: peers[Int(value.origin)].addr, family: peers[Int(value.origin)].family)
            let id = Int(value.backend_id)
            let slot = id < state.backendSlots.count ? state.backendSlots[id] : nil
            let backend = slot.flatMap { IPAddress(words: $0.addr, family: $0.family) }
            var flow = FlowEntry(protocol: L4Protocol(number: key.proto)?.rawValue ?? String(key.proto),
                                 source: source.description, sourcePort: UInt16(bigEndian: key.sport),
                                 destination: destination.description, destinationPort: UInt16(bigEndian: key.dport),
                                 service: slot.flatMap { serviceNames[$0.service_id] }, backend: backend?.description,
                                 backendID: value.backend_id, origin: value.origin == UInt8(SL_ORIGIN_LOCAL) ? "local" : "peer",
                                 peer: peer?.description)
            let translation = nat.byFlow[FlowKeyBits(key)].map { nat.entries[$0] }
            var lastSeen = value.last_seen
            if let translation { lastSeen = max(lastSeen, translation.entry.last_seen) }
            if clock != 0 { flow.ageSeconds = clock >= lastSeen ? clock - lastSeen : 0 }
            if key.proto == L4Protocol.tcp.number {
                flow.tcpState = FlowState(client: value.tcp_seen, backend: translation?.entry.tcp_seen).rawValue
            }
            flow.describeTranslation(value, translation: translation, slot: slot, pools: state.snatPools)
            return flow
        }.sorted { ($0.destination, $0.source, $0.sourcePort) < ($1.destination, $1.source, $1.sourcePort) }
    }

    /// The translation's fields: from its sl_nat entry when there is one (the backend's side
    /// as it arrives), else from the conntrack entry, the backend slot and the pool.
    private mutating func describeTranslation(_ value: sl_ct_entry, translation: (key: sl_flow_key, entry: sl_nat_entry)?,
                                              slot: sl_backend?, pools: [sl_snat_pool]) {
        guard let mode = Forwarding(cValue: value.nat), mode.translates else { return }
        nat = mode.rawValue
        if value.proxy & UInt8(SL_PROXY_ON.rawValue) != 0 {
            // The backend's side learns of the acknowledgement first; the client's side as soon
            // as its next packet needs it.
            let flags = value.proxy | (translation?.entry.proxy ?? 0)
            proxy = flags & UInt8(SL_PROXY_ACKED.rawValue) != 0 ? "acked" : flags & UInt8(SL_PROXY_SENT.rawValue) != 0 ? "sent" : "owed"
            seqOffset = UInt32(source.contains(":") ? SL_PROXY_V2_LEN_V6 : SL_PROXY_V2_LEN_V4)
        }
        if let translation {
            backendPort = UInt16(bigEndian: translation.key.sport)
        } else if let slot, slot.port != 0 {
            backendPort = UInt16(bigEndian: slot.port)
        }
        guard mode == .fullnat else { return }
        snatPort = UInt16(bigEndian: value.snat_port)
        if let translation {
            snatAddress = IPAddress(words: translation.key.dst, family: translation.key.family)?.description
        } else if let family = slot.flatMap({ IPAddress.Family(rawValue: $0.family) }) {
            let pool = pools[family == .v4 ? 0 : 1].addresses(family: family)
            snatAddress = Int(value.snat_index) < pool.count ? pool[Int(value.snat_index)].description : nil
        }
    }
}
