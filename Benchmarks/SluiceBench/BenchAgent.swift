// A real `lbctl agent` process over a private bpffs, for the figures of the agent: its
// configuration, token and state in a scratch directory, all removed when it is closed.
import Foundation
import SluiceControl
import SluiceTestSupport

final class BenchAgent {
    let mount: BPFFSMount
    let pinPath: String
    let token = UUID().uuidString
    private let directory: String
    private(set) var process: AgentProcess!

    /// `extraConfig` is appended to the agent's configuration; `prepare` runs on the pin
    /// path before the agent starts (e.g. to fill the connection table).
    init(lbctl: String, extraConfig: String = "", prepare: (String) throws -> Void = { _ in }) throws {
        mount = try BPFFSMount()
        pinPath = mount.path + "/lb"
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("sluice-bench-agent-\(UUID().uuidString.prefix(8))").path
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            try (token + "\n").write(toFile: directory + "/token", atomically: true, encoding: .utf8)
            try """
                listen: 127.0.0.1:0
                pin_path: \(pinPath)
                token_file: \(directory)/token
                services_file: \(directory)/state/services.yaml

                """.appending(extraConfig).write(toFile: directory + "/agent.yaml", atomically: true, encoding: .utf8)
            try prepare(pinPath)
            // The test-support helpers are async; the bench runs them from its synchronous thread.
            let config = directory + "/agent.yaml"
            process = try Blocking.run { try await AgentProcess(configPath: config, lbctl: lbctl, timeout: .seconds(120)) }
        } catch {
            close()
            throw error
        }
    }

    func close() {
        if let process { _ = try? Blocking.run { await process.stop() } }
        process = nil
        Dataplane.removePins(at: pinPath)
        mount.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { close() }
}
