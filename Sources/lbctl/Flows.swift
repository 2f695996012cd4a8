// lbctl flows: the connection-tracking table, with where each entry came from.
import ArgumentParser
import SluiceControl

struct Flows: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the connection-tracking table.")

    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let dataplane = try Dataplane.open(pinPath: global.pinPath)
        let flows = try dataplane.flows()
        if json { return try printJSON(flows) }
        printTable(["PROTO", "SOURCE", "DESTINATION", "SERVICE", "BACKEND", "ORIGIN"], flows.map {
            [$0.protocol, formatVIP($0.source, $0.sourcePort), formatVIP($0.destination, $0.destinationPort),
             $0.service ?? "-", $0.backend ?? "#\($0.backendID)", $0.origin == "local" ? "local" : "peer \($0.peer ?? "?")"]
        })
        print("\(flows.count) flows")
    }
}
