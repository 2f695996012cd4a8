// Sets a service's forwarding mode and the node's tunnel settings straight in
// the maps, as an apply writes them, for the data-plane tests and the bench,
// which measure the packet path of each mode. (That an apply of `forwarding:`,
// `tunnel_mtu:` and `gue_port:` writes these is ApplyTests' to check.)
import CSluice
import SluiceControl

public struct ForwardingSetupError: Error, CustomStringConvertible {
    public let description: String
}

extension Dataplane {
    /// Gives every backend of the applied service `name` the mode `mode` and `mac`.
    package func setForwarding(_ mode: sl_forwarding, of name: String, mac: [UInt8] = [0, 0, 0, 0, 0, 0]) throws {
        precondition(mac.count == 6, "a MAC address is 6 bytes")
        let state = try appliedState()
        guard let applied = state.service(named: name) else { throw ForwardingSetupError(description: "no service \(name)") }
        for backend in applied.backends {
            var slot = state.backendSlots[Int(backend.id)]
            slot.forwarding = UInt8(mode.rawValue)
            withUnsafeMutableBytes(of: &slot.mac) { raw in for (i, byte) in mac.enumerated() { raw[i] = byte } }
            try self[.backends].update(backend.id, slot)
        }
    }

    /// Sets node.tunnel_mtu (0: no limit) and node.gue_port in sl_config.
    package func setTunnel(mtu: UInt16, guePort: UInt16 = UInt16(SL_GUE_DEFAULT_PORT)) throws {
        var config = try self[.config].lookup(UInt32(0), as: sl_config.self) ?? sl_config()
        config.tunnel_mtu = mtu
        config.gue_port = guePort.bigEndian
        try self[.config].update(UInt32(0), config)
    }
}
