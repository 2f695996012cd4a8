// lbctl stats: the data plane's counters, summed over CPUs.
import ArgumentParser
import SluiceControl

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the data plane's counters.")

    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let dataplane = try Dataplane.open(pinPath: global.pinPath)
        let snapshot = try dataplane.counters()
        if json { return try printJSON(snapshot) }
        let verdicts = CounterSnapshot.verdictNames.map { "\($0) \(snapshot.verdicts[$0] ?? 0)" }.joined(separator: ", ")
        let drops = CounterSnapshot.dropNames.map { "\($0) \(snapshot.drops[$0] ?? 0)" }.joined(separator: ", ")
        print("verdicts:  \(verdicts)")
        print("flows:     new \(snapshot.newFlows), conntrack hits \(snapshot.conntrackHits), misses \(snapshot.conntrackMisses), unconfirmed \(snapshot.conntrackUnconfirmed)")
        print("other:     fragments passed \(snapshot.fragments), ip options forwarded \(snapshot.ipOptions)")
        print("mtu:       mss clamped \(snapshot.mssClamped), icmp too big sent \(snapshot.icmpTooBig), icmp errors steered \(snapshot.icmpSteered)")
        print("nat:       created \(snapshot.natCreated), replies \(snapshot.natReplies), icmp translated \(snapshot.natICMP), snat collisions \(snapshot.snatCollisions)")
        print("proxy v2:  headers \(snapshot.proxyHeaders), resent \(snapshot.proxyResent), tfo data removed \(snapshot.proxyTFOTrimmed), opened without syn \(snapshot.proxyMidstream)")
        print("drops:     \(drops)")
        var rows: [[String]] = []
        for service in snapshot.services {
            rows.append([service.name, "\(formatVIP(service.vip, service.port))/\(service.protocol)", "*",
                         String(service.packets), String(service.bytes), String(service.replyPackets), String(service.replyBytes)])
            for backend in service.backends {
                rows.append(["", "", backend.address, String(backend.packets), String(backend.bytes),
                             String(backend.replyPackets), String(backend.replyBytes)])
            }
        }
        print("")
        printTable(["SERVICE", "VIP", "BACKEND", "PACKETS", "BYTES", "REPLY PACKETS", "REPLY BYTES"], rows)
    }
}
