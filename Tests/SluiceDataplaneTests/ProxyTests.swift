// PROXY protocol v2 over full NAT through the real balancer (BPF_PROG_TEST_RUN): the
// header's bytes exactly as HAProxy's specification lays them out, built here from
// the spec and not from the data plane's struct; the sequence, acknowledgement, SACK
// and MSS translation both ways; the header written again when the stream's start is
// sent again; TCP Fast Open data removed. Every expected frame is built from scratch,
// so each checksum is computed by the test.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

/// The PROXY v2 header of a TCP connection (HAProxy's proxy-protocol.txt, section 2.2).
func proxyV2Header(client: IPAddress, _ clientPort: UInt16, vip: IPAddress, _ vipPort: UInt16) -> [UInt8] {
    let signature: [UInt8] = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]
    let v4 = client.family == .v4
    let addressLength = v4 ? 12 : 36
    var header = signature + [0x21, v4 ? 0x11 : 0x21, UInt8(addressLength >> 8), UInt8(addressLength & 0xff)]
    header += client.bytes + vip.bytes
    header += [UInt8(clientPort >> 8), UInt8(clientPort & 0xff), UInt8(vipPort >> 8), UInt8(vipPort & 0xff)]
    return header
}

/// A TCP frame with the sequence and acknowledgement numbers and options given.
func tcpFrame(from src: String, _ sport: UInt16, to dst: String, _ dport: UInt16, seq: UInt32, ack: UInt32,
              flags: Set<TCPFlag>, options: [UInt8] = [], payload: [UInt8] = [], macs: (src: [UInt8], dst: [UInt8])) -> [UInt8] {
    var builder = PacketBuilder()
    builder.sourceMAC = macs.src
    builder.destinationMAC = macs.dst
    builder.sequence = seq
    builder.acknowledgment = ack
    builder.tcpOptions = options
    return builder.tcp(from: src, sport, to: dst, dport, flags: flags, payload: payload)
}

func bigEndian(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)] }
/// NOP, NOP, timestamps: what every Linux segment after the handshake carries.
func timestampOptions(_ value: UInt32, echo: UInt32) -> [UInt8] { [1, 1, 8, 10] + bigEndian(value) + bigEndian(echo) }

let proxyCases = natCases.filter { $0.proto == .tcp }

/// A full-NAT balancer with `client_address: proxy-v2` on the case's service, the
/// client's connection to it, and where the balancer put it.
struct ProxyConnection {
    let lb: TestDataplane
    let c: NATCase
    let client: IPAddress
    let vip: IPAddress
    let backend: String
    let clientPort: UInt16 = 40000
    /// The client's first sequence number after its SYN (its SYN carries 1000).
    let start: UInt32 = 1001
    /// The backend's first after its SYN-ACK (which carries 5000).
    let backendStart: UInt32 = 5001
    /// The source the backend sees.
    var snat: FrameAddresses
    var headerLength: UInt32 { client.family == .v4 ? 28 : 52 }
    var header: [UInt8] { proxyV2Header(client: client, clientPort, vip: vip, c.port) }
    var key: sl_flow_key { flowKey(.tcp, from: client, clientPort, to: vip, c.port) }
    var replyKey: sl_flow_key { flowKey(.tcp, from: IPAddress(backend)!, c.backendPort, to: snat.source, snat.sourcePort) }

    /// The client's segment, as it arrives and as the backend must get it.
    func fromClient(seq: UInt32, flags: Set<TCPFlag> = [.ack], options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        tcpFrame(from: client.description, clientPort, to: vip.description, c.port, seq: seq, ack: flags.contains(.ack) ? backendStart : 0,
                 flags: flags, options: options, payload: payload, macs: (clientSideMAC, ourMAC))
    }
    func toBackend(seq: UInt32, flags: Set<TCPFlag> = [.ack], options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        tcpFrame(from: snat.source.description, snat.sourcePort, to: backend, c.backendPort, seq: seq,
                 ack: flags.contains(.ack) ? backendStart : 0, flags: flags, options: options, payload: payload,
                 macs: (ourMAC, backendHopMAC))
    }
    /// The backend's segment, as it arrives and as the client must get it.
    func fromBackend(ack: UInt32, flags: Set<TCPFlag> = [.ack], options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        tcpFrame(from: backend, c.backendPort, to: snat.source.description, snat.sourcePort,
                 seq: flags.contains(.syn) ? backendStart - 1 : backendStart, ack: ack, flags: flags, options: options,
                 payload: payload, macs: (backendHopMAC, ourMAC))
    }
    func toClient(ack: UInt32, flags: Set<TCPFlag> = [.ack], options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        tcpFrame(from: vip.description, c.port, to: client.description, clientPort,
                 seq: flags.contains(.syn) ? backendStart - 1 : backendStart, ack: ack, flags: flags, options: options,
                 payload: payload, macs: (ourMAC, clientSideMAC))
    }

    /// Opens the connection with the client's SYN (MSS 1460, `payload` as TCP Fast Open data).
    static func open(_ c: NATCase, proxy: Bool = true, payload: [UInt8] = []) async throws -> ProxyConnection {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        if proxy { try lb.dataplane.setProxyV2(of: c.service) }
        let client = IPAddress(c.client)!, vip = IPAddress(c.vip)!
        let flow = IPFlow(source: client, destination: vip, protocolNumber: 6, sourcePort: 40000, destinationPort: c.port)
        let backend = try #require(lb.model.backend(for: flow)).address.description
        let syn = tcpFrame(from: c.client, 40000, to: c.vip, c.port, seq: 1000, ack: 0, flags: [.syn], options: mssOption(1460),
                           payload: payload, macs: (clientSideMAC, ourMAC))
        let (verdict, output) = try lb.run(syn)
        #expect(verdict == XDPVerdict.tx.rawValue)
        return ProxyConnection(lb: lb, c: c, client: client, vip: vip, backend: backend, snat: FrameAddresses(output))
    }
}

@Suite("PROXY protocol v2 over full NAT", requiresRoot)
struct ProxyTests {
    @Test("The handshake's ACK carries the header to the backend; the stream after it is offset both ways", arguments: proxyCases)
    func headerAndOffsets(c: NATCase) async throws {
        let conn = try await ProxyConnection.open(c)
        let lb = conn.lb
        defer { lb.close() }
        let len = conn.headerLength
        let ct = try #require(try lb.ctEntry(conn.key))
        #expect(ct.proxy == UInt8(SL_PROXY_ON.rawValue) && ct.proxy_seq == conn.start)
        func shown() throws -> (String?, UInt32?) {
            let flow = try lb.dataplane.flows().first { $0.source == c.client && $0.sourcePort == conn.clientPort }
            return (flow?.proxy, flow?.seqOffset)
        }
        #expect(try shown() == ("owed", len), "lbctl flows before the handshake completes")
        #expect(try lb.natEntry(conn.replyKey)?.proxy_seq == conn.start)

        // The backend's SYN-ACK: its MSS leaves room for the header in front of a full segment.
        var (verdict, output, counted) = try lb.runCounted(conn.fromBackend(ack: conn.start, flags: [.syn, .ack], options: mssOption(1460)))
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output == conn.toClient(ack: conn.start, flags: [.syn, .ack], options: mssOption(1460 - UInt16(len))))
        #expect(counted == NodeStats(.tx, natReplies: 1))

        // The client's ACK completes the handshake: the backend gets the header, alone, at the start.
        (verdict, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start))
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output == conn.toBackend(seq: conn.start, payload: conn.header), "\(output) vs \(conn.toBackend(seq: conn.start, payload: conn.header))")
        #expect(counted == NodeStats(.tx, ctHits: 1, proxyHeaders: 1))
        #expect(try shown() == ("sent", len))

        // Data at the start before the backend acknowledged the header: the header again, in front.
        let request = Array("GET / HTTP/1.0\r\n\r\n".utf8)
        (verdict, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start, flags: [.ack, .psh], payload: request))
        #expect(output == conn.toBackend(seq: conn.start, flags: [.ack, .psh], payload: conn.header + request))
        #expect(counted == NodeStats(.tx, ctHits: 1, proxyResent: 1))

        // The backend acknowledges header and request: the client sees its request acknowledged.
        let acked = conn.start + len + UInt32(request.count)
        (verdict, output, counted) = try lb.runCounted(conn.fromBackend(ack: acked, options: timestampOptions(7, echo: 9)))
        #expect(output == conn.toClient(ack: acked - len, options: timestampOptions(7, echo: 9)))
        #expect(counted == NodeStats(.tx, natReplies: 1))
        let ackedFlag = UInt8(SL_PROXY_ACKED.rawValue)
        #expect((try lb.ctEntry(conn.key)?.proxy ?? 0) & ackedFlag != 0, "the client's side knows the header arrived")
        #expect((try lb.natEntry(conn.replyKey)?.proxy ?? 0) & ackedFlag != 0)
        #expect(try shown() == ("acked", len))

        // From now on only the offset: forward, and back (with timestamps, the common path).
        let next = conn.start + UInt32(request.count)
        (verdict, output, counted) = try lb.runCounted(conn.fromClient(seq: next, options: timestampOptions(10, echo: 7), payload: [1, 2, 3]))
        #expect(output == conn.toBackend(seq: next + len, options: timestampOptions(10, echo: 7), payload: [1, 2, 3]))
        #expect(counted == NodeStats(.tx, ctHits: 1))
        (verdict, output, counted) = try lb.runCounted(conn.fromBackend(ack: next + len + 3, options: timestampOptions(8, echo: 10),
                                                                         payload: [9]))
        #expect(output == conn.toClient(ack: next + 3, options: timestampOptions(8, echo: 10), payload: [9]))
        #expect(counted == NodeStats(.tx, natReplies: 1))
        // A keepalive probe of a connection idle since the start carries the byte before it: offset too.
        (verdict, output, _) = try lb.runCounted(conn.fromClient(seq: conn.start - 1))
        #expect(output == conn.toBackend(seq: conn.start - 1 + len))
        // A FIN at the start (a client that never sent data) is offset like any segment once the header is in.
        (verdict, output, _) = try lb.runCounted(conn.fromClient(seq: conn.start, flags: [.ack, .fin]))
        #expect(output == conn.toBackend(seq: conn.start + len, flags: [.ack, .fin]))
    }

    @Test("SACK edges from the backend are offset back, at an even or an odd offset in the options", arguments: proxyCases)
    func sackEdges(c: NATCase) async throws {
        let conn = try await ProxyConnection.open(c)
        let lb = conn.lb
        defer { lb.close() }
        let len = conn.headerLength
        _ = try lb.run(conn.fromClient(seq: conn.start))
        let (left, right) = (conn.start + len + 100, conn.start + len + 150)
        let (left2, right2) = (conn.start + len + 300, conn.start + len + 310)
        for (sent, seen) in [
            // NOP, NOP, SACK of two blocks: the edges at even offsets.
            ([1, 1, 5, 18] + bigEndian(left) + bigEndian(right) + bigEndian(left2) + bigEndian(right2),
             [1, 1, 5, 18] + bigEndian(left - len) + bigEndian(right - len) + bigEndian(left2 - len) + bigEndian(right2 - len)),
            // NOP, SACK of one block, NOP: the edges at odd offsets.
            ([1, 5, 10] + bigEndian(left) + bigEndian(right) + [1], [1, 5, 10] + bigEndian(left - len) + bigEndian(right - len) + [1]),
        ] as [([UInt8], [UInt8])] {
            let (verdict, output) = try lb.run(conn.fromBackend(ack: conn.start + len, options: sent))
            #expect(verdict == XDPVerdict.tx.rawValue)
            #expect(output == conn.toClient(ack: conn.start, options: seen), "checksum and edges as the test computes them")
        }
    }

    @Test("A lost header: the backend's SYN-ACK again, the client's ACK again, the header again", arguments: proxyCases)
    func lostHeaderIsSentAgain(c: NATCase) async throws {
        let conn = try await ProxyConnection.open(c)
        let lb = conn.lb
        defer { lb.close() }
        let len = conn.headerLength
        _ = try lb.run(conn.fromBackend(ack: conn.start, flags: [.syn, .ack], options: mssOption(1460)))
        var (_, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start))
        #expect(output == conn.toBackend(seq: conn.start, payload: conn.header) && counted.proxyHeaders == 1)
        // Lost on the way: the backend, still in SYN-RECEIVED, sends its SYN-ACK again ...
        (_, output, _) = try lb.runCounted(conn.fromBackend(ack: conn.start, flags: [.syn, .ack], options: mssOption(1460)))
        #expect(output == conn.toClient(ack: conn.start, flags: [.syn, .ack], options: mssOption(1460 - UInt16(len))))
        // ... the client acknowledges it again, and that ACK carries the header again.
        (_, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start))
        #expect(output == conn.toBackend(seq: conn.start, payload: conn.header))
        #expect(counted == NodeStats(.tx, ctHits: 1, proxyResent: 1))
        // Once the backend acknowledges it, the client's ACKs at the start only move by the offset.
        _ = try lb.run(conn.fromBackend(ack: conn.start + len, payload: Array("220 ready\r\n".utf8)))
        (_, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start))
        #expect(output == conn.toBackend(seq: conn.start + len))
        #expect(counted == NodeStats(.tx, ctHits: 1))
    }

    @Test("A SYN with TCP Fast Open data reaches the backend without it; the data follows the header", arguments: proxyCases)
    func fastOpenDataRemoved(c: NATCase) async throws {
        let lb = try await TestDataplane.nat(SL_FWD_FULLNAT)
        defer { lb.close() }
        try lb.dataplane.setProxyV2(of: c.service)
        let cookie: [UInt8] = [34, 10, 1, 2, 3, 4, 5, 6, 7, 8] // TFO option with an 8-byte cookie
        let syn = tcpFrame(from: c.client, 40000, to: c.vip, c.port, seq: 1000, ack: 0, flags: [.syn], options: mssOption(1460) + cookie,
                           payload: Array("early data".utf8), macs: (clientSideMAC, ourMAC))
        let (verdict, output, counted) = try lb.runCounted(syn)
        #expect(verdict == XDPVerdict.tx.rawValue)
        let seen = FrameAddresses(output)
        let backend = try #require(lb.model.backend(for: IPFlow(source: IPAddress(c.client)!, destination: IPAddress(c.vip)!,
                                                               protocolNumber: 6, sourcePort: 40000, destinationPort: c.port)))
        #expect(output == tcpFrame(from: seen.source.description, seen.sourcePort, to: backend.address.description, c.backendPort,
                                   seq: 1000, ack: 0, flags: [.syn], options: mssOption(1460) + cookie, macs: (ourMAC, backendHopMAC)))
        #expect(counted == NodeStats(.tx, newFlows: 1, natCreated: 1, proxyTFOTrimmed: 1))
    }

    @Test("The client's first data riding on the handshake's ACK gets the header in front of it, once", arguments: proxyCases)
    func dataOnTheHandshakesACK(c: NATCase) async throws {
        let conn = try await ProxyConnection.open(c)
        let lb = conn.lb
        defer { lb.close() }
        let request = Array("EHLO client\r\n".utf8)
        let (verdict, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start, flags: [.ack, .psh], payload: request))
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(output == conn.toBackend(seq: conn.start, flags: [.ack, .psh], payload: conn.header + request))
        #expect(counted == NodeStats(.tx, ctHits: 1, proxyHeaders: 1), "the connection's first header, not a resend")
    }

    @Test("Turning client_address off leaves a flow opened with the header as it was: still offset")
    func turnedOffKeepsOpenFlows() async throws {
        let conn = try await ProxyConnection.open(proxyCases[0])
        let lb = conn.lb
        defer { lb.close() }
        _ = try lb.run(conn.fromClient(seq: conn.start))
        _ = try lb.run(conn.fromBackend(ack: conn.start + conn.headerLength))
        try lb.dataplane.setProxyV2(false, of: conn.c.service)
        let (_, output) = try lb.run(conn.fromClient(seq: conn.start, payload: [7]))
        #expect(output == conn.toBackend(seq: conn.start + conn.headerLength, payload: [7]))
    }

    @Test("A flow opened before client_address was turned on keeps its numbers; one opened without its SYN gets no header")
    func flowsWithoutTheHeader() async throws {
        let c = proxyCases[0]
        let conn = try await ProxyConnection.open(c, proxy: false)
        let lb = conn.lb
        defer { lb.close() }
        try lb.dataplane.setProxyV2(of: c.service)
        var (_, output, counted) = try lb.runCounted(conn.fromClient(seq: conn.start, payload: [1]))
        #expect(output == conn.toBackend(seq: conn.start, payload: [1]), "no header, no offset")
        #expect(counted == NodeStats(.tx, ctHits: 1))

        let midstream = tcpFrame(from: c.client, 40001, to: c.vip, c.port, seq: 777, ack: 1, flags: [.ack], payload: [2],
                                 macs: (clientSideMAC, ourMAC))
        (_, output, counted) = try lb.runCounted(midstream)
        #expect(counted == NodeStats(.tx, newFlows: 1, ctMisses: 1, natCreated: 1, proxyMidstream: 1))
        let seen = FrameAddresses(output)
        #expect(output.count == midstream.count && seen.destinationPort == c.backendPort, "translated as plain full NAT")
        #expect(try lb.ctEntry(flowKey(.tcp, from: conn.client, 40001, to: conn.vip, c.port))?.proxy == 0)
    }
}
