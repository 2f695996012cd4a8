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
    /// Foundation's `Process.run()` on Linux is not safe from several threads at once: a
    /// clean-clone run crashed inside it (a bad read in memmove) while other tests spawned
    /// from the pool and from watch timers. Spawns take their turn; a spawn takes ~1 ms.
    private static let spawning = NSLock()
    private let process = Process()
    private let latch = ExitLatch()

    /// Starts `executable arguments...` with stdin from /dev/null and stdout and stderr
    /// to the given handles (the child gets its own copies: the caller may close them).
    public init(_ executable: String, _ arguments: [String], stdout: FileHandle, stderr: FileHandle) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        // Captures the latch, not self: a child left running keeps only its latch alive.
        process.terminationHandler = { [latch] process in latch.finish(status: process.terminationStatus) }
        try Self.spawning.withLock { try process.run() }
    }

    /// Runs `executable arguments...` to its exit and returns its status, blocking the calling
    /// thread: only for a thread of its own (a namespace thread from `TestNamespace.run`), never
    /// the cooperative pool. It spawns under the same lock as every other child.
    @available(*, noasync, message: "blocks its thread: use ChildProcess(...).exited() instead")
    public static func runToExit(_ executable: String, _ arguments: [String]) throws -> Int32 {
        let child = try ChildProcess(executable, arguments, stdout: FileHandle.nullDevice, stderr: FileHandle.nullDevice)
        let done = DispatchSemaphore(value: 0)
        child.onExit { _ in done.signal() }
        done.wait()
        return child.status!
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
        if isRunning { Glibc.kill(pid, SIGKILL) }
    }

    /// Calls `body` on the reaper's thread once the child has exited (at once if it has).
    public func onExit(_ body: @escaping @Sendable (_ status: Int32) -> Void) {
        let latch = latch
        latch.onExit { body(latch.outcome!.status) }
    }
}

/// The child's exit, set once by the termination handler, which then calls whatever
/// waits for it: continuations of awaiting tasks, or callbacks.
final class ExitLatch: @unchecked Sendable {
    private let lock = NSLock()
    private var result: (status: Int32, at: ContinuousClock.Instant)?
    private var waiters: [UInt64: @Sendable () -> Void] = [:]
    private var nextID: UInt64 = 0

    var outcome: (status: Int32, at: ContinuousClock.Instant)? { lock.withLock { result } }

    func finish(status: Int32) {
        let now = ContinuousClock.now
        let called = lock.withLock {
            result = (status, now)
            defer { waiters = [:] }
            return Array(waiters.values)
        }
        for waiter in called { waiter() }
    }

    /// Calls `body` (on the reaper's thread) once the child has exited, at once if it has.
    /// Returns a key for `cancel`, nil when `body` ran already.
    @discardableResult
    func onExit(_ body: @escaping @Sendable () -> Void) -> UInt64? {
        lock.lock()
        guard result == nil else {
            lock.unlock()
            body()
            return nil
        }
        nextID += 1
        let id = nextID
        waiters[id] = body
        lock.unlock()
        return id
    }

    /// Takes back the callback `id` unless it ran; true if it was taken back.
    func cancel(_ id: UInt64) -> Bool {
        lock.withLock { waiters.removeValue(forKey: id) != nil }
    }

    /// Returns once the child has exited, or after `timeout` (nil: no limit). A sleeping task
    /// holds no thread; whichever of the exit and the timer comes first resumes the waiter.
    func wait(timeout: Duration?) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumed = Once()
            let resume: @Sendable () -> Void = { if resumed.take() { continuation.resume() } }
            guard let id = onExit(resume), let timeout else { return }
            Task { [weak self] in
                try? await Task.sleep(for: timeout)
                if self?.cancel(id) ?? true { resume() }
            }
        }
    }
}

/// True for the first `take()` only.
final class Once: @unchecked Sendable {
    private let lock = NSLock()
    private var taken = false
    func take() -> Bool {
        lock.withLock {
            defer { taken = true }
            return !taken
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
