// The pinned data plane: loading the embedded balancer object, pinning it, and reopening the pins.
import CLibbpf
import CSluice
import Glibc
import SluiceBPF

/// Handles on every map and the balancer program under one pin path.
/// The maps are pinned by name (LIBBPF_PIN_BY_NAME), the program as
/// `sl_balancer`, so any later lbctl process or the agent can pick them up.
public final class Dataplane {
    public static let defaultPinPath = "/sys/fs/bpf/sluice"

    public let pinPath: String
    public let program: BPFProgram
    public let vips: BPFMap
    public let maglev: BPFMap
    public let backends: BPFMap
    public let conntrack: BPFMap
    public let config: BPFMap
    public let stats: BPFMap
    public let vipStats: BPFMap
    public let backendStats: BPFMap
    public let services: BPFMap
    public let vipFilter: BPFMap
    public let vipEpochs: BPFMap
    /// New flows for the agent to sync (a ring buffer of sl_flow_event).
    public let flowEvents: BPFMap
    /// The agent's sync peers by origin index, for `lbctl flows`.
    public let peers: BPFMap
    /// The agent's clock in seconds, which conntrack entries remember as last_seen.
    public let clock: BPFMap
    private let object: BPFObject?

    private init(pinPath: String, program: BPFProgram, object: BPFObject?, map: (String) throws(BPFError) -> BPFMap) throws(BPFError) {
        self.pinPath = pinPath
        self.program = program
        self.object = object
        vips = try map(SL_MAP_VIPS)
        maglev = try map(SL_MAP_MAGLEV)
        backends = try map(SL_MAP_BACKENDS)
        conntrack = try map(SL_MAP_CONNTRACK)
        config = try map(SL_MAP_CONFIG)
        stats = try map(SL_MAP_STATS)
        vipStats = try map(SL_MAP_VIP_STATS)
        backendStats = try map(SL_MAP_BACKEND_STATS)
        services = try map(SL_MAP_SERVICES)
        vipFilter = try map(SL_MAP_VIP_FILTER)
        vipEpochs = try map(SL_MAP_VIP_EPOCHS)
        flowEvents = try map(SL_MAP_FLOW_EVENTS)
        peers = try map(SL_MAP_PEERS)
        clock = try map(SL_MAP_CLOCK)
    }

    static func programPin(_ pinPath: String) -> String { "\(pinPath)/\(SL_PROG_BALANCER)" }

    /// True when a balancer is pinned at `pinPath`.
    public static func isPinned(at pinPath: String) -> Bool {
        access(programPin(pinPath), F_OK) == 0
    }

    /// The id of the balancer program pinned at `pinPath`, reading no map.
    public static func pinnedProgramID(at pinPath: String) throws(ControlError) -> UInt32 {
        let program: BPFProgram
        do { program = try BPFProgram.openPinned(programPin(pinPath)) } catch {
            throw .bpf(error, while: "opening the balancer pinned at \(pinPath)")
        }
        return try XDPHook.programID(program)
    }

    /// Opens what is pinned at `pinPath`.
    public static func open(pinPath: String) throws(ControlError) -> Dataplane {
        guard isPinned(at: pinPath) else {
            throw .runtime("no Sluice data plane is pinned at \(pinPath) (run 'lbctl attach IFACE' first)")
        }
        let dataplane: Dataplane
        do {
            let program = try BPFProgram.openPinned(programPin(pinPath))
            dataplane = try Dataplane(pinPath: pinPath, program: program, object: nil) { name throws(BPFError) in
                try BPFMap.openPinned("\(pinPath)/\(name)")
            }
        } catch where error.isNotFound {
            // The program is pinned (checked above) but one of today's maps is not:
            // an older lbctl loaded it.
            throw .runtime("the balancer pinned at \(pinPath) was loaded by an older lbctl (\(error.context) is missing): "
                           + "run 'lbctl detach IFACE' and 'lbctl attach IFACE' to load this version")
        } catch {
            throw .bpf(error, while: "opening the data plane pinned at \(pinPath)")
        }
        guard dataplane.conntrack.info.valueSize == MemoryLayout<sl_ct_entry>.size,
              dataplane.stats.info.valueSize == MemoryLayout<sl_stats>.size else {
            throw .runtime("the balancer pinned at \(pinPath) was loaded by an older lbctl (its map layouts differ): "
                           + "run 'lbctl detach IFACE' and 'lbctl attach IFACE' to load this version")
        }
        return dataplane
    }

    /// Opens the pinned data plane, or loads the embedded object and pins it.
    public static func openOrLoad(pinPath: String, conntrackSize: UInt32 = UInt32(SL_CT_DEFAULT_SIZE)) throws(ControlError) -> Dataplane {
        if isPinned(at: pinPath) { return try open(pinPath: pinPath) }
        try PinDirectory.prepare(pinPath)
        LibbpfLog.warningsToStderr()
        do {
            let object = try BPFObject(elf: EmbeddedObjects.balancer, name: "sluice", pinRoot: pinPath)
            try object.setMaxEntries(map: SL_MAP_CONNTRACK, conntrackSize)
            try object.load()
            let program = try object.program(named: SL_PROG_BALANCER)
            try program.pin(at: programPin(pinPath))
            return try Dataplane(pinPath: pinPath, program: program, object: object) { name throws(BPFError) in
                try object.map(named: name)
            }
        } catch {
            throw .bpf(error, while: "loading the balancer into \(pinPath)")
        }
    }

    /// Removes every pin this data plane made, and the directory if it is then empty.
    public static func removePins(at pinPath: String) {
        let names = [SL_PROG_BALANCER, SL_MAP_VIPS, SL_MAP_MAGLEV, SL_MAP_BACKENDS, SL_MAP_CONNTRACK, SL_MAP_CONFIG,
                     SL_MAP_STATS, SL_MAP_VIP_STATS, SL_MAP_BACKEND_STATS, SL_MAP_SERVICES, SL_MAP_VIP_FILTER,
                     SL_MAP_VIP_EPOCHS, SL_MAP_FLOW_EVENTS, SL_MAP_PEERS, SL_MAP_CLOCK]
        PinDirectory.unpin(names, at: pinPath)
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
