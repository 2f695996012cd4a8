// A real BIRD 2 (Debian's bird2) in a test's network namespace, in the foreground (-f) so
// that it is a child of the test: its config, control socket and log in a private temp
// directory. deinit kills it (SIGKILL, not awaited) and removes the directory.
import Foundation
import Glibc

public final class BIRDProcess: @unchecked Sendable {
    public static let binary = "/usr/sbin/bird"
    public static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: binary) }
    public let directory: String
    public let configPath: String
    public let socketPath: String
    public let logPath: String
    private let child: ChildProcess

    /// Starts BIRD in `namespace` with `config` (`log` and the paths are added by this) and
    /// waits until its control socket answers. `prepare` runs first with the directory, for
    /// files the config includes.
    public init(namespace: TestNamespace, config: (String) -> String, prepare: (String) throws -> Void = { _ in }) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-bird-\(UUID().uuidString.prefix(12))").path
        self.directory = directory
        let configPath = directory + "/bird.conf", socketPath = directory + "/bird.ctl", logPath = directory + "/bird.log"
        self.configPath = configPath
        self.socketPath = socketPath
        self.logPath = logPath
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            try prepare(directory)
            try ("log \"\(logPath)\" all;\n" + config(directory)).write(toFile: configPath, atomically: true, encoding: .utf8)
            let log = URL(fileURLWithPath: directory + "/stderr")
            child = try Command.withOutputFiles(stdout: log, stderr: log) { out, err in
                try ChildProcess(TestNamespace.nsenter, ["--net=\(namespace.path)", Self.binary, "-f", "-c", configPath,
                                                         "-s", socketPath, "-P", directory + "/bird.pid"], stdout: out, stderr: err)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        // BIRD answers within milliseconds. The limit is for a loaded machine, where each look
        // (a birdc process) and this task's resumption can take seconds: a clean-clone CI run
        // stalled every test of the process for two minutes, and a look made after that found
        // 10 s gone. It gives up only after 60 s *and* 40 looks.
        let deadline = ContinuousClock.now + .seconds(60)
        var looks = 0
        while true {
            let look = try? await birdc("show status")
            looks += 1
            if look?.status == 0 { break }
            guard child.isRunning, ContinuousClock.now < deadline || looks < 40 else {
                let output = (try? String(contentsOfFile: directory + "/stderr", encoding: .utf8)) ?? ""
                throw SpawnError(description: "bird did not answer on \(socketPath) after \(looks) looks (running: \(child.isRunning)); "
                                 + "last birdc: \(look.map { "\($0)" } ?? "could not run"); bird's output: \(output)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    deinit {
        child.killInBackground()
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var isRunning: Bool { child.isRunning }

    /// `birdc -s SOCKET ARGS...`.
    public func birdc(_ command: String) async throws -> CommandResult {
        try await Command.run("/usr/sbin/birdc", ["-s", socketPath] + command.split(separator: " ").map(String.init))
    }

    /// SIGKILL, and wait until it is gone.
    public func kill() async {
        await child.stop(signal: SIGKILL)
    }
}
