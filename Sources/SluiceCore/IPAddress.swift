// An IPv4 or IPv6 address as the service file names it and as the data plane
// stores it (lb_shared.h: `__u32 addr[4]`, network order, IPv4 in addr[0]).

import Glibc

public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// Raw values equal `enum sl_family` in lb_shared.h.
    public enum Family: UInt8, Hashable, Sendable, Codable, CustomStringConvertible {
        case v4 = 4
        case v6 = 6

        public var description: String { self == .v4 ? "IPv4" : "IPv6" }
        var byteCount: Int { self == .v4 ? 4 : 16 }
        var addressFamily: Int32 { self == .v4 ? AF_INET : AF_INET6 }
    }

    public let family: Family
    /// 4 or 16 bytes, network order.
    public let bytes: [UInt8]

    /// Parses a dotted quad or an IPv6 address with inet_pton, so the accepted
    /// forms are exactly the C library's: no zone ids, no prefixes, no brackets.
    public init?(_ string: String) {
        // withCString would stop at an embedded NUL and accept the prefix.
        guard !string.utf8.contains(0) else { return nil }
        let family: Family = string.utf8.contains(UInt8(ascii: ":")) ? .v6 : .v4
        var buffer = [UInt8](repeating: 0, count: family.byteCount)
        let ok = buffer.withUnsafeMutableBytes { out in
            string.withCString { inet_pton(family.addressFamily, $0, out.baseAddress) }
        }
        guard ok == 1 else { return nil }
        self.family = family
        self.bytes = buffer
    }

    /// 4 bytes make an IPv4 address, 16 an IPv6 address; any other count is nil.
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4: family = .v4
        case 16: family = .v6
        default: return nil
        }
        self.bytes = bytes
    }

    /// The inverse of `words`. For IPv4 only word 0 carries the address and the
    /// others must be zero, as the data plane writes them.
    public init?(words: (UInt32, UInt32, UInt32, UInt32), family: Family) {
        if family == .v4 {
            guard words.1 == 0, words.2 == 0, words.3 == 0 else { return nil }
            self.init(bytes: Self.littleEndianBytes(words.0))
        } else {
            self.init(bytes: [words.0, words.1, words.2, words.3].flatMap(Self.littleEndianBytes))
        }
    }

    /// Same, with the family as the raw `__u8` of a C struct (0 = unused slot → nil).
    public init?(words: (UInt32, UInt32, UInt32, UInt32), family: UInt8) {
        guard let family = Family(rawValue: family) else { return nil }
        self.init(words: words, family: family)
    }

    /// The address as a C `__u32 addr[4]` holding it in network order on a
    /// little-endian host: word i is the little-endian load of bytes[4i..<4i+4].
    public var words: (UInt32, UInt32, UInt32, UInt32) {
        func word(_ i: Int) -> UInt32 {
            guard 4 * i + 4 <= bytes.count else { return 0 }
            return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[4 * i + $1]) << (8 * UInt32($1)) }
        }
        return (word(0), word(1), word(2), word(3))
    }

    /// Canonical text form (inet_ntop): `10.1.0.21`, `2001:db8::1`.
    public var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = bytes.withUnsafeBytes { inet_ntop(family.addressFamily, $0.baseAddress, &text, socklen_t(text.count)) }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// IPv4 before IPv6, then numerically: a stable order for diffs and output.
    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        if lhs.family != rhs.family { return lhs.family.rawValue < rhs.family.rawValue }
        return lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let address = IPAddress(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "\"\(text)\" is not an IP address")
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    private static func littleEndianBytes(_ word: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: word >> (8 * UInt32($0))) }
    }
}
