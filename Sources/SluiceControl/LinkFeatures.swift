// What the kernel says about an interface that decides whether XDP works on it (read by
// lbctl doctor): its driver's name (ETHTOOL_GDRVINFO), the XDP actions the driver implements
// itself (the netdev generic netlink family, Linux 6.3+), its transmit checksum offload
// (ETHTOOL_GTXCSUM), its offload features (ETHTOOL_GFEATURES) and, for a veth, its peer: index, namespace (IFLA_LINK,
// IFLA_LINK_NETNSID) and, when `ip netns` named that namespace, the peer's own offload.
import CLibbpf
import Foundation
import Glibc

public enum LinkFeatures {
    /// XDP actions a driver runs natively (enum netdev_xdp_act in linux/netdev.h).
    public struct XDPActions: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// XDP_ABORTED, DROP, PASS and TX: what the balancer needs on its own interface.
        public static let basic = XDPActions(rawValue: 1 << 0)
        public static let redirect = XDPActions(rawValue: 1 << 1)
        /// A target of XDP_REDIRECT (NAT across two interfaces transmits on it).
        public static let ndoXmit = XDPActions(rawValue: 1 << 2)
        public static let xskZerocopy = XDPActions(rawValue: 1 << 3)
        public static let hwOffload = XDPActions(rawValue: 1 << 4)
        public static let rxSG = XDPActions(rawValue: 1 << 5)
        public static let ndoXmitSG = XDPActions(rawValue: 1 << 6)

        /// The kernel's names (ynl's netdev spec) of the actions in this set.
        public var names: [String] {
            let all: [(XDPActions, String)] = [(.basic, "basic"), (.redirect, "redirect"), (.ndoXmit, "ndo-xmit"),
                                               (.xskZerocopy, "xsk-zerocopy"), (.hwOffload, "hw-offload"),
                                               (.rxSG, "rx-sg"), (.ndoXmitSG, "ndo-xmit-sg")]
            return all.filter { contains($0.0) }.map(\.1)
        }
    }

    /// The native XDP actions of the interface with `index`, nil when the kernel has no
    /// netdev family (before 6.3) or did not list the interface.
    public static func xdpActions(index: Int32) -> XDPActions? {
        guard let family = genericFamily("netdev") else { return nil }
        var found: XDPActions?
        Netlink.request(protocol: Netlink.generic, type: family, body: [1 /* NETDEV_CMD_DEV_GET */, 1, 0, 0]) { type, body in
            guard type == family, body.count >= 4 else { return }
            let attributes = Netlink.attributes(body.dropFirst(4))
            guard Netlink.integer(attributes[1 /* NETDEV_A_DEV_IFINDEX */], as: UInt32.self) == UInt32(bitPattern: index) else { return }
            found = XDPActions(rawValue: Netlink.integer(attributes[3 /* NETDEV_A_DEV_XDP_FEATURES */], as: UInt64.self) ?? 0)
        }
        return found
    }

    /// The id of the generic netlink family called `name`, from the controller's dump.
    static func genericFamily(_ name: String) -> UInt16? {
        let controller: UInt16 = 0x10  // GENL_ID_CTRL
        var id: UInt16?
        Netlink.request(protocol: Netlink.generic, type: controller, body: [3 /* CTRL_CMD_GETFAMILY */, 1, 0, 0]) { type, body in
            guard type == controller, body.count >= 4 else { return }
            let attributes = Netlink.attributes(body.dropFirst(4))
            guard let text = attributes[2 /* CTRL_ATTR_FAMILY_NAME */],
                  String(decoding: text.prefix { $0 != 0 }, as: UTF8.self) == name else { return }
            id = Netlink.integer(attributes[1 /* CTRL_ATTR_FAMILY_ID */], as: UInt16.self)
        }
        return id
    }

    // MARK: ethtool

    /// The driver of the interface called `name` ("veth", "mlx5_core", ...).
    public static func driver(of name: String) -> String? {
        var info = [UInt8](repeating: 0, count: 196)  // struct ethtool_drvinfo
        guard ethtool(name, command: 0x03 /* ETHTOOL_GDRVINFO */, &info) else { return nil }
        let driver = String(decoding: info[4..<36].prefix { $0 != 0 }, as: UTF8.self)
        return driver.isEmpty ? nil : driver
    }

    /// Whether the interface called `name` leaves TCP and UDP checksums to the hardware when
    /// it transmits (`ethtool -k`'s tx-checksumming).
    public static func transmitChecksumOffload(of name: String) -> Bool? {
        var value = [UInt8](repeating: 0, count: 8)  // struct ethtool_value
        guard ethtool(name, command: 0x16 /* ETHTOOL_GTXCSUM */, &value) else { return nil }
        return value[4..<8].contains { $0 != 0 }
    }

    /// The interface's offload features, by the kernel's names ("rx-lro", "rx-gro-hw",
    /// "tx-checksum-ip-generic", ...), each with whether it is active: what `ethtool -k`
    /// prints (it shows a few under older names: large-receive-offload is rx-lro). Read with
    /// ETHTOOL_GSSET_INFO (how many), ETHTOOL_GSTRINGS (their names) and ETHTOOL_GFEATURES
    /// (32 to a block: available, requested, active, never changed).
    public static func features(of name: String) -> [String: Bool]? {
        let stringLength = 32, featureSet: UInt32 = 4  // ETH_GSTRING_LEN, ETH_SS_FEATURES
        var info = [UInt8](repeating: 0, count: 20)  // struct ethtool_sset_info and one data word
        put(UInt64(1) << featureSet, at: 8, in: &info)
        guard ethtool(name, command: 0x37 /* ETHTOOL_GSSET_INFO */, &info) else { return nil }
        let count = Int(Netlink.integer(info[16...], as: UInt32.self) ?? 0)
        guard count > 0, count <= 4096 else { return nil }

        var strings = [UInt8](repeating: 0, count: 12 + count * stringLength)  // struct ethtool_gstrings
        put(featureSet, at: 4, in: &strings)
        put(UInt32(count), at: 8, in: &strings)
        guard ethtool(name, command: 0x1b /* ETHTOOL_GSTRINGS */, &strings) else { return nil }

        let blocks = (count + 31) / 32
        var state = [UInt8](repeating: 0, count: 8 + blocks * 16)  // struct ethtool_gfeatures
        put(UInt32(blocks), at: 4, in: &state)
        guard ethtool(name, command: 0x3a /* ETHTOOL_GFEATURES */, &state) else { return nil }

        var result: [String: Bool] = [:]
        for bit in 0..<count {
            let start = 12 + bit * stringLength
            let feature = String(decoding: strings[start..<start + stringLength].prefix { $0 != 0 }, as: UTF8.self)
            let active = Netlink.integer(state[(8 + (bit / 32) * 16 + 8)...], as: UInt32.self) ?? 0
            if !feature.isEmpty { result[feature] = active & (1 << UInt32(bit % 32)) != 0 }
        }
        return result
    }

    private static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { for (i, byte) in $0.enumerated() { buffer[offset + i] = byte } }
    }

    /// One SIOCETHTOOL get: `buffer` starts with the command and is filled in by the kernel.
    private static func ethtool(_ name: String, command: UInt32, _ buffer: inout [UInt8]) -> Bool {
        put(command, at: 0, in: &buffer)
        return buffer.withUnsafeMutableBytes { raw in
            NetworkInterface.ifreqQuery(name, 0x8946 /* SIOCETHTOOL */) {
                $0.ifr_ifru.ifru_data = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
            } != nil
        }
    }

    // MARK: veth peers

    /// The other end of a veth.
    public struct Peer: Sendable, Equatable {
        /// Its interface index, in its own namespace.
        public var index: Int32
        /// Its name; nil when its namespace could not be entered.
        public var name: String?
        /// The `ip netns` name of its namespace; nil when it is this one or has no name.
        public var namespace: String?
        /// Whether it is in this namespace.
        public var isLocal: Bool
        /// Its tx-checksumming; nil when it could not be read.
        public var transmitChecksumOffload: Bool?
    }

    /// The peer of the veth `interface` (nil when the kernel names no peer).
    public static func vethPeer(of interface: NetworkInterface) async -> Peer? {
        var ifinfo = [UInt8](repeating: 0, count: 16)  // struct ifinfomsg, AF_UNSPEC
        put(interface.index, at: 4, in: &ifinfo)
        var link: (index: Int32, namespaceID: Int32?)?
        Netlink.request(type: 18 /* RTM_GETLINK */, dump: false, body: ifinfo) { type, body in
            guard type == 16 /* RTM_NEWLINK */, body.count >= 16 else { return }
            let attributes = Netlink.attributes(body.dropFirst(16))
            guard let index = Netlink.integer(attributes[5 /* IFLA_LINK */], as: Int32.self), index > 0 else { return }
            link = (index, Netlink.integer(attributes[37 /* IFLA_LINK_NETNSID */], as: Int32.self))
        }
        guard let link else { return nil }
        guard let namespaceID = link.namespaceID else {
            let name = NetworkInterface.all().first { $0.index == link.index }?.name
            return Peer(index: link.index, name: name, namespace: nil, isLocal: true,
                        transmitChecksumOffload: name.flatMap(transmitChecksumOffload(of:)))
        }
        guard let namespace = namedNamespace(id: namespaceID) else {
            return Peer(index: link.index, name: nil, namespace: nil, isLocal: false, transmitChecksumOffload: nil)
        }
        let found = await inNamespace(namespace.path) { () -> (String?, Bool?) in
            var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE))
            guard if_indextoname(UInt32(bitPattern: link.index), &name) != nil else { return (nil, nil) }
            let text = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return (text, transmitChecksumOffload(of: text))
        }
        return Peer(index: link.index, name: found?.0, namespace: namespace.name, isLocal: false, transmitChecksumOffload: found?.1)
    }

    /// The namespace under /run/netns whose id in this namespace is `id` (RTM_GETNSID).
    static func namedNamespace(id: Int32) -> (name: String, path: String)? {
        let directory = "/run/netns"
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted() {
            let path = directory + "/" + name
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var nsid: Int32?
            let body = [UInt8](repeating: 0, count: 4) /* struct rtgenmsg, aligned */
                + Netlink.attribute(3 /* NETNSA_FD */, withUnsafeBytes(of: UInt32(fd).littleEndian) { Array($0) })
            Netlink.request(type: 90 /* RTM_GETNSID */, dump: false, body: body) { type, answer in
                guard type == 88 /* RTM_NEWNSID */, answer.count >= 4 else { return }
                nsid = Netlink.integer(Netlink.attributes(answer.dropFirst(4))[1 /* NETNSA_NSID */], as: Int32.self)
            }
            if nsid == id { return (name, path) }
        }
        return nil
    }

    /// `body` run on a thread of its own switched into the namespace at `path` (namespaces
    /// are per thread, so no caller's thread, and no thread of the Swift pool, ever moves);
    /// nil when it cannot be entered. The caller is suspended, not blocked, meanwhile.
    static func inNamespace<T: Sendable>(_ path: String, _ body: @escaping @Sendable () -> T) async -> T? {
        await withCheckedContinuation { (continuation: CheckedContinuation<T?, Never>) in
            let thread = Thread {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { return continuation.resume(returning: nil) }
                defer { close(fd) }
                guard setns(fd, CLibbpf_CLONE_NEWNET) == 0 else { return continuation.resume(returning: nil) }
                continuation.resume(returning: body())
            }
            thread.name = "netns \(path)"
            thread.start()
        }
    }
}
