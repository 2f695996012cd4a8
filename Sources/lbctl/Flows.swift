// lbctl flows: the connection-tracking table, with where each entry came from and, for nat
// and fullnat, each translation.
import ArgumentParser
import SluiceControl

struct Flows: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the connection-tracking table and its translations.")

    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let dataplane = try Dataplane.open(pinPath: global.pinPath)
        let flows = try dataplane.flows()
        if json { return try printJSON(flows) }
        printTable(FlowColumns.header, flows.map(FlowColumns.row))
        print("\(flows.count) flows")
    }
}

/// The table's columns: the client, the VIP, the mode of a translated flow, the SNAT
/// address:port (fullnat), the backend (with its port when translated), the PROXY v2
/// header's sequence offset and state, TCP state, age.
enum FlowColumns {
    static let header = ["PROTO", "CLIENT", "VIP", "SERVICE", "NAT", "SNAT", "BACKEND", "PROXY", "STATE", "AGE", "ORIGIN"]

    static func row(_ flow: FlowEntry) -> [String] {
        let backend = flow.backend ?? "#\(flow.backendID)"
        return [flow.protocol, formatVIP(flow.source, flow.sourcePort), formatVIP(flow.destination, flow.destinationPort),
                flow.service ?? "-", flow.nat ?? "-",
                flow.snatAddress.map { formatVIP($0, flow.snatPort ?? 0) } ?? "-",
                flow.backendPort.map { formatVIP(backend, $0) } ?? backend,
                flow.seqOffset.map { "+\($0) \(flow.proxy ?? "?")" } ?? "-",
                flow.tcpState ?? "-", flow.ageSeconds.map { "\($0)s" } ?? "-",
                flow.origin == "local" ? "local" : "peer \(flow.peer ?? "?")"]
    }
}
