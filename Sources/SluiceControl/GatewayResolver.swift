// Finds the next hop's MAC for an interface from the kernel's IPv4 routing and neighbour tables.
import Foundation
import Glibc
import SluiceCore

/// Reads /proc/net/route for the default route through the interface and
/// /proc/net/arp for its gateway's MAC; when the neighbour is not resolved
/// yet, a datagram to the gateway's discard port makes the kernel ARP for it.
public enum GatewayResolver {
    public static func resolve(interface: String, timeout: Duration = .seconds(2)) throws(ControlError) -> MACAddress {
        guard let gateway = defaultGateway(interface: interface) else {
            throw .runtime("cannot find the next hop of \(interface): no IPv4 default route via \(interface) (pass --gateway-mac MAC)")
        }
        if let mac = neighbour(gateway, interface: interface) { return mac }
        poke(gateway)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            usleep(50_000)
            if let mac = neighbour(gateway, interface: interface) { return mac }
        }
        throw .runtime("cannot resolve the MAC of the gateway \(gateway) on \(interface) (no ARP answer; pass --gateway-mac MAC)")
    }

    /// The gateway of the IPv4 default route through `interface`.
    static func defaultGateway(interface: String) -> IPAddress? {
        guard let table = try? String(contentsOfFile: "/proc/net/route", encoding: .utf8) else { return nil }
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 8, fields[0] == interface, fields[1] == "00000000", fields[7] == "00000000",
                  let raw = UInt32(fields[2], radix: 16), raw != 0 else { continue }
            // The kernel prints the address as a host-order (little-endian) word.
            return IPAddress(bytes: withUnsafeBytes(of: raw.littleEndian) { Array($0) })
        }
        return nil
    }

    /// The complete ARP entry for `address` on `interface`.
    static func neighbour(_ address: IPAddress, interface: String) -> MACAddress? {
        guard let table = try? String(contentsOfFile: "/proc/net/arp", encoding: .utf8) else { return nil }
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            let completeFlag = 0x2
            guard fields.count >= 6, fields[0] == address.description, fields[5] == interface,
                  let flags = Int(fields[2].dropFirst(2), radix: 16), flags & completeFlag != 0 else { continue }
            return MACAddress(String(fields[3]))
        }
        return nil
    }

    private static func poke(_ gateway: IPAddress) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(9).bigEndian
        address.sin_addr.s_addr = gateway.words.0
        var byte: UInt8 = 0
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, &byte, 0, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }
}
