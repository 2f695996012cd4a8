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
    public let baseURL: String
    public let configPath: String
    /// The network namespace the agent runs in (`/run/netns/NAME`), nil for the caller's.
    public let namespace: String?
    private let child: ChildProcess
    private let outURL: URL
    private let errURL: URL

    /// Starts `lbctl agent --config configPath` and waits until it listens (or fails).
    /// `lbctl`: the binary to run (default: the lbctl under test).
    public init(configPath: String, namespace: String? = nil, lbctl: String = Lbctl.path, timeout: Duration = .seconds(30)) async throws {
        self.configPath = configPath
        self.namespace = namespace
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-agent-\(UUID().uuidString.prefix(12))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: false)
        let outURL = scratch.appendingPathComponent("stdout"), errURL = scratch.appendingPathComponent("stderr")
        self.outURL = outURL
        self.errURL = errURL
        // nsenter execs lbctl: the process (and its pid, which signals go to) is the agent itself.
        let (executable, arguments) = Self.command(in: namespace, lbctl, ["agent", "--config", configPath])
        let child: ChildProcess
        do {
            child = try Command.withOutputFiles(stdout: outURL, stderr: errURL) { out, err in
                try ChildProcess(executable, arguments, stdout: out, stderr: err)
            }
        } catch {
            try? FileManager.default.removeItem(at: scratch)
            throw error
        }
        self.child = child

        // Polls the agent's stdout for the address it prints; it reads once more after
        // every sleep before it looks at the clock, so a late resumption costs no answer.
        let deadline = ContinuousClock.now + timeout
        while true {
            let printed = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
            if let line = printed.split(separator: "\n").first(where: { $0.contains("listening on ") }),
               let url = line.split(separator: " ").first(where: { $0.hasPrefix("http://") || $0.hasPrefix("https://") }) {
                baseURL = String(url)
                return
            }
            if !child.isRunning || ContinuousClock.now >= deadline { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let why = child.isRunning ? "did not listen within \(timeout)" : "exited with \(child.status ?? -1)"
        await child.stop(signal: SIGKILL)
        let output = "stdout: \((try? String(contentsOf: outURL, encoding: .utf8)) ?? "")\n"
            + "stderr: \((try? String(contentsOf: errURL, encoding: .utf8)) ?? "")"
        try? FileManager.default.removeItem(at: scratch)
        throw CommandError("lbctl agent \(why)\n\(output)")
    }

    public var stdout: String { (try? String(contentsOf: outURL, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: errURL, encoding: .utf8)) ?? "" }
    public var pid: Int32 { child.pid }
    public var isRunning: Bool { child.isRunning }

    /// Sends `signal` and waits up to `timeout` for the exit; returns its status and how long
    /// the agent took to exit after the signal (nil status: still running, then killed).
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(10)) async -> (status: Int32?, elapsed: Duration) {
        await child.stop(signal: signal, timeout: timeout)
    }

    /// A test that forgets to stop the agent: SIGKILL, not awaited.
    deinit {
        child.killInBackground()
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
        if namespace != nil { return try await curl(method, path, body: body, token: token) }
        var request = URLRequest(url: URL(string: baseURL + path)!, timeoutInterval: 30)
        request.httpMethod = method
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body { request.httpBody = Data(body.utf8) }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        return Reply(status: http.statusCode, body: data, contentType: http.value(forHTTPHeaderField: "Content-Type"))
    }

    /// One HTTP exchange through curl, run in the agent's namespace (for agents in another
    /// namespace). Extra curl options (`--cacert FILE`) go in `curlOptions`.
    public func curl(_ method: String, _ path: String, body: String? = nil, token: String? = nil,
                     curlOptions: [String] = [], timeoutSeconds: Int = 30) async throws -> Reply {
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
        let result = try await Command.run(executable, full)
        guard result.status == 0 else { throw CommandError("curl failed:\n\(result)") }
        let fields = result.stdout.split(separator: " ", maxSplits: 1).map(String.init)
        guard let status = fields.first.flatMap({ Int($0) }) else { throw CommandError("curl printed no status:\n\(result)") }
        let contentType = fields.count > 1 && !fields[1].isEmpty ? fields[1] : nil
        return Reply(status: status, body: (try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data(), contentType: contentType)
    }
}
