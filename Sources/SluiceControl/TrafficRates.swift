// What `lbctl top` shows each second: the counters' movement between two snapshots as
// counts and rates, per VIP and backend and node-wide, with the connection table's fill.

/// The traffic of one interval.
public struct TopFrame: Sendable, Codable, Equatable {
    public struct Rate: Sendable, Codable, Equatable {
        /// Packets and bytes counted in the interval.
        public var packets: UInt64
        public var bytes: UInt64
        public var packetsPerSecond: Double
        public var bitsPerSecond: Double

        init(packets: UInt64, bytes: UInt64, seconds: Double) {
            self.packets = packets
            self.bytes = bytes
            packetsPerSecond = Double(packets) / seconds
            bitsPerSecond = Double(bytes) * 8 / seconds
        }

        enum CodingKeys: String, CodingKey {
            case packets, bytes
            case packetsPerSecond = "packets_per_second"
            case bitsPerSecond = "bits_per_second"
        }
    }

    public struct Backend: Sendable, Codable, Equatable {
        public var address: String
        public var traffic: Rate

        public func encode(to encoder: any Encoder) throws {
            try traffic.encode(to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(address, forKey: .address)
        }

        public init(from decoder: any Decoder) throws {
            traffic = try Rate(from: decoder)
            address = try decoder.container(keyedBy: CodingKeys.self).decode(String.self, forKey: .address)
        }

        init(address: String, traffic: Rate) {
            self.address = address
            self.traffic = traffic
        }

        enum CodingKeys: String, CodingKey { case address }
    }

    public struct Service: Sendable, Codable, Equatable {
        public var name: String
        public var vip: String
        public var port: UInt16
        public var `protocol`: String
        public var traffic: Rate
        public var backends: [Backend]

        public func encode(to encoder: any Encoder) throws {
            try traffic.encode(to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(vip, forKey: .vip)
            try container.encode(port, forKey: .port)
            try container.encode(`protocol`, forKey: .protocol)
            try container.encode(backends, forKey: .backends)
        }

        public init(from decoder: any Decoder) throws {
            traffic = try Rate(from: decoder)
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decode(String.self, forKey: .name)
            vip = try container.decode(String.self, forKey: .vip)
            port = try container.decode(UInt16.self, forKey: .port)
            `protocol` = try container.decode(String.self, forKey: .protocol)
            backends = try container.decode([Backend].self, forKey: .backends)
        }

        init(name: String, vip: String, port: UInt16, protocol: String, traffic: Rate, backends: [Backend]) {
            self.name = name
            self.vip = vip
            self.port = port
            self.protocol = `protocol`
            self.traffic = traffic
            self.backends = backends
        }

        enum CodingKeys: String, CodingKey { case name, vip, port, `protocol`, backends }
    }

    public struct Conntrack: Sendable, Codable, Equatable {
        public var entries: Int
        public var capacity: Int
        public var fill: Double
        /// How long ago the table was counted (0: for this frame; see ConntrackCountSchedule).
        public var ageSeconds: Double

        public init(entries: Int, capacity: Int, ageSeconds: Double = 0) {
            self.entries = entries
            self.capacity = capacity
            fill = capacity == 0 ? 0 : Double(entries) / Double(capacity)
            self.ageSeconds = ageSeconds
        }

        enum CodingKeys: String, CodingKey {
            case entries, capacity, fill
            case ageSeconds = "age_seconds"
        }
    }

    /// Seconds between the two snapshots (measured, not the requested interval).
    public var intervalSeconds: Double
    public var newFlows: UInt64
    public var newFlowsPerSecond: Double
    public var conntrack: Conntrack
    /// Drops in the interval, by reason (every reason, zero included).
    public var drops: [String: UInt64]
    public var dropsPerSecond: [String: Double]
    /// Sorted by packets in the interval, most first (then by name); backends the same way.
    public var services: [Service]

    enum CodingKeys: String, CodingKey {
        case conntrack, drops, services
        case intervalSeconds = "interval_seconds"
        case newFlows = "new_flows"
        case newFlowsPerSecond = "new_flows_per_second"
        case dropsPerSecond = "drops_per_second"
    }

    /// The movement from `old` to `new`, `seconds` apart. A counter that went back (the data
    /// plane was loaded again) counts from zero; a service or backend absent from `old` (just
    /// applied) counts nothing this interval, as its counters may predate `old`.
    public init(from old: CounterSnapshot, to new: CounterSnapshot, seconds: Double, conntrack: Conntrack) {
        let seconds = max(seconds, 1e-3)
        func delta(_ now: UInt64, _ before: UInt64?) -> UInt64 {
            guard let before else { return 0 }
            return now >= before ? now - before : now
        }
        intervalSeconds = seconds
        newFlows = delta(new.newFlows, old.newFlows)
        newFlowsPerSecond = Double(newFlows) / seconds
        self.conntrack = conntrack
        drops = Dictionary(uniqueKeysWithValues: CounterSnapshot.dropNames.map { ($0, delta(new.drops[$0] ?? 0, old.drops[$0] ?? 0)) })
        dropsPerSecond = drops.mapValues { Double($0) / seconds }
        let before = Dictionary(old.services.map { ("\($0.name) \($0.vip) \($0.port) \($0.protocol)", $0) },
                                uniquingKeysWith: { first, _ in first })
        services = new.services.map { service in
            let previous = before["\(service.name) \(service.vip) \(service.port) \(service.protocol)"]
            let previousBackends = Dictionary((previous?.backends ?? []).map { ($0.address, $0) }, uniquingKeysWith: { first, _ in first })
            let backends = service.backends.map { backend in
                let was = previousBackends[backend.address]
                return Backend(address: backend.address,
                               traffic: Rate(packets: delta(backend.packets, was?.packets), bytes: delta(backend.bytes, was?.bytes), seconds: seconds))
            }
            return Service(name: service.name, vip: service.vip, port: service.port, protocol: service.protocol,
                           traffic: Rate(packets: delta(service.packets, previous?.packets), bytes: delta(service.bytes, previous?.bytes),
                                         seconds: seconds),
                           backends: backends.sorted { ($0.traffic.packets, $1.address) > ($1.traffic.packets, $0.address) })
        }.sorted { ($0.traffic.packets, $1.name) > ($1.traffic.packets, $0.name) }
    }
}

extension Dataplane {
    /// The connection table's entries (a full batched read: ~330 ms at a million) and size.
    public func conntrackFill() throws(ControlError) -> TopFrame.Conntrack {
        do {
            return TopFrame.Conntrack(entries: try self[.conntrack].countEntries(), capacity: conntrackCapacity)
        } catch { throw .bpf(error, while: "counting the connection table") }
    }
}

/// When lbctl top counts the connection table again. Counting is a full read of the table
/// (~330 ms at a million entries, on the balancer's own CPUs), so it is spread out to take at
/// most a twentieth of the time: every frame while the table is small, every few seconds
/// when it holds millions.
public struct ConntrackCountSchedule: Sendable {
    public static let share = 20.0
    private var last: (at: ContinuousClock.Instant, cost: Duration)?

    public init() {}

    /// Whether to count for a frame at `now`, frames coming every `interval`.
    public func isDue(at now: ContinuousClock.Instant, interval: Duration) -> Bool {
        guard let last else { return true }
        // Half an interval of slack: frames drift, and a cheap count is due every frame.
        return now - last.at >= last.cost * Self.share - interval / 2
    }

    /// A count was taken at `at` and took `cost` of CPU time.
    public mutating func counted(at: ContinuousClock.Instant, cost: Duration) {
        last = (at, cost)
    }
}
