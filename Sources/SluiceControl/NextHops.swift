// What an apply of l2dsr, nat and fullnat services needs before it writes: the balancer
// attached, a way to each backend through an attached interface (l2dsr: on-link; the NAT
// modes: the longest-prefix route, connected or via a gateway), and the next hops' MACs from
// the neighbour table. The agent keeps those MACs fresh through `refreshNeighbourMACs`.
import SluiceCore

/// A backend applied without its next hop's MAC: the data plane drops its packets
/// (no_neighbour) until the neighbour answers and a later apply or the agent writes its MAC.
public struct UnresolvedNeighbour: Sendable, Equatable, Codable, CustomStringConvertible {
    public var service: String
    public var backend: IPAddress
    public var interface: String
    /// nat, fullnat: the gateway whose MAC is missing, when the backend is not on-link.
    public var via: IPAddress?

    public init(service: String, backend: IPAddress, interface: String, via: IPAddress? = nil) {
        self.service = service
        self.backend = backend
        self.interface = interface
        self.via = via
    }

    public var description: String {
        guard let via else {
            return "service \"\(service)\": backend \(backend) has no neighbour entry on \(interface) (MAC unresolved: its packets are dropped as no_neighbour until it answers)"
        }
        return "service \"\(service)\": backend \(backend): its gateway \(via) has no neighbour entry on \(interface) (MAC unresolved: the backend's packets are dropped as no_neighbour until the gateway answers)"
    }
}

/// Where a backend's frames go: out of `interface`, to the MAC of `address` (the backend
/// itself when on-link, else the route's gateway), from `interfaceMAC`.
struct NextHop: Sendable, Equatable {
    var interface: NetworkInterface
    var address: IPAddress
    var interfaceMAC: MACAddress
    /// The route's gateway (nil: on-link).
    var gateway: IPAddress?

    /// The hop of `backend` for `mode`, or nil when no route through `attached` reaches it.
    static func find(_ backend: IPAddress, mode: Forwarding, attached: [String],
                     routes: [Route]) -> (interface: String, gateway: IPAddress?)? {
        if mode == .l2dsr {
            return Route.onLinkInterface(for: backend, among: attached, routes: routes).map { ($0, nil) }
        }
        return Route.best(for: backend, among: attached, routes: routes).map { ($0.interface, $0.gateway) }
    }
}

/// The backend slot fields a next hop decides (sl_backend.mac, src_mac, ifindex).
struct BackendHop: Sendable, Equatable {
    var mac: MACAddress?
    var sourceMAC: MACAddress?
    var interfaceIndex: UInt32
}

struct NextHops {
    /// The next hop of each l2dsr or NAT backend, by backend address.
    var hops: [IPAddress: NextHop] = [:]
    /// The MACs found, by next-hop address (all of them after `resolve`, when every neighbour answered).
    var macs: [IPAddress: MACAddress] = [:]

    static func needsHop(_ mode: Forwarding) -> Bool { mode == .l2dsr || mode.translates }

    /// Checks `desired`'s l2dsr and NAT services against the interfaces the balancer runs on;
    /// a service that cannot be served is bad input, and nothing is written.
    init(checking desired: ServiceFile, attached: [String]) throws(ControlError) {
        let services = desired.services.filter { Self.needsHop($0.forwarding) }
        guard !services.isEmpty else { return }
        let routes = Route.table()
        var interfaces: [String: (NetworkInterface, MACAddress)] = [:]
        for service in services {
            let mode = service.forwarding.rawValue
            guard !attached.isEmpty else {
                throw .badInput("service \"\(service.name)\": forwarding \(mode) needs the balancer attached to an interface (lbctl attach IFACE)")
            }
            for backend in service.backends {
                guard let found = NextHop.find(backend.address, mode: service.forwarding, attached: attached, routes: routes) else {
                    if service.forwarding == .l2dsr {
                        throw .badInput("service \"\(service.name)\": backend \(backend.address) is not on-link on \(attached.joined(separator: ", ")) (no connected route covers it); forwarding l2dsr needs backends on the balancer's segment")
                    }
                    throw .badInput("service \"\(service.name)\": backend \(backend.address) has no route through \(attached.joined(separator: ", ")) (neither connected nor via a gateway); forwarding \(mode) sends to backends through an interface the balancer is attached to")
                }
                let name = found.interface, gateway = found.gateway
                if interfaces[name] == nil {
                    let interface = try NetworkInterface.named(name)
                    guard let mac = NetworkInterface.hardwareAddress(of: name) else {
                        throw .badInput("service \"\(service.name)\": interface \(name) toward backend \(backend.address) has no Ethernet address; forwarding \(mode) needs one")
                    }
                    interfaces[name] = (interface, mac)
                }
                let (interface, mac) = interfaces[name]!
                hops[backend.address] = NextHop(interface: interface, address: gateway ?? backend.address, interfaceMAC: mac,
                                                gateway: gateway)
            }
        }
    }

    /// Reads the neighbour table and makes the kernel resolve the missing next hops, all at
    /// once, waiting up to `timeout` in all.
    mutating func resolve(timeout: Duration = .seconds(1)) {
        var targets: [IPAddress: NetworkInterface] = [:]
        for hop in hops.values { targets[hop.address] = hop.interface }
        macs = Neighbours.resolve(targets, timeout: timeout)
    }

    /// The slot fields of `backend`: l2dsr writes only the MAC, the NAT modes all three.
    func slotFields(for backend: IPAddress) -> BackendHop? {
        hops[backend].map { BackendHop(mac: macs[$0.address], sourceMAC: $0.interfaceMAC, interfaceIndex: UInt32($0.interface.index)) }
    }

    /// The l2dsr and NAT backends of `desired` without a next-hop MAC.
    func unresolved(in desired: ServiceFile) -> [UnresolvedNeighbour] {
        desired.services.filter { Self.needsHop($0.forwarding) }.flatMap { service in
            service.backends.compactMap { backend -> UnresolvedNeighbour? in
                guard let hop = hops[backend.address], macs[hop.address] == nil else { return nil }
                return UnresolvedNeighbour(service: service.name, backend: backend.address, interface: hop.interface.name,
                                           via: hop.gateway)
            }
        }
    }
}

extension Dataplane {
    /// Brings the next hops of the applied l2dsr and NAT backends in line with the routing and
    /// neighbour tables, and pokes the neighbours that are missing or not confirmed so the
    /// kernel checks them again (the agent calls it every second). A gateway's new MAC reaches
    /// every backend behind it; a neighbour that vanished keeps its last MAC. Returns how
    /// many backend slots changed.
    public func refreshNeighbourMACs() throws(ControlError) -> Int {
        let services = try appliedState().services.filter { !$0.neighbourBackends.isEmpty }
        guard !services.isEmpty else { return 0 }
        let attached = XDPHook.attachedInterfaces(programID: try programID()).map(\.name)
        let routes = Route.table(), table = Neighbours.table()
        var interfaces: [String: (NetworkInterface, MACAddress?)] = [:]
        var poked = Set<IPAddress>()
        var changes: [UInt32: BackendHop] = [:]
        for applied in services {
            let mode = applied.service.forwarding
            for backend in applied.neighbourBackends {
                guard let found = NextHop.find(backend.address, mode: mode, attached: attached, routes: routes)
                else { continue }
                let name = found.interface, gateway = found.gateway
                if interfaces[name] == nil {
                    guard let interface = try? NetworkInterface.named(name) else { continue }
                    interfaces[name] = (interface, NetworkInterface.hardwareAddress(of: name))
                }
                let (interface, interfaceMAC) = interfaces[name]!
                let target = gateway ?? backend.address
                let entry = table.first { $0.address == target && $0.interfaceIndex == interface.index }
                if entry?.isConfirmed != true, poked.insert(target).inserted { Neighbours.poke(target, via: interface) }
                var hop = BackendHop(mac: entry?.mac ?? backend.mac, sourceMAC: nil, interfaceIndex: 0)
                if mode.translates {
                    hop.sourceMAC = interfaceMAC ?? backend.sourceMAC
                    hop.interfaceIndex = UInt32(interface.index)
                }
                let current = BackendHop(mac: backend.mac, sourceMAC: mode.translates ? backend.sourceMAC : nil,
                                         interfaceIndex: mode.translates ? backend.interfaceIndex : 0)
                if hop != current { changes[backend.id] = hop }
            }
        }
        return try setBackendHops(changes)
    }
}
