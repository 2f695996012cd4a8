// lbctl drain / undrain (through the agent, which drives BIRD) and lbctl withdraw (without
// it: for a supervisor once the agent has exited).
import ArgumentParser
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore

struct Drain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Withdraw every VIP of this node from BGP and wait until new flows stop arriving.",
        discussion: "The agent keeps the node drained (across its restarts) until `lbctl undrain`. Established flows keep being served while the routers move them away.")

    @Option(help: ArgumentHelp("Wait at most this long for new flows to stop (default: the agent's bgp.drain_timeout).", valueName: "DURATION"))
    var timeout: String?
    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var agent: AgentOptions

    func run() async throws {
        if let timeout, HealthCheck.parseDuration(timeout) == nil {
            throw ValidationError("--timeout \(String(reflecting: timeout)) is not a duration (e.g. 30s)")
        }
        let (client, token) = try agent.client(needsToken: true)
        let path = "/v1/drain" + (timeout.map { "?timeout=\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0)" } ?? "")
        let data = try await client.exchange(.POST, path, token: token, timeout: .hours(1))
        let report = try client.decode(DrainReport.self, data, what: "a drain report")
        if json { return try printJSON(report) }
        print("drained: withdrew \(report.withdrawn.isEmpty ? "nothing (no VIP was announced)" : report.withdrawn.joined(separator: ", "))")
        let waited = String(format: "%.1f", report.waitedSeconds)
        print(report.quiet
              ? "new flows stopped: \(report.newFlowsAfterWithdraw) arrived after the withdrawal, none in the last part of \(waited) s"
              : "new flows still arriving after \(waited) s (\(report.newFlowsAfterWithdraw) since the withdrawal): the timeout came first")
    }
}

struct Undrain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "End a drain: announce this node's servable VIPs again.")

    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var agent: AgentOptions

    func run() async throws {
        let (client, token) = try agent.client(needsToken: true)
        let status = try client.decode(FleetStatus.self, try await client.exchange(.POST, "/v1/undrain", token: token),
                                       what: "the bgp status")
        if json { return try printJSON(status) }
        print("undrained")
        printFleet(status)
    }
}

struct Withdraw: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Withdraw every VIP with the agent gone: empty its BIRD include file and reconfigure BIRD.",
        discussion: "For a supervisor after the agent exited (systemd: ExecStopPost), and before BIRD starts (the file must exist; BIRD then announces nothing until the agent is ready). With the agent running, use lbctl drain: the agent would announce again.")

    @Option(help: ArgumentHelp("The agent's configuration file (its bgp: section).", valueName: "FILE"))
    var config: String

    func run() throws {
        let agent = try AgentConfig.load(path: config)
        guard let bgp = agent.bgp else { throw ControlError.badInput("\(config): no bgp: section, nothing to withdraw") }
        let reconfigured: Bool
        do { reconfigured = try FleetAnnouncer.withdrawAll(config: bgp) } catch { throw ControlError.runtime(error.message) }
        print("withdrawn: \(bgp.includeFile) announces nothing; "
              + (reconfigured ? "BIRD reconfigured" : "BIRD is not running (\(bgp.birdSocket)): it reads the file when it starts"))
    }
}

/// The bgp lines of `lbctl status --server` and `lbctl undrain`.
func printFleet(_ fleet: FleetStatus) {
    print("bgp:        \(fleet.draining ? "DRAINING" : "serving"), attached \(fleet.attached ? "yes" : "no"), ready \(fleet.ready ? "yes" : "no"), BIRD \(fleet.birdSocket) (\(fleet.updates) update(s), \(fleet.errors) error(s)\(fleet.lastError.map { "; last: \($0)" } ?? ""))")
    let rows = fleet.vips.map { [$0.vip, $0.announced ? "announced" : "withdrawn", $0.reason ?? "-", $0.services.joined(separator: ",")] }
    if !rows.isEmpty {
        print("")
        printTable(["VIP", "BGP", "WHY NOT", "SERVICES"], rows)
    }
}
