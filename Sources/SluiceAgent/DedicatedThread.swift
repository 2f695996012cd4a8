// A thread of its own for work that blocks in the kernel (map-of-maps updates wait an RCU
// grace period, a sweep reads a million flows): a serial executor for an actor, and a place
// to run one closure at a time off the Swift cooperative pool, whose few threads (two on a
// 2-core machine) every other task of the agent shares.
import Foundation

public final class DedicatedThread: SerialExecutor, @unchecked Sendable {
    private enum Item {
        case job(UnownedJob)
        case block(@Sendable () -> Void)
    }

    /// Guards `items`; the thread waits on it when there is nothing to do.
    private let condition = NSCondition()
    private var items: [Item] = []

    /// Starts the thread. It runs for the rest of the process, as the agent's services do.
    public init(name: String) {
        let thread = Thread { [self] in loop() }
        thread.name = name
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        submit(.job(UnownedJob(job)))
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Runs `body` on this thread, after what was submitted before it; the caller's task
    /// waits suspended, holding no thread.
    public func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            submit(.block { continuation.resume(returning: Result { () throws(E) -> T in try body() }) })
        }
        return try result.get()
    }

    private func submit(_ item: Item) {
        condition.lock()
        items.append(item)
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while items.isEmpty { condition.wait() }
            let batch = items
            items.removeAll(keepingCapacity: true)
            condition.unlock()
            for item in batch {
                switch item {
                case .job(let job): job.runSynchronously(on: asUnownedSerialExecutor())
                case .block(let body): body()
                }
            }
        }
    }
}
