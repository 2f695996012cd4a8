// The exposition text itself, without a kernel: a golden rendering of a small node and
// label escaping.
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore
import Testing

@Suite("agent: metrics text")
struct MetricsTextTests {
    @Test("label values escape backslash, double quote and line feed; plain values are untouched")
    func labelEscaping() {
        #expect(PrometheusText.labels(["a": #"x\y"#, "b": #"say "hi""#, "c": "two\nlines"])
                == #"{a="x\\y",b="say \"hi\"",c="two\nlines"}"#)
        #expect(PrometheusText.labels(["service": "web", "vip": "2001:db8::10"]) == #"{service="web",vip="2001:db8::10"}"#)
    }

    @Test("a node with one service renders every family with HELP and TYPE and the snapshot's values")
    func goldenRendering() throws {
        let counters = try JSONDecoder().decode(CounterSnapshot.self, from: Data("""
            {"verdicts": {"aborted": 0, "drop": 1, "pass": 2, "tx": 7, "redirect": 0},
             "new_flows": 5, "conntrack_hits": 2, "conntrack_misses": 1, "conntrack_unconfirmed": 29,
             "fragments": 3, "ip_options": 4,
             "drops": {"malformed": 1, "truncated": 0, "no_backend": 0, "no_source": 0, "no_gateway": 0, "encap": 0,
                       "too_big": 12, "no_neighbour": 13, "no_snat": 17, "snat_exhausted": 18, "proxy": 24,
                       "nat_budget": 30},
             "flow_events_lost": 6, "mss_clamped": 14, "icmp_too_big": 15, "icmp_steered": 16,
             "nat_created": 19, "nat_replies": 20, "nat_icmp": 21, "snat_collisions": 22,
             "proxy_headers": 25, "proxy_resent": 26, "proxy_tfo_trimmed": 27, "proxy_midstream": 28,
             "services": [{"name": "web", "vip": "192.0.2.10", "port": 80, "protocol": "tcp", "packets": 7, "bytes": 700,
                           "reply_packets": 5, "reply_bytes": 500,
                           "backends": [{"address": "10.1.0.1", "packets": 7, "bytes": 700, "reply_packets": 5, "reply_bytes": 500},
                                        {"address": "10.1.0.2", "packets": 18446744073709551615, "bytes": 0,
                                         "reply_packets": 0, "reply_bytes": 0}]}]}
            """.utf8))
        let service = Service(name: "web", vip: IPAddress("192.0.2.10")!, port: 80, proto: .tcp,
                              backends: [Backend(address: IPAddress("10.1.0.1")!, weight: 3),
                                         Backend(address: IPAddress("10.1.0.2")!, weight: 0)])
        let applied = AppliedService(slot: 0, service: service, maglevSize: 251, generation: 2, backends: [
            // Flags (enum sl_backend_flags): in use + checked (3), and in use + checked + down (7).
            AppliedBackend(id: 0, address: IPAddress("10.1.0.1")!, weight: 3, flags: 3),
            AppliedBackend(id: 1, address: IPAddress("10.1.0.2")!, weight: 0, flags: 7),
        ])
        let text = String(decoding: MetricsRenderer.render(MetricsInput(
            counters: counters, services: [applied], conntrackEntries: 9, conntrackExpired: 11, conntrackCapacity: 1024,
            lastApply: 1_764_000_000.5, version: "1.2.3",
            nat: NATFigures(translations: 4, expired: 23, snatInUse: [IPAddress("192.0.2.20")!: 3]),
            snatPool: [SNATPoolAddress(address: IPAddress("192.0.2.20")!, ports: 64512),
                       SNATPoolAddress(address: IPAddress("2001:db8:ffff::20")!, ports: 64512)])), as: UTF8.self)
        let lines = Set(text.split(separator: "\n").map(String.init))
        for expected in [
            #"sluice_build_info{version="1.2.3"} 1"#,
            #"sluice_vip_packets_total{service="web",vip="192.0.2.10"} 7"#,
            #"sluice_vip_bytes_total{service="web",vip="192.0.2.10"} 700"#,
            #"sluice_packets_total{service="web",vip="192.0.2.10",backend="10.1.0.1"} 7"#,
            #"sluice_packets_total{service="web",vip="192.0.2.10",backend="10.1.0.2"} 18446744073709551615"#,
            #"sluice_bytes_total{service="web",vip="192.0.2.10",backend="10.1.0.1"} 700"#,
            #"sluice_backend_weight{service="web",vip="192.0.2.10",backend="10.1.0.1"} 3"#,
            #"sluice_backend_active{service="web",vip="192.0.2.10",backend="10.1.0.2"} 0"#,
            #"sluice_backend_up{service="web",vip="192.0.2.10",backend="10.1.0.1"} 1"#,
            #"sluice_backend_up{service="web",vip="192.0.2.10",backend="10.1.0.2"} 0"#,
            #"sluice_config_generation{service="web",vip="192.0.2.10"} 2"#,
            "sluice_new_flows_total 5", "sluice_conntrack_hits_total 2", "sluice_conntrack_misses_total 1",
            "sluice_conntrack_unconfirmed_total 29",
            "sluice_conntrack_entries 9", "sluice_conntrack_capacity_entries 1024", "sluice_conntrack_expired_total 11",
            "sluice_fragments_passed_total 3", "sluice_ip_options_packets_total 4",
            #"sluice_drops_total{reason="malformed"} 1"#, #"sluice_xdp_verdicts_total{verdict="tx"} 7"#,
            #"sluice_drops_total{reason="too_big"} 12"#, #"sluice_drops_total{reason="no_neighbour"} 13"#,
            "sluice_mss_clamped_total 14", "sluice_icmp_too_big_sent_total 15", "sluice_icmp_errors_steered_total 16",
            "sluice_services 1", "sluice_last_apply_timestamp_seconds 1764000000.5", "sluice_flow_events_lost_total 6",
            "# TYPE sluice_packets_total counter", "# TYPE sluice_backend_weight gauge",
            #"sluice_vip_reply_packets_total{service="web",vip="192.0.2.10"} 5"#,
            #"sluice_vip_reply_bytes_total{service="web",vip="192.0.2.10"} 500"#,
            #"sluice_reply_packets_total{service="web",vip="192.0.2.10",backend="10.1.0.1"} 5"#,
            #"sluice_reply_bytes_total{service="web",vip="192.0.2.10",backend="10.1.0.2"} 0"#,
            "sluice_nat_created_total 19", "sluice_nat_replies_total 20", "sluice_nat_icmp_translated_total 21",
            "sluice_snat_collisions_total 22", "sluice_nat_translations 4", "sluice_nat_expired_total 23",
            #"sluice_drops_total{reason="no_snat"} 17"#, #"sluice_drops_total{reason="snat_exhausted"} 18"#,
            #"sluice_snat_pool_in_use{address="192.0.2.20"} 3"#, #"sluice_snat_pool_in_use{address="2001:db8:ffff::20"} 0"#,
            #"sluice_snat_pool_ports{address="192.0.2.20"} 64512"#, "# TYPE sluice_snat_pool_in_use gauge",
            #"sluice_drops_total{reason="proxy"} 24"#, "sluice_proxy_headers_total 25", "sluice_proxy_headers_resent_total 26",
            "sluice_proxy_tfo_trimmed_total 27", "sluice_proxy_unwritable_total 28",
            #"sluice_drops_total{reason="nat_budget"} 30"#,
        ] {
            #expect(lines.contains(expected), "missing: \(expected)\n\(text)")
        }
        let types = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.count
        let helps = text.split(separator: "\n").filter { $0.hasPrefix("# HELP ") }.count
        #expect(types == 42 && helps == 42, "every family has HELP and TYPE (\(types), \(helps))")
        #expect(text.hasSuffix("\n"))
        #expect(!text.contains("sluice_sync_"), "no sync series without sync")

        // With sync: its families, every rejection reason present (zero or not).
        var sync = SyncStats.Snapshot()
        sync.ready = true
        sync.sent = ["10.0.0.2:9301": 12]
        sync.received = ["10.0.0.2": 30]
        sync.applied = 28
        sync.recordsRejected = ["local_newer": 2]
        sync.batchesRejected = ["bad_mac": 1]
        sync.connected = ["10.0.0.2:9301": true]
        sync.lagSeconds = 0.25
        sync.keyIDs = ["0011223344556677", "8899aabbccddeeff"]
        let synced = String(decoding: MetricsRenderer.render(MetricsInput(
            counters: counters, services: [applied], conntrackEntries: 9, conntrackCapacity: 1024,
            lastApply: 1_764_000_000.5, version: "1.2.3", sync: sync)), as: UTF8.self)
        let syncLines = Set(synced.split(separator: "\n").map(String.init))
        for expected in [
            "sluice_sync_ready 1", #"sluice_sync_peer_connected{peer="10.0.0.2:9301"} 1"#,
            #"sluice_sync_records_sent_total{peer="10.0.0.2:9301"} 12"#, #"sluice_sync_records_received_total{peer="10.0.0.2"} 30"#,
            "sluice_sync_records_applied_total 28", #"sluice_sync_records_rejected_total{reason="local_newer"} 2"#,
            #"sluice_sync_records_rejected_total{reason="unknown_backend"} 0"#, #"sluice_sync_batches_rejected_total{reason="bad_mac"} 1"#,
            #"sluice_sync_batches_rejected_total{reason="replay"} 0"#, #"sluice_sync_batches_rejected_total{reason="stale"} 0"#,
            "sluice_sync_lag_seconds 0.25", "sluice_sync_frames_dropped_total 0",
            #"sluice_sync_batches_rejected_total{reason="unknown_key"} 0"#,
            #"sluice_sync_key_info{key_id="0011223344556677",role="seal"} 1"#,
            #"sluice_sync_key_info{key_id="8899aabbccddeeff",role="accept"} 1"#,
        ] {
            #expect(syncLines.contains(expected), "missing: \(expected)\n\(synced)")
        }
        #expect(synced.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.count == 41 + 10,
                "no sluice_nat_translations without a count, and the ten sync families")
    }
}
