// What `lbctl doctor` checks: the things that make XDP balancers fail in practice, each
// with what was found and how to fix it. Everything is read from this network namespace:
// /proc/sys/net and /proc/net follow the reader's namespace, sysfs would not under nsenter.
import Foundation
import Glibc
import SluiceBPF
import SluiceCore

/// One check's outcome.
public struct PreflightCheck: Sendable, Codable, Equatable {
    public var check: String
    public var ok: Bool
    /// What was found.
    public var detail: String
    /// How to fix it (nil when ok).
    public var fix: String?

    public init(_ check: String, ok: Bool, _ detail: String, fix: String? = nil) {
        self.check = check
        self.ok = ok
        self.detail = detail
        self.fix = ok ? nil : fix
    }
}

public enum Preflight {
    /// The balancer side: the kernel, bpffs, memlock and, for `interface`, the XDP hook, MTU
    /// headroom for the services pinned at `pinPath` (every tunnel mode when none), offloads,
    /// reverse-path filtering and the gateway's neighbour entry.
    public static func balancer(interface name: String?, pinPath: String) async -> [PreflightCheck] {
        var checks = [kernel(), btf(), bpffs(pinPath), memlock()]
        guard let name else { return checks }
        guard let interface = try? NetworkInterface.named(name) else {
            return checks + [PreflightCheck("interface", ok: false, "\(name): no such interface in this network namespace",
                                            fix: "name the interface that receives the VIPs' traffic (ip -br link)")]
        }
        checks.append(xdp(interface, pinPath: pinPath))
        checks.append(xdpNative(interface))
        checks.append(mtu(interface, pinPath: pinPath))
        checks += offloads(interface)
        if let veth = await vethChecksum(interface) { checks.append(veth) }
        checks.append(rpFilter(interface.name))
        checks.append(gateway(interface, pinPath: pinPath))
        return checks
    }

    // MARK: The checks

    static func kernel() -> PreflightCheck {
        PreflightCheck("kernel", ok: kernelAtLeast(5, 10), "Linux \(kernelRelease())", fix: "Sluice needs Linux 5.10 or later (BTF, XDP, ring buffers)")
    }

    static func btf() -> PreflightCheck {
        let path = "/sys/kernel/btf/vmlinux"
        return access(path, R_OK) == 0
            ? PreflightCheck("btf", ok: true, "\(path) is readable")
            : PreflightCheck("btf", ok: false, "\(path) is missing", fix: "a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    }

    static func bpffs(_ pinPath: String) -> PreflightCheck {
        let root = pinPath.hasPrefix("/sys/fs/bpf/") ? "/sys/fs/bpf" : (pinPath as NSString).deletingLastPathComponent
        if PinDirectory.isBPFFS(root) { return PreflightCheck("bpffs", ok: true, "\(root) is bpffs") }
        return PreflightCheck("bpffs", ok: false, "\(root) is not bpffs: the pins of \(pinPath) cannot be made",
                              fix: root == "/sys/fs/bpf" ? "mount -t bpf bpf /sys/fs/bpf (lbctl attach does it; systemd at boot)"
                                                         : "mount -t bpf bpf \(root), or use a --pin-path under /sys/fs/bpf")
    }

    static func memlock() -> PreflightCheck {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(8) /* RLIMIT_MEMLOCK */, &limit)
        let unlimited = limit.rlim_cur == rlim_t.max  // RLIM_INFINITY
        // Since 5.11 BPF memory is charged to the memory cgroup, not to RLIMIT_MEMLOCK.
        if kernelAtLeast(5, 11) || unlimited {
            return PreflightCheck("memlock", ok: true, unlimited ? "RLIMIT_MEMLOCK unlimited" : "BPF memory is charged to the memory cgroup (Linux 5.11+)")
        }
        return PreflightCheck("memlock", ok: false, "RLIMIT_MEMLOCK is \(limit.rlim_cur) bytes: the maps will not fit",
                              fix: "ulimit -l unlimited, or LimitMEMLOCK=infinity in the unit")
    }

    static func xdp(_ interface: NetworkInterface, pinPath: String) -> PreflightCheck {
        let ours = try? Dataplane.pinnedProgramID(at: pinPath)
        guard let attached = try? XDP.query(ifindex: interface.index) else {
            return PreflightCheck("xdp", ok: true, "no XDP program on \(interface.name)")
        }
        if attached.programID == ours {
            return attached.mode == .generic
                ? PreflightCheck("xdp", ok: false, "the balancer runs in generic (skb) mode on \(interface.name): it works, at a fraction of native speed",
                                 fix: "lbctl detach \(interface.name) && lbctl attach \(interface.name) (native) on a driver with XDP support")
                : PreflightCheck("xdp", ok: true, "the balancer is attached to \(interface.name) (\(attached.mode.rawValue))")
        }
        return PreflightCheck("xdp", ok: false, "another XDP program (id \(attached.programID)) is attached to \(interface.name): lbctl attach refuses to replace it",
                              fix: "find its owner (bpftool net show dev \(interface.name)) and detach it")
    }

    /// Whether the driver runs XDP itself: without it native attach is refused, and generic
    /// (skb) mode runs after the kernel has built an skb for every frame.
    static func xdpNative(_ interface: NetworkInterface) -> PreflightCheck {
        let driver = LinkFeatures.driver(of: interface.name) ?? "unknown driver"
        guard let actions = LinkFeatures.xdpActions(index: interface.index) else {
            return PreflightCheck("xdp_native", ok: true, "not checked: this kernel does not report drivers' XDP features (Linux 6.3+); lbctl attach \(interface.name) says if \(driver) has none")
        }
        if actions.contains(.basic) {
            return PreflightCheck("xdp_native", ok: true, "\(interface.name) (\(driver)) runs XDP in its driver: \(actions.names.joined(separator: ", "))")
        }
        return PreflightCheck("xdp_native", ok: false, "\(interface.name)'s driver (\(driver)) has no native XDP: lbctl attach \(interface.name) is refused in native mode, and --mode generic runs the balancer at a fraction of native speed",
                              fix: "use an interface whose driver implements XDP (ethtool -i \(interface.name) names the driver), or lbctl attach \(interface.name) --mode generic")
    }

    /// The veth trap: a veth hands what its peer's stack sent with the TCP/UDP checksum left
    /// to an offload that never runs (CHECKSUM_PARTIAL); XDP tunnels or rewrites the frame as
    /// it is and the backend drops it for its checksum. nil when `interface` is no veth.
    static func vethChecksum(_ interface: NetworkInterface) async -> PreflightCheck? {
        guard LinkFeatures.driver(of: interface.name) == "veth" else { return nil }
        guard let peer = await LinkFeatures.vethPeer(of: interface) else {
            return PreflightCheck("veth_tx_checksum", ok: true, "not checked: the kernel names no peer of the veth \(interface.name)")
        }
        let name = peer.name ?? "if\(peer.index)"
        let place = peer.isLocal ? "in this namespace" : peer.namespace.map { "in namespace \($0)" } ?? "in a namespace with no name under /run/netns"
        let command = peer.namespace.map { "ip netns exec \($0) ethtool -K \(name) tx off" } ?? "ethtool -K \(name) tx off"
        switch peer.transmitChecksumOffload {
        case true?:
            return PreflightCheck("veth_tx_checksum", ok: false, "\(interface.name) is a veth whose peer \(name) (\(place)) leaves checksums to an offload: what it sends reaches XDP with the TCP/UDP checksum unfinished, and tunnelled or rewritten it is dropped by the backend",
                                  fix: "\(command), and the same on every veth behind it whose stack sends to the VIPs")
        case false?:
            return PreflightCheck("veth_tx_checksum", ok: true, "the peer \(name) of the veth \(interface.name) (\(place)) computes its checksums (tx off)")
        case nil:
            return PreflightCheck("veth_tx_checksum", ok: true, "not checked: the peer of the veth \(interface.name) is \(place); if it sends to the VIPs itself, run ethtool -K PEER tx off there")
        }
    }

    /// The largest header the pinned services add (every tunnel mode's when none is pinned).
    static func mtu(_ interface: NetworkInterface, pinPath: String) -> PreflightCheck {
        guard let mtu = NetworkInterface.mtu(of: interface.name) else {
            return PreflightCheck("mtu", ok: false, "cannot read \(interface.name)'s MTU", fix: "check the interface")
        }
        let services = (try? Dataplane.open(pinPath: pinPath).appliedState().services.map(\.service)) ?? []
        let overhead = services.isEmpty ? 40 + 12 : services.map(overhead).max() ?? 0
        guard overhead > 0 else { return PreflightCheck("mtu", ok: true, "\(interface.name) MTU \(mtu); the services add no header") }
        let ok = mtu - overhead >= 1500
        return PreflightCheck("mtu", ok: ok,
                              "\(interface.name) MTU \(mtu), tunnel headers up to \(overhead) bytes\(services.isEmpty ? " (no services pinned: every mode)" : ""): "
                                  + (ok ? "1500-byte packets fit" : "1500-byte packets do not fit once tunnelled (SYNs are clamped, the rest answered with ICMP too big)"),
                              fix: "ip link set \(interface.name) mtu \(1500 + overhead) on this link and the backends', or set node.tunnel_mtu")
    }

    /// Header bytes a service's mode adds to its largest packet.
    static func overhead(_ service: Service) -> Int {
        let outer = service.vip.family == .v6 || service.backends.contains { $0.address.family == .v6 } ? 40 : 20
        switch service.forwarding {
        case .ipip: return outer
        case .gue: return outer + 12  // UDP and the GUE header
        default: return 0
        }
    }

    /// LRO merges frames before XDP sees them (the kernel refuses XDP with it on); receive
    /// GRO in hardware likewise.
    static func offloads(_ interface: NetworkInterface) -> [PreflightCheck] {
        guard let features = LinkFeatures.features(of: interface.name) else {
            return [PreflightCheck("offloads", ok: true, "not checked: \(interface.name) lists no offload features (ETHTOOL_GFEATURES)")]
        }
        // ethtool -k's names; the kernel calls LRO rx-lro.
        return [("large-receive-offload", "rx-lro", "lro"), ("rx-gro-hw", "rx-gro-hw", "rx-gro-hw")].compactMap { shown, feature, short in
            guard let on = features[feature] else { return nil }
            return on ? PreflightCheck("offload_\(short)", ok: false, "\(shown) is on for \(interface.name): merged frames reach XDP as one",
                                       fix: "ethtool -K \(interface.name) \(short) off")
                      : PreflightCheck("offload_\(short)", ok: true, "\(shown) off")
        }
    }

    static func rpFilter(_ name: String) -> PreflightCheck {
        let all = sysctl("net/ipv4/conf/all/rp_filter") ?? 0, own = sysctl("net/ipv4/conf/\(name)/rp_filter") ?? 0
        let effective = max(all, own)
        return effective == 1
            ? PreflightCheck("rp_filter", ok: false, "strict reverse-path filtering (rp_filter 1) on \(name): replies and ICMP that arrive on another interface than their route are dropped before a NAT flow sees them",
                             fix: "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.\(name).rp_filter=2 (loose)")
            : PreflightCheck("rp_filter", ok: true, "rp_filter \(effective) on \(name)")
    }

    /// A default route via the interface whose gateway is resolved; or, on an interface the
    /// balancer was attached to without one (a second interface, --gateway-mac), the gateway
    /// MAC it was given.
    static func gateway(_ interface: NetworkInterface, pinPath: String) -> PreflightCheck {
        guard let route = Route.table().first(where: { $0.interface == interface.name && $0.prefixLength == 0 && $0.gateway != nil }),
              let gateway = route.gateway else {
            if let ours = try? Dataplane.pinnedProgramID(at: pinPath), (try? XDP.query(ifindex: interface.index))?.programID == ours,
               let mac = try? Dataplane.open(pinPath: pinPath).appliedState().config.gateway {
                return PreflightCheck("gateway", ok: true, "no default route via \(interface.name); the balancer attached to it sends to the gateway MAC \(mac) it was given")
            }
            return PreflightCheck("gateway", ok: false, "no default route via \(interface.name): lbctl attach cannot find the tunnels' next hop",
                                  fix: "add the default route, or pass lbctl attach --gateway-mac")
        }
        if Neighbours.table().contains(where: { $0.address == gateway && $0.interfaceIndex == interface.index }) {
            return PreflightCheck("gateway", ok: true, "the gateway \(gateway) on \(interface.name) has a neighbour entry")
        }
        return PreflightCheck("gateway", ok: false, "the gateway \(gateway) on \(interface.name) has no resolved neighbour entry",
                              fix: "ping -c1 \(gateway), then check ip neigh show dev \(interface.name)")
    }

    // MARK: Reading the system

    /// An integer under /proc/sys (path with slashes).
    static func sysctl(_ path: String) -> Int? {
        (try? String(contentsOfFile: "/proc/sys/" + path, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// uname's release, e.g. 6.18.44-fc-v1045.
    static func kernelRelease() -> String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    static func kernelAtLeast(_ major: Int, _ minor: Int) -> Bool {
        let parts = kernelRelease().split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return parts.count == 2 && (parts[0], parts[1]) >= (major, minor)
    }
}
