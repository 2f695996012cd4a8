// The one-definition check: every struct of lb_shared.h as Swift imports it
// must have the size and field offsets the kernel recorded (in BTF) for the
// maps of the loaded object, and the shared constants must agree with the
// Swift model's copies.

import CSluice
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// The Swift view of a C struct, in the shape of the kernel's BTF view.
private func swiftLayout<T>(_: T.Type, _ name: String, _ fields: KeyValuePairs<String, PartialKeyPath<T>>) -> BTFTypeLayout {
    BTFTypeLayout(name: name, size: MemoryLayout<T>.size,
                  members: fields.map { ($0.key, MemoryLayout<T>.offset(of: $0.value) ?? -1) })
}

private let vipKey = swiftLayout(sl_vip_key.self, "sl_vip_key",
                                 ["addr": \.addr, "port": \.port, "proto": \.proto, "family": \.family])
private let vip = swiftLayout(sl_vip.self, "sl_vip", ["id": \.id, "maglev_size": \.maglev_size, "forwarding": \.forwarding, "flags": \.flags, "pad": \.pad])
private let backend = swiftLayout(sl_backend.self, "sl_backend",
                                  ["addr": \.addr, "family": \.family, "flags": \.flags, "weight": \.weight,
                                   "service_id": \.service_id, "mac": \.mac, "forwarding": \.forwarding, "pad": \.pad,
                                   "port": \.port, "src_mac": \.src_mac, "ifindex": \.ifindex])
private let flowKey = swiftLayout(sl_flow_key.self, "sl_flow_key",
                                  ["src": \.src, "dst": \.dst, "sport": \.sport, "dport": \.dport, "proto": \.proto,
                                   "family": \.family, "pad": \.pad])
private let ctEntry = swiftLayout(sl_ct_entry.self, "sl_ct_entry",
                                  ["backend_id": \.backend_id, "service_id": \.service_id, "epoch": \.epoch,
                                   "last_seen": \.last_seen, "origin": \.origin, "tcp_seen": \.tcp_seen, "nat": \.nat,
                                   "snat_index": \.snat_index, "snat_port": \.snat_port, "proxy": \.proxy, "pad": \.pad,
                                   "proxy_seq": \.proxy_seq])
private let natEntry = swiftLayout(sl_nat_entry.self, "sl_nat_entry",
                                   ["flow": \.flow, "client_mac": \.client_mac, "local_mac": \.local_mac, "ifindex": \.ifindex,
                                    "backend_id": \.backend_id, "service_id": \.service_id, "tcp_seen": \.tcp_seen,
                                    "mode": \.mode, "last_seen": \.last_seen, "proxy_seq": \.proxy_seq, "proxy": \.proxy,
                                    "pad": \.pad])
private let snatPool = swiftLayout(sl_snat_pool.self, "sl_snat_pool",
                                   ["addr": \.addr, "port_min": \.port_min, "port_max": \.port_max, "count": \.count, "pad": \.pad])
private let config = swiftLayout(sl_config.self, "sl_config",
                                 ["source_v4": \.source_v4, "source_v6": \.source_v6, "gateway_mac": \.gateway_mac,
                                  "flags": \.flags, "pad": \.pad, "maglev_size": \.maglev_size,
                                  "tunnel_mtu": \.tunnel_mtu, "gue_port": \.gue_port, "nat_flow_budget": \.nat_flow_budget])
private let counter = swiftLayout(sl_counter.self, "sl_counter", ["packets": \.packets, "bytes": \.bytes,
                                                                    "reply_packets": \.reply_packets, "reply_bytes": \.reply_bytes])
private let stats = swiftLayout(sl_stats.self, "sl_stats",
                                ["verdicts": \.verdicts, "new_flows": \.new_flows, "ct_hits": \.ct_hits,
                                 "ct_misses": \.ct_misses, "fragments": \.fragments, "ip_options": \.ip_options,
                                 "drops": \.drops, "flow_events_lost": \.flow_events_lost,
                                 "mss_clamped": \.mss_clamped, "icmp_too_big": \.icmp_too_big,
                                 "icmp_steered": \.icmp_steered, "nat_created": \.nat_created,
                                 "nat_replies": \.nat_replies, "nat_icmp": \.nat_icmp,
                                 "snat_collisions": \.snat_collisions, "proxy_headers": \.proxy_headers,
                                 "proxy_resent": \.proxy_resent, "proxy_tfo_trimmed": \.proxy_tfo_trimmed,
                                 "proxy_midstream": \.proxy_midstream, "ct_unconfirmed": \.ct_unconfirmed])
private let serviceInfo = swiftLayout(sl_service_info.self, "sl_service_info",
                                      ["name": \.name, "vip": \.vip, "maglev_size": \.maglev_size,
                                       "generation": \.generation, "forwarding": \.forwarding, "vip_flags": \.vip_flags,
                                       "pad": \.pad])

@Suite(requiresRoot)
struct LayoutTests {
    @Test func theSharedStructsHaveTheSizesTheirCommentsPromise() {
        #expect(MemoryLayout<sl_vip_key>.size == 20)
        #expect(MemoryLayout<sl_vip>.size == 12)
        #expect(MemoryLayout<sl_backend>.size == 44)
        #expect(MemoryLayout<sl_flow_key>.size == 40)
        #expect(MemoryLayout<sl_ct_entry>.size == 24)
        #expect(MemoryLayout<sl_nat_entry>.size == 76)
        #expect(MemoryLayout<sl_snat_pool>.size == Int(SL_MAX_SNAT_ADDRS) * 16 + 8)
        #expect(MemoryLayout<sl_flow_event>.size == 60)
        #expect(MemoryLayout<sl_addr_key>.size == 20)
        #expect(MemoryLayout<sl_config>.size == 40)
        #expect(MemoryLayout<sl_counter>.size == 32)
        #expect(MemoryLayout<sl_stats>.size == 8 * (Int(SL_VERDICTS) + 18 + Int(SL_DROP__MAX.rawValue)))
        #expect(MemoryLayout<sl_service_info>.size == Int(SL_SERVICE_NAME_LEN) + 20 + 4 + 4 + 4)
    }

    @Test func everyMapsKeyAndValueMatchTheSwiftStructsInSizeAndFieldOffsets() async throws {
        let lb = try await TestDataplane.make()
        let d = lb.dataplane
        let u32 = 4
        // (map, Swift key, Swift value): nil means a plain __u32.
        let maps: [(BPFMap, BTFTypeLayout?, BTFTypeLayout?)] = [
            (d[.vips], vipKey, vip),
            (d[.backends], nil, backend),
            (d[.conntrack], flowKey, ctEntry),
            (d[.nat], flowKey, natEntry),
            (d[.snatPools], nil, snatPool),
            (d[.config], nil, config),
            (d[.stats], nil, stats),
            (d[.vipStats], nil, counter),
            (d[.backendStats], nil, counter),
            (d[.services], nil, serviceInfo),
        ]
        for (map, key, value) in maps {
            #expect(map.info.keySize == (key?.size ?? u32), "\(map.name) key size")
            #expect(map.info.valueSize == (value?.size ?? u32), "\(map.name) value size")
            let kernel = try mapBTFLayout(map)
            let kernelKey = try #require(kernel.key, "\(map.name) has key BTF")
            let kernelValue = try #require(kernel.value, "\(map.name) has value BTF")
            if let key {
                #expect(kernelKey == key, "\(map.name) key: kernel \(kernelKey), Swift \(key)")
            } else {
                #expect(kernelKey.size == u32 && kernelKey.members.isEmpty, "\(map.name) key is a __u32: \(kernelKey)")
            }
            if let value {
                #expect(kernelValue == value, "\(map.name) value: kernel \(kernelValue), Swift \(value)")
            }
        }
        // The Maglev outer map: slot -> inner map; its inner tables are __u32 -> struct sl_maglev_pair
        // (TestDataplane.MapByID.maglevSlots checks each table read back).
        #expect(d[.maglev].info.keySize == u32 && d[.maglev].info.valueSize == u32)
        #expect(d[.maglev].info.type.rawValue == mapTypeArrayOfMaps)
        #expect(d[.maglev].info.maxEntries == Int(SL_MAX_VIPS))
        #expect(d[.backends].info.maxEntries == Int(SL_MAX_BACKENDS))
        #expect(d[.vips].info.maxEntries == Int(SL_MAX_VIPS))
        #expect(d[.conntrack].info.maxEntries == Int(TestDataplane.conntrackSize), "conntrack resized before load")
        #expect(d[.nat].info.maxEntries == Int(TestDataplane.natSize), "the NAT table sized at load")
        #expect(d[.snatPools].info.maxEntries == 2)
        // The prefilter: __u32 word index -> __u64 of bits.
        #expect(d[.vipFilter].info.keySize == u32 && d[.vipFilter].info.valueSize == MemoryLayout<UInt64>.size)
        #expect(d[.vipFilter].info.maxEntries == Int(SL_VIP_FILTER_WORDS))
        // The epochs: service slot -> __u32, of which conntrack keeps the low 16 bits.
        #expect(d[.vipEpochs].info.keySize == u32 && d[.vipEpochs].info.valueSize == u32)
        #expect(d[.vipEpochs].info.maxEntries == Int(SL_MAX_VIPS))
        #expect(Int(SL_MAX_VIPS) <= Int(UInt16.max) + 1, "a service slot fits sl_ct_entry.service_id")
        // Sync: the new-flow ring and the peers by origin index (sl_addr_key values).
        #expect(d[.flowEvents].info.type.rawValue == mapTypeRingBuffer && d[.flowEvents].info.maxEntries == Int(SL_FLOW_EVENTS_SIZE))
        #expect(d[.peers].info.keySize == u32 && d[.peers].info.valueSize == MemoryLayout<sl_addr_key>.size)
        #expect(d[.peers].info.maxEntries == Int(SL_MAX_PEERS) + 1)
        #expect(d[.clock].info.keySize == u32 && d[.clock].info.valueSize == u32 && d[.clock].info.maxEntries == 1)
    }

    @Test func theSwiftModelsConstantsAreTheDataPlanesConstants() {
        #expect(FlowHash.seed == SL_HASH_SEED)
        #expect(Maglev.noBackend == SL_NO_BACKEND)
        #expect(Maglev.defaultTableSize == Int(SL_MAGLEV_DEFAULT_SIZE))
        #expect(IPAddress.Family.v4.rawValue == UInt8(SL_FAMILY_V4.rawValue))
        #expect(IPAddress.Family.v6.rawValue == UInt8(SL_FAMILY_V6.rawValue))
        #expect(XDPVerdict.allCases.map(\.rawValue) == XDPVerdict.kernelValues)
        #expect(Int(SL_VERDICTS) == XDPVerdict.allCases.count)
        #expect(CounterSnapshot.verdictNames.count == Int(SL_VERDICTS))
        #expect(DropReason.allCases.map(\.rawValue) ==
                [SL_DROP_MALFORMED, SL_DROP_TRUNCATED, SL_DROP_NO_BACKEND, SL_DROP_NO_SOURCE, SL_DROP_NO_GATEWAY,
                 SL_DROP_ENCAP, SL_DROP_TOO_BIG, SL_DROP_NO_NEIGHBOUR, SL_DROP_NO_SNAT, SL_DROP_SNAT_EXHAUSTED, SL_DROP_PROXY,
                 SL_DROP_NAT_BUDGET].map(\.rawValue))
        #expect(CounterSnapshot.dropNames.count == Int(SL_DROP__MAX.rawValue))
        #expect(SL_OUTER_TTL == 64, "the tunnel checks expect TTL 64")
        #expect(VIPFilter.bits == Int(SL_VIP_FILTER_BITS))
        #expect(VIPFilter.wordBits == Int(SL_VIP_FILTER_WORD_BITS))
        #expect(VIPFilter.wordCount == Int(SL_VIP_FILTER_WORDS))
        #expect(VIPFilter.multiplier == SL_VIP_FILTER_MULT)
    }
}
