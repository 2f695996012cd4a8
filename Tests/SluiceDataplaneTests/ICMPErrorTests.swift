// Inbound ICMP errors through the real balancer: an error about a VIP flow's
// reply (quoting VIP -> client) reaches the backend that owns the flow; other
// ICMP passes to the kernel untouched.

import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

let routerV4 = "192.0.2.99"
let routerV6 = "2001:db8:99::1"

/// The reply packet of a flow as a router quotes it: VIP:port -> client:cport, cut to `keep` bytes.
func quotedReply(vip: String, port: UInt16, client: String, clientPort: UInt16, keep: Int) -> [UInt8] {
    let reply = PacketBuilder().tcp(from: vip, port, to: client, clientPort, flags: [.ack],
                                    payload: Array(repeating: 9, count: 1400))
    return Array(reply[14..<(14 + keep)])
}

@Suite("Inbound ICMP errors", requiresRoot)
struct ICMPErrorTests {
    @Test("an ICMP error about a flow's reply is steered to the flow's backend", arguments: [
        (SL_FWD_IPIP.rawValue, false), (SL_FWD_GUE.rawValue, false), (SL_FWD_L2DSR.rawValue, false),
        (SL_FWD_IPIP.rawValue, true), (SL_FWD_GUE.rawValue, true),
    ])
    func steered(mode: UInt32, v6: Bool) async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        let (service, client, vip, port, router) = v6 ? ("web6", clientV6, "2001:db8::80", UInt16(443), routerV6)
                                                      : ("web", clientV4, "198.51.100.10", UInt16(80), routerV4)
        // The flow is placed by its SYN and recorded by its handshake's ACK while the service
        // tunnels with IP-in-IP.
        let syn = PacketBuilder().tcp(from: client, 42000, to: vip, port)
        let ack = PacketBuilder().tcp(from: client, 42000, to: vip, port, flags: [.ack])
        let backend = try TunnelFrame(lb.run(syn).output).outerDestination
        let (_, established, recorded) = try lb.runCounted(ack)
        #expect(try TunnelFrame(established).outerDestination == backend, "the ACK goes where the SYN went")
        #expect(recorded == NodeStats(.tx, newFlows: 1, ctMisses: 1), "the ACK records the flow: \(recorded)")
        try lb.setForwarding(sl_forwarding(mode), of: service, mac: backendMAC)
        try lb.setTunnel(mtu: 1500)
        // Even with its table changed, conntrack names the flow's backend.
        var file = lb.serviceFile
        let index = file.services.firstIndex { $0.name == service }!
        for i in file.services[index].backends.indices where file.services[index].backends[i].address != backend {
            file.services[index].backends[i].weight = 9
        }
        try lb.apply(file)
        try lb.setForwarding(sl_forwarding(mode), of: service, mac: backendMAC)
        let quote = quotedReply(vip: vip, port: port, client: client, clientPort: 42000, keep: v6 ? 1232 : 548)
        let error = v6 ? PacketBuilder().icmpError(from: router, to: vip, type: 2, code: 0, rest: 1400, quoting: quote)
                       : PacketBuilder().icmpError(from: router, to: vip, type: 3, code: 4, rest: 1400, quoting: quote)
        let (verdict, output, counted) = try lb.runCounted(error)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(counted == NodeStats(.tx, ctHits: 0, icmpSteered: 1), "\(counted)")
        switch UInt32(mode) {
        case SL_FWD_L2DSR.rawValue:
            #expect(output == backendMAC + Array(error[0..<6]) + Array(error[12...]))
        case SL_FWD_GUE.rawValue:
            let sport = output.be16(gueUDPOffset(output))
            #expect(output == expectedGUEFrame(input: error, backend: backend, node: lb.serviceFile.node, sport: sport))
            // The flow's own packets take the same tunnel source port.
            #expect(try lb.run(ack).output.be16(gueUDPOffset(output)) == sport)
        default:
            #expect(output == expectedTunnelFrame(input: error, backend: backend, node: lb.serviceFile.node))
        }
    }

    @Test("an ICMP error about a flow conntrack does not know goes where Maglev puts the flow")
    func steeredByMaglev() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        let quote = quotedReply(vip: "198.51.100.10", port: 80, client: clientV4, clientPort: 42001, keep: 28)
        let error = PacketBuilder().icmpError(from: routerV4, to: "198.51.100.10", type: 11, code: 0, quoting: quote)
        let (verdict, output, counted) = try lb.runCounted(error)
        #expect(verdict == XDPVerdict.tx.rawValue)
        #expect(counted == NodeStats(.tx, icmpSteered: 1), "no flow is recorded for it")
        let flow = IPFlow(source: IPAddress(clientV4)!, destination: IPAddress("198.51.100.10")!, protocolNumber: 6,
                          sourcePort: 42001, destinationPort: 80)
        #expect(try TunnelFrame(output).outerDestination == lb.model.backend(for: flow)?.address)
    }

    @Test("ICMP that is not an error about a VIP's flow passes untouched")
    func passed() async throws {
        let lb = try await TestDataplane.make(yaml: Config.standard)
        defer { lb.close() }
        let b = PacketBuilder()
        let frames = [
            b.icmpEcho(from: clientV4, to: "198.51.100.10"),
            b.icmpEcho(from: clientV6, to: "2001:db8::80"),
            // About a port no service has, and about another address.
            b.icmpError(from: routerV4, to: "198.51.100.10", type: 3, code: 4, rest: 1400,
                        quoting: quotedReply(vip: "198.51.100.10", port: 81, client: clientV4, clientPort: 1, keep: 28)),
            b.icmpError(from: routerV4, to: "198.51.100.99", type: 3, code: 1,
                        quoting: quotedReply(vip: "198.51.100.99", port: 80, client: clientV4, clientPort: 1, keep: 28)),
            // A quote too short to hold the ports.
            b.icmpError(from: routerV4, to: "198.51.100.10", type: 3, code: 4,
                        quoting: quotedReply(vip: "198.51.100.10", port: 80, client: clientV4, clientPort: 1, keep: 22)),
            // A redirect (type 5) is no error about a flow.
            b.icmpError(from: routerV4, to: "198.51.100.10", type: 5, code: 1,
                        quoting: quotedReply(vip: "198.51.100.10", port: 80, client: clientV4, clientPort: 1, keep: 28)),
        ]
        for frame in frames {
            let (verdict, output, counted) = try lb.runCounted(frame)
            #expect(verdict == XDPVerdict.pass.rawValue)
            #expect(output == frame)
            #expect(counted == NodeStats(.pass))
        }
    }
}
