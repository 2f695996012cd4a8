// The prefilter model: the bit of a key, the bitmap of a service set.

import SluiceCore
import Testing

struct VIPFilterTests {
    @Test func theBitIsTheFibonacciHashOfTheKeyFoldedAsTheDataPlaneFoldsIt() {
        // 198.51.100.10:80/tcp: addr[0] = 0x0a6433c6 (network bytes c6 33 64 0a loaded
        // little-endian), port 0x5000 as it sits in the key, protocol 6 at bit 16.
        let x: UInt32 = 0x0a64_33c6 ^ (0x5000 | 6 << 16)
        let expected = Int((x &* 0x9e37_79b1) >> 16)
        #expect(VIPFilter.bit(address: IPAddress("198.51.100.10")!, port: 80, protocolNumber: 6) == expected)
        // IPv6: the four words folded by XOR.
        let v6 = IPAddress("2001:db8::80")!
        let w = v6.words
        let y = w.0 ^ w.1 ^ w.2 ^ w.3 ^ (0xbb01 | 17 << 16)
        #expect(VIPFilter.bit(address: v6, port: 443, protocolNumber: 17) == Int((y &* 0x9e37_79b1) >> 16))
    }

    @Test func aFilterContainsEveryServiceItWasBuiltFromAndLittleElse() {
        let services = (0..<100).map { i in
            Service(name: "s\(i)", vip: IPAddress("198.51.100.\(i)")!, port: UInt16(80 + i), proto: i % 2 == 0 ? .tcp : .udp,
                    forwarding: .ipip, backends: [Backend(address: IPAddress("10.0.0.1")!, weight: 1)])
        }
        let filter = VIPFilter(services: services)
        #expect(services.allSatisfy { filter.mayContain(address: $0.vip, port: $0.port, protocolNumber: $0.proto.number) })
        let setBits = filter.words.reduce(0) { $0 + $1.nonzeroBitCount }
        #expect(setBits > 90 && setBits <= 100, "\(setBits) bits for 100 VIPs")
        // Other destinations mostly miss: about 100 / 65536 of them collide.
        let others = (0..<10_000).filter { i in
            filter.mayContain(address: IPAddress("203.0.\(i / 256 % 256).\(i % 256)")!, port: 443, protocolNumber: 6)
        }
        #expect(others.count < 100, "\(others.count) of 10,000 non-VIPs collide")
        #expect(VIPFilter().union(filter) == filter)
    }

    @Test func aNATServiceAddsTheReplyBitOfEachBackendsAddressPortAndProtocol() {
        let backends = [Backend(address: IPAddress("10.2.0.11")!, port: 8443), Backend(address: IPAddress("10.2.0.12")!)]
        let nat = Service(name: "api", vip: IPAddress("198.51.100.20")!, port: 443, proto: .tcp, forwarding: .fullnat,
                          backends: backends)
        var tunnel = nat
        tunnel.name = "tunnelled"
        tunnel.forwarding = .ipip
        tunnel.backends = backends.map { Backend(address: $0.address) }
        let filter = VIPFilter(services: [nat])
        #expect(filter.mayBeReply(address: IPAddress("10.2.0.11")!, port: 8443, protocolNumber: 6))
        #expect(filter.mayBeReply(address: IPAddress("10.2.0.12")!, port: 443, protocolNumber: 6), "the service's port")
        // The reply bit is a VIP key's bit with SL_VIP_FILTER_REPLY (0x80) in the protocol.
        #expect(VIPFilter.replyFlag == 0x80)
        #expect(filter.mayContain(address: IPAddress("10.2.0.11")!, port: 8443, protocolNumber: 6 | 0x80))
        let bits = filter.words.reduce(0) { $0 + $1.nonzeroBitCount }
        #expect(bits == 3 || filter.mayContain(address: nat.vip, port: 443, protocolNumber: 6), "the VIP and two replies")
        let plain = VIPFilter(services: [tunnel])
        #expect(plain.words.reduce(0) { $0 + $1.nonzeroBitCount } == 1, "a tunnel mode's backends have no reply bits")
    }
}
