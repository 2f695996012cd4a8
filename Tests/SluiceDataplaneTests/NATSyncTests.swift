// A peer's translated flows written into this node's tables: the conntrack entry keeps the
// record's mode, SNAT slot and port, and an sl_nat entry is built from this node's backend
// slot (its address and port) and its own pool, with no interface or MACs (replies then go
// back out where they came in); a SNAT slot this node lacks or a translation key another
// flow holds is refused; the table's copy for a peer carries the translation.
import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private let services = """
    node:
      maglev_table_size: 251
      snat_v4: [192.0.2.20, 192.0.2.21]
    services:
      - name: api
        vip: 198.51.100.20
        port: 443
        protocol: tcp
        forwarding: fullnat
        backends: [ {address: 10.2.0.11, port: 8443} ]
      - name: dns
        vip: 198.51.100.21
        port: 53
        protocol: udp
        forwarding: nat
        backends: [ {address: 10.2.0.12, port: 5353} ]
    """

private let fullnat = UInt8(SL_FWD_FULLNAT.rawValue), nat = UInt8(SL_FWD_NAT.rawValue)

private func record(_ client: String, _ port: UInt16, vip: String, _ vipPort: UInt16, proto: UInt8, backend: String,
                    mode: UInt8, slot: UInt8 = 0, snatPort: UInt16 = 0) -> FlowRecord {
    FlowRecord(source: IPAddress(client)!, destination: IPAddress(vip)!, sourcePort: port.bigEndian,
               destinationPort: vipPort.bigEndian, proto: proto, backend: IPAddress(backend)!, nat: mode, snatIndex: slot,
               snatPort: snatPort.bigEndian)
}

private func key(_ source: String, _ sport: UInt16, _ destination: String, _ dport: UInt16, proto: UInt8) -> sl_flow_key {
    var key = sl_flow_key()
    key.src = IPAddress(source)!.words
    key.dst = IPAddress(destination)!.words
    key.sport = sport.bigEndian
    key.dport = dport.bigEndian
    key.proto = proto
    key.family = 4
    return key
}

private struct Seen: Sendable {
    var result = ConntrackSync.InsertResult()
    var error: String?
    var fullCT: (UInt8, UInt8, UInt16)?
    var fullNAT: (flowMatches: Bool, ifindex: UInt32, macsZero: Bool, mode: UInt8, lastSeen: UInt32, backendMatches: Bool)?
    var halfNAT: (flowMatches: Bool, mode: UInt8)?
    var conflictKept: Bool = false
    var copy: [FlowRecord] = []
}

@Suite(requiresRoot)
struct NATSyncTests {
    @Test func aPeersTranslatedFlowGetsItsTranslationBuiltFromThisNodesSlotAndPool() async throws {
        let seen = try await withAttachedNATBalancer { lb, _, _ -> Seen in
            var seen = Seen()
            do {
                try lb.apply(yaml: services)
                try lb.dataplane.tickClock(500)
                let sync = try ConntrackSync(dataplane: lb.dataplane)
                let records = [
                    record("198.18.0.1", 40000, vip: "198.51.100.20", 443, proto: 6, backend: "10.2.0.11", mode: fullnat,
                           slot: 1, snatPort: 20001),
                    record("198.18.0.2", 5000, vip: "198.51.100.21", 53, proto: 17, backend: "10.2.0.12", mode: nat),
                    record("198.18.0.3", 40000, vip: "198.51.100.20", 443, proto: 6, backend: "10.2.0.11", mode: fullnat,
                           slot: 5, snatPort: 20003),
                    // The same translation key as the first record's, for another client.
                    record("198.18.0.4", 40000, vip: "198.51.100.20", 443, proto: 6, backend: "10.2.0.11", mode: fullnat,
                           slot: 1, snatPort: 20001),
                ]
                seen.result = sync.insert(records, origin: 1)
                let client = key("198.18.0.1", 40000, "198.51.100.20", 443, proto: 6)
                if let entry = try lb.dataplane[.conntrack].lookup(client, as: sl_ct_entry.self) {
                    seen.fullCT = (entry.nat, entry.snat_index, UInt16(bigEndian: entry.snat_port))
                }
                let backendID = try lb.appliedState().service(named: "api")?.backends.first?.id
                if let translation = try lb.dataplane[.nat].lookup(key("10.2.0.11", 8443, "192.0.2.21", 20001, proto: 6),
                                                                   as: sl_nat_entry.self) {
                    let macs = withUnsafeBytes(of: translation.client_mac) { Array($0) }
                        + withUnsafeBytes(of: translation.local_mac) { Array($0) }
                    seen.fullNAT = (bytewise(translation.flow, client), translation.ifindex, macs.allSatisfy { $0 == 0 },
                                    translation.mode, translation.last_seen, translation.backend_id == backendID)
                    seen.conflictKept = bytewise(translation.flow, client)
                }
                let dnsClient = key("198.18.0.2", 5000, "198.51.100.21", 53, proto: 17)
                if let translation = try lb.dataplane[.nat].lookup(key("10.2.0.12", 5353, "198.18.0.2", 5000, proto: 17),
                                                                   as: sl_nat_entry.self) {
                    seen.halfNAT = (bytewise(translation.flow, dnsClient), translation.mode)
                }
                seen.copy = try sync.snapshot()
            } catch {
                seen.error = "\(error)"
            }
            return seen
        }
        #expect(seen.error == nil, "\(seen.error ?? "")")
        #expect(seen.result.applied == 2)
        #expect(seen.result.rejected == [.unknownSNAT: 1, .natConflict: 1], "\(seen.result.rejected)")
        let ct = try #require(seen.fullCT)
        #expect(ct.0 == fullnat && ct.1 == 1 && ct.2 == 20001, "the conntrack entry keeps the record's translation")
        let full = try #require(seen.fullNAT, "the reply key: backend 10.2.0.11:8443 -> this node's pool[1] 192.0.2.21:20001")
        #expect(full.flowMatches && full.backendMatches && full.mode == fullnat && full.lastSeen == 500)
        #expect(full.ifindex == 0 && full.macsZero, "no interface or MACs known: replies go back where they came in")
        #expect(seen.conflictKept, "the translation held by the first flow is not taken over")
        let half = try #require(seen.halfNAT, "the reply key: backend 10.2.0.12:5353 -> the client 198.18.0.2:5000")
        #expect(half.flowMatches && half.mode == nat)
        let copied = try #require(seen.copy.first { $0.source == IPAddress("198.18.0.1") })
        #expect(copied.nat == fullnat && copied.snatIndex == 1 && copied.snatPort == UInt16(20001).bigEndian,
                "a peer's copy of the table carries the translation")
    }
}

extension NATSyncTests {
    @Test func aPeersPROXYFlowKeepsItsOffsetOnBothSidesAndGoesBackOutInItsCopy() async throws {
        let seen = try await withAttachedNATBalancer { lb, _, _ -> (ct: (UInt8, UInt32)?, nat: (UInt8, UInt32)?, copy: UInt32?, error: String?) in
            do {
                try lb.apply(yaml: services.replacingOccurrences(of: "forwarding: fullnat", with: "forwarding: fullnat\n    client_address: proxy-v2"))
                try lb.dataplane.tickClock(500)
                let sync = try ConntrackSync(dataplane: lb.dataplane)
                var proxied = record("198.18.0.9", 40000, vip: "198.51.100.20", 443, proto: 6, backend: "10.2.0.11", mode: fullnat,
                                     slot: 0, snatPort: 20009)
                proxied.proxySeq = 0x0100_0001
                let result = sync.insert([proxied], origin: 1)
                guard result.applied == 1 else { return (nil, nil, nil, "\(result)") }
                let ct = try lb.dataplane[.conntrack].lookup(key("198.18.0.9", 40000, "198.51.100.20", 443, proto: 6), as: sl_ct_entry.self)
                let nat = try lb.dataplane[.nat].lookup(key("10.2.0.11", 8443, "192.0.2.20", 20009, proto: 6), as: sl_nat_entry.self)
                let copy = try sync.snapshot().first { $0.source == IPAddress("198.18.0.9") }?.proxySeq
                return (ct.map { ($0.proxy, $0.proxy_seq) }, nat.map { ($0.proxy, $0.proxy_seq) }, copy, nil)
            } catch {
                return (nil, nil, nil, "\(error)")
            }
        }
        #expect(seen.error == nil, "\(seen.error ?? "")")
        let on = UInt8(SL_PROXY_ON.rawValue)
        #expect(seen.ct?.0 == on && seen.ct?.1 == 0x0100_0001, "the client's side offsets its sequence numbers")
        #expect(seen.nat?.0 == on && seen.nat?.1 == 0x0100_0001, "the backend's side offsets its acknowledgements")
        #expect(seen.copy == 0x0100_0001, "a peer's copy of the table carries it on")
    }
}

private func bytewise<T>(_ lhs: T, _ rhs: T) -> Bool {
    withUnsafeBytes(of: lhs) { l in withUnsafeBytes(of: rhs) { r in l.elementsEqual(r) } }
}
