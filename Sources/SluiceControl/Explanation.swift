// What `lbctl explain` answers: the fate of one packet as the data plane would decide it now,
// stage by stage, with the service, the connection-table entry, the Maglev placement, the
// backend and the exact headers written. Explainer computes it; this file is its shape,
// which is also the stable JSON of `lbctl explain --json` (snake_case keys, unset = null).
import SluiceCore

/// The packet asked about: a TCP segment (a SYN, or with `syn` false an ACK of an open
/// connection) or a UDP datagram.
public struct ExplainQuery: Sendable, Equatable {
    public var proto: L4Protocol
    public var source: IPAddress
    public var sourcePort: UInt16
    public var destination: IPAddress
    public var destinationPort: UInt16
    /// TCP: a connection's SYN (no ACK); false: a segment with ACK set.
    public var syn: Bool

    public init(proto: L4Protocol, source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
                syn: Bool = false) {
        self.proto = proto
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
        self.syn = proto == .tcp && syn
    }
}

public struct Explanation: Sendable, Codable, Equatable {
    public struct Packet: Sendable, Codable, Equatable {
        public var `protocol`: String
        public var source: String
        public var sourcePort: UInt16
        public var destination: String
        public var destinationPort: UInt16
        public var syn: Bool

        enum CodingKeys: String, CodingKey {
            case `protocol`, source, destination, syn
            case sourcePort = "source_port"
            case destinationPort = "destination_port"
        }
    }

    public struct ServiceRef: Sendable, Codable, Equatable {
        public var name: String
        public var vip: String
        public var port: UInt16
        public var `protocol`: String
        /// The service slot (index of sl_maglev, sl_vip_stats).
        public var slot: UInt32
        public var forwarding: String
        /// "proxy-v2" when the data plane writes a PROXY v2 header; nil otherwise.
        public var clientAddress: String?

        enum CodingKeys: String, CodingKey {
            case name, vip, port, `protocol`, slot, forwarding
            case clientAddress = "client_address"
        }
    }

    /// An entry of a connection table the packet's flow has.
    public struct FlowRef: Sendable, Codable, Equatable {
        /// "sl_conntrack", "sl_ct_unconfirmed" (a UDP flow seen once) or "sl_nat" (a NAT
        /// backend's reply, keyed as it arrives).
        public var table: String
        /// Recorded under its service slot's current epoch (a stale entry forwards nothing).
        public var current: Bool
        public var serviceSlot: UInt32
        public var backendID: UInt32
        /// "local" or "peer" (synced from a peer balancer).
        public var origin: String
        public var peer: String?
        /// Seconds since it was last seen, on the agent's clock (nil: no agent ticks it).
        public var ageSeconds: UInt32?
        /// TCP: syn, established, closing, closed or unknown.
        public var tcpState: String?
        /// "nat" or "fullnat" once translated.
        public var nat: String?
        public var snatAddress: String?
        public var snatPort: UInt16?
        /// A PROXY v2 flow: "owed", "sent" or "acked".
        public var proxy: String?

        enum CodingKeys: String, CodingKey {
            case table, current, origin, peer, nat, proxy
            case serviceSlot = "service_slot"
            case backendID = "backend_id"
            case ageSeconds = "age_seconds"
            case tcpState = "tcp_state"
            case snatAddress = "snat_address"
            case snatPort = "snat_port"
        }
    }

    /// How the flow's backend was chosen.
    public struct Placement: Sendable, Codable, Equatable {
        /// "conntrack" (its entry), "unconfirmed" (where its first datagram went) or "maglev".
        public var by: String
        /// The flow hash (sl_flow_hash), and its slot in the service's table of `tableSize`.
        public var hash: UInt32
        public var slot: Int?
        public var tableSize: Int?

        enum CodingKeys: String, CodingKey {
            case by, hash, slot
            case tableSize = "table_size"
        }
    }

    public struct BackendRef: Sendable, Codable, Equatable {
        public var id: UInt32
        public var address: String
        /// nat, fullnat: the port the packet is translated to.
        public var port: UInt16?
        public var weight: Int
        /// "up", "down" or "unchecked" (no agent health-checks it).
        public var health: String
        /// In its service's Maglev table: new flows may be placed on it.
        public var takesNewFlows: Bool
        /// l2dsr, nat, fullnat: the next hop's MAC; nil while unresolved.
        public var mac: String?

        enum CodingKeys: String, CodingKey {
            case id, address, port, weight, health, mac
            case takesNewFlows = "takes_new_flows"
        }
    }

    /// The outer IP header a tunnelling mode puts in front of the packet.
    public struct OuterHeader: Sendable, Codable, Equatable {
        public var family: Int
        public var source: String
        public var destination: String
        /// 4 (IPv4 inside), 41 (IPv6 inside) or 17 (GUE).
        public var `protocol`: UInt8
        /// TTL or hop limit.
        public var ttl: UInt8
        /// IPv4: DF set.
        public var dontFragment: Bool?
        /// GUE: the UDP ports.
        public var udpSourcePort: UInt16?
        public var udpDestinationPort: UInt16?

        enum CodingKeys: String, CodingKey {
            case family, source, destination, `protocol`, ttl
            case dontFragment = "dont_fragment"
            case udpSourcePort = "udp_source_port"
            case udpDestinationPort = "udp_destination_port"
        }
    }

    /// The addresses and ports a translating mode writes (nil: unchanged).
    public struct Rewrite: Sendable, Codable, Equatable {
        public var source: String?
        public var sourcePort: UInt16?
        public var destination: String?
        public var destinationPort: UInt16?

        enum CodingKeys: String, CodingKey {
            case source, destination
            case sourcePort = "source_port"
            case destinationPort = "destination_port"
        }
    }

    /// The frame the data plane sends.
    public struct Output: Sendable, Codable, Equatable {
        public var ethernetDestination: String
        /// Our MAC on the way out; nil when it is the received frame's destination and this
        /// explanation was not told the interface's.
        public var ethernetSource: String?
        /// bpf_redirect's interface index; nil: back out of the interface it came in on (XDP_TX).
        public var interfaceIndex: UInt32?
        public var outer: OuterHeader?
        public var rewrite: Rewrite?

        enum CodingKeys: String, CodingKey {
            case outer, rewrite
            case ethernetDestination = "ethernet_destination"
            case ethernetSource = "ethernet_source"
            case interfaceIndex = "interface_index"
        }
    }

    public var packet: Packet
    /// "pass", "tx", "redirect" or "drop" (XDP's verdicts, as `lbctl stats` names them).
    public var verdict: String
    /// A drop's reason, as `lbctl stats` names it.
    public var dropReason: String?
    /// Why, in one sentence.
    public var reason: String
    /// Each check the data plane makes, in its order, with what it finds.
    public var steps: [String] = []
    public var service: ServiceRef?
    /// The flow's entry, when it has one (stale ones too: the steps say they are ignored).
    public var flow: FlowRef?
    public var placement: Placement?
    public var backend: BackendRef?
    /// The mode the packet is sent in.
    public var forwarding: String?
    public var output: Output?
    /// The tables the packet writes a new entry into ([] when none).
    public var records: [String] = []
    /// What else bears on the packet (size limits, budgets the explanation cannot see).
    public var notes: [String] = []

    enum CodingKeys: String, CodingKey {
        case packet, verdict, reason, steps, service, flow, placement, backend, forwarding, output, records, notes
        case dropReason = "drop_reason"
    }

    // Unset values are written as null, so scripts always find every key.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(packet, forKey: .packet)
        try c.encode(verdict, forKey: .verdict)
        try c.encode(dropReason, forKey: .dropReason)
        try c.encode(reason, forKey: .reason)
        try c.encode(steps, forKey: .steps)
        try c.encode(service, forKey: .service)
        try c.encode(flow, forKey: .flow)
        try c.encode(placement, forKey: .placement)
        try c.encode(backend, forKey: .backend)
        try c.encode(forwarding, forKey: .forwarding)
        try c.encode(output, forKey: .output)
        try c.encode(records, forKey: .records)
        try c.encode(notes, forKey: .notes)
    }
}
