import Testing
@testable import SluiceCore

/// `count` backends 10.x.y.z with the given weight, keyed as the control plane keys them.
private func backends(_ count: Int, weight: Int = 1) -> [MaglevBackend] {
    (0..<count).map { i in
        MaglevBackend(key: MaglevKey.forBackend(IPAddress(bytes: [10, UInt8(i >> 16), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])!),
                      weight: weight)
    }
}

/// How many slots each backend index owns.
private func shares(_ table: [UInt32], count: Int) -> [Int] {
    var shares = [Int](repeating: 0, count: count)
    for slot in table where slot != Maglev.noBackend { shares[Int(slot)] += 1 }
    return shares
}

@Suite struct MaglevTests {
    let m = Maglev.defaultTableSize

    @Test(arguments: [3, 10, 100, 1000])
    func equalWeightsGiveEveryBackendItsFairShareWithinOnePercent(n: Int) {
        let table = Maglev.table(for: backends(n), size: m)
        #expect(table.count == m)
        #expect(!table.contains(Maglev.noBackend))
        let fair = Double(m) / Double(n)
        for share in shares(table, count: n) {
            #expect(abs(Double(share) - fair) / fair < 0.01, "share \(share) vs fair \(fair)")
        }
    }

    @Test func weightsOneTwoThreeGiveSharesProportionalToWeight() {
        let weighted = zip(backends(3), [1, 2, 3]).map { MaglevBackend(key: $0.key, weight: $1) }
        let table = Maglev.table(for: weighted, size: m)
        let fractions = shares(table, count: 3).map { Double($0) / Double(m) }
        for (fraction, expected) in zip(fractions, [1.0 / 6, 2.0 / 6, 3.0 / 6]) {
            #expect(abs(fraction - expected) < 0.02, "\(fraction) vs \(expected)")
        }
    }

    @Test func removingOneOfAHundredBackendsMovesFewOtherSlots() {
        let before = backends(100)
        let removed = 42
        var after = before
        after.remove(at: removed)

        let old = Maglev.table(for: before, size: m).map { before[Int($0)].key }
        let new = Maglev.table(for: after, size: m).map { after[Int($0)].key }
        let removedKey = before[removed].key
        var changed = 0
        var changedElsewhere = 0
        for slot in 0..<m where old[slot] != new[slot] {
            changed += 1
            if old[slot] != removedKey { changedElsewhere += 1 }
        }
        #expect(Double(changedElsewhere) / Double(m) < 0.02, "\(changedElsewhere) slots of surviving backends moved")
        #expect(Double(changed) / Double(m) < 0.03, "\(changed) slots changed in all")
    }

    @Test func theTableDependsOnTheSetOfBackendsNotTheirOrder() {
        var input = backends(50)
        for i in input.indices { input[i].weight = 1 + i % 4 }
        let reference = Maglev.table(for: input, size: 251).map { input[Int($0)].key }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<5 {
            let shuffled = input.shuffled(using: &generator)
            let table = Maglev.table(for: shuffled, size: 251)
            #expect(table.map { shuffled[Int($0)].key } == reference)
        }
    }

    @Test func theSameInputGivesTheSameTableEveryTime() {
        let input = backends(20)
        #expect(Maglev.table(for: input, size: 251) == Maglev.table(for: input, size: 251))
    }

    // Pinned so that a change of hash or fill order, which would move flows on
    // every node after an upgrade, cannot slip in unnoticed.
    @Test func theTableIsStableAcrossBuilds() {
        let small = Maglev.table(for: backends(3), size: 251)
        #expect(Array(small.prefix(12)) == [2, 1, 1, 2, 0, 2, 1, 2, 2, 0, 2, 1])
        // FNV-1a over the whole table, so every slot is pinned, not just a prefix.
        let large = Maglev.table(for: backends(10), size: m)
        let digest = large.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        #expect(digest == 772_892_013_642_592_667)
    }

    @Test(arguments: [[1, 1, 1, 1], [1, 2, 3], [5, 0, 7, 7, 1], [65535, 1, 1, 1, 1, 1, 1, 1], [3, 100, 17, 1, 42, 42]])
    func theTableIsTheOneKatransRoundByRoundFillGives(weights: [Int]) {
        let input = zip(backends(weights.count), weights).map { MaglevBackend(key: $0.key, weight: $1) }
        for size in [251, 65537] {
            let reference = katranReference(input, size: size)
            #expect(Maglev.table(for: input, size: size, fill: .rounds) == reference)
            #expect(Maglev.table(for: input, size: size, fill: .queue) == reference)
            #expect(Maglev.table(for: input, size: size) == reference)
        }
    }

    @Test func allWeightsZeroLeavesEverySlotWithoutABackend() {
        let table = Maglev.table(for: backends(5, weight: 0), size: 251)
        #expect(table.count == 251)
        #expect(table.allSatisfy { $0 == 0xffff_ffff })
        #expect(Maglev.table(for: [], size: 251).allSatisfy { $0 == Maglev.noBackend })
    }

    @Test func aDrainedBackendGetsNoSlotWhileTheOthersShareTheTable() {
        var input = backends(4)
        input[2].weight = 0
        let counts = shares(Maglev.table(for: input, size: m), count: 4)
        #expect(counts[2] == 0)
        #expect(counts.reduce(0, +) == m)
        for i in [0, 1, 3] { #expect(abs(Double(counts[i]) - Double(m) / 3) < Double(m) / 300) }
    }

    @Test func primesAreRecognised() {
        #expect([2, 3, 5, 251, 65537, 655_373, 4_000_037].allSatisfy(Maglev.isPrime))
        #expect(![-7, 0, 1, 4, 9, 25, 65536, 65535, 4_000_000].contains(where: Maglev.isPrime))
    }

    @Test func backendKeysAreTheAddressBytes() throws {
        let address = try #require(IPAddress("2001:db8::7"))
        #expect(MaglevKey.forBackend(address) == address.bytes)
    }

    // Release builds only mean anything here; run with -c release to read the figure.
    @Test func buildingALargeTableFinishes() {
        let clock = ContinuousClock()
        let input = backends(1000)
        var table: [UInt32] = []
        let elapsed = clock.measure { table = Maglev.table(for: input, size: m) }
        print("Maglev M=\(m) N=1000: \(elapsed)")
        #expect(table.count == m)
        #expect(Set(table).count == 1000)
    }
}

@Suite struct SipHashTests {
    // Reference vectors of SipHash-2-4: key 00..0f, message 00..(n-1).
    @Test(arguments: [(0, 0x726f_db47_dd0e_0e31 as UInt64), (1, 0x74f8_39c5_93dc_67fd),
                      (8, 0x93f5_f579_9a93_2462), (15, 0xa129_ca61_49be_45e5), (16, 0x3f2a_cc7f_57c2_9bdb)])
    func sipHashMatchesTheReferenceVectors(length: Int, expected: UInt64) {
        let hasher = SipHash24(k0: 0x0706_0504_0302_0100, k1: 0x0f0e_0d0c_0b0a_0908)
        #expect(hasher.hash((0..<length).map(UInt8.init)) == expected)
    }
}

/// Katran's weighted Maglev fill written the plain way (every backend visited
/// every round, full permutations), with Sluice's hashes and key order: the
/// model the optimised `Maglev.table` must reproduce slot for slot.
private func katranReference(_ backends: [MaglevBackend], size m: Int) -> [UInt32] {
    let order = backends.indices.filter { backends[$0].weight > 0 }
        .sorted { backends[$0].key.lexicographicallyPrecedes(backends[$1].key) }
    guard !order.isEmpty else { return Array(repeating: Maglev.noBackend, count: m) }
    let offsetHash = SipHash24(k0: 0x736c_7569_6365_2d6f, k1: 0x6666_7365_742d_6831)
    let skipHash = SipHash24(k0: 0x736c_7569_6365_2d73, k1: 0x6b69_702d_2d2d_6832)
    let permutations = order.map { index -> [Int] in
        let offset = Int(offsetHash.hash(backends[index].key) % UInt64(m))
        let skip = Int(skipHash.hash(backends[index].key) % UInt64(m - 1)) + 1
        return (0..<m).map { (offset + $0 * skip) % m }
    }
    let maxWeight = order.map { backends[$0].weight }.max()!
    var table = [UInt32](repeating: Maglev.noBackend, count: m)
    var next = [Int](repeating: 0, count: order.count)
    var credit = [Int](repeating: 0, count: order.count)
    var filled = 0
    while true {
        for k in order.indices {
            credit[k] += backends[order[k]].weight
            while credit[k] >= maxWeight {
                credit[k] -= maxWeight
                while table[permutations[k][next[k]]] != Maglev.noBackend { next[k] += 1 }
                table[permutations[k][next[k]]] = UInt32(order[k])
                next[k] += 1
                filled += 1
                if filled == m { return table }
            }
        }
    }
}
