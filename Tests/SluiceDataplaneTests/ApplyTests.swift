// How apply changes the data plane: a changed service gets a whole new Maglev
// table switched in with one update of sl_maglev (the old table is never
// written, so a packet sees either table, not a mix); an unchanged service
// keeps its table; applying the same file again writes nothing.

import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// Default table size (65537): the production size of an inner table.
private func twoServices(webBackends: String) -> String {
    """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        backends: [\(webBackends)]
      - name: dns6
        vip: "2001:db8::53"
        port: 53
        protocol: udp
        backends: [ {address: "2001:db8:1::53"}, {address: "2001:db8:1::54", weight: 2} ]
    """
}

private let before = twoServices(webBackends: "{address: 10.1.0.21}, {address: 10.1.0.22}, {address: 10.1.0.23}")
private let after = twoServices(webBackends: "{address: 10.1.0.21, weight: 2}, {address: 10.1.0.23}, {address: 10.1.0.24}")

@Suite(requiresRoot)
struct ApplyTests {
    /// The table the data plane must hold for a service: the model's table,
    /// each backend index turned into that backend's id in sl_backends.
    private func expectedTable(_ lb: TestDataplane, _ name: String) throws -> [UInt32] {
        let applied = try #require(lb.appliedState().service(named: name))
        let service = applied.service
        let ids = Dictionary(uniqueKeysWithValues: applied.backends.map { ($0.address, $0.id) })
        let table = try #require(lb.model.table(vip: service.vip, port: service.port, proto: service.proto))
        let configured = try #require(lb.serviceFile.services.first { $0.name == name })
        return table.map { $0 == Maglev.noBackend ? $0 : ids[configured.backends[Int($0)].address]! }
    }

    @Test func aChangedServiceGetsANewTableSwitchedInAndTheOldTableIsNeverWritten() async throws {
        let lb = try await TestDataplane.make(yaml: before)
        let state = try lb.appliedState()
        let webSlot = try #require(state.service(named: "web")).slot
        let dnsSlot = try #require(state.service(named: "dns6")).slot
        let webTable = try #require(try lb.maglevInnerMapID(slot: webSlot))
        let dnsTable = try #require(try lb.maglevInnerMapID(slot: dnsSlot))

        // Hold the current web table open so it can be read after the switch.
        let old = try TestDataplane.MapByID(id: webTable)
        let oldContents = try old.maglevSlots(tableSize: Maglev.defaultTableSize)
        #expect(oldContents.count == Maglev.defaultTableSize)
        #expect(oldContents == (try expectedTable(lb, "web")), "the installed table is the model's")

        let result = try lb.apply(yaml: after)
        #expect(result.tablesWritten == 1, "only the changed service gets a table")
        let newWebTable = try #require(try lb.maglevInnerMapID(slot: webSlot))
        #expect(newWebTable != webTable, "sl_maglev points at a new inner map")
        #expect(try lb.maglevInnerMapID(slot: dnsSlot) == dnsTable, "the unchanged service keeps its table")
        #expect(try old.maglevSlots(tableSize: Maglev.defaultTableSize) == oldContents, "the replaced table was not written in place")
        #expect(try lb.maglevTable(mapID: newWebTable) == (try expectedTable(lb, "web")))

        let generations = Dictionary(uniqueKeysWithValues: try lb.appliedState().services.map { ($0.service.name, $0.generation) })
        #expect(generations == ["web": 2, "dns6": 1])

        // Packets follow the new table.
        for i in 0..<50 {
            let frame = PacketBuilder().tcp(from: "198.18.3.\(i)", 1234, to: "198.51.100.10", 80)
            let (verdict, output) = try lb.run(frame)
            #expect(verdict == XDPVerdict.tx.rawValue)
            #expect(try TunnelFrame(output).outerDestination == lb.model.backend(for: IPFlow(frame: frame)!)?.address)
        }
    }

    @Test func applyingTheSameFileAgainWritesNothing() async throws {
        let lb = try await TestDataplane.make(yaml: after)
        let state = try lb.appliedState()
        let tables = try state.services.map { try lb.maglevInnerMapID(slot: $0.slot) }

        let again = try lb.apply(yaml: after)
        #expect(again.diff.isEmpty)
        #expect(again.bytesWritten == 0)
        #expect(again.tablesWritten == 0)
        #expect(try state.services.map { try lb.maglevInnerMapID(slot: $0.slot) } == tables)
        #expect(try lb.appliedState().services.map(\.generation) == state.services.map(\.generation))

        // The same services listed in another order are the same configuration.
        var reordered = try ServiceFileParser.parse(after, file: "after.yaml")
        reordered.services.reverse()
        reordered.services[1].backends.reverse()
        let third = try lb.apply(reordered)
        #expect(third.bytesWritten == 0 && third.tablesWritten == 0)
    }

    @Test func reapplyingAFileWithoutServicesReportsNoChange() async throws {
        let lb = try await TestDataplane.make()
        let file = "node: { source_v4: 192.0.2.10, maglev_table_size: 251 }\nservices: []\n"
        try lb.apply(yaml: file)
        let again = try lb.apply(yaml: file)
        #expect(again.bytesWritten == 0 && again.tablesWritten == 0)
        #expect(again.diff.isEmpty, "diff: \(again.diff.lines)")
    }

    @Test func aFirstApplyWritesATableForEveryService() async throws {
        let lb = try await TestDataplane.make()
        let result = try lb.apply(yaml: before)
        #expect(result.tablesWritten == 2)
        #expect(result.bytesWritten >= 2 * Maglev.defaultTableSize * 4)
        for service in try lb.appliedState().services {
            let id = try #require(try lb.maglevInnerMapID(slot: service.slot))
            #expect(try lb.maglevTable(mapID: id) == (try expectedTable(lb, service.service.name)))
        }
    }
}
