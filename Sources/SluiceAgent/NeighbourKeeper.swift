// The agent's care of l2dsr and NAT backends' next-hop MACs: every second the neighbour table is read again
// and a MAC that changed (a backend's new NIC, a failover of its address) is written into
// sl_backends within about a second of the kernel learning it. It runs on the data plane's
// own thread, like every write.
import Logging
import ServiceLifecycle
import SluiceControl

public final class NeighbourKeeper: ServiceLifecycle.Service, Sendable {
    private let dataplane: DataplaneOwner
    private let logger: Logger

    public init(dataplane: DataplaneOwner, logger: Logger) {
        self.dataplane = dataplane
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { break }
                do throws(ControlError) {
                    let changed = try await self.dataplane.refreshNeighbourMACs()
                    if changed > 0 { self.logger.notice("neighbours: \(changed) l2dsr backend next hop(s) updated") }
                } catch {
                    self.logger.error("neighbours: \(error.message)")
                }
            }
        }
    }
}
