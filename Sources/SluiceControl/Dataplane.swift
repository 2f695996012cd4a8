// The pinned balancer of one pin path: the one owner of its program and maps, and the typed
// operations lbctl and the agent perform on them. No map or C struct leaves this module's
// public API; tests and benchmarks of this package reach the maps through `package` access.
import CLibbpf
import CSluice
import Glibc
import SluiceBPF
import SluiceCore

/// The balancer pinned at one pin path. The maps are pinned by name (LIBBPF_PIN_BY_NAME),
/// the program as `sl_balancer`, so any later lbctl process or the agent picks them up.
///
/// It holds descriptors only, so it is Sendable; what orders the writes is its user: lbctl
/// is one thread, and the agent keeps its one instance inside an actor of its own
/// (SluiceAgent's `DataplaneOwner`).
public final class Dataplane: Sendable {
    public static let defaultPinPath = "/sys/fs/bpf/sluice"

    /// The balancer's maps (bpf/maps.h).
    package enum Map: String, MapList {
        case vips = "sl_vips"
        case vipFilter = "sl_vip_filter"
        case vipEpochs = "sl_vip_epochs"
        case maglev = "sl_maglev"
        case backends = "sl_backends"
        case conntrack = "sl_conntrack"
        case ctUnconfirmed = "sl_ct_unconfirmed"
        case nat = "sl_nat"
        case natBudget = "sl_nat_budget"
        case snatPools = "sl_snat_pools"
        case progs = "sl_progs"
        case flowEvents = "sl_flow_events"
        case clock = "sl_clock"
        case peers = "sl_peers"
        case config = "sl_config"
        case stats = "sl_stats"
        case vipStats = "sl_vip_stats"
        case backendStats = "sl_backend_stats"
        case services = "sl_services"

        package static let object = ObjectKind(what: "balancer", objectName: "sluice", program: SL_PROG_BALANCER,
                                               loadCommand: "lbctl attach IFACE", elf: { EmbeddedObjects.balancer })
    }

    private let pinned: PinnedObject<Map>

    private init(_ pinned: PinnedObject<Map>) { self.pinned = pinned }

    var pinnedObject: PinnedObject<Map> { pinned }
    public var pinPath: String { pinned.pinPath }
    package var program: BPFProgram { pinned.program }
    package subscript(_ map: Map) -> BPFMap { pinned[map] }

    /// True when a balancer is pinned at `pinPath`.
    public static func isPinned(at pinPath: String) -> Bool { PinnedObject<Map>.isPinned(at: pinPath) }

    /// Opens what is pinned at `pinPath`.
    public static func open(pinPath: String) throws(ControlError) -> Dataplane {
        Dataplane(try PinnedObject<Map>.open(at: pinPath))
    }

    /// Opens the pinned data plane, or loads the embedded object and pins it. The NAT table
    /// (sl_nat) holds one entry per NAT flow, so it is sized like conntrack unless `natSize`
    /// says otherwise (tests, whose many balancers at once would otherwise hold gigabytes).
    /// The table of UDP flows seen once (sl_ct_unconfirmed) only has to hold the flows of
    /// one round trip, so it is conntrack's size up to SL_CT_UNCONFIRMED_DEFAULT_SIZE.
    public static func openOrLoad(pinPath: String, conntrackSize: UInt32 = UInt32(SL_CT_DEFAULT_SIZE),
                                  natSize: UInt32? = nil) throws(ControlError) -> Dataplane {
        Dataplane(try PinnedObject<Map>.openOrLoad(at: pinPath) { object throws(BPFError) in
            try object.setMaxEntries(map: Map.conntrack.rawValue, conntrackSize)
            try object.setMaxEntries(map: Map.ctUnconfirmed.rawValue, min(conntrackSize, UInt32(SL_CT_UNCONFIRMED_DEFAULT_SIZE)))
            try object.setMaxEntries(map: Map.nat.rawValue, natSize ?? conntrackSize)
        })
    }

    /// Removes every pin of the balancer (not the decapsulator's), and the directory if it is then empty.
    public static func removePins(at pinPath: String) { PinnedObject<Map>.removePins(at: pinPath) }

    /// The id of the balancer program pinned at `pinPath`, reading no map.
    public static func pinnedProgramID(at pinPath: String) throws(ControlError) -> UInt32 {
        try XDPHook.programID(try BPFProgram.openPinnedOrThrow(PinnedObject<Map>.programPin(pinPath)))
    }

    /// The kernel's id of the pinned program.
    public func programID() throws(ControlError) -> UInt32 { try pinned.programID() }

    /// How many flows the connection table holds at most.
    public var conntrackCapacity: Int { self[.conntrack].info.maxEntries }

    // MARK: - Operations

    /// What the maps say is applied.
    public func appliedState() throws(ControlError) -> AppliedState { try AppliedState.read(from: self) }

    /// Applies `desired` (see `Applier.apply`).
    public func apply(_ desired: ServiceFile, dryRun: Bool = false, health: HealthVerdicts? = nil) throws(ControlError) -> ApplyResult {
        try Applier.apply(desired, to: self, dryRun: dryRun, health: health)
    }

    /// What `lbctl status` shows.
    public func status() throws(ControlError) -> StatusReport {
        try StatusReport.read(from: self, state: try appliedState())
    }

    /// Every counter, node-wide and per service and backend (of `state`, when it was just read).
    public func counters(state: AppliedState? = nil) throws(ControlError) -> CounterSnapshot {
        if let state { return try CounterSnapshot.read(from: self, state: state) }
        return try CounterSnapshot.read(from: self, state: try appliedState())
    }

    /// The node-wide counters alone (one map read).
    public func nodeCounters() throws(ControlError) -> NodeCounters { try NodeCounters.read(from: self) }

    /// The connection table's trusted entries.
    public func flows() throws(ControlError) -> [FlowEntry] {
        try FlowEntry.read(from: self, state: try appliedState())
    }

    /// Writes the next hop's MAC, keeping the other node settings.
    public func setGateway(_ mac: MACAddress) throws(ControlError) {
        try updateConfig { $0.setGateway(mac) }
    }

    /// Writes the MACs of l2dsr backends, by backend id: only the sl_backends slots whose MAC
    /// differs. Returns how many changed.
    @discardableResult
    public func setBackendMACs(_ macs: [UInt32: MACAddress]) throws(ControlError) -> Int {
        var written = 0
        do {
            for (id, mac) in macs.sorted(by: { $0.key < $1.key }) {
                guard var slot = try self[.backends].lookup(id, as: sl_backend.self), slot.family != 0,
                      slot.macAddress != mac else { continue }
                slot.setMAC(mac)
                try self[.backends].update(id, slot)
                written += 1
            }
        } catch {
            throw .bpf(error, while: "writing backend MACs into \(Map.backends.rawValue)")
        }
        return written
    }

    /// Writes the next-hop fields of l2dsr and NAT backends, by backend id: the MAC (kept
    /// when nil), and for NAT backends our MAC and the interface toward them; only the slots
    /// that differ. Returns how many changed.
    func setBackendHops(_ hops: [UInt32: BackendHop]) throws(ControlError) -> Int {
        var written = 0
        do {
            for (id, hop) in hops.sorted(by: { $0.key < $1.key }) {
                guard var slot = try self[.backends].lookup(id, as: sl_backend.self), slot.family != 0 else { continue }
                let old = slot
                if let mac = hop.mac { slot.setMAC(mac) }
                if Forwarding(cValue: slot.forwarding)?.translates == true {
                    if let mac = hop.sourceMAC { slot.setSourceMAC(mac) }
                    slot.ifindex = hop.interfaceIndex
                }
                guard !bytewiseEqual(slot, old) else { continue }
                try self[.backends].update(id, slot)
                written += 1
            }
        } catch {
            throw .bpf(error, while: "writing backend next hops into \(Map.backends.rawValue)")
        }
        return written
    }

    /// Writes the MTU of an interface the balancer is attached to into sl_config.tunnel_mtu,
    /// unless the service file set it.
    public func setInterfaceMTU(_ mtu: Int) throws(ControlError) {
        try updateConfig { config in
            if config.fileTunnelMTU == nil { config.setTunnelMTU(mtu, fromFile: false) }
        }
    }

    /// Changes sl_config in place (a read and, when it changed, one write).
    func updateConfig(_ change: (inout sl_config) -> Void) throws(ControlError) {
        do {
            let old = try self[.config].lookup(UInt32(0), as: sl_config.self) ?? sl_config()
            var config = old
            change(&config)
            if bytewiseEqual(config, old) { return }
            try self[.config].update(UInt32(0), config)
        } catch {
            throw .bpf(error, while: "writing \(Map.config.rawValue)")
        }
    }
}

/// The BPF objects compiled into this binary by the Makefile.
public enum EmbeddedObjects {
    public static var balancer: [UInt8] {
        var size = 0
        let bytes = CSluice_balancer_object(&size)!
        return Array(UnsafeBufferPointer(start: bytes, count: size))
    }

    public static var decap: [UInt8] {
        var size = 0
        let bytes = CSluice_decap_object(&size)!
        return Array(UnsafeBufferPointer(start: bytes, count: size))
    }
}
