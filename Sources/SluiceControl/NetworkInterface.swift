// Interfaces of the current network namespace by name and index.
import CLibbpf
import Glibc
import SluiceCore

public struct NetworkInterface: Sendable, Equatable {
    public let name: String
    public let index: Int32

    /// The interface called `name`, or a bad-input error naming it.
    public static func named(_ name: String) throws(ControlError) -> NetworkInterface {
        guard !name.isEmpty, name.utf8.count < Int(IF_NAMESIZE) else {
            throw .badInput("interface \"\(name)\": not a valid interface name")
        }
        let index = if_nametoindex(name)
        guard index != 0 else { throw .badInput("interface \"\(name)\": no such interface") }
        return NetworkInterface(name: name, index: Int32(index))
    }

    /// The MTU of the interface called `name` in this namespace (SIOCGIFMTU: /sys/class/net
    /// shows the namespace sysfs was mounted in, which under `nsenter --net` is another one).
    public static func mtu(of name: String) -> Int? {
        ifreqQuery(name, SIOCGIFMTU).map { Int($0.ifr_ifru.ifru_mtu) }
    }

    /// One SIOCGIF* (or SIOCETHTOOL) ioctl about the interface called `name`, the request
    /// completed by `prepare`: the filled-in request, or nil.
    static func ifreqQuery(_ name: String, _ request: Int32, _ prepare: (inout ifreq) -> Void = { _ in }) -> ifreq? {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var query = ifreq()
        withUnsafeMutableBytes(of: &query.ifr_ifrn.ifrn_name) { raw in
            for (i, byte) in name.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
        }
        prepare(&query)
        return ioctl(fd, UInt(request), &query) == 0 ? query : nil
    }

    /// The Ethernet address of the interface called `name` (SIOCGIFHWADDR), nil when it has
    /// none (not Ethernet, or all zero).
    public static func hardwareAddress(of name: String) -> MACAddress? {
        guard let request = ifreqQuery(name, SIOCGIFHWADDR),
              request.ifr_ifru.ifru_hwaddr.sa_family == 1 /* ARPHRD_ETHER */ else { return nil }
        let bytes = withUnsafeBytes(of: request.ifr_ifru.ifru_hwaddr.sa_data) { Array($0.prefix(6)) }
        return bytes.allSatisfy { $0 == 0 } ? nil : MACAddress(bytes: bytes)
    }

    /// Every interface of this namespace.
    public static func all() -> [NetworkInterface] {
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var result: [NetworkInterface] = []
        var entry = list
        while entry.pointee.if_index != 0, let name = entry.pointee.if_name {
            result.append(NetworkInterface(name: String(cString: name), index: Int32(entry.pointee.if_index)))
            entry += 1
        }
        return result
    }
}
