// Sets a service's forwarding mode and the node's tunnel settings straight in
// the maps, as an apply writes them, for the data-plane tests and the bench,
// which measure the packet path of each mode. (That an apply of `forwarding:`,
// `tunnel_mtu:` and `gue_port:` writes these is ApplyTests' to check.)
import CSluice
import SluiceControl
import SluiceCore

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

extension Dataplane {
    /// Makes the applied service `name` a NAT service as an apply of `forwarding: nat|fullnat`
    /// writes it: every backend's mode, port (`port`, else the service's), next hop `nextHop`,
    /// our MAC toward it and its interface (0: the one packets come in on); the VIP's mode; and
    /// the prefilter bits of the backends' replies and the node's SL_CFG_NAT.
    package func setNAT(_ mode: sl_forwarding, of name: String, port: UInt16? = nil, nextHop: [UInt8],
                        localMAC: [UInt8] = [0, 0, 0, 0, 0, 0], ifindex: UInt32 = 0) throws {
        precondition(nextHop.count == 6 && localMAC.count == 6, "a MAC address is 6 bytes")
        let state = try appliedState()
        guard let applied = state.service(named: name) else { throw ForwardingSetupError(description: "no service \(name)") }
        let backendPort = port ?? applied.service.port
        var filter = VIPFilter(words: try self[.vipFilter].arrayValues(as: UInt64.self))
        let before = filter
        for backend in applied.backends {
            var slot = state.backendSlots[Int(backend.id)]
            slot.forwarding = UInt8(mode.rawValue)
            slot.port = backendPort.bigEndian
            withUnsafeMutableBytes(of: &slot.mac) { raw in for (i, byte) in nextHop.enumerated() { raw[i] = byte } }
            withUnsafeMutableBytes(of: &slot.src_mac) { raw in for (i, byte) in localMAC.enumerated() { raw[i] = byte } }
            slot.ifindex = ifindex
            try self[.backends].update(backend.id, slot)
            filter.insert(address: backend.address, port: backendPort,
                          protocolNumber: applied.service.proto.number | UInt8(SL_VIP_FILTER_REPLY))
        }
        let key = sl_vip_key(service: applied.service)
        guard var vip = try self[.vips].lookup(key, as: sl_vip.self) else { throw ForwardingSetupError(description: "\(name) has no VIP") }
        vip.forwarding = UInt8(mode.rawValue)
        try self[.vips].update(key, vip)
        for i in filter.words.indices where filter.words[i] != before.words[i] { try self[.vipFilter].update(UInt32(i), filter.words[i]) }
        var config = try self[.config].lookup(UInt32(0), as: sl_config.self) ?? sl_config()
        config.flags |= UInt8(SL_CFG_NAT.rawValue)
        try self[.config].update(UInt32(0), config)
    }

    /// Sets or clears the PROXY v2 flag of a service's VIP, as apply writes `client_address`.
    package func setProxyV2(_ on: Bool = true, of name: String) throws {
        let state = try appliedState()
        guard let applied = state.service(named: name) else { throw ForwardingSetupError(description: "no service \(name)") }
        let key = sl_vip_key(service: applied.service)
        guard var vip = try self[.vips].lookup(key, as: sl_vip.self) else { throw ForwardingSetupError(description: "\(name) has no VIP") }
        let flag = UInt8(SL_VIP_F_PROXY_V2.rawValue)
        vip.flags = on ? vip.flags | flag : vip.flags & ~flag
        try self[.vips].update(key, vip)
    }

    /// Writes the SNAT pool of a family (sl_snat_pools[0] for IPv4, [1] for IPv6).
    package func setSNATPool(_ addresses: [IPAddress], ports: ClosedRange<UInt16>) throws {
        precondition(!addresses.isEmpty && addresses.count <= Int(SL_MAX_SNAT_ADDRS))
        var pool = sl_snat_pool()
        withUnsafeMutableBytes(of: &pool.addr) { raw in
            let words = raw.bindMemory(to: UInt32.self)
            for (i, address) in addresses.enumerated() {
                let w = address.words
                (words[4 * i], words[4 * i + 1], words[4 * i + 2], words[4 * i + 3]) = (w.0, w.1, w.2, w.3)
            }
        }
        pool.port_min = ports.lowerBound
        pool.port_max = ports.upperBound
        pool.count = UInt8(addresses.count)
        try self[.snatPools].update(UInt32(addresses[0].family == .v4 ? 0 : 1), pool)
    }
}
