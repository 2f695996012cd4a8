// lbctl detach IFACE: unhook the balancer and, when it is nowhere else, remove its pins.
import ArgumentParser
import SluiceControl

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Detach the balancer from an interface and remove its pins.")

    @Argument(help: "The interface to detach from.") var interface: String
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let outcome = try Attacher.detach(interface: interface, pinPath: global.pinPath)
        print(outcome.wasAttached ? "detached from \(interface)" : "nothing was attached to \(interface)")
        if outcome.pinsRemoved {
            print("removed the pins in \(global.pinPath)")
        } else if !outcome.stillAttached.isEmpty {
            print("kept the pins in \(global.pinPath): still attached to \(outcome.stillAttached.joined(separator: ", "))")
        }
    }
}
