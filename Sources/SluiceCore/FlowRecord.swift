// One flow as balancer nodes tell each other about it: its 5-tuple, the backend it is on
// and, for a translated flow, its mode and full NAT's source slot and port. Backends are
// named by address, not by id, since each node numbers its own; the SNAT address by its
// slot in the pool, which every node of a fleet fills from the same service file.

public struct FlowRecord: Sendable, Hashable {
    public var source: IPAddress
    public var destination: IPAddress
    /// Network order, as in the packet and in sl_flow_key.
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: UInt8
    public var backend: IPAddress
    /// enum sl_forwarding of a translated flow (SL_FWD_NAT, SL_FWD_FULLNAT), else 0.
    public var nat: UInt8
    /// fullnat: the source address's slot in its family's pool.
    public var snatIndex: UInt8
    /// fullnat: the source port, network order.
    public var snatPort: UInt16
    /// fullnat with client_address: proxy-v2: the client's first sequence number after its SYN
    /// (host order), where the PROXY v2 header sits in the backend's stream; nil for a flow
    /// without one.
    public var proxySeq: UInt32?

    public init(source: IPAddress, destination: IPAddress, sourcePort: UInt16, destinationPort: UInt16, proto: UInt8,
                backend: IPAddress, nat: UInt8 = 0, snatIndex: UInt8 = 0, snatPort: UInt16 = 0, proxySeq: UInt32? = nil) {
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.proto = proto
        self.backend = backend
        self.nat = nat
        self.snatIndex = snatIndex
        self.snatPort = snatPort
        self.proxySeq = proxySeq
    }
}
