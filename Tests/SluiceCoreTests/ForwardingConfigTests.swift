// The forwarding modes and the node's tunnel settings in the service file: what parses, what
// the validator holds a model to, and how a change of them shows in the diff.
import Foundation
import Testing
@testable import SluiceCore

struct ForwardingConfigTests {
    private let yaml = """
        node:
          source_v4: 192.0.2.10
          tunnel_mtu: 1500
          gue_port: 7080
        services:
          - name: web
            vip: 198.51.100.10
            port: 80
            protocol: tcp
            forwarding: l2dsr
            backends:
              - { address: 10.1.0.21, weight: 1 }
          - name: api
            vip: 198.51.100.11
            port: 443
            protocol: tcp
            forwarding: gue
            backends: [ { address: 10.1.0.31 } ]
        """

    @Test func everyModeAndTheNodeKeysParse() throws {
        let file = try ServiceFileParser.parse(yaml, file: "s.yaml")
        #expect(file.node.tunnelMTU == 1500)
        #expect(file.node.guePort == 7080)
        #expect(file.services.map(\.forwarding) == [.l2dsr, .gue])
        let plain = try ServiceFileParser.parse("services: []\n", file: "s.yaml")
        #expect(plain.node.tunnelMTU == nil && plain.node.guePort == nil)
        #expect(plain.node.effectiveGUEPort == 6080)
        #expect(Forwarding.allCases.map(\.rawValue) == ["ipip", "gue", "l2dsr", "nat", "fullnat"])
    }

    @Test func anL2DSRServiceNeedsNoNodeSource() throws {
        let file = try ServiceFileParser.parse("""
            services:
              - { name: web, vip: 198.51.100.10, port: 80, protocol: tcp, forwarding: l2dsr,
                  backends: [ { address: 10.1.0.21 }, { address: "2001:db8::21" } ] }
            """, file: "s.yaml")
        #expect(file.services[0].forwarding == .l2dsr)
        #expect(file.node.sourceV4 == nil && file.node.sourceV6 == nil)
    }

    @Test func theJSONSchemaCarriesTheNewKeys() throws {
        let file = try ServiceFileParser.parse(yaml, file: "s.yaml")
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let text = String(decoding: try encoder.encode(file), as: UTF8.self)
        for key in [#""tunnel_mtu":1500"#, #""gue_port":7080"#, #""forwarding":"l2dsr""#, #""forwarding":"gue""#] {
            #expect(text.contains(key), "\(text)")
        }
        #expect(try JSONDecoder().decode(ServiceFile.self, from: Data(text.utf8)) == file)
    }

    @Test func theValidatorHoldsAModelToTheRanges() {
        for (node, field) in [(NodeConfig(sourceV4: IPAddress("192.0.2.10"), tunnelMTU: 576), "node.tunnel_mtu"),
                              (NodeConfig(sourceV4: IPAddress("192.0.2.10"), guePort: 0), "node.gue_port")] {
            let file = ServiceFile(node: node, services: [])
            #expect(throws: ConfigError.self) { try file.validate(file: "request body") }
            do { try file.validate(file: "request body") } catch { #expect(error.field == field, "\(error)") }
        }
    }

    @Test func aModeChangeIsAChangeOfThatServiceNotAMoveOfItsVIP() throws {
        let current = try ServiceFileParser.parse(yaml, file: "s.yaml")
        var desired = current
        desired.services[1].forwarding = .ipip
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.servicesChanged.map(\.name) == ["api"])
        let change = try #require(diff.servicesChanged.first)
        #expect(!change.vipChanged && change.vipChange == nil)
        #expect(change.forwardingChange == ValueChange(field: "forwarding", from: "gue", to: "ipip"))
        #expect(diff.lines == ["~ service api: forwarding gue -> ipip"])
    }

    @Test func theNodeSettingsDiffAndAnUnsetGUEPortIsTheDefault() throws {
        let current = try ServiceFileParser.parse(yaml, file: "s.yaml")
        var desired = current
        desired.node.tunnelMTU = nil
        desired.node.guePort = nil
        let diff = ConfigDiff.between(current: current, desired: desired)
        #expect(diff.nodeChanges == [ValueChange(field: "tunnel_mtu", from: "1500", to: "none"),
                                     ValueChange(field: "gue_port", from: "7080", to: "6080")])
        var explicit = desired
        explicit.node.guePort = NodeConfig.defaultGUEPort
        #expect(ConfigDiff.between(current: desired, desired: explicit).isEmpty, "gue_port 6080 is what an unset one means")
    }
}
