// Reads a service's `healthcheck:` mapping, and the agent's `healthcheck_defaults:`
// (its timing keys). Every rule is checked here, where the line is known, and each
// error names the field (`healthcheck.interval`) and value.
import Yams

package enum HealthCheckParser {
    static let keys = ["type", "port", "path", "expect_status", "send", "expect"] + timingKeys
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

        let timings = try Timings(fields, reader: reader)
        check.intervalMilliseconds = timings.interval?.value
        check.timeoutMilliseconds = timings.timeout?.value
        if let interval = timings.interval?.value, let timeout = timings.timeout {
            try timings.checkTimeout(timeout.value, within: interval, reader: reader)
        }
        check.rise = timings.rise
        check.fall = timings.fall
        return check
    }

    /// The agent's `healthcheck_defaults:`, the timing keys of a check (same ranges and
    /// messages), each unset one taken from the built-in defaults.
    package static func parseDefaults(_ node: Node, path: String, reader: inout YAMLReader) throws(ConfigError) -> HealthCheckDefaults {
        let fields = try reader.mapping(node, path: path, allowed: timingKeys)
        let timings = try Timings(fields, reader: reader)
        var defaults = HealthCheckDefaults.builtIn
        if let interval = timings.interval { defaults.intervalMilliseconds = interval.value }
        if let timeout = timings.timeout { defaults.timeoutMilliseconds = timeout.value }
        try timings.checkTimeout(defaults.timeoutMilliseconds, within: defaults.intervalMilliseconds, reader: reader)
        if let rise = timings.rise { defaults.rise = rise }
        if let fall = timings.fall { defaults.fall = fall }
        return defaults
    }

    static let timingKeys = ["interval", "timeout", "rise", "fall"]

    /// interval, timeout, rise and fall as a mapping sets them, each checked against its range.
    private struct Timings {
        let fields: YAMLReader.Fields
        var interval: (node: Node, value: Int)?
        var timeout: (node: Node, value: Int)?
        var rise: Int?
        var fall: Int?

        init(_ fields: YAMLReader.Fields, reader: YAMLReader) throws(ConfigError) {
            self.fields = fields
            func duration(_ key: String, _ range: ClosedRange<Int>) throws(ConfigError) -> (Node, Int)? {
                guard let node = reader.optional(fields, key) else { return nil }
                return (node, try reader.duration(node, field: fields.field(key), range: range, examples: "500ms, 2s, 1m"))
            }
            interval = try duration("interval", HealthCheck.intervalRange)
            timeout = try duration("timeout", HealthCheck.timeoutRange)
            for key in ["rise", "fall"] {
                guard let node = reader.optional(fields, key) else { continue }
                let raw = try reader.scalar(node, field: fields.field(key))
                guard let count = Int(raw), HealthCheck.countRange.contains(count) else {
                    throw reader.error(at: node, field: fields.field(key), "\(ConfigError.show(raw)) is not a count from 1 to 100")
                }
                if key == "rise" { rise = count } else { fall = count }
            }
        }

        /// A timeout longer than the interval is refused, on the timeout's line (or the interval's).
        func checkTimeout(_ timeout: Int, within interval: Int, reader: YAMLReader) throws(ConfigError) {
            guard timeout > interval else { return }
            throw reader.error(at: self.timeout?.node ?? self.interval?.node ?? fields.node, field: fields.field("timeout"),
                               "\(HealthCheck.formatDuration(timeout)) is longer than the interval (\(HealthCheck.formatDuration(interval)))")
        }
    }
}
