// The agent killed with SIGKILL at random points of a PUT /v1/services, 20 times: after each
// kill every VIP serves its old backend set or its new one, never a mix, and open flows stay
// on their backends; the agent started again restores the set it had persisted, wholly, and
// the next PUT repairs everything (no backend slot left in use that the set does not name).
// The sets are ApplySet's; lbctl apply gets the same treatment in KillMidApplyTests.
import Foundation
import Glibc
import SluiceControl
import SluiceTestSupport
import Testing

@Suite("the agent killed mid-PUT")
struct AgentKillMidApplyTests {
    static let runs = 20

    @Test("SIGKILL of the agent at 20 random points of PUT /v1/services: old set or new per VIP, the restart restores the persisted set, the next PUT repairs")
    func killedPUTsLeaveEveryVIPWholeAndTheRestartRestores() async throws {
        // Agents started and killed in a loop: while no lab (whose tests measure time) is up.
        try await LabSlots.shared.withPermits(LabSlots.shared.permits) {
            try await AgentFixture.with(applied: ApplySet.a.serviceFile) { try await killPUTs($0) }
        }
    }

    private func killPUTs(_ fixture: AgentFixture) async throws {
        let dataplane = fixture.dataplane.dataplane
        let open = try OpenFlows(dataplane)
        func put(_ set: ApplySet) async throws -> AgentProcess.Reply {
            try await fixture.agent.request("PUT", "/v1/services", body: set.serviceFile, token: AgentFixture.token)
        }
        // How long a whole PUT takes: the kills land anywhere in it (the shorter of two, then
        // each run's repairing PUT, so the window follows the machine's pace).
        var window = Duration.seconds(60)
        var current = ApplySet.a
        for _ in 0..<2 {
            let started = ContinuousClock.now
            let reply = try await put(current.other)
            try #require(reply.status == 200, "\(reply)")
            window = min(window, ContinuousClock.now - started)
            current = current.other
        }

        let seed = SplitMix64.testSeed
        var random = SplitMix64(seed: seed)
        var restored: [String: Int] = [:]
        for run in 0..<Self.runs {
            let next = current.other
            let request = Task { try? await put(next) }
            // The kill point is what is random here, not a wait for a condition.
            let delay = window * Double.random(in: 0...1, using: &random)
            try await Task.sleep(for: delay)
            let context = "run \(run) (seed \(seed)), killed at \(delay), \(current) -> \(next)"
            await fixture.kill()
            _ = await request.value

            // What the killed agent left: the old set or the new one, per VIP.
            let left = try await offPool { try ServedSets(dataplane) }
            #expect(left.mixed(from: current, to: next).isEmpty, "\(context): \(left.mixed(from: current, to: next))")
            let movedByKill = try open.moved(dataplane)
            #expect(movedByKill.isEmpty, "\(context): \(movedByKill)")

            // What a new agent restores: the set persisted, which is the new one only if the PUT got that far.
            try await fixture.start()
            let persisted = try String(contentsOfFile: fixture.servicesPath, encoding: .utf8) == next.serviceFile ? next : current
            restored[persisted == next ? "new" : "old", default: 0] += 1
            let served = try await offPool { try ServedSets(dataplane) }
            #expect(served.count(serving: persisted) == ServedSets.vipCount,
                    "\(context): the restarted agent does not serve its persisted set \(persisted): \(served.mixed(from: persisted, to: persisted))")
            let moved = try open.moved(dataplane)
            #expect(moved.isEmpty, "\(context): \(moved)")
            let used = try await offPool { try dataplane.usedBackendSlots() }
            #expect(used == persisted.backendCount, "\(context): \(used) backend slots in use after the restart, \(persisted.backendCount) named")

            // The next PUT repairs.
            let started = ContinuousClock.now
            let reply = try await put(next)
            window = ContinuousClock.now - started
            try #require(reply.status == 200, "\(context): \(reply)")
            let repaired = try await offPool { try ServedSets(dataplane) }
            #expect(repaired.count(serving: next) == ServedSets.vipCount, "\(context), repaired: \(repaired.mixed(from: next, to: next))")
            let usedAfter = try await offPool { try dataplane.usedBackendSlots() }
            #expect(usedAfter == next.backendCount, "\(context): \(usedAfter) backend slots in use after the repair, \(next.backendCount) named")
            current = next
        }
        print("agent killed mid-PUT (seed \(seed), \(Self.runs) runs over \(window)): the restart restored the old set \(restored["old", default: 0]) times, the new one \(restored["new", default: 0])")
    }
}
