// An AF_PACKET socket on one interface: put whole Ethernet frames on the wire
// and capture what arrives, as a test's traffic generator and sniffer.
import CLibbpf
import Foundation
import Glibc

/// One captured frame and how the kernel classified it (PACKET_HOST,
/// PACKET_OUTGOING, ...; see <linux/if_packet.h>).
public struct CapturedFrame: Sendable {
    public var bytes: [UInt8]
    public var packetType: UInt8

    /// True for frames this host sent rather than received.
    public var isOutgoing: Bool { packetType == Self.outgoing }
    static let outgoing: UInt8 = 4 // PACKET_OUTGOING
}

/// A raw socket bound to one interface. The socket lives in the namespace
/// it was opened in, whichever thread uses it later, so open it with
/// `RawSocket.open(interface:in:)`.
public final class RawSocket: @unchecked Sendable {
    public let interface: String
    public let interfaceIndex: Int32
    private let fd: Int32

    private static let allProtocols = UInt16(ETH_P_ALL).bigEndian

    /// Opens the socket in the calling thread's namespace.
    public init(interface: String) throws {
        let index = Int32(bitPattern: if_nametoindex(interface))
        guard index != 0 else { throw CommandError("raw socket: no interface \(interface)") }
        let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(Self.allProtocols))
        guard fd >= 0 else { throw CommandError("socket(AF_PACKET): \(String(cString: strerror(errno)))") }
        var address = LinkLayerAddress()
        address.sll_family = UInt16(AF_PACKET)
        address.sll_protocol = Self.allProtocols
        address.sll_ifindex = index
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<LinkLayerAddress>.size))
            }
        }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw CommandError("bind(AF_PACKET, \(interface)): \(reason)")
        }
        self.interface = interface
        self.interfaceIndex = index
        self.fd = fd
        // Frames of other interfaces may have queued before bind().
        drain()
    }

    /// Opens a socket on `interface` inside `namespace`.
    public static func open(interface: String, in namespace: TestNamespace) async throws -> RawSocket {
        try await namespace.run { try RawSocket(interface: interface) }
    }

    deinit { close(fd) }

    /// Transmits one whole frame (Ethernet header included) on the interface.
    public func send(_ frame: [UInt8]) throws {
        let sent = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == frame.count else {
            throw CommandError("send on \(interface): \(sent < 0 ? String(cString: strerror(errno)) : "short write")")
        }
    }

    /// The next frame received (not sent) on the interface, or nil when none
    /// arrives within `timeout`.
    public func receive(timeout: Duration) async throws -> CapturedFrame? {
        try await receiveAll(for: timeout) { !$0.isEmpty }.first
    }

    /// Every frame received within `duration`, or until `enough` is satisfied. It never
    /// blocks its thread: it takes what is queued, then sleeps a few milliseconds (frames
    /// wait in the socket meanwhile), and after the deadline it still takes what is queued,
    /// so a late resumption of this task loses no frame that arrived in time.
    public func receiveAll(for duration: Duration,
                           until enough: ([CapturedFrame]) -> Bool = { _ in false }) async throws -> [CapturedFrame] {
        let deadline = ContinuousClock.now + duration
        var frames: [CapturedFrame] = []
        while true {
            while !enough(frames), let frame = try readNow() {
                if !frame.isOutgoing { frames.append(frame) }
            }
            if enough(frames) || ContinuousClock.now >= deadline { return frames }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Discards whatever is queued.
    public func drain() {
        while (try? readNow()) != nil {}
    }

    private func readNow() throws -> CapturedFrame? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 0) > 0 else { return nil }
        return try read()
    }

    private func read() throws -> CapturedFrame? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var from = LinkLayerAddress()
        var length = socklen_t(MemoryLayout<LinkLayerAddress>.size)
        let count = buffer.withUnsafeMutableBytes { bytes in
            withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, &length)
                }
            }
        }
        if count < 0 {
            if errno == EAGAIN || errno == EINTR { return nil }
            throw CommandError("recvfrom on \(interface): \(String(cString: strerror(errno)))")
        }
        return CapturedFrame(bytes: Array(buffer.prefix(count)), packetType: from.sll_pkttype)
    }
}

/// `struct sockaddr_ll` (<linux/if_packet.h>), which Swift's Glibc module
/// does not import; same fields, same order, 20 bytes.
struct LinkLayerAddress {
    var sll_family: UInt16 = 0
    var sll_protocol: UInt16 = 0   // network order
    var sll_ifindex: Int32 = 0
    var sll_hatype: UInt16 = 0
    var sll_pkttype: UInt8 = 0
    var sll_halen: UInt8 = 0
    var sll_addr: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0)
}
