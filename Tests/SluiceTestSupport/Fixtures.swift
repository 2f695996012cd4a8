// Service files and small helpers shared by the lbctl and agent tests. No Testing
// here: the release bench links this target.
import Foundation

public enum Fixtures {
    public static let gatewayMAC = "02:00:00:00:00:01"
    public static let sourceV4 = "10.0.0.1"
    public static let sourceV6 = "fd00::1"
    public static let webVIP = "192.0.2.10"
    public static let webBackends = ["10.1.0.1", "10.1.0.2"]
    public static let web6VIP = "2001:db8::10"
    public static let web6Backends = ["fd00:1::1", "fd00:1::2"]

    public static let node = """
        node:
          source_v4: \(sourceV4)
          source_v6: \(sourceV6)
        """

    /// An IPv4 TCP VIP with two backends and an IPv6 TCP VIP with two IPv6 backends.
    public static let good = """
        \(node)
        services:
          - name: web
            vip: \(webVIP)
            port: 80
            protocol: tcp
            backends:
              - address: \(webBackends[0])
              - address: \(webBackends[1])
                weight: 2
          - name: web6
            vip: \(web6VIP)
            port: 443
            protocol: tcp
            backends:
              - address: \(web6Backends[0])
              - address: \(web6Backends[1])

        """

    /// `good` with web changed (a backend added, one removed, a weight
    /// changed), web6 removed and a UDP service added.
    public static let changed = """
        \(node)
        services:
          - name: web
            vip: \(webVIP)
            port: 80
            protocol: tcp
            backends:
              - address: \(webBackends[0])
                weight: 3
              - address: 10.1.0.3
          - name: dns
            vip: 192.0.2.53
            port: 53
            protocol: udp
            backends:
              - address: 10.1.0.9

        """

    /// A file lbctl must refuse, and what its message must say.
    /// Shown by its label, also as a test's argument (Swift Testing falls back to `description`).
    public struct BadFile: Sendable, CustomStringConvertible {
        public var label: String
        public var text: String
        /// Every one of these must appear on stderr (field names and values).
        public var mentions: [String]
        public var description: String { label }
    }

    /// One service around `body` (the lines after `- name: web`).
    private static func service(_ body: String, node: String = node) -> String {
        "\(node)\nservices:\n  - name: web\n" + body.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n") + "\n"
    }

    public static let bad: [BadFile] = [
        BadFile(label: "a YAML syntax error",
                text: service("vip: 192.0.2.10\nport: [80\nprotocol: tcp"),
                mentions: ["invalid YAML", "line"]),
        BadFile(label: "an unknown key",
                text: service("vip: 192.0.2.10\nport: 80\nprotocol: tcp\ncolour: red\nbackends:\n  - address: 10.1.0.1"),
                mentions: ["colour", "unknown key"]),
        BadFile(label: "a bad address",
                text: service("vip: 192.0.2.300\nport: 80\nprotocol: tcp\nbackends:\n  - address: 10.1.0.1"),
                mentions: ["\"vip\"", "192.0.2.300"]),
        BadFile(label: "port 70000",
                text: service("vip: 192.0.2.10\nport: 70000\nprotocol: tcp\nbackends:\n  - address: 10.1.0.1"),
                mentions: ["\"port\"", "70000"]),
        BadFile(label: "a duplicate VIP",
                text: """
                    \(node)
                    services:
                      - name: web
                        vip: 192.0.2.10
                        port: 80
                        protocol: tcp
                        backends:
                          - address: 10.1.0.1
                      - name: web2
                        vip: 192.0.2.10
                        port: 80
                        protocol: tcp
                        backends:
                          - address: 10.1.0.2

                    """,
                mentions: ["\"vip\"", "192.0.2.10:80/tcp", "web2"]),
        BadFile(label: "a service with no backends",
                text: service("vip: 192.0.2.10\nport: 80\nprotocol: tcp\nbackends: []"),
                mentions: ["\"backends\"", "empty"]),
        BadFile(label: "an IPv4 backend without node.source_v4",
                text: service("vip: 192.0.2.10\nport: 80\nprotocol: tcp\nbackends:\n  - address: 10.1.0.1",
                              node: "node:\n  source_v6: \(sourceV6)"),
                mentions: ["node.source_v4", "10.1.0.1"]),
        BadFile(label: "an IPv6 VIP with an IPv4 backend",
                text: service("vip: 2001:db8::10\nport: 443\nprotocol: tcp\nbackends:\n  - address: 10.1.0.1"),
                mentions: ["backends[0].address", "10.1.0.1", "2001:db8::10"]),
    ]
}

/// A scratch directory for service files, removed on deinit.
public final class ScratchDirectory {
    public let path: String

    public init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-test-files-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writes `text` to `name` in the directory and returns its path.
    public func write(_ name: String, _ text: String) throws -> String {
        let file = "\(path)/\(name)"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }
}

/// The keys of `expected` that the JSON object `object` lacks (all of them
/// when it is not an object).
public func missingKeys(_ object: Any?, _ expected: [String]) -> [String] {
    guard let dictionary = object as? [String: Any] else { return expected }
    return expected.filter { dictionary[$0] == nil }
}
