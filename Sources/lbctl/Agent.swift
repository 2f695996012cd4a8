// lbctl agent --config FILE: the long-running agent (control API, /metrics) over the pinned data plane.
import ArgumentParser
import Logging
import SluiceAgent
import SluiceControl

struct Agent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the agent: the control API and /metrics over the pinned data plane, until SIGTERM or SIGINT.",
        discussion: "It adopts what is pinned (loading the balancer only if nothing is, never attaching it), re-applies the persisted services file, and leaves the data plane forwarding when it stops. See the README for the configuration keys.")

    @Option(help: ArgumentHelp("The agent's configuration (YAML).", valueName: "FILE"))
    var config: String = "/etc/sluice/agent.yaml"

    func run() async throws {
        let settings = try AgentConfig.load(path: config)
        var logger = Logger(label: "sluice.agent")
        logger.logLevel = .info
        try await AgentServer.run(config: settings, logger: logger)
    }
}
