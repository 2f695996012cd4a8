// How long a real `lbctl agent` takes to answer GET /metrics and GET /v1/status while it is
// busy with what blocks in the kernel: PUTs of 256 services x 10 backends that rebuild every
// Maglev table, one after another, and sweeps of a connection table of 1,048,576 flows
// (every second: the bench sets a UDP idle timeout of 3 s). Idle first, as the reference.
// With --baseline-lbctl, another build of lbctl (e.g. main's) is measured beside it.
import Foundation
import Glibc
import SluiceControl
import SluiceTestSupport

struct AgentLatencyBench {
    var options: BenchOptions
    /// The lbctl to measure, and the prefix of its records.
    var lbctl: String
    var prefix: String

    /// A smoke run (--quick) only checks that every record is produced: a small set and an
    /// empty table, so a debug build finishes in seconds.
    var services: Int { options.quick ? 16 : 256 }

    func run(into report: inout BenchReport) throws {
        // A full connection table of TCP flows, none due to expire: every sweep reads it whole
        // (a UDP idle timeout of 3 s makes the agent sweep every second).
        var flows = 0
        let bench = try BenchAgent(lbctl: lbctl, extraConfig: "conntrack:\n  udp_idle_timeout: 3s\n") { [quick = options.quick] pinPath in
            let dataplane = try Dataplane.openOrLoad(pinPath: pinPath)
            if !quick { flows = try fillConntrack(dataplane[.conntrack]) }
        }
        defer { bench.close() }
        let agent: AgentProcess = bench.process, token = bench.token
        guard let port = URL(string: agent.baseURL)?.port else { throw CommandError("agent URL \(agent.baseURL)") }
        let files = [false, true].map { serviceFile(weightsChanged: $0) }
        let first = try Blocking.run { try await agent.curl("PUT", "/v1/services", body: files[0], token: token, timeoutSeconds: 600) }
        guard first.status == 200 else { throw CommandError("PUT /v1/services: \(first)") }

        let seconds = options.quick ? 2.0 : 10.0
        let idle = try Self.sample(port: port, seconds: seconds)

        // The load: PUTs alternating between two sets that differ in every service's weights.
        let stop = StopFlag(), puts = PutCounter()
        let loader = Thread {
            var index = 1
            while !stop.isSet {
                let body = files[index % 2]
                let reply = try? Blocking.run { try await agent.curl("PUT", "/v1/services", body: body, token: token, timeoutSeconds: 600) }
                if reply?.status == 200 { puts.add() }
                index += 1
            }
        }
        loader.start()
        let loaded = try Self.sample(port: port, seconds: seconds)
        stop.set()
        while !loader.isFinished { usleep(10_000) }  // the PUT in flight ends

        let name = "controlplane.agent.\(prefix)"
        for (path, what) in [("metrics", "GET /metrics"), ("status", "GET /v1/status")] {
            let quiet = idle[path]!, busy = loaded[path]!
            report.add("\(name).idle.\(path).p50", group: "controlplane",
                       "\(prefix): \(what), idle, p50 (\(services) services x 10)", value: percentile(quiet, 0.5), unit: "ms",
                       details: ["p99": percentile(quiet, 0.99), "samples": Double(quiet.count)])
            report.add("\(name).busy.\(path).p50", group: "controlplane",
                       "\(prefix): \(what) during applies and 1M-flow sweeps, p50", value: percentile(busy, 0.5), unit: "ms",
                       reference: "\(name).idle.\(path).p50", details: ["samples": Double(busy.count)])
            report.add("\(name).busy.\(path).p99", group: "controlplane",
                       "\(prefix): \(what) during applies and 1M-flow sweeps, p99", value: percentile(busy, 0.99), unit: "ms",
                       reference: "\(name).idle.\(path).p50",
                       details: ["max": busy.max() ?? 0, "puts_completed": Double(puts.value), "flows": Double(flows)])
        }
    }

    /// GET /metrics and GET /v1/status in turn for `seconds`, each timed from connect to the
    /// last byte (ms).
    static func sample(port: Int, seconds: Double) throws -> [String: [Double]] {
        var times: [String: [Double]] = ["metrics": [], "status": []]
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < end {
            for (key, path) in [("metrics", "/metrics"), ("status", "/v1/status")] {
                let start = ContinuousClock.now
                let status = try HTTPGet.status(port: port, path: path)
                guard status == 200 else { throw CommandError("GET \(path): HTTP \(status)") }
                times[key]!.append(milliseconds(since: start))
            }
        }
        return times
    }

    /// 256 services of 10 backends; `weightsChanged` gives every service's last backend
    /// weight 2, so switching between the two sets rebuilds every table.
    private func serviceFile(weightsChanged: Bool) -> String {
        var yaml = "node:\n  source_v4: 192.0.2.10\nservices:\n"
        for s in 0..<services {
            yaml += "  - name: svc\(s)\n    vip: 198.18.\(s / 256).\(s % 256)\n    port: 443\n    protocol: tcp\n    backends:\n"
            for b in 0..<10 {
                yaml += "      - { address: 10.\(s / 256).\(s % 256).\(b + 1), weight: \(weightsChanged && b == 9 ? 2 : 1) }\n"
            }
        }
        return yaml
    }
}

/// The `fraction` percentile of `values` (nearest rank).
func percentile(_ values: [Double], _ fraction: Double) -> Double {
    guard !values.isEmpty else { return 0 }
    let rank = Int((Double(values.count) * fraction).rounded(.up)) - 1
    return values.sorted()[max(0, min(values.count - 1, rank))]
}

/// A one-shot HTTP GET (Connection: close) over loopback with a plain socket: no process per request, so
/// the time is the agent's.
enum HTTPGet {
    static func status(port: Int, path: String) throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw CommandError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw CommandError("connect to 127.0.0.1:\(port): \(String(cString: strerror(errno)))") }
        // A bench must never hang on a silent agent.
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else {
            throw CommandError("send: \(String(cString: strerror(errno)))")
        }
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw CommandError("GET \(path): recv: \(String(cString: strerror(errno)))") }
            guard n > 0 else { break }
            if head.count < 16 { head += buffer[0..<min(n, 16)] }
        }
        // "HTTP/1.1 200 OK"
        let line = String(decoding: head, as: UTF8.self).split(separator: " ")
        guard line.count >= 2, let status = Int(line[1]) else { throw CommandError("GET \(path): no status line") }
        return status
    }
}

/// A flag one thread sets and another reads.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

/// A count one thread bumps and another reads.
final class PutCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add() { lock.withLock { count += 1 } }
}
