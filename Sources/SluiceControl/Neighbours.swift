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
        NetlinkDump.run(type: 30 /* RTM_GETNEIGH */, header: [UInt8](repeating: 0, count: 12)) { type, body in
            guard type == 28 /* RTM_NEWNEIGH */, body.count >= 12 else { return }
            let family = Int32(body[body.startIndex])
            let index = body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) }
            let state = body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt16.self) }
            let usable = nudReachable | nudStale | nudDelay | nudProbe | nudNoARP | nudPermanent
            guard family == AF_INET || family == AF_INET6, state & usable != 0 else { return }
            let attributes = NetlinkDump.attributes(body.dropFirst(12))
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

/// One netlink (NETLINK_ROUTE) dump request and the walk over its answer.
enum NetlinkDump {
    /// Sends a dump request of `type` whose family header is `header`, and hands each answer
    /// message's type and body to `message` until NLMSG_DONE. Errors end the walk silently:
    /// the callers treat what was read as the whole table.
    static func run(type: UInt16, header: [UInt8], _ message: (UInt16, ArraySlice<UInt8>) -> Void) {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0 /* NETLINK_ROUTE */)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let flags: UInt16 = 0x1 /* NLM_F_REQUEST */ | 0x300 /* NLM_F_DUMP */
        let sequence: UInt32 = 1
        var request = [UInt8]()
        append(UInt32(16 + header.count), to: &request)
        append(type, to: &request)
        append(flags, to: &request)
        append(sequence, to: &request)
        append(UInt32(0), to: &request)
        request += header
        guard send(fd, request, request.count, 0) == request.count else { return }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { return }
            var offset = 0
            while offset + 16 <= count {
                let (length, kind) = buffer.withUnsafeBytes {
                    ($0.loadUnaligned(fromByteOffset: offset, as: UInt32.self), $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self))
                }
                guard length >= 16, offset + Int(length) <= count else { return }
                if kind == 3 /* NLMSG_DONE */ || kind == 2 /* NLMSG_ERROR */ { return }
                message(kind, buffer[(offset + 16)..<(offset + Int(length))])
                offset += (Int(length) + 3) & ~3
            }
        }
    }

    /// The route attributes (struct rtattr: length, type, value; 4-byte aligned) by type.
    static func attributes(_ bytes: ArraySlice<UInt8>) -> [UInt16: ArraySlice<UInt8>] {
        var result: [UInt16: ArraySlice<UInt8>] = [:]
        var offset = bytes.startIndex
        while offset + 4 <= bytes.endIndex {
            let length = Int(UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8)
            let type = UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8
            guard length >= 4, offset + length <= bytes.endIndex else { break }
            result[type & 0x3fff] = bytes[(offset + 4)..<(offset + length)]
            offset += (length + 3) & ~3
        }
        return result
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }
}
