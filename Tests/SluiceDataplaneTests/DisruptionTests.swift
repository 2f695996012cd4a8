// apply --dry-run's disruption figures against the real program: the moved-slot share equals
// a slot-by-slot comparison of the Maglev tables pinned before and after the real apply, the
// flows counted on removed backends are the flows the program recorded there, and a removed
// service counts every placement and every flow it holds.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private func file(web: [String], size: Int = 4099, old: Bool = true, fresh: Bool = false) -> String {
    """
    node: { source_v4: 192.0.2.10, maglev_table_size: \(size) }
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        backends: [\(web.joined(separator: ", "))]
      - { name: dns, vip: 198.51.100.10, port: 53, protocol: udp, backends: [{address: 10.3.0.1}, {address: 10.3.0.2}] }
    \(old ? "  - { name: old, vip: 198.51.100.11, port: 80, protocol: tcp, backends: [{address: 10.3.1.1}, {address: 10.3.1.2}] }" : "")
    \(fresh ? "  - { name: fresh, vip: 198.51.100.12, port: 80, protocol: tcp, backends: [{address: 10.3.2.1}] }" : "")
    """
}

private let five = (1...5).map { "{address: 10.3.0.\($0)}" }
/// 10.3.0.5 leaves, 10.3.0.7 joins, 10.3.0.1 weighs 3.
private let changed = ["{address: 10.3.0.1, weight: 3}"] + (2...4).map { "{address: 10.3.0.\($0)}" } + ["{address: 10.3.0.7}"]

@Suite(requiresRoot)
struct DisruptionTests {
    /// Records `count` TCP flows to `vip`:80 (an ACK records a flow) and returns the backend
    /// each went to.
    private func record(_ count: Int, to vip: String, through lb: TestDataplane, clientNet: Int) throws -> [IPAddress] {
        try (0..<count).map { i in
            let frame = PacketBuilder().tcp(from: "198.18.\(clientNet).\(i % 250 + 1)", UInt16(20_000 + i), to: vip, 80, flags: [.ack])
            let (verdict, output) = try lb.run(frame)
            try #require(verdict == XDPVerdict.tx.rawValue, "flow \(i) to \(vip): verdict \(verdict)")
            return try TunnelFrame(output).outerDestination
        }
    }

    private func slot(_ name: String, in lb: TestDataplane) throws -> UInt32 {
        try #require(try lb.appliedState().service(named: name)?.slot)
    }

    @Test("the moved share is the two pinned tables compared slot by slot; flows on a removed backend and a removed service's are counted")
    func dryRunAgreesWithTheTablesAndTheFlows() async throws {
        let lb = try await TestDataplane.make(yaml: file(web: five))
        let webBackends = try record(600, to: "198.51.100.10", through: lb, clientNet: 1)
        let oldFlows = try record(40, to: "198.51.100.11", through: lb, clientNet: 2)
        let leaving = webBackends.filter { $0 == IPAddress("10.3.0.5")! }.count
        try #require(leaving > 0 && oldFlows.count == 40)

        let webSlot = try slot("web", in: lb)
        let beforeID = try #require(try lb.maglevInnerMapID(slot: webSlot))
        let before = try lb.maglevTable(mapID: beforeID)
        let desired = try ServiceFileParser.parse(file(web: changed, old: false, fresh: true), file: "changed.yaml")
        let dry = try lb.dataplane.apply(desired, dryRun: true)
        #expect(try lb.maglevInnerMapID(slot: webSlot) == beforeID, "a dry run switched a table")
        #expect(dry.disruption.map(\.service) == ["old", "web"], "unchanged dns and new fresh disturb nothing: \(dry.disruption)")

        try lb.apply(desired)
        let after = try lb.maglevTable(mapID: try #require(try lb.maglevInnerMapID(slot: webSlot)))
        let moved = zip(before, after).filter { $0 != $1 }.count
        let web = try #require(dry.disruption.first { $0.service == "web" })
        #expect(moved > 0 && moved < before.count)
        #expect(web.slotsMoved == moved && web.slots == 4099 && !web.removed, "\(web) against \(moved) slots that differ")
        #expect(abs(web.movedShare - Double(moved) / 4099) < 1e-9)
        #expect(web.flowsOnRemovedBackends == leaving, "\(web): \(leaving) of 600 flows went to 10.3.0.5")

        let old = try #require(dry.disruption.first { $0.service == "old" })
        #expect(old.removed && old.slots == 4099 && old.slotsMoved == 4099 && old.movedShare == 1)
        #expect(old.flowsOnRemovedBackends == 40, "\(old)")
    }

    @Test("an unchanged set reports nothing; a weight change moves slots and counts no flow")
    func unchangedServicesReportNothing() async throws {
        let lb = try await TestDataplane.make(yaml: file(web: five))
        _ = try record(50, to: "198.51.100.10", through: lb, clientNet: 1)
        let same = try lb.dataplane.apply(try ServiceFileParser.parse(file(web: five), file: "same.yaml"), dryRun: true)
        #expect(same.disruption.isEmpty, "\(same.disruption)")
        // A weight change moves slots but no flow's backend leaves.
        let heavier = ["{address: 10.3.0.1, weight: 4}"] + (2...5).map { "{address: 10.3.0.\($0)}" }
        let dry = try lb.dataplane.apply(try ServiceFileParser.parse(file(web: heavier), file: "heavier.yaml"), dryRun: true)
        let web = try #require(dry.disruption.first)
        #expect(dry.disruption.count == 1 && web.service == "web" && web.slotsMoved > 0 && web.flowsOnRemovedBackends == 0, "\(web)")
    }

    @Test("across a table-size change the share matches how many of 4,000 new flows the program places elsewhere")
    func sizeChangeShareMatchesPlacements() async throws {
        let lb = try await TestDataplane.make(yaml: file(web: five))
        let flows = (0..<4000).map { i in
            PacketBuilder().tcp(from: "198.18.\(i / 250).\(i % 250 + 1)", UInt16(10_000 + i), to: "198.51.100.10", 80, flags: [.syn])
        }
        func placements() throws -> [IPAddress] {
            try flows.map { frame in
                let (verdict, output) = try lb.run(frame)
                try #require(verdict == XDPVerdict.tx.rawValue)
                return try TunnelFrame(output).outerDestination
            }
        }
        let before = try placements()
        let desired = try ServiceFileParser.parse(file(web: five, size: 8191), file: "bigger.yaml")
        let web = try #require(try lb.dataplane.apply(desired, dryRun: true).disruption.first { $0.service == "web" })
        try lb.apply(desired)
        let observed = Double(zip(before, try placements()).filter { $0 != $1 }.count) / 4000
        #expect(web.slots == 8191 && web.movedShare > 0.3, "\(web)")
        #expect(abs(web.movedShare - observed) < 0.04, "\(web) against \(observed) of 4,000 SYNs placed elsewhere")
    }
}
