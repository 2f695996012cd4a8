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

    mutating func setGateway(_ mac: MACAddress) {
        withUnsafeMutableBytes(of: &gateway_mac) { raw in
            for (i, byte) in mac.bytes.enumerated() { raw[i] = byte }
        }
        flags |= UInt8(SL_CFG_HAS_GATEWAY.rawValue)
    }
}
