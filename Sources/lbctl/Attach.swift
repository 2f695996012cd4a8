// lbctl attach IFACE: load (or reuse) the balancer and hook it to an interface.
import ArgumentParser
import CSluice
import SluiceBPF
import SluiceControl
import SluiceCore

enum XDPModeArgument: String, CaseIterable {
    case native, generic
    var mode: XDPMode { self == .native ? .native : .generic }
}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach the balancer to an interface (XDP); it keeps running after lbctl exits.")

    @Argument(help: "The interface that receives traffic for the VIPs.") var interface: String
    @Option(help: "XDP mode: native (driver) or generic (skb).") var mode: XDPModeArgument = .native
    @Option(name: .customLong("gateway-mac"), help: ArgumentHelp(
        "MAC of the next hop for tunnelled packets (default: the neighbour of the default route via IFACE).", valueName: "MAC"))
    var gatewayMAC: String?
    @Option(name: .customLong("conntrack-size"), help: "Entries of the connection table, when the balancer is first loaded.")
    var conntrackSize: UInt32 = UInt32(SL_CT_DEFAULT_SIZE)
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if let gatewayMAC, MACAddress(gatewayMAC) == nil {
            throw ValidationError("--gateway-mac: \"\(gatewayMAC)\" is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
        }
        if conntrackSize == 0 { throw ValidationError("--conntrack-size: must be at least 1") }
    }

    func run() throws {
        let outcome = try Attacher.attach(interface: interface, mode: mode.mode, gateway: gatewayMAC.flatMap(MACAddress.init),
                                          pinPath: global.pinPath, conntrackSize: conntrackSize)
        let verb = outcome.alreadyAttached ? "already attached to" : "attached to"
        print("\(verb) \(interface) (\(outcome.mode.rawValue) mode), gateway \(outcome.gateway), pins in \(global.pinPath)")
    }
}
