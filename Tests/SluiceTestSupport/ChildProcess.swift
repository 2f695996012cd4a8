// A process the tests start (lbctl, lab.sh, curl, an agent, a lab client), awaited
// without holding a thread of the pool: Swift Testing runs every suite in one process
// on a cooperative pool of one thread per core (two here), so a test that blocks a
// thread while a child runs stalls every other suite. The child is started with
// posix_spawn(3) from the calling thread (so it inherits that thread's network
// namespace and signal mask), stdin from /dev/null, stdout and stderr to the handles
// given, every other descriptor closed; a thread of its own waits for it (waitpid) and
// resumes whoever awaits the exit.
//
// Not Foundation's Process: twice a clean-clone CI run crashed inside Process.run() (a
// bad read in memmove) while other suites spawned and read BPF maps, the second time
// with every spawn already serialized behind a lock.
import Foundation
import Glibc

public struct SpawnError: Error, CustomStringConvertible {
    public let description: String
}

public final class ChildProcess: @unchecked Sendable {
    private let latch = ExitLatch()
    public let pid: Int32

    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), which Swift's Glibc module
    /// does not import: every descriptor from 3 up is closed in the child.
    private static let addCloseFrom: @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32 = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
            preconditionFailure("glibc without posix_spawn_file_actions_addclosefrom_np (needs 2.34)")
        }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    /// Starts `executable arguments...` with stdin from /dev/null and stdout and stderr
    /// to the given handles (the child gets its own copies: the caller may close them).
    public init(_ executable: String, _ arguments: [String], stdout: FileHandle, stderr: FileHandle) throws {
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout.fileDescriptor, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr.fileDescriptor, 2)
        Self.addCloseFrom(&actions, 3)
        // The child inherits the spawning thread's signal mask, as it did from Foundation's
        // Process: Swift's threads block SIGTERM and SIGINT, and a child that must react to
        // them unblocks them (lab-client.py does; the agent's signal handling expects them so).

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var child: pid_t = 0
        let rc = argv.withUnsafeBufferPointer { args in
            posix_spawn(&child, executable, &actions, &attributes, UnsafeMutablePointer(mutating: args.baseAddress!), environ)
        }
        guard rc == 0 else { throw SpawnError(description: "posix_spawn \(executable): \(String(cString: strerror(rc)))") }
        pid = child
        // Captures the latch, not self: a child left running keeps only its latch alive.
        let reaper = Thread { [latch, child] in
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
            // As Foundation's terminationStatus: the exit code, or the signal's number.
            let code = status & 0x7f == 0 ? (status >> 8) & 0xff : status & 0x7f
            latch.finish(status: code)
        }
        reaper.name = "child \(child)"
        reaper.start()
    }

    /// Runs `executable arguments...` to its exit and returns its status, blocking the calling
    /// thread: only for a thread of its own (a namespace thread from `TestNamespace.run`), never
    /// the cooperative pool.
    @available(*, noasync, message: "blocks its thread: use ChildProcess(...).exited() instead")
    public static func runToExit(_ executable: String, _ arguments: [String]) throws -> Int32 {
        let child = try ChildProcess(executable, arguments, stdout: FileHandle.nullDevice, stderr: FileHandle.nullDevice)
        let done = DispatchSemaphore(value: 0)
        child.onExit { _ in done.signal() }
        done.wait()
        return child.status!
    }

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

    /// SIGKILL without waiting (for a deinit, which cannot await): its reaper still reaps it.
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
