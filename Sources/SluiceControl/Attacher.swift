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
        // Everything that can be refused is checked before anything is loaded or written.
        let check = try PinnedObject<Dataplane.Map>.checkAttach(name, pinPath: pinPath)
        let mac: MACAddress
        if let gateway { mac = gateway } else { mac = try GatewayResolver.resolve(interface: name) }
        let dataplane = try Dataplane.openOrLoad(pinPath: pinPath, conntrackSize: conntrackSize)
        let outcome = try PinnedObject<Dataplane.Map>.finishAttach(check, dataplane.pinnedObject, mode: mode) { _ throws(ControlError) in
            try dataplane.setGateway(mac)
            if let mtu = NetworkInterface.mtu(of: name) { try dataplane.setInterfaceMTU(mtu) }
        }
        return Outcome(interface: outcome.interface, mode: outcome.mode, gateway: mac, alreadyAttached: outcome.alreadyAttached)
    }

    /// Detaches the balancer from `interface` and, when no interface of this
    /// namespace still runs it, removes its pins.
    public static func detach(interface name: String, pinPath: String) throws(ControlError) -> DetachOutcome {
        try PinnedObject<Dataplane.Map>.detach(interface: name, pinPath: pinPath)
    }

    /// Interfaces of this namespace whose XDP program is `programID`.
    public static func attachedInterfaces(programID: UInt32) -> [(name: String, mode: XDPMode)] {
        XDPHook.attachedInterfaces(programID: programID)
    }
}
