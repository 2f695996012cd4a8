// What `lbctl status` shows: interfaces running the balancer, the node settings and every service.
import CSluice
import SluiceBPF
import SluiceCore

public struct StatusReport: Sendable, Codable, Equatable {
    public struct Interface: Sendable, Codable, Equatable {
        public var name: String
        public var mode: String
    }
    public struct Node: Sendable, Codable, Equatable {
        public var sourceV4: String?
        public var sourceV6: String?
        public var gatewayMAC: String?
        public var maglevTableSize: Int
        /// The path MTU in effect (sl_config.tunnel_mtu); nil: no limit.
        public var tunnelMTU: Int?
        /// Where it came from: "service_file" or "interface" (nil with no limit).
        public var tunnelMTUSource: String?
        public var guePort: UInt16
        /// New nat/fullnat translations per second per CPU (sl_config.nat_flow_budget); 0: no limit.
        public var natFlowBudget: UInt32 = NodeConfig.defaultNATFlowBudget
        /// Full NAT's source addresses, in pool slot order.
        public var snatV4: [String] = []
        public var snatV6: [String] = []
        /// The SNAT port range in effect (`LOW-HIGH`).
        public var snatPorts: String = NodeConfig.defaultSNATPorts.description
        enum CodingKeys: String, CodingKey {
            case sourceV4 = "source_v4", sourceV6 = "source_v6", gatewayMAC = "gateway_mac"
            case maglevTableSize = "maglev_table_size", tunnelMTU = "tunnel_mtu", tunnelMTUSource = "tunnel_mtu_source"
            case guePort = "gue_port", natFlowBudget = "nat_flow_budget"
            case snatV4 = "snat_v4", snatV6 = "snat_v6", snatPorts = "snat_ports"
        }

        // Unset values are written as null, so scripts always find every key.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(sourceV4, forKey: .sourceV4)
            try container.encode(sourceV6, forKey: .sourceV6)
            try container.encode(gatewayMAC, forKey: .gatewayMAC)
            try container.encode(maglevTableSize, forKey: .maglevTableSize)
            try container.encode(tunnelMTU, forKey: .tunnelMTU)
            try container.encode(tunnelMTUSource, forKey: .tunnelMTUSource)
            try container.encode(guePort, forKey: .guePort)
            try container.encode(natFlowBudget, forKey: .natFlowBudget)
            try container.encode(snatV4, forKey: .snatV4)
            try container.encode(snatV6, forKey: .snatV6)
            try container.encode(snatPorts, forKey: .snatPorts)
        }
    }
    public struct BackendStatus: Sendable, Codable, Equatable {
        public var address: String
        public var weight: Int
        /// "active" (in the Maglev table), "drained" (weight 0) or "down" (left out for failing
        /// its health check); the last two keep their established flows.
        public var state: String
        /// "up" or "down" as the agent's health check last found it; "unchecked" without one.
        public var health: String
        public var id: UInt32
        /// l2dsr, nat, fullnat: the MAC its packets go to (the next hop's); nil while
        /// unresolved, and for the tunnel modes.
        public var mac: String?
        /// nat, fullnat: the port its packets are translated to; nil in the other modes.
        public var port: UInt16?

        init(_ backend: AppliedBackend) {
            address = backend.address.description
            weight = backend.weight
            state = backend.weight == 0 ? "drained" : backend.isExcluded ? "down" : "active"
            health = backend.isChecked ? (backend.isDown ? "down" : "up") : "unchecked"
            id = backend.id
            mac = backend.mac?.description
            port = backend.port
        }

        enum CodingKeys: String, CodingKey { case address, weight, state, health, id, mac, port }

        // mac is written as null when unset, so scripts always find it.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(address, forKey: .address)
            try container.encode(weight, forKey: .weight)
            try container.encode(state, forKey: .state)
            try container.encode(health, forKey: .health)
            try container.encode(id, forKey: .id)
            try container.encode(mac, forKey: .mac)
            try container.encode(port, forKey: .port)
        }
    }
    public struct ServiceStatus: Sendable, Codable, Equatable {
        public var name: String
        public var vip: String
        public var port: UInt16
        public var `protocol`: String
        public var forwarding: String
        public var maglevTableSize: Int
        public var generation: UInt32
        public var backends: [BackendStatus]
        enum CodingKeys: String, CodingKey {
            case name, vip, port, `protocol`, forwarding, generation, backends
            case maglevTableSize = "maglev_table_size"
        }
    }

    public var pinPath: String
    public var programID: UInt32
    public var interfaces: [Interface]
    public var node: Node
    public var services: [ServiceStatus]
    /// From an agent with `bgp:` only (GET /v1/status, `lbctl status --server`): the node's
    /// drain state and VIP announcements.
    public var bgp: FleetStatus?

    enum CodingKeys: String, CodingKey {
        case interfaces, node, services, bgp
        case pinPath = "pin_path"
        case programID = "program_id"
    }

    static func read(from dataplane: Dataplane, state: AppliedState) throws(ControlError) -> StatusReport {
        let id = try dataplane.programID()
        let file = state.serviceFile
        return StatusReport(
            pinPath: dataplane.pinPath, programID: id,
            interfaces: Attacher.attachedInterfaces(programID: id).map { Interface(name: $0.name, mode: $0.mode.rawValue) },
            node: Node(sourceV4: file.node.sourceV4?.description, sourceV6: file.node.sourceV6?.description,
                       gatewayMAC: state.config.gateway?.description, maglevTableSize: file.node.maglevTableSize,
                       tunnelMTU: state.config.tunnel_mtu == 0 ? nil : Int(state.config.tunnel_mtu),
                       tunnelMTUSource: state.config.tunnel_mtu == 0 ? nil : file.node.tunnelMTU != nil ? "service_file" : "interface",
                       guePort: file.node.effectiveGUEPort, natFlowBudget: state.config.nat_flow_budget,
                       snatV4: file.node.snatV4.map(\.description), snatV6: file.node.snatV6.map(\.description),
                       snatPorts: file.node.effectiveSNATPorts.description),
            services: state.services.map { applied in
                ServiceStatus(name: applied.service.name, vip: applied.service.vip.description, port: applied.service.port,
                              protocol: applied.service.proto.rawValue, forwarding: applied.service.forwarding.rawValue,
                              maglevTableSize: applied.maglevSize, generation: applied.generation,
                              backends: applied.backends.map(BackendStatus.init))
            })
    }
}

// Decoded by hand only so that a report without nat_flow_budget (an older agent's) reads as the
// default; an extension keeps the memberwise initializer.
extension StatusReport.Node {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        sourceV4 = try container.decodeIfPresent(String.self, forKey: .sourceV4)
        sourceV6 = try container.decodeIfPresent(String.self, forKey: .sourceV6)
        gatewayMAC = try container.decodeIfPresent(String.self, forKey: .gatewayMAC)
        maglevTableSize = try container.decode(Int.self, forKey: .maglevTableSize)
        tunnelMTU = try container.decodeIfPresent(Int.self, forKey: .tunnelMTU)
        tunnelMTUSource = try container.decodeIfPresent(String.self, forKey: .tunnelMTUSource)
        guePort = try container.decode(UInt16.self, forKey: .guePort)
        natFlowBudget = try container.decodeIfPresent(UInt32.self, forKey: .natFlowBudget) ?? NodeConfig.defaultNATFlowBudget
        snatV4 = try container.decode([String].self, forKey: .snatV4)
        snatV6 = try container.decode([String].self, forKey: .snatV6)
        snatPorts = try container.decode(String.self, forKey: .snatPorts)
    }
}
