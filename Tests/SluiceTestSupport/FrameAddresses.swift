// The addresses and ports of a frame, as NAT tests and the bench compare them.
import SluiceCore

/// The IP source, destination and transport ports of an untagged frame.
public struct FrameAddresses: Hashable, Sendable, CustomStringConvertible {
    public var source: IPAddress
    public var destination: IPAddress
    public var sourcePort: UInt16
    public var destinationPort: UInt16

    public init(_ frame: [UInt8]) {
        let v4 = frame.be16(at: 12) == 0x0800
        let (a, n, l4) = v4 ? (26, 4, 34) : (22, 16, 54)
        source = IPAddress(bytes: Array(frame[a..<a + n]))!
        destination = IPAddress(bytes: Array(frame[a + n..<a + 2 * n]))!
        sourcePort = frame.be16(at: l4)
        destinationPort = frame.be16(at: l4 + 2)
    }

    public var description: String { "\(source):\(sourcePort) -> \(destination):\(destinationPort)" }
}

