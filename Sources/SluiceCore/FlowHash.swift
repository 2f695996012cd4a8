// The data plane's flow hash, modelled bit for bit so tests can predict which
// backend the BPF program picks. Linux jhash_3words over (source address,
// ports as on the wire, protocol) with seed SL_HASH_SEED.

public enum FlowHash {
    /// SL_HASH_SEED in lb_shared.h.
    public static let seed: UInt32 = 0x5111_ce00

    /// Linux include/linux/jhash.h jhash_3words (all arithmetic wraps).
    public static func jhash3(_ a: UInt32, _ b: UInt32, _ c: UInt32, initval: UInt32) -> UInt32 {
        let initval = initval &+ 0xdead_beef &+ (3 << 2)
        var a = a &+ initval
        var b = b &+ initval
        var c = c &+ initval
        // __jhash_final
        c ^= b; c &-= rol32(b, 14)
        a ^= c; a &-= rol32(c, 11)
        b ^= a; b &-= rol32(a, 25)
        c ^= b; c &-= rol32(b, 16)
        a ^= c; a &-= rol32(c, 4)
        b ^= a; b &-= rol32(a, 14)
        c ^= b; c &-= rol32(b, 24)
        return c
    }

    /// The hash of a flow. Ports are in host order here; the data plane reads
    /// them from the packet, so `b` is the little-endian load of the wire bytes
    /// [sport_hi, sport_lo, dport_hi, dport_lo]. IPv6 sources are folded by XOR.
    public static func hash(source: IPAddress, sourcePort: UInt16, destinationPort: UInt16,
                            protocolNumber: UInt8) -> UInt32 {
        let w = source.words
        let a = source.family == .v4 ? w.0 : w.0 ^ w.1 ^ w.2 ^ w.3
        let b = UInt32(sourcePort.byteSwapped) | UInt32(destinationPort.byteSwapped) << 16
        return jhash3(a, b, UInt32(protocolNumber), initval: seed)
    }

    /// The Maglev slot the data plane reads for `hash`.
    public static func slot(hash: UInt32, tableSize: Int) -> Int {
        Int(hash % UInt32(tableSize))
    }

    private static func rol32(_ word: UInt32, _ shift: UInt32) -> UInt32 {
        word << shift | word >> (32 - shift)
    }
}
