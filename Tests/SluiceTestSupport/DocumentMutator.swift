// A seeded mutator of YAML documents, for feeding parsers what operators and attackers
// write: lines deleted, doubled, swapped or re-indented, values replaced by hostile ones
// (empty, negative, huge, wrong type, malformed addresses, YAML syntax), keys misspelt,
// the text cut or garbage inserted. The same seed gives the same documents.
import Foundation

/// SplitMix64: small, fast and reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

extension SplitMix64 {
    /// SLUICE_FUZZ_SEED, else a new seed: tests print it, so a failing run can be replayed.
    public static var testSeed: UInt64 {
        ProcessInfo.processInfo.environment["SLUICE_FUZZ_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
    }
}

public struct DocumentMutator: Sendable {
    private var rng: SplitMix64

    /// Values that break one parser or another.
    static let hostile = [
        "", "~", "null", "0", "-1", "1", "65535", "65536", "4294967296", "99999999999999999999", "1e9", "0x50", "-0",
        "true", "no", "[]", "{}", "[1, 2]", "{ a: 1 }", "\"\"", "'", "\"", "[", "{", ":", "- x", "&a", "*a", "!!binary x",
        "192.0.2.300", "192.0.2", "::", "::1", "fe80::1%eth0", "2001:db8::g", "0.0.0.0", "255.255.255.255",
        "1024-", "-65535", "65535-1024", "1-65535", "ipip", "gue", "l2dsr", "nat", "fullnat", "tcp", "udp", "sctp",
        "proxy-v2", "http", "10ms", "0s", "1h", "2h", "5", "100", "101", "a b c", String(repeating: "x", count: 300),
        "\u{00e9}t\u{00e9}", "\u{202e}rtl", "\\u0000", "#", "--- x", "...",
    ]

    public init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    /// `text` with one to three mutations.
    public mutating func mutate(_ text: String) -> String {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            guard !lines.isEmpty else { break }
            let at = Int.random(in: 0..<lines.count, using: &rng)
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: lines.remove(at: at)
            case 1: lines.insert(lines[at], at: at)
            case 2: lines.swapAt(at, Int.random(in: 0..<lines.count, using: &rng))
            case 3: lines[at] = String(repeating: " ", count: Int.random(in: 0...3, using: &rng)) + lines[at].drop { $0 == " " }
            case 4, 5, 6:  // a value replaced
                let value = Self.hostile.randomElement(using: &rng)!
                if let colon = lines[at].firstIndex(of: ":") {
                    lines[at] = String(lines[at][...colon]) + " " + value
                } else {
                    lines[at] += value
                }
            case 7:  // a key misspelt
                if let colon = lines[at].firstIndex(of: ":"), colon > lines[at].startIndex {
                    lines[at].insert(Character(UnicodeScalar(UInt8.random(in: 97...122, using: &rng))), at: colon)
                }
            case 8:  // cut short
                let joined = lines.joined(separator: "\n")
                let cut = joined.index(joined.startIndex, offsetBy: Int.random(in: 0...joined.count, using: &rng))
                lines = String(joined[..<cut]).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            default:  // garbage inserted
                let bytes = (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 9...126, using: &rng) }
                lines[at].insert(contentsOf: String(decoding: bytes, as: UTF8.self),
                                 at: lines[at].index(lines[at].startIndex, offsetBy: Int.random(in: 0...lines[at].count, using: &rng)))
            }
        }
        return lines.joined(separator: "\n")
    }
}
