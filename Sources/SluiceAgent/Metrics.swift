// /metrics: the data plane's counters and configuration in the Prometheus text
// exposition format (version 0.0.4), read from the kernel maps on every scrape.
//
// Why the text is written here and not through swift-prometheus: its Counter is an
// accumulator that only goes up by increments the process observes, while our counters
// already are monotonic totals kept by the kernel, across agent restarts. Mirroring them
// would mean keeping per-series state, turning totals into deltas, unregistering the
// series of removed backends and resetting a reused slot's series, and ~30,000 locked
// registry lookups per scrape at 1,000 services x 10 backends. Writing the format from
// the snapshot is stateless, exact and cheap; `promtool check metrics` checks it in the
// tests, and PrometheusText below escapes label values as the format requires.
import Foundation
import SluiceControl
import SluiceCore

/// Everything one scrape shows, read under the agent's lock.
public struct MetricsInput: Sendable {
    public var counters: CounterSnapshot
    public var services: [AppliedService]
    /// Entries in the connection table, or nil when not counted.
    public var conntrackEntries: Int?
    public var conntrackCapacity: Int
    /// Seconds since the epoch of the last successful apply (0: never).
    public var lastApply: Double
    public var version: String

    public init(counters: CounterSnapshot, services: [AppliedService], conntrackEntries: Int?, conntrackCapacity: Int,
                lastApply: Double, version: String) {
        self.counters = counters
        self.services = services
        self.conntrackEntries = conntrackEntries
        self.conntrackCapacity = conntrackCapacity
        self.lastApply = lastApply
        self.version = version
    }
}

public enum MetricsRenderer {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ input: MetricsInput) -> String {
        var out = PrometheusText()
        let counters = input.counters

        out.family("sluice_build_info", .gauge, "Build of the running agent; the value is always 1.")
        out.sample("sluice_build_info", ["version": input.version], UInt64(1))

        out.family("sluice_vip_packets_total", .counter, "Packets the data plane forwarded to a VIP's backends, per VIP.")
        for s in counters.services { out.sample("sluice_vip_packets_total", ["service": s.name, "vip": s.vip], s.packets) }
        out.family("sluice_vip_bytes_total", .counter, "Bytes (received frame length) forwarded for a VIP, per VIP.")
        for s in counters.services { out.sample("sluice_vip_bytes_total", ["service": s.name, "vip": s.vip], s.bytes) }

        out.family("sluice_packets_total", .counter, "Packets forwarded to a backend, per service and backend.")
        for s in counters.services {
            for b in s.backends {
                out.sample("sluice_packets_total", ["service": s.name, "vip": s.vip, "backend": b.address], b.packets)
            }
        }
        out.family("sluice_bytes_total", .counter, "Bytes (received frame length) forwarded to a backend.")
        for s in counters.services {
            for b in s.backends {
                out.sample("sluice_bytes_total", ["service": s.name, "vip": s.vip, "backend": b.address], b.bytes)
            }
        }

        out.family("sluice_backend_weight", .gauge, "A backend's Maglev weight as applied (0: drained).")
        for a in input.services {
            for b in a.backends {
                out.sample("sluice_backend_weight", ["service": a.service.name, "vip": a.service.vip.description,
                                                     "backend": b.address.description], UInt64(b.weight))
            }
        }
        out.family("sluice_backend_active", .gauge, "1 if a backend takes new flows (weight > 0), 0 if drained.")
        for a in input.services {
            for b in a.backends {
                out.sample("sluice_backend_active", ["service": a.service.name, "vip": a.service.vip.description,
                                                     "backend": b.address.description], UInt64(b.weight > 0 ? 1 : 0))
            }
        }
        out.family("sluice_config_generation", .gauge, "Times a service's Maglev table was switched (kept in the kernel).")
        for a in input.services {
            out.sample("sluice_config_generation", ["service": a.service.name, "vip": a.service.vip.description],
                       UInt64(a.generation))
        }

        out.family("sluice_new_flows_total", .counter, "Flows placed by Maglev (TCP SYN or unknown flow).")
        out.sample("sluice_new_flows_total", [:], counters.newFlows)
        out.family("sluice_conntrack_hits_total", .counter, "Packets of a flow found in the connection table.")
        out.sample("sluice_conntrack_hits_total", [:], counters.conntrackHits)
        out.family("sluice_conntrack_misses_total", .counter, "Non-SYN packets of a flow missing from the connection table.")
        out.sample("sluice_conntrack_misses_total", [:], counters.conntrackMisses)
        if let entries = input.conntrackEntries {
            out.family("sluice_conntrack_entries", .gauge, "Flows in the connection table (counted at most every few seconds).")
            out.sample("sluice_conntrack_entries", [:], UInt64(entries))
        }
        out.family("sluice_conntrack_capacity_entries", .gauge, "Size of the connection table (LRU: the oldest flows go when full).")
        out.sample("sluice_conntrack_capacity_entries", [:], UInt64(input.conntrackCapacity))
        out.family("sluice_fragments_passed_total", .counter, "IP fragments passed to the kernel.")
        out.sample("sluice_fragments_passed_total", [:], counters.fragments)
        out.family("sluice_ip_options_packets_total", .counter, "VIP packets with IPv4 options, forwarded.")
        out.sample("sluice_ip_options_packets_total", [:], counters.ipOptions)

        out.family("sluice_drops_total", .counter, "Packets the data plane dropped, by reason.")
        for reason in CounterSnapshot.dropNames {
            out.sample("sluice_drops_total", ["reason": reason], counters.drops[reason] ?? 0)
        }
        out.family("sluice_xdp_verdicts_total", .counter, "Packets by the XDP verdict the balancer returned.")
        for verdict in CounterSnapshot.verdictNames {
            out.sample("sluice_xdp_verdicts_total", ["verdict": verdict], counters.verdicts[verdict] ?? 0)
        }

        out.family("sluice_services", .gauge, "Services applied.")
        out.sample("sluice_services", [:], UInt64(input.services.count))
        out.family("sluice_last_apply_timestamp_seconds", .gauge,
                   "When the agent last applied a desired set (seconds since the epoch; 0: never).")
        out.sample("sluice_last_apply_timestamp_seconds", [:], input.lastApply)
        return out.text
    }
}

/// A writer of the Prometheus text format: `# HELP`, `# TYPE`, then samples.
/// Label names are ours (fixed, valid); label values are escaped.
public struct PrometheusText {
    public enum Kind: String { case counter, gauge }
    public private(set) var text = ""

    public init() { text.reserveCapacity(1 << 16) }

    public mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(kind.rawValue)\n"
    }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: UInt64) {
        line(name, labels, String(value))
    }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Double) {
        line(name, labels, value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value))
    }

    private mutating func line(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{"
            var first = true
            for (key, raw) in labels {
                if !first { text += "," }
                first = false
                text += key
                text += "=\""
                text += Self.escape(raw)
                text += "\""
            }
            text += "}"
        }
        text += " "
        text += value
        text += "\n"
    }

    /// Label values: backslash, double quote and line feed are escaped.
    static func escape(_ value: String) -> String {
        guard value.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return value }
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
