import Foundation
import Testing
@testable import SluiceCore

private func ip(_ text: String) -> IPAddress { IPAddress(text)! }

private func service(_ name: String, vip: String = "198.51.100.10", port: UInt16 = 80, proto: L4Protocol = .tcp,
                     _ backends: [(String, Int)]) -> Service {
    Service(name: name, vip: ip(vip), port: port, proto: proto,
            backends: backends.map { Backend(address: ip($0.0), weight: $0.1) })
}

private let node = NodeConfig(sourceV4: ip("192.0.2.10"))

@Suite struct ConfigDiffTests {
    let current = ServiceFile(node: node, services: [
        service("api", vip: "198.51.100.20", [("10.0.0.3", 1), ("10.0.0.4", 1)]),
        service("old", vip: "198.51.100.30", [("10.0.0.9", 1)]),
        service("web", [("10.1.0.21", 1), ("10.1.0.22", 1)]),
    ])

    @Test func identicalFilesGiveAnEmptyDiff() {
        let diff = ConfigDiff.between(current: current, desired: current)
        #expect(diff.isEmpty)
        #expect(diff.lines.isEmpty)
    }

    @Test func reorderedServicesAndBackendsGiveAnEmptyDiff() {
        var desired = current
        desired.services.reverse()
        for i in desired.services.indices { desired.services[i].backends.reverse() }
        #expect(ConfigDiff.between(current: current, desired: desired).isEmpty)
    }

    @Test func reapplyingTheSameParsedFileGivesAnEmptyDiff() throws {
        let a = try ServiceFileParser.parse(goodFile, file: "a.yaml")
        let reordered = goodFile
            .replacingOccurrences(of: "      - { address: 10.1.0.21, weight: 1 }\n", with: "")
            .replacingOccurrences(of: "      - address: 2001:db8::21", with: "      - address: 2001:db8::21\n      - { address: 10.1.0.21, weight: 1 }")
        let b = try ServiceFileParser.parse(reordered, file: "b.yaml")
        #expect(a != b)  // the backend order really differs
        #expect(ConfigDiff.between(current: a, desired: b).isEmpty)
    }

    @Test func anAddedServiceIsListedWithItsEndpointAndBackendCount() {
        var desired = current
        desired.services.append(service("dns", vip: "2001:db8::53", port: 53, proto: .udp, [("2001:db8::1", 1)]))
        desired.services.append(service("new", vip: "198.51.100.40", [("10.0.0.5", 1), ("10.0.0.6", 1), ("10.0.0.7", 2)]))
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.servicesAdded == ["dns", "new"])
        #expect(diff.addedServices.map(\.name) == ["dns", "new"])
        #expect(diff.servicesRemoved.isEmpty && diff.servicesChanged.isEmpty && !diff.nodeChanged)
        #expect(diff.lines == [
            "+ service dns [2001:db8::53]:53/udp (1 backend)",
            "+ service new 198.51.100.40:80/tcp (3 backends)",
        ])
    }

    @Test func aRemovedServiceIsListedByName() {
        var desired = current
        desired.services.removeAll { $0.name == "old" }
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.servicesRemoved == ["old"])
        #expect(diff.lines == ["- service old"])
    }

    @Test func backendChangesAreListedAddedRemovedThenWeights() {
        var desired = current
        desired.services[0] = service("api", vip: "198.51.100.20", [("10.0.0.3", 2), ("10.0.0.5", 1)])
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.servicesChanged == [ServiceChange(
            name: "api", vipChanged: false, vipChange: nil,
            backendsAdded: [ip("10.0.0.5")], addedBackends: [Backend(address: ip("10.0.0.5"), weight: 1)],
            backendsRemoved: [ip("10.0.0.4")],
            weightsChanged: [WeightChange(address: ip("10.0.0.3"), from: 1, to: 2)])])
        #expect(diff.lines == ["~ service api: + backend 10.0.0.5 (weight 1), - backend 10.0.0.4, weight 10.0.0.3 1 -> 2"])
    }

    @Test func aMovedVIPIsAChangeOfTheService() {
        var desired = current
        desired.services[2].port = 8080
        desired.services[2].proto = .udp
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.servicesChanged.map(\.name) == ["web"])
        #expect(diff.servicesChanged[0].vipChanged)
        #expect(diff.lines == ["~ service web: vip 198.51.100.10:80/tcp -> 198.51.100.10:8080/udp"])
    }

    @Test func nodeChangesAreListedWithOldAndNewValues() {
        var desired = current
        desired.node.sourceV6 = ip("2001:db8::10")
        desired.node.maglevTableSize = 251
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.nodeChanged)
        #expect(!diff.isEmpty)
        #expect(diff.lines == ["~ node: source_v6 none -> 2001:db8::10, maglev_table_size 65537 -> 251"])
    }

    @Test func linesComeInAStableOrder() {
        var desired = current
        desired.node.sourceV4 = ip("192.0.2.11")
        desired.services.removeAll { $0.name == "old" }
        desired.services.insert(service("aaa", vip: "198.51.100.50", [("10.0.0.8", 1)]), at: 0)
        desired.services[1].backends.append(Backend(address: ip("10.0.0.2"), weight: 1))
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.lines == [
            "~ node: source_v4 192.0.2.10 -> 192.0.2.11",
            "+ service aaa 198.51.100.50:80/tcp (1 backend)",
            "- service old",
            "~ service api: + backend 10.0.0.2 (weight 1)",
        ])
    }

    @Test func theDiffEncodesToJSONWithSnakeCaseKeys() throws {
        var desired = current
        desired.services[0].backends[0].weight = 5
        let diff = ConfigDiff.between(current: current, desired: desired)
        let json = try #require(String(data: try JSONEncoder().encode(diff), encoding: .utf8))
        for key in ["services_added", "services_removed", "services_changed", "node_changed", "weights_changed",
                    "backends_added", "vip_changed"] {
            #expect(json.contains("\"\(key)\""), "\(key) missing from \(json)")
        }
        #expect(try JSONDecoder().decode(ConfigDiff.self, from: Data(json.utf8)) == diff)
    }
}
