// Conversions between the Swift model and the C structs of lb_shared.h.
import CSluice
import SluiceCore

extension IPAddress {
    var cWords: (UInt32, UInt32, UInt32, UInt32) { words }

    init?(cWords: (UInt32, UInt32, UInt32, UInt32), family: UInt8) {
        guard let family = IPAddress.Family(rawValue: family) else { return nil }
        self.init(words: cWords, family: family)
    }
}

extension sl_vip_key {
    package init(service: Service) {
        self.init()
        addr = service.vip.words
        port = service.port.bigEndian
        proto = service.proto.number
        family = service.vip.family.rawValue
    }

    var address: IPAddress? { IPAddress(cWords: addr, family: family) }
    var hostPort: UInt16 { UInt16(bigEndian: port) }
    var l4Protocol: L4Protocol? { L4Protocol(number: proto) }
}

extension L4Protocol {
    init?(number: UInt8) {
        switch number {
        case L4Protocol.tcp.number: self = .tcp
        case L4Protocol.udp.number: self = .udp
        default: return nil
        }
    }
}

extension sl_service_info {
    var serviceName: String {
        withUnsafeBytes(of: name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    mutating func setName(_ value: String) {
        withUnsafeMutableBytes(of: &name) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            for (i, byte) in value.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
    }
}

extension sl_config {
    var sourceV4: IPAddress? {
        flags & UInt8(SL_CFG_HAS_SOURCE_V4.rawValue) != 0 ? IPAddress(cWords: (source_v4, 0, 0, 0), family: 4) : nil
    }
    var sourceV6: IPAddress? {
        flags & UInt8(SL_CFG_HAS_SOURCE_V6.rawValue) != 0 ? IPAddress(cWords: source_v6, family: 6) : nil
    }
    var gateway: MACAddress? {
        guard flags & UInt8(SL_CFG_HAS_GATEWAY.rawValue) != 0 else { return nil }
        return MACAddress(bytes: withUnsafeBytes(of: gateway_mac) { Array($0) })
    }

    mutating func setSources(v4: IPAddress?, v6: IPAddress?) {
        let v4Flag = UInt8(SL_CFG_HAS_SOURCE_V4.rawValue), v6Flag = UInt8(SL_CFG_HAS_SOURCE_V6.rawValue)
        flags &= ~(v4Flag | v6Flag)
        source_v4 = v4?.words.0 ?? 0
        source_v6 = v6?.words ?? (0, 0, 0, 0)
        if v4 != nil { flags |= v4Flag }
        if v6 != nil { flags |= v6Flag }
    }

    /// SL_CFG_NAT: NAT flows may exist, so the data plane tests packets for no VIP as replies.
    mutating func setNAT(_ on: Bool) {
        let flag = UInt8(SL_CFG_NAT.rawValue)
        flags = on ? flags | flag : flags & ~flag
    }

    /// tunnel_mtu when the service file set it (SL_CFG_TUNNEL_MTU_SET), else nil.
    var fileTunnelMTU: Int? {
        flags & UInt8(SL_CFG_TUNNEL_MTU_SET.rawValue) != 0 ? Int(tunnel_mtu) : nil
    }

    /// The GUE port as the service file names it: nil for the default (or never applied).
    var fileGUEPort: UInt16? {
        let port = UInt16(bigEndian: gue_port)
        return port == 0 || port == NodeConfig.defaultGUEPort ? nil : port
    }

    /// `mtu` as the path's MTU; `fromFile` sets SL_CFG_TUNNEL_MTU_SET.
    mutating func setTunnelMTU(_ mtu: Int, fromFile: Bool) {
        tunnel_mtu = UInt16(clamping: mtu)
        let set = UInt8(SL_CFG_TUNNEL_MTU_SET.rawValue)
        flags = fromFile ? flags | set : flags & ~set
    }

    mutating func setGateway(_ mac: MACAddress) {
        withUnsafeMutableBytes(of: &gateway_mac) { raw in
            for (i, byte) in mac.bytes.enumerated() { raw[i] = byte }
        }
        flags |= UInt8(SL_CFG_HAS_GATEWAY.rawValue)
    }
}

extension Forwarding {
    /// enum sl_forwarding.
    var cValue: UInt8 {
        switch self {
        case .ipip: UInt8(SL_FWD_IPIP.rawValue)
        case .gue: UInt8(SL_FWD_GUE.rawValue)
        case .l2dsr: UInt8(SL_FWD_L2DSR.rawValue)
        case .nat: UInt8(SL_FWD_NAT.rawValue)
        case .fullnat: UInt8(SL_FWD_FULLNAT.rawValue)
        }
    }

    init?(cValue: UInt8) {
        guard let mode = Forwarding.allCases.first(where: { $0.cValue == cValue }) else { return nil }
        self = mode
    }
}

extension sl_backend {
    /// The resolved MAC (l2dsr), nil when all zero.
    var macAddress: MACAddress? {
        let bytes = withUnsafeBytes(of: mac) { Array($0) }
        return bytes.allSatisfy { $0 == 0 } ? nil : MACAddress(bytes: bytes)
    }

    mutating func setMAC(_ address: MACAddress?) {
        withUnsafeMutableBytes(of: &mac) { raw in
            for i in raw.indices { raw[i] = address?.bytes[i] ?? 0 }
        }
    }

    /// nat, fullnat: our MAC toward the backend, nil when all zero.
    var sourceMACAddress: MACAddress? {
        let bytes = withUnsafeBytes(of: src_mac) { Array($0) }
        return bytes.allSatisfy { $0 == 0 } ? nil : MACAddress(bytes: bytes)
    }

    mutating func setSourceMAC(_ address: MACAddress?) {
        withUnsafeMutableBytes(of: &src_mac) { raw in
            for i in raw.indices { raw[i] = address?.bytes[i] ?? 0 }
        }
    }
}

extension sl_snat_pool {
    /// A pool of `addresses` (at most SL_MAX_SNAT_ADDRS, of one family) and `ports`.
    init(addresses: [IPAddress], ports: PortRange) {
        self.init()
        withUnsafeMutableBytes(of: &addr) { raw in
            let words = raw.bindMemory(to: UInt32.self)
            for (i, address) in addresses.prefix(Int(SL_MAX_SNAT_ADDRS)).enumerated() {
                let w = address.words
                (words[i * 4], words[i * 4 + 1], words[i * 4 + 2], words[i * 4 + 3]) = (w.0, w.1, w.2, w.3)
            }
        }
        count = UInt8(min(addresses.count, Int(SL_MAX_SNAT_ADDRS)))
        port_min = ports.low
        port_max = ports.high
    }

    /// The first `count` addresses, in slot order (sl_ct_entry.snat_index indexes them).
    func addresses(family: IPAddress.Family) -> [IPAddress] {
        withUnsafeBytes(of: addr) { raw in
            let words = raw.bindMemory(to: UInt32.self)
            return (0..<min(Int(count), Int(SL_MAX_SNAT_ADDRS))).compactMap { i in
                IPAddress(words: (words[i * 4], words[i * 4 + 1], words[i * 4 + 2], words[i * 4 + 3]), family: family)
            }
        }
    }

    /// The port range as the service file names it: nil for the default (or never applied).
    var filePorts: PortRange? {
        let range = PortRange(low: port_min, high: port_max)
        return port_min == 0 || range == NodeConfig.defaultSNATPorts ? nil : range
    }
}

/// Two C structs byte for byte, padding included (every one is built zeroed).
func bytewiseEqual<T>(_ lhs: T, _ rhs: T) -> Bool {
    withUnsafeBytes(of: lhs) { l in withUnsafeBytes(of: rhs) { r in l.elementsEqual(r) } }
}
