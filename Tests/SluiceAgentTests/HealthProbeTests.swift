// The agent's health probes against real sockets on loopback: what passes, and that each
// way of failing fails within the timeout with a reason a person can read.
import Foundation
import Glibc
import SluiceAgent
import SluiceCore
import Testing

/// A loopback server on a kernel-chosen port, run by a thread until closed.
private final class LoopbackServer: @unchecked Sendable {
    enum Behaviour {
        /// Answers each HTTP request with this status line's code.
        case http(Int)
        /// Listens and never accepts: connections complete, nothing is ever said.
        case silent
        /// Echoes each datagram back prefixed with "echo ".
        case udpEcho
    }

    let port: UInt16
    private let fd: Int32
    private let lock = NSLock()
    private var closed = false

    /// `serve: false` binds and answers nothing (no thread): for a port to release at once.
    init(_ behaviour: Behaviour, serve: Bool = true) throws {
        let udp: Bool
        if case .udpEcho = behaviour { udp = true } else { udp = false }
        let fd = socket(AF_INET, Int32(udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && (udp || listen(fd, 16) == 0) && getsockname(fd, pointer, &length) == 0
            }
        }
        guard fd >= 0, bound else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        port = UInt16(bigEndian: address.sin_port)
        guard serve else { return }
        switch behaviour {
        case .silent: break
        case .http(let status):
            Thread.detachNewThread {
                while true {
                    let client = accept(fd, nil, nil)
                    guard client >= 0 else { return }
                    var buffer = [UInt8](repeating: 0, count: 4096), request: [UInt8] = []
                    while !request.ends(with: Array("\r\n\r\n".utf8)) {
                        let n = read(client, &buffer, buffer.count)
                        guard n > 0 else { break }
                        request += buffer[..<n]
                    }
                    let answer = Array("HTTP/1.0 \(status) Something\r\nContent-Length: 0\r\n\r\n".utf8)
                    _ = write(client, answer, answer.count)
                    Glibc.close(client)
                }
            }
        case .udpEcho:
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 2048)
                var peer = sockaddr_storage(), peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
                while true {
                    let n = withUnsafeMutablePointer(to: &peer) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, 0, $0, &peerLength) }
                    }
                    guard n >= 0 else { return }
                    let reply = Array("echo ".utf8) + buffer[..<n]
                    _ = withUnsafePointer(to: &peer) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, reply, reply.count, 0, $0, peerLength) }
                    }
                }
            }
        }
    }

    /// A port nothing listens on (bound, then released). No thread serves it: one that
    /// started after the close would read whatever socket got the descriptor number next.
    static func closedPort(udp: Bool = false) throws -> UInt16 {
        let server = try LoopbackServer(udp ? .udpEcho : .silent, serve: false)
        server.close()
        return server.port
    }

    /// Closes the socket once (deinit calls it again: a second close(2) would close whatever
    /// descriptor of the test process had taken the number meanwhile).
    func close() {
        let first = lock.withLock {
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }

    deinit { close() }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}

private let loopback = IPAddress("127.0.0.1")!

/// A result's text, not its time, tells a timeout ("no answer within") from a refusal.
private func probe(_ check: HealthCheck, port: UInt16, timeout: Int = 5_000) -> HealthProbe {
    HealthProbe(check, backend: loopback, servicePort: port, timeoutMilliseconds: timeout)
}

@Suite("health probes against real sockets")
struct HealthProbeTests {
    @Test func tcpPassesWhenAConnectionIsAcceptedAndFailsWhenRefused() async throws {
        let server = try LoopbackServer(.silent)
        #expect(await probe(HealthCheck(kind: .tcp), port: server.port).run() == nil)
        let refused = await probe(HealthCheck(kind: .tcp), port: try LoopbackServer.closedPort()).run()
        #expect(refused == "connection refused")
    }

    @Test func httpPassesOnTheExpectedStatusOnly() async throws {
        let ok = try LoopbackServer(.http(200)), unavailable = try LoopbackServer(.http(503))
        #expect(await probe(HealthCheck(kind: .http, path: "/healthz"), port: ok.port).run() == nil)
        #expect(await probe(HealthCheck(kind: .http), port: unavailable.port).run() == "HTTP status 503, expected 200")
        #expect(await probe(HealthCheck(kind: .http, expectStatus: 503), port: unavailable.port).run() == nil)
    }

    @Test func aServerThatNeverAnswersFailsWithinTheTimeout() async throws {
        let server = try LoopbackServer(.silent)
        let start = ContinuousClock.now
        let failure = await probe(HealthCheck(kind: .http), port: server.port, timeout: 300).run()
        let elapsed = ContinuousClock.now - start
        #expect(failure == "no answer within 300 ms")
        // No upper bound: a loaded test process may resume this task late; the probe's own
        // deadline runs on an event loop, and the answer above says it was the one that fired.
        #expect(elapsed >= .milliseconds(250), "\(elapsed)")
    }

    @Test func udpPassesOnAReplyContainingTheExpectedText() async throws {
        let server = try LoopbackServer(.udpEcho)
        #expect(await probe(HealthCheck(kind: .udp, send: "ping", expect: "echo ping"), port: server.port).run() == nil)
        #expect(await probe(HealthCheck(kind: .udp, send: "ping"), port: server.port).run() == nil)
        let wrong = await probe(HealthCheck(kind: .udp, send: "ping", expect: "pong"), port: server.port).run()
        #expect(wrong == #"the reply does not contain "pong""#)
        // Nothing listening: the ICMP port unreachable fails the probe, not the timeout.
        let refused = await probe(HealthCheck(kind: .udp, send: "ping"), port: try LoopbackServer.closedPort(udp: true)).run()
        #expect(refused == "connection refused")
    }

    @Test func theCheckPortOverridesTheServicePort() async throws {
        let server = try LoopbackServer(.http(200))
        let check = HealthCheck(kind: .http, port: server.port)
        let viaCheckPort = HealthProbe(check, backend: loopback, servicePort: try LoopbackServer.closedPort(), timeoutMilliseconds: 10_000)
        #expect(viaCheckPort.port == server.port)
        #expect(await viaCheckPort.run() == nil)
    }
}
