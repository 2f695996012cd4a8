// What the pinned maps say is being served, rebuilt as the Swift model plus the slot ids behind it.
import CSluice
import SluiceBPF
import SluiceCore

/// One backend slot of sl_backends that belongs to a service.
public struct AppliedBackend: Sendable, Equatable {
    public var id: UInt32
    public var address: IPAddress
    public var weight: Int
    /// sl_backend.flags: in use, and what health checks decided (enum sl_backend_flags).
    public var flags: UInt8
    /// l2dsr, nat, fullnat: the MAC packets are sent to (the next hop's); nil while not
    /// resolved (or for a tunnel mode).
    public var mac: MACAddress?
    /// nat, fullnat: the port packets are translated to (sl_backend.port); nil in other modes.
    public var port: UInt16?
    /// nat, fullnat: our MAC on the interface toward the backend.
    public var sourceMAC: MACAddress?
    /// nat, fullnat: that interface's index (0: the one packets come in on).
    public var interfaceIndex: UInt32

    public init(id: UInt32, address: IPAddress, weight: Int, flags: UInt8 = UInt8(SL_BACKEND_F_IN_USE.rawValue),
                mac: MACAddress? = nil, port: UInt16? = nil, sourceMAC: MACAddress? = nil, interfaceIndex: UInt32 = 0) {
        self.id = id
        self.address = address
        self.weight = weight
        self.flags = flags
        self.mac = mac
        self.port = port
        self.sourceMAC = sourceMAC
        self.interfaceIndex = interfaceIndex
    }

    /// An agent health-checks it.
    public var isChecked: Bool { flags & UInt8(SL_BACKEND_F_CHECKED.rawValue) != 0 }
    /// Its health check failed.
    public var isDown: Bool { flags & UInt8(SL_BACKEND_F_DOWN.rawValue) != 0 }
    /// Left out of the Maglev table because it is down.
    public var isExcluded: Bool { flags & UInt8(SL_BACKEND_F_EXCLUDED.rawValue) != 0 }
    /// In the Maglev table: new flows may go to it.
    public var takesNewFlows: Bool { weight > 0 && !isExcluded }
}

/// One service as the maps hold it.
public struct AppliedService: Sendable {
    public var slot: UInt32
    public var service: Service
    public var maglevSize: Int
    public var generation: UInt32
    public var backends: [AppliedBackend]
    /// sl_vips holds the VIP, pointing at this slot. False only after an apply was killed
    /// between writing the service and publishing its VIP; the next apply publishes it.
    public var isPublished: Bool
    /// sl_maglev holds a table for the slot. False only after an apply was killed between
    /// removing a service's table and clearing the service; the next apply builds one.
    public var hasTable: Bool

    /// The l2dsr and NAT backends, whose next hops' MACs must follow the neighbour table.
    public var neighbourBackends: [AppliedBackend] {
        service.forwarding == .l2dsr || service.forwarding.translates ? backends : []
    }

    public init(slot: UInt32, service: Service, maglevSize: Int, generation: UInt32, backends: [AppliedBackend],
                isPublished: Bool = true, hasTable: Bool = true) {
        self.slot = slot
        self.service = service
        self.maglevSize = maglevSize
        self.generation = generation
        self.backends = backends
        self.isPublished = isPublished
        self.hasTable = hasTable
    }
}

/// The data plane's configuration, read back from bpffs. Services and
/// backends are read with batched lookups so this stays cheap at scale.
public struct AppliedState: Sendable {
    package var config: sl_config
    /// sl_snat_pools: [IPv4, IPv6].
    package var snatPools: [sl_snat_pool]
    public var services: [AppliedService]
    /// Every backend slot ever written (family != 0), by id, in use or not.
    package var backendSlots: [sl_backend]

    public var serviceFile: ServiceFile {
        let size = config.maglev_size == 0 ? Maglev.defaultTableSize : Int(config.maglev_size)
        return ServiceFile(node: NodeConfig(sourceV4: config.sourceV4, sourceV6: config.sourceV6, maglevTableSize: size,
                                            tunnelMTU: config.fileTunnelMTU, guePort: config.fileGUEPort,
                                            natFlowBudget: fileNATFlowBudget,
                                            snatV4: snatPools[0].addresses(family: .v4), snatV6: snatPools[1].addresses(family: .v6),
                                            snatPorts: snatPools[0].filePorts),
                           services: services.map(\.service))
    }

    /// The NAT flow budget as the service file names it: nil for the default, and before the
    /// first apply (maglev_size still 0), when sl_config holds no budget yet.
    var fileNATFlowBudget: UInt32? {
        let budget = config.nat_flow_budget
        return config.maglev_size == 0 || budget == NodeConfig.defaultNATFlowBudget ? nil : budget
    }

    public func service(named name: String) -> AppliedService? { services.first { $0.service.name == name } }

    /// Backend slots in use for a service slot that holds no service: left by an apply killed
    /// after it wrote a new service's backends and before the service itself, or after it
    /// cleared a removed service and before releasing its backends. No VIP leads to them.
    package var orphanBackendIDs: [UInt32] {
        let owners = Set(services.map(\.slot))
        let inUse = UInt8(SL_BACKEND_F_IN_USE.rawValue)
        return backendSlots.indices.filter { backendSlots[$0].flags & inUse != 0 && !owners.contains(backendSlots[$0].service_id) }
            .map { UInt32($0) }
    }

    static func read(from dataplane: Dataplane) throws(ControlError) -> AppliedState {
        do {
            let config = try dataplane[.config].lookup(UInt32(0), as: sl_config.self) ?? sl_config()
            var pools = try dataplane[.snatPools].arrayValues(as: sl_snat_pool.self)
            while pools.count < 2 { pools.append(sl_snat_pool()) }
            let infos = try dataplane[.services].arrayValues(as: sl_service_info.self)
            let slots = try dataplane[.backends].arrayValues(as: sl_backend.self)
            var byService: [UInt32: [AppliedBackend]] = [:]
            let inUse = UInt8(SL_BACKEND_F_IN_USE.rawValue)
            for (id, backend) in slots.enumerated() where backend.flags & inUse != 0 {
                guard let address = IPAddress(words: backend.addr, family: backend.family) else { continue }
                byService[backend.service_id, default: []].append(
                    AppliedBackend(id: UInt32(id), address: address, weight: Int(backend.weight), flags: backend.flags,
                                   mac: backend.macAddress, port: backend.port == 0 ? nil : UInt16(bigEndian: backend.port),
                                   sourceMAC: backend.sourceMACAddress, interfaceIndex: backend.ifindex))
            }
            // Keys byte for byte, padding included (every key is built zeroed): VIP -> slot.
            let published = Dictionary(try dataplane[.vips].hashEntries(key: sl_vip_key.self, value: sl_vip.self).map {
                (withUnsafeBytes(of: $0.0) { Array($0) }, $0.1.id)
            }, uniquingKeysWith: { first, _ in first })
            var services: [AppliedService] = []
            for (slot, info) in infos.enumerated() where info.name.0 != 0 {
                guard let vip = info.vip.address, let proto = info.vip.l4Protocol,
                      let forwarding = Forwarding(cValue: info.forwarding) else { continue }
                let backends = byService[UInt32(slot)] ?? []
                // A backend's port is the service's unless it says otherwise (Service.withoutHealthCheck).
                let port = info.vip.hostPort
                let proxy = info.vip_flags & UInt8(SL_VIP_F_PROXY_V2.rawValue) != 0
                let service = Service(name: info.serviceName, vip: vip, port: port, proto: proto,
                                      forwarding: forwarding, clientAddress: proxy ? .proxyV2 : .none,
                                      backends: backends.map {
                                          Backend(address: $0.address, weight: $0.weight,
                                                  port: forwarding.translates && $0.port != port ? $0.port : nil)
                                      })
                let key = sl_vip_key(service: service)
                let isPublished = published[withUnsafeBytes(of: key) { Array($0) }] == UInt32(slot)
                let hasTable = try dataplane[.maglev].lookup(UInt32(slot), as: UInt32.self) != nil
                services.append(AppliedService(slot: UInt32(slot), service: service, maglevSize: Int(info.maglev_size),
                                               generation: info.generation, backends: backends, isPublished: isPublished,
                                               hasTable: hasTable))
            }
            return AppliedState(config: config, snatPools: pools, services: services, backendSlots: slots)
        } catch {
            throw .bpf(error, while: "reading the applied configuration from \(dataplane.pinPath)")
        }
    }
}
