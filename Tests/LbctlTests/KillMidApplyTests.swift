// `lbctl apply` killed with SIGKILL at random points of its run, 50 times: after each kill
// every VIP serves its old backend set or its new one, never a mix, open flows stay on their
// backends, and the next apply repairs everything (no backend slot left in use that the file
// does not name). The sets are ApplySet's.
import Foundation
import Glibc
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing

@Suite("lbctl apply killed mid-apply")
struct KillMidApplyTests {
    static let runs = 50

    @Test("SIGKILL at 50 random points of lbctl apply: every VIP serves its old set or its new one, open flows keep their backend, the next apply repairs")
    func killedAppliesLeaveEveryVIPWholeAndTheNextApplyRepairs() async throws {
        // About a second of lbctl processes a run: while no lab (whose tests measure time) is up.
        try await LabSlots.shared.withPermits(LabSlots.shared.permits) { try await killApplies() }
    }

    private func killApplies() async throws {
        let files = try ScratchDirectory()
        let bpffs = try BPFFSMount()
        defer { bpffs.close() }
        let pin = "\(bpffs.path)/lb"
        let paths = [ApplySet.a: try files.write("a.yaml", ApplySet.a.serviceFile),
                     ApplySet.b: try files.write("b.yaml", ApplySet.b.serviceFile)]
        try #require(try await Lbctl.run("apply", "-f", paths[.a]!, pinPath: pin).status == 0)
        let dataplane = try Dataplane.open(pinPath: pin)
        try dataplane.setGateway(MACAddress(bytes: [0x02, 0, 0, 0, 0, 0x01])!)
        let open = try OpenFlows(dataplane)
        #expect(open.backends.allSatisfy { $0.description.hasPrefix("10.1.") }, "\(open.backends)")

        // How long a whole apply takes, process start to exit: the kills land anywhere in it.
        // The shortest of two to start with, then each run's repairing apply, so the window
        // follows the machine's pace (a loaded machine's first applies can take ten times longer).
        var window = Duration.seconds(60)
        var current = ApplySet.a
        for _ in 0..<2 {
            let result = try await Lbctl.run("apply", "-f", paths[current.other]!, pinPath: pin)
            try #require(result.status == 0, "\(result)")
            window = min(window, result.duration)
            current = current.other
        }

        let seed = SplitMix64.testSeed
        var random = SplitMix64(seed: seed)
        var phases: [String: Int] = [:]
        for run in 0..<Self.runs {
            let next = current.other
            // The kill point is what is random here, not a wait for a condition.
            let delay = window * Double.random(in: 0...1, using: &random)
            let output = URL(fileURLWithPath: "\(files.path)/lbctl.out")
            let child = try Command.withOutputFiles(stdout: output, stderr: output) { out, err in
                try ChildProcess(Lbctl.path, ["apply", "-f", paths[next]!, "--pin-path", pin], stdout: out, stderr: err)
            }
            try await Task.sleep(for: delay)
            let (status, _) = await child.stop(signal: SIGKILL)
            let killed = status == SIGKILL
            try #require(killed || status == 0, "run \(run) (seed \(seed)): lbctl apply exited \(String(describing: status))")

            let context = "run \(run) (seed \(seed)), \(killed ? "killed at \(delay)" : "finished before the kill"), \(current) -> \(next)"
            let served = try await offPool { try ServedSets(dataplane) }
            #expect(served.mixed(from: current, to: next).isEmpty, "\(context): \(served.mixed(from: current, to: next))")
            let moved = try open.moved(dataplane)
            #expect(moved.isEmpty, "\(context): \(moved)")
            let used = try await offPool { try dataplane.usedBackendSlots() }
            phases[killed ? Self.phase(served, used: used, from: current, to: next) : "finished before the kill", default: 0] += 1

            // The next apply repairs: exit 0, every VIP on the new set, no other backend slot in use.
            let repair = try await Lbctl.run("apply", "-f", paths[next]!, pinPath: pin)
            try #require(repair.status == 0, "\(context): the repairing apply failed\n\(repair)")
            window = repair.duration
            let repaired = try await offPool { try ServedSets(dataplane) }
            #expect(repaired.count(serving: next) == ServedSets.vipCount, "\(context), repaired: \(repaired.mixed(from: next, to: next))")
            let movedAfter = try open.moved(dataplane)
            #expect(movedAfter.isEmpty, "\(context), repaired: \(movedAfter)")
            let usedAfter = try await offPool { try dataplane.usedBackendSlots() }
            #expect(usedAfter == next.backendCount, "\(context): \(usedAfter) backend slots in use after the repair, \(next.backendCount) named")
            current = next
        }
        print("lbctl apply killed (seed \(seed), \(Self.runs) runs, the last over \(window)): " +
              phases.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: "; "))
        let killedRuns = Self.runs - phases["finished before the kill", default: 0]
        #expect(killedRuns >= Self.runs / 2, "only \(killedRuns) of \(Self.runs) applies were killed before they finished")
        #expect(phases.count >= 3, "the kills did not land across the apply's phases: \(phases)")
    }

    /// Where a killed apply stopped, as the data plane shows it.
    static func phase(_ served: ServedSets, used: Int, from: ApplySet, to: ApplySet) -> String {
        switch served.count(serving: to) {
        case 0 where used == from.backendCount: "killed before its first write"
        case 0: "killed with new backends written, no table switched"
        case ServedSets.vipCount where used == to.backendCount: "killed after its last write"
        case ServedSets.vipCount: "killed with every VIP switched, old backends not yet released"
        default: "killed with some VIPs switched"
        }
    }
}
