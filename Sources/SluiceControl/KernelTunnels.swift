// The kernel's own tunnel endpoints in this network namespace, which a backend may use to
// unwrap the balancer's tunnels instead of lbctl decap: tunnel devices by kind (ipip takes
// IPv4 in IPv4, ip6tnl IPv4 and IPv6 in IPv6; RTM_GETLINK's IFLA_LINKINFO) and the UDP ports
// of FOU and GUE receivers (the fou generic netlink family, there once the fou module is).
import Foundation
import SluiceCore

public enum KernelTunnels {
    /// One network interface and its kind ("veth", "ipip", "ip6tnl", ...).
    public struct Link: Sendable, Equatable {
        public var name: String
        /// IFLA_INFO_KIND; empty for a device with no rtnetlink kind (a NIC's).
        public var kind: String
        public var up: Bool
        /// An ip tunnel's inner protocol (IFLA_IPTUN_PROTO: 4 IPv4, 41 IPv6, 0 any); nil when
        /// the kind has none.
        public var tunnelProtocol: UInt8?

        public init(name: String, kind: String, up: Bool, tunnelProtocol: UInt8? = nil) {
            (self.name, self.kind, self.up, self.tunnelProtocol) = (name, kind, up, tunnelProtocol)
        }
    }

    /// Every interface of this namespace with its kind.
    public static func links() -> [Link] {
        var result: [Link] = []
        Netlink.request(type: 18 /* RTM_GETLINK */, body: [UInt8](repeating: 0, count: 16) /* ifinfomsg, AF_UNSPEC */) { type, body in
            guard type == 16 /* RTM_NEWLINK */, body.count >= 16 else { return }
            let flags = Netlink.integer(body.dropFirst(8), as: UInt32.self) ?? 0
            let attributes = Netlink.attributes(body.dropFirst(16))
            guard let name = attributes[3 /* IFLA_IFNAME */].map(text) else { return }
            let info = attributes[18 /* IFLA_LINKINFO */].map(Netlink.attributes) ?? [:]
            let data = info[2 /* IFLA_INFO_DATA */].map(Netlink.attributes) ?? [:]
            let kind = info[1 /* IFLA_INFO_KIND */].map(text) ?? ""
            // IFLA_INFO_DATA's attributes are the kind's own: 9 is IFLA_IPTUN_PROTO for ip tunnels only.
            let proto = ["ipip", "ip6tnl", "sit"].contains(kind) ? Netlink.integer(data[9 /* IFLA_IPTUN_PROTO */], as: UInt8.self) : nil
            result.append(Link(name: name, kind: kind, up: flags & 1 /* IFF_UP */ != 0, tunnelProtocol: proto))
        }
        return result
    }

    /// A FOU or GUE receiver: `ip fou add port N gue [-6]`.
    public struct FOUPort: Sendable, Equatable {
        public var port: UInt16
        /// The outer family it listens on.
        public var family: IPAddress.Family
        /// GUE (else plain FOU, a fixed inner protocol).
        public var gue: Bool

        public init(port: UInt16, family: IPAddress.Family, gue: Bool) {
            (self.port, self.family, self.gue) = (port, family, gue)
        }
    }

    /// The FOU and GUE ports of this namespace; nil when the kernel has no fou family (the
    /// module is not loaded, so nothing listens).
    public static func fouPorts() -> [FOUPort]? {
        guard let family = LinkFeatures.genericFamily("fou") else { return nil }
        var result: [FOUPort] = []
        Netlink.request(protocol: Netlink.generic, type: family, body: [3 /* FOU_CMD_GET */, 1, 0, 0]) { type, body in
            guard type == family, body.count >= 4 else { return }
            let attributes = Netlink.attributes(body.dropFirst(4))
            guard let port = Netlink.integer(attributes[1 /* FOU_ATTR_PORT, big-endian */], as: UInt16.self) else { return }
            let af = Netlink.integer(attributes[2 /* FOU_ATTR_AF */], as: UInt8.self) ?? 2
            result.append(FOUPort(port: UInt16(bigEndian: port), family: af == 10 /* AF_INET6 */ ? .v6 : .v4,
                                  gue: Netlink.integer(attributes[4 /* FOU_ATTR_TYPE */], as: UInt8.self) == 2 /* FOU_ENCAP_GUE */))
        }
        return result
    }

    /// Whether the kernel here unwraps a tunnel with `outer` and `inner` families (GUE to
    /// `guePort` when given): the names of what does, nil when something is missing.
    public static func receivers(outer: IPAddress.Family, inner: IPAddress.Family, guePort: UInt16?,
                                 links: [Link], fou: [FOUPort]) -> [String]? {
        // ipip devices (tunl0 once the module is loaded) take IPv4 in IPv4; ip6tnl ones carry
        // their inner protocol, 0 for any (ip6tnl0, the fallback device, takes IPv6 only).
        let kind = outer == .v4 ? "ipip" : "ip6tnl"
        let wanted: UInt8 = inner == .v4 ? 4 : 41
        guard let device = links.first(where: { $0.up && $0.kind == kind && [nil, 0, wanted].contains($0.tunnelProtocol) }) else { return nil }
        var names = ["\(device.name) (\(kind))"]
        if let guePort {
            guard fou.contains(where: { $0.port == guePort && $0.family == outer && $0.gue }) else { return nil }
            names.append("FOU port \(guePort) (gue, \(outer))")
        }
        return names
    }

    private static func text(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }
}
