// The counters lbctl stats and the agent export: after a known set of
// packets, per-service and per-backend packets and bytes (the input frame's
// length) and the node's verdict, flow and drop counters add up exactly.

import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// Default table size (65537), so one suite runs the production table size.
private let twoServices = """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        backends:
          - { address: 10.1.0.21 }
          - { address: 10.1.0.22, weight: 3 }
          - { address: 10.1.0.23, weight: 0 }
      - name: dns6
        vip: "2001:db8::53"
        port: 53
        protocol: udp
        backends:
          - { address: "2001:db8:1::53" }
          - { address: "2001:db8:1::54" }
    """

@Suite(requiresRoot)
struct CounterTests {
    @Test func perServiceAndPerBackendPacketsAndBytesAddUpAfterAKnownNumberOfPackets() async throws {
        let lb = try await TestDataplane.make(yaml: twoServices)
        let b = PacketBuilder()
        // What each backend should have counted, from the model.
        var expected: [String: [String: (packets: UInt64, bytes: UInt64)]] = [:]
        func account(_ frame: [UInt8], _ service: String) throws {
            let backend = try #require(lb.model.backend(for: IPFlow(frame: frame)!)).address.description
            expected[service, default: [:]][backend, default: (0, 0)].packets += 1
            expected[service, default: [:]][backend, default: (0, 0)].bytes += UInt64(frame.count)
        }

        // 20 connections to web, 10 of which send a second packet; payloads of varied sizes.
        var web: [[UInt8]] = []
        for i in 0..<20 {
            web.append(b.tcp(from: "198.18.1.\(i)", UInt16(30_000 + i), to: "198.51.100.10", 80,
                             payload: Array(repeating: 0xab, count: 7 * i)))
        }
        for i in 0..<10 {
            web.append(b.tcp(from: "198.18.1.\(i)", UInt16(30_000 + i), to: "198.51.100.10", 80, flags: [.ack, .psh],
                             payload: Array(repeating: 0xcd, count: 100 + i)))
        }
        // 15 datagrams to dns6, one tagged.
        var dns: [[UInt8]] = []
        for i in 0..<15 {
            var tagged = b
            if i == 0 { tagged.vlan = 42 }
            dns.append(tagged.udp(from: "2001:db8:c::\(i + 1)", 5353, to: "2001:db8::53", 53,
                                  payload: Array(repeating: 0x11, count: 3 * i)))
        }
        let others = [
            b.tcp(from: "198.18.9.9", 1000, to: "203.0.113.1", 80),            // no VIP
            b.udp(from: "198.18.9.9", 1000, to: "198.51.100.10", 53),           // no such service
            b.arpRequest(from: "198.18.9.9", to: "198.51.100.10"),
            editingIPv4(b.tcp(from: "198.18.9.9", 1000, to: "198.51.100.10", 80)) { $0[l3] = 0x43 },  // IHL 3
            editingIPv4(b.tcp(from: "198.18.9.9", 1001, to: "198.51.100.10", 80)) { $0[l3] = 0x55 },  // version 5
            Array(b.tcp(from: "198.18.9.9", 1002, to: "198.51.100.10", 80).prefix(40)),               // cut
        ]

        for frame in web { try account(frame, "web") }
        for frame in dns { try account(frame, "dns6") }
        for frame in web + dns + others { _ = try lb.run(frame) }

        let snapshot = try lb.counters()
        for (name, frames) in [("web", web), ("dns6", dns)] {
            let service = try #require(snapshot.services.first { $0.name == name })
            #expect(service.packets == UInt64(frames.count), "\(name) packets")
            #expect(service.bytes == frames.reduce(0) { $0 + UInt64($1.count) }, "\(name) bytes are input frame lengths")
            #expect(service.backends.reduce(0) { $0 + $1.packets } == service.packets, "\(name): backends add up to the service")
            #expect(service.backends.reduce(0) { $0 + $1.bytes } == service.bytes, "\(name): backend bytes add up")
            for backend in service.backends {
                let want = expected[name]?[backend.address] ?? (0, 0)
                #expect(backend.packets == want.packets, "\(name) \(backend.address) packets")
                #expect(backend.bytes == want.bytes, "\(name) \(backend.address) bytes")
            }
        }
        let drained = try #require(snapshot.services.first { $0.name == "web" }?.backends.first { $0.address == "10.1.0.23" })
        #expect(drained.packets == 0 && drained.bytes == 0, "a drained backend gets no new flows")

        #expect(snapshot.verdicts == ["aborted": 0, "drop": 3, "pass": 3, "tx": UInt64(web.count + dns.count), "redirect": 0])
        #expect(snapshot.drops == ["malformed": 2, "truncated": 1, "no_backend": 0, "no_source": 0, "no_gateway": 0, "encap": 0,
                                    "too_big": 0, "no_neighbour": 0, "no_snat": 0, "snat_exhausted": 0, "proxy": 0,
                                    "nat_budget": 0])
        // A SYN records nothing, the first packet after it records its flow; a UDP flow's
        // first packet is only held (sl_ct_unconfirmed), and these send no second.
        #expect(snapshot.newFlows == 10)
        #expect(snapshot.conntrackHits == 0)
        #expect(snapshot.conntrackMisses == 10 + 15)
        #expect(snapshot.conntrackUnconfirmed == 15)
        #expect(snapshot.fragments == 0)
        #expect(snapshot.ipOptions == 0)
    }

    @Test func theVerdictCountersCountEveryPacketOnce() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        let b = PacketBuilder()
        let frames = [
            b.tcp(from: "198.18.0.1", 1, to: "198.51.100.10", 80),          // tx
            b.tcp(from: "198.18.0.1", 1, to: "198.51.100.10", 80, flags: [.ack]),  // tx (hit)
            b.tcp(from: "198.18.0.1", 1, to: "198.51.100.30", 80),          // drop: no backend
            b.icmpEcho(from: "198.18.0.1", to: "198.51.100.10"),             // pass
            b.tcp(from: "198.18.0.1", 1, to: "198.51.100.11", 80),          // pass
        ]
        for _ in 0..<3 {
            for frame in frames { _ = try lb.run(frame) }
        }
        let stats = try lb.nodeStats()
        #expect(stats[.tx] == 6)
        #expect(stats[.drop] == 3)
        #expect(stats[.pass] == 6)
        #expect(stats[.aborted] == 0 && stats[.redirect] == 0)
        #expect(stats.verdicts.values.reduce(0, +) == UInt64(3 * frames.count))
        #expect(stats[drop: .noBackend] == 3)
        // The first ACK misses and records the flow; the SYNs after it are placed again, the ACKs hit.
        #expect(stats.newFlows == 1 && stats.ctHits == 2 && stats.ctMisses == 1 && stats.ctUnconfirmed == 0)
    }

    @Test func aNewServiceInAFreedSlotStartsFromZero() async throws {
        let lb = try await TestDataplane.make(yaml: """
            node: { source_v4: 192.0.2.10, maglev_table_size: 251 }
            services:
              - { name: old, vip: 198.51.100.60, port: 80, protocol: tcp, backends: [ {address: 10.6.0.1} ] }
            """)
        for i in 0..<5 { _ = try lb.run(PacketBuilder().tcp(from: "198.18.0.\(i)", 999, to: "198.51.100.60", 80)) }
        let oldSlot = try #require(lb.appliedState().service(named: "old")?.slot)
        #expect(try lb.counters().services.first?.packets == 5)

        // Remove it, then add another service: it gets the freed slot.
        try lb.apply(yaml: "node: { source_v4: 192.0.2.10, maglev_table_size: 251 }\nservices: []\n")
        try lb.apply(yaml: """
            node: { source_v4: 192.0.2.10, maglev_table_size: 251 }
            services:
              - { name: new, vip: 198.51.100.61, port: 80, protocol: tcp, backends: [ {address: 10.6.0.2} ] }
            """)
        let state = try lb.appliedState()
        let new = try #require(state.service(named: "new"))
        try #require(new.slot == oldSlot, "the freed slot is reused")
        let snapshot = try lb.counters()
        #expect(snapshot.services.map(\.name) == ["new"])
        #expect(snapshot.services[0].packets == 0 && snapshot.services[0].bytes == 0)
        #expect(snapshot.services[0].backends.map(\.packets) == [0])
        // The old VIP is gone from the data plane.
        #expect(try lb.run(PacketBuilder().tcp(from: "198.18.0.1", 999, to: "198.51.100.60", 80)).verdict == XDPVerdict.pass.rawValue)
    }
}
