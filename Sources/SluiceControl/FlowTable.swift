// The connection-tracking table, read back as flows with their service, backend and origin
// (placed here, or synced from a peer balancer). Entries the data plane no longer trusts
// (their service slot's epoch moved on) are left out: they forward nothing.
import CSluice
import SluiceBPF
import SluiceCore

public struct FlowEntry: Sendable, Codable, Equatable {
    public var `protocol`: String
    public var source: String
    public var sourcePort: UInt16
    public var destination: String
    public var destinationPort: UInt16
    public var service: String?
    public var backend: String?
    public var backendID: UInt32
    /// "local" (placed by this node) or "peer" (synced from a peer balancer).
    public var origin: String
    /// The peer's address for a synced entry, when the agent recorded it.
    public var peer: String?

    enum CodingKeys: String, CodingKey {
        case `protocol`, source, destination, service, backend, origin, peer
        case sourcePort = "source_port"
        case destinationPort = "destination_port"
        case backendID = "backend_id"
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
    }

    static func read(from dataplane: Dataplane, state: AppliedState) throws(ControlError) -> [FlowEntry] {
        let serviceNames = Dictionary(state.services.map { (UInt32($0.slot), $0.service.name) }, uniquingKeysWith: { a, _ in a })
        let entries: [(sl_flow_key, sl_ct_entry)], epochs: [UInt32], peers: [sl_addr_key]
        do {
            entries = try dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self)
            epochs = try dataplane[.vipEpochs].arrayValues(as: UInt32.self)
            peers = try dataplane[.peers].arrayValues(as: sl_addr_key.self)
        } catch {
            throw .bpf(error, while: "reading the connection table")
        }
        return entries.compactMap { key, value in
            guard Int(value.service_id) < epochs.count, UInt16(truncatingIfNeeded: epochs[Int(value.service_id)]) == value.epoch,
                  let source = IPAddress(words: key.src, family: key.family),
                  let destination = IPAddress(words: key.dst, family: key.family) else { return nil }
            let peer = value.origin == UInt8(SL_ORIGIN_LOCAL) || Int(value.origin) >= peers.count ? nil
                : IPAddress(words: peers[Int(value.origin)].addr, family: peers[Int(value.origin)].family)
            let id = Int(value.backend_id)
            let slot = id < state.backendSlots.count ? state.backendSlots[id] : nil
            let backend = slot.flatMap { IPAddress(words: $0.addr, family: $0.family) }
            return FlowEntry(protocol: L4Protocol(number: key.proto)?.rawValue ?? String(key.proto),
                             source: source.description, sourcePort: UInt16(bigEndian: key.sport),
                             destination: destination.description, destinationPort: UInt16(bigEndian: key.dport),
                             service: slot.flatMap { serviceNames[$0.service_id] }, backend: backend?.description,
                             backendID: value.backend_id, origin: value.origin == UInt8(SL_ORIGIN_LOCAL) ? "local" : "peer",
                             peer: peer?.description)
        }.sorted { ($0.destination, $0.source, $0.sourcePort) < ($1.destination, $1.source, $1.sourcePort) }
    }
}
