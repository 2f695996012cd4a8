// BIRD's control socket (what birdc speaks): a greeting, then one command and its reply of
// numbered lines, `NNNN-` continuing and `NNNN ` ending it; codes 8xxx and 9xxx are errors.
// Blocking calls with a timeout, for a thread of their own (never the cooperative pool).
import Foundation
import Glibc

public struct BIRDControl: Sendable {
    public let socketPath: String
    public var timeoutSeconds = 5

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var message: String
        /// Nothing listens on the socket (BIRD is not running): it reads its files when it starts.
        public var notRunning = false
        public var description: String { message }
    }

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// Sends `command` and returns the reply's lines (without their codes), or throws the
    /// error BIRD answered or why it could not be reached.
    public func run(_ command: String) throws(Failure) -> [String] {
        let fd = try connect()
        defer { close(fd) }
        var reader = LineReader(fd: fd)
        _ = try reply(&reader)  // 0001 BIRD x.y.z ready.
        let bytes = Array((command + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + sent, bytes.count - sent) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(message: "BIRD at \(socketPath): writing \(String(reflecting: command)) failed: \(String(cString: strerror(errno)))") }
            sent += n
        }
        return try reply(&reader)
    }

    /// `configure`: BIRD re-reads its configuration, the agent's include file with it.
    public func configure() throws(Failure) {
        _ = try run("configure")
    }

    private func reply(_ reader: inout LineReader) throws(Failure) -> [String] {
        var lines: [String] = []
        while true {
            guard let line = try reader.next(path: socketPath) else {
                throw Failure(message: "BIRD at \(socketPath) closed the connection mid-reply")
            }
            let bytes = Array(line.utf8)
            // "NNNN-text", "NNNN text" (last), " text" (continuation), "+NNNN" (async notice).
            guard bytes.count >= 5, bytes[0...3].allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
                if !line.hasPrefix("+") { lines.append(String(line.dropFirst())) }
                continue
            }
            let text = String(decoding: bytes[5...], as: UTF8.self)
            if bytes[0] == UInt8(ascii: "8") || bytes[0] == UInt8(ascii: "9") {
                throw Failure(message: "BIRD at \(socketPath): \(text)")
            }
            lines.append(text)
            if bytes[4] == UInt8(ascii: " ") { return lines }
        }
    }

    private func connect() throws(Failure) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(message: "socket: \(String(cString: strerror(errno)))") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw Failure(message: "bgp.bird_socket \(socketPath): the path is too long for a Unix socket")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw Failure(message: "BIRD's control socket \(socketPath): \(reason) (is bird running?)", notRunning: true)
        }
        return fd
    }

    /// Lines from a socket, read in blocks.
    private struct LineReader {
        let fd: Int32
        var buffer: [UInt8] = []

        mutating func next(path: String) throws(Failure) -> String? {
            while true {
                if let newline = buffer.firstIndex(of: 10) {
                    let line = String(decoding: buffer[..<newline], as: UTF8.self)
                    buffer.removeFirst(newline + 1)
                    return line
                }
                var block = [UInt8](repeating: 0, count: 4096)
                let n = block.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 {
                    throw Failure(message: "BIRD at \(path): no answer (\(String(cString: strerror(errno))))")
                }
                if n == 0 { return nil }
                buffer.append(contentsOf: block[..<n])
            }
        }
    }
}
