import Foundation
import Testing
@testable import SluiceCore

let goodFile = """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"
      maglev_table_size: 251
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        forwarding: ipip
        backends:
          - { address: 10.1.0.21, weight: 1 }
          - { address: 10.1.0.22, weight: 0 }
          - address: 2001:db8::21
      - name: dns
        vip: 2001:db8::53
        port: 53
        protocol: udp
        backends:
          - { address: 2001:db8::1:53, weight: 65535 }
    """

@Suite struct ServiceFileParserTests {
    @Test func aGoodFileParsesIntoTheExpectedModel() throws {
        let parsed = try ServiceFileParser.parse(goodFile, file: "services.yaml")
        let expected = ServiceFile(
            node: NodeConfig(sourceV4: IPAddress("192.0.2.10"), sourceV6: IPAddress("2001:db8:ffff::10"),
                             maglevTableSize: 251),
            services: [
                Service(name: "web", vip: IPAddress("198.51.100.10")!, port: 80, proto: .tcp, forwarding: .ipip,
                        backends: [Backend(address: IPAddress("10.1.0.21")!, weight: 1),
                                   Backend(address: IPAddress("10.1.0.22")!, weight: 0),
                                   Backend(address: IPAddress("2001:db8::21")!, weight: 1)]),
                Service(name: "dns", vip: IPAddress("2001:db8::53")!, port: 53, proto: .udp,
                        backends: [Backend(address: IPAddress("2001:db8::1:53")!, weight: 65535)]),
            ])
        #expect(parsed == expected)
        #expect(parsed.services[1].proto.number == 17)
        #expect(parsed.services[0].endpoint == "198.51.100.10:80/tcp")
        #expect(parsed.services[1].endpoint == "[2001:db8::53]:53/udp")
    }

    @Test func optionalKeysTakeTheirDefaults() throws {
        let parsed = try ServiceFileParser.parse("""
            node: { source_v4: 192.0.2.10 }
            services:
              - { name: a, vip: 198.51.100.1, port: 443, protocol: tcp, backends: [ { address: 10.0.0.1 } ] }
            """, file: "f.yaml")
        #expect(parsed.node.maglevTableSize == 65537)
        #expect(parsed.node.sourceV6 == nil)
        #expect(parsed.services[0].forwarding == .ipip)
        #expect(parsed.services[0].backends[0].weight == 1)
    }

    @Test func anEmptyServiceListIsAValidFileThatServesNothing() throws {
        let parsed = try ServiceFileParser.parse("services: []\n", file: "f.yaml")
        #expect(parsed == ServiceFile(services: []))
    }

    @Test func anIPv4VIPMayHaveIPv6BackendsThrough4in6() throws {
        let parsed = try ServiceFileParser.parse("""
            node: { source_v6: "2001:db8:ffff::10" }
            services:
              - { name: a, vip: 198.51.100.1, port: 80, protocol: tcp, backends: [ { address: "2001:db8::5" } ] }
            """, file: "f.yaml")
        #expect(parsed.services[0].backends[0].address.family == .v6)
    }

    @Test func oneAddressMayCarrySeveralServicesByPortAndProtocol() throws {
        let parsed = try ServiceFileParser.parse("""
            node: { source_v4: 192.0.2.10 }
            services:
              - { name: dns-udp, vip: 198.51.100.1, port: 53, protocol: udp, backends: [ { address: 10.0.0.1 } ] }
              - { name: dns-tcp, vip: 198.51.100.1, port: 53, protocol: tcp, backends: [ { address: 10.0.0.1 } ] }
              - { name: web, vip: 198.51.100.1, port: 80, protocol: tcp, backends: [ { address: 10.0.0.1 } ] }
            """, file: "f.yaml")
        #expect(parsed.services.map(\.endpoint) == ["198.51.100.1:53/udp", "198.51.100.1:53/tcp", "198.51.100.1:80/tcp"])
    }

    @Test func jsonTextIsAcceptedBecauseJSONIsYAML() throws {
        let parsed = try ServiceFileParser.parse("""
            {"node": {"source_v4": "192.0.2.10"},
             "services": [{"name": "a", "vip": "198.51.100.1", "port": 80, "protocol": "udp",
                           "backends": [{"address": "10.0.0.1", "weight": 3}]}]}
            """, file: "request body")
        #expect(parsed.services[0].proto == .udp)
        #expect(parsed.services[0].backends[0].weight == 3)
    }

    @Test func anErrorDescriptionNamesFileLineServiceFieldAndValue() {
        let text = goodFile.replacingOccurrences(of: "port: 80", with: "port: 70000")
        #expect(throws: ConfigError(file: "services.yaml", line: 8, service: "web", serviceIndex: 0, field: "port",
                                    message: "70000 is not a port (1-65535)")) {
            try ServiceFileParser.parse(text, file: "services.yaml")
        }
        do {
            _ = try ServiceFileParser.parse(text, file: "services.yaml")
        } catch {
            #expect(error.description == #"services.yaml:8: service "web" (services[0]): field "port": 70000 is not a port (1-65535)"#)
        }
    }

    @Test func aFileIsLoadedFromItsPath() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-\(UUID().uuidString).yaml").path
        try goodFile.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try ServiceFileParser.load(path: path) == ServiceFileParser.parse(goodFile, file: "x"))
    }

    @Test func aMissingFileIsAConfigErrorNamingThePath() {
        do {
            _ = try ServiceFileParser.load(path: "/nonexistent/services.yaml")
            Issue.record("loading a missing file succeeded")
        } catch {
            #expect(error.file == "/nonexistent/services.yaml")
            #expect(error.description.contains("No such file or directory"))
        }
    }

    /// A file whose node names `nat_flow_budget: value` on line 3 (nothing when nil).
    private static func budgetFile(_ value: String?) -> String {
        "node:\n  source_v4: 192.0.2.10\n" + (value.map { "  nat_flow_budget: \($0)\n" } ?? "") + "services: []\n"
    }

    @Test func natFlowBudgetAcceptsZeroForNoLimitAndAnyUInt32() throws {
        for (raw, budget) in [("0", UInt32(0)), ("5000", 5000), ("4294967295", UInt32.max)] {
            let node = try ServiceFileParser.parse(Self.budgetFile(raw), file: "node.yaml").node
            #expect(node.natFlowBudget == budget && node.effectiveNATFlowBudget == budget, "\(raw)")
        }
    }

    @Test func anAbsentNATFlowBudgetIsTheDataPlanesDefault() throws {
        let node = try ServiceFileParser.parse(Self.budgetFile(nil), file: "node.yaml").node
        #expect(node.natFlowBudget == nil)
        #expect(node.effectiveNATFlowBudget == 125_000 && NodeConfig.defaultNATFlowBudget == 125_000,
                "SL_NAT_FLOW_BUDGET_DEFAULT in lb_shared.h")
        #expect(node == NodeConfig(sourceV4: IPAddress("192.0.2.10")))
    }

    @Test func aNATFlowBudgetThatIsNoUInt32IsRefusedNamingFileLineFieldAndValue() {
        let range = "(new translations per second per CPU, 0-4294967295; 0 = no limit)"
        for (raw, shown) in [("-1", "-1"), ("lots", #""lots""#), ("4294967296", "4294967296"), ("1.5", #""1.5""#),
                             ("+5", "+5"), ("-0", "-0")] {
            let expected = ConfigError(file: "node.yaml", line: 3, field: "node.nat_flow_budget",
                                       message: "\(shown) is not a NAT flow budget \(range)")
            #expect(throws: expected, "\(raw)") { try ServiceFileParser.parse(Self.budgetFile(raw), file: "node.yaml") }
            do {
                _ = try ServiceFileParser.parse(Self.budgetFile(raw), file: "node.yaml")
            } catch {
                #expect(error.description == #"node.yaml:3: field "node.nat_flow_budget": "# + "\(shown) is not a NAT flow budget \(range)")
            }
        }
    }

    @Test func theNATFlowBudgetIsInTheJSONSchemaAndTheDiffAndUnsetIsTheDefault() throws {
        let current = try ServiceFileParser.parse(Self.budgetFile(nil), file: "node.yaml")
        let desired = try ServiceFileParser.parse(Self.budgetFile("5000"), file: "node.yaml")
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(desired), as: UTF8.self)
        #expect(json.contains(#""nat_flow_budget":5000"#), "\(json)")
        #expect(try JSONDecoder().decode(ServiceFile.self, from: Data(json.utf8)) == desired)
        #expect(!String(decoding: try encoder.encode(current), as: UTF8.self).contains("nat_flow_budget"),
                "an unset budget leaves the JSON as it was")

        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.nodeChanges == [ValueChange(field: "nat_flow_budget", from: "125000", to: "5000")])
        #expect(diff.lines == ["~ node: nat_flow_budget 125000 -> 5000"])
        #expect(ConfigDiff.between(current: desired, desired: try ServiceFileParser.parse(Self.budgetFile("0"), file: "n")).lines
                == ["~ node: nat_flow_budget 5000 -> 0"])
        var explicit = current
        explicit.node.natFlowBudget = NodeConfig.defaultNATFlowBudget
        #expect(ConfigDiff.between(current: current, desired: explicit).isEmpty, "125000 is what an unset budget means")
    }
}

@Suite struct ServiceFileCodableTests {
    @Test func jsonUsesTheSameSnakeCaseKeysAsTheYAML() throws {
        let file = try ServiceFileParser.parse(goodFile, file: "services.yaml")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = try #require(String(data: try encoder.encode(file), encoding: .utf8))
        for key in ["\"source_v4\":\"192.0.2.10\"", "\"source_v6\":\"2001:db8:ffff::10\"", "\"maglev_table_size\":251",
                    "\"protocol\":\"tcp\"", "\"forwarding\":\"ipip\"", "\"vip\":\"198.51.100.10\"", "\"port\":80",
                    "\"address\":\"10.1.0.21\"", "\"weight\":0"] {
            #expect(json.contains(key), "\(key) missing from \(json)")
        }
        #expect(!json.contains("sourceV4") && !json.contains("proto\""))
        #expect(try JSONDecoder().decode(ServiceFile.self, from: Data(json.utf8)) == file)
    }

    @Test func jsonDecodingAppliesTheSameDefaultsAsTheParser() throws {
        let json = """
            {"services": [{"name": "a", "vip": "198.51.100.1", "port": 80, "protocol": "tcp",
                           "backends": [{"address": "10.0.0.1"}]}]}
            """
        let file = try JSONDecoder().decode(ServiceFile.self, from: Data(json.utf8))
        #expect(file.node == NodeConfig())
        #expect(file.services[0].forwarding == .ipip)
        #expect(file.services[0].backends[0].weight == 1)
    }

    @Test func aBadAddressInJSONIsADecodingError() {
        let json = #"{"address": "10.0.0.300"}"#
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Backend.self, from: Data(json.utf8)) }
    }

    @Test func aModelBuiltInCodeIsHeldToTheSameRules() throws {
        var file = try ServiceFileParser.parse(goodFile, file: "x")
        file.services[1].name = "web"
        do {
            try file.validate(file: "request body")
            Issue.record("a duplicate name passed validation")
        } catch {
            #expect(error.description == #"request body: service "web" (services[1]): field "name": "web" is also the name of service "web" (services[0])"#)
        }
    }
}
