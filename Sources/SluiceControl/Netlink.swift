// One netlink request and the walk over its answer: rtnetlink (neighbours, links, namespace
// ids) and generic netlink (the netdev family's XDP features). Read-only queries, so errors
// end the walk silently and the callers treat what was read as the whole answer.
import Foundation
import Glibc

enum Netlink {
    static let route: Int32 = 0     // NETLINK_ROUTE
    static let generic: Int32 = 16  // NETLINK_GENERIC

    /// Sends a request of `type` whose body (family header, then attributes) is `body` — a
    /// dump unless `dump` is false — and hands each answer message's type and body to
    /// `message`: until NLMSG_DONE for a dump, the first answer otherwise.
    static func request(protocol family: Int32 = route, type: UInt16, dump: Bool = true, body: [UInt8],
                        _ message: (UInt16, ArraySlice<UInt8>) -> Void) {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), family)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let flags: UInt16 = 0x1 /* NLM_F_REQUEST */ | (dump ? 0x300 /* NLM_F_DUMP */ : 0)
        var request = [UInt8]()
        append(UInt32(16 + body.count), to: &request)
        append(type, to: &request)
        append(flags, to: &request)
        append(UInt32(1), to: &request)  // sequence
        append(UInt32(0), to: &request)  // port: the kernel's
        request += body
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
            if !dump { return }
        }
    }

    /// The attributes (struct nlattr / rtattr: length, type, value; 4-byte aligned) by type.
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

    /// One attribute, padded to 4 bytes.
    static func attribute(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
        var bytes = [UInt8]()
        append(UInt16(4 + value.count), to: &bytes)
        append(type, to: &bytes)
        bytes += value
        bytes += [UInt8](repeating: 0, count: (4 - value.count % 4) % 4)
        return bytes
    }

    /// A little-endian integer of an attribute's value, nil when it is too short.
    static func integer<T: FixedWidthInteger>(_ value: ArraySlice<UInt8>?, as: T.Type) -> T? {
        guard let value, value.count >= MemoryLayout<T>.size else { return nil }
        return value.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }
}
