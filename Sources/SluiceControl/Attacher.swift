// lbctl attach and detach: load or reuse the pinned balancer, point it at a next hop, hook it to an interface.
import CSluice
import Glibc
import SluiceBPF
import SluiceCore

public enum Attacher {
    public struct Outcome: Sendable {
        public var interface: NetworkInterface
        public var mode: XDPMode
        public var gateway: MACAddress
        public var alreadyAttached: Bool
    }

    /// Attaches the balancer pinned at `pinPath` (loading it first if needed).
    /// Re-running it changes nothing but the gateway; another program on the
    /// interface is an error, never replaced.
    public static func attach(interface name: String, mode: XDPMode, gateway: MACAddress?, pinPath: String,
                              conntrackSize: UInt32) throws(ControlError) -> Outcome {
        let interface = try NetworkInterface.named(name)
        let existing = try XDPHook.query(interface)
        // Everything that can be refused is checked before anything is loaded or written.
        let pinned: UInt32? = Dataplane.isPinned(at: pinPath) ? try programID(try Dataplane.open(pinPath: pinPath)) : nil
        try XDPHook.refuseOther(existing, ours: pinned, on: interface)
        let mac: MACAddress
        if let gateway { mac = gateway } else { mac = try GatewayResolver.resolve(interface: name) }
        let dataplane = try Dataplane.openOrLoad(pinPath: pinPath, conntrackSize: conntrackSize)
        do {
            var config = try dataplane.config.lookup(UInt32(0), as: sl_config.self) ?? sl_config()
            config.setGateway(mac)
            try dataplane.config.update(UInt32(0), config)
        } catch {
            throw .bpf(error, while: "writing the gateway MAC")
        }
        if let existing {
            return Outcome(interface: interface, mode: existing.mode, gateway: mac, alreadyAttached: true)
        }
        do {
            try XDPHook.attach(dataplane.program, to: interface, mode: mode)
        } catch {
            // A balancer loaded just now for this attach is not left pinned behind.
            if pinned == nil {
                Dataplane.removePins(at: pinPath)
            }
            throw error
        }
        return Outcome(interface: interface, mode: mode, gateway: mac, alreadyAttached: false)
    }

    public struct DetachOutcome: Sendable {
        public var wasAttached: Bool
        public var pinsRemoved: Bool
        /// Interfaces of this namespace still running the pinned balancer.
        public var stillAttached: [String]
    }

    /// Detaches the balancer from `interface` and, when no interface of this
    /// namespace still runs it, removes its pins.
    public static func detach(interface name: String, pinPath: String) throws(ControlError) -> DetachOutcome {
        let interface = try NetworkInterface.named(name)
        // Only the program pin is read: a balancer pinned by an older lbctl
        // may lack maps this one has, and must still be detachable.
        let ours: UInt32? = Dataplane.isPinned(at: pinPath) ? try Dataplane.pinnedProgramID(at: pinPath) : nil
        let wasAttached = try XDPHook.detach(interface, ours: ours, what: "the Sluice balancer pinned at \(pinPath)")
        let still = ours.map { id in attachedInterfaces(programID: id).map(\.name) } ?? []
        if ours != nil && still.isEmpty { Dataplane.removePins(at: pinPath) }
        return DetachOutcome(wasAttached: wasAttached, pinsRemoved: ours != nil && still.isEmpty, stillAttached: still)
    }

    /// Interfaces of this namespace whose XDP program is `programID`.
    public static func attachedInterfaces(programID: UInt32) -> [(name: String, mode: XDPMode)] {
        XDPHook.attachedInterfaces(programID: programID)
    }

    static func programID(_ dataplane: Dataplane) throws(ControlError) -> UInt32 {
        try XDPHook.programID(dataplane.program)
    }
}
