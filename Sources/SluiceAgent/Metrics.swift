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

/// One SNAT address of the applied pools and the ports full NAT allocates on it.
public struct SNATPoolAddress: Sendable, Equatable {
    public var address: IPAddress
    /// The size of node.snat_ports: the ports there are for each backend port.
    public var ports: Int

    public init(address: IPAddress, ports: Int) {
        self.address = address
        self.ports = ports
    }
}

/// Everything one scrape shows, read in one go on the data plane's reader thread.
public struct MetricsInput: Sendable {
    public var counters: CounterSnapshot
    public var services: [AppliedService]
    /// Entries in the connection table, or nil when not counted.
    public var conntrackEntries: Int?
    /// Idle flows the agent deleted since it started.
    public var conntrackExpired: UInt64
    public var conntrackCapacity: Int
    /// Seconds since the epoch of the last successful apply (0: never).
    public var lastApply: Double
    public var version: String
    /// The sync's figures, when the agent syncs with peers.
    public var sync: SyncStats.Snapshot?
    public var nat: NATFigures
    /// The applied SNAT addresses, IPv4 then IPv6, in pool order.
    public var snatPool: [SNATPoolAddress]
    /// The announcements, when the agent drives BIRD.
    public var fleet: FleetStatus?

    public init(counters: CounterSnapshot, services: [AppliedService], conntrackEntries: Int?, conntrackExpired: UInt64 = 0,
                conntrackCapacity: Int, lastApply: Double, version: String, sync: SyncStats.Snapshot? = nil,
                nat: NATFigures = NATFigures(), snatPool: [SNATPoolAddress] = []) {
        self.nat = nat
        self.snatPool = snatPool
        fleet = nil
        self.conntrackExpired = conntrackExpired
        self.counters = counters
        self.services = services
        self.conntrackEntries = conntrackEntries
        self.conntrackCapacity = conntrackCapacity
        self.lastApply = lastApply
        self.version = version
        self.sync = sync
    }
}

extension MetricsInput {
    /// Reads what a scrape shows from the maps: the applied state, then the counters. The
    /// agent reads it on its data plane's reader thread (`DataplaneOwner.metrics`).
    public static func read(from dataplane: Dataplane, conntrackEntries: Int?, conntrackExpired: UInt64 = 0,
                            lastApply: Double, sync: SyncStats.Snapshot? = nil,
                            nat: NATFigures = NATFigures()) throws(ControlError) -> MetricsInput {
        let state = try dataplane.appliedState()
        let node = state.serviceFile.node
        let pool = (node.snatV4 + node.snatV6).map { SNATPoolAddress(address: $0, ports: node.effectiveSNATPorts.count) }
        return MetricsInput(counters: try dataplane.counters(state: state), services: state.services,
                            conntrackEntries: conntrackEntries, conntrackExpired: conntrackExpired,
                            conntrackCapacity: dataplane.conntrackCapacity,
                            lastApply: lastApply, version: AgentBuild.version, sync: sync, nat: nat, snatPool: pool)
    }
}

public enum MetricsRenderer {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The exposition text, UTF-8. Each backend's label set is rendered once and reused by
    /// its four series (a scrape at 1,000 x 10 writes ~40,000 lines).
    public static func render(_ input: MetricsInput) -> [UInt8] {
        var out = PrometheusText()
        let counters = input.counters

        out.family("sluice_build_info", .gauge, "Build of the running agent; the value is always 1.")
        out.sample("sluice_build_info", PrometheusText.labels(["version": input.version]), UInt64(1))

        let vipLabels = counters.services.map { PrometheusText.labels(["service": $0.name, "vip": $0.vip]) }
        out.family("sluice_vip_packets_total", .counter, "Packets the data plane forwarded to a VIP's backends, per VIP.")
        for (s, labels) in zip(counters.services, vipLabels) { out.sample("sluice_vip_packets_total", labels, s.packets) }
        out.family("sluice_vip_bytes_total", .counter, "Bytes (received frame length) forwarded for a VIP, per VIP.")
        for (s, labels) in zip(counters.services, vipLabels) { out.sample("sluice_vip_bytes_total", labels, s.bytes) }
        out.family("sluice_vip_reply_packets_total", .counter, "Backends' replies translated back toward clients (nat, fullnat), per VIP.")
        for (s, labels) in zip(counters.services, vipLabels) { out.sample("sluice_vip_reply_packets_total", labels, s.replyPackets) }
        out.family("sluice_vip_reply_bytes_total", .counter, "Bytes (received frame length) of replies translated back, per VIP.")
        for (s, labels) in zip(counters.services, vipLabels) { out.sample("sluice_vip_reply_bytes_total", labels, s.replyBytes) }

        let trafficLabels = counters.services.map { s in
            s.backends.map { PrometheusText.labels(["service": s.name, "vip": s.vip, "backend": $0.address]) }
        }
        out.family("sluice_packets_total", .counter, "Packets forwarded to a backend, per service and backend.")
        for (s, labels) in zip(counters.services, trafficLabels) {
            for (b, label) in zip(s.backends, labels) { out.sample("sluice_packets_total", label, b.packets) }
        }
        out.family("sluice_bytes_total", .counter, "Bytes (received frame length) forwarded to a backend.")
        for (s, labels) in zip(counters.services, trafficLabels) {
            for (b, label) in zip(s.backends, labels) { out.sample("sluice_bytes_total", label, b.bytes) }
        }
        out.family("sluice_reply_packets_total", .counter, "A backend's replies translated back toward clients (nat, fullnat).")
        for (s, labels) in zip(counters.services, trafficLabels) {
            for (b, label) in zip(s.backends, labels) { out.sample("sluice_reply_packets_total", label, b.replyPackets) }
        }
        out.family("sluice_reply_bytes_total", .counter, "Bytes (received frame length) of a backend's replies translated back.")
        for (s, labels) in zip(counters.services, trafficLabels) {
            for (b, label) in zip(s.backends, labels) { out.sample("sluice_reply_bytes_total", label, b.replyBytes) }
        }

        let backendLabels = input.services.map { a in
            a.backends.map { PrometheusText.labels(["service": a.service.name, "vip": a.service.vip.description,
                                                    "backend": $0.address.description]) }
        }
        out.family("sluice_backend_weight", .gauge, "A backend's Maglev weight as applied (0: drained).")
        for (a, labels) in zip(input.services, backendLabels) {
            for (b, label) in zip(a.backends, labels) { out.sample("sluice_backend_weight", label, UInt64(b.weight)) }
        }
        out.family("sluice_backend_active", .gauge,
                   "1 if a backend takes new flows (in its Maglev table), 0 if drained or left out for failing its health check.")
        for (a, labels) in zip(input.services, backendLabels) {
            for (b, label) in zip(a.backends, labels) { out.sample("sluice_backend_active", label, UInt64(b.takesNewFlows ? 1 : 0)) }
        }
        out.family("sluice_backend_up", .gauge, "1 if a health-checked backend passes its check, 0 if it fails it (health-checked backends only).")
        for (a, labels) in zip(input.services, backendLabels) {
            for (b, label) in zip(a.backends, labels) where b.isChecked {
                out.sample("sluice_backend_up", label, UInt64(b.isDown ? 0 : 1))
            }
        }
        out.family("sluice_config_generation", .gauge, "Times a service's Maglev table was switched (kept in the kernel).")
        for a in input.services {
            out.sample("sluice_config_generation",
                       PrometheusText.labels(["service": a.service.name, "vip": a.service.vip.description]), UInt64(a.generation))
        }

        out.family("sluice_new_flows_total", .counter,
                   "Flows recorded in the connection table: TCP by its first packet after the SYN, UDP by its second, nat/fullnat by the first.")
        out.sample("sluice_new_flows_total", "", counters.newFlows)
        out.family("sluice_conntrack_hits_total", .counter, "Packets of a flow found in the connection table.")
        out.sample("sluice_conntrack_hits_total", "", counters.conntrackHits)
        out.family("sluice_conntrack_misses_total", .counter,
                   "Non-SYN packets of a flow missing from the connection table (a TCP flow's first ACK, a UDP flow's first two packets, a flow from elsewhere).")
        out.sample("sluice_conntrack_misses_total", "", counters.conntrackMisses)
        out.family("sluice_conntrack_unconfirmed_total", .counter,
                   "UDP flows' first packets, held in the unconfirmed table until a second packet records the flow.")
        out.sample("sluice_conntrack_unconfirmed_total", "", counters.conntrackUnconfirmed)
        if let entries = input.conntrackEntries {
            out.family("sluice_conntrack_entries", .gauge, "Flows in the connection table (counted at the agent's last sweep).")
            out.sample("sluice_conntrack_entries", "", UInt64(entries))
        }
        out.family("sluice_conntrack_expired_total", .counter, "Idle flows the agent deleted from the connection table since it started.")
        out.sample("sluice_conntrack_expired_total", "", input.conntrackExpired)
        out.family("sluice_conntrack_capacity_entries", .gauge, "Size of the connection table (LRU: the oldest flows go when full).")
        out.sample("sluice_conntrack_capacity_entries", "", UInt64(input.conntrackCapacity))
        out.family("sluice_fragments_passed_total", .counter, "IP fragments passed to the kernel.")
        out.sample("sluice_fragments_passed_total", "", counters.fragments)
        out.family("sluice_ip_options_packets_total", .counter, "VIP packets with IPv4 options, forwarded.")
        out.sample("sluice_ip_options_packets_total", "", counters.ipOptions)

        out.family("sluice_mss_clamped_total", .counter, "TCP SYNs whose MSS option was lowered to fit the tunnel MTU.")
        out.sample("sluice_mss_clamped_total", "", counters.mssClamped)
        out.family("sluice_icmp_too_big_sent_total", .counter,
                   "ICMP fragmentation-needed / ICMPv6 packet-too-big errors sent to clients (over the tunnel MTU).")
        out.sample("sluice_icmp_too_big_sent_total", "", counters.icmpTooBig)
        out.family("sluice_icmp_errors_steered_total", .counter, "Inbound ICMP errors about a VIP's flow, forwarded to its backend.")
        out.sample("sluice_icmp_errors_steered_total", "", counters.icmpSteered)

        renderNAT(input, into: &out)

        out.family("sluice_drops_total", .counter, "Packets the data plane dropped, by reason.")
        for reason in CounterSnapshot.dropNames {
            out.sample("sluice_drops_total", PrometheusText.labels(["reason": reason]), counters.drops[reason] ?? 0)
        }
        out.family("sluice_xdp_verdicts_total", .counter, "Packets by the XDP verdict the balancer returned.")
        for verdict in CounterSnapshot.verdictNames {
            out.sample("sluice_xdp_verdicts_total", PrometheusText.labels(["verdict": verdict]), counters.verdicts[verdict] ?? 0)
        }

        out.family("sluice_flow_events_lost_total", .counter, "New flows not reported for sync because the ring buffer was full.")
        out.sample("sluice_flow_events_lost_total", "", counters.flowEventsLost)
        if let sync = input.sync { renderSync(sync, into: &out) }
        if let fleet = input.fleet { renderFleet(fleet, into: &out) }

        out.family("sluice_services", .gauge, "Services applied.")
        out.sample("sluice_services", "", UInt64(input.services.count))
        out.family("sluice_last_apply_timestamp_seconds", .gauge,
                   "When the agent last applied a desired set (seconds since the epoch; 0: never).")
        out.sample("sluice_last_apply_timestamp_seconds", "", input.lastApply)
        return out.bytes
    }

    /// The node's place in the fleet: drained or not, each VIP announced through BIRD or not.
    private static func renderFleet(_ fleet: FleetStatus, into out: inout PrometheusText) {
        out.family("sluice_draining", .gauge, "1 while this node is drained (lbctl drain): every VIP withdrawn.")
        out.sample("sluice_draining", "", UInt64(fleet.draining ? 1 : 0))
        out.family("sluice_bgp_announced", .gauge, "1 while BIRD announces the VIP for this node, 0 while it is withdrawn.")
        for vip in fleet.vips {
            out.sample("sluice_bgp_announced", PrometheusText.labels(["vip": vip.vip]), UInt64(vip.announced ? 1 : 0))
        }
        out.family("sluice_bgp_updates_total", .counter, "Changed announcements BIRD took (include file rewritten, configure) since the agent started.")
        out.sample("sluice_bgp_updates_total", "", fleet.updates)
        out.family("sluice_bgp_errors_total", .counter, "Attempts to change the announcements that BIRD refused or did not answer, since the agent started.")
        out.sample("sluice_bgp_errors_total", "", fleet.errors)
    }

    /// The translations: the data plane's counters, the agent's sweep figures, pool use.
    private static func renderNAT(_ input: MetricsInput, into out: inout PrometheusText) {
        let counters = input.counters
        out.family("sluice_nat_created_total", .counter, "Translations created (nat and fullnat flows opened).")
        out.sample("sluice_nat_created_total", "", counters.natCreated)
        out.family("sluice_nat_replies_total", .counter, "Backends' packets translated back toward clients.")
        out.sample("sluice_nat_replies_total", "", counters.natReplies)
        out.family("sluice_nat_icmp_translated_total", .counter, "ICMP errors about a translated flow, translated (either way).")
        out.sample("sluice_nat_icmp_translated_total", "", counters.natICMP)
        out.family("sluice_snat_collisions_total", .counter, "Full-NAT source candidates found in use before a free one (or exhaustion).")
        out.sample("sluice_snat_collisions_total", "", counters.snatCollisions)
        out.family("sluice_proxy_headers_total", .counter, "PROXY v2 headers written (a connection's first).")
        out.sample("sluice_proxy_headers_total", "", counters.proxyHeaders)
        out.family("sluice_proxy_headers_resent_total", .counter, "PROXY v2 headers written again: the stream's start sent again before the backend acknowledged it.")
        out.sample("sluice_proxy_headers_resent_total", "", counters.proxyResent)
        out.family("sluice_proxy_tfo_trimmed_total", .counter, "SYNs of proxy-v2 services whose TCP Fast Open data was removed (the client sends it again).")
        out.sample("sluice_proxy_tfo_trimmed_total", "", counters.proxyTFOTrimmed)
        out.family("sluice_proxy_unwritable_total", .counter, "Flows of proxy-v2 services opened without their SYN: no header could be written.")
        out.sample("sluice_proxy_unwritable_total", "", counters.proxyMidstream)
        if let translations = input.nat.translations {
            out.family("sluice_nat_translations", .gauge, "Translations in the NAT table (counted at the agent's last sweep).")
            out.sample("sluice_nat_translations", "", UInt64(translations))
        }
        out.family("sluice_nat_expired_total", .counter, "Translations the agent deleted as idle since it started.")
        out.sample("sluice_nat_expired_total", "", input.nat.expired)
        out.family("sluice_snat_pool_in_use", .gauge,
                   "Full-NAT translations holding a source port on a SNAT address (at the agent's last sweep).")
        for entry in input.snatPool {
            out.sample("sluice_snat_pool_in_use", PrometheusText.labels(["address": entry.address.description]),
                       UInt64(input.nat.snatInUse[entry.address] ?? 0))
        }
        out.family("sluice_snat_pool_ports", .gauge,
                   "Source ports full NAT allocates on a SNAT address, for each backend address, port and protocol.")
        for entry in input.snatPool {
            out.sample("sluice_snat_pool_ports", PrometheusText.labels(["address": entry.address.description]), UInt64(entry.ports))
        }
    }

    /// The agent's own sync counters: they start from zero when the agent does.
    private static func renderSync(_ sync: SyncStats.Snapshot, into out: inout PrometheusText) {
        out.family("sluice_sync_ready", .gauge, "1 once this node has a peer's copy of the connection table (or the resync timed out).")
        out.sample("sluice_sync_ready", "", UInt64(sync.ready ? 1 : 0))
        out.family("sluice_sync_peer_connected", .gauge, "1 while this node's connection to a peer is up.")
        for (peer, up) in sync.connected.sorted(by: { $0.key < $1.key }) {
            out.sample("sluice_sync_peer_connected", PrometheusText.labels(["peer": peer]), UInt64(up ? 1 : 0))
        }
        out.family("sluice_sync_records_sent_total", .counter, "Flow records sent to a peer.")
        for (peer, count) in sync.sent.sorted(by: { $0.key < $1.key }) {
            out.sample("sluice_sync_records_sent_total", PrometheusText.labels(["peer": peer]), count)
        }
        out.family("sluice_sync_records_received_total", .counter, "Flow records received from a peer in authentic batches.")
        for (peer, count) in sync.received.sorted(by: { $0.key < $1.key }) {
            out.sample("sluice_sync_records_received_total", PrometheusText.labels(["peer": peer]), count)
        }
        out.family("sluice_sync_records_applied_total", .counter, "Flow records written into the connection table.")
        out.sample("sluice_sync_records_applied_total", "", sync.applied)
        out.family("sluice_sync_records_rejected_total", .counter, "Flow records not written, by reason.")
        for reason in ConntrackSync.Rejection.allCases.map(\.rawValue) {
            out.sample("sluice_sync_records_rejected_total", PrometheusText.labels(["reason": reason]), sync.recordsRejected[reason] ?? 0)
        }
        out.family("sluice_sync_batches_rejected_total", .counter, "Batches dropped unread, by reason.")
        let batchReasons = SyncFrame.Rejection.allCases.map(\.rawValue) + [SyncReplayGuard.Verdict.replay.rawValue, SyncReplayGuard.Verdict.stale.rawValue]
        for reason in batchReasons {
            out.sample("sluice_sync_batches_rejected_total", PrometheusText.labels(["reason": reason]), sync.batchesRejected[reason] ?? 0)
        }
        out.family("sluice_sync_lag_seconds", .gauge, "Seconds from a peer stamping its last applied batch to this node writing it.")
        out.sample("sluice_sync_lag_seconds", "", sync.lagSeconds)
        out.family("sluice_sync_frames_dropped_total", .counter, "Batches not sent because a peer's queue was full.")
        out.sample("sluice_sync_frames_dropped_total", "", sync.framesDropped)
        out.family("sluice_sync_key_info", .gauge, "The sync keys in force, by id (HKDF of the secret): role seal for the one sealing what this node sends, accept for another one it opens.")
        for (index, id) in sync.keyIDs.enumerated() {
            out.sample("sluice_sync_key_info", PrometheusText.labels(["key_id": id, "role": index == 0 ? "seal" : "accept"]), UInt64(1))
        }
    }
}

/// A writer of the Prometheus text format: `# HELP`, `# TYPE`, then samples, as UTF-8 bytes.
/// Label names are ours (fixed, valid); label values are escaped.
public struct PrometheusText {
    public enum Kind: String { case counter, gauge }
    public private(set) var bytes: [UInt8] = []

    public init() { bytes.reserveCapacity(1 << 16) }

    public mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        bytes.append(contentsOf: "# HELP \(name) \(help)\n# TYPE \(name) \(kind.rawValue)\n".utf8)
    }

    /// `labels` is the output of `labels(_:)` (or "" for none).
    public mutating func sample(_ name: String, _ labels: String, _ value: UInt64) {
        bytes.append(contentsOf: name.utf8)
        bytes.append(contentsOf: labels.utf8)
        bytes.append(UInt8(ascii: " "))
        appendDecimal(value)
        bytes.append(UInt8(ascii: "\n"))
    }

    public mutating func sample(_ name: String, _ labels: String, _ value: Double) {
        bytes.append(contentsOf: name.utf8)
        bytes.append(contentsOf: labels.utf8)
        bytes.append(UInt8(ascii: " "))
        if value >= 0 && value == value.rounded() && value < 1e15 {
            appendDecimal(UInt64(value))
        } else {
            bytes.append(contentsOf: String(value).utf8)
        }
        bytes.append(UInt8(ascii: "\n"))
    }

    private mutating func appendDecimal(_ value: UInt64) {
        guard value >= 10 else { return bytes.append(UInt8(ascii: "0") + UInt8(value)) }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var rest = value, start = 20
            while rest > 0 {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: digits[start..<20]))
        }
    }

    /// `{name="value",...}` with the values escaped.
    public static func labels(_ pairs: KeyValuePairs<String, String>) -> String {
        var text = "{"
        var first = true
        for (key, value) in pairs {
            if !first { text += "," }
            first = false
            text += key
            text += "=\""
            text += escape(value)
            text += "\""
        }
        return text + "}"
    }

    /// Label values: backslash, double quote and line feed are escaped.
    static func escape(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") }) else {
            return value
        }
        var out = ""
        for c in value.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}
