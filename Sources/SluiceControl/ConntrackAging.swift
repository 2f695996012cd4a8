// Ageing the connection table. The data plane stamps each entry with the agent's clock
// (sl_clock, seconds) when it forwards by it; the agent ticks that clock and, every sweep,
// deletes the entries idle for longer than their protocol's timeout. A table read whole
// also gives the count /metrics shows and the active flows a peer should keep.
import CLibbpf
import CSluice
import Glibc
import SluiceBPF
import SluiceCore

/// How long a flow may go unseen before it is forgotten, by protocol.
public struct IdleTimeouts: Sendable, Equatable {
    public var tcpSeconds: UInt32
    public var udpSeconds: UInt32

    public init(tcpSeconds: UInt32 = 900, udpSeconds: UInt32 = 300) {
        self.tcpSeconds = tcpSeconds
        self.udpSeconds = udpSeconds
    }

    func seconds(forProtocol proto: UInt8) -> UInt32 { proto == L4Protocol.udp.number ? udpSeconds : tcpSeconds }
    public var shortest: UInt32 { min(tcpSeconds, udpSeconds) }
    public var longest: UInt32 { max(tcpSeconds, udpSeconds) }
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
        return IPAddress(cWords: slot.addr, family: slot.family).flatMap { FlowRecord(key: key, backend: $0) }
    }
}

/// What one sweep of the connection table found.
public struct ConntrackSweep: Sendable {
    /// Entries left in the table.
    public var entries = 0
    /// Entries deleted as idle.
    public var expired = 0
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

    /// Reads the whole table; with `expire`, deletes every entry unseen for longer than its
    /// protocol's timeout; returns the count and, with `activeSince`, this node's trusted
    /// flows seen since then.
    public func sweepConntrack(now: UInt32, timeouts: IdleTimeouts, expire: Bool,
                               activeSince: UInt32? = nil) throws(ControlError) -> ConntrackSweep {
        let table = try ConntrackTable.read(from: self)
        var sweep = ConntrackSweep()
        let local = UInt8(SL_ORIGIN_LOCAL)
        for (key, entry) in table.entries {
            let idle = now &- entry.last_seen
            if expire, entry.last_seen <= now, idle > timeouts.seconds(forProtocol: key.proto) {
                if (try? self[.conntrack].delete(key)) == true { sweep.expired += 1 }
                continue
            }
            sweep.entries += 1
            if let activeSince, entry.origin == local, entry.last_seen >= activeSince, let record = table.record(key, entry) {
                sweep.active.append(record)
            }
        }
        return sweep
    }
}
