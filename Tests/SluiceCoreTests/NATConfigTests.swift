// nat and fullnat in the service file: the keys of the issue's contract parse into the model,
// defaults hold, JSON carries them, and the diff reports a changed backend port or SNAT pool.
import Foundation
import Testing
@testable import SluiceCore

struct NATConfigTests {
    private let yaml = """
        node:
          snat_v4: [192.0.2.20, 192.0.2.21]
          snat_v6: ["2001:db8:ffff::20"]
          snat_ports: 20000-29999
        services:
          - name: api
            vip: 198.51.100.20
            port: 443
            protocol: tcp
            forwarding: fullnat
            backends:
              - { address: 10.2.0.11, port: 8443, weight: 1 }
              - { address: 10.2.0.12 }
          - name: dns
            vip: "2001:db8::53"
            port: 53
            protocol: udp
            forwarding: nat
            backends: [ { address: "2001:db8:2::53", port: 5353 } ]
        """

    private func ip(_ text: String) -> IPAddress { IPAddress(text)! }

    @Test func theIssuesKeysParseIntoTheModel() throws {
        let file = try ServiceFileParser.parse(yaml, file: "s.yaml")
        #expect(file.node.snatV4 == [ip("192.0.2.20"), ip("192.0.2.21")])
        #expect(file.node.snatV6 == [ip("2001:db8:ffff::20")])
        #expect(file.node.snatPorts == PortRange(low: 20000, high: 29999))
        #expect(file.services.map(\.forwarding) == [.fullnat, .nat])
        let api = file.services[0]
        #expect(api.backends.map(\.port) == [8443, nil])
        #expect(api.backends.map { $0.effectivePort(in: api) } == [8443, 443], "an unset port is the service's")
        #expect(Forwarding.allCases.map(\.rawValue) == ["ipip", "gue", "l2dsr", "nat", "fullnat"])
        #expect(Forwarding.nat.translates && Forwarding.fullnat.translates && !Forwarding.l2dsr.translates)
        #expect(!Forwarding.nat.tunnels && !Forwarding.fullnat.tunnels, "NAT modes need no node.source_v4/v6")
    }

    @Test func withoutSNATKeysThePoolIsEmptyAndThePortsTheDefault() throws {
        let file = try ServiceFileParser.parse("""
            services:
              - { name: web, vip: 198.51.100.10, port: 80, protocol: tcp, forwarding: nat, backends: [ { address: 10.1.0.21 } ] }
            """, file: "s.yaml")
        #expect(file.node.snatV4.isEmpty && file.node.snatV6.isEmpty && file.node.snatPorts == nil)
        #expect(file.node.effectiveSNATPorts == PortRange(low: 1024, high: 65535))
        #expect(NodeConfig.defaultSNATPorts.count == 64512)
    }

    @Test func theJSONSchemaCarriesTheNATKeysAndLeavesEmptyPoolsOut() throws {
        let file = try ServiceFileParser.parse(yaml, file: "s.yaml")
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let text = String(decoding: try encoder.encode(file), as: UTF8.self)
        for key in [#""snat_v4":["192.0.2.20","192.0.2.21"]"#, #""snat_ports":"20000-29999""#, #""forwarding":"fullnat""#,
                    #""port":8443"#] {
            #expect(text.contains(key), "\(text)")
        }
        #expect(try JSONDecoder().decode(ServiceFile.self, from: Data(text.utf8)) == file)
        let plain = String(decoding: try encoder.encode(ServiceFile(services: [])), as: UTF8.self)
        #expect(!plain.contains("snat"), "\(plain)")
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(NodeConfig.self, from: Data(#"{"snat_ports":"9-1"}"#.utf8))
        }
    }

    @Test func theValidatorHoldsAModelToTheNATRules() {
        let vip = ip("198.51.100.20")
        let cases: [(ServiceFile, String)] = [
            (ServiceFile(services: [Service(name: "a", vip: vip, port: 80, proto: .tcp, forwarding: .ipip,
                                            backends: [Backend(address: ip("10.0.0.1"), port: 81)])]), "backends[0].port"),
            (ServiceFile(services: [Service(name: "a", vip: vip, port: 80, proto: .tcp, forwarding: .nat,
                                            backends: [Backend(address: ip("10.0.0.1"), port: 0)])]), "backends[0].port"),
            (ServiceFile(services: [Service(name: "a", vip: vip, port: 80, proto: .tcp, forwarding: .fullnat,
                                            backends: [Backend(address: ip("10.0.0.1"))])]), "forwarding"),
            (ServiceFile(node: NodeConfig(snatV4: [ip("2001:db8::1")]), services: []), "node.snat_v4[0]"),
            (ServiceFile(node: NodeConfig(snatPorts: PortRange(low: 10, high: 9)), services: []), "node.snat_ports"),
        ]
        for (file, field) in cases {
            do {
                try file.validate(file: "request body")
                Issue.record("accepted: \(file)")
            } catch {
                #expect(error.field == field, "\(error)")
            }
        }
    }

    @Test func aChangedBackendPortIsAChangeOfItsService() throws {
        let current = try ServiceFileParser.parse(yaml, file: "s.yaml")
        var desired = current
        desired.services[0].backends[0].port = 9443
        desired.services[0].backends[1].port = 443  // the service's port: no change
        let diff = ConfigDiff.between(current: current, desired: desired)
        let change = try #require(diff.servicesChanged.first)
        #expect(diff.servicesChanged.count == 1 && change.name == "api")
        #expect(change.portsChanged == [PortChange(address: ip("10.2.0.11"), from: 8443, to: 9443)])
        #expect(diff.lines == ["~ service api: port 10.2.0.11 8443 -> 9443"])
        let json = String(decoding: try JSONEncoder().encode(diff), as: UTF8.self)
        #expect(json.contains(#""ports_changed""#), "\(json)")

        var moved = current
        moved.services[0].port = 8000  // the second backend follows the service's port
        let movedChange = try #require(ConfigDiff.between(current: current, desired: moved).servicesChanged.first)
        #expect(movedChange.vipChanged)
        #expect(movedChange.portsChanged == [PortChange(address: ip("10.2.0.12"), from: 443, to: 8000)])
    }

    @Test func theSNATPoolDiffsAsASetAndTheRangeByItsValueInEffect() throws {
        let current = try ServiceFileParser.parse(yaml, file: "s.yaml")
        var reordered = current
        reordered.node.snatV4.reverse()
        #expect(ConfigDiff.between(current: current, desired: reordered).isEmpty, "apply keeps each address's slot")

        var desired = current
        desired.node.snatV4 = [ip("192.0.2.20")]
        desired.node.snatPorts = nil
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.nodeChanges == [ValueChange(field: "snat_v4", from: "[192.0.2.20, 192.0.2.21]", to: "[192.0.2.20]"),
                                     ValueChange(field: "snat_ports", from: "20000-29999", to: "1024-65535")])
        #expect(diff.lines == ["~ node: snat_v4 [192.0.2.20, 192.0.2.21] -> [192.0.2.20], snat_ports 20000-29999 -> 1024-65535"])
        var explicit = desired
        explicit.node.snatPorts = NodeConfig.defaultSNATPorts
        #expect(ConfigDiff.between(current: desired, desired: explicit).isEmpty)
    }

    @Test func aBackendPortEqualToTheServicesIsNoneAsTheDataPlaneHoldsIt() throws {
        let file = try ServiceFileParser.parse(yaml, file: "s.yaml")
        var named = file
        named.services[0].backends[1].port = 443
        #expect(named.withoutHealthChecks == file.withoutHealthChecks)
    }
}
