// Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights the way
// Katran's weighted Maglev places them: the lookup table the data plane indexes
// with `FlowHash.slot`.

/// One backend as Maglev sees it: a stable key and a weight (0 = no slots).
public struct MaglevBackend: Sendable, Hashable {
    public var key: [UInt8]
    public var weight: Int

    public init(key: [UInt8], weight: Int) {
        self.key = key
        self.weight = weight
    }
}

public enum MaglevKey {
    /// The address bytes, so a backend gets the same preference list in every
    /// service and on every node.
    public static func forBackend(_ address: IPAddress) -> [UInt8] {
        address.bytes
    }
}

public enum Maglev {
    public static let defaultTableSize = 65537
    /// Smallest table the service file accepts.
    public static let minimumTableSize = 251
    /// SL_NO_BACKEND: a slot when every backend is drained.
    public static let noBackend: UInt32 = 0xffff_ffff

    // Fixed keys: the table must come out the same in every process on every node.
    private static let offsetHash = SipHash24(k0: 0x736c_7569_6365_2d6f, k1: 0x6666_7365_742d_6831)
    private static let skipHash = SipHash24(k0: 0x736c_7569_6365_2d73, k1: 0x6b69_702d_2d2d_6832)

    /// A table of `size` slots (a prime), each an index into `backends` or
    /// `noBackend`. The result depends on the set of backends, not their order.
    public static func table(for backends: [MaglevBackend], size: Int) -> [UInt32] {
        table(for: backends, size: size, fill: nil)
    }

    /// The two ways of replaying the claim order; they give identical tables.
    enum Fill {
        /// Visit every backend every round: cheapest when weights are similar.
        case rounds
        /// Pop the next claimant from a heap: cheapest when one weight dominates
        /// and most backends claim nothing in most rounds.
        case queue
    }

    /// `fill` nil picks the cheaper replay; tests force each to compare them.
    static func table(for backends: [MaglevBackend], size: Int, fill: Fill?) -> [UInt32] {
        precondition(size >= 2, "a Maglev table needs a prime size")
        let m = size
        // Sorting by key makes the table independent of the caller's order;
        // indices in the result still refer to the caller's array.
        let order = backends.indices
            .filter { backends[$0].weight > 0 }
            .sorted { lhs, rhs in
                let a = backends[lhs], b = backends[rhs]
                if a.key != b.key { return a.key.lexicographicallyPrecedes(b.key) }
                return a.weight != b.weight ? a.weight < b.weight : lhs < rhs
            }
        guard !order.isEmpty else { return Array(repeating: noBackend, count: m) }

        let n = order.count
        // Per backend: the next position of its preference list
        // (offset + j * skip) % M, advanced by `skip` instead of materialised.
        var position = ContiguousArray<Int>(repeating: 0, count: n)
        var skip = ContiguousArray<Int>(repeating: 0, count: n)
        var weight = ContiguousArray<Int>(repeating: 0, count: n)
        for (k, index) in order.enumerated() {
            let key = backends[index].key
            position[k] = Int(offsetHash.hash(key) % UInt64(m))
            skip[k] = Int(skipHash.hash(key) % UInt64(m - 1)) + 1
            weight[k] = backends[index].weight
            precondition(weight[k] <= Int(UInt32.max), "Maglev weights are 0...65535 in practice")
        }
        let maxWeight = weight.max()!
        let totalWeight = weight.reduce(0, +)
        // The round loop costs about M * n * maxWeight / totalWeight cheap steps,
        // the queue M heap updates; measured (M = 65537, N = 1000, release) they
        // break even when maxWeight is some 60-100 times the mean weight.
        let fill = fill ?? (n * maxWeight <= 64 * totalWeight ? .rounds : .queue)

        return Array(unsafeUninitializedCapacity: m) { table, initialized in
            table.initialize(repeating: noBackend)
            initialized = m

            /// Backend k takes the next free slot of its preference list.
            func claim(_ k: Int) {
                var p = position[k]
                let step = skip[k]
                while table[p] != noBackend {
                    p += step
                    if p >= m { p -= m }
                }
                table[p] = UInt32(truncatingIfNeeded: order[k])
                p += step
                if p >= m { p -= m }
                position[k] = p
            }

            // Katran's weighted Maglev runs rounds in which every backend earns
            // its weight in credit and claims one slot per `maxWeight` of credit,
            // so shares follow the weights while staying interleaved as in the
            // unweighted algorithm. No weight exceeds `maxWeight`, so a backend
            // claims at most once a round.
            switch fill {
            case .rounds:
                var credit = ContiguousArray<Int>(repeating: 0, count: n)
                var filled = 0
                while true {
                    for k in 0..<n {
                        credit[k] += weight[k]
                        guard credit[k] >= maxWeight else { continue }
                        credit[k] -= maxWeight
                        claim(k)
                        filled += 1
                        if filled == m { return }
                    }
                }
            case .queue:
                // Backend k's t-th claim falls in round ceil(t * maxWeight / weight),
                // and claims go in (round, backend) order: the heap replays it.
                var claims = ContiguousArray<Int>(repeating: 1, count: n)
                var queue = ClaimQueue(rounds: ContiguousArray((0..<n).map { ceilDiv(maxWeight, weight[$0]) }))
                for _ in 0..<m {
                    let k = queue.first
                    claim(k)
                    claims[k] += 1
                    queue.moveFirst(toRound: ceilDiv(claims[k] * maxWeight, weight[k]))
                }
            }
        }
    }

    private static func ceilDiv(_ a: Int, _ b: Int) -> Int {
        (a + b - 1) / b
    }

    /// Trial division; table sizes are at most a few million.
    public static func isPrime(_ n: Int) -> Bool {
        guard n >= 2 else { return false }
        if n < 4 { return true }
        if n % 2 == 0 || n % 3 == 0 { return false }
        var d = 5
        while d * d <= n {
            if n % d == 0 || n % (d + 2) == 0 { return false }
            d += 6
        }
        return true
    }
}

/// A binary min-heap of backends ordered by (round of their next claim, backend).
private struct ClaimQueue {
    private var rounds: ContiguousArray<Int>
    private var heap: ContiguousArray<Int>

    init(rounds: ContiguousArray<Int>) {
        self.rounds = rounds
        heap = ContiguousArray(rounds.indices)
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    }

    /// The backend that claims next.
    var first: Int { heap[0] }

    /// Reschedules `first` for a later round.
    mutating func moveFirst(toRound round: Int) {
        rounds[heap[0]] = round
        siftDown(0)
    }

    private func precedes(_ a: Int, _ b: Int) -> Bool {
        rounds[a] < rounds[b] || (rounds[a] == rounds[b] && a < b)
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let count = heap.count
        while true {
            var best = i
            let left = 2 * i + 1, right = left + 1
            if left < count && precedes(heap[left], heap[best]) { best = left }
            if right < count && precedes(heap[right], heap[best]) { best = right }
            if best == i { return }
            heap.swapAt(i, best)
            i = best
        }
    }
}
