// SipHash-2-4 (Aumasson & Bernstein) with caller-chosen keys. Maglev needs
// hashes that are the same in every process on every node; Swift's Hasher is
// seeded per process, so it cannot be used for that.

struct SipHash24 {
    let k0: UInt64
    let k1: UInt64

    func hash(_ bytes: [UInt8]) -> UInt64 {
        var v0 = k0 ^ 0x736f_6d65_7073_6575
        var v1 = k1 ^ 0x646f_7261_6e64_6f6d
        var v2 = k0 ^ 0x6c79_6765_6e65_7261
        var v3 = k1 ^ 0x7465_6462_7974_6573

        func round() {
            v0 &+= v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
            v2 &+= v3; v3 = rotl(v3, 16); v3 ^= v2
            v0 &+= v3; v3 = rotl(v3, 21); v3 ^= v0
            v2 &+= v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
        }
        func absorb(_ m: UInt64) {
            v3 ^= m
            round(); round()
            v0 ^= m
        }

        let whole = bytes.count / 8 * 8
        for start in stride(from: 0, to: whole, by: 8) {
            absorb(Self.loadLE(bytes[start..<start + 8]))
        }
        absorb(UInt64(truncatingIfNeeded: bytes.count) << 56 | Self.loadLE(bytes[whole...]))
        v2 ^= 0xff
        round(); round(); round(); round()
        return v0 ^ v1 ^ v2 ^ v3
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 {
        x << k | x >> (64 - k)
    }

    private static func loadLE(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }
}
