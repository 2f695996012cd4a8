// The kernel's neighbour table (ARP and NDP), read through netlink (RTM_GETNEIGH), and how to
// make the kernel resolve an address: a UDP datagram to it, which ARP or neighbour discovery
// must precede. Used for the gateway (lbctl attach) and for l2dsr backends.
import Foundation
import Glibc
import SluiceCore

public enum Neighbours {
    /// One neighbour entry with a link-layer address.
    public struct Entry: Sendable, Equatable {
        public var address: IPAddress
        public var interfaceIndex: Int32
        public var mac: MACAddress
        /// NUD_REACHABLE, NUD_PERMANENT or NUD_NOARP: confirmed, no probe needed.
        public var isConfirmed: Bool
    }

    // linux/neighbour.h: the states whose lladdr can be used.
    private static let nudReachable: UInt16 = 0x02, nudStale: UInt16 = 0x04, nudDelay: UInt16 = 0x08
    private static let nudProbe: UInt16 = 0x10, nudNoARP: UInt16 = 0x40, nudPermanent: UInt16 = 0x80

    /// Every entry with a usable MAC (reachable, stale, delay, probe, permanent, noarp), of both families.
    public static func table() -> [Entry] {
        var entries: [Entry] = []
        Netlink.request(type: 30 /* RTM_GETNEIGH */, body: [UInt8](repeating: 0, count: 12)) { type, body in
            guard type == 28 /* RTM_NEWNEIGH */, body.count >= 12 else { return }
            let family = Int32(body[body.startIndex])
            let index = body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) }
            let state = body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt16.self) }
            let usable = nudReachable | nudStale | nudDelay | nudProbe | nudNoARP | nudPermanent
            guard family == AF_INET || family == AF_INET6, state & usable != 0 else { return }
            let attributes = Netlink.attributes(body.dropFirst(12))
            guard let destination = attributes[1 /* NDA_DST */].flatMap({ IPAddress(bytes: Array($0)) }),
                  let lladdr = attributes[2 /* NDA_LLADDR */].flatMap({ MACAddress(bytes: Array($0)) }),
                  lladdr.bytes != [0, 0, 0, 0, 0, 0] else { return }
            entries.append(Entry(address: destination, interfaceIndex: index, mac: lladdr,
                                 isConfirmed: state & (nudReachable | nudPermanent | nudNoARP) != 0))
        }
        return entries
    }

    /// Makes the kernel resolve `address` (or re-check a stale entry): a zero-length datagram
    /// to its discard port, routed out of `interface`.
    public static func poke(_ address: IPAddress, via interface: NetworkInterface) {
        let fd = socket(address.family == .v4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        // Bound to the device so an address also reachable another way is still resolved here.
        _ = interface.name.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) }
        var byte: UInt8 = 0
        let discard = UInt16(9).bigEndian
        if address.family == .v4 {
            var target = sockaddr_in()
            target.sin_family = sa_family_t(AF_INET)
            target.sin_port = discard
            target.sin_addr.s_addr = address.words.0
            _ = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, &byte, 0, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        } else {
            var target = sockaddr_in6()
            target.sin6_family = sa_family_t(AF_INET6)
            target.sin6_port = discard
            target.sin6_scope_id = UInt32(interface.index)  // needed for a link-local backend
            withUnsafeMutableBytes(of: &target.sin6_addr) { raw in
                for (i, byte) in address.bytes.enumerated() { raw[i] = byte }
            }
            _ = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, &byte, 0, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }

    /// The MACs of `targets` (each on its interface): those not in the table are poked, all
    /// at once, and the table re-read until every one is there or `timeout` has passed. The
    /// missing ones are absent from the answer.
    public static func resolve(_ targets: [IPAddress: NetworkInterface], timeout: Duration = .seconds(1)) -> [IPAddress: MACAddress] {
        func lookup() -> [IPAddress: MACAddress] {
            var found: [IPAddress: MACAddress] = [:]
            for entry in table() where targets[entry.address]?.index == entry.interfaceIndex { found[entry.address] = entry.mac }
            return found
        }
        var found = lookup()
        guard found.count < targets.count else { return found }
        for (address, interface) in targets where found[address] == nil { poke(address, via: interface) }
        let deadline = ContinuousClock.now + timeout
        while true {
            usleep(20_000)
            found = lookup()
            if found.count == targets.count || ContinuousClock.now >= deadline { return found }
        }
    }
}
