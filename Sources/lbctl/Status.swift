// lbctl status: interfaces, node settings, services and backends with their weights and health.
import ArgumentParser
import Foundation
import SluiceControl

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show interfaces, services and backends.",
        discussion: "With --server or --config, the agent answers (GET /v1/status), adding its drain state and each VIP's BGP announcement.")

    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions
    @OptionGroup var agent: AgentOptions

    func run() async throws {
        let report: StatusReport
        if agent.server != nil || agent.config != nil {
            let (client, _) = try agent.client(needsToken: false)
            report = try client.decode(StatusReport.self, try await client.exchange(.GET, "/v1/status", token: nil), what: "a status report")
        } else {
            report = try Dataplane.open(pinPath: global.pinPath).status()
        }
        if json { return try printJSON(report) }
        let interfaces = report.interfaces.map { "\($0.name) (\($0.mode))" }.joined(separator: ", ")
        print("pin path:   \(report.pinPath) (program id \(report.programID))")
        print("interfaces: \(interfaces.isEmpty ? "none" : interfaces)")
        print("node:       source_v4 \(report.node.sourceV4 ?? "-"), source_v6 \(report.node.sourceV6 ?? "-"), gateway \(report.node.gatewayMAC ?? "-"), maglev_table_size \(report.node.maglevTableSize)")
        let mtu = report.node.tunnelMTU.map { "\($0) (from the \(report.node.tunnelMTUSource == "service_file" ? "service file" : "interface"))" }
        print("tunnels:    tunnel_mtu \(mtu ?? "none (no limit)"), gue_port \(report.node.guePort)")
        let budget = report.node.natFlowBudget
        print("nat:        nat_flow_budget \(budget == 0 ? "0 (no limit)" : "\(budget) new translations a second per CPU")")
        if !report.node.snatV4.isEmpty || !report.node.snatV6.isEmpty {
            let v4 = report.node.snatV4.joined(separator: ", "), v6 = report.node.snatV6.joined(separator: ", ")
            print("snat:       v4 [\(v4)], v6 [\(v6)], ports \(report.node.snatPorts)")
        }
        var rows: [[String]] = []
        for service in report.services {
            for backend in service.backends {
                let hasHop = ["l2dsr", "nat", "fullnat"].contains(service.forwarding)
                let mac = hasHop ? backend.mac ?? "unresolved" : "-"
                let address = backend.port.map { formatVIP(backend.address, $0) } ?? backend.address
                rows.append([service.name, "\(formatVIP(service.vip, service.port))/\(service.protocol)", service.forwarding,
                             address, String(backend.weight), backend.state, backend.health, mac])
            }
        }
        if let fleet = report.bgp { printFleet(fleet) }
        print("")
        printTable(["SERVICE", "VIP", "FORWARDING", "BACKEND", "WEIGHT", "STATE", "HEALTH", "MAC"], rows)
    }
}

func formatVIP(_ address: String, _ port: UInt16) -> String {
    address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
}
