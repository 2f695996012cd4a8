// Connection tracking across changes of the backend set: an established flow
// stays on the backend it was placed on, even when Maglev would now choose
// another, when that backend is drained, and when it is removed; new
// connections follow the new table. (When a flow is recorded at all is
// FlowRecordingTests'.)

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private func config(_ v4Backends: String, _ v6Backends: String) -> String {
    """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"
      maglev_table_size: 4099
    services:
      - name: app
        vip: 198.51.100.40
        port: 80
        protocol: tcp
        backends: [\(v4Backends)]
      - name: app6
        vip: "2001:db8::40"
        port: 443
        protocol: tcp
        backends: [\(v6Backends)]
    """
}

/// Four backends per service.
private let initial = config(
    "{address: 10.3.0.1}, {address: 10.3.0.2}, {address: 10.3.0.3}, {address: 10.3.0.4}",
    "{address: \"2001:db8:5::1\"}, {address: \"2001:db8:5::2\"}, {address: \"2001:db8:5::3\"}, {address: \"2001:db8:5::4\"}")
/// Two more: Maglev moves about a third of the flows.
private let grown = config(
    "{address: 10.3.0.1}, {address: 10.3.0.2}, {address: 10.3.0.3}, {address: 10.3.0.4}, {address: 10.3.0.5}, {address: 10.3.0.6}",
    "{address: \"2001:db8:5::1\"}, {address: \"2001:db8:5::2\"}, {address: \"2001:db8:5::3\"}, {address: \"2001:db8:5::4\"}, {address: \"2001:db8:5::5\"}, {address: \"2001:db8:5::6\"}")
/// The first backend drained (weight 0), the second removed.
private let drainedAndRemoved = config(
    "{address: 10.3.0.1, weight: 0}, {address: 10.3.0.3}, {address: 10.3.0.4}, {address: 10.3.0.5}, {address: 10.3.0.6}",
    "{address: \"2001:db8:5::1\", weight: 0}, {address: \"2001:db8:5::3\"}, {address: \"2001:db8:5::4\"}, {address: \"2001:db8:5::5\"}, {address: \"2001:db8:5::6\"}")

private let drained: Set = [IPAddress("10.3.0.1")!, IPAddress("2001:db8:5::1")!]
private let removed: Set = [IPAddress("10.3.0.2")!, IPAddress("2001:db8:5::2")!]

/// One TCP connection of a test client.
private struct Connection: Hashable {
    var client: String
    var port: UInt16
    var vip: String
    var vipPort: UInt16

    func packet(_ flags: Set<TCPFlag>) -> [UInt8] {
        PacketBuilder().tcp(from: client, port, to: vip, vipPort, flags: flags, payload: flags.contains(.syn) ? [] : [1, 2, 3])
    }

    var flow: IPFlow { IPFlow(frame: packet([.syn]))! }
    var key: sl_flow_key { flowKey(.tcp, from: IPAddress(client)!, port, to: IPAddress(vip)!, vipPort) }
}

/// 300 IPv4 and 300 IPv6 connections from distinct clients.
private let connections: [Connection] = (0..<300).flatMap { i in
    [Connection(client: "198.18.\(i / 256).\(i % 256)", port: UInt16(20_000 + i), vip: "198.51.100.40", vipPort: 80),
     Connection(client: "2001:db8:c::\(String(i + 1, radix: 16))", port: UInt16(30_000 + i), vip: "2001:db8::40", vipPort: 443)]
}

@Suite(requiresRoot)
struct ConntrackTests {
    /// Sends a frame that must be tunnelled and returns the backend it went to.
    private func send(_ frame: [UInt8], through lb: TestDataplane, sourceLocation: SourceLocation = #_sourceLocation) throws -> IPAddress {
        let (verdict, output) = try lb.run(frame)
        try #require(verdict == XDPVerdict.tx.rawValue, "verdict \(verdict)", sourceLocation: sourceLocation)
        return try TunnelFrame(output).outerDestination
    }

    @Test func establishedFlowsKeepTheirBackendWhenTheBackendSetChanges() async throws {
        let lb = try await TestDataplane.make(yaml: initial)

        // Open every connection: Maglev places each SYN (which records nothing) and then
        // the handshake's ACK, which records the flow where the SYN went.
        var placed: [Connection: IPAddress] = [:]
        var before = try lb.nodeStats()
        for c in connections {
            let backend = try send(c.packet([.syn]), through: lb)
            #expect(backend == lb.model.backend(for: c.flow)?.address, "\(c.flow) placed by Maglev")
            #expect(try send(c.packet([.ack]), through: lb) == backend, "\(c.flow) recorded there")
            placed[c] = backend
        }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, newFlows: UInt64(connections.count), ctMisses: UInt64(connections.count),
                                                         packets: UInt64(2 * connections.count)))

        // More backends: Maglev moves some flows, conntrack keeps them.
        let oldModel = lb.model
        try lb.apply(yaml: grown)
        let moved = connections.filter { lb.model.backend(for: $0.flow)?.address != placed[$0] }
        try #require(!moved.isEmpty && moved.count < connections.count / 2, "\(moved.count) flows moved")
        #expect(moved.allSatisfy { oldModel.backend(for: $0.flow)?.address == placed[$0] })

        before = try lb.nodeStats()
        for c in connections {
            #expect(try send(c.packet([.ack]), through: lb) == placed[c], "\(c.flow) after growing")
        }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: UInt64(connections.count), packets: UInt64(connections.count)))

        // A new connection on a moved 5-tuple, once the old one's entry is gone (the
        // agent ages a closed flow out), follows the new table, and its later
        // packets follow it there.
        let reopened = Array(moved.prefix(10))
        before = try lb.nodeStats()
        for c in reopened {
            let now = try #require(lb.model.backend(for: c.flow)?.address)
            #expect(now != placed[c])
            #expect(try lb.dataplane[.conntrack].delete(c.key))
            #expect(try send(c.packet([.syn]), through: lb) == now, "\(c.flow) reopened")
            #expect(try send(c.packet([.ack]), through: lb) == now, "\(c.flow) after reopening")
            placed[c] = now
        }
        #expect(try lb.nodeStats() - before ==
                NodeStats(.tx, newFlows: UInt64(reopened.count), ctMisses: UInt64(reopened.count), packets: UInt64(2 * reopened.count)))

        // Drain one backend and remove another: their flows stay with them.
        try lb.apply(yaml: drainedAndRemoved)
        let onDrained = connections.filter { drained.contains(placed[$0]!) }
        let onRemoved = connections.filter { removed.contains(placed[$0]!) }
        try #require(onDrained.count >= 2 && onRemoved.count >= 2,
                     "\(onDrained.count) flows on drained and \(onRemoved.count) on removed backends")
        #expect((onDrained + onRemoved).allSatisfy { c in
            let now = lb.model.backend(for: c.flow)?.address
            return now != nil && !drained.contains(now!) && !removed.contains(now!)
        }, "the new table gives the drained and removed backends no slot")

        before = try lb.nodeStats()
        for c in connections {
            #expect(try send(c.packet([.ack]), through: lb) == placed[c], "\(c.flow) after drain and removal")
        }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: UInt64(connections.count), packets: UInt64(connections.count)))

        // A new connection from a flow that was on the removed backend goes where the table says.
        let comeback = onRemoved[0]
        let target = try #require(lb.model.backend(for: comeback.flow)?.address)
        before = try lb.nodeStats()
        #expect(try send(comeback.packet([.syn]), through: lb) == target)
        #expect(!removed.contains(target))
        #expect(try lb.nodeStats() - before == NodeStats(.tx), "a SYN records nothing")
    }

    @Test func aPacketOfAFlowConntrackDoesNotKnowIsPlacedByMaglevAndRemembered() async throws {
        let lb = try await TestDataplane.make(yaml: initial)
        for c in [Connection(client: "198.18.200.1", port: 44_444, vip: "198.51.100.40", vipPort: 80),
                  Connection(client: "2001:db8:c::beef", port: 44_445, vip: "2001:db8::40", vipPort: 443)] {
            let expected = try #require(lb.model.backend(for: c.flow)?.address)

            var before = try lb.nodeStats()
            #expect(try send(c.packet([.ack]), through: lb) == expected)
            #expect(try lb.nodeStats() - before == NodeStats(.tx, newFlows: 1, ctMisses: 1))

            // Now the flow is known: its next packets are conntrack hits.
            before = try lb.nodeStats()
            #expect(try send(c.packet([.ack, .psh]), through: lb) == expected)
            #expect(try send(c.packet([.fin, .ack]), through: lb) == expected)
            #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: 2, packets: 2))
        }
    }

    @Test func aSYNACKIsTreatedAsAPacketOfAnEstablishedFlowNotAsANewConnection() async throws {
        let lb = try await TestDataplane.make(yaml: initial)
        // A flow Maglev moves when the set grows.
        let oldModel = lb.model
        let grownModel = MaglevModel(try ServiceFileParser.parse(grown, file: "grown.yaml"))
        let c = try #require(connections.first { oldModel.backend(for: $0.flow) != grownModel.backend(for: $0.flow) })
        let first = try send(c.packet([.syn]), through: lb)
        #expect(try send(c.packet([.ack]), through: lb) == first)
        try lb.apply(yaml: grown)

        let before = try lb.nodeStats()
        #expect(try send(c.packet([.syn, .ack]), through: lb) == first, "SYN+ACK looks up conntrack")
        #expect(try send(c.packet([.rst]), through: lb) == first, "RST looks up conntrack")
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: 2, packets: 2))
    }

    @Test func udpFlowsAreTrackedLikeTCPFlows() async throws {
        let lb = try await TestDataplane.make(yaml: """
            node: { source_v4: 192.0.2.10, maglev_table_size: 4099 }
            services:
              - { name: dns, vip: 198.51.100.53, port: 53, protocol: udp,
                  backends: [ {address: 10.4.0.1}, {address: 10.4.0.2} ] }
            """)
        // Two datagrams each: the first is held, the second records the flow.
        let clients = (0..<100).map { "198.18.7.\($0)" }
        var placed: [String: IPAddress] = [:]
        for client in clients {
            placed[client] = try send(PacketBuilder().udp(from: client, 5353, to: "198.51.100.53", 53), through: lb)
            #expect(try send(PacketBuilder().udp(from: client, 5353, to: "198.51.100.53", 53, payload: [8]), through: lb) == placed[client])
        }
        try lb.apply(yaml: """
            node: { source_v4: 192.0.2.10, maglev_table_size: 4099 }
            services:
              - { name: dns, vip: 198.51.100.53, port: 53, protocol: udp,
                  backends: [ {address: 10.4.0.1, weight: 0}, {address: 10.4.0.3}, {address: 10.4.0.4} ] }
            """)
        try #require(placed.values.contains(IPAddress("10.4.0.1")!) && placed.values.contains(IPAddress("10.4.0.2")!))
        let before = try lb.nodeStats()
        for client in clients {
            #expect(try send(PacketBuilder().udp(from: client, 5353, to: "198.51.100.53", 53, payload: [9]), through: lb) == placed[client])
        }
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: UInt64(clients.count), packets: UInt64(clients.count)))
    }
}

/// Conntrack is asked before sl_vips, so a hit must not outlive its service:
/// entries carry their slot's epoch, which apply moves when the slot is freed
/// or its VIP key changes, and never for a backend change.
@Suite(requiresRoot)
struct ConntrackEpochTests {
    private let web = Connection(client: "198.18.9.1", port: 40_001, vip: "198.51.100.40", vipPort: 80)
    private let web6 = Connection(client: "2001:db8:c::9", port: 40_002, vip: "2001:db8::40", vipPort: 443)

    /// Opens the connection and returns its backend.
    private func open(_ c: Connection, _ lb: TestDataplane) throws -> IPAddress {
        let (verdict, output) = try lb.run(c.packet([.syn]))
        try #require(verdict == XDPVerdict.tx.rawValue)
        let backend = try TunnelFrame(output).outerDestination
        #expect(try lb.run(c.packet([.ack])).output.isEmpty == false)
        return backend
    }

    /// Checks twice: with the prefilter as apply left it (the old VIP's bit is
    /// clear, so the packet never reaches conntrack), then with every bit set,
    /// as when the old VIP's bit collides with a current VIP's: then only the
    /// epoch keeps the stale entry from forwarding. Restores the filter.
    private func expectPassesUntouched(_ c: Connection, _ lb: TestDataplane, _ why: Comment,
                                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let frame = c.packet([.ack])
        let applied = try lb.dataplane[.vipFilter].arrayValues(as: UInt64.self)
        let words = (0..<UInt32(applied.count)).map { $0 }
        for filter in [applied, [UInt64](repeating: .max, count: applied.count)] {
            try lb.dataplane[.vipFilter].updateBatch(keys: words, values: filter)
            let before = try lb.nodeStats()
            let (verdict, output) = try lb.run(frame)
            let bits = filter == applied ? "applied prefilter" : "every prefilter bit set"
            #expect(verdict == XDPVerdict.pass.rawValue, "\(why) (\(bits))", sourceLocation: sourceLocation)
            #expect(output == frame, "untouched (\(bits))", sourceLocation: sourceLocation)
            #expect(try lb.nodeStats() - before == NodeStats(.pass), "\(why) (\(bits))", sourceLocation: sourceLocation)
        }
        try lb.dataplane[.vipFilter].updateBatch(keys: words, values: applied)
    }

    @Test func anEstablishedFlowOfARemovedServiceIsNoLongerForwarded() async throws {
        let lb = try await TestDataplane.make(yaml: initial)
        _ = try open(web, lb)
        _ = try open(web6, lb)
        var file = lb.serviceFile
        file.services.removeAll { $0.name == "app" }
        try lb.apply(file)
        try expectPassesUntouched(web, lb, "app was removed: its VIP is no VIP any more")
        // The other service's established flow is untouched by the removal.
        let before = try lb.nodeStats()
        #expect(try lb.run(web6.packet([.ack])).verdict == XDPVerdict.tx.rawValue)
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: 1))

        // A new service on a freed slot does not inherit the old entries either.
        file.services.append(Service(name: "other", vip: IPAddress("198.51.100.77")!, port: 80, proto: .tcp, forwarding: .ipip,
                                     backends: [Backend(address: IPAddress("10.3.0.9")!)]))
        try lb.apply(file)
        try expectPassesUntouched(web, lb, "still no VIP after its slot is reused")
    }

    @Test func anEstablishedFlowOfAServiceWhoseVIPMovedIsNoLongerForwarded() async throws {
        let lb = try await TestDataplane.make(yaml: initial)
        let slot = try #require(lb.appliedState().service(named: "app")).slot
        _ = try open(web, lb)
        _ = try open(web6, lb)
        var file = lb.serviceFile
        file.services[file.services.firstIndex { $0.name == "app" }!].vip = IPAddress("198.51.100.41")!
        file.services[file.services.firstIndex { $0.name == "app6" }!].port = 8443
        try lb.apply(file)
        #expect(try lb.appliedState().service(named: "app")?.slot == slot, "same service, same slot, another VIP")
        try expectPassesUntouched(web, lb, "the VIP moved to another address")
        try expectPassesUntouched(web6, lb, "the VIP moved to another port")

        // The moved service serves its new VIP, flows and all.
        let moved = Connection(client: web.client, port: web.port, vip: "198.51.100.41", vipPort: 80)
        let backend = try open(moved, lb)
        #expect(backend == lb.model.backend(for: moved.flow)?.address)
        let before = try lb.nodeStats()
        #expect(try TunnelFrame(lb.run(moved.packet([.ack])).output).outerDestination == backend)
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: 1))
    }

    @Test func aFlowRecordedForAServiceWhoseVIPNowBelongsToAnotherSlotIsPlacedAgain() async throws {
        let lb = try await TestDataplane.make(yaml: initial)
        _ = try open(web, lb)
        // Renamed: the old service goes (its slot is freed), the same VIP comes back in a new slot.
        var file = lb.serviceFile
        let index = file.services.firstIndex { $0.name == "app" }!
        file.services[index].name = "app-renamed"
        try lb.apply(file)
        let slot = try #require(lb.appliedState().service(named: "app-renamed")).slot

        let before = try lb.nodeStats()
        let vipBefore = try lb.counters()
        let (verdict, output) = try lb.run(web.packet([.ack]))
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(try TunnelFrame(output).outerDestination == lb.model.backend(for: web.flow)?.address)
        #expect(try lb.nodeStats() - before == NodeStats(.tx, newFlows: 1, ctMisses: 1), "a stale entry is a miss")
        let packets = { (c: CounterSnapshot) in c.services.first { $0.name == "app-renamed" }?.packets ?? 0 }
        #expect(try packets(lb.counters()) - packets(vipBefore) == 1, "counted for the service in slot \(slot)")
    }

    @Test func anEstablishedFlowSurvivesABackendChangeAndADrainWithItsEpoch() async throws {
        let lb = try await TestDataplane.make(yaml: initial)
        let epochs = { try lb.dataplane[.vipEpochs].arrayValues(as: UInt32.self) }
        let placed = try open(web, lb)
        let start = try epochs()
        try lb.apply(yaml: grown)
        let drainedFile = initial.replacingOccurrences(of: "{address: \(placed)}", with: "{address: \(placed), weight: 0}")
        try #require(drainedFile != initial)
        try lb.apply(yaml: drainedFile)
        #expect(try epochs() == start, "backend and weight changes keep every epoch")
        let before = try lb.nodeStats()
        #expect(try TunnelFrame(lb.run(web.packet([.ack])).output).outerDestination == placed)
        #expect(try lb.nodeStats() - before == NodeStats(.tx, ctHits: 1))
    }
}
