// lbctl top --json in the namespace lab while real clients send TCP and UDP through the VIPs:
// every frame's counts, summed over the frames that cover the traffic, are exactly what
// lbctl stats moved by, and each rate is its count over the frame's interval.
import Foundation
import SluiceTestSupport
import Testing

@Suite("lbctl top in the namespace lab")
struct LabTopTests {
    /// The JSON frames written to `file` so far.
    static func frames(_ file: URL) -> [[String: Any]] {
        let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// Per (service, backend) the packets and bytes of `frames` summed; what is wrong in them
    /// (a rate that is not its count over the interval, an interval far from 0.5 s, no
    /// capacity); the last frame's conntrack entries.
    static func tally(_ frames: [[String: Any]]) -> (packets: [String: Int], bytes: [String: Int], problems: [String], lastEntries: Int) {
        var packets: [String: Int] = [:], bytes: [String: Int] = [:], problems: [String] = []
        for frame in frames {
            let seconds = frame["interval_seconds"] as? Double ?? 0
            if !(seconds > 0.3 && seconds < 2) { problems.append("interval \(seconds)") }
            for service in frame["services"] as? [[String: Any]] ?? [] {
                let name = service["name"] as? String ?? "?"
                for backend in service["backends"] as? [[String: Any]] ?? [] {
                    let key = "\(name) \(backend["address"] as? String ?? "?")"
                    let count = backend["packets"] as? Int ?? -1, size = backend["bytes"] as? Int ?? -1
                    packets[key, default: 0] += count
                    bytes[key, default: 0] += size
                    let pps = backend["packets_per_second"] as? Double ?? -1, bps = backend["bits_per_second"] as? Double ?? -1
                    if abs(pps * seconds - Double(count)) > 1e-6 * max(1, Double(count)) {
                        problems.append("\(key): \(pps)/s over \(seconds) s against \(count) packets")
                    }
                    if abs(bps * seconds - Double(size * 8)) > 1e-6 * max(1, Double(size * 8)) {
                        problems.append("\(key): \(bps) bit/s over \(seconds) s against \(size) bytes")
                    }
                }
            }
            if ((frame["conntrack"] as? [String: Any])?["capacity"] as? Int ?? 0) <= 0 { problems.append("no conntrack capacity: \(frame)") }
            // The lab's table is small: counted for every frame.
            if (frame["conntrack"] as? [String: Any])?["age_seconds"] as? Double != 0 { problems.append("conntrack not counted this frame: \(frame)") }
        }
        let last = (frames.last?["conntrack"] as? [String: Any])?["entries"] as? Int ?? 0
        return (packets, bytes, problems, last)
    }

    /// Until `file` holds `count` frames (15 s at most, and while `top` runs).
    static func waitFrames(_ count: Int, in file: URL, of top: ChildProcess, errors: URL) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while frames(file).count < count {
            try #require(top.isRunning && ContinuousClock.now < deadline,
                         "lbctl top gave \(frames(file).count) frames, not \(count):\n\((try? String(contentsOf: errors, encoding: .utf8)) ?? "")")
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    @Test("top --json: frames are the counters' movement, rates their counts over the interval, and the frames over the traffic add up to lbctl stats' deltas")
    func topMatchesCounterDeltas() async throws {
        try await Lab.withLab { lab in
            let scratch = try ScratchDirectory()
            let out = URL(fileURLWithPath: scratch.path + "/top.json"), err = URL(fileURLWithPath: scratch.path + "/top.err")
            // lbctl itself in the balancer's namespace (nsenter execs it), so a signal reaches it.
            let namespace = try lab.info("lb_ns", of: .lb), pin = try lab.info("pin_path", of: .lb)
            let arguments = ["--net=/run/netns/\(namespace)", Lbctl.path, "top", "--json", "--interval", "0.5", "--pin-path", pin]
            let top = try Command.withOutputFiles(stdout: out, stderr: err) {
                try ChildProcess(TestNamespace.nsenter, arguments, stdout: $0, stderr: $1)
            }
            try await withCleanup {
                try await Self.waitFrames(1, in: out, of: top, errors: err)  // its snapshots have begun: traffic from here on is in its frames
                let before = try await lab.stats()
                let http = try await lab.client(.http, "198.51.100.10", 80, count: 40)
                try #require(http.ok == 40, "HTTP burst failed:\n\(http.output)")
                let udp = try await lab.client(.udp, "198.51.100.10", 53, count: 30)
                try #require(udp.ok == 30, "UDP burst failed:\n\(udp.output)")
                // Two frames printed after the traffic: the second's snapshot follows it.
                try await Self.waitFrames(Self.frames(out).count + 2, in: out, of: top, errors: err)
                let after = try await lab.stats()
                await top.stop(signal: SIGTERM)
                // The first frame's snapshot preceded `before`.
                let tally = Self.tally(Array(Self.frames(out).dropFirst()))
                #expect(tally.problems.isEmpty, "\(tally.problems.joined(separator: "\n"))")
                var expectedPackets: [String: Int] = [:], expectedBytes: [String: Int] = [:]
                let old = Dictionary(before.services.flatMap { s in s.backends.map { ("\(s.name) \($0.address)", $0) } }, uniquingKeysWith: { a, _ in a })
                for service in after.services {
                    for backend in service.backends {
                        let key = "\(service.name) \(backend.address)"
                        expectedPackets[key] = backend.packets - (old[key]?.packets ?? 0)
                        expectedBytes[key] = backend.bytes - (old[key]?.bytes ?? 0)
                    }
                }
                #expect(tally.packets == expectedPackets, "top's packets per backend (left) against lbctl stats' deltas (right)")
                #expect(tally.bytes == expectedBytes, "top's bytes per backend (left) against lbctl stats' deltas (right)")
                let web = expectedPackets.filter { $0.key.hasPrefix("web ") }.values.reduce(0, +)
                #expect(web >= 40 * 3 && expectedPackets.filter { $0.key.hasPrefix("dns ") }.values.reduce(0, +) == 30,
                        "the traffic went through: \(expectedPackets)")
                #expect(tally.lastEntries > 0, "the connection table holds the flows")

                // The text view: one frame, readable at 80 columns.
                let text = try await lab.lbctl("top", "--count", "1", "--interval", "0.2")
                #expect(text.status == 0, "\(text)")
                let lines = text.stdout.split(separator: "\n")
                #expect(lines.allSatisfy { $0.count <= 80 }, "wider than 80 columns:\n\(text.stdout)")
                #expect(text.stdout.contains("PKT/S") && lines.contains { $0.hasPrefix("web ") } && lines.contains { $0.hasPrefix("dns ") },
                        "\(text.stdout)")
            } cleanup: {
                await top.stop(signal: SIGKILL)
            }
        }
    }
}
