// client_address in the service file: proxy-v2 parses for a full-NAT TCP service, is refused
// with the file, line, field and value anywhere else, defaults to none, and a change of it is
// a change of its service that leaves the table alone.
import Foundation
import Testing
@testable import SluiceCore

struct ProxyConfigTests {
    private func file(forwarding: String = "fullnat", proto: String = "tcp", clientAddress: String = "proxy-v2") -> String {
        """
        node:
          snat_v4: [192.0.2.20]
        services:
          - name: api
            vip: 198.51.100.20
            port: 443
            protocol: \(proto)
            forwarding: \(forwarding)
            client_address: \(clientAddress)
            backends: [ { address: 10.2.0.11, port: 8443 } ]
        """
    }

    @Test func proxyV2ParsesForAFullNATTCPServiceAndNoneIsTheDefault() throws {
        #expect(try ServiceFileParser.parse(file(), file: "s.yaml").services[0].clientAddress == .proxyV2)
        #expect(try ServiceFileParser.parse(file(clientAddress: "none"), file: "s.yaml").services[0].clientAddress == .none)
        let plain = try ServiceFileParser.parse("""
            services:
              - { name: web, vip: 198.51.100.10, port: 80, protocol: tcp, forwarding: nat, backends: [ { address: 10.1.0.21 } ] }
            """, file: "s.yaml")
        #expect(plain.services[0].clientAddress == .none)
        #expect(ClientAddress.allCases.map(\.rawValue) == ["none", "proxy-v2"])
    }

    @Test("proxy-v2 anywhere but fullnat TCP, or an unknown value, names the file, line, field and value",
          arguments: [("nat", "tcp", "proxy-v2", "forwarding nat and protocol tcp"),
                      ("fullnat", "udp", "proxy-v2", "forwarding fullnat and protocol udp"),
                      ("ipip", "tcp", "proxy-v2", "forwarding ipip"),
                      ("fullnat", "tcp", "proxy-v1", "\"proxy-v1\" is not a client address (none, proxy-v2)")])
    func refusedWhereTheDataPlaneCannotWriteIt(forwarding: String, proto: String, value: String, says: String) {
        do {
            _ = try ServiceFileParser.parse(file(forwarding: forwarding, proto: proto, clientAddress: value), file: "s.yaml")
            Issue.record("accepted client_address \(value) with forwarding \(forwarding), protocol \(proto)")
        } catch {
            #expect(error.file == "s.yaml" && error.line == 9 && error.field == "client_address" && error.service == "api",
                    "\(error)")
            #expect(error.message.contains(says), "\(error.message)")
            #expect(error.description.contains("s.yaml:9"), "\(error.description)")
        }
    }

    @Test func aChangedClientAddressIsAChangeOfItsServiceAndSurvivesJSON() throws {
        let current = try ServiceFileParser.parse(file(clientAddress: "none"), file: "s.yaml")
        let desired = try ServiceFileParser.parse(file(), file: "s.yaml")
        let change = try #require(ConfigDiff.between(current: current, desired: desired).servicesChanged.first)
        #expect(change.clientAddressChange == ValueChange(field: "client_address", from: "none", to: "proxy-v2"))
        #expect(change.parts == ["client_address none -> proxy-v2"])
        let text = String(decoding: try JSONEncoder().encode(desired), as: UTF8.self)
        #expect(text.contains(#""client_address":"proxy-v2""#), "\(text)")
        #expect(try JSONDecoder().decode(ServiceFile.self, from: Data(text.utf8)) == desired)
    }
}
