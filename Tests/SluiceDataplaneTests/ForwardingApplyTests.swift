// What apply writes for the forwarding modes and the node's tunnel settings, read back from the
// maps: sl_backends' forwarding and mac, sl_service_info.forwarding, sl_config's tunnel_mtu and
// gue_port; and that the applied state reads them back so the same file applies as no change.
// (l2dsr needs an attached balancer: LbctlTests' L2DSRTests cover it on a veth.)
import CSluice
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

private func file(forwarding: String, node: String = "") -> String {
    """
    node:
      source_v4: 192.0.2.10
      maglev_table_size: 251
    \(node)
    services:
      - name: web
        vip: 198.51.100.10
        port: 80
        protocol: tcp
        forwarding: \(forwarding)
        backends: [ {address: 10.1.0.21}, {address: 10.1.0.22, weight: 2}, {address: 10.1.0.23} ]
      - name: dns
        vip: 198.51.100.10
        port: 53
        protocol: udp
        backends: [ {address: 10.1.0.31} ]
    """
}

@Suite(requiresRoot)
struct ForwardingApplyTests {
    private func slots(_ lb: TestDataplane, _ name: String) throws -> [UInt32: sl_backend] {
        let applied = try #require(try lb.appliedState().service(named: name))
        var slots: [UInt32: sl_backend] = [:]
        for backend in applied.backends { slots[backend.id] = try lb.dataplane[.backends].lookup(backend.id, as: sl_backend.self) }
        return slots
    }

    private func config(_ lb: TestDataplane) throws -> sl_config {
        try #require(try lb.dataplane[.config].lookup(UInt32(0), as: sl_config.self))
    }

    @Test func applyWritesTheModeAndTheNodeTunnelSettingsAndReadsThemBack() async throws {
        let text = file(forwarding: "gue", node: "  tunnel_mtu: 1400\n  gue_port: 7080")
        let lb = try await TestDataplane.make(yaml: text)
        for slot in try slots(lb, "web").values { #expect(slot.forwarding == UInt8(SL_FWD_GUE.rawValue)) }
        for slot in try slots(lb, "dns").values { #expect(slot.forwarding == UInt8(SL_FWD_IPIP.rawValue)) }
        let web = try #require(try lb.appliedState().service(named: "web"))
        #expect(try lb.dataplane[.services].lookup(web.slot, as: sl_service_info.self)?.forwarding == UInt8(SL_FWD_GUE.rawValue))
        let written = try config(lb)
        #expect(written.tunnel_mtu == 1400)
        #expect(written.flags & UInt8(SL_CFG_TUNNEL_MTU_SET.rawValue) != 0)
        #expect(written.gue_port == UInt16(7080).bigEndian, "network order")

        let parsed = try ServiceFileParser.parse(text, file: "test.yaml")
        #expect(try lb.appliedState().serviceFile == parsed, "the applied state is the file")
        let again = try lb.apply(yaml: text)
        #expect(again.diff.isEmpty && again.bytesWritten == 0, "\(again.diff.lines)")
    }

    @Test func withoutTheKeysTheDefaultPortIsWrittenAndTheMTUIsLeftToTheInterface() async throws {
        let lb = try await TestDataplane.make(yaml: file(forwarding: "gue", node: "  tunnel_mtu: 1400"))
        try lb.apply(yaml: file(forwarding: "gue"))
        let written = try config(lb)
        #expect(written.gue_port == UInt16(SL_GUE_DEFAULT_PORT).bigEndian)
        #expect(written.flags & UInt8(SL_CFG_TUNNEL_MTU_SET.rawValue) == 0)
        #expect(written.tunnel_mtu == 0, "not attached: no interface MTU, and the file's value is gone")
        #expect(try lb.appliedState().serviceFile.node.tunnelMTU == nil)
        #expect(try lb.appliedState().serviceFile.node.guePort == nil)

        // What attach writes stays when the file names no MTU.
        try lb.dataplane.setInterfaceMTU(1500)
        try lb.apply(yaml: file(forwarding: "ipip"))
        #expect(try config(lb).tunnel_mtu == 1500)
        #expect(try lb.appliedState().serviceFile.node.tunnelMTU == nil, "an interface's MTU is not the file's")
        try lb.apply(yaml: file(forwarding: "ipip", node: "  tunnel_mtu: 1300"))
        try lb.dataplane.setInterfaceMTU(9000)
        #expect(try config(lb).tunnel_mtu == 1300, "attach never overrides the file's MTU")
    }

    @Test func aModeChangeRewritesEveryBackendOfTheServiceAndKeepsTheirIDsAndTable() async throws {
        let lb = try await TestDataplane.make(yaml: file(forwarding: "ipip"))
        let before = try slots(lb, "web")
        let dnsBefore = try slots(lb, "dns")
        let web = try #require(try lb.appliedState().service(named: "web"))
        let table = try lb.maglevInnerMapID(slot: web.slot)

        let result = try lb.apply(yaml: file(forwarding: "gue"))
        #expect(result.diff.lines == ["~ service web: forwarding ipip -> gue"])
        #expect(result.tablesWritten == 0, "the backends and weights are the same: so is the table")
        let after = try slots(lb, "web")
        #expect(Set(after.keys) == Set(before.keys), "the same backend ids: conntrack entries still name them")
        for (id, slot) in after {
            #expect(slot.forwarding == UInt8(SL_FWD_GUE.rawValue), "backend \(id)")
            #expect(slot.addr == before[id]!.addr && slot.weight == before[id]!.weight && slot.flags == before[id]!.flags)
        }
        #expect(try slots(lb, "dns").mapValues(\.forwarding) == dnsBefore.mapValues(\.forwarding))
        #expect(try lb.maglevInnerMapID(slot: web.slot) == table)
        let now = try #require(try lb.appliedState().service(named: "web"))
        #expect(now.service.forwarding == .gue)
        #expect(now.generation == web.generation, "no table was switched")
        #expect(try lb.apply(yaml: file(forwarding: "gue")).bytesWritten == 0)
    }

    @Test func setBackendMACsWritesOnlyTheSlotsThatDiffer() async throws {
        let lb = try await TestDataplane.make(yaml: file(forwarding: "ipip"))
        let ids = try slots(lb, "web").keys.sorted()
        let mac = try #require(MACAddress("02:aa:bb:cc:dd:01"))
        #expect(try lb.dataplane.setBackendMACs([ids[0]: mac, ids[1]: mac]) == 2)
        #expect(try lb.dataplane.setBackendMACs([ids[0]: mac, ids[1]: mac]) == 0, "nothing differs")
        let slot = try #require(try lb.dataplane[.backends].lookup(ids[0], as: sl_backend.self))
        #expect(withUnsafeBytes(of: slot.mac) { Array($0) } == mac.bytes)
        #expect(try lb.appliedState().service(named: "web")?.backends.first { $0.id == ids[0] }?.mac == mac)
    }

    @Test func anL2DSRServiceOnABalancerAttachedNowhereIsRefusedAndNothingIsApplied() async throws {
        let lb = try await TestDataplane.make(yaml: file(forwarding: "ipip"))
        let before = try lb.appliedState().serviceFile
        do {
            try lb.apply(yaml: file(forwarding: "l2dsr"))
            Issue.record("applied")
        } catch let error as ControlError {
            #expect(error.kind == .badInput)
            #expect(error.message == #"service "web": forwarding l2dsr needs the balancer attached to an interface (lbctl attach IFACE)"#)
        }
        #expect(try lb.appliedState().serviceFile == before)
    }
}
