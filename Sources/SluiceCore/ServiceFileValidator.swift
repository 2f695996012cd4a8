// The rules a ServiceFile must satisfy beyond its shape: names, uniqueness,
// address families, tunnel sources, SNAT pools and what the NAT modes allow,
// table size and capacity. They run on the
// model, so a file built in code or decoded from JSON is held to them too; the
// parser passes the lines it saw so the errors still point into the file.

extension ServiceFile {
    /// Throws the first rule this file breaks. `file` names the source in the error.
    public func validate(file: String, limits: ServiceFileParser.Limits = .default) throws(ConfigError) {
        try ServiceFileValidator(file: file, limits: limits, lines: [:]).validate(self)
    }
}

struct ServiceFileValidator {
    let file: String
    let limits: ServiceFileParser.Limits
    /// Lines by field path, as recorded by YAMLReader; empty for a model from code.
    let lines: [String: Int]

    /// sl_service_info.name is SL_SERVICE_NAME_LEN (64) bytes with its NUL.
    static let maxNameBytes = 63

    func validate(_ config: ServiceFile) throws(ConfigError) {
        try validateNode(config)
        var names: [String: Int] = [:]
        var endpoints: [String: Int] = [:]
        var totalBackends = 0
        for (index, service) in config.services.enumerated() {
            try validateName(service, index: index, names: &names, services: config.services)
            if service.port == 0 {
                throw fail(index, service, "port", Complaint.notAPort("0"))
            }
            if let other = endpoints.updateValue(index, forKey: service.endpoint) {
                throw fail(index, service, "vip", "\(service.endpoint) is already served by \(describe(other, config.services))")
            }
            if service.backends.isEmpty {
                throw fail(index, service, "backends", "is empty; a service needs at least one backend")
            }
            totalBackends += service.backends.count
            if totalBackends > limits.maxBackends {
                throw fail(index, service, "backends",
                           "brings the total to \(totalBackends) backends, over the limit of \(limits.maxBackends)")
            }
            if service.backends.count > config.node.maglevTableSize {
                throw fail(index, service, "backends",
                           "\(service.backends.count) backends do not fit a Maglev table of \(config.node.maglevTableSize) slots (node.maglev_table_size)")
            }
            try validateBackends(service, index: index, node: config.node)
        }
    }

    private func validateNode(_ config: ServiceFile) throws(ConfigError) {
        if config.services.count > limits.maxServices {
            throw fail(nil, nil, "services", "\(config.services.count) services exceed the limit of \(limits.maxServices)")
        }
        let node = config.node
        if let source = node.sourceV4, source.family != .v4 {
            throw fail(nil, nil, "node.source_v4", Complaint.notAnAddress(source.description, family: .v4))
        }
        if let source = node.sourceV6, source.family != .v6 {
            throw fail(nil, nil, "node.source_v6", Complaint.notAnAddress(source.description, family: .v6))
        }
        let size = node.maglevTableSize
        if size < Maglev.minimumTableSize || size > limits.maxMaglevSize || !Maglev.isPrime(size) {
            throw fail(nil, nil, "node.maglev_table_size", Complaint.notATableSize(String(size), limit: limits.maxMaglevSize))
        }
        if let mtu = node.tunnelMTU, !NodeConfig.tunnelMTURange.contains(mtu) {
            throw fail(nil, nil, "node.tunnel_mtu", Complaint.notATunnelMTU(String(mtu)))
        }
        if node.guePort == 0 {
            throw fail(nil, nil, "node.gue_port", Complaint.notAPort("0"))
        }
        try validateSNAT(node.snatV4, key: "snat_v4", family: .v4)
        try validateSNAT(node.snatV6, key: "snat_v6", family: .v6)
        if let ports = node.snatPorts, !ports.isValid {
            throw fail(nil, nil, "node.snat_ports", Complaint.notAPortRange(ports.description))
        }
    }

    /// A SNAT list fits sl_snat_pool.addr, holds its family only, and names each address once
    /// (a second copy would only skew the allocation toward it).
    private func validateSNAT(_ addresses: [IPAddress], key: String, family: IPAddress.Family) throws(ConfigError) {
        if addresses.count > NodeConfig.maxSNATAddresses {
            throw fail(nil, nil, "node.\(key)",
                       "\(addresses.count) addresses exceed the limit of \(NodeConfig.maxSNATAddresses) (SL_MAX_SNAT_ADDRS)")
        }
        var seen: [IPAddress: Int] = [:]
        for (index, address) in addresses.enumerated() {
            let field = "node.\(key)[\(index)]"
            if address.family != family {
                throw fail(nil, nil, field, Complaint.notAnAddress(address.description, family: family))
            }
            if let first = seen.updateValue(index, forKey: address) {
                throw fail(nil, nil, field, "\(address) is listed twice (also node.\(key)[\(first)])")
            }
        }
    }

    private func validateName(_ service: Service, index: Int, names: inout [String: Int],
                              services: [Service]) throws(ConfigError) {
        let name = service.name
        if name.isEmpty {
            throw fail(index, service, "name", "is empty")
        }
        if name.utf8.count > Self.maxNameBytes {
            throw fail(index, service, "name", "\(String(reflecting: name)) is longer than \(Self.maxNameBytes) bytes")
        }
        if !name.utf8.allSatisfy(Self.isNameByte) {
            throw fail(index, service, "name",
                       "\(String(reflecting: name)) may only contain letters, digits, '.', '_' and '-'")
        }
        if let other = names.updateValue(index, forKey: name) {
            throw fail(index, service, "name", "\(String(reflecting: name)) is also the name of \(describe(other, services))")
        }
    }

    private func validateBackends(_ service: Service, index: Int, node: NodeConfig) throws(ConfigError) {
        let mode = service.forwarding
        if service.clientAddress == .proxyV2 && (mode != .fullnat || service.proto != .tcp) {
            throw fail(index, service, "client_address",
                       "proxy-v2 needs forwarding fullnat and protocol tcp, not forwarding \(mode.rawValue) and protocol \(service.proto.rawValue): the data plane writes the header into a full-NAT TCP stream")
        }
        // Full NAT's sources come from the pool of the backends' family, which is the VIP's.
        if mode == .fullnat && node.snatAddresses(for: service.vip.family).isEmpty {
            let key = service.vip.family == .v4 ? "node.snat_v4" : "node.snat_v6"
            throw fail(index, service, "forwarding",
                       "fullnat toward \(service.vip.family) backends needs \(key), this node's source addresses for them, which is empty")
        }
        var seen: [IPAddress: Int] = [:]
        for (position, backend) in service.backends.enumerated() {
            let path = "backends[\(position)]"
            if !(0...65535).contains(backend.weight) {
                throw fail(index, service, "\(path).weight", Complaint.notAWeight(String(backend.weight)))
            }
            let address = backend.address
            if let first = seen.updateValue(position, forKey: address) {
                throw fail(index, service, "\(path).address", "\(address) is listed twice (also backends[\(first)])")
            }
            if let port = backend.port {
                guard mode.translates else {
                    throw fail(index, service, "\(path).port",
                               "\(port): a backend port applies to forwarding nat and fullnat only, not \(mode.rawValue)")
                }
                if port == 0 { throw fail(index, service, "\(path).port", Complaint.notAPort("0")) }
            }
            if mode.translates && address.family != service.vip.family {
                throw fail(index, service, "\(path).address",
                           "\(address.family) backend \(address) cannot serve \(service.vip.family) VIP \(service.vip) with forwarding \(mode.rawValue): addresses are not translated across families")
            }
            // l2dsr and the NAT modes build no tunnel: no outer source needed.
            guard service.forwarding.tunnels else { continue }
            // 4in6 exists; 6in4 does not (the data plane never builds it).
            if service.vip.family == .v6 && address.family == .v4 {
                throw fail(index, service, "\(path).address",
                           "IPv4 backend \(address) cannot serve IPv6 VIP \(service.vip): there is no 6in4 tunnel")
            }
            if node.source(for: address.family) == nil {
                let key = address.family == .v4 ? "node.source_v4" : "node.source_v6"
                throw fail(index, service, "\(path).address",
                           "\(address.family) backend \(address) needs \(key), the outer source of \(address.family) tunnels, which is not set")
            }
        }
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            true
        default:
            false
        }
    }

    /// `service "web" (services[0], line 3)`, to name the other party of a clash.
    private func describe(_ index: Int, _ services: [Service]) -> String {
        let line = lines["services[\(index)]"].map { ", line \($0)" } ?? ""
        return "service \(String(reflecting: services[index].name)) (services[\(index)]\(line))"
    }

    /// An error at `field` of service `index` (or of the file when nil), on the
    /// most precise line known: the field's, else the service's.
    private func fail(_ index: Int?, _ service: Service?, _ field: String, _ message: String) -> ConfigError {
        let key = index.map { "services[\($0)].\(field)" } ?? field
        let line = lines[key] ?? index.flatMap { lines["services[\($0)]"] }
        return ConfigError(file: file, line: line, service: service?.name, serviceIndex: index,
                           field: field, message: message)
    }
}

/// Messages shared by the parser and the validator, so both say the same thing.
enum Complaint {
    static func notAPort(_ raw: String) -> String {
        "\(ConfigError.show(raw)) is not a port (1-65535)"
    }

    static func notAWeight(_ raw: String) -> String {
        "\(ConfigError.show(raw)) is not a weight (0-65535)"
    }

    static func notAnAddress(_ raw: String, family: IPAddress.Family?) -> String {
        "\(ConfigError.show(raw)) is not an \(family?.description ?? "IP") address"
    }

    static func notATunnelMTU(_ raw: String) -> String {
        "\(ConfigError.show(raw)) is not a tunnel MTU (\(NodeConfig.tunnelMTURange.lowerBound)-\(NodeConfig.tunnelMTURange.upperBound))"
    }

    static func notANATFlowBudget(_ raw: String) -> String {
        "\(ConfigError.show(raw)) is not a NAT flow budget (new translations per second per CPU, 0-\(UInt32.max); 0 = no limit)"
    }

    static func notAForwardingMode(_ raw: String) -> String {
        let modes = Forwarding.allCases.map(\.rawValue).joined(separator: ", ")
        return "\(ConfigError.show(raw)) is not a forwarding mode (\(modes))"
    }

    static func notAPortRange(_ raw: String) -> String {
        "\(ConfigError.show(raw)) is not a port range LOW-HIGH with 1 <= LOW <= HIGH <= 65535 (e.g. 1024-65535)"
    }

    static func notATableSize(_ raw: String, limit: Int?) -> String {
        let range = limit.map { "from \(Maglev.minimumTableSize) to \($0)" } ?? "of at least \(Maglev.minimumTableSize)"
        return "\(ConfigError.show(raw)) is not a valid Maglev table size (a prime \(range))"
    }
}
