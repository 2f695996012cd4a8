// What applying a desired service file changes on a node: services matched by
// name, backends by address. Used by `apply --dry-run`, by the reconciler to
// touch only what changed, and as JSON in API answers (snake_case keys).

public struct ConfigDiff: Equatable, Sendable, Codable {
    /// Names of services only in the desired file, sorted.
    public var servicesAdded: [String]
    /// The desired definitions of `servicesAdded`, same order.
    public var addedServices: [Service]
    /// Names of services only in the current file, sorted.
    public var servicesRemoved: [String]
    /// Services in both whose definition differs, sorted by name.
    public var servicesChanged: [ServiceChange]
    public var nodeChanged: Bool
    /// The node settings that differ, in key order.
    public var nodeChanges: [ValueChange]

    public var isEmpty: Bool {
        servicesAdded.isEmpty && servicesRemoved.isEmpty && servicesChanged.isEmpty && !nodeChanged
    }

    public static func between(current: ServiceFile, desired: ServiceFile) -> ConfigDiff {
        let now = Dictionary(current.services.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let next = Dictionary(desired.services.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })

        let added = next.keys.filter { now[$0] == nil }.sorted()
        let removed = now.keys.filter { next[$0] == nil }.sorted()
        let changed = next.keys.sorted().compactMap { name in
            now[name].flatMap { ServiceChange.between(current: $0, desired: next[name]!) }
        }
        let nodeChanges = ValueChange.between(current.node, desired.node)
        return ConfigDiff(servicesAdded: added, addedServices: added.map { next[$0]! },
                          servicesRemoved: removed, servicesChanged: changed,
                          nodeChanged: !nodeChanges.isEmpty, nodeChanges: nodeChanges)
    }

    /// One line per change, for people:
    /// `+ service web 198.51.100.10:80/tcp (3 backends)`, `- service old`,
    /// `~ service api: + backend 10.0.0.5 (weight 1), - backend 10.0.0.4, weight 10.0.0.3 1 -> 2`,
    /// `~ node: source_v4 192.0.2.10 -> 192.0.2.11`.
    public var lines: [String] {
        var lines: [String] = []
        if nodeChanged {
            lines.append("~ node: " + nodeChanges.map(\.text).joined(separator: ", "))
        }
        for service in addedServices {
            let count = service.backends.count
            lines.append("+ service \(service.name) \(service.endpoint) (\(count) backend\(count == 1 ? "" : "s"))")
        }
        for name in servicesRemoved {
            lines.append("- service \(name)")
        }
        for change in servicesChanged {
            lines.append("~ service \(change.name): " + change.parts.joined(separator: ", "))
        }
        return lines
    }

    private enum CodingKeys: String, CodingKey {
        case servicesAdded = "services_added"
        case addedServices = "added_services"
        case servicesRemoved = "services_removed"
        case servicesChanged = "services_changed"
        case nodeChanged = "node_changed"
        case nodeChanges = "node_changes"
    }
}

/// How one service, matched by name, differs.
public struct ServiceChange: Equatable, Sendable, Codable {
    public var name: String
    /// The VIP, port or protocol changed: the service moves.
    public var vipChanged: Bool
    /// Old and new endpoint (`198.51.100.10:80/tcp`) when `vipChanged`.
    public var vipChange: ValueChange?
    /// Sorted.
    public var backendsAdded: [IPAddress]
    /// The desired definitions of `backendsAdded`, same order.
    public var addedBackends: [Backend]
    /// Sorted.
    public var backendsRemoved: [IPAddress]
    /// Sorted by address.
    public var weightsChanged: [WeightChange]
    /// nat, fullnat: backends whose port in effect changed (the service's port when unset),
    /// sorted by address. New flows go to the new port; established ones keep their translation.
    public var portsChanged: [PortChange] = []
    /// Old and new health check (`none` when unset), when it changed.
    public var healthCheckChange: ValueChange?
    /// Old and new forwarding mode, when it changed: the backends and established flows stay,
    /// and their next packets go the new way.
    public var forwardingChange: ValueChange?
    /// Old and new client address (`none`, `proxy-v2`), when it changed: new connections get
    /// (or no longer get) the PROXY v2 header; open ones keep what they were opened with.
    public var clientAddressChange: ValueChange?

    /// Nil when the two are the same (backend order does not count).
    static func between(current: Service, desired: Service) -> ServiceChange? {
        let vipChanged = current.vip != desired.vip || current.port != desired.port
            || current.proto != desired.proto
        let forwardingChanged = current.forwarding != desired.forwarding
        let now = Dictionary(current.backends.map { ($0.address, $0) }, uniquingKeysWith: { first, _ in first })
        let next = Dictionary(desired.backends.map { ($0.address, $0) }, uniquingKeysWith: { first, _ in first })

        let added = next.keys.filter { now[$0] == nil }.sorted()
        let removed = now.keys.filter { next[$0] == nil }.sorted()
        let weights = next.keys.sorted().compactMap { address -> WeightChange? in
            guard let old = now[address]?.weight, let new = next[address]?.weight, old != new else { return nil }
            return WeightChange(address: address, from: old, to: new)
        }
        // Only between two translating modes: a mode change says it all otherwise.
        let ports = !(current.forwarding.translates && desired.forwarding.translates) ? [] :
            next.keys.sorted().compactMap { address -> PortChange? in
                guard let old = now[address]?.effectivePort(in: current), let new = next[address]?.effectivePort(in: desired),
                      old != new else { return nil }
                return PortChange(address: address, from: old, to: new)
            }
        let healthChanged = current.healthCheck != desired.healthCheck
        let clientAddressChanged = current.clientAddress != desired.clientAddress
        guard vipChanged || forwardingChanged || !added.isEmpty || !removed.isEmpty || !weights.isEmpty || !ports.isEmpty
            || healthChanged || clientAddressChanged
        else { return nil }
        return ServiceChange(
            name: desired.name, vipChanged: vipChanged,
            vipChange: vipChanged ? ValueChange(field: "vip", from: current.endpoint, to: desired.endpoint) : nil,
            backendsAdded: added, addedBackends: added.map { next[$0]! },
            backendsRemoved: removed, weightsChanged: weights, portsChanged: ports,
            healthCheckChange: healthChanged
                ? ValueChange(field: "healthcheck", from: current.healthCheck?.summary ?? "none",
                              to: desired.healthCheck?.summary ?? "none")
                : nil,
            forwardingChange: forwardingChanged
                ? ValueChange(field: "forwarding", from: current.forwarding.rawValue, to: desired.forwarding.rawValue)
                : nil,
            clientAddressChange: clientAddressChanged
                ? ValueChange(field: "client_address", from: current.clientAddress.rawValue, to: desired.clientAddress.rawValue)
                : nil)
    }

    /// The pieces of this service's diff line, VIP first.
    var parts: [String] {
        var parts: [String] = []
        if let vipChange { parts.append(vipChange.text) }
        if let forwardingChange { parts.append(forwardingChange.text) }
        if let clientAddressChange { parts.append(clientAddressChange.text) }
        parts += addedBackends.map { "+ backend \($0.address)\($0.port.map { " port \($0)" } ?? "") (weight \($0.weight))" }
        parts += backendsRemoved.map { "- backend \($0)" }
        parts += weightsChanged.map { "weight \($0.address) \($0.from) -> \($0.to)" }
        parts += portsChanged.map { "port \($0.address) \($0.from) -> \($0.to)" }
        if let healthCheckChange { parts.append(healthCheckChange.text) }
        return parts
    }

    private enum CodingKeys: String, CodingKey {
        case name
        case vipChanged = "vip_changed"
        case vipChange = "vip_change"
        case backendsAdded = "backends_added"
        case addedBackends = "added_backends"
        case backendsRemoved = "backends_removed"
        case weightsChanged = "weights_changed"
        case portsChanged = "ports_changed"
        case healthCheckChange = "healthcheck_change"
        case forwardingChange = "forwarding_change"
        case clientAddressChange = "client_address_change"
    }
}

public struct WeightChange: Equatable, Sendable, Codable {
    public var address: IPAddress
    public var from: Int
    public var to: Int

    public init(address: IPAddress, from: Int, to: Int) {
        self.address = address
        self.from = from
        self.to = to
    }
}

/// A NAT backend's port in effect, before and after.
public struct PortChange: Equatable, Sendable, Codable {
    public var address: IPAddress
    public var from: UInt16
    public var to: UInt16

    public init(address: IPAddress, from: UInt16, to: UInt16) {
        self.address = address
        self.from = from
        self.to = to
    }
}

/// One setting's old and new value, as text (`none` when unset).
public struct ValueChange: Equatable, Sendable, Codable {
    public var field: String
    public var from: String
    public var to: String

    public init(field: String, from: String, to: String) {
        self.field = field
        self.from = from
        self.to = to
    }

    var text: String { "\(field) \(from) -> \(to)" }

    static func between(_ current: NodeConfig, _ desired: NodeConfig) -> [ValueChange] {
        func text(_ address: IPAddress?) -> String { address?.description ?? "none" }
        var changes: [ValueChange] = []
        if current.sourceV4 != desired.sourceV4 {
            changes.append(ValueChange(field: "source_v4", from: text(current.sourceV4), to: text(desired.sourceV4)))
        }
        if current.sourceV6 != desired.sourceV6 {
            changes.append(ValueChange(field: "source_v6", from: text(current.sourceV6), to: text(desired.sourceV6)))
        }
        if current.maglevTableSize != desired.maglevTableSize {
            changes.append(ValueChange(field: "maglev_table_size", from: String(current.maglevTableSize),
                                       to: String(desired.maglevTableSize)))
        }
        if current.tunnelMTU != desired.tunnelMTU {
            changes.append(ValueChange(field: "tunnel_mtu", from: current.tunnelMTU.map(String.init) ?? "none",
                                       to: desired.tunnelMTU.map(String.init) ?? "none"))
        }
        // An unset port is the default one: naming it changes nothing in the data plane.
        if current.effectiveGUEPort != desired.effectiveGUEPort {
            changes.append(ValueChange(field: "gue_port", from: String(current.effectiveGUEPort),
                                       to: String(desired.effectiveGUEPort)))
        }
        // Likewise an unset budget is the default one.
        if current.effectiveNATFlowBudget != desired.effectiveNATFlowBudget {
            changes.append(ValueChange(field: "nat_flow_budget", from: String(current.effectiveNATFlowBudget),
                                       to: String(desired.effectiveNATFlowBudget)))
        }
        // The pool is a set to the operator: apply keeps each address's slot in the pool, so
        // a reordered list changes nothing.
        for (field, old, new) in [("snat_v4", current.snatV4, desired.snatV4), ("snat_v6", current.snatV6, desired.snatV6)]
            where Set(old) != Set(new) {
            changes.append(ValueChange(field: field, from: list(old), to: list(new)))
        }
        if current.effectiveSNATPorts != desired.effectiveSNATPorts {
            changes.append(ValueChange(field: "snat_ports", from: current.effectiveSNATPorts.description,
                                       to: desired.effectiveSNATPorts.description))
        }
        return changes
    }

    private static func list(_ addresses: [IPAddress]) -> String {
        addresses.isEmpty ? "none" : "[" + addresses.map(\.description).joined(separator: ", ") + "]"
    }
}
