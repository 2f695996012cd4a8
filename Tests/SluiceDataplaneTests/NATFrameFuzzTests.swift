// Seeded conversations through the real balancer (BPF_PROG_TEST_RUN) in its translating modes:
// nat and fullnat, IPv4 and IPv6, TCP and UDP, and full NAT with PROXY v2. Clients open flows
// (SYNs, some with TCP Fast Open data; first datagrams), send segments at, before and past the
// stream's start, close and reset them; backends answer with SYN-ACKs carrying an MSS, with
// acknowledgements inside, at and past the PROXY header, SACK blocks and timestamps; routers
// and backends send ICMP errors about either side; and FrameMutator's mutations of all of it.
// For every frame: never XDP_ABORTED; a passed frame leaves byte-identical; a transmitted one
// is exactly what NATFrameModel predicts from the frame and the flow's entries as the maps
// held them before it; a new full-NAT flow's source is from the pool and its translation is
// where replies find it; the verdict counters add up. 20,000 frames in `make test`,
// 1,000,000 in `make fuzz` (SLUICE_FUZZ_FRAMES); SLUICE_FUZZ_SEED replays a run.
import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// A translating service of the fuzz: its VIP, mode, backend port and whether it writes PROXY v2.
struct NATFuzzService: Sendable {
    let name: String
    let vip: IPAddress
    let port: UInt16
    let proto: L4Protocol
    let mode: sl_forwarding
    let backendPort: UInt16
    let proxy: Bool
    let backends: [String]
}

let natFuzzServices = [
    NATFuzzService(name: "nat-web", vip: IPAddress("198.51.100.30")!, port: 80, proto: .tcp, mode: SL_FWD_NAT, backendPort: 8080,
                   proxy: false, backends: ["10.2.0.11", "10.2.0.12"]),
    NATFuzzService(name: "nat-dns", vip: IPAddress("198.51.100.30")!, port: 53, proto: .udp, mode: SL_FWD_NAT, backendPort: 8053,
                   proxy: false, backends: ["10.2.0.11", "10.2.0.12"]),
    NATFuzzService(name: "nat-web6", vip: IPAddress("2001:db8::30")!, port: 80, proto: .tcp, mode: SL_FWD_NAT, backendPort: 8080,
                   proxy: false, backends: ["2001:db8:2::11", "2001:db8:2::12"]),
    NATFuzzService(name: "full-web", vip: IPAddress("198.51.100.31")!, port: 80, proto: .tcp, mode: SL_FWD_FULLNAT, backendPort: 80,
                   proxy: false, backends: ["10.2.1.11", "10.2.1.12"]),
    NATFuzzService(name: "full-dns", vip: IPAddress("198.51.100.31")!, port: 53, proto: .udp, mode: SL_FWD_FULLNAT, backendPort: 53,
                   proxy: false, backends: ["10.2.1.21"]),
    NATFuzzService(name: "full-dns6", vip: IPAddress("2001:db8::31")!, port: 53, proto: .udp, mode: SL_FWD_FULLNAT, backendPort: 5300,
                   proxy: false, backends: ["2001:db8:2:1::11"]),
    NATFuzzService(name: "proxy", vip: IPAddress("198.51.100.32")!, port: 443, proto: .tcp, mode: SL_FWD_FULLNAT, backendPort: 8443,
                   proxy: true, backends: ["10.2.2.11", "10.2.2.12"]),
    NATFuzzService(name: "proxy6", vip: IPAddress("2001:db8::32")!, port: 443, proto: .tcp, mode: SL_FWD_FULLNAT, backendPort: 8443,
                   proxy: true, backends: ["2001:db8:2:2::11", "2001:db8:2:2::12"]),
]

/// The service file: each service in ipip, as a file writes it; the test then turns them to their modes.
private var natFuzzYAML: String {
    "node:\n  source_v4: 192.0.2.10\n  source_v6: \"2001:db8:ffff::10\"\n  maglev_table_size: 251\nservices:\n"
        + natFuzzServices.map { s in
            "  - name: \(s.name)\n    vip: \"\(s.vip)\"\n    port: \(s.port)\n    protocol: \(s.proto.rawValue)\n    backends:\n"
                + s.backends.map { "      - { address: \"\($0)\" }\n" }.joined()
        }.joined()
}

/// A conversation of the fuzz: a client's flow to a service, and where the balancer put it.
struct NATConversation {
    let service: NATFuzzService
    let client: IPAddress
    let clientPort: UInt16
    let isn: UInt32
    let backendISN: UInt32
    /// The backend and the source it sees, from the balancer's first translated packet.
    var backend: IPAddress?
    var source: (IPAddress, UInt16)?
    var flow: IPFlow { IPFlow(source: client, destination: service.vip, protocolNumber: service.proto.number, sourcePort: clientPort, destinationPort: service.port) }
}

/// Frames of conversations with the fuzz services, and their mutations.
struct NATFrameGenerator {
    var rng: SplitMix64
    var mutator: FrameMutator
    var conversations: [NATConversation] = []
    var next = 0
    /// Conversations open at once: few enough that each gets a run of packets.
    static let open = 32

    init(seed: UInt64, services: [Service]) {
        rng = SplitMix64(seed: seed)
        mutator = FrameMutator(seed: seed ^ 0x6e61_74, services: services)
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    mutating func u32() -> UInt32 { UInt32.random(in: 0...UInt32.max, using: &rng) }
    mutating func chance(_ percent: Int) -> Bool { int(1...100) <= percent }
    mutating func pick<T>(_ items: [T]) -> T { items[int(0...items.count - 1)] }
    mutating func bytes(_ range: ClosedRange<Int>) -> [UInt8] { (0..<int(range)).map { _ in UInt8.random(in: 0...255, using: &rng) } }

    /// A frame: valid (30%) or mutated; its kind, and the mutation.
    mutating func frame() -> (frame: [UInt8], kind: String, mutation: String) {
        let (frame, kind) = valid()
        if chance(30) { return (frame, kind, "intact") }
        let (mutated, mutation) = mutator.mutate(frame)
        return (mutated, kind, mutation)
    }

    /// Records where the balancer put a conversation's flow.
    mutating func observe(_ flow: IPFlow, backend: IPAddress, source: (IPAddress, UInt16)) {
        guard let index = conversations.firstIndex(where: { $0.flow == flow }) else { return }
        conversations[index].backend = backend
        conversations[index].source = source
    }

    mutating func valid() -> (frame: [UInt8], kind: String) {
        let roll = int(1...100)
        if conversations.isEmpty || roll <= 20 { return open() }
        let conversation = pick(conversations)
        if roll <= 50 { return fromClient(conversation) }
        guard conversation.backend != nil else { return open() }
        if roll <= 85 { return fromBackend(conversation) }
        if roll <= 95 { return icmpError(conversation) }
        return (mutator.valid(), "a frame to a VIP or none")
    }

    mutating func client(v6: Bool) -> IPAddress {
        v6 ? IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8, 0xc1, 0] + bytes(10...10))! : IPAddress("203.0.\(int(0...255)).\(int(1...254))")!
    }

    mutating func open() -> (frame: [UInt8], kind: String) {
        let service = pick(natFuzzServices)
        let conversation = NATConversation(service: service, client: client(v6: service.vip.family == .v6), clientPort: UInt16(int(1024...65535)),
                                           isn: u32(), backendISN: u32())
        if conversations.count < Self.open { conversations.append(conversation) } else { conversations[next % Self.open] = conversation }
        next += 1
        var builder = PacketBuilder()
        (builder.sourceMAC, builder.destinationMAC) = (clientSideMAC, ourMAC)
        guard service.proto == .tcp else {
            return (builder.udp(from: conversation.client.description, conversation.clientPort, to: service.vip.description, service.port,
                                payload: bytes(0...40)), "a first datagram")
        }
        builder.sequence = conversation.isn
        builder.tcpOptions = chance(70) ? mssOption(1460) : []
        let fastOpen = chance(15)
        if fastOpen { builder.tcpOptions += [34, 10] + bytes(8...8) }
        return (builder.tcp(from: conversation.client.description, conversation.clientPort, to: service.vip.description, service.port,
                            flags: [.syn], payload: fastOpen ? bytes(1...60) : []), fastOpen ? "a SYN with data" : "a SYN")
    }

    /// Timestamps, or nothing, or a few odd bytes.
    mutating func options() -> [UInt8] {
        switch int(0...3) {
        case 0: return []
        case 1: return timestampOptions(u32(), echo: u32())
        case 2: return [1, 1, 1, 1]
        default: return chance(50) ? [1, 1, 4, 2] : timestampOptions(1, echo: 2) + [1, 1, 1, 1]
        }
    }

    mutating func fromClient(_ c: NATConversation) -> (frame: [UInt8], kind: String) {
        var builder = PacketBuilder()
        (builder.sourceMAC, builder.destinationMAC) = (clientSideMAC, ourMAC)
        guard c.service.proto == .tcp else {
            return (builder.udp(from: c.client.description, c.clientPort, to: c.service.vip.description, c.service.port, payload: bytes(0...40)),
                    "a client's datagram")
        }
        let start = c.isn &+ 1
        builder.sequence = pick([start, start, start, c.isn, start &+ UInt32(int(1...3000)), u32()])
        builder.acknowledgment = c.backendISN &+ 1 &+ UInt32(int(0...2000))
        builder.tcpOptions = options()
        let (flags, kind): (Set<TCPFlag>, String) = pick([([.ack], "a client's ACK"), ([.ack, .psh], "a client's data"), ([.ack, .psh], "a client's data"),
                                                          ([.fin, .ack], "a client's FIN"), ([.rst], "a client's RST"), ([.syn], "a SYN again")])
        if flags == [.syn] { builder.sequence = c.isn }
        let payload = flags.contains(.psh) || (flags == [.syn] && chance(30)) ? bytes(1...200) : []
        return (builder.tcp(from: c.client.description, c.clientPort, to: c.service.vip.description, c.service.port, flags: flags, payload: payload), kind)
    }

    /// Where a backend's answer goes: the source it saw.
    func replyDestination(_ c: NATConversation) -> (IPAddress, UInt16) { c.source ?? (c.client, c.clientPort) }

    mutating func fromBackend(_ c: NATConversation) -> (frame: [UInt8], kind: String) {
        guard let backend = c.backend else { return open() }
        let (destination, port) = replyDestination(c)
        var builder = PacketBuilder()
        (builder.sourceMAC, builder.destinationMAC) = (backendHopMAC, ourMAC)
        guard c.service.proto == .tcp else {
            return (builder.udp(from: backend.description, c.service.backendPort, to: destination.description, port, payload: bytes(0...40)),
                    "a backend's datagram")
        }
        let start = c.isn &+ 1, length = NATFrameModel.proxyLength(v4: c.client.family == .v4)
        let past = start &+ length
        let ack = pick([start, start, past, past &+ UInt32(int(1...3000)), start &+ UInt32(int(1...Int(length) - 1)), start &- 1, u32()])
        builder.acknowledgment = ack
        let kind: String
        let flags: Set<TCPFlag>
        switch int(0...5) {
        case 0:
            (flags, kind) = ([.syn, .ack], "a SYN-ACK")
            builder.sequence = c.backendISN
            builder.tcpOptions = pick([mssOption(1460), mssOption(UInt16(int(0...80))), mssOption(1460) + [1, 1, 4, 2] + timestampOptions(u32(), echo: u32()), []])
        case 1:
            (flags, kind) = ([.ack], "a backend's SACK")
            builder.sequence = c.backendISN &+ 1
            let edges = (0..<int(1...3)).flatMap { _ -> [UInt8] in
                let left = past &+ UInt32(int(0...5000)) &- UInt32(int(0...40))
                return bigEndian(left) + bigEndian(left &+ UInt32(int(1...1000)))
            }
            builder.tcpOptions = chance(50) ? [1, 1, 5, UInt8(2 + edges.count)] + edges : [1, 5, UInt8(2 + edges.count)] + edges + [1]
        default:
            (flags, kind) = pick([([.ack], "a backend's ACK"), ([.ack, .psh], "a backend's data"), ([.fin, .ack], "a backend's FIN"), ([.rst], "a backend's RST")])
            builder.sequence = c.backendISN &+ 1
            builder.tcpOptions = options()
        }
        return (builder.tcp(from: backend.description, c.service.backendPort, to: destination.description, port, flags: flags,
                            payload: flags.contains(.psh) ? bytes(1...200) : []), kind)
    }

    /// An error from a router about a reply to the client, or from the backend (or a router
    /// on its side) about what the balancer sent it; the quote cut anywhere.
    mutating func icmpError(_ c: NATConversation) -> (frame: [UInt8], kind: String) {
        guard let backend = c.backend else { return open() }
        let v6 = c.client.family == .v6
        let (type, code): (UInt8, UInt8) = v6 ? pick([(1, 4), (2, 0), (3, 0)]) : pick([(3, 3), (3, 4), (11, 0)])
        func quoted(from: IPAddress, _ sport: UInt16, to: IPAddress, _ dport: UInt16) -> [UInt8] {
            let packet = c.service.proto == .tcp
                ? PacketBuilder().tcp(from: from.description, sport, to: to.description, dport, flags: [.ack], payload: Array(repeating: 7, count: 100))
                : PacketBuilder().udp(from: from.description, sport, to: to.description, dport, payload: Array(repeating: 7, count: 100))
            return Array(packet.dropFirst(14).prefix(pick([28, 48, 60, 68, 88, int(20...140)])))
        }
        var builder = PacketBuilder()
        if chance(50) {
            (builder.sourceMAC, builder.destinationMAC) = (clientSideMAC, ourMAC)
            let router = v6 ? routerV6 : routerV4
            return (builder.icmpError(from: router, to: c.service.vip.description, type: type, code: code, rest: 1400,
                                      quoting: quoted(from: c.service.vip, c.service.port, to: c.client, c.clientPort)),
                    "an error about a reply")
        }
        (builder.sourceMAC, builder.destinationMAC) = (backendHopMAC, ourMAC)
        let (destination, port) = replyDestination(c)
        let sender = chance(50) ? backend.description : (v6 ? "2001:db8:2::fe" : "10.2.0.254")
        return (builder.icmpError(from: sender, to: destination.description, type: type, code: code, rest: 1400,
                                  quoting: quoted(from: destination, port, to: backend, c.service.backendPort)),
                "an error about a translated packet")
    }
}

/// What the balancer must do with a frame: send exactly `frame` (one way or the other), or not send it at all.
enum NATExpectation {
    case send([UInt8], to: String)
    /// A new full-NAT flow: the frame once its allocated source (read from the output) is known.
    case allocate(flow: IPFlow, backend: IPAddress, backendPort: UInt16, proxy: (state: UInt8, seq: UInt32)?)
    case keep
}

/// Whether two C structs hold the same bytes.
func sameBytes<T>(_ a: T, _ b: T) -> Bool {
    withUnsafeBytes(of: a) { x in withUnsafeBytes(of: b) { y in x.elementsEqual(y) } }
}

extension TestDataplane {
    func ctEntry(_ flow: IPFlow) throws -> sl_ct_entry? {
        try ctEntry(Self.key(flow))
    }
    func natEntry(_ flow: IPFlow) throws -> sl_nat_entry? {
        try natEntry(Self.key(flow))
    }
    static func key(_ flow: IPFlow) -> sl_flow_key {
        flowKey(flow.protocolNumber == 6 ? .tcp : .udp, from: flow.source, flow.sourcePort, to: flow.destination, flow.destinationPort)
    }

    /// NATFrameModel's frame for `frame`, from the flow's entries as the maps hold them now.
    func natExpectation(_ frame: [UInt8], pools: [IPAddress.Family: [IPAddress]]) throws -> NATExpectation {
        guard let view = IPFrameView(frame) else { return .keep }
        if let quote = NATFrameModel.Quote(frame, view) {
            let flow = quote.flow
            if let ct = try ctEntry(flow), ct.nat != 0, let service = natFuzzServices.first(where: { $0.vip == flow.destination && $0.port == flow.destinationPort }),
               let backend = model.backend(for: flow)?.address {
                let snat = ct.nat == UInt8(SL_FWD_FULLNAT.rawValue)
                    ? (pools[backend.family]?[Int(ct.snat_index)] ?? backend, UInt16(bigEndian: ct.snat_port)) : nil
                var out = NATFrameModel.icmp(frame, outerSource: snat?.0, outerDestination: backend,
                                             quoteSource: (backend, service.backendPort), quoteDestination: snat ?? (quote.destination, quote.destinationPort))
                guard out.count >= 12 else { return .keep }
                out.replaceSubrange(0..<12, with: backendHopMAC + Array(frame[0..<6]))
                return .send(out, to: "an error to the backend")
            }
            guard let nat = try natEntry(flow), let client = IPAddress(words: nat.flow.src, family: nat.flow.family),
                  let vip = IPAddress(words: nat.flow.dst, family: nat.flow.family) else { return .keep }
            let outerSource = IPAddress(bytes: Array(frame[view.sourceAt..<(view.sourceAt + view.addressLength)]))
            let out = NATFrameModel.icmp(frame, outerSource: outerSource == flow.source ? vip : nil, outerDestination: client,
                                         quoteSource: (client, UInt16(bigEndian: nat.flow.sport)), quoteDestination: (vip, UInt16(bigEndian: nat.flow.dport)))
            return .send(NATFrameModel.toClient(out, input: frame, nat: nat), to: "an error to the client")
        }
        // What the parser drops (a transport header cut short, a TCP data offset under 5) is no flow.
        guard let flow = IPFlow(frame: frame), frame.count >= view.l4 + (flow.protocolNumber == 6 ? 20 : 8),
              flow.protocolNumber != 6 || TCPView(frame, at: view.l4).headerLength >= 20 else { return .keep }
        guard let service = natFuzzServices.first(where: { $0.vip == flow.destination && $0.port == flow.destinationPort && $0.proto.number == flow.protocolNumber }) else {
            guard let nat = try natEntry(flow) else { return .keep }
            return .send(NATFrameModel.reply(frame, nat: nat), to: "to the client")
        }
        guard let backend = model.backend(for: flow)?.address else { return .keep }
        let tcp = flow.protocolNumber == 6 ? TCPView(frame, at: view.l4) : nil
        let syn = tcp.map { $0.syn && !$0.ack } ?? false
        let ct = try ctEntry(flow)
        if let ct, !syn || (ct.nat != 0 && ct.tcp_seen & (NATFrameModel.seenFIN | NATFrameModel.seenRST) == 0) {
            guard ct.nat != 0 else { return .send([], to: "an open flow not translated") }
            let snat = ct.nat == UInt8(SL_FWD_FULLNAT.rawValue)
                ? (pools[backend.family]?[Int(ct.snat_index)] ?? backend, UInt16(bigEndian: ct.snat_port)) : nil
            let out = NATFrameModel.forward(frame, flow: flow, backend: backend, backendPort: service.backendPort, snat: snat,
                                            proxy: ct.proxy != 0 ? (ct.proxy, ct.proxy_seq) : nil)
            return .send(out, to: "to the backend")
        }
        let proxy: (UInt8, UInt32)? = service.proxy && syn ? (NATFrameModel.proxyOn, frame.be32(view.l4 + 4) &+ 1) : nil
        if service.mode == SL_FWD_FULLNAT { return .allocate(flow: flow, backend: backend, backendPort: service.backendPort, proxy: proxy) }
        return .send(NATFrameModel.forward(frame, flow: flow, backend: backend, backendPort: service.backendPort, snat: nil, proxy: proxy),
                     to: "to the backend, a new flow")
    }
}

@Suite(requiresRoot)
struct NATFrameFuzzTests {
    @Test("fuzzed NAT, full-NAT and PROXY v2 frames: never aborted, passed untouched, sent exactly as the model predicts, counted")
    func fuzzedNATFramesKeepEveryInvariant() async throws {
        let lb = try await TestDataplane.make(yaml: natFuzzYAML)
        defer { lb.close() }
        for s in natFuzzServices {
            try lb.dataplane.setNAT(s.mode, of: s.name, port: s.backendPort, nextHop: backendHopMAC)
            if s.proxy { try lb.dataplane.setProxyV2(of: s.name) }
        }
        try lb.dataplane.setSNATPool(snatV4, ports: snatPorts)
        try lb.dataplane.setSNATPool(snatV6, ports: snatPorts)
        let pools: [IPAddress.Family: [IPAddress]] = [.v4: snatV4, .v6: snatV6]
        let balancer = Unchecked(lb), services = lb.serviceFile.services
        let seed = SplitMix64.testSeed, count = FrameFuzz.frames
        // Seconds of CPU: on a thread of its own, the only user of the program.
        let (outcomes, failures, delta) = try await offPool {
            let lb = balancer.value
            var generator = NATFrameGenerator(seed: seed, services: services)
            var outcomes: [String: Int] = [:], failures: [(String, [UInt8], [UInt8])] = []
            let before = try lb.nodeStats()
            for _ in 0..<count {
                let (frame, base, mutation) = generator.frame()
                let kind = "\(base), \(mutation)"
                func count(_ outcome: String) {
                    outcomes["\(base): \(outcome)", default: 0] += 1
                    outcomes["mutation \(mutation): \(outcome)", default: 0] += 1
                }
                let expectation = try lb.natExpectation(frame, pools: pools)
                let (verdict, output) = try lb.run(frame)
                let verdictName = XDPVerdict(rawValue: verdict)?.description ?? "verdict \(verdict)"
                func fail(_ why: String) { if failures.count < 20 { failures.append(("\(kind): \(why)", frame, output)) } }
                switch XDPVerdict(rawValue: verdict) {
                case .drop:
                    count("drop")
                case .pass:
                    count("pass")
                    if output != frame { fail("passed, changed") }
                case .tx:
                    let expected: [UInt8], way: String
                    switch expectation {
                    case .keep:
                        fail("sent, but the model has no translation for it")
                        continue
                    case .send(let frame, let to):
                        (expected, way) = (frame, to)
                    case .allocate(let flow, let backend, let backendPort, let proxy):
                        let pool = pools[backend.family] ?? []
                        guard let seen = IPFlow(frame: output), pool.contains(seen.source), snatPorts.contains(seen.sourcePort) else {
                            fail("a new full-NAT flow's source is not from the pool")
                            continue
                        }
                        let replyKey = IPFlow(source: backend, destination: seen.source, protocolNumber: flow.protocolNumber,
                                              sourcePort: backendPort, destinationPort: seen.sourcePort)
                        guard let nat = try lb.natEntry(replyKey), sameBytes(nat.flow, TestDataplane.key(flow)) else {
                            fail("a new full-NAT flow's translation is not where its replies look")
                            continue
                        }
                        (expected, way) = (NATFrameModel.forward(frame, flow: flow, backend: backend, backendPort: backendPort,
                                                                 snat: (seen.source, seen.sourcePort), proxy: proxy), "to the backend, a new flow")
                    }
                    count("tx \(way)")
                    if output != expected {
                        fail("sent \(way), not the model's frame\n  model: \(hex(expected))")
                    } else if way.hasPrefix("to the backend"), let flow = IPFlow(frame: frame), let seen = IPFlow(frame: output) {
                        generator.observe(flow, backend: seen.destination, source: (seen.source, seen.sourcePort))
                    }
                default:
                    count(verdictName)
                    fail("verdict \(verdictName)")
                }
            }
            let delta = try lb.nodeStats() - before
            let counted = delta.verdicts.values.reduce(0, +)
            if counted != UInt64(count) { failures.append(("the verdict counters moved by \(counted) for \(count) frames: \(delta)", [], [])) }
            return (outcomes, failures, delta)
        }
        report("NAT balancer", seed: seed, count: count, outcomes: outcomes, failures: failures)
        // Every translating path was taken, so the model's frames were compared on each.
        let paths = ["translations opened": delta.natCreated, "replies translated": delta.natReplies, "ICMP errors translated": delta.natICMP,
                     "PROXY headers written": delta.proxyHeaders, "PROXY headers written again": delta.proxyResent,
                     "SYN data removed": delta.proxyTFOTrimmed, "PROXY flows opened midstream": delta.proxyMidstream,
                     "SACK blocks translated": UInt64(outcomes["a backend's SACK: tx to the client"] ?? 0)]
        print("NAT balancer paths: " + paths.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        #expect(paths.values.allSatisfy { $0 > 0 }, "a path no frame took: \(paths)")
    }
}
