// lbctl top: the live view, a frame an interval: per VIP and backend packets/s and bits/s,
// new flows/s, the connection table's fill and drops by reason, from the pinned counters.
import ArgumentParser
import Foundation
import SluiceControl

struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what the data plane is doing now, refreshed every interval.",
        discussion: "Per VIP and backend packets/s and bits/s, busiest first; new flows/s; the connection table's fill; drops/s by reason. On a terminal each frame replaces the last; otherwise frames follow each other. With --json, one JSON object a line per interval.")

    @Option(help: ArgumentHelp("Seconds between frames (0.1 to 60).", valueName: "SECONDS")) var interval: Double = 1
    @Option(help: ArgumentHelp("Stop after this many frames (default: until interrupted).", valueName: "N")) var count: Int?
    @Flag(help: "Print one JSON object a line per interval (stable; see the README).") var json = false
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        guard interval >= 0.1 && interval <= 60 else { throw ValidationError("--interval: \(interval) is not from 0.1 to 60 seconds") }
        if let count, count < 1 { throw ValidationError("--count: \(count) is not 1 or more") }
    }

    func run() throws {
        let dataplane = try Dataplane.open(pinPath: global.pinPath)
        let terminal = isatty(STDOUT_FILENO) == 1 && !json
        var previous = try dataplane.counters()
        var taken = ContinuousClock.now
        var frames = 0
        var schedule = ConntrackCountSchedule()
        var fill: (value: TopFrame.Conntrack, at: ContinuousClock.Instant)?
        while count.map({ frames < $0 }) ?? true {
            Thread.sleep(forTimeInterval: max(0, interval - (ContinuousClock.now - taken).seconds))
            let snapshot = try dataplane.counters()
            let now = ContinuousClock.now
            if fill == nil || schedule.isDue(at: now, interval: .seconds(interval)) {
                // The cost is this thread's CPU time (the batched read is system time), not the
                // wall clock: on a loaded machine a stall would pass for an expensive count.
                let cpu = Self.threadCPUTime()
                fill = (try dataplane.conntrackFill(), now)
                schedule.counted(at: now, cost: Self.threadCPUTime() - cpu)
            }
            var conntrack = fill!.value
            conntrack.ageSeconds = (now - fill!.at).seconds
            let frame = TopFrame(from: previous, to: snapshot, seconds: (now - taken).seconds, conntrack: conntrack)
            (previous, taken) = (snapshot, now)
            frames += 1
            if json {
                try printJSONLine(frame)
            } else {
                if terminal { print("\u{1B}[H\u{1B}[2J", terminator: "") } else if frames > 1 { print("") }
                print(Self.render(frame, time: Date()), terminator: "")
            }
            fflush(nil)  // every frame out at once, also into a pipe
        }
    }

    static func threadCPUTime() -> Duration {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return .seconds(time.tv_sec) + .nanoseconds(time.tv_nsec)
    }

    /// One frame as text, at most 80 columns (names and addresses are cut to fit).
    static func render(_ frame: TopFrame, time: Date) -> String {
        let clock = Date.ISO8601FormatStyle(timeZone: .current).time(includingFractionalSeconds: false).format(time)
        let fill = frame.conntrack.fill * 100
        let age = frame.conntrack.ageSeconds >= 0.5 ? ", counted \(Int(frame.conntrack.ageSeconds.rounded())) s ago" : ""
        var text = "lbctl top  \(clock)  every \(String(format: "%.1f", frame.intervalSeconds)) s  "
            + "new flows \(rate(frame.newFlowsPerSecond))/s\n"
            + "conntrack  \(frame.conntrack.entries)/\(frame.conntrack.capacity) (\(String(format: "%.1f", fill))%\(age))\n"
        let drops = frame.drops.filter { $0.value > 0 }.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
        text += "drops/s    " + (drops.isEmpty ? "none" : drops.map { "\($0.key) \(rate(frame.dropsPerSecond[$0.key] ?? 0))" }
            .joined(separator: ", ")) + "\n\n"
        text += cell("SERVICE", 16) + cell("VIP / BACKEND", 40) + cell("PKT/S", 11, right: true) + cell("BIT/S", 11, right: true) + "\n"
        for service in frame.services {
            text += cell(service.name, 16) + cell("\(formatVIP(service.vip, service.port))/\(service.protocol)", 40)
                + cell(rate(service.traffic.packetsPerSecond), 11, right: true) + cell(rate(service.traffic.bitsPerSecond), 11, right: true) + "\n"
            for backend in service.backends {
                text += cell("", 16) + cell("  " + backend.address, 40) + cell(rate(backend.traffic.packetsPerSecond), 11, right: true)
                    + cell(rate(backend.traffic.bitsPerSecond), 11, right: true) + "\n"
            }
        }
        return text
    }

    /// 950, 1.2k, 3.4M, 5.6G.
    static func rate(_ value: Double) -> String {
        for (limit, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] where value >= limit {
            return String(format: "%.1f%@", value / limit, suffix)
        }
        return value < 10 && value != value.rounded() ? String(format: "%.1f", value) : String(Int(value.rounded()))
    }

    private static func cell(_ text: String, _ width: Int, right: Bool = false) -> String {
        let cut = text.count > width - 1 ? String(text.prefix(width - 2)) + "~" : text
        let pad = String(repeating: " ", count: max(0, width - 1 - cut.count))
        return right ? pad + cut + " " : cut + pad + " "
    }
}

/// `value` as compact JSON with sorted keys, on one line.
func printJSONLine<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
