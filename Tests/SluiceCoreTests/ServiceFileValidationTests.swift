import Testing
@testable import SluiceCore

/// A file that should be rejected, and what the error must name.
struct BadFile: CustomTestStringConvertible, Sendable {
    let name: String
    let text: String
    var limits = ServiceFileParser.Limits.default
    /// Must appear in the description as `field "…"` (nil: no field, e.g. a YAML error).
    let field: String?
    /// The offending value (or key) as it must appear in the description.
    let value: String
    /// The line the error must point at, when the case pins it.
    var line: Int?

    var testDescription: String { name }
}

private let node = """
    node:
      source_v4: 192.0.2.10
      source_v6: "2001:db8:ffff::10"

    """

/// A file with the node above and one service `web` whose lines are `fields`
/// (each indented under the list item). Line 4 is `services:`, line 5 the first field.
private func file(_ fields: String, node header: String = node) -> String {
    let body = fields.split(separator: "\n", omittingEmptySubsequences: false)
        .enumerated().map { $0.offset == 0 ? "  - " + $0.element : "    " + $0.element }
        .joined(separator: "\n")
    return header + "services:\n" + body + "\n"
}

private let web = """
    name: web
    vip: 198.51.100.10
    port: 80
    protocol: tcp
    backends:
      - { address: 10.1.0.21, weight: 1 }
    """

private func replacing(_ old: String, _ new: String) -> String {
    file(web.replacingOccurrences(of: old, with: new))
}

private func without(_ key: String) -> String {
    file(web.split(separator: "\n").filter { !$0.hasPrefix(key + ":") && !(key == "backends" && $0.hasPrefix("  -")) }
        .joined(separator: "\n"))
}

private let second = """

      - name: api
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        backends: [ { address: 10.1.0.31 } ]
    """

/// The web service with `healthcheck: { CHECK }` on line 11.
private func checked(_ check: String) -> String {
    file(web + "\nhealthcheck: { \(check) }")
}

private let badHealthChecks: [BadFile] = [
    BadFile(name: "health check without a type", text: checked("port: 8080"), field: "healthcheck.type",
            value: "required key is missing", line: 11),
    BadFile(name: "unknown health check type", text: checked("type: icmp"), field: "healthcheck.type",
            value: #""icmp" is not a health check type (tcp, http, udp)"#, line: 11),
    BadFile(name: "unknown health check key", text: checked("type: tcp, intervall: 2s"), field: "healthcheck",
            value: #"unknown key "intervall""#, line: 11),
    BadFile(name: "health check port out of range", text: checked("type: tcp, port: 70000"), field: "healthcheck.port",
            value: "70000 is not a port (1-65535)", line: 11),
    BadFile(name: "a duration without a unit", text: checked("type: tcp, interval: 2"), field: "healthcheck.interval",
            value: #""2" is not a duration from 100ms to 1h"#, line: 11),
    BadFile(name: "an interval too short", text: checked("type: tcp, interval: 5ms"), field: "healthcheck.interval",
            value: #""5ms" is not a duration"#, line: 11),
    BadFile(name: "a timeout longer than the interval", text: checked("type: tcp, interval: 1s, timeout: 2s"),
            field: "healthcheck.timeout", value: "2s is longer than the interval (1s)", line: 11),
    BadFile(name: "rise 0", text: checked("type: tcp, rise: 0"), field: "healthcheck.rise",
            value: "0 is not a count from 1 to 100", line: 11),
    BadFile(name: "fall not a number", text: checked("type: tcp, fall: many"), field: "healthcheck.fall",
            value: #""many" is not a count"#, line: 11),
    BadFile(name: "a path on a tcp check", text: checked("type: tcp, path: /healthz"), field: "healthcheck.path",
            value: "applies to type http only, not tcp", line: 11),
    BadFile(name: "an HTTP path without a slash", text: checked("type: http, path: healthz"), field: "healthcheck.path",
            value: #""healthz" is not an HTTP path"#, line: 11),
    BadFile(name: "an HTTP status out of range", text: checked("type: http, expect_status: 99"),
            field: "healthcheck.expect_status", value: "99 is not an HTTP status (100-599)", line: 11),
    BadFile(name: "a udp check without send", text: checked("type: udp, expect: pong"), field: "healthcheck.send",
            value: "required for type udp", line: 11),
    BadFile(name: "send on an http check", text: checked("type: http, send: ping"), field: "healthcheck.send",
            value: "applies to type udp only, not http", line: 11),
]

/// The web service in `mode` (line 11), its backend's flow mapping on line 10 given `extra` keys
/// (one line later each with a node of one more line).
private func translated(_ mode: String, backend: String = "10.1.0.21", extra: String = "", node header: String = node) -> String {
    file(web.replacingOccurrences(of: "10.1.0.21, weight: 1", with: "\(backend), weight: 1\(extra)") + "\nforwarding: \(mode)",
         node: header)
}

/// The node above with `line` added on line 4.
private func withNode(_ line: String) -> String { node + "  " + line + "\n" }

private let badNATFiles: [BadFile] = [
    BadFile(name: "a backend port in a tunnel mode", text: replacing("weight: 1", "weight: 1, port: 8080"),
            field: "backends[0].port", value: "8080: a backend port applies to forwarding nat and fullnat only, not ipip", line: 10),
    BadFile(name: "a backend port in l2dsr", text: translated("l2dsr", extra: ", port: 8080"), field: "backends[0].port",
            value: "applies to forwarding nat and fullnat only, not l2dsr", line: 10),
    BadFile(name: "a backend port out of range", text: translated("nat", extra: ", port: 70000"), field: "backends[0].port",
            value: "70000 is not a port (1-65535)", line: 10),
    BadFile(name: "a backend port zero", text: translated("nat", extra: ", port: 0"), field: "backends[0].port",
            value: "0 is not a port (1-65535)", line: 10),
    BadFile(name: "a backend port not a number", text: translated("fullnat", extra: ", port: https", node: withNode("snat_v4: [192.0.2.20]")),
            field: "backends[0].port", value: #""https" is not a port"#, line: 11),
    BadFile(name: "a nat backend of the other family", text: translated("nat", backend: "\"2001:db8::21\""), field: "backends[0].address",
            value: "IPv6 backend 2001:db8::21 cannot serve IPv4 VIP 198.51.100.10 with forwarding nat: addresses are not translated across families",
            line: 10),
    BadFile(name: "a fullnat backend of the other family", text: translated("fullnat", backend: "\"2001:db8::21\"",
                                                                         node: withNode("snat_v4: [192.0.2.20]")),
            field: "backends[0].address", value: "cannot serve IPv4 VIP 198.51.100.10 with forwarding fullnat", line: 11),
    BadFile(name: "fullnat without a SNAT address of its family", text: translated("fullnat", node: withNode("snat_v6: [\"2001:db8:ffff::20\"]")),
            field: "forwarding", value: "fullnat toward IPv4 backends needs node.snat_v4, this node's source addresses for them, which is empty",
            line: 12),
    BadFile(name: "snat_v4 holding an IPv6 address", text: file(web, node: withNode("snat_v4: [192.0.2.20, \"2001:db8::1\"]")),
            field: "node.snat_v4[1]", value: #""2001:db8::1" is not an IPv4 address"#, line: 4),
    BadFile(name: "snat_v6 holding an IPv4 address", text: file(web, node: withNode("snat_v6: [192.0.2.20]")),
            field: "node.snat_v6[0]", value: #""192.0.2.20" is not an IPv6 address"#, line: 4),
    BadFile(name: "snat_v4 not an address", text: file(web, node: withNode("snat_v4: [192.0.2.x]")),
            field: "node.snat_v4[0]", value: #""192.0.2.x" is not an IPv4 address"#, line: 4),
    BadFile(name: "snat_v4 listing an address twice", text: file(web, node: withNode("snat_v4: [192.0.2.20, 192.0.2.21, 192.0.2.20]")),
            field: "node.snat_v4[2]", value: "192.0.2.20 is listed twice (also node.snat_v4[0])", line: 4),
    BadFile(name: "snat_v4 over SL_MAX_SNAT_ADDRS", text: file(web, node: withNode("snat_v4: [" + (1...17).map { "192.0.2.\($0)" }.joined(separator: ", ") + "]")),
            field: "node.snat_v4", value: "17 addresses exceed the limit of 16 (SL_MAX_SNAT_ADDRS)", line: 4),
    BadFile(name: "snat_v4 not a list", text: file(web, node: withNode("snat_v4: 192.0.2.20")),
            field: "node.snat_v4", value: #"expected a list, found the value "192.0.2.20""#, line: 4),
    BadFile(name: "snat_ports a single port", text: file(web, node: withNode("snat_ports: 1024")),
            field: "node.snat_ports", value: "1024 is not a port range LOW-HIGH with 1 <= LOW <= HIGH <= 65535", line: 4),
    BadFile(name: "snat_ports reversed", text: file(web, node: withNode("snat_ports: 2000-1000")),
            field: "node.snat_ports", value: #""2000-1000" is not a port range"#, line: 4),
    BadFile(name: "snat_ports from zero", text: file(web, node: withNode("snat_ports: 0-100")),
            field: "node.snat_ports", value: #""0-100" is not a port range"#, line: 4),
    BadFile(name: "snat_ports past 65535", text: file(web, node: withNode("snat_ports: 1024-70000")),
            field: "node.snat_ports", value: #""1024-70000" is not a port range"#, line: 4),
    BadFile(name: "snat_ports not numbers", text: file(web, node: withNode("snat_ports: low-high")),
            field: "node.snat_ports", value: #""low-high" is not a port range"#, line: 4),
]

private let badFiles: [BadFile] = badHealthChecks + badNATFiles + [
    BadFile(name: "YAML syntax error", text: "services: [\n  - {name: a\n", field: nil, value: "invalid YAML"),
    BadFile(name: "a tab in indentation", text: "services:\n\t- name: a\n", field: nil, value: "invalid YAML", line: 2),
    BadFile(name: "an empty file", text: "", field: nil, value: "empty"),
    BadFile(name: "top level is a list", text: "- name: web\n", field: nil, value: "top level must be a mapping"),
    BadFile(name: "top level is a scalar", text: "hello\n", field: nil, value: #""hello""#),
    BadFile(name: "duplicate key", text: file(web + "\nport: 81"), field: nil, value: #""port" appears more than once"#),
    BadFile(name: "unknown top-level key", text: "nodes: {}\nservices: []\n", field: nil,
            value: #"unknown key "nodes" (allowed keys: node, services)"#, line: 1),
    BadFile(name: "unknown node key", text: "node: { source_v5: 192.0.2.10 }\nservices: []\n", field: "node",
            value: #"unknown key "source_v5""#, line: 1),
    BadFile(name: "unknown service key", text: replacing("protocol:", "protocl:"), field: nil,
            value: #"unknown key "protocl" (allowed keys: name, vip, port, protocol, forwarding, client_address, backends, healthcheck)"#, line: 8),
    BadFile(name: "unknown backend key", text: replacing("weight: 1", "wieght: 1"), field: "backends[0]",
            value: #"unknown key "wieght" (allowed keys: address, port, weight)"#, line: 10),
    BadFile(name: "missing services", text: "node: {}\n", field: "services", value: "required key is missing"),
    BadFile(name: "services is a mapping", text: "services: { name: web }\n", field: "services", value: "expected a list"),
    BadFile(name: "a service is a scalar", text: "services: [ web ]\n", field: nil, value: #"services[0]: expected a mapping (key: value), found the value "web""#),
    BadFile(name: "missing name", text: without("name"), field: "name", value: "required key is missing"),
    BadFile(name: "missing vip", text: without("vip"), field: "vip", value: "required key is missing"),
    BadFile(name: "missing port", text: without("port"), field: "port", value: "required key is missing"),
    BadFile(name: "missing protocol", text: without("protocol"), field: "protocol", value: "required key is missing"),
    BadFile(name: "missing backends", text: without("backends"), field: "backends", value: "required key is missing"),
    BadFile(name: "vip with no value", text: replacing("vip: 198.51.100.10", "vip:"), field: "vip", value: "has no value", line: 6),
    BadFile(name: "bad vip", text: replacing("198.51.100.10", "198.51.100.300"), field: "vip",
            value: #""198.51.100.300" is not an IP address"#, line: 6),
    BadFile(name: "vip with a prefix", text: replacing("198.51.100.10", "198.51.100.0/24"), field: "vip",
            value: #""198.51.100.0/24" is not an IP address"#),
    BadFile(name: "vip is a list", text: replacing("198.51.100.10", "[198.51.100.10]"), field: "vip",
            value: "expected a single value, found a list"),
    BadFile(name: "bad backend address", text: replacing("10.1.0.21", "10.1.0.x"), field: "backends[0].address",
            value: #""10.1.0.x" is not an IP address"#, line: 10),
    BadFile(name: "source_v4 is IPv6", text: file(web, node: "node:\n  source_v4: \"2001:db8::1\"\n\n"),
            field: "node.source_v4", value: #""2001:db8::1" is not an IPv4 address"#, line: 2),
    BadFile(name: "source_v6 is IPv4", text: file(web, node: "node:\n  source_v4: 192.0.2.10\n  source_v6: 192.0.2.11\n"),
            field: "node.source_v6", value: #""192.0.2.11" is not an IPv6 address"#, line: 3),
    BadFile(name: "port too large", text: replacing("port: 80", "port: 70000"), field: "port",
            value: "70000 is not a port (1-65535)", line: 7),
    BadFile(name: "port zero", text: replacing("port: 80", "port: 0"), field: "port", value: "0 is not a port"),
    BadFile(name: "port negative", text: replacing("port: 80", "port: -1"), field: "port", value: "-1 is not a port"),
    BadFile(name: "port not a number", text: replacing("port: 80", "port: http"), field: "port", value: #""http" is not a port"#),
    BadFile(name: "port with a fraction", text: replacing("port: 80", "port: 80.5"), field: "port", value: #""80.5" is not a port"#),
    BadFile(name: "bad protocol", text: replacing("protocol: tcp", "protocol: icmp"), field: "protocol",
            value: #""icmp" is not a protocol (tcp, udp)"#, line: 8),
    BadFile(name: "bad forwarding", text: file(web + "\nforwarding: dsr"), field: "forwarding",
            value: #""dsr" is not a forwarding mode (ipip, gue, l2dsr, nat, fullnat)"#, line: 11),
    BadFile(name: "tunnel_mtu below IPv6's minimum", text: file(web, node: node + "  tunnel_mtu: 1279\n"),
            field: "node.tunnel_mtu", value: "1279 is not a tunnel MTU (1280-65535)", line: 4),
    BadFile(name: "tunnel_mtu too large", text: file(web, node: node + "  tunnel_mtu: 65536\n"),
            field: "node.tunnel_mtu", value: "65536 is not a tunnel MTU (1280-65535)", line: 4),
    BadFile(name: "tunnel_mtu not a number", text: file(web, node: node + "  tunnel_mtu: jumbo\n"),
            field: "node.tunnel_mtu", value: #""jumbo" is not a tunnel MTU"#, line: 4),
    BadFile(name: "gue_port zero", text: file(web, node: node + "  gue_port: 0\n"),
            field: "node.gue_port", value: "0 is not a port (1-65535)", line: 4),
    BadFile(name: "gue_port too large", text: file(web, node: node + "  gue_port: 70000\n"),
            field: "node.gue_port", value: "70000 is not a port (1-65535)", line: 4),
    BadFile(name: "a gue service still needs the node source of its backends' family",
            text: file(web + "\nforwarding: gue", node: "node:\n  source_v6: \"2001:db8:ffff::10\"\n"),
            field: "backends[0].address", value: "IPv4 backend 10.1.0.21 needs node.source_v4"),
    BadFile(name: "weight too large", text: replacing("weight: 1", "weight: 70000"), field: "backends[0].weight",
            value: "70000 is not a weight (0-65535)", line: 10),
    BadFile(name: "weight negative", text: replacing("weight: 1", "weight: -1"), field: "backends[0].weight",
            value: "-1 is not a weight"),
    BadFile(name: "weight not a number", text: replacing("weight: 1", "weight: heavy"), field: "backends[0].weight",
            value: #""heavy" is not a weight"#),
    BadFile(name: "maglev size not prime", text: file(web, node: node + "  maglev_table_size: 65536\n"),
            field: "node.maglev_table_size", value: "65536 is not a valid Maglev table size (a prime from 251 to 4000037)"),
    BadFile(name: "maglev size too small", text: file(web, node: node + "  maglev_table_size: 241\n"),
            field: "node.maglev_table_size", value: "241 is not a valid Maglev table size"),
    BadFile(name: "maglev size above the limit", text: file(web, node: node + "  maglev_table_size: 4000037\n"),
            limits: .init(maxMaglevSize: 655_373), field: "node.maglev_table_size", value: "4000037 is not a valid Maglev table size"),
    BadFile(name: "maglev size not a number", text: file(web, node: node + "  maglev_table_size: big\n"),
            field: "node.maglev_table_size", value: #""big" is not a valid Maglev table size"#),
    BadFile(name: "more backends than table slots",
            text: file(web.replacingOccurrences(of: "  - { address: 10.1.0.21, weight: 1 }",
                                                with: (0..<252).map { "  - { address: 10.2.\($0 / 256).\($0 % 256) }" }.joined(separator: "\n")),
                       node: node + "  maglev_table_size: 251\n"),
            field: "backends", value: "252 backends do not fit a Maglev table of 251 slots", line: 10),
    BadFile(name: "empty name", text: replacing("name: web", "name: \"\""), field: "name", value: "is empty"),
    BadFile(name: "name too long", text: replacing("name: web", "name: " + String(repeating: "w", count: 64)),
            field: "name", value: "is longer than 63 bytes"),
    BadFile(name: "name with a space", text: replacing("name: web", "name: we b"), field: "name",
            value: #""we b" may only contain letters, digits"#, line: 5),
    BadFile(name: "name with a slash", text: replacing("name: web", "name: a/b"), field: "name", value: #""a/b""#),
    BadFile(name: "duplicate service name", text: file(web) + second.replacingOccurrences(of: "name: api", with: "name: web")
        .replacingOccurrences(of: "198.51.100.10", with: "198.51.100.11"),
            field: "name", value: #""web" is also the name of service "web" (services[0], line 5)"#, line: 12),
    BadFile(name: "duplicate VIP", text: file(web) + second, field: "vip",
            value: #"198.51.100.10:80/tcp is already served by service "web" (services[0], line 5)"#, line: 13),
    BadFile(name: "no backends", text: replacing("backends:\n  - { address: 10.1.0.21, weight: 1 }", "backends: []"),
            field: "backends", value: "is empty; a service needs at least one backend"),
    BadFile(name: "backends is not a list", text: replacing("backends:\n  - { address: 10.1.0.21, weight: 1 }", "backends: 10.1.0.21"),
            field: "backends", value: #"expected a list, found the value "10.1.0.21""#),
    BadFile(name: "duplicate backend", text: file(web + "\n  - { address: 10.1.0.21, weight: 2 }"),
            field: "backends[1].address", value: "10.1.0.21 is listed twice (also backends[0])", line: 11),
    BadFile(name: "IPv4 backend behind an IPv6 VIP", text: replacing("198.51.100.10", "\"2001:db8::80\""),
            field: "backends[0].address", value: "IPv4 backend 10.1.0.21 cannot serve IPv6 VIP 2001:db8::80"),
    BadFile(name: "IPv4 backend without source_v4", text: file(web, node: "node:\n  source_v6: \"2001:db8::1\"\n\n"),
            field: "backends[0].address", value: "IPv4 backend 10.1.0.21 needs node.source_v4", line: 10),
    BadFile(name: "IPv6 backend without source_v6", text: file(web.replacingOccurrences(of: "10.1.0.21", with: "\"2001:db8::21\""),
                                                               node: "node:\n  source_v4: 192.0.2.10\n\n"),
            field: "backends[0].address", value: "IPv6 backend 2001:db8::21 needs node.source_v6"),
    BadFile(name: "no node at all", text: "services:\n  - { name: a, vip: 198.51.100.1, port: 80, protocol: tcp, backends: [ { address: 10.0.0.1 } ] }\n",
            field: "backends[0].address", value: "needs node.source_v4"),
    BadFile(name: "too many services", text: file(web) + second.replacingOccurrences(of: "port: 80", with: "port: 81"),
            limits: .init(maxServices: 1), field: "services", value: "2 services exceed the limit of 1", line: 4),
    BadFile(name: "too many backends", text: file(web) + second.replacingOccurrences(of: "port: 80", with: "port: 81"),
            limits: .init(maxBackends: 1), field: "backends", value: "brings the total to 2 backends, over the limit of 1"),
]

@Suite struct ServiceFileValidationTests {
    @Test(arguments: badFiles)
    func aBadFileIsRejectedWithAMessageNamingTheFieldAndValue(_ bad: BadFile) {
        do {
            let parsed = try ServiceFileParser.parse(bad.text, file: "services.yaml", limits: bad.limits)
            Issue.record("accepted: \(parsed)")
        } catch {
            let text = error.description
            #expect(text.hasPrefix("services.yaml:") || text.hasPrefix("services.yaml: "))
            if let field = bad.field {
                #expect(error.field == field)
                #expect(text.contains("field \"\(field)\": "), "\(text)")
            }
            #expect(text.contains(bad.value), "\(text)")
            if let line = bad.line {
                #expect(error.line == line, "\(text)")
            }
        }
    }

    @Test func errorsInsideAServiceNameItByNameAndIndex() {
        let text = file(web) + second.replacingOccurrences(of: "port: 80", with: "port: 99999")
        #expect(throws: ConfigError.self) { try ServiceFileParser.parse(text, file: "s.yaml") }
        do {
            _ = try ServiceFileParser.parse(text, file: "s.yaml")
        } catch {
            #expect(error.description == #"s.yaml:14: service "api" (services[1]): field "port": 99999 is not a port (1-65535)"#)
        }
    }

    @Test func aServiceWithoutANameIsNamedByIndex() {
        do {
            _ = try ServiceFileParser.parse(without("name"), file: "s.yaml")
        } catch {
            #expect(error.description == #"s.yaml:5: services[0]: field "name": required key is missing"#)
        }
    }

    @Test func theBaseFileOfTheseCasesIsItselfValid() throws {
        #expect(try ServiceFileParser.parse(file(web), file: "s.yaml").services.count == 1)
        #expect(try ServiceFileParser.parse(file(web) + second.replacingOccurrences(of: "port: 80", with: "port: 81"),
                                            file: "s.yaml").services.count == 2)
    }
}
