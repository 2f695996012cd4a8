// Reads a service file (YAML, or JSON, which is YAML too) into a ServiceFile.
// The tree is walked by hand rather than decoded so that unknown keys are
// rejected and every error names its line; the semantic rules that also apply
// to a model built in code live in ServiceFileValidator.

import Yams

public enum ServiceFileParser {
    /// Caps that keep one file inside what the data plane's maps can hold.
    public struct Limits: Sendable, Equatable {
        public var maxServices: Int
        /// Backends summed over all services.
        public var maxBackends: Int
        public var maxMaglevSize: Int

        public init(maxServices: Int = 4096, maxBackends: Int = 65536, maxMaglevSize: Int = 4_000_037) {
            self.maxServices = maxServices
            self.maxBackends = maxBackends
            self.maxMaglevSize = maxMaglevSize
        }

        public static let `default` = Limits()
    }

    static let topKeys = ["node", "services"]
    static let nodeKeys = ["source_v4", "source_v6", "maglev_table_size", "tunnel_mtu", "gue_port",
                           "nat_flow_budget", "snat_v4", "snat_v6", "snat_ports"]
    static let serviceKeys = ["name", "vip", "port", "protocol", "forwarding", "client_address", "backends", "healthcheck"]
    static let backendKeys = ["address", "port", "weight"]

    /// Parses and validates `text`; `file` is only used in error messages.
    public static func parse(_ text: String, file: String, limits: Limits = .default) throws(ConfigError) -> ServiceFile {
        var (reader, top) = try YAMLReader.document(text, file: file, allowed: topKeys)
        let node = try reader.optional(top, "node").map { (value: Node) throws(ConfigError) in
            try parseNode(value, reader: &reader)
        } ?? NodeConfig()

        let items = try reader.sequence(try reader.required(top, "services"), field: "services")
        // Checked before walking, so a huge file fails fast.
        if items.count > limits.maxServices {
            throw reader.error(at: nil, field: "services",
                               "\(items.count) services exceed the limit of \(limits.maxServices)")
        }
        var services: [Service] = []
        for (index, item) in items.enumerated() {
            services.append(try parseService(item, index: index, reader: &reader))
        }

        let result = ServiceFile(node: node, services: services)
        try ServiceFileValidator(file: file, limits: limits, lines: reader.lines).validate(result)
        return result
    }

    /// Reads `path` and parses it; errors name the path as given.
    public static func load(path: String, limits: Limits = .default) throws(ConfigError) -> ServiceFile {
        try parse(try YAMLReader.readFile(path), file: path, limits: limits)
    }

    private static func parseNode(_ value: Node, reader: inout YAMLReader) throws(ConfigError) -> NodeConfig {
        let fields = try reader.mapping(value, path: "node", allowed: nodeKeys)
        var node = NodeConfig()
        if let source = reader.optional(fields, "source_v4") {
            node.sourceV4 = try address(source, field: "node.source_v4", family: .v4, reader: reader)
        }
        if let source = reader.optional(fields, "source_v6") {
            node.sourceV6 = try address(source, field: "node.source_v6", family: .v6, reader: reader)
        }
        if let size = reader.optional(fields, "maglev_table_size") {
            let raw = try reader.scalar(size, field: "node.maglev_table_size")
            guard let number = Int(raw) else {
                throw reader.error(at: size, field: "node.maglev_table_size", Complaint.notATableSize(raw, limit: nil))
            }
            node.maglevTableSize = number
        }
        if let mtu = reader.optional(fields, "tunnel_mtu") {
            let raw = try reader.scalar(mtu, field: "node.tunnel_mtu")
            guard let number = Int(raw), NodeConfig.tunnelMTURange.contains(number) else {
                throw reader.error(at: mtu, field: "node.tunnel_mtu", Complaint.notATunnelMTU(raw))
            }
            node.tunnelMTU = number
        }
        if let port = reader.optional(fields, "gue_port") {
            let raw = try reader.scalar(port, field: "node.gue_port")
            guard let number = Int(raw), (1...65535).contains(number) else {
                throw reader.error(at: port, field: "node.gue_port", Complaint.notAPort(raw))
            }
            node.guePort = UInt16(number)
        }
        if let budget = reader.optional(fields, "nat_flow_budget") {
            let raw = try reader.scalar(budget, field: "node.nat_flow_budget")
            // What sl_config.nat_flow_budget holds: no sign, no more than 32 bits.
            guard raw.first.map({ ("0"..."9").contains($0) }) == true, let number = UInt32(raw) else {
                throw reader.error(at: budget, field: "node.nat_flow_budget", Complaint.notANATFlowBudget(raw))
            }
            node.natFlowBudget = number
        }
        node.snatV4 = try snatAddresses(fields, "snat_v4", family: .v4, reader: &reader)
        node.snatV6 = try snatAddresses(fields, "snat_v6", family: .v6, reader: &reader)
        if let ports = reader.optional(fields, "snat_ports") {
            let raw = try reader.scalar(ports, field: "node.snat_ports")
            guard let range = PortRange(raw) else {
                throw reader.error(at: ports, field: "node.snat_ports", Complaint.notAPortRange(raw))
            }
            node.snatPorts = range
        }
        return node
    }

    /// `node.snat_v4` or `node.snat_v6`: a list of addresses of `family`, each item's line
    /// recorded (`node.snat_v4[1]`) so that the validator's duplicate check points at it.
    private static func snatAddresses(_ fields: YAMLReader.Fields, _ key: String, family: IPAddress.Family,
                                      reader: inout YAMLReader) throws(ConfigError) -> [IPAddress] {
        guard let list = reader.optional(fields, key) else { return [] }
        var addresses: [IPAddress] = []
        for (index, item) in try reader.sequence(list, field: "node.\(key)").enumerated() {
            let field = "node.\(key)[\(index)]"
            reader.record(item, as: field)
            addresses.append(try address(item, field: field, family: family, reader: reader))
        }
        return addresses
    }

    private static func parseService(_ item: Node, index: Int, reader: inout YAMLReader) throws(ConfigError) -> Service {
        // The name first, so that every later error can say which service it is in.
        reader.serviceIndex = index
        reader.serviceName = item.mapping?["name"]?.scalar?.string
        reader.record(item, as: "services[\(index)]")
        defer {
            reader.serviceIndex = nil
            reader.serviceName = nil
        }

        let fields = try reader.mapping(item, path: nil, allowed: serviceKeys)
        let name = try reader.scalar(try reader.required(fields, "name"), field: "name")
        let vip = try address(try reader.required(fields, "vip"), field: "vip", family: nil, reader: reader)

        let portNode = try reader.required(fields, "port")
        let rawPort = try reader.scalar(portNode, field: "port")
        guard let port = Int(rawPort), (1...65535).contains(port) else {
            throw reader.error(at: portNode, field: "port", Complaint.notAPort(rawPort))
        }

        let protoNode = try reader.required(fields, "protocol")
        let rawProto = try reader.scalar(protoNode, field: "protocol")
        guard let proto = L4Protocol(rawValue: rawProto) else {
            throw reader.error(at: protoNode, field: "protocol", "\(ConfigError.show(rawProto)) is not a protocol (tcp, udp)")
        }

        var forwarding = Forwarding.ipip
        if let node = reader.optional(fields, "forwarding") {
            let raw = try reader.scalar(node, field: "forwarding")
            guard let mode = Forwarding(rawValue: raw) else {
                throw reader.error(at: node, field: "forwarding", Complaint.notAForwardingMode(raw))
            }
            forwarding = mode
        }
        var clientAddress = ClientAddress.none
        if let node = reader.optional(fields, "client_address") {
            let raw = try reader.scalar(node, field: "client_address")
            guard let value = ClientAddress(rawValue: raw) else {
                let values = ClientAddress.allCases.map(\.rawValue).joined(separator: ", ")
                throw reader.error(at: node, field: "client_address", "\(ConfigError.show(raw)) is not a client address (\(values))")
            }
            clientAddress = value
        }

        var backends: [Backend] = []
        for (position, entry) in try reader.sequence(try reader.required(fields, "backends"), field: "backends").enumerated() {
            backends.append(try parseBackend(entry, path: "backends[\(position)]", reader: &reader))
        }
        let healthCheck = try reader.optional(fields, "healthcheck").map { (node: Node) throws(ConfigError) in
            try HealthCheckParser.parse(node, reader: &reader)
        }
        return Service(name: name, vip: vip, port: UInt16(port), proto: proto, forwarding: forwarding,
                       clientAddress: clientAddress, backends: backends,
                       healthCheck: healthCheck)
    }

    private static func parseBackend(_ entry: Node, path: String, reader: inout YAMLReader) throws(ConfigError) -> Backend {
        reader.record(entry, as: reader.lineKey(path))
        let fields = try reader.mapping(entry, path: path, allowed: backendKeys)
        let address = try address(try reader.required(fields, "address"), field: fields.field("address"),
                                  family: nil, reader: reader)
        var weight = 1
        if let node = reader.optional(fields, "weight") {
            let raw = try reader.scalar(node, field: fields.field("weight"))
            guard let value = Int(raw), (0...65535).contains(value) else {
                throw reader.error(at: node, field: fields.field("weight"), Complaint.notAWeight(raw))
            }
            weight = value
        }
        // Whether the service's mode allows a port is the validator's rule (it holds a model too).
        var port: UInt16?
        if let node = reader.optional(fields, "port") {
            let raw = try reader.scalar(node, field: fields.field("port"))
            guard let value = Int(raw), (1...65535).contains(value) else {
                throw reader.error(at: node, field: fields.field("port"), Complaint.notAPort(raw))
            }
            port = UInt16(value)
        }
        return Backend(address: address, weight: weight, port: port)
    }

    private static func address(_ node: Node, field: String, family: IPAddress.Family?,
                                reader: YAMLReader) throws(ConfigError) -> IPAddress {
        let raw = try reader.scalar(node, field: field)
        guard let address = IPAddress(raw), family == nil || address.family == family else {
            throw reader.error(at: node, field: field, Complaint.notAnAddress(raw, family: family))
        }
        return address
    }
}
