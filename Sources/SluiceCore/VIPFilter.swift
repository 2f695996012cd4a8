// The data plane's VIP prefilter (sl_vip_filter), modelled bit for bit: which
// bit a VIP key (or a NAT backend's reply key) sets, and the whole bitmap a set
// of services needs. The
// Applier writes what this computes, and the tests check that the program
// makes the same choice.

public struct VIPFilter: Equatable, Sendable {
    /// SL_VIP_FILTER_BITS in lb_shared.h: the bitmap has 2^bits bits.
    public static let bits = 16
    /// SL_VIP_FILTER_WORD_BITS: bits per map value (a __u64).
    public static let wordBits = 64
    /// SL_VIP_FILTER_WORDS: entries of sl_vip_filter.
    public static let wordCount = (1 << bits) / wordBits
    /// SL_VIP_FILTER_MULT: the Fibonacci-hashing multiplier (2^32 / golden ratio).
    public static let multiplier: UInt32 = 0x9e37_79b1

    /// The bitmap, word i being entry i of sl_vip_filter.
    public private(set) var words: [UInt64]

    public init() { words = [UInt64](repeating: 0, count: Self.wordCount) }

    /// SL_VIP_FILTER_REPLY: set in the protocol of a NAT backend's key, so that its replies
    /// (source backend:port) have bits of their own beside the VIPs'.
    public static let replyFlag: UInt8 = 0x80

    /// The bits every service's VIP needs, and those of the NAT backends' replies.
    public init(services: some Sequence<Service>) {
        self.init()
        for service in services {
            insert(address: service.vip, port: service.port, protocolNumber: service.proto.number)
            guard service.forwarding.translates else { continue }
            for backend in service.backends {
                insert(address: backend.address, port: backend.effectivePort(in: service),
                       protocolNumber: service.proto.number | Self.replyFlag)
            }
        }
    }

    /// True when the data plane goes on to look a packet from `address`:`port` up in sl_nat.
    public func mayBeReply(address: IPAddress, port: UInt16, protocolNumber: UInt8) -> Bool {
        mayContain(address: address, port: port, protocolNumber: protocolNumber | Self.replyFlag)
    }

    /// The bit of (address, port, protocol), as sl_vip_filter_bit() in bpf/hash.h
    /// computes it from struct sl_vip_key: the address words and the port as
    /// they sit in the key (network order, loaded little-endian), folded by XOR
    /// with the protocol beside the port, times the multiplier, top `bits` bits.
    public static func bit(address: IPAddress, port: UInt16, protocolNumber: UInt8) -> Int {
        let w = address.words
        let x = w.0 ^ w.1 ^ w.2 ^ w.3 ^ (UInt32(port.bigEndian) | UInt32(protocolNumber) << 16)
        return Int((x &* multiplier) >> UInt32(32 - bits))
    }

    public mutating func insert(address: IPAddress, port: UInt16, protocolNumber: UInt8) {
        let bit = Self.bit(address: address, port: port, protocolNumber: protocolNumber)
        words[bit / Self.wordBits] |= 1 << UInt64(bit % Self.wordBits)
    }

    /// True when the data plane goes on to look the destination up in sl_vips.
    public func mayContain(address: IPAddress, port: UInt16, protocolNumber: UInt8) -> Bool {
        let bit = Self.bit(address: address, port: port, protocolNumber: protocolNumber)
        return words[bit / Self.wordBits] >> UInt64(bit % Self.wordBits) & 1 != 0
    }

    /// Bits set in either filter.
    public func union(_ other: VIPFilter) -> VIPFilter {
        var out = self
        for i in out.words.indices { out.words[i] |= other.words[i] }
        return out
    }

    /// Wraps words read from the map (must be `wordCount` of them).
    public init(words: [UInt64]) {
        precondition(words.count == Self.wordCount)
        self.words = words
    }
}
