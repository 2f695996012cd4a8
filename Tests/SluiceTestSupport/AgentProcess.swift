// Runs `lbctl agent` as a separate process the way an operator would: its own config
// file, a private bpffs pin path, a loopback port the kernel picks (port 0: the agent
// prints the address it listens on), stopped with SIGTERM, killed if a test forgets.
// With a namespace it runs inside that network namespace (through nsenter, which keeps
// the host's mounts and so the pinned maps) and is reached with curl run there too,
// since its loopback address is not reachable from the test's namespace.
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Glibc

public final class AgentProcess: @unchecked Sendable {
    /// e.g. `http://127.0.0.1:41234`.
    public private(set) var baseURL = ""
    public let configPath: String
    /// The network namespace the agent runs in (`/run/netns/NAME`), nil for the caller's.
    public let namespace: String?
    private let process = Process()
    private let outURL: URL
    private let errURL: URL
    private let exited = DispatchSemaphore(value: 0)
    private var reaped = false

    /// Starts `lbctl agent --config configPath` and waits until it listens (or fails).
    /// `lbctl`: the binary to run (default: the lbctl under test).
    public init(configPath: String, namespace: String? = nil, lbctl: String = Lbctl.path, timeout: Duration = .seconds(30)) throws {
        self.configPath = configPath
        self.namespace = namespace
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-agent-\(UUID().uuidString.prefix(12))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: false)
        outURL = scratch.appendingPathComponent("stdout")
        errURL = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        defer {
            try? out.close()
            try? err.close()
        }
        // nsenter execs lbctl: the process (and its pid, which signals go to) is the agent itself.
        let (executable, arguments) = Self.command(in: namespace, lbctl, ["agent", "--config", configPath])
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        process.terminationHandler = { [exited] _ in exited.signal() }
        try process.run()

        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = stdout.split(separator: "\n").first(where: { $0.contains("listening on ") }),
               let url = line.split(separator: " ").first(where: { $0.hasPrefix("http://") || $0.hasPrefix("https://") }) {
                baseURL = String(url)
                return
            }
            if !process.isRunning { break }
            usleep(20_000)
        }
        let why = process.isRunning ? "did not listen within \(timeout)" : "exited with \(process.terminationStatus)"
        kill()
        throw CommandError("lbctl agent \(why)\nstdout: \(stdout)\nstderr: \(stderr)")
    }

    public var stdout: String { (try? String(contentsOf: outURL, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: errURL, encoding: .utf8)) ?? "" }
    public var pid: Int32 { process.processIdentifier }

    /// Sends `signal` and waits up to `timeout` for the exit; returns its status and how long it took
    /// (nil status: still running, then killed).
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) -> (status: Int32?, elapsed: Duration) {
        guard !reaped else { return (process.terminationStatus, .zero) }
        let start = ContinuousClock.now
        Glibc.kill(process.processIdentifier, signal)
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        if exited.wait(timeout: .now() + seconds) == .timedOut {
            kill()
            return (nil, ContinuousClock.now - start)
        }
        reaped = true
        process.waitUntilExit()
        return (process.terminationStatus, ContinuousClock.now - start)
    }

    private func kill() {
        guard !reaped else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        exited.wait()
        reaped = true
        process.waitUntilExit()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: outURL.deletingLastPathComponent())
    }

    /// One HTTP exchange with the agent.
    public struct Reply: Sendable, CustomStringConvertible {
        public var status: Int
        public var body: Data
        public var contentType: String?
        public var text: String { String(decoding: body, as: UTF8.self) }
        public func json() throws -> [String: Any] {
            guard let object = try JSONSerialization.jsonObject(with: body) as? [String: Any] else {
                throw CommandError("not a JSON object: \(text)")
            }
            return object
        }
        public var description: String { "HTTP \(status) \(contentType ?? "-")\n\(text)" }
    }

    /// `executable arguments...` as a command run in `namespace` (nsenter, which keeps the
    /// host's mounts; `ip netns exec` would hide bpffs), or unchanged for nil.
    public static func command(in namespace: String?, _ executable: String, _ arguments: [String]) -> (String, [String]) {
        guard let namespace else { return (executable, arguments) }
        return (TestNamespace.nsenter, ["--net=/run/netns/\(namespace)", executable] + arguments)
    }

    public func request(_ method: String, _ path: String, body: String? = nil, token: String? = nil) async throws -> Reply {
        if namespace != nil { return try curl(method, path, body: body, token: token) }
        var request = URLRequest(url: URL(string: baseURL + path)!, timeoutInterval: 30)
        request.httpMethod = method
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body { request.httpBody = Data(body.utf8) }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        return Reply(status: http.statusCode, body: data, contentType: http.value(forHTTPHeaderField: "Content-Type"))
    }

    /// One HTTP exchange through curl, run in the agent's namespace (synchronous; for
    /// agents in another namespace and for callers outside Swift concurrency). Extra
    /// curl options (`--cacert FILE`) go in `curlOptions`.
    public func curl(_ method: String, _ path: String, body: String? = nil, token: String? = nil,
                     curlOptions: [String] = [], timeoutSeconds: Int = 30) throws -> Reply {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-curl-\(UUID().uuidString.prefix(12))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let output = scratch.appendingPathComponent("body").path
        var arguments = ["-sS", "-o", output, "-w", "%{http_code} %{content_type}", "-X", method,
                         "--max-time", String(timeoutSeconds)] + curlOptions
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        if let body {
            let input = scratch.appendingPathComponent("request").path
            try body.write(toFile: input, atomically: false, encoding: .utf8)
            arguments += ["-H", "Content-Type: application/yaml", "--data-binary", "@" + input]
        }
        arguments.append(baseURL + path)
        let (executable, full) = Self.command(in: namespace, "/usr/bin/curl", arguments)
        let result = try Command.run(executable, full)
        guard result.status == 0 else { throw CommandError("curl failed:\n\(result)") }
        let fields = result.stdout.split(separator: " ", maxSplits: 1).map(String.init)
        guard let status = fields.first.flatMap({ Int($0) }) else { throw CommandError("curl printed no status:\n\(result)") }
        let contentType = fields.count > 1 && !fields[1].isEmpty ? fields[1] : nil
        return Reply(status: status, body: (try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data(), contentType: contentType)
    }
}
