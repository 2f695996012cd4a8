// `lbctl agent` inside a lab's balancer namespace, over the lab's pinned balancer: its
// own config, token and services file in a private temp directory, listening on the
// namespace's loopback (port 0: the kernel picks). It can be killed with SIGKILL and
// started again on the same config, as an operator's supervisor would, and is reached
// with curl run in the namespace. deinit kills it (SIGKILL, not awaited) and removes its
// files, so a failing test leaves nothing running; lab.sh down ends whatever runs in the
// lab's namespaces as well.
import Foundation
import Glibc

public final class LabAgent: @unchecked Sendable {
    public let namespace: String
    public let pinPath: String
    /// The private directory holding the config, the token and the services file.
    public let directory: String
    public let configPath: String
    public let tokenPath: String
    public let servicesPath: String
    /// The token the agent was started with (rotate(to:) changes the file, not this).
    public let token: String
    public private(set) var process: AgentProcess

    /// Starts the agent in the namespace of `lab`'s balancer `balancer` (lb2 or lb3 in a
    /// lab with more than one); waits until it listens.
    public init(lab: Lab, balancer: Lab.Balancer = .lb, extraConfig: String = "") async throws {
        namespace = try lab.info("lb_ns", of: balancer)
        pinPath = try lab.info("pin_path", of: balancer)
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("sluice-labagent-\(lab.name)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        token = "lab-\(UUID().uuidString)"
        tokenPath = directory + "/token"
        servicesPath = directory + "/state/services.yaml"
        configPath = directory + "/agent.yaml"
        do {
            try (token + "\n").write(toFile: tokenPath, atomically: true, encoding: .utf8)
            try """
                listen: 127.0.0.1:0
                pin_path: \(pinPath)
                token_file: \(tokenPath)
                services_file: \(servicesPath)
                \(extraConfig)
                """.write(toFile: configPath, atomically: true, encoding: .utf8)
            process = try await AgentProcess(configPath: configPath, namespace: namespace)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// The agent process goes with its own deinit (SIGKILL, not awaited).
    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var pid: Int32 { process.pid }
    public var baseURL: String { process.baseURL }

    /// SIGKILL, no chance to clean up; waits until it is gone. Returns its exit status.
    @discardableResult
    public func kill() async -> Int32? { await process.stop(signal: SIGKILL).status }

    /// Starts a new agent on the same config (after kill() or stop()).
    public func start() async throws {
        await process.stop(signal: SIGKILL) // harmless when it is already gone
        process = try await AgentProcess(configPath: configPath, namespace: namespace)
    }

    /// One HTTP exchange with the agent, through curl in its namespace.
    public func request(_ method: String, _ path: String, body: String? = nil, token: String? = nil) async throws -> AgentProcess.Reply {
        try await process.curl(method, path, body: body, token: token)
    }
}

/// A Prometheus server (Debian's /usr/bin/prometheus) in a network namespace, scraping
/// `targets` every `interval`, with its TSDB in a private temp directory. deinit kills
/// it (SIGKILL, not awaited) and removes the directory.
public final class PrometheusServer: @unchecked Sendable {
    public static let binary = "/usr/bin/prometheus"
    public let namespace: String
    public let directory: String
    public let listen: String
    private let child: ChildProcess

    /// `port`: any port free in `namespace`'s loopback (a lab's namespace is fresh, so a
    /// fixed one below the ephemeral range is free there).
    public init(namespace: String, targets: [String], port: Int = 9090, interval: String = "1s") throws {
        self.namespace = namespace
        let listen = "127.0.0.1:\(port)"
        self.listen = listen
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-prometheus-\(UUID().uuidString.prefix(12))").path
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        do {
            let list = targets.map { "'\($0)'" }.joined(separator: ", ")
            try """
                global:
                  scrape_interval: \(interval)
                  scrape_timeout: \(interval)
                  evaluation_interval: \(interval)
                scrape_configs:
                  - job_name: sluice
                    static_configs:
                      - targets: [\(list)]
                """.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
            let (executable, arguments) = AgentProcess.command(in: namespace, Self.binary, [
                "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                "--web.listen-address=\(listen)", "--log.level=warn"])
            let log = URL(fileURLWithPath: directory + "/log")
            child = try Command.withOutputFiles(stdout: log, stderr: log) { out, err in
                try ChildProcess(executable, arguments, stdout: out, stderr: err)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    deinit {
        child.killInBackground()
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var isRunning: Bool { child.isRunning }
    public var log: String { (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? "" }

    /// SIGKILL (its TSDB is thrown away anyway) and wait.
    public func stop() async {
        await child.stop(signal: SIGKILL)
    }

    /// `GET /api/v1/query?query=QUERY` → `data.result` (nil when the server does not answer yet).
    public func query(_ query: String) async throws -> [[String: Any]]? {
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
        let (executable, arguments) = AgentProcess.command(in: namespace, "/usr/bin/curl", [
            "-sS", "--max-time", "5", "http://\(listen)/api/v1/query?query=\(encoded)"])
        let result = try await Command.run(executable, arguments)
        guard result.status == 0,
              let object = try? JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any],
              object["status"] as? String == "success",
              let data = object["data"] as? [String: Any] else { return nil }
        return data["result"] as? [[String: Any]]
    }
}
