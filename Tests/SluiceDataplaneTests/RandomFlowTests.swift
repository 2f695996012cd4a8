// Ten thousand random flows against several services with weighted backends:
// the data plane must send every one exactly where the Swift model of its
// flow hash and Maglev tables says, in a well-formed tunnel.

import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// A fixed seed gives the same flows on every run.
typealias SeededGenerator = SplitMix64

private let manyServices = """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"
      maglev_table_size: 4099
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        backends:
          - { address: 10.2.0.1, weight: 1 }
          - { address: 10.2.0.2, weight: 2 }
          - { address: 10.2.0.3, weight: 3 }
          - { address: 10.2.0.4, weight: 1 }
          - { address: 10.2.0.5, weight: 0 }
      - name: dns
        vip: 198.51.100.10
        port: 53
        protocol: udp
        backends:
          - { address: 10.2.1.1, weight: 10 }
          - { address: 10.2.1.2, weight: 10 }
          - { address: 10.2.1.3, weight: 5 }
      - name: api6
        vip: "2001:db8::443"
        port: 443
        protocol: tcp
        backends:
          - { address: "2001:db8:3::1" }
          - { address: "2001:db8:3::2" }
          - { address: "2001:db8:3::3" }
          - { address: "2001:db8:3::4", weight: 4 }
      - name: dns6
        vip: "2001:db8::53"
        port: 53
        protocol: udp
        backends:
          - { address: "2001:db8:3::53", weight: 1 }
          - { address: "2001:db8:3::54", weight: 100 }
      - name: mixed
        vip: 198.51.100.20
        port: 8443
        protocol: tcp
        backends:
          - { address: 10.2.2.1, weight: 2 }
          - { address: "2001:db8:4::1", weight: 1 }
          - { address: "2001:db8:4::2", weight: 1 }
    """

@Suite(requiresRoot)
struct RandomFlowTests {
    @Test func tenThousandRandomFlowsGoToTheBackendTheSwiftModelPredicts() async throws {
        let lb = try await TestDataplane.make(yaml: manyServices)
        let services = lb.serviceFile.services
        let node = lb.serviceFile.node
        var rng = SeededGenerator(seed: 0x5111_ce00_0000_2024)

        let flowCount = 10_000
        var seen = Set<IPFlow>()
        var udpCount: UInt64 = 0
        var perBackend: [String: [IPAddress: Int]] = [:]
        var mismatches: [String] = []
        let before = try lb.nodeStats()

        while seen.count < flowCount {
            let service = services.randomElement(using: &rng)!
            let client: String
            if service.vip.family == .v4 {
                client = IPAddress(bytes: (0..<4).map { _ in UInt8.random(in: 0...255, using: &rng) })!.description
            } else {
                client = IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8] + (0..<12).map { _ in UInt8.random(in: 0...255, using: &rng) })!.description
            }
            let sport = UInt16.random(in: 1...65535, using: &rng)
            var builder = PacketBuilder()
            builder.tos = UInt8.random(in: 0...255, using: &rng)
            if UInt8.random(in: 0..<10, using: &rng) == 0 { builder.vlan = UInt16.random(in: 1...4094, using: &rng) }
            let frame: [UInt8]
            switch service.proto {
            case .tcp:
                frame = builder.tcp(from: client, sport, to: service.vip.description, service.port,
                                    payload: (0..<Int.random(in: 0...8, using: &rng)).map { UInt8($0) })
            case .udp:
                frame = builder.udp(from: client, sport, to: service.vip.description, service.port,
                                    payload: (0..<Int.random(in: 0...64, using: &rng)).map { UInt8($0) })
            }
            let flow = try #require(IPFlow(frame: frame))
            guard seen.insert(flow).inserted else { continue }
            if service.proto == .udp { udpCount += 1 }

            let (verdict, output) = try lb.run(frame)
            guard let predicted = lb.model.backend(for: flow) else {
                mismatches.append("\(flow): the model has no backend")
                continue
            }
            guard verdict == XDPVerdict.tx.rawValue else {
                mismatches.append("\(flow): verdict \(verdict)")
                continue
            }
            do {
                let tunnel = try TunnelFrame(output)
                if tunnel.outerDestination != predicted.address {
                    mismatches.append("\(flow) (slot \(lb.model.slot(for: flow))): sent to \(tunnel.outerDestination), model says \(predicted.address)")
                } else if output != expectedTunnelFrame(input: frame, backend: predicted.address, node: node) {
                    mismatches.append("\(flow): frame differs: \(hex(output))")
                }
                perBackend[service.name, default: [:]][tunnel.outerDestination, default: 0] += 1
            } catch {
                mismatches.append("\(flow): \(error)")
            }
            if mismatches.count == 1 && mismatches[0].hasPrefix("\(flow)") {
                attachPcap(named: "first-random-flow-mismatch", [frame, output])
            }
        }

        #expect(mismatches.isEmpty, "\(mismatches.count) of \(flowCount) flows: \(mismatches.prefix(5).joined(separator: "; "))")
        let delta = try lb.nodeStats() - before
        // Each flow's one packet is placed by Maglev: a SYN records nothing, a UDP flow's first
        // datagram misses conntrack and is held in sl_ct_unconfirmed; no flow is recorded yet.
        #expect(delta == NodeStats(.tx, ctMisses: udpCount, ctUnconfirmed: udpCount, packets: UInt64(flowCount)),
                "counters moved: \(delta)")

        // Every backend with weight gets flows, and a drained one none; and
        // the data plane's per-backend counters agree with what was seen.
        let snapshot = try lb.counters()
        for service in services {
            let counted = try #require(snapshot.services.first { $0.name == service.name })
            for backend in service.backends {
                let seenCount = perBackend[service.name]?[backend.address] ?? 0
                if backend.weight == 0 {
                    #expect(seenCount == 0, "drained \(backend.address) of \(service.name) got flows")
                } else {
                    #expect(seenCount > 0, "\(backend.address) of \(service.name) got no flow")
                }
                let kernelCount = counted.backends.first { $0.address == backend.address.description }?.packets
                #expect(kernelCount == UInt64(seenCount), "sl_backend_stats of \(backend.address) in \(service.name)")
            }
        }
    }
}
