// Connection-state sync through the real program: the data plane reports each flow it
// records (and nothing for established flows) when sync is on; a peer's records written into
// the connection table steer that flow's packets; a fresher local entry is never
// overwritten; and one node's table copied into another makes both forward alike.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private let services = webAndDNS(webBackends: "{address: 10.1.0.21}, {address: 10.1.0.22}, {address: 10.1.0.23}")

private let vip = IPAddress("198.51.100.10")!

private func syn(_ client: String, _ port: UInt16 = 40000) -> [UInt8] {
    PacketBuilder().tcp(from: client, port, to: "198.51.100.10", 80)
}

private func ack(_ client: String, _ port: UInt16 = 40000) -> [UInt8] {
    PacketBuilder().tcp(from: client, port, to: "198.51.100.10", 80, flags: [.ack])
}

private func record(_ client: String, _ port: UInt16 = 40000, backend: String) -> FlowRecord {
    FlowRecord(source: IPAddress(client)!, destination: vip, sourcePort: port.bigEndian, destinationPort: UInt16(80).bigEndian,
               proto: 6, backend: IPAddress(backend)!)
}

@Suite(requiresRoot)
struct SyncDataplaneTests {
    private func destination(_ lb: TestDataplane, _ frame: [UInt8]) throws -> IPAddress? {
        let (verdict, output) = try lb.run(frame)
        guard verdict == XDPVerdict.tx.rawValue else { return nil }
        return try TunnelFrame(output).outerDestination
    }

    @Test func placedFlowsAreReportedOnlyWhileSyncIsOnAndEstablishedOnesNever() async throws {
        let lb = try await TestDataplane.make(yaml: services)
        let sync = try ConntrackSync(dataplane: lb.dataplane)
        _ = try lb.run(syn("198.18.0.1"))
        _ = try lb.run(ack("198.18.0.1"))
        #expect(try sync.newFlows().isEmpty, "sync is off by default")

        try sync.setReporting(true)
        let clients = (2...6).map { "198.18.0.\($0)" }
        for client in clients { _ = try lb.run(syn(client)) }
        for client in clients { _ = try lb.run(ack(client)) }  // recorded, so reported
        for client in clients { _ = try lb.run(ack(client)) }  // conntrack hits: no reports
        for _ in 0..<2 { _ = try lb.run(PacketBuilder().udp(from: "198.18.0.9", 5353, to: "198.51.100.10", 53)) }
        let reported = try sync.newFlows()
        #expect(reported.count == clients.count + 1, "\(reported)")
        for (client, record) in zip(clients, reported) {
            #expect(record.source == IPAddress(client) && record.destination == vip && record.proto == 6)
            #expect(UInt16(bigEndian: record.sourcePort) == 40000 && UInt16(bigEndian: record.destinationPort) == 80)
            #expect(record.backend == lb.model.backend(for: IPFlow(frame: syn(client))!)?.address)
        }
        #expect(reported.last?.proto == 17 && reported.last?.backend == IPAddress("10.1.0.31"))
        #expect(try sync.newFlows().isEmpty, "a drain takes each report once")
        #expect(try lb.counters().flowEventsLost == 0)

        try sync.setReporting(false)
        _ = try lb.run(syn("198.18.0.7"))
        _ = try lb.run(ack("198.18.0.7"))
        #expect(try sync.newFlows().isEmpty)
    }

    @Test func aPeersRecordSteersItsFlowAndNamesThePeer() async throws {
        let lb = try await TestDataplane.make(yaml: services)
        let sync = try ConntrackSync(dataplane: lb.dataplane)
        try sync.setPeers([IPAddress("10.10.4.2")!])
        // A flow Maglev would place elsewhere than 10.1.0.23, placed there by a peer.
        let client = try #require((1..<200).map { "198.18.1.\($0)" }.first {
            lb.model.backend(for: IPFlow(frame: syn($0))!)?.address != IPAddress("10.1.0.23")
        })
        let result = sync.insert([record(client, backend: "10.1.0.23")], origin: 1)
        #expect(result == ConntrackSync.InsertResult(applied: 1, rejected: [:]))
        #expect(try destination(lb, ack(client)) == IPAddress("10.1.0.23"), "the peer's entry is a conntrack hit")
        let flow = try #require(try lb.dataplane.flows().first { $0.source == client })
        #expect(flow.origin == "peer" && flow.peer == "10.10.4.2" && flow.backend == "10.1.0.23", "\(flow)")
        // Once the peer's entry is gone (aged out), a new connection on the 5-tuple is
        // placed here, and its ACK records it as local.
        #expect(try lb.dataplane[.conntrack].delete(
            flowKey(.tcp, from: IPAddress(client)!, 40000, to: vip, 80)))
        _ = try lb.run(syn(client))
        _ = try lb.run(ack(client))
        #expect(try lb.dataplane.flows().first { $0.source == client }?.origin == "local")
    }

    @Test func aFresherLocalEntryIsKeptAndUnknownRecordsAreRefused() async throws {
        let lb = try await TestDataplane.make(yaml: services)
        let sync = try ConntrackSync(dataplane: lb.dataplane)
        let local = try #require(try destination(lb, syn("198.18.2.1")))
        #expect(try destination(lb, ack("198.18.2.1")) == local)
        let other = ["10.1.0.21", "10.1.0.22", "10.1.0.23"].first { IPAddress($0) != local }!
        var unknownService = record("198.18.2.3", backend: "10.1.0.21")
        unknownService.destinationPort = UInt16(8080).bigEndian
        let result = sync.insert([record("198.18.2.1", backend: other), record("198.18.2.2", backend: "10.9.9.9"), unknownService],
                                 origin: 1)
        #expect(result.applied == 0)
        #expect(result.rejected == [.localNewer: 1, .unknownBackend: 1, .unknownService: 1])
        #expect(try destination(lb, ack("198.18.2.1")) == local)

        // An older peer entry is replaced by a newer peer record.
        #expect(sync.insert([record("198.18.2.4", backend: "10.1.0.21")], origin: 1).applied == 1)
        #expect(sync.insert([record("198.18.2.4", backend: "10.1.0.22")], origin: 1).applied == 1)
        #expect(try destination(lb, ack("198.18.2.4")) == IPAddress("10.1.0.22"))
    }

    @Test func aCopyOfOneNodesTableMakesAnotherForwardItsFlowsAlike() async throws {
        let a = try await TestDataplane.make(yaml: services)
        let clients = (1...40).map { "198.18.3.\($0)" }
        for client in clients {
            _ = try a.run(syn(client))
            _ = try a.run(ack(client))
        }
        let copy = try ConntrackSync(dataplane: a.dataplane).snapshot()
        #expect(copy.count == clients.count)

        // Node B has a backend more: Maglev alone would move some of these flows.
        let b = try await TestDataplane.make(yaml: webAndDNS(webBackends: "{address: 10.1.0.21}, {address: 10.1.0.22}, {address: 10.1.0.23}, {address: 10.1.0.24}"))
        let moved = clients.filter { b.model.backend(for: IPFlow(frame: syn($0))!)?.address != a.model.backend(for: IPFlow(frame: syn($0))!)?.address }
        #expect(!moved.isEmpty, "the scenario needs flows that B's table places elsewhere")
        #expect(try ConntrackSync(dataplane: b.dataplane).insert(copy, origin: 1).applied == clients.count)
        for client in clients {
            #expect(try destination(b, ack(client)) == (try destination(a, ack(client))), "\(client)")
        }
    }
}
