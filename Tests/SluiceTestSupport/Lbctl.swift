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
    /// Runs `executable` with `arguments` and waits for it. Output goes to
    /// temporary files, so a chatty child can never block on a full pipe.
    public static func run(_ executable: String, _ arguments: [String]) throws -> CommandResult {
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("sluice-cmd-\(UUID().uuidString.prefix(12))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let outURL = scratch.appendingPathComponent("stdout"), errURL = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        defer {
            try? out.close()
            try? err.close()
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        exited.wait()
        return CommandResult(arguments: [executable] + arguments, status: process.terminationStatus,
                             stdoutData: try Data(contentsOf: outURL), stderrData: try Data(contentsOf: errURL))
    }

    /// Runs the command and throws, with its output, unless it exits 0.
    @discardableResult
    public static func check(_ executable: String, _ arguments: [String]) throws -> CommandResult {
        let result = try run(executable, arguments)
        guard result.status == 0 else { throw CommandError("command failed:\n\(result)") }
        return result
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
    public static func run(_ arguments: [String], in namespace: TestNamespace? = nil) throws -> CommandResult {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw CommandError("lbctl not found at \(path): run `swift build` first, or set LBCTL")
        }
        var attempt = 0
        while true {
            // A concurrent `swift build` relinking lbctl makes exec fail with
            // ETXTBSY (nsenter reports it as 126); that is not lbctl's answer.
            attempt += 1
            let result: CommandResult
            do {
                result = if let namespace {
                    try Command.run(TestNamespace.nsenter, ["--net=\(namespace.path)", path] + arguments)
                } else {
                    try Command.run(path, arguments)
                }
            } catch let error as NSError where error.code == Int(ETXTBSY) && attempt < 20 {
                usleep(500_000)
                continue
            }
            guard result.status == 126, result.stderr.contains("Text file busy"), attempt < 20 else { return result }
            usleep(500_000)
        }
    }

    /// Convenience: `lbctl arguments... --pin-path pinPath`.
    public static func run(_ arguments: String..., pinPath: String, in namespace: TestNamespace? = nil) throws -> CommandResult {
        try run(arguments + ["--pin-path", pinPath], in: namespace)
    }
}
