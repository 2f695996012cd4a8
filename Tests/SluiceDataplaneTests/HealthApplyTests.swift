// What health verdicts do to the data plane, through the real program: a down backend is
// left out of its service's Maglev table (new flows avoid it) while its established flows
// stay; when every backend is down the table in effect stays; the verdicts are recorded in
// sl_backends, so `lbctl status` and a restarted agent see them.

import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private let file = webAndDNS(webBackends: "{address: 10.1.0.21}, {address: 10.1.0.22, weight: 2}, {address: 10.1.0.23}",
                             webExtra: "healthcheck: { type: tcp }")

private let b1 = IPAddress("10.1.0.21")!, b2 = IPAddress("10.1.0.22")!, b3 = IPAddress("10.1.0.23")!

@Suite(requiresRoot)
struct HealthApplyTests {
    private func desired() throws -> ServiceFile { try ServiceFileParser.parse(file, file: "test.yaml") }

    /// Where the program sends a packet (a SYN unless `flags` say otherwise) from `client`.
    private func destination(_ lb: TestDataplane, client: String, port: UInt16 = 40000,
                             flags: Set<TCPFlag> = [.syn]) throws -> IPAddress? {
        let (verdict, output) = try lb.run(PacketBuilder().tcp(from: client, port, to: "198.51.100.10", 80, flags: flags))
        guard verdict == XDPVerdict.tx.rawValue else { return nil }
        return try TunnelFrame(output).outerDestination
    }

    private func backend(_ lb: TestDataplane, _ service: String, _ address: IPAddress) throws -> StatusReport.BackendStatus {
        let report = try lb.dataplane.status()
        let entry = report.services.first { $0.name == service }?.backends.first { $0.address == address.description }
        return try #require(entry, "\(service) \(address) in \(report.services)")
    }

    @Test func aDownBackendGetsNoNewFlowsWhileItsEstablishedFlowsStay() async throws {
        let lb = try await TestDataplane.make()
        try lb.apply(try desired(), health: HealthVerdicts(down: ["web": []]))
        #expect(try backend(lb, "web", b1).health == "up")
        #expect(try backend(lb, "dns", IPAddress("10.1.0.31")!).health == "unchecked")

        // A flow placed on b1 by its SYN, and established there by its handshake's ACK, before b1 fails.
        let pinned = try #require((0..<200).map { "198.18.0.\($0)" }.first { try destination(lb, client: $0) == b1 })
        let before = try lb.nodeStats()
        #expect(try destination(lb, client: pinned, flags: [.ack]) == b1)
        #expect(try lb.nodeStats() - before == NodeStats(.tx, newFlows: 1, ctMisses: 1), "the ACK records the flow")

        let result = try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b1]]))
        #expect(result.healthChanged && result.tablesWritten == 1 && result.diff.isEmpty)
        let status = try backend(lb, "web", b1)
        #expect(status.state == "down" && status.health == "down" && status.weight == 1, "\(status)")
        #expect(try backend(lb, "web", b2).state == "active")

        // New flows follow the table built without b1: the model's, with b1 at weight 0.
        var expected = try desired()
        expected.services[0].backends[0].weight = 0
        let model = MaglevModel(expected)
        for i in 0..<200 {
            let client = "198.18.1.\(i)"
            let frame = PacketBuilder().tcp(from: client, 40000, to: "198.51.100.10", 80)
            let chosen = try destination(lb, client: client)
            #expect(chosen != b1, "a new flow went to the down backend")
            #expect(chosen == model.backend(for: IPFlow(frame: frame)!)?.address)
        }
        // The flow established before stays on b1.
        #expect(try destination(lb, client: pinned, flags: [.ack]) == b1)
    }

    @Test func whenEveryBackendIsDownTheTableInEffectStays() async throws {
        let lb = try await TestDataplane.make()
        try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b1, b2]]))
        let slot = try #require(try lb.appliedState().service(named: "web")).slot
        let table = try #require(try lb.maglevInnerMapID(slot: slot))
        let contents = try lb.maglevTable(mapID: table)
        let b3id = try #require(try lb.appliedState().service(named: "web")?.backends.first { $0.address == b3 }).id
        #expect(Set(contents) == [b3id], "only b3 is left in the table")

        let allDown = try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b1, b2, b3]]))
        #expect(allDown.tablesWritten == 0, "the table is kept, not rebuilt")
        #expect(try lb.maglevInnerMapID(slot: slot) == table)
        let last = try backend(lb, "web", b3)
        #expect(last.health == "down" && last.state == "active", "\(last)")
        #expect(try destination(lb, client: "198.18.2.1") == b3, "new flows still have somewhere to go")

        // Recovery: b2 comes back; the table is rebuilt without the two still down.
        try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b1, b3]]))
        let b2id = try #require(try lb.appliedState().service(named: "web")?.backends.first { $0.address == b2 }).id
        let rebuilt = try #require(try lb.maglevInnerMapID(slot: slot))
        #expect(Set(try lb.maglevTable(mapID: rebuilt)) == [b2id])
        #expect(try backend(lb, "web", b3).state == "down")
    }

    @Test func anApplyWithoutVerdictsKeepsThemAndRemovingTheCheckClearsThem() async throws {
        let lb = try await TestDataplane.make()
        try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b1]]))

        // A local `lbctl apply` (no verdicts) that changes a weight keeps b1 out.
        var reweighted = try desired()
        reweighted.services[0].backends[1].weight = 5
        let result = try lb.apply(reweighted)
        #expect(result.tablesWritten == 1)
        #expect(try backend(lb, "web", b1).state == "down")
        let b1id = try backend(lb, "web", b1).id
        let slot = try #require(try lb.appliedState().service(named: "web")).slot
        #expect(!(try lb.maglevTable(mapID: try #require(try lb.maglevInnerMapID(slot: slot)))).contains(b1id))

        // An agent that no longer checks web (no verdicts for it) puts b1 back, unchecked.
        var unchecked = reweighted
        unchecked.services[0].healthCheck = nil
        try lb.apply(unchecked, health: HealthVerdicts(down: [:]))
        let status = try backend(lb, "web", b1)
        #expect(status.state == "active" && status.health == "unchecked", "\(status)")
        #expect(try lb.appliedState().service(named: "web")!.backends.allSatisfy { !$0.isChecked && !$0.isDown && !$0.isExcluded })
    }

    @Test func theSameVerdictsAgainWriteNothing() async throws {
        let lb = try await TestDataplane.make()
        try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b2]]))
        let again = try lb.apply(try desired(), health: HealthVerdicts(down: ["web": [b2]]))
        #expect(!again.healthChanged && again.bytesWritten == 0 && again.tablesWritten == 0)
    }
}
