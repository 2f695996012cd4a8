// The control plane's figures: Maglev table builds, `lbctl apply` of a large set
// from nothing and of a one-backend change (wall time, map bytes written), and the
// kernel's own accounting of the BPF maps' memory.
import CLibbpf
import CSluice
import Foundation
import Glibc
import SluiceAgent
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport

struct ControlPlaneBench {
    var options: BenchOptions

    func run(into report: inout BenchReport) throws {
        BenchReport.printHeader("Control plane (\(isReleaseBuild ? "release" : "DEBUG: figures not representative") build)")
        maglevBuilds(into: &report)
        try applies(into: &report)
        try metricsScrape(into: &report)
        try agentMemory(into: &report)
    }

    // MARK: Maglev

    private func maglevBuilds(into report: inout BenchReport) {
        let cases: [(m: Int, n: Int, limit: Double?)] = [(65537, 10, nil), (65537, 100, nil), (65537, 1000, 10), (655373, 1000, nil)]
        for (m, n, limit) in cases {
            let backends = (0..<n).map { i in
                MaglevBackend(key: MaglevKey.forBackend(IPAddress("10.\(i / 65536).\(i / 256 % 256).\(i % 256)")!), weight: 1)
            }
            var times: [Double] = []
            for _ in 0..<max(options.runs, 3) {
                let start = ContinuousClock.now
                let table = Maglev.table(for: backends, size: m)
                times.append(milliseconds(since: start))
                precondition(table.count == m)
            }
            report.add("controlplane.maglev_build.m\(m).n\(n)", group: "controlplane",
                       "Maglev table build, M = \(m), N = \(n)", value: median(times), unit: "ms",
                       limit: limit, target: limit.map { "< \(Int($0)) ms" },
                       details: ["min": times.min()!, "max": times.max()!])
        }
    }

    // MARK: lbctl apply

    /// 256 services x 10 backends, applied by the real lbctl into a private bpffs:
    /// once from nothing (load, pin, 256 tables), then one-backend changes back and forth.
    private func applies(into report: inout BenchReport) throws {
        let services = options.quick ? 32 : 256
        let lbctl = try Self.lbctlPath()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-bench-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let base = scratch.appendingPathComponent("base.yaml").path
        let changed = scratch.appendingPathComponent("changed.yaml").path
        try serviceFile(services: services, changedBackend: false).write(toFile: base, atomically: true, encoding: .utf8)
        try serviceFile(services: services, changedBackend: true).write(toFile: changed, atomically: true, encoding: .utf8)

        var fromNothing: [(ms: Double, outcome: ApplyOutcome)] = []
        var oneChange: [(ms: Double, outcome: ApplyOutcome)] = []
        for _ in 0..<max(options.runs, 1) {
            let mount = try BPFFSMount()
            defer { mount.close() }
            let pinPath = mount.path + "/lb"
            fromNothing.append(try timedApply(lbctl, file: base, pinPath: pinPath))
            for step in 0..<3 {
                oneChange.append(try timedApply(lbctl, file: step % 2 == 0 ? changed : base, pinPath: pinPath))
            }
        }

        let first = fromNothing[0].outcome
        report.add("controlplane.apply.\(services)x10.from_nothing", group: "controlplane",
                   "lbctl apply, \(services) services x 10 backends, from nothing", value: median(fromNothing.map(\.ms)),
                   unit: "ms", details: ["tables_written": Double(first.tables), "bytes_written": Double(first.bytes),
                                         "min": fromNothing.map(\.ms).min()!, "max": fromNothing.map(\.ms).max()!])
        let tables = Set(oneChange.map(\.outcome.tables)), bytes = oneChange.map(\.outcome.bytes).max()!
        let onlyOneTable = tables == [1]
        report.add("controlplane.apply.\(services)x10.one_backend_change", group: "controlplane",
                   "lbctl apply, one backend changed in that set\(onlyOneTable ? "" : " (MORE THAN ONE TABLE WRITTEN)")",
                   value: median(oneChange.map(\.ms)), unit: "ms", limit: onlyOneTable ? 200 : 0,
                   target: "< 200 ms, 1 table",
                   details: ["tables_written": Double(tables.max()!), "bytes_written": Double(bytes),
                             "min": oneChange.map(\.ms).min()!, "max": oneChange.map(\.ms).max()!])
        report.add("controlplane.apply.\(services)x10.one_backend_change.bytes", group: "controlplane",
                   "  map bytes written by that change", value: Double(bytes), unit: "bytes")

        try mapMemory(services: 1000, lbctl: lbctl, scratch: scratch, into: &report)
    }

    /// What the kernel charges for the maps with 1,000 services x 10 backends applied
    /// at the default sizes (deterministic: one apply).
    private func mapMemory(services: Int, lbctl: String, scratch: URL, into report: inout BenchReport) throws {
        let file = scratch.appendingPathComponent("memory.yaml").path
        try serviceFile(services: services, changedBackend: false).write(toFile: file, atomically: true, encoding: .utf8)
        let mount = try BPFFSMount()
        defer { mount.close() }
        let pinPath = mount.path + "/lb"
        _ = try timedApply(lbctl, file: file, pinPath: pinPath)
        let memory = try mapMemory(pinPath: pinPath)
        BenchReport.printHeader("Memory of the BPF maps (kernel accounting, default sizes, \(services) services applied)")
        for (name, bytes) in memory.sorted(by: { $0.value > $1.value }) {
            report.add("memory.\(name)", group: "memory", name, value: bytes / 1_048_576, unit: "MiB")
        }
        report.add("memory.total", group: "memory", "total", value: memory.values.reduce(0, +) / 1_048_576, unit: "MiB")
    }

    // MARK: /metrics

    /// The agent's /metrics over 1,000 services x 10 backends in a private bpffs: the whole
    /// scrape (applied state and per-CPU counters read from the maps, then rendered) and the
    /// rendering alone. Maglev tables of M = 1021 keep the set's kernel memory small; M does
    /// not enter the scrape. The connection table is counted separately (cached by the agent).
    private func metricsScrape(into report: inout BenchReport) throws {
        let services = 1000
        let mount = try BPFFSMount()
        defer { mount.close() }
        let pinPath = mount.path + "/lb"
        defer { Dataplane.removePins(at: pinPath) }
        let dataplane = try Dataplane.openOrLoad(pinPath: pinPath)
        let yaml = serviceFile(services: services, changedBackend: false)
            .replacingOccurrences(of: "node:\n", with: "node:\n  maglev_table_size: 1021\n")
        _ = try dataplane.apply(try ServiceFileParser.parse(yaml, file: "bench"))

        var scrapes: [Double] = [], renders: [Double] = [], bytes = 0
        for _ in 0..<max(options.runs, 3) {
            let start = ContinuousClock.now
            let input = try MetricsInput.read(from: dataplane, conntrackEntries: 0, lastApply: 0)
            let text = MetricsRenderer.render(input)
            scrapes.append(milliseconds(since: start))
            let renderStart = ContinuousClock.now
            bytes = MetricsRenderer.render(input).count
            renders.append(milliseconds(since: renderStart))
            precondition(text.count == bytes)
        }
        let series = services * 10
        report.add("controlplane.metrics.\(services)x10.scrape", group: "controlplane",
                   "/metrics scrape, \(services) services x 10 backends (read maps + render)", value: median(scrapes),
                   unit: "ms", limit: 100, target: "< 100 ms",
                   details: ["min": scrapes.min()!, "max": scrapes.max()!, "backend_series": Double(series)])
        report.add("controlplane.metrics.\(services)x10.render", group: "controlplane",
                   "  of which rendering the text", value: median(renders), unit: "ms",
                   details: ["min": renders.min()!, "max": renders.max()!])
        report.add("controlplane.metrics.\(services)x10.bytes", group: "controlplane",
                   "  size of the exposition text", value: Double(bytes), unit: "bytes")

        let countStart = ContinuousClock.now
        _ = try dataplane[.conntrack].countEntries()
        report.add("controlplane.metrics.conntrack_count.empty", group: "controlplane",
                   "  counting an empty connection table (\(dataplane[.conntrack].info.maxEntries) slots)",
                   value: milliseconds(since: countStart), unit: "ms")

        // The agent counts the table at most every 5 s; this is what such a scrape adds when it is full.
        let flows = try fillConntrack(dataplane[.conntrack])
        var counts: [Double] = [], counted = 0
        for _ in 0..<max(min(options.runs, 3), 1) {
            let start = ContinuousClock.now
            counted = try dataplane[.conntrack].countEntries()
            counts.append(milliseconds(since: start))
        }
        report.add("controlplane.metrics.conntrack_count.full", group: "controlplane",
                   "  counting a full connection table (\(counted) flows)", value: median(counts), unit: "ms",
                   details: ["flows": Double(counted), "inserted": Double(flows)])
    }

    // MARK: The agent's memory

    /// Resident memory (VmRSS) of a real `lbctl agent` process, the release build beside this
    /// binary, over a private bpffs: idle (nothing applied, one /metrics scrape served), then
    /// after a PUT /v1/services of 1,000 services x 10 backends and one /metrics scrape of
    /// them. Maglev tables of M = 1021, as for the scrape above (the tables live in the
    /// kernel; the agent fills them through a mapping it drops afterwards).
    private func agentMemory(into report: inout BenchReport) throws {
        let services = 1000
        let bench = try BenchAgent(lbctl: try Self.lbctlPath())
        defer { bench.close() }
        let agent: AgentProcess = bench.process, token = bench.token

        func scrape() throws -> Int {
            let reply = try Blocking.run { try await agent.curl("GET", "/metrics", timeoutSeconds: 120) }
            guard reply.status == 200 else { throw CommandError("GET /metrics: \(reply)") }
            return reply.body.count
        }
        _ = try scrape()
        let idle = try residentBytes(pid: agent.pid)
        report.add("controlplane.agent.idle.rss", group: "controlplane",
                   "lbctl agent RSS, idle (nothing applied, one /metrics scrape)", value: idle / 1_048_576, unit: "MiB")

        let yaml = serviceFile(services: services, changedBackend: false)
            .replacingOccurrences(of: "node:\n", with: "node:\n  maglev_table_size: 1021\n")
        let putStart = ContinuousClock.now
        let put = try Blocking.run { try await agent.curl("PUT", "/v1/services", body: yaml, token: token, timeoutSeconds: 600) }
        let putMs = milliseconds(since: putStart)
        guard put.status == 200 else { throw CommandError("PUT /v1/services of \(services)x10: \(put)") }
        let afterPut = try residentBytes(pid: agent.pid)
        let bytes = try scrape()
        let loaded = try residentBytes(pid: agent.pid)
        report.add("controlplane.agent.\(services)x10.rss", group: "controlplane",
                   "lbctl agent RSS, \(services) services x 10 backends (PUT + one scrape)",
                   value: loaded / 1_048_576, unit: "MiB", reference: "controlplane.agent.idle.rss",
                   details: ["after_put_mib": afterPut / 1_048_576, "metrics_bytes": Double(bytes), "put_ms": putMs,
                             "idle_mib": idle / 1_048_576])
    }

    /// VmRSS of process `pid` (/proc/PID/status), in bytes.
    private func residentBytes(pid: Int32) throws -> Double {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Double(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") else {
            throw CommandError("no VmRSS in /proc/\(pid)/status")
        }
        return kib * 1024
    }

}

/// Writes a flow into every slot of the connection table with batched updates; returns how many.
func fillConntrack(_ map: BPFMap) throws -> Int {
    let total = map.info.maxEntries, chunk = 65536
    let values = [sl_ct_entry](repeating: zeroed(sl_ct_entry.self), count: chunk)
    var keys: [sl_flow_key] = []
    keys.reserveCapacity(chunk)
    for first in stride(from: 0, to: total, by: chunk) {
        keys.removeAll(keepingCapacity: true)
        for index in first..<min(first + chunk, total) {
            var key = zeroed(sl_flow_key.self)
            key.src.0 = UInt32(index).bigEndian
            key.sport = UInt16(40000).bigEndian
            key.dport = UInt16(443).bigEndian
            key.proto = 6
            key.family = 4
            keys.append(key)
        }
        var count = UInt32(keys.count)
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        let rc = keys.withUnsafeBytes { k in
            values.withUnsafeBytes { v in bpf_map_update_batch(map.fd, k.baseAddress, v.baseAddress, &count, &opts) }
        }
        guard rc == 0 else { throw CommandError("bpf_map_update_batch on the connection table: \(rc)") }
    }
    return total
}

extension ControlPlaneBench {
    struct ApplyOutcome { var tables: Int; var bytes: Int }

    private func timedApply(_ lbctl: String, file: String, pinPath: String) throws -> (ms: Double, outcome: ApplyOutcome) {
        let start = ContinuousClock.now
        let result = try Blocking.run { try await Command.run(lbctl, ["apply", "-f", file, "--pin-path", pinPath]) }
        let ms = milliseconds(since: start)
        guard result.status == 0 else { throw CommandError("lbctl apply failed:\n\(result)") }
        // "applied: N Maglev table(s) switched, B bytes written"
        guard let line = result.stdout.split(separator: "\n").last(where: { $0.hasPrefix("applied:") }) else {
            throw CommandError("lbctl apply printed no 'applied:' line:\n\(result)")
        }
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count == 2 else { throw CommandError("unexpected line from lbctl apply: \(line)") }
        return (ms, ApplyOutcome(tables: numbers[0], bytes: numbers[1]))
    }

    /// `services` services of 10 backends each; `changedBackend` swaps the last
    /// backend of service 0 for another address.
    private func serviceFile(services: Int, changedBackend: Bool) -> String {
        var yaml = "node:\n  source_v4: 192.0.2.10\nservices:\n"
        for s in 0..<services {
            yaml += "  - name: svc\(s)\n    vip: 198.18.\(s / 256).\(s % 256)\n    port: 443\n    protocol: tcp\n    backends:\n"
            for b in 0..<10 {
                let host = (s == 0 && b == 9 && changedBackend) ? 200 : b + 1
                yaml += "      - { address: 10.\(s / 256).\(s % 256).\(host), weight: 1 }\n"
            }
        }
        return yaml
    }

    /// The release lbctl beside this binary (`swift build -c release` builds both).
    static func lbctlPath() throws -> String {
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let path = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("lbctl").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw CommandError("no lbctl beside \(me): build every product (swift build -c release)")
        }
        return path
    }

    // MARK: Memory

    /// Bytes the kernel charges for each pinned map (`memlock` in fdinfo, what
    /// `bpftool map show` prints), with every service's inner Maglev table summed
    /// under `maglev_tables`.
    private func mapMemory(pinPath: String) throws -> [String: Double] {
        let dataplane = try Dataplane.open(pinPath: pinPath)
        var bytes: [String: Double] = [:]
        for name in Dataplane.Map.allCases {
            let map = dataplane[name]
            bytes[name.rawValue] = Double(try memlock(fd: map.fd))
        }
        var tables = 0.0
        for (_, innerID) in try dataplane[.maglev].entries(key: UInt32.self, value: UInt32.self) {
            let fd = bpf_map_get_fd_by_id(innerID)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            tables += Double(try memlock(fd: fd))
        }
        bytes["maglev_tables"] = tables
        return bytes
    }

    private func memlock(fd: Int32) throws -> Int {
        let text = try String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("memlock:") }),
              let value = Int(line.dropFirst("memlock:".count).trimmingCharacters(in: .whitespaces)) else {
            throw CommandError("no memlock in /proc/self/fdinfo/\(fd)")
        }
        return value
    }
}

func milliseconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}

#if DEBUG
let isReleaseBuild = false
#else
let isReleaseBuild = true
#endif
