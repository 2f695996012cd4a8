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
    /// l2dsr: the MAC packets are sent to; nil while not resolved (or for a tunnel mode).
    public var mac: MACAddress?

    public init(id: UInt32, address: IPAddress, weight: Int, flags: UInt8 = UInt8(SL_BACKEND_F_IN_USE.rawValue),
                mac: MACAddress? = nil) {
        self.id = id
        self.address = address
        self.weight = weight
        self.flags = flags
        self.mac = mac
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

    /// The l2dsr backends, whose MACs must follow the neighbour table.
    public var neighbourBackends: [AppliedBackend] { service.forwarding == .l2dsr ? backends : [] }

    public init(slot: UInt32, service: Service, maglevSize: Int, generation: UInt32, backends: [AppliedBackend]) {
        self.slot = slot
        self.service = service
        self.maglevSize = maglevSize
        self.generation = generation
        self.backends = backends
    }
}

/// The data plane's configuration, read back from bpffs. Services and
/// backends are read with batched lookups so this stays cheap at scale.
public struct AppliedState: Sendable {
    package var config: sl_config
    public var services: [AppliedService]
    /// Every backend slot ever written (family != 0), by id, in use or not.
    package var backendSlots: [sl_backend]

    public var serviceFile: ServiceFile {
        let size = config.maglev_size == 0 ? Maglev.defaultTableSize : Int(config.maglev_size)
        return ServiceFile(node: NodeConfig(sourceV4: config.sourceV4, sourceV6: config.sourceV6, maglevTableSize: size,
                                            tunnelMTU: config.fileTunnelMTU, guePort: config.fileGUEPort),
                           services: services.map(\.service))
    }

    public func service(named name: String) -> AppliedService? { services.first { $0.service.name == name } }

    static func read(from dataplane: Dataplane) throws(ControlError) -> AppliedState {
        do {
            let config = try dataplane[.config].lookup(UInt32(0), as: sl_config.self) ?? sl_config()
            let infos = try dataplane[.services].arrayValues(as: sl_service_info.self)
            let slots = try dataplane[.backends].arrayValues(as: sl_backend.self)
            var byService: [UInt32: [AppliedBackend]] = [:]
            let inUse = UInt8(SL_BACKEND_F_IN_USE.rawValue)
            for (id, backend) in slots.enumerated() where backend.flags & inUse != 0 {
                guard let address = IPAddress(words: backend.addr, family: backend.family) else { continue }
                byService[backend.service_id, default: []].append(
                    AppliedBackend(id: UInt32(id), address: address, weight: Int(backend.weight), flags: backend.flags,
                                   mac: backend.macAddress))
            }
            var services: [AppliedService] = []
            for (slot, info) in infos.enumerated() where info.name.0 != 0 {
                guard let vip = info.vip.address, let proto = info.vip.l4Protocol,
                      let forwarding = Forwarding(cValue: info.forwarding) else { continue }
                let backends = byService[UInt32(slot)] ?? []
                let service = Service(name: info.serviceName, vip: vip, port: info.vip.hostPort, proto: proto,
                                      forwarding: forwarding,
                                      backends: backends.map { Backend(address: $0.address, weight: $0.weight) })
                services.append(AppliedService(slot: UInt32(slot), service: service, maglevSize: Int(info.maglev_size),
                                               generation: info.generation, backends: backends))
            }
            return AppliedState(config: config, services: services, backendSlots: slots)
        } catch {
            throw .bpf(error, while: "reading the applied configuration from \(dataplane.pinPath)")
        }
    }
}
