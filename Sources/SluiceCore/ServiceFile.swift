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

    /// This file as the data plane holds it: no health checks (the agent runs those).
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

    /// The allowed `tunnel_mtu`: IPv6's minimum MTU up to what sl_config.tunnel_mtu holds.
    public static let tunnelMTURange = 1280...65535
    /// The GUE port when the file names none (SL_GUE_DEFAULT_PORT in lb_shared.h).
    public static let defaultGUEPort: UInt16 = 6080

    public init(sourceV4: IPAddress? = nil, sourceV6: IPAddress? = nil,
                maglevTableSize: Int = Maglev.defaultTableSize, tunnelMTU: Int? = nil, guePort: UInt16? = nil) {
        self.sourceV4 = sourceV4
        self.sourceV6 = sourceV6
        self.maglevTableSize = maglevTableSize
        self.tunnelMTU = tunnelMTU
        self.guePort = guePort
    }

    /// The GUE port in effect.
    public var effectiveGUEPort: UInt16 { guePort ?? Self.defaultGUEPort }

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
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        sourceV4 = try container.decodeIfPresent(IPAddress.self, forKey: .sourceV4)
        sourceV6 = try container.decodeIfPresent(IPAddress.self, forKey: .sourceV6)
        maglevTableSize = try container.decodeIfPresent(Int.self, forKey: .maglevTableSize) ?? Maglev.defaultTableSize
        tunnelMTU = try container.decodeIfPresent(Int.self, forKey: .tunnelMTU)
        guePort = try container.decodeIfPresent(UInt16.self, forKey: .guePort)
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

    /// Whether packets are wrapped in an outer IP header from the node's source address.
    public var tunnels: Bool { self != .l2dsr }
}

public struct Backend: Equatable, Hashable, Sendable, Codable {
    public var address: IPAddress
    /// 0...65535; 0 drains the backend (no new flows, existing ones stay).
    public var weight: Int

    public init(address: IPAddress, weight: Int = 1) {
        self.address = address
        self.weight = weight
    }

    private enum CodingKeys: String, CodingKey {
        case address, weight
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        address = try container.decode(IPAddress.self, forKey: .address)
        weight = try container.decodeIfPresent(Int.self, forKey: .weight) ?? 1
    }
}

/// One VIP: an (address, port, protocol) and the backends behind it.
public struct Service: Equatable, Hashable, Sendable, Codable {
    public var name: String
    public var vip: IPAddress
    public var port: UInt16
    public var proto: L4Protocol
    public var forwarding: Forwarding
    public var backends: [Backend]
    /// Run by the agent; the data plane never sees it.
    public var healthCheck: HealthCheck?

    public init(name: String, vip: IPAddress, port: UInt16, proto: L4Protocol,
                forwarding: Forwarding = .ipip, backends: [Backend], healthCheck: HealthCheck? = nil) {
        self.name = name
        self.vip = vip
        self.port = port
        self.proto = proto
        self.forwarding = forwarding
        self.backends = backends
        self.healthCheck = healthCheck
    }

    /// This service as the data plane holds it (the maps keep no health check).
    public var withoutHealthCheck: Service {
        var copy = self
        copy.healthCheck = nil
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
        case healthCheck = "healthcheck"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        vip = try container.decode(IPAddress.self, forKey: .vip)
        port = try container.decode(UInt16.self, forKey: .port)
        proto = try container.decode(L4Protocol.self, forKey: .proto)
        forwarding = try container.decodeIfPresent(Forwarding.self, forKey: .forwarding) ?? .ipip
        backends = try container.decode([Backend].self, forKey: .backends)
        healthCheck = try container.decodeIfPresent(HealthCheck.self, forKey: .healthCheck)
    }
}
