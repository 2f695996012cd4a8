// Two service sets an apply moves between, for the tests that kill an apply midway (lbctl
// apply, the agent's PUT): ten VIPs in both with disjoint backends, and one VIP only in each,
// so every apply rewrites ten tables, adds a VIP and withdraws one. What the data plane
// serves is read the way a client meets it: SYNs through the pinned balancer
// (BPF_PROG_TEST_RUN), the tunnel's outer destination naming the backend.
import CSluice
import SluiceControl

public enum ApplySet: Character, Sendable, CustomStringConvertible {
    case a = "A", b = "B"

    public var other: ApplySet { self == .a ? .b : .a }
    public var description: String { String(rawValue) }

    static let shared = 0..<10
    static let vipCount = shared.count + 2

    public var vips: [Int] { Array(Self.shared) + [self == .a ? 10 : 11] }

    static func vip(_ index: Int) -> String { "198.51.100.\(10 + index)" }

    func backends(_ index: Int) -> [String] {
        self == .a ? (1...4).map { "10.1.\(index).\($0)" } : (1...3).map { "10.2.\(index).\($0)" }
    }

    /// Backend slots the set needs.
    public var backendCount: Int { vips.map { backends($0).count }.reduce(0, +) }

    /// The service file, tunnel mode only (it applies to a data plane attached nowhere).
    public var serviceFile: String {
        var text = "node:\n  source_v4: 192.0.2.10\nservices:\n"
        for index in vips {
            text += "  - name: svc\(index)\n    vip: \(Self.vip(index))\n    port: 80\n    protocol: tcp\n    backends:\n"
            for (n, address) in backends(index).enumerated() {
                text += "      - { address: \(address), weight: \(n == 0 ? 2 : 1) }\n"
            }
        }
        return text
    }
}

/// Where one frame went: its backend (the tunnel's outer destination), passed, or anything else.
public enum FrameOutcome: Hashable, Sendable, CustomStringConvertible {
    case backend(String), passed, other(UInt32)

    public var description: String {
        switch self {
        case let .backend(address): address
        case .passed: "XDP_PASS"
        case let .other(verdict): "verdict \(verdict)"
        }
    }
}

/// What the data plane serves for the VIPs of both sets, read through its program.
public struct ServedSets: Sendable {
    static let flowsPerVIP = 24
    /// VIP index: where each test flow's SYN goes.
    var outcomes: [Int: [FrameOutcome]] = [:]

    public init(_ dataplane: Dataplane) throws {
        for index in Set(ApplySet.a.vips + ApplySet.b.vips) {
            outcomes[index] = try (0..<Self.flowsPerVIP).map { n in
                try Self.outcome(of: PacketBuilder().tcp(from: "203.0.113.\(1 + n % 7)", UInt16(10_000 + 37 * n),
                                                         to: ApplySet.vip(index), 80), through: dataplane)
            }
        }
    }

    /// Whether VIP `index` serves `set` wholly: every flow to one of its backends, or every
    /// packet passed to the kernel when the set lacks the VIP.
    func serves(_ index: Int, _ set: ApplySet) -> Bool {
        let outcomes = outcomes[index] ?? []
        guard set.vips.contains(index) else { return outcomes.allSatisfy { $0 == .passed } }
        let addresses = Set(set.backends(index))
        return outcomes.allSatisfy { if case let .backend(address) = $0 { addresses.contains(address) } else { false } }
    }

    /// The VIPs that serve neither set wholly, described; empty when each serves one of them.
    public func mixed(from: ApplySet, to: ApplySet) -> [String] {
        outcomes.keys.sorted().filter { !serves($0, from) && !serves($0, to) }.map {
            "VIP \(ApplySet.vip($0)) serves neither set: \(Set(outcomes[$0] ?? []).map(\.description).sorted())"
        }
    }

    /// How many VIPs serve `set` wholly (of `ApplySet.vipCount`).
    public func count(serving set: ApplySet) -> Int { outcomes.keys.filter { serves($0, set) }.count }

    public static let vipCount = ApplySet.vipCount

    static func outcome(of frame: [UInt8], through dataplane: Dataplane) throws -> FrameOutcome {
        let result = try dataplane.program.testRun(frame)
        switch result.verdict {
        case XDPVerdict.tx.rawValue: return .backend(try TunnelFrame(result.output).outerDestination.description)
        case XDPVerdict.pass.rawValue: return .passed
        default: return .other(result.verdict)
        }
    }
}

/// Flows opened (SYN, then the ACK that records them) on the shared VIPs, and the backend each was recorded on.
public struct OpenFlows: Sendable {
    var flows: [(ack: [UInt8], backend: FrameOutcome)] = []

    public init(_ dataplane: Dataplane) throws {
        for index in ApplySet.shared {
            for n in 0..<4 {
                let port = UInt16(40_000 + n)
                _ = try dataplane.program.testRun(PacketBuilder().tcp(from: "203.0.113.9", port, to: ApplySet.vip(index), 80))
                let ack = PacketBuilder().tcp(from: "203.0.113.9", port, to: ApplySet.vip(index), 80, flags: [.ack])
                flows.append((ack, try ServedSets.outcome(of: ack, through: dataplane)))
            }
        }
    }

    /// The recorded backends, for a check that they are the set's.
    public var backends: [FrameOutcome] { flows.map(\.backend) }

    /// The flows whose ACK now goes elsewhere than where they were recorded, described.
    public func moved(_ dataplane: Dataplane) throws -> [String] {
        try flows.compactMap { flow in
            let now = try ServedSets.outcome(of: flow.ack, through: dataplane)
            return now == flow.backend ? nil : "an open flow went to \(now), it was recorded on \(flow.backend)"
        }
    }
}

extension Dataplane {
    /// sl_backends slots marked in use.
    public func usedBackendSlots() throws -> Int {
        try appliedState().backendSlots.filter { $0.flags & UInt8(SL_BACKEND_F_IN_USE.rawValue) != 0 }.count
    }
}
