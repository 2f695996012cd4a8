// What an agent with `bgp:` tells of this node's place in the fleet: whether it drains,
// and for each VIP whether BIRD announces it now and, if not, why. `lbctl status --server`
// prints it, GET /v1/bgp and GET /v1/status carry it, /metrics exports it.
public struct FleetStatus: Sendable, Codable, Equatable {
    public struct VIP: Sendable, Codable, Equatable {
        public var vip: String
        /// True once BIRD took the configuration announcing it.
        public var announced: Bool
        /// Why it is not announced (nil while it is): "draining", "not attached", "not
        /// ready: ...", "no backend up (service S)".
        public var reason: String?
        /// The services on this VIP.
        public var services: [String]

        public init(vip: String, announced: Bool, reason: String?, services: [String]) {
            self.vip = vip
            self.announced = announced
            self.reason = reason
            self.services = services
        }

        enum CodingKeys: String, CodingKey { case vip, announced, reason, services }
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(vip, forKey: .vip)
            try container.encode(announced, forKey: .announced)
            try container.encode(reason, forKey: .reason)
            try container.encode(services, forKey: .services)
        }
    }

    public var draining: Bool
    /// The data plane runs on at least one interface.
    public var attached: Bool
    /// /readyz: the sync copy arrived (or its timeout passed), or sync is off.
    public var ready: Bool
    public var vips: [VIP]
    public var birdSocket: String
    public var includeFile: String
    /// Configurations BIRD took since the agent started.
    public var updates: UInt64
    /// BIRD refused or could not be reached, since the agent started.
    public var errors: UInt64
    /// The last failure to reach BIRD, until the next success.
    public var lastError: String?

    public init(draining: Bool, attached: Bool, ready: Bool, vips: [VIP], birdSocket: String, includeFile: String,
                updates: UInt64, errors: UInt64, lastError: String?) {
        self.draining = draining
        self.attached = attached
        self.ready = ready
        self.vips = vips
        self.birdSocket = birdSocket
        self.includeFile = includeFile
        self.updates = updates
        self.errors = errors
        self.lastError = lastError
    }

    enum CodingKeys: String, CodingKey {
        case draining, attached, ready, vips, updates, errors
        case birdSocket = "bird_socket", includeFile = "include_file", lastError = "last_error"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(draining, forKey: .draining)
        try container.encode(attached, forKey: .attached)
        try container.encode(ready, forKey: .ready)
        try container.encode(vips, forKey: .vips)
        try container.encode(birdSocket, forKey: .birdSocket)
        try container.encode(includeFile, forKey: .includeFile)
        try container.encode(updates, forKey: .updates)
        try container.encode(errors, forKey: .errors)
        try container.encode(lastError, forKey: .lastError)
    }
}

/// The answer to POST /v1/drain (and what `lbctl drain` prints).
public struct DrainReport: Sendable, Codable, Equatable {
    public var draining: Bool
    /// The VIPs withdrawn (announced before the drain).
    public var withdrawn: [String]
    /// New flows this node placed after BIRD took the withdrawal.
    public var newFlowsAfterWithdraw: UInt64
    /// From the withdrawal until new flows had stopped (or the timeout).
    public var waitedSeconds: Double
    /// True: no new flow arrived for drain_quiet; false: the timeout came first.
    public var quiet: Bool

    public init(draining: Bool, withdrawn: [String], newFlowsAfterWithdraw: UInt64, waitedSeconds: Double, quiet: Bool) {
        self.draining = draining
        self.withdrawn = withdrawn
        self.newFlowsAfterWithdraw = newFlowsAfterWithdraw
        self.waitedSeconds = waitedSeconds
        self.quiet = quiet
    }

    enum CodingKeys: String, CodingKey {
        case draining, withdrawn, quiet
        case newFlowsAfterWithdraw = "new_flows_after_withdraw", waitedSeconds = "waited_seconds"
    }
}
