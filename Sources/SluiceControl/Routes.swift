// The main routing table of this network namespace as /proc/net/route and /proc/net/ipv6_route
// show it: enough to find the IPv4 default gateway of an interface, whether an address is
// on-link (covered by a route without a gateway) on it, and a NAT backend's next hop.
import Foundation
import SluiceCore

public struct Route: Sendable, Equatable {
    public var interface: String
    public var destination: IPAddress
    public var prefixLength: Int
    /// Nil for a connected route (no next hop: the destination is on the link).
    public var gateway: IPAddress?

    /// Whether `address` falls inside `destination/prefixLength`.
    public func covers(_ address: IPAddress) -> Bool {
        guard address.family == destination.family else { return false }
        var bits = prefixLength
        for (a, d) in zip(address.bytes, destination.bytes) {
            guard bits > 0 else { return true }
            let mask: UInt8 = bits >= 8 ? 0xff : ~(0xff >> UInt8(bits))
            if a & mask != d & mask { return false }
            bits -= 8
        }
        return true
    }

    /// Every usable route of both families (up, not a reject route).
    public static func table() -> [Route] { v4() + v6() }

    /// The interface of `interfaces` with a connected route covering `address`, if any.
    public static func onLinkInterface(for address: IPAddress, among interfaces: [String], routes: [Route]) -> String? {
        routes.filter { $0.gateway == nil && interfaces.contains($0.interface) && $0.covers(address) }
            .max { $0.prefixLength < $1.prefixLength }?.interface
    }

    /// The longest-prefix route to `address` out of one of `interfaces`, connected or via a
    /// gateway (a default route included); among equal prefixes a connected one.
    public static func best(for address: IPAddress, among interfaces: [String], routes: [Route]) -> Route? {
        routes.filter { interfaces.contains($0.interface) && $0.covers(address) }
            .max { ($0.prefixLength, $0.gateway == nil ? 1 : 0) < ($1.prefixLength, $1.gateway == nil ? 1 : 0) }
    }

    /// A file of the calling thread's /proc/net: /proc/net is /proc/self/net, the namespace
    /// of the process's main thread, while a thread switched into another namespace (setns)
    /// must read its own (/proc/thread-self, Linux 3.17).
    private static func read(_ name: String) -> String? {
        (try? String(contentsOfFile: "/proc/thread-self/net/" + name, encoding: .utf8))
            ?? (try? String(contentsOfFile: "/proc/net/" + name, encoding: .utf8))
    }

    private static let up = 0x1, hasGateway = 0x2, reject = 0x200

    /// /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; the
    /// kernel prints addresses as host-order (little-endian) hex words.
    static func v4() -> [Route] {
        guard let text = read("route") else { return [] }
        func address(_ hex: Substring) -> IPAddress? {
            UInt32(hex, radix: 16).flatMap { IPAddress(bytes: withUnsafeBytes(of: $0.littleEndian) { Array($0) }) }
        }
        return text.split(separator: "\n").dropFirst().compactMap { line in
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 8, let flags = Int(f[3], radix: 16), flags & up != 0, flags & reject == 0,
                  let destination = address(f[1]), let gateway = address(f[2]), let mask = UInt32(f[7], radix: 16)
            else { return nil }
            return Route(interface: String(f[0]), destination: destination, prefixLength: mask.nonzeroBitCount,
                         gateway: flags & hasGateway != 0 ? gateway : nil)
        }
    }

    /// /proc/net/ipv6_route: destination, its prefix length, source, its length, next hop,
    /// metric, refcount, use, flags, device; addresses as 32 hex digits.
    static func v6() -> [Route] {
        guard let text = read("ipv6_route") else { return [] }
        func address(_ hex: Substring) -> IPAddress? {
            guard hex.count == 32 else { return nil }
            var bytes: [UInt8] = []
            var index = hex.startIndex
            while index < hex.endIndex {
                let next = hex.index(index, offsetBy: 2)
                guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
                bytes.append(byte)
                index = next
            }
            return IPAddress(bytes: bytes)
        }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 10, let flags = Int(f[8], radix: 16), flags & up != 0, flags & reject == 0,
                  let destination = address(f[0]), let length = Int(f[1], radix: 16), let gateway = address(f[4]),
                  f[9] != "lo" else { return nil }
            return Route(interface: String(f[9]), destination: destination, prefixLength: length,
                         gateway: flags & hasGateway != 0 ? gateway : nil)
        }
    }
}
