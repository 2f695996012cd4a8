// lbctl driving the balancer on a real interface: a veth pair lb0 <-> peer0
// in a namespace the test makes. Frames written into peer0 cross to lb0, the
// XDP program tunnels VIP traffic back out with XDP_TX, and peer0 captures it.
// peer0 runs an XDP_PASS program, without which a veth drops XDP_TX frames.
import Foundation
import SluiceCore
import SluiceTestSupport
import Testing

@Suite("lbctl on a real veth")
struct LbctlInterfaceTests {
    static let clientV4 = "198.51.100.7"
    static let clientV6 = "2001:db8:c::7"
    /// Flows per address family.
    static let flowCount = 16

    /// A namespace and a bpffs for one test, removed however it ends; then
    /// checks that neither is left behind.
    func withTestbed(_ body: (TestNamespace, BPFFSMount) async throws -> Void) async throws {
        var left: (name: String, mountPoint: String)?
        try await withTestNamespace { namespace in
            let bpffs = try BPFFSMount()
            left = (namespace.name, bpffs.path)
            try await withCleanup { try await body(namespace, bpffs) } cleanup: { bpffs.close() }
        }
        guard let (name, mountPoint) = left else { return }
        #expect(!(await TestNamespace.exists(name)), "namespace \(name) is left behind")
        #expect(!isMounted(mountPoint), "bpffs \(mountPoint) is still mounted")
        #expect(!FileManager.default.fileExists(atPath: mountPoint), "\(mountPoint) is left behind")
    }

    /// lb0 <-> peer0 with XDP_PASS on peer0 and the balancer attached to lb0.
    func attachBalancer(_ namespace: TestNamespace, pin: String) async throws {
        try await namespace.addVethPair("lb0", peer: "peer0")
        try await namespace.attachXDPPass(to: "peer0")
        let attached = try await Lbctl.run("attach", "lb0", "--gateway-mac", Fixtures.gatewayMAC, pinPath: pin, in: namespace)
        try #require(attached.status == 0, "\(attached)")
        #expect(attached.stdout.contains("attached to lb0 (native mode)"), "\(attached)")
        #expect(try await namespace.xdpProgramID(of: "lb0") != nil)
    }

    /// A frame sent into peer0, and the tunnel packet it came back as.
    struct Exchange {
        var sent: [UInt8]
        var tunnel: TunnelFrame?
        var flow: IPFlow
    }

    @Test("attached to a veth, the balancer tunnels VIP frames back to the gateway; stats, flows and detach follow")
    func balancesRealFrames() async throws {
        try await withTestbed { namespace, bpffs in
            let pin = "\(bpffs.path)/lb"
            let files = try ScratchDirectory()
            try await attachBalancer(namespace, pin: pin)
            let applied = try await Lbctl.run("apply", "-f", try files.write("good.yaml", Fixtures.good), pinPath: pin, in: namespace)
            try #require(applied.status == 0, "\(applied)")

            let lbMAC = try await namespace.macAddress(of: "lb0")
            var builder = PacketBuilder()
            builder.destinationMAC = lbMAC
            builder.sourceMAC = try await namespace.macAddress(of: "peer0")
            let socket = try await RawSocket.open(interface: "peer0", in: namespace)

            // Frames that are not for a VIP go to the kernel and never come back.
            let strangers = [
                builder.tcp(from: Self.clientV4, 40000, to: "192.0.2.99", 80, payload: Array("sluice-stranger-addr".utf8)),
                builder.tcp(from: Self.clientV4, 40001, to: Fixtures.webVIP, 81, payload: Array("sluice-stranger-port".utf8)),
                builder.udp(from: Self.clientV4, 40002, to: Fixtures.webVIP, 80, payload: Array("sluice-stranger-udp".utf8)),
            ]
            for frame in strangers { try socket.send(frame) }

            // Each flow: a SYN, then its ACK (placed by Maglev on the same backend and
            // recorded), then a segment that conntrack must send there.
            var exchanges: [Exchange] = []
            for round in [Set<TCPFlag>([.syn]), [.ack], [.ack, .psh]] {
                for index in 0..<Self.flowCount {
                    let tag = round.contains(.syn) ? "syn" : round.contains(.psh) ? "data" : "ack"
                    for (client, vip, port) in [(Self.clientV4, Fixtures.webVIP, UInt16(80)),
                                                (Self.clientV6, Fixtures.web6VIP, UInt16(443))] {
                        let frame = builder.tcp(from: client, UInt16(41000 + index), to: vip, port, flags: round,
                                                payload: Array("sluice-\(tag)-\(index)-\(client)".utf8))
                        try socket.send(frame)
                        exchanges.append(Exchange(sent: frame, tunnel: nil, flow: try #require(IPFlow(frame: frame))))
                    }
                }
            }

            let captured = try await socket.receiveAll(for: .seconds(5)) { frames in
                frames.count(where: { (try? TunnelFrame($0.bytes)) != nil }) >= exchanges.count
            } + (try await socket.receiveAll(for: .milliseconds(300)))
            let tunnels = captured.compactMap { try? TunnelFrame($0.bytes) }
            for index in exchanges.indices {
                let innerPacket = Array(exchanges[index].sent[14...])
                exchanges[index].tunnel = tunnels.first { $0.inner == innerPacket }
            }

            // Every VIP frame came back once, tunnelled to a configured backend from the node source.
            #expect(tunnels.count == exchanges.count, "captured \(captured.count) frames, \(tunnels.count) tunnels")
            for exchange in exchanges {
                guard let tunnel = exchange.tunnel else {
                    Issue.record("no tunnel packet came back for \(exchange.flow)")
                    continue
                }
                let v4 = exchange.flow.source.family == .v4
                #expect(tunnel.destinationMAC == MACAddress(Fixtures.gatewayMAC)?.bytes)
                #expect(tunnel.sourceMAC == lbMAC)
                #expect(tunnel.outerSource == IPAddress(v4 ? Fixtures.sourceV4 : Fixtures.sourceV6))
                let backends = (v4 ? Fixtures.webBackends : Fixtures.web6Backends).compactMap(IPAddress.init)
                #expect(backends.contains(tunnel.outerDestination), "\(exchange.flow) went to \(tunnel.outerDestination)")
                #expect(tunnel.innerFlow == exchange.flow)
            }
            var backendOf: [IPFlow: IPAddress] = [:]
            for exchange in exchanges {
                guard let destination = exchange.tunnel?.outerDestination else { continue }
                if let first = backendOf.updateValue(destination, forKey: exchange.flow) {
                    #expect(first == destination, "\(exchange.flow): the ACK went to \(destination), the SYN to \(first)")
                }
            }
            for frame in captured {
                for stranger in strangers {
                    #expect(!frame.bytes.containsBytes(Array(stranger[(stranger.count - 12)...])),
                            "a frame that is not for a VIP came back")
                }
            }

            try await checkStats(namespace, pin: pin)
            try await checkFlows(namespace, pin: pin, backendOf: backendOf)
            try await checkStatus(namespace, pin: pin)
            try await checkExplain(namespace, pin: pin, backendOf: backendOf, lbMAC: lbMAC)

            // Attaching again is a no-op.
            let again = try await Lbctl.run("attach", "lb0", "--gateway-mac", Fixtures.gatewayMAC, pinPath: pin, in: namespace)
            #expect(again.status == 0, "\(again)")
            #expect(again.stdout.contains("already attached to lb0"), "\(again)")

            // Another program on a second interface is refused and left in place.
            try await namespace.addVethPair("lb1", peer: "peer1")
            let other = try await namespace.attachXDPPass(to: "lb1")
            let refused = try await Lbctl.run("attach", "lb1", "--gateway-mac", Fixtures.gatewayMAC, pinPath: pin, in: namespace)
            #expect(refused.status == 1, "\(refused)")
            #expect(refused.stderr.contains("lb1") && refused.stderr.contains(XDPPassProgram.name)
                    && refused.stderr.contains("\(other)"), "\(refused)")
            #expect(try await namespace.xdpProgramID(of: "lb1") == other)

            // Detach removes the program from lb0 and, with it attached nowhere else, the pins.
            let detached = try await Lbctl.run("detach", "lb0", pinPath: pin, in: namespace)
            #expect(detached.status == 0, "\(detached)")
            #expect(detached.stdout.contains("detached from lb0"), "\(detached)")
            #expect(try await namespace.xdpProgramID(of: "lb0") == nil)
            #expect(try await namespace.link("lb0")["xdp"] == nil)
            #expect(!FileManager.default.fileExists(atPath: pin), "the pins are removed")
            #expect(try await namespace.xdpProgramID(of: "lb1") == other, "detach leaves other programs alone")
            let status = try await Lbctl.run("status", pinPath: pin, in: namespace)
            #expect(status.status == 1, "\(status)")
        }
    }

    /// Counters match the frames sent exactly: nothing else reaches a VIP.
    func checkStats(_ namespace: TestNamespace, pin: String) async throws {
        let result = try await Lbctl.run("stats", "--json", pinPath: pin, in: namespace)
        try #require(result.status == 0, "\(result)")
        let stats = try #require(try result.json() as? [String: Any])
        expectStatsKeys(stats)
        let perFamily = 3 * Self.flowCount
        let verdicts = stats["verdicts"] as? [String: Int] ?? [:]
        #expect(verdicts["tx"] == 2 * perFamily, "\(verdicts)")
        #expect((verdicts["pass"] ?? 0) >= 3, "the three strangers are passed: \(verdicts)")
        #expect(verdicts["drop"] == 0 && verdicts["aborted"] == 0, "\(verdicts)")
        // Each flow's SYN is placed and records nothing; its ACK misses and records it; its
        // data segment is a hit.
        #expect(stats["new_flows"] as? Int == 2 * Self.flowCount)
        #expect(stats["conntrack_hits"] as? Int == 2 * Self.flowCount)
        #expect(stats["conntrack_misses"] as? Int == 2 * Self.flowCount)
        #expect((stats["drops"] as? [String: Int] ?? [:]).values.allSatisfy { $0 == 0 }, "\(stats["drops"] ?? "")")
        let services = stats["services"] as? [[String: Any]] ?? []
        #expect(services.map { $0["name"] as? String } == ["web", "web6"])
        for service in services {
            #expect(service["packets"] as? Int == perFamily, "\(service)")
            #expect((service["bytes"] as? Int ?? 0) > 0, "\(service)")
            let backends = service["backends"] as? [[String: Any]] ?? []
            #expect(backends.reduce(0) { $0 + ($1["packets"] as? Int ?? 0) } == perFamily, "\(service)")
        }
    }

    /// One flow per (client, port, VIP), on the backend its packets went to.
    func checkFlows(_ namespace: TestNamespace, pin: String, backendOf: [IPFlow: IPAddress]) async throws {
        let result = try await Lbctl.run("flows", "--json", pinPath: pin, in: namespace)
        try #require(result.status == 0, "\(result)")
        let flows = try #require(try result.json() as? [[String: Any]])
        #expect(flows.count == 2 * Self.flowCount, "\(result.stdout)")
        for flow in flows {
            expectKeys(flow, ["protocol", "source", "source_port", "destination", "destination_port", "service",
                              "backend", "backend_id"], in: "flows[]")
            guard let source = (flow["source"] as? String).flatMap(IPAddress.init),
                  let destination = (flow["destination"] as? String).flatMap(IPAddress.init),
                  let sourcePort = flow["source_port"] as? Int, let destinationPort = flow["destination_port"] as? Int else {
                Issue.record("unreadable flow \(flow)")
                continue
            }
            let key = IPFlow(source: source, destination: destination, protocolNumber: 6,
                             sourcePort: UInt16(sourcePort), destinationPort: UInt16(destinationPort))
            #expect(flow["protocol"] as? String == "tcp")
            #expect(flow["service"] as? String == (source.family == .v4 ? "web" : "web6"), "\(flow)")
            #expect(flow["backend"] as? String == backendOf[key]?.description, "\(key): \(flow)")
            #expect(flow["backend_id"] is Int)
        }
    }

    /// explain names the recorded backend of open flows, the stranger's pass, and bad input.
    func checkExplain(_ namespace: TestNamespace, pin: String, backendOf: [IPFlow: IPAddress], lbMAC: [UInt8]) async throws {
        for (flow, backend) in backendOf.prefix(4) {
            let v6 = flow.source.family == .v6
            func endpoint(_ address: IPAddress, _ port: UInt16) -> String { v6 ? "[\(address)]:\(port)" : "\(address):\(port)" }
            let result = try await Lbctl.run("explain", "tcp", endpoint(flow.source, flow.sourcePort),
                                             endpoint(flow.destination, flow.destinationPort), "--json", pinPath: pin, in: namespace)
            try #require(result.status == 0, "\(result)")
            let e = try #require(try result.json() as? [String: Any])
            expectKeys(e, ["packet", "verdict", "drop_reason", "reason", "steps", "service", "flow", "placement", "backend",
                           "forwarding", "output", "records", "notes"], in: "explain")
            #expect(e["verdict"] as? String == "tx", "\(result.stdout)")
            let flowEntry = e["flow"] as? [String: Any]
            #expect(flowEntry?["table"] as? String == "sl_conntrack" && flowEntry?["origin"] as? String == "local", "\(result.stdout)")
            #expect((e["placement"] as? [String: Any])?["by"] as? String == "conntrack")
            #expect((e["backend"] as? [String: Any])?["address"] as? String == backend.description, "\(result.stdout)")
            #expect((e["service"] as? [String: Any])?["name"] as? String == (v6 ? "web6" : "web"))
            let output = e["output"] as? [String: Any]
            #expect(output?["ethernet_source"] as? String == MACAddress(bytes: lbMAC)?.description, "lb0's MAC: \(result.stdout)")
            let outer = output?["outer"] as? [String: Any]
            #expect(outer?["destination"] as? String == backend.description)
            #expect(outer?["source"] as? String == (v6 ? Fixtures.sourceV6 : Fixtures.sourceV4))
        }
        let stranger = try await Lbctl.run("explain", "tcp", "\(Self.clientV4):40001", "\(Fixtures.webVIP):81", pinPath: pin, in: namespace)
        #expect(stranger.status == 0 && stranger.stdout.contains("verdict: pass"), "\(stranger)")
        for (args, named) in [(["tcp", "\(Self.clientV4)", "\(Fixtures.webVIP):80"], "SRC"),
                              (["sctp", "\(Self.clientV4):1", "\(Fixtures.webVIP):80"], "PROTO"),
                              (["udp", "\(Self.clientV4):1", "[\(Fixtures.web6VIP)]:443"], "SRC"),
                              (["tcp", "\(Self.clientV4):1", "2001:db8::1:80"], "DST")] {
            let bad = try await Lbctl.run(["explain"] + args + ["--pin-path", pin], in: namespace)
            #expect(bad.status == 2 && bad.stderr.contains(named), "\(args): \(bad)")
        }
    }

    /// Every documented key, now that the gateway and both sources are set.
    func checkStatus(_ namespace: TestNamespace, pin: String) async throws {
        let result = try await Lbctl.run("status", "--json", pinPath: pin, in: namespace)
        try #require(result.status == 0, "\(result)")
        let report = try #require(try result.json() as? [String: Any])
        expectKeys(report, ["pin_path", "program_id", "interfaces", "node", "services"], in: "status")
        let interfaces = report["interfaces"] as? [[String: Any]] ?? []
        #expect(interfaces.map { $0["name"] as? String } == ["lb0"])
        #expect(interfaces.first?["mode"] as? String == "native")
        let node = report["node"] as? [String: Any]
        expectKeys(node, ["source_v4", "source_v6", "gateway_mac", "maglev_table_size"], in: "status.node")
        #expect(node?["gateway_mac"] as? String == Fixtures.gatewayMAC)
        #expect(node?["source_v4"] as? String == Fixtures.sourceV4)
        #expect(node?["source_v6"] as? String == Fixtures.sourceV6)
        for service in report["services"] as? [[String: Any]] ?? [] {
            expectKeys(service, ["name", "vip", "port", "protocol", "forwarding", "maglev_table_size", "generation", "backends"],
                       in: "status.services[]")
            for backend in service["backends"] as? [[String: Any]] ?? [] {
                expectKeys(backend, ["address", "weight", "state", "id"], in: "status.services[].backends[]")
                #expect(backend["state"] as? String == "active")
            }
        }
    }

    /// Sends one frame into peer0 and returns the tunnel packet that carries it back, if one comes.
    func roundTrip(_ socket: RawSocket, _ frame: [UInt8]) async throws -> TunnelFrame? {
        socket.drain()
        try socket.send(frame)
        let inner = Array(frame[14...])
        let frames = try await socket.receiveAll(for: .seconds(2)) { frames in
            frames.contains { (try? TunnelFrame($0.bytes))?.inner == inner }
        }
        return frames.lazy.compactMap { try? TunnelFrame($0.bytes) }.first { $0.inner == inner }
    }

    @Test("services added, removed and renamed in one apply keep their VIPs balanced")
    func reshapedServicesStayBalanced() async throws {
        try await withTestbed { namespace, bpffs in
            let pin = "\(bpffs.path)/lb"
            let files = try ScratchDirectory()
            try await attachBalancer(namespace, pin: pin)
            var builder = PacketBuilder()
            builder.destinationMAC = try await namespace.macAddress(of: "lb0")
            builder.sourceMAC = try await namespace.macAddress(of: "peer0")
            let socket = try await RawSocket.open(interface: "peer0", in: namespace)

            for (name, text) in [("good", Fixtures.good), ("changed", Fixtures.changed),
                                 ("renamed", Fixtures.changed.replacingOccurrences(of: "name: web\n", with: "name: www\n"))] {
                let applied = try await Lbctl.run("apply", "-f", try files.write("\(name).yaml", text), pinPath: pin, in: namespace)
                try #require(applied.status == 0, "\(applied)")
                let web = try await roundTrip(socket, builder.tcp(from: Self.clientV4, 42000, to: Fixtures.webVIP, 80,
                                                                  payload: Array("sluice-web-\(name)".utf8)))
                #expect(web.map { ["10.1.0.1", "10.1.0.2", "10.1.0.3"].contains($0.outerDestination.description) } == true,
                        "after \(name): the web VIP is not balanced (\(String(describing: web?.outerDestination)))")
                if name != "good" {
                    let dns = try await roundTrip(socket, builder.udp(from: Self.clientV4, 42001, to: "192.0.2.53", 53,
                                                                      payload: Array("sluice-dns-\(name)".utf8)))
                    #expect(dns?.outerDestination.description == "10.1.0.9",
                            "after \(name): the dns VIP is not balanced (\(String(describing: dns?.outerDestination)))")
                }
            }
        }
    }

    @Test("attach refuses an interface that runs another XDP program, names it and leaves it there")
    func attachRefusesAForeignProgram() async throws {
        try await withTestbed { namespace, bpffs in
            let pin = "\(bpffs.path)/lb"
            try await namespace.addVethPair("lb1", peer: "peer1")
            let other = try await namespace.attachXDPPass(to: "lb1")

            let refused = try await Lbctl.run("attach", "lb1", "--gateway-mac", Fixtures.gatewayMAC, pinPath: pin, in: namespace)
            #expect(refused.status == 1, "\(refused)")
            #expect(refused.stderr.contains("lb1") && refused.stderr.contains(XDPPassProgram.name)
                    && refused.stderr.contains("id \(other)"), "\(refused)")
            #expect(try await namespace.xdpProgramID(of: "lb1") == other)
            #expect(!FileManager.default.fileExists(atPath: pin), "nothing is loaded for a refused attach")

            let detach = try await Lbctl.run("detach", "lb1", pinPath: pin, in: namespace)
            #expect(detach.status == 1, "detach leaves a foreign program alone: \(detach)")
            #expect(try await namespace.xdpProgramID(of: "lb1") == other)
        }
    }
}
