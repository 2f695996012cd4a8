// How many namespace labs (scripts/lab.sh: six or seven namespaces, Python servers and
// clients, one or two balancers, often agents) the test process runs at once. Swift
// Testing starts every suite at the same time, so without a bound every lab test of
// the run brings its lab up together, on a machine of two cores that the other suites
// share, and the tests that measure time (health checks within interval x fall, flows
// ageing out after their idle timeout) measure the crowd instead.
import Foundation

/// A FIFO counting semaphore for labs. `Lab.up` takes one permit and `down()` gives it
/// back (so does `withLab { }` on every path, and a lab's deinit once its fire-and-forget
/// teardown is done); `Lab.withLabs(count:)` takes several at once. Waiting holds no
/// thread, and a request is never overtaken by a later one, so one that needs two
/// permits is not starved by a stream of single ones.
public actor LabSlots {
    /// The bound for this test process: 2 permits, or `SLUICE_LAB_SLOTS` (1...8) from the
    /// environment. Two is also what the test of two labs side by side needs.
    public static let shared = LabSlots(permits: {
        if let text = ProcessInfo.processInfo.environment["SLUICE_LAB_SLOTS"], let value = Int(text), (1...8).contains(value) {
            return value
        }
        return 2
    }())

    public nonisolated let permits: Int
    private var available: Int
    private var waiting: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []

    public init(permits: Int) {
        precondition(permits > 0)
        self.permits = permits
        available = permits
    }

    /// Permits the current task holds through `withPermits` (a lab scope).
    @TaskLocal public static var held = 0

    /// Waits, in arrival order, until `count` permits are free, and takes them.
    public func acquire(_ count: Int = 1) async throws {
        guard count <= permits else {
            throw CommandError("\(count) labs at once, but at most \(permits) may run (SLUICE_LAB_SLOTS)")
        }
        // Holding permits while waiting for more can wait for ever (every holder waiting
        // for another): several labs are taken at once, with Lab.withLabs(count:).
        guard Self.held == 0 else {
            throw CommandError("a lab brought up inside another lab's scope: take both at once with Lab.withLabs(count:)")
        }
        if waiting.isEmpty && available >= count {
            available -= count
            return
        }
        await withCheckedContinuation { waiting.append((count, $0)) }
    }

    /// Gives back `count` permits and wakes whoever is first in line, as far as they fit.
    public func release(_ count: Int = 1) {
        available += count
        precondition(available <= permits, "LabSlots: more permits released than taken")
        while let first = waiting.first, first.count <= available {
            available -= first.count
            waiting.removeFirst()
            first.continuation.resume()
        }
    }

    /// Runs `body` holding `count` permits, given back however it ends.
    public nonisolated func withPermits<T>(_ count: Int = 1, _ body: () async throws -> T) async throws -> T {
        try await acquire(count)
        return try await withCleanup {
            try await Self.$held.withValue(Self.held + count) { try await body() }
        } cleanup: {
            await release(count)
        }
    }
}
