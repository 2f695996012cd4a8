// One flow as balancer nodes tell each other about it: its 5-tuple and the backend it is
// on. Backends are named by address, not by id, since each node numbers its own.

public struct FlowRecord: Sendable, Hashable {
    public var source: IPAddress
    public var destination: IPAddress
    /// Network order, as in the packet and in sl_flow_key.
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: UInt8
    public var backend: IPAddress

    public init(source: IPAddress, destination: IPAddress, sourcePort: UInt16, destinationPort: UInt16, proto: UInt8,
                backend: IPAddress) {
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.proto = proto
        self.backend = backend
    }
}
