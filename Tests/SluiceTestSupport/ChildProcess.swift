// A process the tests start (lbctl, lab.sh, curl, an agent, a lab client), awaited
// without holding a thread: Swift Testing runs every suite in one process on a
// cooperative pool of one thread per core (two here), so a test that blocks a thread
// while a child runs stalls every other suite. Foundation's Process reaps the child
// on a thread of its own and calls the termination handler on another; the handler
// resumes whoever awaits the exit. Two of Process's habits on Linux matter here:
// it learns of the exit when a socket its child inherited is closed, so whatever the
// child leaves running must close inherited descriptors (lab.sh does); and the child
// inherits the spawning thread's signal mask, in which Swift's threads block SIGTERM
// and SIGINT (a child that must react to them unblocks them, as lab-client.py does).
import Foundation
import Glibc

public final class ChildProcess: @unchecked Sendable {
    public let executable: String
    public let arguments: [String]
    private let process = Process()
    private let latch = ExitLatch()

    /// Starts `executable arguments...` with stdin from /dev/null and stdout and stderr
    /// to the given handles (the child gets its own copies: the caller may close them).
    public init(_ executable: String, _ arguments: [String], stdout: FileHandle, stderr: FileHandle) throws {
        self.executable = executable
        self.arguments = arguments
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        // Captures the latch, not self: a child left running keeps only its latch alive.
        process.terminationHandler = { [latch] process in latch.finish(status: process.terminationStatus) }
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    /// False once the child has exited and been reaped.
    public var isRunning: Bool { latch.outcome == nil }
    /// The exit status (the signal's number if a signal ended it), nil while it runs.
    public var status: Int32? { latch.outcome?.status }
    /// When the reaper saw the exit, nil while it runs.
    public var exitTime: ContinuousClock.Instant? { latch.outcome?.at }

    /// Waits for the exit and returns its status.
    @discardableResult
    public func exited() async -> Int32 {
        await latch.wait(timeout: nil)
        return latch.outcome!.status
    }

    /// Waits at most `timeout` for the exit; its status, or nil while it still runs.
    public func exited(within timeout: Duration) async -> Int32? {
        await latch.wait(timeout: timeout)
        return latch.outcome?.status
    }

    /// Sends `signal` unless the child is gone.
    public func signal(_ signal: Int32) {
        if isRunning { Glibc.kill(pid, signal) }
    }

    /// Sends `signal` and waits up to `timeout` for the exit; returns its status and the time
    /// from the signal to the exit, as the reaper saw it (so a late resumption of the waiting
    /// task adds nothing). Nil status: it was still running after `timeout`, then killed.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) async -> (status: Int32?, elapsed: Duration) {
        if let outcome = latch.outcome { return (outcome.status, .zero) }
        let start = ContinuousClock.now
        Glibc.kill(pid, signal)
        await latch.wait(timeout: timeout)
        if let outcome = latch.outcome { return (outcome.status, outcome.at - start) }
        Glibc.kill(pid, SIGKILL)
        await latch.wait(timeout: nil)
        return (nil, ContinuousClock.now - start)
    }

    /// SIGKILL without waiting (for a deinit, which cannot await): Foundation still reaps it.
    public func killInBackground() {
        signal(SIGKILL)
    }
}

/// The child's exit, set once by the termination handler; waiters are continuations.
final class ExitLatch: @unchecked Sendable {
    private let lock = NSLock()
    private var result: (status: Int32, at: ContinuousClock.Instant)?
    private var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    private var timedOut: Set<UInt64> = []
    private var nextID: UInt64 = 0

    var outcome: (status: Int32, at: ContinuousClock.Instant)? { lock.withLock { result } }

    func finish(status: Int32) {
        let now = ContinuousClock.now
        let resumed = lock.withLock {
            result = (status, now)
            defer { waiters = [:] }
            return Array(waiters.values)
        }
        for waiter in resumed { waiter.resume() }
    }

    /// Returns once the child has exited, or after `timeout` (nil: no limit).
    func wait(timeout: Duration?) async {
        let id: UInt64 = lock.withLock {
            nextID += 1
            return nextID
        }
        if let timeout {
            // A sleeping task holds no thread; it ends the wait if the child outlives it.
            Task { [weak self] in
                try? await Task.sleep(for: timeout)
                self?.timeOut(id)
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            lock.lock()
            if result != nil || timedOut.remove(id) != nil {
                lock.unlock()
                continuation.resume()
            } else {
                waiters[id] = continuation
                lock.unlock()
            }
        }
    }

    private func timeOut(_ id: UInt64) {
        lock.lock()
        if let waiter = waiters.removeValue(forKey: id) {
            lock.unlock()
            waiter.resume()
        } else {
            if result == nil { timedOut.insert(id) }  // the timer fired before the wait began
            lock.unlock()
        }
    }
}

/// For code outside Swift concurrency only (sluice-bench's synchronous main thread):
/// runs an async helper and blocks the calling thread until it is done.
public enum Blocking {
    @available(*, noasync, message: "blocks its thread: await the operation instead")
    public static func run<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) throws -> T {
        // A synchronous test runs inside a task on the cooperative pool too: blocking there
        // is what this library exists to avoid (and with every pool thread blocked, the
        // operation itself could never run).
        precondition(withUnsafeCurrentTask { $0 == nil }, "Blocking.run called inside a task: await the operation instead")
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        Task {
            do { box.result = .success(try await operation()) } catch { box.result = .failure(error) }
            done.signal()
        }
        done.wait()
        return try box.result!.get()
    }

    /// Written by the task before the semaphore is signalled, read after the wait.
    private final class ResultBox<T>: @unchecked Sendable {
        var result: Result<T, any Error>?
    }
}
