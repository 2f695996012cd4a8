// lbctl doctor [IFACE] [--backend -f FILE]: the preflight that checks what makes balancers
// fail in practice and says how to fix each finding. Exit 0 when every check passes, 1 with
// findings (2 for bad input).
import ArgumentParser
import Foundation
import SluiceControl
import SluiceCore

struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check this machine for what breaks XDP balancers, and say how to fix each finding.",
        discussion: "On a balancer: the kernel, BTF, bpffs, memlock and, with IFACE, the XDP hook, native XDP in the driver, MTU headroom for the pinned services, LRO and hardware GRO, a veth peer's checksum offload, rp_filter and the gateway's neighbour entry. With --backend and the service file: each DSR VIP on lo, arp_ignore/arp_announce for l2dsr, per ipip and gue service a decapsulator holding its VIP (and the GUE port), or the kernel's ipip/ip6tnl devices and FOU ports. Exit 0 when all pass, 1 with findings.")

    @Argument(help: "The interface the balancer runs on (balancer checks).") var interface: String?
    @Flag(help: "Check this machine as a backend of the services in --file.") var backend = false
    @Option(name: .shortAndLong, help: ArgumentHelp("The service file (with --backend).", valueName: "FILE")) var file: String?
    @Flag(help: "Print JSON (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if backend && file == nil { throw ValidationError("--backend needs --file: the services whose VIPs this machine serves") }
        if !backend && file != nil { throw ValidationError("--file is only used with --backend") }
        if backend && interface != nil { throw ValidationError("IFACE is for the balancer checks, not with --backend") }
    }

    func run() async throws {
        let checks: [PreflightCheck]
        if backend, let file {
            checks = Preflight.backend(services: try ServiceFileParser.load(path: file), decapPinPath: global.pinPath)
        } else {
            checks = await Preflight.balancer(interface: interface, pinPath: global.pinPath)
        }
        if json {
            try printJSON(checks)
        } else {
            for check in checks {
                print("\(check.ok ? "ok     " : "FINDING") \(check.check): \(check.detail)")
                if let fix = check.fix { print("        fix: \(fix)") }
            }
            let findings = checks.filter { !$0.ok }.count
            print(findings == 0 ? "all \(checks.count) checks pass" : "\(findings) finding\(findings == 1 ? "" : "s") of \(checks.count) checks")
        }
        if checks.contains(where: { !$0.ok }) { throw ExitCode(1) }
    }
}
