// The declarative service file: what the node should be serving. The same
// model, with the same snake_case keys, is the JSON schema of the control API
// and of `--json` output, so the coding keys below are a public contract.

public struct ServiceFile: Equatable, Hashable, Sendable, Codable {
    public var node: NodeConfig
    public var services: [Service]

    public init(node: NodeConfig = NodeConfig(), services: [Service]) {
        self.node = node
        self.services = services
    }

    /// This file as the data plane holds it: no health checks (the agent runs those), and a
    /// backend port only where it differs from its service's (see `Service.withoutHealthCheck`).
    public var withoutHealthChecks: ServiceFile {
        ServiceFile(node: node, services: services.map(\.withoutHealthCheck))
    }

    private enum CodingKeys: String, CodingKey {
        case node, services
    }

    // A missing node means "no sources, default table size", as in YAML.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        node = try container.decodeIfPresent(NodeConfig.self, forKey: .node) ?? NodeConfig()
        services = try container.decode([Service].self, forKey: .services)
    }
}

/// Settings of this balancer node that every service shares.
public struct NodeConfig: Equatable, Hashable, Sendable, Codable {
    /// Outer source address of IPv4 tunnels (4in4).
    public var sourceV4: IPAddress?
    /// Outer source address of IPv6 tunnels (6in6, 4in6).
    public var sourceV6: IPAddress?
    /// M of every service's Maglev table; a prime.
    public var maglevTableSize: Int
    /// MTU of the path to the backends, encapsulation included; nil: the attached interface's.
    public var tunnelMTU: Int?
    /// UDP destination port of GUE tunnels; nil: `defaultGUEPort`.
    public var guePort: UInt16?
    /// New nat/fullnat translations each CPU may create per second (0: no limit); nil:
    /// `defaultNATFlowBudget`.
    public var natFlowBudget: UInt32?
    /// Full NAT's source addresses toward IPv4 backends (sl_snat_pools[0]), in file order.
    public var snatV4: [IPAddress]
    /// Full NAT's source addresses toward IPv6 backends (sl_snat_pools[1]).
    public var snatV6: [IPAddress]
    /// The source ports full NAT allocates on each SNAT address; nil: `defaultSNATPorts`.
    public var snatPorts: PortRange?

    /// The allowed `tunnel_mtu`: IPv6's minimum MTU up to what sl_config.tunnel_mtu holds.
    public static let tunnelMTURange = 1280...65535
    /// The GUE port when the file names none (SL_GUE_DEFAULT_PORT in lb_shared.h).
    public static let defaultGUEPort: UInt16 = 6080
    /// The NAT flow budget when the file names none (SL_NAT_FLOW_BUDGET_DEFAULT in lb_shared.h).
    public static let defaultNATFlowBudget: UInt32 = 125_000
    /// The SNAT ports when the file names none (SL_SNAT_DEFAULT_PORT_MIN..MAX in lb_shared.h).
    public static let defaultSNATPorts = PortRange(low: 1024, high: 65535)
    /// SL_MAX_SNAT_ADDRS: the most SNAT addresses of one family a pool holds.
    public static let maxSNATAddresses = 16

    public init(sourceV4: IPAddress? = nil, sourceV6: IPAddress? = nil,
                maglevTableSize: Int = Maglev.defaultTableSize, tunnelMTU: Int? = nil, guePort: UInt16? = nil,
                natFlowBudget: UInt32? = nil,
                snatV4: [IPAddress] = [], snatV6: [IPAddress] = [], snatPorts: PortRange? = nil) {
        self.sourceV4 = sourceV4
        self.sourceV6 = sourceV6
        self.maglevTableSize = maglevTableSize
        self.tunnelMTU = tunnelMTU
        self.guePort = guePort
        self.natFlowBudget = natFlowBudget
        self.snatV4 = snatV4
        self.snatV6 = snatV6
        self.snatPorts = snatPorts
    }

    /// The GUE port in effect.
    public var effectiveGUEPort: UInt16 { guePort ?? Self.defaultGUEPort }
    /// The NAT flow budget in effect (0: no limit).
    public var effectiveNATFlowBudget: UInt32 { natFlowBudget ?? Self.defaultNATFlowBudget }
    /// The SNAT port range in effect.
    public var effectiveSNATPorts: PortRange { snatPorts ?? Self.defaultSNATPorts }

    /// Full NAT's source addresses toward backends of `family`.
    public func snatAddresses(for family: IPAddress.Family) -> [IPAddress] {
        family == .v4 ? snatV4 : snatV6
    }

    /// The outer source for tunnels to a backend of `family`.
    public func source(for family: IPAddress.Family) -> IPAddress? {
        family == .v4 ? sourceV4 : sourceV6
    }

    private enum CodingKeys: String, CodingKey {
        case sourceV4 = "source_v4"
        case sourceV6 = "source_v6"
        case maglevTableSize = "maglev_table_size"
        case tunnelMTU = "tunnel_mtu"
        case guePort = "gue_port"
        case natFlowBudget = "nat_flow_budget"
        case snatV4 = "snat_v4"
        case snatV6 = "snat_v6"
        case snatPorts = "snat_ports"
    }

    // Empty SNAT lists are left out, so the JSON of a file without full NAT stays as it was.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(sourceV4, forKey: .sourceV4)
        try container.encodeIfPresent(sourceV6, forKey: .sourceV6)
        try container.encode(maglevTableSize, forKey: .maglevTableSize)
        try container.encodeIfPresent(tunnelMTU, forKey: .tunnelMTU)
        try container.encodeIfPresent(guePort, forKey: .guePort)
        try container.encodeIfPresent(natFlowBudget, forKey: .natFlowBudget)
        if !snatV4.isEmpty { try container.encode(snatV4, forKey: .snatV4) }
        if !snatV6.isEmpty { try container.encode(snatV6, forKey: .snatV6) }
        try container.encodeIfPresent(snatPorts, forKey: .snatPorts)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        snatV4 = try container.decodeIfPresent([IPAddress].self, forKey: .snatV4) ?? []
        snatV6 = try container.decodeIfPresent([IPAddress].self, forKey: .snatV6) ?? []
        snatPorts = try container.decodeIfPresent(PortRange.self, forKey: .snatPorts)
        sourceV4 = try container.decodeIfPresent(IPAddress.self, forKey: .sourceV4)
        sourceV6 = try container.decodeIfPresent(IPAddress.self, forKey: .sourceV6)
        maglevTableSize = try container.decodeIfPresent(Int.self, forKey: .maglevTableSize) ?? Maglev.defaultTableSize
        tunnelMTU = try container.decodeIfPresent(Int.self, forKey: .tunnelMTU)
        guePort = try container.decodeIfPresent(UInt16.self, forKey: .guePort)
        natFlowBudget = try container.decodeIfPresent(UInt32.self, forKey: .natFlowBudget)
    }
}

/// An inclusive range of ports, written `LOW-HIGH` in the file and in JSON (`1024-65535`).
public struct PortRange: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var low: UInt16
    public var high: UInt16

    public init(low: UInt16, high: UInt16) {
        self.low = low
        self.high = high
    }

    /// `LOW-HIGH` with 1 <= LOW <= HIGH <= 65535, else nil.
    public init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { ("0"..."9").contains($0) } }),
              let low = Int(parts[0]), let high = Int(parts[1]),
              (1...65535).contains(low), (1...65535).contains(high), low <= high else { return nil }
        self.init(low: UInt16(low), high: UInt16(high))
    }

    /// Ports in the range.
    public var count: Int { Int(high) - Int(low) + 1 }
    public var isValid: Bool { low >= 1 && low <= high }
    public var description: String { "\(low)-\(high)" }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let range = PortRange(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "\(String(reflecting: text)) is not a port range LOW-HIGH"))
        }
        self = range
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

public enum L4Protocol: String, Hashable, Sendable, Codable, CaseIterable {
    case tcp
    case udp

    /// IANA protocol number, as in the IP header and `sl_vip_key.proto`.
    public var number: UInt8 {
        switch self {
        case .tcp: 6
        case .udp: 17
        }
    }
}

/// How packets reach a backend (enum sl_forwarding). For the tunnels the kind (4in4, 6in6,
/// 4in6) follows from the VIP and backend families.
public enum Forwarding: String, Hashable, Sendable, Codable, CaseIterable {
    /// IP-in-IP.
    case ipip
    /// Outer IP + UDP to `node.gue_port`, then the inner packet.
    case gue
    /// Only the Ethernet destination changes, to the backend's MAC: backends on the balancer's segment.
    case l2dsr
    /// Half NAT: the destination VIP:port becomes the backend's address:port; replies route back through us.
    case nat
    /// Full NAT: the source also becomes a SNAT address:port of this node.
    case fullnat

    /// Whether packets are wrapped in an outer IP header from the node's source address.
    public var tunnels: Bool { self == .ipip || self == .gue }
    /// Whether addresses are rewritten (nat, fullnat): the backend may name its own port, and
    /// its replies come back through the balancer.
    public var translates: Bool { self == .nat || self == .fullnat }
}

/// How a backend learns the client's address (service.client_address).
public enum ClientAddress: String, Hashable, Sendable, Codable, CaseIterable {
    /// Not at all beyond what the mode keeps (full NAT hides it).
    case none
    /// A PROXY protocol v2 header in front of each new connection's bytes, written by the
    /// data plane: fullnat TCP only.
    case proxyV2 = "proxy-v2"
}

public struct Backend: Equatable, Hashable, Sendable, Codable {
    public var address: IPAddress
    /// 0...65535; 0 drains the backend (no new flows, existing ones stay).
    public var weight: Int
    /// nat, fullnat: the port the backend listens on; nil: its service's port.
    public var port: UInt16?

    public init(address: IPAddress, weight: Int = 1, port: UInt16? = nil) {
        self.address = address
        self.weight = weight
        self.port = port
    }

    /// The port packets for this backend of `service` go to once translated.
    public func effectivePort(in service: Service) -> UInt16 { port ?? service.port }

    private enum CodingKeys: String, CodingKey {
        case address, weight, port
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        address = try container.decode(IPAddress.self, forKey: .address)
        weight = try container.decodeIfPresent(Int.self, forKey: .weight) ?? 1
        port = try container.decodeIfPresent(UInt16.self, forKey: .port)
    }
}

/// One VIP: an (address, port, protocol) and the backends behind it.
public struct Service: Equatable, Hashable, Sendable, Codable {
    public var name: String
    public var vip: IPAddress
    public var port: UInt16
    public var proto: L4Protocol
    public var forwarding: Forwarding
    public var clientAddress: ClientAddress
    public var backends: [Backend]
    /// Run by the agent; the data plane never sees it.
    public var healthCheck: HealthCheck?

    public init(name: String, vip: IPAddress, port: UInt16, proto: L4Protocol,
                forwarding: Forwarding = .ipip, clientAddress: ClientAddress = .none, backends: [Backend],
                healthCheck: HealthCheck? = nil) {
        self.name = name
        self.vip = vip
        self.port = port
        self.proto = proto
        self.forwarding = forwarding
        self.clientAddress = clientAddress
        self.backends = backends
        self.healthCheck = healthCheck
    }

    /// This service as the data plane holds it: the maps keep no health check, and a backend
    /// port equal to the service's is the same as none (sl_backend.port holds the port in
    /// effect), so naming it or not is no change.
    public var withoutHealthCheck: Service {
        var copy = self
        copy.healthCheck = nil
        for i in copy.backends.indices where copy.backends[i].port == port { copy.backends[i].port = nil }
        return copy
    }

    /// `198.51.100.10:80/tcp`, `[2001:db8::1]:443/tcp`.
    public var endpoint: String {
        let host = vip.family == .v6 ? "[\(vip)]" : vip.description
        return "\(host):\(port)/\(proto.rawValue)"
    }

    private enum CodingKeys: String, CodingKey {
        case name, vip, port
        case proto = "protocol"
        case forwarding, backends
        case clientAddress = "client_address"
        case healthCheck = "healthcheck"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        vip = try container.decode(IPAddress.self, forKey: .vip)
        port = try container.decode(UInt16.self, forKey: .port)
        proto = try container.decode(L4Protocol.self, forKey: .proto)
        forwarding = try container.decodeIfPresent(Forwarding.self, forKey: .forwarding) ?? .ipip
        clientAddress = try container.decodeIfPresent(ClientAddress.self, forKey: .clientAddress) ?? .none
        backends = try container.decode([Backend].self, forKey: .backends)
        healthCheck = try container.decodeIfPresent(HealthCheck.self, forKey: .healthCheck)
    }
}
