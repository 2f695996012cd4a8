// A service's health check (`healthcheck:` in the service file): how the agent probes each
// backend, and how many results in a row flip it. Unset timings come from the agent's
// defaults, so the model keeps them optional and `resolved(with:)` fills them in.

public struct HealthCheck: Equatable, Hashable, Sendable, Codable {
    public enum Kind: String, Hashable, Sendable, Codable, CaseIterable {
        /// A TCP connection is accepted.
        case tcp
        /// `GET path` over HTTP/1.0 answers `expect_status`.
        case http
        /// A datagram `send` gets a reply (containing `expect`, when set).
        case udp
    }

    public var kind: Kind
    /// The backend port probed; nil = the service's port.
    public var port: UInt16?
    /// HTTP only; nil = `/`.
    public var path: String?
    /// HTTP only; nil = 200.
    public var expectStatus: Int?
    /// UDP only (required there): the payload sent.
    public var send: String?
    /// UDP only: text the reply must contain; nil = any reply.
    public var expect: String?
    /// Milliseconds between probes; nil = the agent's default.
    public var intervalMilliseconds: Int?
    /// Milliseconds a probe may take; nil = the agent's default.
    public var timeoutMilliseconds: Int?
    /// Successes in a row that bring a down backend back; nil = the agent's default.
    public var rise: Int?
    /// Failures in a row that take an up backend out; nil = the agent's default.
    public var fall: Int?

    public init(kind: Kind, port: UInt16? = nil, path: String? = nil, expectStatus: Int? = nil, send: String? = nil,
                expect: String? = nil, intervalMilliseconds: Int? = nil, timeoutMilliseconds: Int? = nil,
                rise: Int? = nil, fall: Int? = nil) {
        self.kind = kind
        self.port = port
        self.path = path
        self.expectStatus = expectStatus
        self.send = send
        self.expect = expect
        self.intervalMilliseconds = intervalMilliseconds
        self.timeoutMilliseconds = timeoutMilliseconds
        self.rise = rise
        self.fall = fall
    }

    /// Limits the parser and the agent's configuration enforce.
    public static let intervalRange = 100...3_600_000
    public static let timeoutRange = 10...3_600_000
    public static let countRange = 1...100
    public static let maxPayload = 512
    public static let maxPath = 1024

    /// The timings with every unset one taken from `defaults`; the timeout is capped at the
    /// interval, so one backend never has two probes in flight.
    public func resolved(with defaults: HealthCheckDefaults) -> HealthCheckDefaults {
        let interval = intervalMilliseconds ?? defaults.intervalMilliseconds
        return HealthCheckDefaults(intervalMilliseconds: interval,
                                   timeoutMilliseconds: min(timeoutMilliseconds ?? defaults.timeoutMilliseconds, interval),
                                   rise: rise ?? defaults.rise, fall: fall ?? defaults.fall)
    }

    /// `tcp :8080 every 2s`, `http /healthz status 204 timeout 500ms fall 2`: every field that is set, for diff lines.
    public var summary: String {
        var parts = [kind.rawValue]
        if let port { parts.append(":\(port)") }
        if let path { parts.append(path) }
        if let expectStatus { parts.append("status \(expectStatus)") }
        if let send { parts.append("send \(String(reflecting: send))") }
        if let expect { parts.append("expect \(String(reflecting: expect))") }
        if let intervalMilliseconds { parts.append("every " + Self.formatDuration(intervalMilliseconds)) }
        if let timeoutMilliseconds { parts.append("timeout " + Self.formatDuration(timeoutMilliseconds)) }
        if let rise { parts.append("rise \(rise)") }
        if let fall { parts.append("fall \(fall)") }
        return parts.joined(separator: " ")
    }

    // MARK: durations: `500ms`, `2s`, `1m`, `1h`

    /// Milliseconds in `text` (a whole number followed by ms, s, m or h), or nil.
    public static func parseDuration(_ text: String) -> Int? {
        for (unit, scale) in [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)] where text.hasSuffix(unit) {
            let digits = text.dropLast(unit.count)
            guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
                  let value = Int(digits), value <= Int(Int32.max) else { return nil }
            return value * scale
        }
        return nil
    }

    public static func formatDuration(_ milliseconds: Int) -> String {
        if milliseconds % 3_600_000 == 0 { return "\(milliseconds / 3_600_000)h" }
        if milliseconds % 60_000 == 0 { return "\(milliseconds / 60_000)m" }
        if milliseconds % 1000 == 0 { return "\(milliseconds / 1000)s" }
        return "\(milliseconds)ms"
    }

    // MARK: Codable, with the service file's keys and durations as text

    private enum CodingKeys: String, CodingKey {
        case kind = "type", port, path, send, expect, interval, timeout, rise, fall
        case expectStatus = "expect_status"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        kind = try container.decode(Kind.self, forKey: .kind)
        port = try container.decodeIfPresent(UInt16.self, forKey: .port)
        path = try container.decodeIfPresent(String.self, forKey: .path)
        expectStatus = try container.decodeIfPresent(Int.self, forKey: .expectStatus)
        send = try container.decodeIfPresent(String.self, forKey: .send)
        expect = try container.decodeIfPresent(String.self, forKey: .expect)
        func duration(_ key: CodingKeys) throws -> Int? {
            guard let text = try container.decodeIfPresent(String.self, forKey: key) else { return nil }
            guard let value = Self.parseDuration(text) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: container,
                                                       debugDescription: "\(String(reflecting: text)) is not a duration (e.g. 500ms, 2s, 1m)")
            }
            return value
        }
        intervalMilliseconds = try duration(.interval)
        timeoutMilliseconds = try duration(.timeout)
        rise = try container.decodeIfPresent(Int.self, forKey: .rise)
        fall = try container.decodeIfPresent(Int.self, forKey: .fall)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(kind, forKey: .kind)
        try container.encodeIfPresent(port, forKey: .port)
        try container.encodeIfPresent(path, forKey: .path)
        try container.encodeIfPresent(expectStatus, forKey: .expectStatus)
        try container.encodeIfPresent(send, forKey: .send)
        try container.encodeIfPresent(expect, forKey: .expect)
        try container.encodeIfPresent(intervalMilliseconds.map(Self.formatDuration), forKey: .interval)
        try container.encodeIfPresent(timeoutMilliseconds.map(Self.formatDuration), forKey: .timeout)
        try container.encodeIfPresent(rise, forKey: .rise)
        try container.encodeIfPresent(fall, forKey: .fall)
    }
}

/// Timings every health check resolves to: the agent's `healthcheck_defaults`, or a
/// service's check with those filled in.
public struct HealthCheckDefaults: Equatable, Hashable, Sendable {
    public var intervalMilliseconds: Int
    public var timeoutMilliseconds: Int
    public var rise: Int
    public var fall: Int

    public init(intervalMilliseconds: Int = 2000, timeoutMilliseconds: Int = 1000, rise: Int = 2, fall: Int = 3) {
        self.intervalMilliseconds = intervalMilliseconds
        self.timeoutMilliseconds = timeoutMilliseconds
        self.rise = rise
        self.fall = fall
    }

    public static let builtIn = HealthCheckDefaults()
}
