// How many namespace labs (scripts/lab.sh: six or seven namespaces, Python servers and
// clients, one or two balancers, often agents) the test process runs at once. Swift
// Testing starts every suite at the same time, so without a bound every lab test of
// the run brings its lab up together, on a machine of two cores that the other suites
// share with them and with the tests that measure time (health checks within interval
// x fall, flows ageing out after their idle timeout).
import Foundation

/// A FIFO counting semaphore for labs, and for what must not run beside them (sluice-bench's
/// smoke run keeps both cores busy: it takes every permit). `Lab.up` takes one permit and
/// `down()` gives it back (so does `withLab { }` on every path, and a lab's deinit once its
/// fire-and-forget teardown is done); `Lab.withLabs(count:)` takes several at once. Waiting
/// holds no thread, and a request is never overtaken by a later one, so one that needs two
/// permits is not starved by a stream of single ones.
public actor LabSlots {
    /// The bound for this test process: 2 permits, or `SLUICE_LAB_SLOTS` (1...8) from the
    /// environment. Measured on this 2-core machine, the whole suite twice per bound (with
    /// the smoke run taking every permit): 1 took 126-133 s, 2 83-100 s, 3 72-89 s and 8
    /// (no bound) 76-84 s, every timing check passing at 2 and above (the health check's
    /// take-out in 1.6-2.3 s of its 3 s bound). Two costs about 10 s against no bound and
    /// caps the worst case at two two-balancer labs with their four agents; two labs side
    /// by side is also what one test needs (it is skipped with a bound of 1).
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
