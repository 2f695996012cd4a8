// The data plane's decision for one packet, computed in Swift from the pinned maps, stage by
// stage in sl_process()'s order (bpf/lb.bpf.c): the VIP prefilter, conntrack, sl_vips, the
// gateway, the placement (conntrack, a UDP flow's held first datagram, or Maglev: the flow
// hash modelled by FlowHash, the slot read from the service's pinned table), the backend,
// and the mode's headers (encap.h, gue.h, forward.h, nat.h). A packet for no VIP is tested
// as a NAT backend's reply as sl_nat_reply() does. Nothing is written: lookups from user
// space neither refresh an LRU entry nor add TCP flags. The tests hold it to the program
// (BPF_PROG_TEST_RUN) flow by flow.
import CSluice
import SluiceBPF
import SluiceCore

public final class Explainer {
    private let dataplane: Dataplane
    private let state: AppliedState
    private let filter: VIPFilter
    private let vips: [[UInt8]: sl_vip]
    private let epochs: [UInt32]
    private let peers: [sl_addr_key]
    private let clock: UInt32
    private let services: [UInt32: AppliedService]
    private let ingressIndex: UInt32
    private let localMAC: MACAddress?
    private var tables: [UInt32: BPFMap] = [:]

    /// A snapshot of the configuration maps; the flow tables are read per packet.
    /// `ingressIndex` is the interface the packet arrives on (the attached one; 0 when not
    /// known) and `localMAC` its MAC, the source of what goes back out of it.
    init(_ dataplane: Dataplane, ingressIndex: UInt32, localMAC: MACAddress?) throws(ControlError) {
        self.dataplane = dataplane
        self.ingressIndex = ingressIndex
        self.localMAC = localMAC
        state = try dataplane.appliedState()
        services = Dictionary(state.services.map { ($0.slot, $0) }, uniquingKeysWith: { a, _ in a })
        do {
            filter = VIPFilter(words: try dataplane[.vipFilter].arrayValues(as: UInt64.self))
            vips = Dictionary(try dataplane[.vips].hashEntries(key: sl_vip_key.self, value: sl_vip.self).map {
                (withUnsafeBytes(of: $0.0) { Array($0) }, $0.1)
            }, uniquingKeysWith: { a, _ in a })
            epochs = try dataplane[.vipEpochs].arrayValues(as: UInt32.self)
            peers = try dataplane[.peers].arrayValues(as: sl_addr_key.self)
            clock = try dataplane[.clock].lookup(UInt32(0), as: UInt32.self) ?? 0
        } catch {
            throw .bpf(error, while: "reading the balancer's maps at \(dataplane.pinPath)")
        }
    }

    private var config: sl_config { state.config }

    public func explain(_ query: ExplainQuery) throws(ControlError) -> Explanation {
        do {
            return try decide(query)
        } catch {
            throw .bpf(error, while: "reading the connection tables at \(dataplane.pinPath)")
        }
    }

    // MARK: - sl_process

    private func decide(_ q: ExplainQuery) throws(BPFError) -> Explanation {
        var e = Explanation(packet: Explanation.Packet(protocol: q.proto.rawValue, source: q.source.description, sourcePort: q.sourcePort,
                                                       destination: q.destination.description, destinationPort: q.destinationPort,
                                                       syn: q.syn),
                            verdict: "pass", reason: "")
        let vipName = "\(endpoint(q.destination, q.destinationPort))/\(q.proto.rawValue)"
        let bit = VIPFilter.bit(address: q.destination, port: q.destinationPort, protocolNumber: q.proto.number)
        guard filter.mayContain(address: q.destination, port: q.destinationPort, protocolNumber: q.proto.number) else {
            e.steps.append("prefilter: bit \(bit) of sl_vip_filter is clear: \(vipName) is no VIP")
            return try reply(q, e, because: "no VIP is \(vipName) (the prefilter's bit is clear)")
        }
        e.steps.append("prefilter: bit \(bit) is set: \(vipName) may be a VIP")

        let key = flowKey(q)
        let entry = try dataplane[.conntrack].lookup(key, as: sl_ct_entry.self)
        var hit: sl_ct_entry?
        if q.syn {
            e.steps.append("conntrack: not asked: a SYN is placed afresh")
        } else if let entry {
            e.flow = describe(entry, table: "sl_conntrack", tcp: q.proto == .tcp)
            if isCurrent(entry) {
                hit = entry
                e.steps.append("conntrack: a current entry: service slot \(entry.service_id), backend #\(entry.backend_id)")
            } else {
                e.steps.append("conntrack: an entry of an earlier epoch of slot \(entry.service_id): ignored")
            }
        } else {
            e.steps.append("conntrack: no entry")
        }
        var vip: sl_vip?
        if hit == nil {
            guard let found = vips[withUnsafeBytes(of: sl_vip_key(q)) { Array($0) }] else {
                e.steps.append("sl_vips: no service is \(vipName) (the prefilter's bit is another key's)")
                return try reply(q, e, because: "no VIP is \(vipName)")
            }
            vip = found
            e.steps.append("sl_vips: \(vipName) is service slot \(found.id)")
            if q.syn, Self.translates(found.forwarding), let entry, isCurrent(entry), entry.nat != 0,
               entry.tcp_seen & UInt8(SL_TCP_SEEN_FIN.rawValue | SL_TCP_SEEN_RST.rawValue) == 0 {
                e.flow = describe(entry, table: "sl_conntrack", tcp: q.proto == .tcp)
                hit = entry
                e.steps.append("conntrack: the SYN finds its NAT flow open: a retransmission keeps its backend and source")
            }
        }
        guard config.flags & UInt8(SL_CFG_HAS_GATEWAY.rawValue) != 0 else {
            return drop(e, SL_DROP_NO_GATEWAY, "the node has no gateway MAC (lbctl attach sets it)")
        }

        let serviceSlot: UInt32, backendID: UInt32
        var confirmed = false
        let hash = FlowHash.hash(source: q.source, sourcePort: q.sourcePort, destinationPort: q.destinationPort,
                                 protocolNumber: q.proto.number)
        if let hit {
            (serviceSlot, backendID) = (UInt32(hit.service_id), hit.backend_id)
            e.placement = Explanation.Placement(by: "conntrack", hash: hash)
        } else {
            let vip = vip!
            serviceSlot = vip.id
            e.service = serviceRef(vip.id)
            if q.proto == .udp, !Self.translates(vip.forwarding), let held = try unconfirmed(key, slot: vip.id) {
                confirmed = true
                backendID = held.backend_id
                e.flow = describe(held, table: "sl_ct_unconfirmed", tcp: false)
                e.placement = Explanation.Placement(by: "unconfirmed", hash: hash)
                e.steps.append("sl_ct_unconfirmed: its first datagram went to backend #\(held.backend_id): this one follows")
            } else {
                let size = Int(vip.maglev_size)
                e.placement = Explanation.Placement(by: "maglev", hash: hash, slot: size == 0 ? nil : Int(hash % UInt32(size)),
                                                    tableSize: size)
                guard size != 0, let table = try table(of: vip.id) else {
                    return drop(e, SL_DROP_NO_BACKEND, "the service has no Maglev table")
                }
                let slot = Int(hash % UInt32(size))
                guard let pair = try table.lookup(UInt32(slot >> 1), as: sl_maglev_pair.self) else {
                    return drop(e, SL_DROP_NO_BACKEND, "slot \(slot) lies outside the service's table")
                }
                let id = slot & 1 == 0 ? pair.backend.0 : pair.backend.1
                guard id != SL_NO_BACKEND else {
                    e.steps.append("maglev: hash \(hex(hash)) is slot \(slot) of \(size): no backend")
                    return drop(e, SL_DROP_NO_BACKEND, "every backend of the service is drained or down")
                }
                backendID = id
                e.steps.append("maglev: hash \(hex(hash)) is slot \(slot) of \(size): backend #\(id)")
            }
        }
        if e.service == nil { e.service = serviceRef(serviceSlot) }
        guard Int(backendID) < state.backendSlots.count, state.backendSlots[Int(backendID)].family != 0 else {
            return drop(e, SL_DROP_NO_BACKEND, "backend #\(backendID) is not in sl_backends")
        }
        let be = state.backendSlots[Int(backendID)]
        e.backend = backendRef(backendID, be)

        let mode = hit.map { $0.nat != 0 ? $0.nat : be.forwarding } ?? be.forwarding
        e.forwarding = Forwarding(cValue: mode)?.rawValue
        if Self.translates(mode) {
            return try translate(q, e, key: key, hash: hash, be: be, mode: mode, open: hit.flatMap { $0.nat != 0 ? $0 : nil },
                                 vipFlags: vip?.flags ?? 0, serviceSlot: serviceSlot, backendID: backendID)
        }
        if hit == nil {
            e.records = q.syn ? [] : q.proto == .udp && !confirmed ? ["sl_ct_unconfirmed"] : ["sl_conntrack"]
        }
        return forward(q, e, be: be)
    }

    // MARK: - forward.h, encap.h, gue.h

    private func forward(_ q: ExplainQuery, _ e: Explanation, be: sl_backend) -> Explanation {
        var e = e
        let backend = IPAddress(cWords: be.addr, family: be.family)!
        if be.forwarding == UInt8(SL_FWD_L2DSR.rawValue) {
            guard let mac = be.macAddress else { return drop(e, SL_DROP_NO_NEIGHBOUR, "the backend's MAC is not resolved") }
            e.output = Explanation.Output(ethernetDestination: mac.description, ethernetSource: localMAC?.description)
            return send(e, "XDP_TX", "l2dsr: the frame goes back out to \(backend)'s MAC \(mac), the IP packet untouched")
        }
        let gue = be.forwarding == UInt8(SL_FWD_GUE.rawValue)
        let outerLength = (be.family == UInt8(SL_FAMILY_V4.rawValue) ? 20 : 40) + (gue ? 8 : 0)
        if config.tunnel_mtu > outerLength {
            let room = Int(config.tunnel_mtu) - outerLength
            e.notes.append("tunnel_mtu \(config.tunnel_mtu): an IP packet over \(room) bytes is answered with ICMP \"too big\" "
                           + "(dropped if IPv4 without DF)" + (q.syn ? "; this SYN's MSS is lowered to \(room - (q.source.family == .v4 ? 40 : 60)) if larger" : ""))
        }
        let source: IPAddress
        if q.source.family == .v4 && backend.family == .v4 {
            guard let v4 = config.sourceV4 else { return drop(e, SL_DROP_NO_SOURCE, "the node has no source_v4 for the tunnel") }
            source = v4
        } else {
            guard backend.family == .v6 else { return drop(e, SL_DROP_NO_BACKEND, "an IPv6 packet cannot ride an IPv4 tunnel") }
            guard let v6 = config.sourceV6 else { return drop(e, SL_DROP_NO_SOURCE, "the node has no source_v6 for the tunnel") }
            source = v6
        }
        var outer = Explanation.OuterHeader(family: Int(be.family), source: source.description, destination: backend.description,
                                            protocol: gue ? 17 : q.source.family == .v4 ? 4 : 41, ttl: UInt8(SL_OUTER_TTL),
                                            dontFragment: backend.family == .v4 ? true : nil)
        if gue {
            outer.udpSourcePort = FlowHash.gueSourcePort(source: q.source, sourcePort: q.sourcePort, destinationPort: q.destinationPort,
                                                         protocolNumber: q.proto.number)
            outer.udpDestinationPort = UInt16(bigEndian: config.gue_port)
        }
        let gateway = config.gateway!
        e.output = Explanation.Output(ethernetDestination: gateway.description, ethernetSource: localMAC?.description, outer: outer)
        let how = gue ? "GUE (UDP \(outer.udpSourcePort!) -> \(outer.udpDestinationPort!))" : "IP-in-IP"
        return send(e, "XDP_TX", "\(how) from \(source) to \(backend), through the gateway \(gateway)")
    }

    // MARK: - nat.h

    private func translate(_ q: ExplainQuery, _ e: Explanation, key: sl_flow_key, hash: UInt32, be: sl_backend, mode: UInt8,
                           open: sl_ct_entry?, vipFlags: UInt8, serviceSlot: UInt32, backendID: UInt32) throws(BPFError) -> Explanation {
        var e = e
        guard let nextHop = be.macAddress else {
            return drop(e, SL_DROP_NO_NEIGHBOUR, "the next hop toward the backend is not resolved")
        }
        let backend = IPAddress(cWords: be.addr, family: be.family)!
        let backendPort = UInt16(bigEndian: be.port)
        let full = mode == UInt8(SL_FWD_FULLNAT.rawValue)
        var snat: (index: Int, port: UInt16)?
        if let open {
            snat = full ? (Int(open.snat_index), UInt16(bigEndian: open.snat_port)) : nil
            if open.proxy & UInt8(SL_PROXY_ON.rawValue) != 0 {
                e.notes.append("a PROXY v2 flow: its sequence numbers toward the backend are offset by the header "
                               + "(\(q.source.family == .v4 ? SL_PROXY_V2_LEN_V4 : SL_PROXY_V2_LEN_V6) bytes)")
            }
        } else {
            let budget = config.nat_flow_budget
            if budget != 0 { e.notes.append("a new translation: dropped (nat_budget) should this CPU have opened \(budget) this second") }
            if full && vipFlags & UInt8(SL_VIP_F_PROXY_V2.rawValue) != 0 && q.proto == .tcp {
                e.notes.append(q.syn ? "proxy-v2: a PROXY v2 header goes before the client's first data byte (a SYN's own data is removed)"
                                     : "proxy-v2: the flow opens without its SYN: no header can be written (plain full NAT)")
            }
            if full {
                guard let chosen = try snatCandidate(key: key, hash: hash, be: be, family: q.source.family, e: &e) else {
                    return e
                }
                snat = chosen
            }
            e.records = ["sl_conntrack", "sl_nat"]
        }
        var rewrite = Explanation.Rewrite(destination: backend.description, destinationPort: backendPort)
        if full, let snat {
            let pool = pool(q.source.family)
            guard snat.index < pool.addresses.count else {
                return drop(e, SL_DROP_NO_SNAT, "SNAT address #\(snat.index) is no longer in the node's pool")
            }
            rewrite.source = pool.addresses[snat.index].description
            rewrite.sourcePort = snat.port
        }
        e.output = output(to: nextHop, via: be.ifindex, from: be.sourceMACAddress)
        e.output?.rewrite = rewrite
        let translated = rewrite.source.map { "\(endpoint(IPAddress($0)!, rewrite.sourcePort!)) -> " } ?? ""
        return send(e, e.output?.interfaceIndex == nil ? "XDP_TX" : "bpf_redirect",
                    "\(full ? "fullnat" : "nat"): \(translated)\(endpoint(backend, backendPort)), to the next hop \(nextHop)")
    }

    /// sl_snat_alloc: the first of SL_SNAT_TRIES candidates no flow to the backend's port holds.
    private func snatCandidate(key: sl_flow_key, hash: UInt32, be: sl_backend, family: IPAddress.Family,
                               e: inout Explanation) throws(BPFError) -> (index: Int, port: UInt16)? {
        let raw = state.snatPools[family == .v4 ? 0 : 1]
        guard raw.count > 0, raw.count <= SL_MAX_SNAT_ADDRS, raw.port_max >= raw.port_min else {
            e = drop(e, SL_DROP_NO_SNAT, "the node has no SNAT address of the backend's family (node.snat_v\(family == .v4 ? 4 : 6))")
            return nil
        }
        let addresses = raw.addresses(family: family)
        let range = UInt32(raw.port_max) - UInt32(raw.port_min) + 1
        var reply = sl_flow_key()
        reply.src = be.addr
        reply.sport = be.port
        reply.proto = key.proto
        reply.family = key.family
        for attempt in 0..<UInt32(SL_SNAT_TRIES) {
            let x = FlowHash.snatCandidate(flowHash: hash, try: attempt, tries: UInt32(SL_SNAT_TRIES))
            let index = Int((x / range) % UInt32(raw.count))
            let port = UInt16(UInt32(raw.port_min) + x % range)
            reply.dst = addresses[index].words
            reply.dport = port.bigEndian
            if try dataplane[.nat].lookup(reply, as: sl_nat_entry.self) == nil {
                e.steps.append("snat: candidate \(attempt + 1) of \(SL_SNAT_TRIES), \(endpoint(addresses[index], port)), is free")
                return (index, port)
            }
            e.steps.append("snat: candidate \(attempt + 1), \(endpoint(addresses[index], port)), is taken")
        }
        e = drop(e, SL_DROP_SNAT_EXHAUSTED, "all \(SL_SNAT_TRIES) SNAT candidates of the flow are in use")
        return nil
    }

    /// sl_nat_reply: a packet for no VIP is a NAT backend's reply when sl_nat has its key.
    private func reply(_ q: ExplainQuery, _ e: Explanation, because: String) throws(BPFError) -> Explanation {
        var e = e
        guard config.flags & UInt8(SL_CFG_NAT.rawValue) != 0 else {
            return pass(e, "\(because); the node has no NAT service, so it is not a reply either")
        }
        guard filter.mayBeReply(address: q.source, port: q.sourcePort, protocolNumber: q.proto.number) else {
            e.steps.append("reply prefilter: \(endpoint(q.source, q.sourcePort))/\(q.proto.rawValue) is no NAT backend")
            return pass(e, "\(because), and it comes from no NAT backend")
        }
        guard let nat = try dataplane[.nat].lookup(flowKey(q), as: sl_nat_entry.self) else {
            e.steps.append("sl_nat: no translation has this reply's key")
            return pass(e, "\(because), and it answers no translated flow")
        }
        let client = IPAddress(cWords: nat.flow.src, family: nat.flow.family)!
        let vip = IPAddress(cWords: nat.flow.dst, family: nat.flow.family)!
        let full = nat.mode == UInt8(SL_FWD_FULLNAT.rawValue)
        e.steps.append("sl_nat: the reply of \(endpoint(client, UInt16(bigEndian: nat.flow.sport))) -> \(endpoint(vip, UInt16(bigEndian: nat.flow.dport)))")
        e.service = serviceRef(UInt32(nat.service_id))
        e.forwarding = Forwarding(cValue: nat.mode)?.rawValue
        var flow = Explanation.FlowRef(table: "sl_nat", current: true, serviceSlot: UInt32(nat.service_id), backendID: nat.backend_id,
                                       origin: "local", ageSeconds: age(nat.last_seen), nat: e.forwarding)
        if q.proto == .tcp { flow.tcpState = FlowState(client: 0, backend: nat.tcp_seen).rawValue }
        if nat.proxy & UInt8(SL_PROXY_ON.rawValue) != 0 {
            flow.proxy = proxyState(nat.proxy)
            e.notes.append("a PROXY v2 flow: the backend's acknowledgements are offset back by the header")
        }
        e.flow = flow
        if Int(nat.backend_id) < state.backendSlots.count { e.backend = backendRef(nat.backend_id, state.backendSlots[Int(nat.backend_id)]) }
        var rewrite = Explanation.Rewrite(source: vip.description, sourcePort: UInt16(bigEndian: nat.flow.dport))
        if full { (rewrite.destination, rewrite.destinationPort) = (client.description, UInt16(bigEndian: nat.flow.sport)) }
        let clientMAC = Self.mac(nat.client_mac)
        if let clientMAC {
            e.output = output(to: clientMAC, via: nat.ifindex, from: Self.mac(nat.local_mac))
        } else {
            // A flow a peer synced: back out to the gateway.
            guard let gateway = config.gateway else { return drop(e, SL_DROP_NO_GATEWAY, "a synced flow's reply needs the gateway MAC") }
            e.output = Explanation.Output(ethernetDestination: gateway.description, ethernetSource: localMAC?.description)
        }
        e.output?.rewrite = rewrite
        return send(e, e.output?.interfaceIndex == nil ? "XDP_TX" : "bpf_redirect",
                    "a \(e.forwarding ?? "nat") reply: translated back to \(endpoint(vip, rewrite.sourcePort!)) -> \(endpoint(client, UInt16(bigEndian: nat.flow.sport)))")
    }

    /// Out of `ifindex` (from `sourceMAC`) when that is another interface, else back out.
    private func output(to mac: MACAddress, via ifindex: UInt32, from sourceMAC: MACAddress?) -> Explanation.Output {
        if ifindex != 0 && ifindex != ingressIndex {
            return Explanation.Output(ethernetDestination: mac.description, ethernetSource: sourceMAC?.description, interfaceIndex: ifindex)
        }
        return Explanation.Output(ethernetDestination: mac.description, ethernetSource: localMAC?.description)
    }

    // MARK: - Verdicts

    private func send(_ e: Explanation, _ how: String, _ reason: String) -> Explanation {
        var e = e
        e.verdict = how == "XDP_TX" ? "tx" : "redirect"
        e.reason = reason
        return e
    }

    private func pass(_ e: Explanation, _ reason: String) -> Explanation {
        var e = e
        e.verdict = "pass"
        e.reason = "\(reason): the kernel gets it untouched"
        return e
    }

    private func drop(_ e: Explanation, _ why: sl_drop_reason, _ reason: String) -> Explanation {
        var e = e
        e.verdict = "drop"
        e.dropReason = CounterSnapshot.dropNames[Int(why.rawValue)]
        e.reason = reason
        e.output = nil
        return e  // what it recorded before the drop stays recorded, as in the program
    }

    // MARK: - Reading and describing

    private func isCurrent(_ entry: sl_ct_entry) -> Bool {
        Int(entry.service_id) < epochs.count && UInt16(truncatingIfNeeded: epochs[Int(entry.service_id)]) == entry.epoch
    }

    /// sl_ct_unconfirmed_lookup: held for this service, current and younger than its TTL.
    private func unconfirmed(_ key: sl_flow_key, slot: UInt32) throws(BPFError) -> sl_ct_entry? {
        guard let held = try dataplane[.ctUnconfirmed].lookup(key, as: sl_ct_entry.self), UInt32(held.service_id) == slot,
              isCurrent(held), clock &- held.last_seen <= UInt32(SL_CT_UNCONFIRMED_TTL) else { return nil }
        return held
    }

    /// The service's Maglev table as the program reads it: the inner map sl_maglev holds.
    private func table(of slot: UInt32) throws(BPFError) -> BPFMap? {
        if let table = tables[slot] { return table }
        guard let id = try dataplane[.maglev].lookup(slot, as: UInt32.self) else { return nil }
        let table = try BPFMap.open(id: id)
        tables[slot] = table
        return table
    }

    private func pool(_ family: IPAddress.Family) -> (raw: sl_snat_pool, addresses: [IPAddress]) {
        let raw = state.snatPools[family == .v4 ? 0 : 1]
        return (raw, raw.addresses(family: family))
    }

    private func age(_ lastSeen: UInt32) -> UInt32? {
        clock == 0 ? nil : clock >= lastSeen ? clock - lastSeen : 0
    }

    private func describe(_ entry: sl_ct_entry, table: String, tcp: Bool) -> Explanation.FlowRef {
        let local = entry.origin == UInt8(SL_ORIGIN_LOCAL)
        let peer = local || Int(entry.origin) >= peers.count ? nil
            : IPAddress(cWords: peers[Int(entry.origin)].addr, family: peers[Int(entry.origin)].family)?.description
        var flow = Explanation.FlowRef(table: table, current: isCurrent(entry), serviceSlot: UInt32(entry.service_id),
                                       backendID: entry.backend_id, origin: local ? "local" : "peer", peer: peer,
                                       ageSeconds: age(entry.last_seen))
        if tcp { flow.tcpState = FlowState(client: entry.tcp_seen, backend: nil).rawValue }
        if let mode = Forwarding(cValue: entry.nat), mode.translates {
            flow.nat = mode.rawValue
            if mode == .fullnat, Int(entry.backend_id) < state.backendSlots.count,
               let family = IPAddress.Family(rawValue: state.backendSlots[Int(entry.backend_id)].family) {
                let addresses = pool(family).addresses
                flow.snatAddress = Int(entry.snat_index) < addresses.count ? addresses[Int(entry.snat_index)].description : nil
                flow.snatPort = UInt16(bigEndian: entry.snat_port)
            }
        }
        if entry.proxy & UInt8(SL_PROXY_ON.rawValue) != 0 { flow.proxy = proxyState(entry.proxy) }
        return flow
    }

    private func proxyState(_ flags: UInt8) -> String {
        flags & UInt8(SL_PROXY_ACKED.rawValue) != 0 ? "acked" : flags & UInt8(SL_PROXY_SENT.rawValue) != 0 ? "sent" : "owed"
    }

    private func serviceRef(_ slot: UInt32) -> Explanation.ServiceRef? {
        guard let applied = services[slot] else { return nil }
        let s = applied.service
        return Explanation.ServiceRef(name: s.name, vip: s.vip.description, port: s.port, protocol: s.proto.rawValue, slot: slot,
                                      forwarding: s.forwarding.rawValue, clientAddress: s.clientAddress == .proxyV2 ? "proxy-v2" : nil)
    }

    private func backendRef(_ id: UInt32, _ be: sl_backend) -> Explanation.BackendRef {
        let applied = services[be.service_id]?.backends.first { $0.id == id }
        let flags = be.flags
        let health = flags & UInt8(SL_BACKEND_F_CHECKED.rawValue) == 0 ? "unchecked"
            : flags & UInt8(SL_BACKEND_F_DOWN.rawValue) != 0 ? "down" : "up"
        return Explanation.BackendRef(id: id, address: IPAddress(cWords: be.addr, family: be.family)?.description ?? "?",
                                      port: be.port == 0 ? nil : UInt16(bigEndian: be.port), weight: Int(be.weight), health: health,
                                      takesNewFlows: applied?.takesNewFlows ?? false, mac: be.macAddress?.description)
    }

    static func translates(_ mode: UInt8) -> Bool {
        mode == UInt8(SL_FWD_NAT.rawValue) || mode == UInt8(SL_FWD_FULLNAT.rawValue)
    }

    static func mac<T>(_ bytes: T) -> MACAddress? {
        let raw = withUnsafeBytes(of: bytes) { Array($0.prefix(6)) }
        return raw.allSatisfy { $0 == 0 } ? nil : MACAddress(bytes: raw)
    }

    private func flowKey(_ q: ExplainQuery) -> sl_flow_key {
        var key = sl_flow_key()
        key.src = q.source.words
        key.dst = q.destination.words
        key.sport = q.sourcePort.bigEndian
        key.dport = q.destinationPort.bigEndian
        key.proto = q.proto.number
        key.family = q.source.family.rawValue
        return key
    }

    private func endpoint(_ address: IPAddress, _ port: UInt16) -> String {
        address.family == .v6 ? "[\(address)]:\(port)" : "\(address):\(port)"
    }

    private func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
    }
}

extension sl_vip_key {
    init(_ q: ExplainQuery) {
        self.init()
        addr = q.destination.words
        port = q.destinationPort.bigEndian
        proto = q.proto.number
        family = q.destination.family.rawValue
    }
}

extension Dataplane {
    /// An explainer of packets arriving on interface `ingressIndex` (0: not known) whose MAC is
    /// `localMAC`, over a snapshot of the configuration maps taken now.
    public func explainer(ingressIndex: UInt32, localMAC: MACAddress?) throws(ControlError) -> Explainer {
        try Explainer(self, ingressIndex: ingressIndex, localMAC: localMAC)
    }
}
