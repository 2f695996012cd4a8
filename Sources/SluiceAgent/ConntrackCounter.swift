// The size of the connection table for /metrics. The kernel keeps no count of a hash
// map's entries that user space can read, so the table is read whole with batched
// lookups: ~1 ms empty, ~330 ms for 1,048,576 flows here. That runs in the background
// every `interval`, never in a scrape, and a scrape shows the latest count.
import ServiceLifecycle
import SluiceBPF
import Synchronization

public final class ConntrackCounter: Service, Sendable {
    public static let defaultInterval: Duration = .seconds(10)
    private let map: BPFMap
    private let interval: Duration
    private let latest = Mutex<Int?>(nil)

    /// Counts once now, so the first scrape has a value.
    public init(map: BPFMap, interval: Duration = ConntrackCounter.defaultInterval) {
        self.map = map
        self.interval = interval
        count()
    }

    /// The last count (nil if reading the table failed).
    public var entries: Int? { latest.withLock { $0 } }

    private func count() {
        let entries = try? map.countEntries()
        latest.withLock { $0 = entries }
    }

    /// Recounts every `interval` until graceful shutdown (which cancels the sleep; that is not an error).
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: self.interval)
                if Task.isCancelled { break }
                self.count()
            }
        }
    }
}
