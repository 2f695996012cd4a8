// Threads inside a network namespace, CPU affinity, threaded NAPI and the
// kernel threads that run it: what the live benchmark needs from the system.
import CLibbpf
import Foundation
import Glibc
import SluiceTestSupport

struct LiveError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// sched_getaffinity(2) and sched_setaffinity(2): glibc has them, Swift's Glibc
/// module leaves them out (they need _GNU_SOURCE), so they are looked up by name
/// and called through C function pointers.
private typealias AffinityCall = @convention(c) (pid_t, Int, UnsafeMutableRawPointer?) -> Int32
private func libcAffinity(_ name: String) -> AffinityCall {
    guard let symbol = dlsym(nil, name) else { // nil: RTLD_DEFAULT
        fatalError("\(name) not found in libc")
    }
    return unsafeBitCast(symbol, to: AffinityCall.self)
}
private let c_sched_getaffinity = libcAffinity("sched_getaffinity")
private let c_sched_setaffinity = libcAffinity("sched_setaffinity")

enum LiveSystem {
    /// A cpu_set_t: 1024 CPUs, one bit each.
    private static let maskWords = 1024 / UInt.bitWidth

    /// The CPUs this process may run on, in order.
    static func allowedCPUs() -> [Int] {
        var mask = [UInt](repeating: 0, count: maskWords)
        let rc = mask.withUnsafeMutableBytes { c_sched_getaffinity(0, $0.count, $0.baseAddress) }
        guard rc == 0 else { return [] }
        return (0..<(maskWords * UInt.bitWidth)).filter { mask[$0 / UInt.bitWidth] & (1 << ($0 % UInt.bitWidth)) != 0 }
    }

    /// Pins the thread or process `tid` (0: the calling thread) to one CPU.
    static func pin(_ tid: pid_t, to cpu: Int) throws {
        var mask = [UInt](repeating: 0, count: maskWords)
        mask[cpu / UInt.bitWidth] |= 1 << (cpu % UInt.bitWidth)
        let rc = mask.withUnsafeMutableBytes { c_sched_setaffinity(tid, $0.count, $0.baseAddress) }
        guard rc == 0 else {
            throw LiveError("sched_setaffinity(\(tid), cpu \(cpu)): \(String(cString: strerror(errno)))")
        }
    }

    /// Runs `body` on a new thread switched into the network namespace at
    /// `path` (and pinned to `cpu` if given), and waits for it. The calling
    /// thread never changes namespace.
    static func run<T>(inNamespace path: String, cpu: Int? = nil, _ body: @escaping () throws -> T) throws -> T {
        let box = ResultBox<T>(body)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            defer { done.signal() }
            box.result = Result {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw LiveError("open \(path): \(String(cString: strerror(errno)))") }
                defer { close(fd) }
                guard setns(fd, CLibbpf_CLONE_NEWNET) == 0 else {
                    throw LiveError("setns \(path): \(String(cString: strerror(errno)))")
                }
                if let cpu { try pin(0, to: cpu) }
                return try box.body()
            }
        }
        thread.name = "sluice-bench live"
        thread.stackSize = 1 << 20
        thread.start()
        done.wait()
        return try box.result!.get()
    }

    /// Hands the body to the thread and its result back; the semaphore orders the accesses.
    private final class ResultBox<T>: @unchecked Sendable {
        let body: () throws -> T
        var result: Result<T, Error>?
        init(_ body: @escaping () throws -> T) { self.body = body }
    }

    /// Turns threaded NAPI on for `interface` of the namespace: its receive
    /// processing (for a veth: the XDP program) then runs in kernel threads
    /// named `napi/IFACE-ID` that can be pinned, instead of in the softirq of
    /// whichever CPU sent to it. Written through `ip netns exec`, whose fresh
    /// sysfs shows the namespace's interfaces.
    static func setThreadedNAPI(_ namespace: TestNamespace, _ interface: String) throws {
        let command = ["netns", "exec", namespace.name, "/bin/sh", "-c", "echo 1 > /sys/class/net/\(interface)/threaded"]
        let result = try Blocking.run { try await Command.run(TestNamespace.ip, command) }
        guard result.status == 0 else { throw LiveError("threaded NAPI on \(interface): \(result.stderr)") }
    }

    /// The NAPI kernel threads of `interface` (comm `napi/IFACE-ID`; unique
    /// names keep other namespaces' veths out).
    static func napiThreads(of interface: String) -> [pid_t] {
        let prefix = "napi/\(interface)-"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry),
                  let comm = try? String(contentsOfFile: "/proc/\(entry)/comm", encoding: .utf8),
                  comm.hasPrefix(prefix) else { return nil }
            return pid
        }.sorted()
    }

    /// Nanoseconds the task has run on a CPU and has waited, runnable, for
    /// one (the first two fields of /proc/PID/schedstat).
    struct SchedTimes {
        var run: UInt64 = 0
        var wait: UInt64 = 0
        static func - (lhs: Self, rhs: Self) -> Self { Self(run: lhs.run &- rhs.run, wait: lhs.wait &- rhs.wait) }
        static func + (lhs: Self, rhs: Self) -> Self { Self(run: lhs.run &+ rhs.run, wait: lhs.wait &+ rhs.wait) }
    }

    static func schedTimes(of pid: pid_t) -> SchedTimes? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/schedstat", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ").compactMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        guard fields.count >= 2 else { return nil }
        return SchedTimes(run: fields[0], wait: fields[1])
    }

    static func schedTimes(of pids: [pid_t]) -> SchedTimes {
        pids.compactMap(schedTimes(of:)).reduce(SchedTimes(), +)
    }

    /// CLOCK_MONOTONIC in seconds.
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
