// The data plane's flow hash, modelled bit for bit so tests can predict which
// backend the BPF program picks. Linux jhash_3words over (source address,
// ports as on the wire, protocol) with seed SL_HASH_SEED; an IPv6 source
// enters as Linux jhash2 of its four words.

public enum FlowHash {
    /// SL_HASH_SEED in lb_shared.h.
    public static let seed: UInt32 = 0x5111_ce00

    /// Linux include/linux/jhash.h jhash_3words (all arithmetic wraps).
    public static func jhash3(_ a: UInt32, _ b: UInt32, _ c: UInt32, initval: UInt32) -> UInt32 {
        let initval = initval &+ 0xdead_beef &+ (3 << 2)
        return final(a &+ initval, b &+ initval, c &+ initval)
    }

    /// __jhash_final: mixes (a, b, c) into c.
    private static func final(_ a: UInt32, _ b: UInt32, _ c: UInt32) -> UInt32 {
        var a = a, b = b, c = c
        c ^= b; c &-= rol32(b, 14)
        a ^= c; a &-= rol32(c, 11)
        b ^= a; b &-= rol32(a, 25)
        c ^= b; c &-= rol32(b, 16)
        a ^= c; a &-= rol32(c, 4)
        b ^= a; b &-= rol32(a, 14)
        c ^= b; c &-= rol32(b, 24)
        return c
    }

    /// Linux jhash2(words, 4, initval): the words as loaded from memory (no byte swap).
    public static func jhash4(_ w: (UInt32, UInt32, UInt32, UInt32), initval: UInt32) -> UInt32 {
        let start = 0xdead_beef &+ (4 << 2) &+ initval
        var a = start &+ w.0
        var b = start &+ w.1
        var c = start &+ w.2
        // __jhash_mix
        a &-= c; a ^= rol32(c, 4); c &+= b
        b &-= a; b ^= rol32(a, 6); a &+= c
        c &-= b; c ^= rol32(b, 8); b &+= a
        a &-= c; a ^= rol32(c, 16); c &+= b
        b &-= a; b ^= rol32(a, 19); a &+= c
        c &-= b; c ^= rol32(b, 4); b &+= a
        a &+= w.3
        return final(a, b, c)
    }

    /// The hash of a flow. Ports are in host order here; the data plane reads
    /// them from the packet, so `b` is the little-endian load of the wire bytes
    /// [sport_hi, sport_lo, dport_hi, dport_lo]. An IPv6 source is hashed whole first.
    public static func hash(source: IPAddress, sourcePort: UInt16, destinationPort: UInt16,
                            protocolNumber: UInt8) -> UInt32 {
        let w = source.words
        let a = source.family == .v4 ? w.0 : jhash4(w, initval: seed)
        let b = UInt32(sourcePort.byteSwapped) | UInt32(destinationPort.byteSwapped) << 16
        return jhash3(a, b, UInt32(protocolNumber), initval: seed)
    }

    /// The Maglev slot the data plane reads for `hash`.
    public static func slot(hash: UInt32, tableSize: Int) -> Int {
        Int(hash % UInt32(tableSize))
    }

    /// The try-th full-NAT source candidate of a flow (sl_snat_candidate in bpf/nat.h):
    /// jhash_3words(flow hash, try, SL_SNAT_TRIES) with the flow hash's seed.
    public static func snatCandidate(flowHash: UInt32, try attempt: UInt32, tries: UInt32 = 16) -> UInt32 {
        jhash3(flowHash, attempt, tries, initval: seed)
    }

    /// The GUE tunnel's UDP source port of a flow, host order (sl_gue_sport in bpf/gue.h):
    /// the flow key's address words, ports (as on the wire, loaded little-endian) and
    /// protocol folded by XOR, times the prefilter's multiplier, the top 14 bits over 0xc000.
    public static func gueSourcePort(source: IPAddress, sourcePort: UInt16, destinationPort: UInt16,
                                     protocolNumber: UInt8) -> UInt16 {
        let w = source.words
        let ports = UInt32(sourcePort.byteSwapped) | UInt32(destinationPort.byteSwapped) << 16
        let x = w.0 ^ w.1 ^ w.2 ^ w.3 ^ ports ^ UInt32(protocolNumber)
        return 0xc000 | UInt16((x &* VIPFilter.multiplier) >> 18)
    }

    private static func rol32(_ word: UInt32, _ shift: UInt32) -> UInt32 {
        word << shift | word >> (32 - shift)
    }
}
