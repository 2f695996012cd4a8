// Reads a service's `healthcheck:` mapping. Every rule is checked here, where the
// line is known, and each error names the field (`healthcheck.interval`) and value.
import Yams

enum HealthCheckParser {
    static let keys = ["type", "port", "path", "expect_status", "send", "expect", "interval", "timeout", "rise", "fall"]
    static let httpOnly = ["path", "expect_status"]
    static let udpOnly = ["send", "expect"]

    static func parse(_ node: Node, reader: inout YAMLReader) throws(ConfigError) -> HealthCheck {
        let fields = try reader.mapping(node, path: "healthcheck", allowed: keys)
        func text(_ key: String) throws(ConfigError) -> (Node, String)? {
            guard let value = reader.optional(fields, key) else { return nil }
            return (value, try reader.scalar(value, field: fields.field(key)))
        }
        func bad(_ node: Node, _ key: String, _ message: String) -> ConfigError {
            reader.error(at: node, field: fields.field(key), message)
        }

        let typeNode = try reader.required(fields, "type")
        let rawType = try reader.scalar(typeNode, field: fields.field("type"))
        guard let kind = HealthCheck.Kind(rawValue: rawType) else {
            throw bad(typeNode, "type", "\(ConfigError.show(rawType)) is not a health check type (tcp, http, udp)")
        }
        var check = HealthCheck(kind: kind)
        for key in httpOnly where kind != .http && fields.values[key] != nil {
            throw bad(fields.values[key]!, key, "applies to type http only, not \(kind.rawValue)")
        }
        for key in udpOnly where kind != .udp && fields.values[key] != nil {
            throw bad(fields.values[key]!, key, "applies to type udp only, not \(kind.rawValue)")
        }

        if let (node, raw) = try text("port") {
            guard let port = Int(raw), (1...65535).contains(port) else { throw bad(node, "port", Complaint.notAPort(raw)) }
            check.port = UInt16(port)
        }
        if let (node, raw) = try text("path") {
            guard raw.hasPrefix("/"), raw.utf8.count <= HealthCheck.maxPath,
                  !raw.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f }) else {
                throw bad(node, "path", "\(String(reflecting: raw)) is not an HTTP path (starts with /, no spaces or control characters, at most \(HealthCheck.maxPath) bytes)")
            }
            check.path = raw
        }
        if let (node, raw) = try text("expect_status") {
            guard let status = Int(raw), (100...599).contains(status) else {
                throw bad(node, "expect_status", "\(ConfigError.show(raw)) is not an HTTP status (100-599)")
            }
            check.expectStatus = status
        }
        for key in udpOnly {
            guard let (node, raw) = try text(key) else { continue }
            guard !raw.isEmpty, raw.utf8.count <= HealthCheck.maxPayload else {
                throw bad(node, key, "must be 1 to \(HealthCheck.maxPayload) bytes, found \(raw.utf8.count)")
            }
            if key == "send" { check.send = raw } else { check.expect = raw }
        }
        if kind == .udp, check.send == nil {
            throw bad(fields.node, "send", "required for type udp: the datagram to send")
        }

        func duration(_ key: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int? {
            guard let (node, raw) = try text(key) else { return nil }
            guard let value = HealthCheck.parseDuration(raw), range.contains(value) else {
                throw bad(node, key, "\(String(reflecting: raw)) is not a duration from \(HealthCheck.formatDuration(range.lowerBound)) to \(HealthCheck.formatDuration(range.upperBound)) (e.g. 500ms, 2s, 1m)")
            }
            return value
        }
        check.intervalMilliseconds = try duration("interval", HealthCheck.intervalRange)
        check.timeoutMilliseconds = try duration("timeout", HealthCheck.timeoutRange)
        if let interval = check.intervalMilliseconds, let timeout = check.timeoutMilliseconds, timeout > interval {
            throw bad(fields.values["timeout"]!, "timeout",
                      "\(HealthCheck.formatDuration(timeout)) is longer than the interval (\(HealthCheck.formatDuration(interval)))")
        }
        for key in ["rise", "fall"] {
            guard let (node, raw) = try text(key) else { continue }
            guard let count = Int(raw), HealthCheck.countRange.contains(count) else {
                throw bad(node, key, "\(ConfigError.show(raw)) is not a count from 1 to 100")
            }
            if key == "rise" { check.rise = count } else { check.fall = count }
        }
        return check
    }
}
