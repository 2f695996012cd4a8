// A balancer pinned by an older lbctl lacks the maps later versions added
// (sl_vip_filter, sl_vip_epochs). Opening its whole data plane fails with a
// message that says how to upgrade, and detach reads only the program pin, so
// the new lbctl still finds (and can detach) the old balancer.

import CSluice
import Glibc
import SluiceControl
import SluiceTestSupport
import Testing

@Suite(requiresRoot)
struct PinTests {
    @Test func theProgramOfABalancerPinnedWithoutTheNewerMapsIsStillFound() throws {
        let lb = try TestDataplane()
        let id = try lb.dataplane.program.identity().id
        for name in [SL_MAP_VIP_FILTER, SL_MAP_VIP_EPOCHS] { #expect(unlink("\(lb.pinPath)/\(name)") == 0) }
        let error = #expect(throws: ControlError.self) { try Dataplane.open(pinPath: lb.pinPath) }
        #expect(error?.kind == .runtime, "\(String(describing: error))")
        #expect(error?.message.contains("loaded by an older lbctl") == true, "\(String(describing: error))")
        #expect(error?.message.contains("lbctl detach IFACE") == true, "\(String(describing: error))")
        #expect(try Dataplane.pinnedProgramID(at: lb.pinPath) == id)
    }
}
