// Ageing the connection table. The data plane stamps each entry with the agent's clock
// (sl_clock, seconds) when it forwards by it; the agent ticks that clock and, every sweep,
// deletes the entries idle for longer than their state's timeout: a TCP flow whose client
// never sent an ACK (half-open) or that saw a FIN or RST goes sooner than an established
// one. A NAT flow ages as a unit: its sl_conntrack entry and its sl_nat entry are alive while
// either was seen within the timeout of their combined state, and expire together, the
// conntrack entry first, so no packet finds a flow whose translation is gone. A table read
// whole also gives the counts /metrics shows and the active flows a peer should keep.
import CLibbpf
import CSluice
import Glibc
import SluiceBPF
import SluiceCore

/// How long a flow may go unseen before it is forgotten, by protocol and TCP state.
public struct IdleTimeouts: Sendable, Equatable {
    /// An established TCP flow (or one whose state is unknown).
    public var tcpSeconds: UInt32
    public var udpSeconds: UInt32
    /// A TCP flow whose client never sent an ACK: half-open.
    public var tcpSynSeconds: UInt32
    /// A TCP flow that saw a FIN or RST in either direction. Also how long a full-NAT source
    /// port stays taken for its backend port after the last packet of a closed flow, as
    /// Linux keeps TIME-WAIT: no late packet of the old flow meets a new one.
    public var tcpClosingSeconds: UInt32

    public init(tcpSeconds: UInt32 = 900, udpSeconds: UInt32 = 300, tcpSynSeconds: UInt32 = 30,
                tcpClosingSeconds: UInt32 = 60) {
        self.tcpSeconds = tcpSeconds
        self.udpSeconds = udpSeconds
        self.tcpSynSeconds = tcpSynSeconds
        self.tcpClosingSeconds = tcpClosingSeconds
    }

    /// The timeout of a flow of `proto` in `state` (nil: not TCP, or no state known).
    func seconds(forProtocol proto: UInt8, state: FlowState?) -> UInt32 {
        guard proto != L4Protocol.udp.number else { return udpSeconds }
        switch state {
        case .syn: return tcpSynSeconds
        case .closing, .closed: return tcpClosingSeconds
        case .established, .unknown, nil: return tcpSeconds
        }
    }

    public var shortest: UInt32 { min(tcpSeconds, udpSeconds, tcpSynSeconds, tcpClosingSeconds) }
    /// The shortest timeout of a flow in no short state: what a peer's entries (no flags
    /// recorded) age by, so what sync's refreshes must beat.
    public var shortestIdle: UInt32 { min(tcpSeconds, udpSeconds) }
    public var longest: UInt32 { max(tcpSeconds, udpSeconds, tcpSynSeconds, tcpClosingSeconds) }

    /// These timeouts with every one the clock has not yet run for (`uptime` seconds) set
    /// to never: an entry touched while no agent ticked carries an old stamp.
    public func due(uptime: UInt32) -> IdleTimeouts {
        func due(_ seconds: UInt32) -> UInt32 { uptime < seconds ? .max : seconds }
        return IdleTimeouts(tcpSeconds: due(tcpSeconds), udpSeconds: due(udpSeconds), tcpSynSeconds: due(tcpSynSeconds),
                            tcpClosingSeconds: due(tcpClosingSeconds))
    }
}

/// A TCP flow's state as the flags seen in both directions (enum sl_tcp_seen) tell it.
public enum FlowState: String, Sendable, Codable, CaseIterable {
    /// The client never sent an ACK: half-open.
    case syn
    case established
    /// A FIN in one direction.
    case closing
    /// A FIN in both directions, or a RST.
    case closed
    /// No flag recorded (a peer's entry, or one of an older data plane): aged as established.
    case unknown

    static let synFlag = UInt8(SL_TCP_SEEN_SYN.rawValue), ackFlag = UInt8(SL_TCP_SEEN_ACK.rawValue)
    static let finFlag = UInt8(SL_TCP_SEEN_FIN.rawValue), rstFlag = UInt8(SL_TCP_SEEN_RST.rawValue)

    /// The state of a TCP flow from the client's flags (sl_ct_entry.tcp_seen) and, for a NAT
    /// flow, the backend's (sl_nat_entry.tcp_seen; nil when there is no such entry).
    public init(client: UInt8, backend: UInt8?) {
        let both = client | (backend ?? 0)
        if both == 0 {
            self = .unknown
        } else if both & Self.rstFlag != 0 || (client & Self.finFlag != 0 && (backend ?? 0) & Self.finFlag != 0) {
            self = .closed
        } else if both & Self.finFlag != 0 {
            self = .closing
        } else if client != 0 && client & Self.ackFlag == 0 {
            self = .syn
        } else {
            self = .established
        }
    }
}

/// The connection table read whole, with what it takes to turn entries into records.
struct ConntrackTable {
    var entries: [(key: sl_flow_key, entry: sl_ct_entry)]
    var epochs: [UInt32]
    var backends: [sl_backend]

    static func read(from dataplane: Dataplane) throws(ControlError) -> ConntrackTable {
        do {
            return ConntrackTable(entries: try dataplane[.conntrack].hashEntries(key: sl_flow_key.self, value: sl_ct_entry.self)
                                      .map { (key: $0.0, entry: $0.1) },
                                  epochs: try dataplane[.vipEpochs].arrayValues(as: UInt32.self),
                                  backends: try dataplane[.backends].arrayValues(as: sl_backend.self))
        } catch { throw .bpf(error, while: "reading the connection table") }
    }

    /// The entry as a record, when the data plane still trusts it (its slot's epoch).
    func record(_ key: sl_flow_key, _ entry: sl_ct_entry) -> FlowRecord? {
        guard Int(entry.service_id) < epochs.count, UInt16(truncatingIfNeeded: epochs[Int(entry.service_id)]) == entry.epoch,
              Int(entry.backend_id) < backends.count else { return nil }
        let slot = backends[Int(entry.backend_id)]
        return IPAddress(cWords: slot.addr, family: slot.family).flatMap {
            FlowRecord(key: key, backend: $0, nat: entry.nat, snatIndex: entry.snat_index, snatPort: entry.snat_port,
                       proxy: entry.proxy, proxySeq: entry.proxy_seq)
        }
    }
}

/// The translation table (sl_nat) read whole, indexed by the client flow each entry belongs to.
struct NATTable {
    var entries: [(key: sl_flow_key, entry: sl_nat_entry)]
    /// Position in `entries` by the client's flow key (sl_nat_entry.flow).
    var byFlow: [FlowKeyBits: Int] = [:]

    static func read(from dataplane: Dataplane) throws(ControlError) -> NATTable {
        do {
            var table = NATTable(entries: try dataplane[.nat].hashEntries(key: sl_flow_key.self, value: sl_nat_entry.self)
                                     .map { (key: $0.0, entry: $0.1) })
            for (index, pair) in table.entries.enumerated() { table.byFlow[FlowKeyBits(pair.entry.flow)] = index }
            return table
        } catch { throw .bpf(error, while: "reading the translation table") }
    }
}

/// An sl_flow_key as five words, to index by (byte for byte, padding included: the data
/// plane zeroes it).
struct FlowKeyBits: Hashable {
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64, e: UInt64

    init(_ key: sl_flow_key) {
        (a, b, c, d, e) = withUnsafeBytes(of: key) { raw in
            (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
             raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self),
             raw.loadUnaligned(fromByteOffset: 32, as: UInt64.self))
        }
    }
}

/// What one sweep of the connection table found.
public struct ConntrackSweep: Sendable {
    /// Entries left in the table.
    public var entries = 0
    /// Entries deleted as idle.
    public var expired = 0
    /// Translations (sl_nat entries) left.
    public var translations = 0
    /// Translations deleted: with their flow, or alone once idle (their flow's entry evicted).
    public var translationsExpired = 0
    /// Full-NAT translations left, by SNAT address: each holds a port there.
    public var snatInUse: [IPAddress: Int] = [:]
    /// This node's own flows seen since the time asked for, as records.
    public var active: [FlowRecord] = []
}

/// The clock conntrack entries are stamped with.
public enum ConntrackClock {
    /// The agent's monotonic clock in whole seconds (CLOCK_MONOTONIC: it goes on across
    /// agent restarts, and the maps do not outlive a reboot).
    public static func now() -> UInt32 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt32(truncatingIfNeeded: time.tv_sec)
    }
}

extension Dataplane {
    /// Publishes `seconds` to the data plane as the conntrack clock.
    public func tickClock(_ seconds: UInt32 = ConntrackClock.now()) throws(ControlError) {
        do { try self[.clock].update(UInt32(0), seconds) } catch { throw .bpf(error, while: "writing \(Map.clock.rawValue)") }
    }

    /// Every flow the table trusts now (current epoch), as records: a peer's full copy.
    public func trustedFlows() throws(ControlError) -> [FlowRecord] {
        let table = try ConntrackTable.read(from: self)
        return table.entries.compactMap { table.record($0.key, $0.entry) }
    }

    /// Reads both tables whole; with `expire`, deletes every flow unseen for longer than the
    /// timeout of its protocol and state (a NAT flow with its translation); returns the
    /// counts and, with `activeSince`, this node's trusted flows seen since then.
    public func sweepConntrack(now: UInt32, timeouts: IdleTimeouts, expire: Bool,
                               activeSince: UInt32? = nil) throws(ControlError) -> ConntrackSweep {
        let table = try ConntrackTable.read(from: self)
        let nat = try NATTable.read(from: self)
        var sweep = ConntrackSweep()
        // Per translation: found with its flow, and deleted with it.
        var paired = [Bool](repeating: false, count: nat.entries.count)
        var gone = [Bool](repeating: false, count: nat.entries.count)
        let local = UInt8(SL_ORIGIN_LOCAL)
        func idle(_ lastSeen: UInt32, _ timeout: UInt32) -> Bool {
            // A stamp ahead of `now` is a clock that moved back: never idle.
            expire && lastSeen <= now && now &- lastSeen > timeout
        }
        for (key, entry) in table.entries {
            let translation = nat.byFlow[FlowKeyBits(key)]
            var lastSeen = entry.last_seen
            var backendSeen: UInt8?
            if let translation {
                paired[translation] = true
                lastSeen = max(lastSeen, nat.entries[translation].entry.last_seen)
                backendSeen = nat.entries[translation].entry.tcp_seen
            }
            let state = key.proto == L4Protocol.tcp.number ? FlowState(client: entry.tcp_seen, backend: backendSeen) : nil
            if idle(lastSeen, timeouts.seconds(forProtocol: key.proto, state: state)) {
                if (try? self[.conntrack].delete(key)) == true { sweep.expired += 1 }
                if let translation {
                    gone[translation] = true
                    if (try? self[.nat].delete(nat.entries[translation].key)) == true { sweep.translationsExpired += 1 }
                }
                continue
            }
            sweep.entries += 1
            if let activeSince, entry.origin == local, entry.last_seen >= activeSince, let record = table.record(key, entry) {
                sweep.active.append(record)
            }
        }
        // Translations whose flow entry is gone (LRU-evicted) age by their own stamp and flags.
        for (index, pair) in nat.entries.enumerated() where !gone[index] {
            if !paired[index] {
                let state = pair.key.proto == L4Protocol.tcp.number ? FlowState(client: 0, backend: pair.entry.tcp_seen) : nil
                if idle(pair.entry.last_seen, timeouts.seconds(forProtocol: pair.key.proto, state: state)) {
                    if (try? self[.nat].delete(pair.key)) == true { sweep.translationsExpired += 1 }
                    continue
                }
            }
            sweep.translations += 1
            if pair.entry.mode == UInt8(SL_FWD_FULLNAT.rawValue), let address = IPAddress(cWords: pair.key.dst, family: pair.key.family) {
                sweep.snatInUse[address, default: 0] += 1
            }
        }
        return sweep
    }
}
