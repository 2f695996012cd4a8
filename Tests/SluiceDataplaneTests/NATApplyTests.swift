// What apply writes for nat and fullnat, read back from the maps, on a balancer attached to a
// veth in a namespace of its own: each backend slot's port, next-hop MAC (the backend's when
// on-link, the gateway's behind a route), our MAC and the interface; the SNAT pools with each
// address kept in its slot; the prefilter's reply bits, kept while a removed backend's slot holds it;
// the diff of a changed port; and refusals that write nothing. The neighbours are permanent
// entries, so nothing waits on ARP but the one backend left unresolved on purpose.
import CSluice
import Foundation
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing


private func file(apiPort: Int = 8443, snat: String = "[192.0.2.20, 192.0.2.21]", extraBackend: String = "",
                  withAPI: Bool = true, clientAddress: String = "none") -> String {
    let api = """
          - name: api
            vip: 198.51.100.20
            port: 443
            protocol: tcp
            forwarding: fullnat
            client_address: \(clientAddress)
            backends: [ {address: 10.2.0.11, port: \(apiPort)}, {address: 10.77.0.2}\(extraBackend) ]

        """
    return """
        node:
          maglev_table_size: 251
          snat_v4: \(snat)
          snat_ports: 20000-29999
        services:
        \(withAPI ? api : "")  - name: dns
            vip: 198.51.100.21
            port: 53
            protocol: udp
            forwarding: nat
            backends: [ {address: 10.2.0.12, port: 5353} ]
        """
}

/// One backend slot as the test reads it back.
private struct Slot: Sendable, Equatable {
    var forwarding: UInt8
    var port: UInt16
    var mac: String?
    var sourceMAC: String?
    var ifindex: UInt32
}

/// What one step of the test saw, carried out of the namespace's thread.
private struct Seen: Sendable {
    var slots: [String: Slot] = [:]
    var pool: [String] = []
    var ports: [UInt16] = []
    var replyBits: [String: Bool] = [:]
    var lines: [String] = []
    var bytes = 0
    var unresolved: [String] = []
    /// By service: sl_vips' flags, sl_service_info's copy of them, the table's generation,
    /// and the client address the applied state reads back.
    var vipFlags: [String: UInt8] = [:]
    var infoFlags: [String: UInt8] = [:]
    var generations: [String: UInt32] = [:]
    var clientAddresses: [String: ClientAddress] = [:]
    var error: String?
}

@Suite(requiresRoot)
struct NATApplyTests {
    private static let backends = ["10.2.0.11:8443", "10.2.0.11:9443", "10.77.0.2:443", "10.2.0.12:5353", "10.77.0.9:443",
                                   "10.3.0.5:443"]

    /// Applies `yaml` (a dry run when asked) and reads back what the tests check.
    private static func step(_ lb: TestDataplane, _ yaml: String, dryRun: Bool = false) -> Seen {
        var seen = Seen()
        do {
            let desired = try ServiceFileParser.parse(yaml, file: "test.yaml")
            let result = dryRun ? try lb.dataplane.apply(desired, dryRun: true) : try lb.apply(desired)
            seen.lines = result.diff.lines
            seen.bytes = result.bytesWritten
            seen.unresolved = result.unresolved.map(\.description)
        } catch {
            seen.error = "\(error)"
        }
        do {
            for service in try lb.appliedState().services {
                let name = service.service.name
                seen.vipFlags[name] = try lb.dataplane[.vips].lookup(sl_vip_key(service: service.service), as: sl_vip.self)?.flags
                seen.infoFlags[name] = try lb.dataplane[.services].lookup(service.slot, as: sl_service_info.self)?.vip_flags
                seen.generations[name] = service.generation
                seen.clientAddresses[name] = service.service.clientAddress
                for backend in service.backends {
                    guard let slot = try lb.dataplane[.backends].lookup(backend.id, as: sl_backend.self) else { continue }
                    let mac = { (bytes: [UInt8]) in bytes.allSatisfy { $0 == 0 } ? nil : MACAddress(bytes: bytes)?.description }
                    seen.slots["\(backend.address):\(UInt16(bigEndian: slot.port) == 0 ? service.service.port : UInt16(bigEndian: slot.port))"] =
                        Slot(forwarding: slot.forwarding, port: UInt16(bigEndian: slot.port),
                             mac: mac(withUnsafeBytes(of: slot.mac) { Array($0) }),
                             sourceMAC: mac(withUnsafeBytes(of: slot.src_mac) { Array($0) }), ifindex: slot.ifindex)
                }
            }
            let pool = try lb.dataplane[.snatPools].lookup(UInt32(0), as: sl_snat_pool.self) ?? sl_snat_pool()
            let words = withUnsafeBytes(of: pool.addr) { Array($0.bindMemory(to: UInt32.self)) }
            seen.pool = (0..<Int(pool.count)).compactMap {
                IPAddress(words: (words[$0 * 4], words[$0 * 4 + 1], words[$0 * 4 + 2], words[$0 * 4 + 3]), family: .v4)?.description
            }
            seen.ports = [pool.port_min, pool.port_max]
            let filter = VIPFilter(words: try lb.dataplane[.vipFilter].arrayValues(as: UInt64.self))
            for endpoint in backends {
                let parts = endpoint.split(separator: ":")
                let proto = endpoint.hasSuffix(":5353") ? L4Protocol.udp.number : L4Protocol.tcp.number
                seen.replyBits[endpoint] = filter.mayBeReply(address: IPAddress(String(parts[0]))!, port: UInt16(parts[1])!,
                                                             protocolNumber: proto)
            }
        } catch {
            seen.error = (seen.error ?? "") + " reading back: \(error)"
        }
        return seen
    }

    @Test func clientAddressIsWrittenIntoTheVIPAndTurningItOnOrOffKeepsTheTable() async throws {
        let seen = try await withAttachedNATBalancer { lb, _, _ in
            [Self.step(lb, file()), Self.step(lb, file(clientAddress: "proxy-v2"), dryRun: true),
             Self.step(lb, file(clientAddress: "proxy-v2")), Self.step(lb, file(clientAddress: "proxy-v2")),
             Self.step(lb, file())]
        }
        let (off, dry, on, again, offAgain) = (seen[0], seen[1], seen[2], seen[3], seen[4])
        for step in seen { #expect(step.error == nil, "\(step.error ?? "")") }
        let flag = UInt8(SL_VIP_F_PROXY_V2.rawValue)
        #expect(off.vipFlags["api"] == 0 && off.clientAddresses["api"] == ClientAddress.none)
        #expect(dry.lines.contains { $0.contains("client_address none -> proxy-v2") }, "\(dry.lines)")
        #expect(dry.vipFlags["api"] == 0, "a dry run writes nothing")
        #expect(on.vipFlags["api"] == flag && on.infoFlags["api"] == flag && on.clientAddresses["api"] == .proxyV2)
        #expect(on.vipFlags["dns"] == 0, "only the service that asks for it")
        #expect(on.generations["api"] == off.generations["api"], "the Maglev table stays: placement does not change")
        #expect(again.lines.isEmpty && again.bytes == 0, "applied once, nothing more to write: \(again.lines)")
        #expect(offAgain.vipFlags["api"] == 0 && offAgain.clientAddresses["api"] == ClientAddress.none)
    }

    @Test func applyWritesTheNextHopsPortsPoolAndReplyBitsAndAPortChangeIsADiff() async throws {
        let seen = try await withAttachedNATBalancer { lb, _, _ in
            [Self.step(lb, file()), Self.step(lb, file()), Self.step(lb, file(apiPort: 9443), dryRun: true),
             Self.step(lb, file(apiPort: 9443)), Self.step(lb, file(withAPI: false))]
        }
        let (first, again, dry, moved, removed) = (seen[0], seen[1], seen[2], seen[3], seen[4])
        #expect(first.error == nil, "\(first.error ?? "")")
        let fullnat = UInt8(SL_FWD_FULLNAT.rawValue), nat = UInt8(SL_FWD_NAT.rawValue)
        let behindGateway = try #require(first.slots["10.2.0.11:8443"])
        #expect(behindGateway.forwarding == fullnat && behindGateway.port == 8443)
        #expect(behindGateway.mac == gatewayMAC, "a routed backend's frames go to its gateway")
        #expect(behindGateway.sourceMAC != nil && behindGateway.ifindex != 0)
        let onLink = try #require(first.slots["10.77.0.2:443"])
        #expect(onLink.port == 443, "no port named: the service's")
        #expect(onLink.mac == onLinkMAC, "an on-link backend's frames go to it")
        #expect(onLink.sourceMAC == behindGateway.sourceMAC && onLink.ifindex == behindGateway.ifindex)
        #expect(first.slots["10.2.0.12:5353"]?.forwarding == nat && first.slots["10.2.0.12:5353"]?.port == 5353)
        #expect(first.pool == ["192.0.2.20", "192.0.2.21"] && first.ports == [20000, 29999])
        for endpoint in ["10.2.0.11:8443", "10.77.0.2:443", "10.2.0.12:5353"] {
            #expect(first.replyBits[endpoint] == true, "reply bit of \(endpoint)")
        }
        #expect(first.unresolved.isEmpty, "\(first.unresolved)")

        #expect(again.lines.isEmpty && again.bytes == 0, "the same file again writes nothing: \(again.lines) \(again.bytes)")

        #expect(dry.lines == ["~ service api: port 10.2.0.11 8443 -> 9443"])
        #expect(dry.bytes == 0 && dry.slots["10.2.0.11:8443"]?.port == 8443, "a dry run writes nothing")

        #expect(moved.lines == ["~ service api: port 10.2.0.11 8443 -> 9443"])
        #expect(moved.slots["10.2.0.11:9443"]?.port == 9443)
        #expect(moved.replyBits["10.2.0.11:9443"] == true)
        let unrelated = VIPFilter(services: try ServiceFileParser.parse(file(apiPort: 9443), file: "t").services)
        if !unrelated.mayBeReply(address: IPAddress("10.2.0.11")!, port: 8443, protocolNumber: 6) {
            #expect(moved.replyBits["10.2.0.11:8443"] == false, "the old port's reply bit is cleared")
        }

        #expect(removed.error == nil, "\(removed.error ?? "")")
        #expect(removed.replyBits["10.2.0.12:5353"] == true)
        // The removed service's backends keep established flows: their replies still translate.
        for endpoint in ["10.2.0.11:9443", "10.77.0.2:443"] {
            #expect(removed.replyBits[endpoint] == true, "\(endpoint)'s reply bit stays while its slot holds it")
        }
    }

    @Test func theSNATPoolKeepsEachAddressInItsSlotAndTheRangeIsWritten() async throws {
        let seen = try await withAttachedNATBalancer { lb, _, _ in
            [Self.step(lb, file(snat: "[192.0.2.20, 192.0.2.21, 192.0.2.22]")),
             Self.step(lb, file(snat: "[192.0.2.22, 192.0.2.20, 192.0.2.23]")),
             Self.step(lb, file(snat: "[192.0.2.23]"))]
        }
        #expect(seen[0].pool == ["192.0.2.20", "192.0.2.21", "192.0.2.22"])
        #expect(seen[1].pool == ["192.0.2.20", "192.0.2.23", "192.0.2.22"], "the new address takes the freed slot")
        #expect(seen[1].lines == ["~ node: snat_v4 [192.0.2.20, 192.0.2.21, 192.0.2.22] -> [192.0.2.22, 192.0.2.20, 192.0.2.23]"])
        #expect(seen[2].pool == ["192.0.2.23"], "a shrinking pool moves the last address down")
        #expect(seen[2].ports == [20000, 29999])
    }

    @Test func aNATBackendWithNoRouteThroughTheBalancerIsRefusedAndAnUnresolvedOneReported() async throws {
        let seen = try await withAttachedNATBalancer { lb, _, _ in
            [Self.step(lb, file()),
             Self.step(lb, file(extraBackend: ", {address: 203.0.113.5}")),
             Self.step(lb, file(extraBackend: ", {address: 10.77.0.9}, {address: 10.3.0.5}"))]
        }
        let refused = seen[1]
        #expect(refused.error?.contains(#"service "api": backend 203.0.113.5 has no route through lb0"#) == true, "\(refused.error ?? "")")
        #expect(refused.slots.keys.sorted() == seen[0].slots.keys.sorted(), "nothing was written")
        let unresolved = seen[2]
        #expect(unresolved.error == nil, "\(unresolved.error ?? "")")
        #expect(unresolved.unresolved == [
            #"service "api": backend 10.77.0.9 has no neighbour entry on lb0 (MAC unresolved: its packets are dropped as no_neighbour until it answers)"#,
            #"service "api": backend 10.3.0.5: its gateway 10.77.0.253 has no neighbour entry on lb0 (MAC unresolved: the backend's packets are dropped as no_neighbour until the gateway answers)"#,
        ])
        #expect(unresolved.slots["10.77.0.9:443"]?.mac == nil, "applied with a zero MAC")
        #expect(unresolved.slots["10.77.0.9:443"]?.forwarding == UInt8(SL_FWD_FULLNAT.rawValue))
        #expect(unresolved.slots["10.3.0.5:443"]?.mac == nil && unresolved.slots["10.3.0.5:443"]?.ifindex != 0)
    }

    @Test func aGatewaysNewMACReachesEveryBackendBehindItOnTheAgentsRefresh() async throws {
        let newMAC = "02:00:00:77:01:fe"
        let seen = try await withAttachedNATBalancer { lb, _, _ in
            var steps = [Self.step(lb, file())]
            // Run from this thread, `ip` starts in its namespace.
            do {
                let status = try ChildProcess.runToExit("/usr/sbin/ip", ["neigh", "replace", "10.77.0.254", "lladdr", newMAC, "dev", "lb0", "nud", "permanent"])
                guard status == 0 else { return steps + [Seen(error: "ip neigh replace exited \(status)")] }
                var refreshed = Seen()
                refreshed.bytes = try lb.dataplane.refreshNeighbourMACs()
                steps.append(refreshed)
                var again = Self.step(lb, file(), dryRun: true)
                again.bytes = try lb.dataplane.refreshNeighbourMACs()
                steps.append(again)
            } catch {
                steps.append(Seen(error: "\(error)"))
            }
            return steps
        }
        try #require(seen.count == 3 && seen[1].error == nil, "\(seen.map(\.error))")
        #expect(seen[0].slots["10.2.0.11:8443"]?.mac == gatewayMAC)
        #expect(seen[1].bytes == 2, "both backends behind the gateway (api's and dns') are rewritten")
        #expect(seen[2].slots["10.2.0.11:8443"]?.mac == newMAC && seen[2].slots["10.2.0.12:5353"]?.mac == newMAC)
        #expect(seen[2].slots["10.77.0.2:443"]?.mac == onLinkMAC, "an on-link backend keeps its own MAC")
        #expect(seen[2].bytes == 0, "nothing changes on the next refresh")
    }

    @Test func aNATServiceOnABalancerAttachedNowhereIsRefused() async throws {
        let lb = try await TestDataplane.make()
        do {
            try lb.apply(yaml: file())
            Issue.record("applied")
        } catch let error as ControlError {
            #expect(error.kind == .badInput)
            #expect(error.message == #"service "api": forwarding fullnat needs the balancer attached to an interface (lbctl attach IFACE)"#)
        }
        #expect(try lb.appliedState().services.isEmpty)
    }
}
