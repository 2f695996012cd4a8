// Work that blocks in the kernel (loading and verifying a BPF object, map-of-maps updates)
// run from an async test without holding one of the cooperative pool's threads: two on a
// 2-core machine, shared by every suite of the test process.
import Foundation

/// Runs `body` on a thread of its own and resumes the caller's task with its result.
public func offPool<T>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let box = OffPoolResult<T>()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<OffPoolResult<T>, any Error>) in
        Thread {
            do { box.value = try body(); continuation.resume(returning: box) } catch { continuation.resume(throwing: error) }
        }.start()
    }.take()
}

/// Carries a value that need not be Sendable (a test's own balancer) from the thread that
/// made it to the one task that asked for it.
public final class OffPoolResult<T>: @unchecked Sendable {
    fileprivate var value: T?
    fileprivate func take() -> T { value! }
}
