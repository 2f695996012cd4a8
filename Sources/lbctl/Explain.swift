// lbctl explain: where the data plane would send one packet now, and why, from the pinned maps.
import ArgumentParser
import Glibc
import SluiceControl
import SluiceCore

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what the data plane would do with a packet now, and why.",
        discussion: """
            PROTO is tcp or udp; SRC and DST are ADDRESS:PORT, an IPv6 address in brackets ([2001:db8::1]:443). \
            A TCP packet is taken as an ACK of an open connection unless --syn. Prints the verdict (pass, tx, redirect \
            or drop and its reason), each check in the data plane's order, the service, the flow's connection-table \
            entry, the Maglev slot and backend (weight, health), the forwarding mode and the headers written. Reads \
            the maps only: nothing is recorded or refreshed.
            """)

    @Argument(help: ArgumentHelp("tcp or udp.", valueName: "PROTO")) var proto: String
    @Argument(help: ArgumentHelp("The packet's source, ADDRESS:PORT.", valueName: "SRC")) var source: String
    @Argument(help: ArgumentHelp("The packet's destination, ADDRESS:PORT.", valueName: "DST")) var destination: String
    @Flag(help: "A TCP SYN (a connection opening) rather than an ACK.") var syn = false
    @Option(help: ArgumentHelp("The interface the packet arrives on (default: the one the balancer is attached to).",
                               valueName: "IFACE"))
    var interface: String?
    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let query = try Self.query(proto: proto, source: source, destination: destination, syn: syn)
        let dataplane = try Dataplane.open(pinPath: global.pinPath)
        let name = try interface ?? Attacher.attachedInterfaces(programID: dataplane.programID()).first?.name
        var index: UInt32 = 0
        var mac: MACAddress?
        if let name {
            index = UInt32(try NetworkInterface.named(name).index)
            mac = NetworkInterface.hardwareAddress(of: name)
        }
        let explanation = try dataplane.explainer(ingressIndex: index, localMAC: mac).explain(query)
        if json { return try printJSON(explanation) }
        print(Self.render(explanation, interface: name), terminator: "")
    }

    /// The packet the arguments name; a bad one is bad input naming the argument and value.
    static func query(proto: String, source: String, destination: String, syn: Bool) throws(ControlError) -> ExplainQuery {
        guard let l4 = L4Protocol(rawValue: proto.lowercased()) else {
            throw .badInput("PROTO: \(proto) is not tcp or udp")
        }
        let (src, sport) = try endpoint(source, argument: "SRC")
        let (dst, dport) = try endpoint(destination, argument: "DST")
        guard src.family == dst.family else {
            throw .badInput("SRC \(source) and DST \(destination) are not of one address family")
        }
        if syn && l4 == .udp { throw .badInput("--syn: a UDP datagram has no SYN") }
        return ExplainQuery(proto: l4, source: src, sourcePort: sport, destination: dst, destinationPort: dport, syn: syn)
    }

    private static func endpoint(_ text: String, argument: String) throws(ControlError) -> (IPAddress, UInt16) {
        let bad = ControlError.badInput("\(argument): \(text) is not ADDRESS:PORT (192.0.2.1:80, [2001:db8::1]:443)")
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { throw bad }
        var host = text[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
        } else if host.contains(":") {
            throw bad  // an IPv6 address needs brackets
        }
        guard let address = IPAddress(String(host)) else { throw bad }
        return (address, port)
    }

    static func render(_ e: Explanation, interface: String?) -> String {
        var out = "\(e.packet.protocol)\(e.packet.syn ? " SYN" : "") \(e.packet.source):\(e.packet.sourcePort) -> "
            + "\(e.packet.destination):\(e.packet.destinationPort)" + (interface.map { " on \($0)" } ?? "") + "\n"
        out += "verdict: \(e.verdict)\(e.dropReason.map { " (\($0))" } ?? ""): \(e.reason)\n"
        for step in e.steps { out += "  - \(step)\n" }
        if let s = e.service {
            out += "service: \(s.name) (\(formatVIP(s.vip, s.port))/\(s.protocol), slot \(s.slot), \(s.forwarding)"
                + (s.clientAddress.map { ", \($0)" } ?? "") + ")\n"
        }
        if let f = e.flow {
            var parts = ["\(f.table) (\(f.current ? "current" : "stale"))", f.origin == "local" ? "local" : "peer \(f.peer ?? "?")"]
            if let age = f.ageSeconds { parts.append("\(age)s ago") }
            if let state = f.tcpState { parts.append(state) }
            if let nat = f.nat { parts.append(nat + (f.snatAddress.map { " from \(formatVIP($0, f.snatPort ?? 0))" } ?? "")) }
            if let proxy = f.proxy { parts.append("proxy \(proxy)") }
            out += "flow: " + parts.joined(separator: ", ") + "\n"
        }
        if let p = e.placement {
            out += "placement: \(p.by), hash 0x\(String(p.hash, radix: 16))" + (p.slot.map { ", slot \($0) of \(p.tableSize ?? 0)" } ?? "") + "\n"
        }
        if let b = e.backend {
            out += "backend: #\(b.id) \(b.port.map { formatVIP(b.address, $0) } ?? b.address), weight \(b.weight), \(b.health)"
                + (b.takesNewFlows ? "" : ", takes no new flows") + (b.mac.map { ", MAC \($0)" } ?? "") + "\n"
        }
        if let o = e.output {
            out += "ethernet: -> \(o.ethernetDestination)" + (o.ethernetSource.map { " from \($0)" } ?? "")
                + (o.interfaceIndex.map { " out of interface #\($0)" } ?? "") + "\n"
            if let h = o.outer {
                out += "outer: IPv\(h.family) \(h.source) -> \(h.destination), protocol \(h.protocol), ttl \(h.ttl)"
                    + (h.dontFragment == true ? ", DF" : "") + ", traffic class copied"
                    + (h.udpSourcePort.map { "; UDP \($0) -> \(h.udpDestinationPort ?? 0)" } ?? "") + "\n"
            }
            if let r = o.rewrite {
                var parts: [String] = []
                if let source = r.source { parts.append("source \(formatVIP(source, r.sourcePort ?? 0))") }
                if let destination = r.destination { parts.append("destination \(formatVIP(destination, r.destinationPort ?? 0))") }
                out += "rewrite: " + parts.joined(separator: ", ") + "\n"
            }
        }
        out += "records: " + (e.records.isEmpty ? "nothing" : e.records.joined(separator: ", ")) + "\n"
        for note in e.notes { out += "note: \(note)\n" }
        return out
    }
}
