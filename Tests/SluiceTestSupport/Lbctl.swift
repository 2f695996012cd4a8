// Runs the built lbctl (and other commands) the way a user would: a separate
// process, its stdout, stderr and exit status captured.
import Foundation
import Glibc

/// What a finished command left behind.
public struct CommandResult: Sendable, CustomStringConvertible {
    public var arguments: [String]
    public var status: Int32
    public var stdoutData: Data
    public var stderrData: Data
    /// Just before the spawn, and the exit as the reaper saw it: a late resumption of the
    /// task that awaited the command is in neither.
    public var started: ContinuousClock.Instant
    public var exited: ContinuousClock.Instant
    public var duration: Duration { exited - started }

    public var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
    public var stderr: String { String(decoding: stderrData, as: UTF8.self) }

    /// The whole exchange, for test failure messages.
    public var description: String {
        "$ \(arguments.joined(separator: " "))\n-> exit \(status)\nstdout: \(stdout)\nstderr: \(stderr)"
    }

    /// stdout parsed as JSON (status, stats and flows print it).
    public func json() throws -> Any {
        try JSONSerialization.jsonObject(with: stdoutData)
    }
}

public struct CommandError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public enum Command {
    /// Runs `executable` with `arguments` and awaits its exit (holding no thread).
    public static func run(_ executable: String, _ arguments: [String]) async throws -> CommandResult {
        try await withCheckedThrowingContinuation { continuation in
            do {
                try start(executable, arguments) { continuation.resume(with: $0) }
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }

    /// Starts `executable` with `arguments`; `finished` gets the result on the reaper's thread.
    /// Output goes to temporary files, so a chatty child can never block on a full pipe.
    public static func start(_ executable: String, _ arguments: [String],
                             finished: @escaping @Sendable (Result<CommandResult, any Error>) -> Void) throws {
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("sluice-cmd-\(UUID().uuidString.prefix(12))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: false)
        let outURL = scratch.appendingPathComponent("stdout"), errURL = scratch.appendingPathComponent("stderr")
        let started = ContinuousClock.now
        let child: ChildProcess
        do {
            child = try withOutputFiles(stdout: outURL, stderr: errURL) { out, err in
                try ChildProcess(executable, arguments, stdout: out, stderr: err)
            }
        } catch {
            try? FileManager.default.removeItem(at: scratch)
            throw error
        }
        child.onExit { status in
            defer { try? FileManager.default.removeItem(at: scratch) }
            finished(Result {
                CommandResult(arguments: [executable] + arguments, status: status,
                              stdoutData: try Data(contentsOf: outURL), stderrData: try Data(contentsOf: errURL),
                              started: started, exited: child.exitTime ?? .now)
            })
        }
    }

    /// Runs the command and throws, with its output, unless it exits 0.
    @discardableResult
    public static func check(_ executable: String, _ arguments: [String]) async throws -> CommandResult {
        let result = try await run(executable, arguments)
        guard result.status == 0 else { throw CommandError("command failed:\n\(result)") }
        return result
    }

    /// Creates `stdout` and `stderr` (the same file when they are equal), opens them for
    /// writing and hands them to `body`, which starts a child on them; the parent's
    /// handles are closed when it returns (the child keeps its own).
    public static func withOutputFiles<T>(stdout: URL, stderr: URL,
                                          _ body: (FileHandle, FileHandle) throws -> T) throws -> T {
        _ = FileManager.default.createFile(atPath: stdout.path, contents: nil)
        let out = try FileHandle(forWritingTo: stdout)
        defer { try? out.close() }
        guard stderr != stdout else { return try body(out, out) }
        _ = FileManager.default.createFile(atPath: stderr.path, contents: nil)
        let err = try FileHandle(forWritingTo: stderr)
        defer { try? err.close() }
        return try body(out, err)
    }
}

/// The lbctl under test.
public enum Lbctl {
    /// `$LBCTL`, else the lbctl beside the running test binary (same build
    /// configuration), else `<package root>/.build/debug/lbctl`.
    public static let path: String = {
        if let explicit = ProcessInfo.processInfo.environment["LBCTL"], !explicit.isEmpty { return explicit }
        let selfExe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let besideTests = URL(fileURLWithPath: selfExe).deletingLastPathComponent().appendingPathComponent("lbctl").path
        if !selfExe.isEmpty, FileManager.default.isExecutableFile(atPath: besideTests) { return besideTests }
        return packageRoot.appendingPathComponent(".build/debug/lbctl").path
    }()

    /// The directory holding Package.swift: three levels above this file.
    public static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs `lbctl arguments...`, inside `namespace` when given (through
    /// nsenter, which keeps the host's mounts and so the test's bpffs).
    public static func run(_ arguments: [String], in namespace: TestNamespace? = nil) async throws -> CommandResult {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw CommandError("lbctl not found at \(path): run `swift build` first, or set LBCTL")
        }
        // A concurrent `swift build` relinking lbctl makes exec fail with ETXTBSY (nsenter
        // reports it as 126); that is not lbctl's answer: ask again until the binary is
        // free, for at most 10 s.
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let result: CommandResult
            do {
                result = if let namespace {
                    try await Command.run(TestNamespace.nsenter, ["--net=\(namespace.path)", path] + arguments)
                } else {
                    try await Command.run(path, arguments)
                }
            } catch let error as NSError where error.code == Int(ETXTBSY) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                continue
            }
            guard result.status == 126, result.stderr.contains("Text file busy"), ContinuousClock.now < deadline else { return result }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Convenience: `lbctl arguments... --pin-path pinPath`.
    public static func run(_ arguments: String..., pinPath: String, in namespace: TestNamespace? = nil) async throws -> CommandResult {
        try await run(arguments + ["--pin-path", pinPath], in: namespace)
    }
}
