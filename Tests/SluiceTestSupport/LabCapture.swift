// Packet captures in the lab (`lab.sh capture`: tcpdump, packet-buffered, into the
// lab's directory) and their two readers: the frames themselves, from the pcap file, and
// tshark's expert errors (malformed packets, bad IPv4/TCP/UDP/ICMP checksums), which is
// how a test asserts that every frame it captured is well formed on the wire.
import Foundation
import Glibc

extension Lab {
    public final class Capture: @unchecked Sendable {
        public let file: String
        /// Where it was taken, for messages (`be1 eth0`).
        public let place: String
        private let outputFile: String
        private let child: ChildProcess

        /// Starts tcpdump in `node`'s namespace on `interface` (frames arriving only, unless
        /// `bothWays`; at most `count` of them if given) and waits until it listens.
        init(lab: Lab, node: String, interface: String, bothWays: Bool, filter: [String], count: Int?) async throws {
            let base = "\(lab.directory)/capture-\(node)-\(interface)-\(UUID().uuidString.prefix(6))"
            file = base + ".pcap"
            outputFile = base + ".out"
            place = "\(node) \(interface)"
            let limit = count.map { ["-c", String($0)] } ?? []
            let (executable, arguments) = Lab.invocation("capture", lab.name, [node, interface, file] + (bothWays ? [] : ["-Q", "in"]) + limit + filter)
            let output = URL(fileURLWithPath: outputFile)
            child = try Command.withOutputFiles(stdout: output, stderr: output) { out, err in
                try ChildProcess(executable, arguments, stdout: out, stderr: err)
            }
            // tcpdump says "listening on IF" once its socket is open; looked at before the clock.
            let deadline = ContinuousClock.now + .seconds(10)
            while !printed().contains("listening on") {
                if !child.isRunning || ContinuousClock.now >= deadline {
                    child.killInBackground()
                    throw CommandError("tcpdump on \(place) did not start: \(printed())")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        private func printed() -> String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }

        /// Nobody stopped it: SIGKILL, not awaited (lab.sh down ends it too).
        deinit { child.killInBackground() }

        /// Ends tcpdump once the file has stopped growing for 200 ms (it writes each frame as it
        /// sees it; 5 s at most), then awaits it. Safe to call twice.
        public func stop() async {
            guard child.isRunning else { return }
            let deadline = ContinuousClock.now + .seconds(5)
            var size = fileSize(), stableSince = ContinuousClock.now
            while ContinuousClock.now - stableSince < .milliseconds(200), ContinuousClock.now < deadline, child.isRunning {
                try? await Task.sleep(for: .milliseconds(50))
                let now = fileSize()
                if now != size { size = now; stableSince = .now }
            }
            _ = await child.stop(signal: SIGTERM, timeout: .seconds(5))
        }

        private func fileSize() -> Int {
            ((try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int) ?? 0
        }

        /// What tcpdump printed (its "N packets captured" summary once stopped).
        public var output: String { printed() }

        /// The frames in the file (Ethernet, as captured).
        public func frames() throws -> [[UInt8]] {
            try Lab.pcapFrames(Array(Data(contentsOf: URL(fileURLWithPath: file))))
        }

        /// tshark's expert errors for the file (TShark.expertErrors), naming the capture; nil
        /// when there are none.
        public func expertErrors(guePort: Int, options: [String] = []) async throws -> String? {
            try await TShark.expertErrors(pcap: file, guePort: guePort, options: options).map { "\(place): \(file)\n\($0)" }
        }
    }

    /// Starts capturing what arrives on `node`'s `interface` (`filter`: tcpdump's expression
    /// words); `stop()` it before reading the file. For what a node sends, `bothWays` and a
    /// filter on its address: tcpdump's `-Q out` captured nothing on the lab's veths.
    public func capture(_ node: String, _ interface: String, bothWays: Bool = false, filter: [String] = [],
                        count: Int? = nil) async throws -> Capture {
        try await Capture(lab: self, node: node, interface: interface, bothWays: bothWays, filter: filter, count: count)
    }

    /// The records of a classic pcap file (either byte order, microsecond or nanosecond).
    static func pcapFrames(_ bytes: [UInt8]) throws -> [[UInt8]] {
        guard bytes.count >= 24 else { throw CommandError("a pcap file of \(bytes.count) bytes") }
        let magic = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        let little: Bool
        switch magic {
        case 0xa1b2_c3d4, 0xa1b2_3c4d: little = true
        case 0xd4c3_b2a1, 0x4d3c_b2a1: little = false
        default: throw CommandError("not a pcap file (magic 0x\(String(magic, radix: 16)))")
        }
        func word(_ at: Int) -> Int {
            let b = bytes[at..<(at + 4)].map(UInt32.init)
            return Int(little ? b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24 : b[3] | b[2] << 8 | b[1] << 16 | b[0] << 24)
        }
        var frames: [[UInt8]] = []
        var offset = 24
        while offset + 16 <= bytes.count {
            let length = word(offset + 8)
            guard offset + 16 + length <= bytes.count else { break }  // a record cut by SIGKILL
            frames.append(Array(bytes[(offset + 16)..<(offset + 16 + length)]))
            offset += 16 + length
        }
        return frames
    }
}
