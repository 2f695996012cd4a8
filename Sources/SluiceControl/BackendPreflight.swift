// lbctl doctor --backend: what a backend needs for the services that reach it without NAT.
// Each DSR VIP on lo; ARP kept quiet for l2dsr VIPs; and per ipip or gue service, something
// that unwraps its tunnel: the decapsulator pinned beside the balancer's pins (its VIP set
// holding the VIP, its GUE port the service file's), or the kernel's own tunnel devices
// and FOU ports.
import Foundation
import SluiceCore

extension Preflight {
    /// The backend side of `services`, with the decapsulator expected at `decapPinPath`.
    public static func backend(services: ServiceFile, decapPinPath: String) -> [PreflightCheck] {
        let dsr = services.services.filter { [.ipip, .gue, .l2dsr].contains($0.forwarding) }
        let local = Set(Decap.addresses(of: "lo"))
        var checks = Set(dsr.map(\.vip)).sorted { $0.description < $1.description }.map { vip in
            local.contains(vip)
                ? PreflightCheck("vip_on_loopback", ok: true, "\(vip) is on lo")
                : PreflightCheck("vip_on_loopback", ok: false, "\(vip) is not an address of lo: the kernel drops what the balancer delivers to it",
                                 fix: "ip addr add \(vip)/\(vip.family == .v4 ? 32 : 128) dev lo")
        }
        if dsr.contains(where: { $0.forwarding == .l2dsr && $0.vip.family == .v4 }) {
            let ignore = sysctl("net/ipv4/conf/all/arp_ignore") ?? 0, announce = sysctl("net/ipv4/conf/all/arp_announce") ?? 0
            checks.append(ignore >= 1 && announce >= 2
                ? PreflightCheck("arp", ok: true, "arp_ignore \(ignore), arp_announce \(announce)")
                : PreflightCheck("arp", ok: false, "arp_ignore \(ignore), arp_announce \(announce): this backend answers ARP for the l2dsr VIPs on lo, stealing them from the balancer",
                                 fix: "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2"))
        }
        checks += decap(services, pinPath: decapPinPath)
        return checks
    }

    /// One `decap` check per ipip or gue service. The outer family is that of the service's
    /// backends on this host (all of its backends' when none is here).
    static func decap(_ services: ServiceFile, pinPath: String) -> [PreflightCheck] {
        let tunnelled = services.services.filter { $0.forwarding == .ipip || $0.forwarding == .gue }
        guard !tunnelled.isEmpty else { return [] }
        let here = Set(NetworkInterface.all().flatMap { Decap.addresses(of: $0.name) })
        let guePort = services.node.effectiveGUEPort
        let ours = pinnedDecapsulator(at: pinPath)
        let links = KernelTunnels.links(), fou = KernelTunnels.fouPorts() ?? []
        return tunnelled.map { service in
            let gue = service.forwarding == .gue
            let what = "\(service.name) (\(service.forwarding.rawValue) to \(service.vip))"
            if let ours, ours.vips.contains(service.vip), !gue || ours.guePort == guePort {
                return PreflightCheck("decap", ok: true, "\(what): the decapsulator at \(pinPath) strips it")
            }
            let addresses = service.backends.map(\.address)
            let outers = Set(addresses.filter(here.contains).nonEmpty ?? addresses).map(\.family).sorted { $0.rawValue < $1.rawValue }
            let kernel = outers.map { KernelTunnels.receivers(outer: $0, inner: service.vip.family, guePort: gue ? guePort : nil, links: links, fou: fou) }
            if !outers.isEmpty, kernel.allSatisfy({ $0 != nil }) {
                return PreflightCheck("decap", ok: true, "\(what): the kernel's \(kernel.compactMap { $0 }.joined().joined(separator: " and ")) take it")
            }
            let kernelWay = outers.map { outer in
                (outer == .v4 ? "an ipip device up (modprobe ipip; ip link set tunl0 up)"
                              : "an ip6tnl device up taking \(service.vip.family) (ip link add NAME type ip6tnl mode \(service.vip.family == .v4 ? "ipip6" : "ip6ip6") ...)")
                    + (gue ? ", and ip fou add port \(guePort) gue\(outer == .v6 ? " -6" : "")" : "")
            }.joined(separator: "; ")
            guard let ours else {
                return PreflightCheck("decap", ok: false, "\(what): no decapsulator at \(pinPath) and no kernel tunnel that takes it: the balancer's packets are not unwrapped",
                                      fix: "lbctl decap attach IFACE (see lbctl decap --help), or the kernel's own: \(kernelWay)")
            }
            if !ours.vips.contains(service.vip) {
                return PreflightCheck("decap", ok: false, "\(what): \(service.vip) is not in the VIP set of the decapsulator at \(pinPath), which passes its tunnels on wrapped",
                                      fix: "lbctl decap attach IFACE again once the VIP is on lo (without --vip it takes lo's addresses), or with every --vip it should strip")
            }
            return PreflightCheck("decap", ok: false, "\(what): the decapsulator at \(pinPath) strips GUE to port \(ours.guePort == 0 ? "none (0)" : String(ours.guePort)), the service file's node.gue_port is \(guePort)",
                                  fix: "lbctl decap attach IFACE --gue-port \(guePort)")
        }
    }

    /// The VIP set and GUE port of the decapsulator pinned at `pinPath`; nil when none is.
    private static func pinnedDecapsulator(at pinPath: String) -> (vips: Set<IPAddress>, guePort: UInt16)? {
        guard DecapDataplane.isPinned(at: pinPath) else { return nil }
        do {
            let decap = try DecapDataplane.open(pinPath: pinPath)
            return (Set(try decap.addresses(in: .vips)), try decap.guePort())
        } catch {
            return nil
        }
    }
}

private extension Array {
    /// Self, or nil when empty.
    var nonEmpty: Self? { isEmpty ? nil : self }
}
