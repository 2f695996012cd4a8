// lbctl decap attach|detach IFACE: the backend side of direct server return, stripping the balancer's tunnels.
import ArgumentParser
import CSluice
import SluiceControl
import SluiceCore

struct DecapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decap",
        abstract: "Run the decapsulator on a backend: strip the balancer's IP-in-IP and GUE tunnels in XDP so the kernel delivers the inner packet.",
        subcommands: [DecapAttach.self, DecapDetach.self])
}

struct DecapAttach: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Attach the decapsulator to an interface (XDP); it keeps running after lbctl exits. Re-running it replaces the address sets.")

    @Argument(help: "The interface the tunnelled packets arrive on.") var interface: String
    @Option(name: .customLong("vip"), help: ArgumentHelp(
        "A VIP served here: tunnels whose inner destination it is are stripped (repeatable; default: every address on lo but 127.0.0.0/8 and ::1).",
        valueName: "ADDR"))
    var vips: [String] = []
    @Option(name: .customLong("local"), help: ArgumentHelp(
        "An outer destination that is this host (repeatable; default: every address on IFACE).", valueName: "ADDR"))
    var locals: [String] = []
    @Option(name: .customLong("gue-port"), help: ArgumentHelp(
        "The UDP port of GUE tunnels to strip (the balancer's node.gue_port); 0 = strip no GUE.", valueName: "N"))
    var guePort: UInt16 = UInt16(SL_GUE_DEFAULT_PORT)
    @Option(help: "XDP mode: native (driver) or generic (skb).") var mode: XDPModeArgument = .native
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        for (option, values) in [("--vip", vips), ("--local", locals)] {
            for value in values where IPAddress(value) == nil {
                throw ValidationError("\(option): \"\(value)\" is not an IPv4 or IPv6 address")
            }
        }
    }

    func run() throws {
        let outcome = try Decap.attach(interface: interface, mode: mode.mode,
                                       vips: vips.isEmpty ? nil : vips.compactMap(IPAddress.init),
                                       locals: locals.isEmpty ? nil : locals.compactMap(IPAddress.init),
                                       guePort: guePort, pinPath: global.pinPath)
        let verb = outcome.alreadyAttached ? "decapsulator already attached to" : "decapsulator attached to"
        print("\(verb) \(interface) (\(outcome.mode.rawValue) mode), pins in \(global.pinPath)")
        print("local: \(outcome.locals.map(\.description).joined(separator: " "))")
        print("vips: \(outcome.vips.map(\.description).joined(separator: " "))")
        print("gue_port: \(outcome.guePort == 0 ? "off" : String(outcome.guePort))")
    }
}

struct DecapDetach: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detach",
        abstract: "Detach the decapsulator from an interface and, when it runs nowhere else, remove its pins.")

    @Argument(help: "The interface to detach from.") var interface: String
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let outcome = try Decap.detach(interface: interface, pinPath: global.pinPath)
        print(outcome.wasAttached ? "decapsulator detached from \(interface)" : "no decapsulator was attached to \(interface)")
        if outcome.pinsRemoved {
            print("removed the decapsulator's pins in \(global.pinPath)")
        } else if !outcome.stillAttached.isEmpty {
            print("kept the decapsulator's pins in \(global.pinPath): still attached to \(outcome.stillAttached.joined(separator: ", "))")
        }
    }
}
