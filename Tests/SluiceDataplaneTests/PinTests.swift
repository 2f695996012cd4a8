// A balancer pinned by an older lbctl lacks the maps later versions added
// (sl_vip_filter, sl_vip_epochs). Opening its whole data plane fails with a
// message that says how to upgrade, and detach reads only the program pin, so
// the new lbctl still finds (and can detach) the old balancer.

import CLibbpf
import CSluice
import Foundation
import Glibc
import SluiceBPF
import SluiceControl
import SluiceTestSupport
import Testing

@Suite(requiresRoot)
struct PinTests {
    @Test func theProgramOfABalancerPinnedWithoutTheNewerMapsIsStillFound() async throws {
        let lb = try await TestDataplane.make()
        let id = try lb.dataplane.program.identity().id
        for name in [Dataplane.Map.vipFilter, .vipEpochs].map(\.rawValue) { #expect(unlink("\(lb.pinPath)/\(name)") == 0) }
        let error = #expect(throws: ControlError.self) { try Dataplane.open(pinPath: lb.pinPath) }
        #expect(error?.kind == .runtime, "\(String(describing: error))")
        #expect(error?.message.contains("loaded by an older lbctl") == true, "\(String(describing: error))")
        #expect(error?.message.contains("lbctl detach IFACE") == true, "\(String(describing: error))")
        #expect(try Dataplane.pinnedProgramID(at: lb.pinPath) == id)
    }
}

/// The Swift list of each object's maps is the one loading, opening and removing pins
/// follow; it must name exactly the maps the C object defines.
@Suite(requiresRoot)
struct MapListTests {
    @Test func theBalancersMapListNamesEveryMapOfItsObjectAndNoOther() throws {
        let declared = try PinnedObject<Dataplane.Map>.declarations().map(\.name)
        #expect(Set(declared) == Set(Dataplane.Map.allCases.map(\.rawValue)), "bpf/maps.h vs Dataplane.Map")
        #expect(declared.count == Dataplane.Map.allCases.count)
    }

    @Test func theDecapsulatorsMapListNamesEveryMapOfItsObjectAndNoOther() throws {
        let declared = try PinnedObject<DecapDataplane.Map>.declarations().map(\.name)
        #expect(Set(declared) == Set(DecapDataplane.Map.allCases.map(\.rawValue)), "bpf/bpf/decap_maps.h vs DecapDataplane.Map")
        #expect(declared.count == DecapDataplane.Map.allCases.count)
    }

    @Test func aPinnedMapOfAnotherLayoutIsRefusedAsAnOlderLbctls() async throws {
        let lb = try await TestDataplane.make()
        // An older lbctl's sl_clock: same name, another value size.
        let path = "\(lb.pinPath)/\(Dataplane.Map.clock.rawValue)"
        #expect(unlink(path) == 0)
        let impostor = try BPFMap.create(type: BPF_MAP_TYPE_ARRAY, name: "sl_clock", keySize: 4, valueSize: 8, maxEntries: 1)
        try impostor.pin(at: path)
        let error = #expect(throws: ControlError.self) { try Dataplane.open(pinPath: lb.pinPath) }
        #expect(error?.message.contains("loaded by an older lbctl (its map sl_clock has another layout)") == true,
                "\(String(describing: error))")
    }

    @Test func aFailedLoadLeavesNoPinsBehind() throws {
        let mount = try BPFFSMount()
        defer { mount.close() }
        let pinPath = mount.path + "/lb"
        // A connection table of 0 entries is refused by the kernel when the maps are created.
        #expect(throws: ControlError.self) { try Dataplane.openOrLoad(pinPath: pinPath, conntrackSize: 0) }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: pinPath)) ?? []
        #expect(left.isEmpty, "pins left: \(left)")
        #expect(!Dataplane.isPinned(at: pinPath))
    }

    @Test func theNATTableIsSizedWithConntrackAsAttachSizesIt() throws {
        let mount = try BPFFSMount()
        defer { mount.close() }
        let pinPath = mount.path + "/lb"
        let dataplane = try Dataplane.openOrLoad(pinPath: pinPath, conntrackSize: 4096)
        defer { Dataplane.removePins(at: pinPath) }
        #expect(dataplane[.conntrack].info.maxEntries == 4096 && dataplane[.nat].info.maxEntries == 4096)
    }
}
