// The VIP prefilter: after every apply sl_vip_filter holds exactly the bits
// the Swift model (SluiceCore.VIPFilter) computes for the applied VIPs; the
// program tests the very bit the model names; and a packet for no VIP whose
// bit collides with a VIP's still passes untouched, because sl_vips decides.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// Twenty services on random IPv4 and IPv6 VIPs, ports and protocols (a fixed seed).
private let randomServices: String = {
    var rng = SeededGenerator(seed: 0x5111_ce00_f11e)
    var lines = ["node:", "  source_v4: 192.0.2.10", "  source_v6: \"2001:db8:ffff::10\"", "  maglev_table_size: 251",
                 "services:"]
    for i in 0..<20 {
        let vip = i % 2 == 0
            ? "198.51.\(UInt8.random(in: 0...255, using: &rng)).\(UInt8.random(in: 1...254, using: &rng))"
            : "\"2001:db8:\(String(UInt16.random(in: 1...0xffff, using: &rng), radix: 16))::\(String(UInt16.random(in: 1...0xffff, using: &rng), radix: 16))\""
        let backend = i % 2 == 0 ? "10.9.0.\(i + 1)" : "\"2001:db8:9::\(i + 1)\""
        lines.append("  - { name: s\(i), vip: \(vip), port: \(UInt16.random(in: 1...65535, using: &rng)), "
                     + "protocol: \(i % 3 == 0 ? "udp" : "tcp"), backends: [ {address: \(backend)} ] }")
    }
    return lines.joined(separator: "\n")
}()

/// A first packet of a flow to the service's VIP.
private func packet(to service: Service, from client: String? = nil) -> [UInt8] {
    let source = client ?? (service.vip.family == .v4 ? "198.18.0.1" : "2001:db8:c::1")
    return service.proto == .udp
        ? PacketBuilder().udp(from: source, 4000, to: service.vip.description, service.port)
        : PacketBuilder().tcp(from: source, 4000, to: service.vip.description, service.port, flags: [.syn])
}

@Suite(requiresRoot)
struct PrefilterTests {
    private func filter(of lb: TestDataplane) throws -> VIPFilter {
        VIPFilter(words: try lb.dataplane[.vipFilter].arrayValues(as: UInt64.self))
    }

    @Test func theBitsInTheMapAfterEachApplyAreExactlyTheModelsBitsForTheAppliedVIPs() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        #expect(try filter(of: lb) == VIPFilter(services: lb.serviceFile.services))
        #expect(try filter(of: lb) != VIPFilter(), "an applied VIP sets bits")

        // Remove some services and move one VIP: their bits are cleared (unless another VIP needs them).
        var file = lb.serviceFile
        file.services.removeAll { ["dns", "web6"].contains($0.name) }
        file.services[0].vip = IPAddress("198.51.100.99")!
        try lb.apply(file)
        #expect(try filter(of: lb) == VIPFilter(services: file.services))

        try lb.apply(yaml: randomServices)
        #expect(try filter(of: lb) == VIPFilter(services: lb.serviceFile.services))

        try lb.apply(yaml: "node: { source_v4: 192.0.2.10, maglev_table_size: 251 }\nservices: []\n")
        #expect(try filter(of: lb) == VIPFilter(), "no VIP, no bit")
    }

    @Test func theProgramTestsTheBitTheModelComputesForEveryVIP() async throws {
        let lb = try await TestDataplane.make(yaml: randomServices)
        for service in lb.serviceFile.services {
            let bit = VIPFilter.bit(address: service.vip, port: service.port, protocolNumber: service.proto.number)
            let word = UInt32(bit / VIPFilter.wordBits), mask = UInt64(1) << UInt64(bit % VIPFilter.wordBits)
            let frame = packet(to: service)

            // Every bit set but the model's: the program must pass the VIP's packet.
            let all = [UInt64](repeating: .max, count: VIPFilter.wordCount)
            try lb.dataplane[.vipFilter].updateBatch(keys: (0..<UInt32(VIPFilter.wordCount)).map { $0 }, values: all)
            try lb.dataplane[.vipFilter].update(word, ~mask)
            var before = try lb.nodeStats()
            var (verdict, output) = try lb.run(frame)
            #expect(verdict == XDPVerdict.pass.rawValue && output == frame, "\(service.name): its bit clear -> pass")
            #expect(try lb.nodeStats() - before == NodeStats(.pass))

            // Only the model's bit set: the program must find the VIP.
            let none = [UInt64](repeating: 0, count: VIPFilter.wordCount)
            try lb.dataplane[.vipFilter].updateBatch(keys: (0..<UInt32(VIPFilter.wordCount)).map { $0 }, values: none)
            try lb.dataplane[.vipFilter].update(word, mask)
            before = try lb.nodeStats()
            (verdict, output) = try lb.run(frame)
            #expect(verdict == XDPVerdict.tx.rawValue, "\(service.name): only its bit set -> tunnelled")
            // A SYN is placed and records nothing; a UDP flow's first datagram misses conntrack and is held.
            let udp: UInt64 = service.proto == .udp ? 1 : 0
            #expect(try lb.nodeStats() - before == NodeStats(.tx, ctMisses: udp, ctUnconfirmed: udp))
        }
    }

    @Test func aPacketForNoVIPWhoseBitCollidesWithAVIPsStillPassesUntouched() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        let filter = try filter(of: lb)
        var rng = SeededGenerator(seed: 7)

        // Destinations that are no VIP but whose bit is set: search the model.
        var collisions: [(String, UInt16)] = []
        while collisions.count < 2 {
            let v4 = collisions.isEmpty
            let address = v4 ? IPAddress("203.0.\(UInt8.random(in: 0...255, using: &rng)).\(UInt8.random(in: 1...254, using: &rng))")!
                : IPAddress("2001:db8:77::\(String(UInt16.random(in: 1...0xffff, using: &rng), radix: 16))")!
            let port = UInt16.random(in: 1...65535, using: &rng)
            guard filter.mayContain(address: address, port: port, protocolNumber: L4Protocol.tcp.number),
                  lb.model.service(for: IPFlow(frame: PacketBuilder().tcp(from: v4 ? "198.18.0.1" : "2001:db8:c::1", 4000,
                                                                          to: address.description, port))!) == nil
            else { continue }
            collisions.append((address.description, port))
        }
        for (i, (address, port)) in collisions.enumerated() {
            let client = i == 0 ? "198.18.0.1" : "2001:db8:c::1"
            for flags: Set<TCPFlag> in [[.syn], [.ack]] {
                let frame = PacketBuilder().tcp(from: client, 4000, to: address, port, flags: flags)
                let before = try lb.nodeStats()
                let (verdict, output) = try lb.run(frame)
                #expect(verdict == XDPVerdict.pass.rawValue, "\(address):\(port) collides, is no VIP")
                #expect(output == frame, "untouched")
                #expect(try lb.nodeStats() - before == NodeStats(.pass), "\(address):\(port) \(flags)")
            }
        }
    }
}
