// What a fleet's sizing is computed from (README "Scaling out"): a one-backend change in
// services of 1,000 backends as the agent applies it (parse, read back, Maglev build,
// table switch), the memory of such a set, BIRD taking an include file of 1,000 VIPs,
// and the sync wire's bytes and sealing time per record.
import Crypto
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore
import SluiceTestSupport

struct FleetBench {
    var options: BenchOptions

    func run(into report: inout BenchReport) throws {
        BenchReport.printHeader("Fleet sizing: large services, BIRD, the sync wire")
        try bigServices(into: &report)
        try bird(into: &report)
        syncWire(into: &report)
    }

    /// 64 services x 1,000 backends (64,000 of the 65,536 backend slots), M = 65537: the
    /// agent's path for a PUT that changes one backend, timed in its parts.
    private func bigServices(into report: inout BenchReport) throws {
        let services = options.quick ? 8 : 64, backends = 1000
        let mount = try BPFFSMount()
        defer { mount.close() }
        let pinPath = mount.path + "/lb"
        defer { Dataplane.removePins(at: pinPath) }
        let dataplane = try Dataplane.openOrLoad(pinPath: pinPath)
        let base = Self.serviceFile(services: services, backends: backends, changed: false)
        let changed = Self.serviceFile(services: services, backends: backends, changed: true)
        _ = try dataplane.apply(try ServiceFileParser.parse(base, file: "bench"))

        var parse: [Double] = [], read: [Double] = [], apply: [Double] = [], tables = Set<Int>()
        for run in 0..<max(options.runs, 3) {
            let text = run % 2 == 0 ? changed : base
            var start = ContinuousClock.now
            let desired = try ServiceFileParser.parse(text, file: "bench")
            parse.append(milliseconds(since: start))
            start = .now
            _ = try dataplane.appliedState()
            read.append(milliseconds(since: start))
            start = .now
            let result = try dataplane.apply(desired)
            apply.append(milliseconds(since: start))
            tables.insert(result.tablesWritten)
        }
        let name = "fleet.apply.\(services)x\(backends)"
        report.add("\(name).parse", group: "fleet", "parse a service file of \(services) x \(backends) backends",
                   value: median(parse), unit: "ms", details: ["min": parse.min()!, "max": parse.max()!, "bytes": Double(base.utf8.count)])
        report.add("\(name).read_state", group: "fleet", "  read the applied set back from the maps", value: median(read), unit: "ms",
                   details: ["min": read.min()!, "max": read.max()!])
        report.add("\(name).one_backend_change", group: "fleet",
                   "  apply one changed backend (read, diff, Maglev build, switch)\(tables == [1] ? "" : " (NOT ONE TABLE)")",
                   value: median(apply), unit: "ms", details: ["min": apply.min()!, "max": apply.max()!, "tables_written": Double(tables.max()!)])
    }

    static func serviceFile(services: Int, backends: Int, changed: Bool) -> String {
        var yaml = "node:\n  source_v4: 192.0.2.10\nservices:\n"
        for s in 0..<services {
            yaml += "  - name: svc\(s)\n    vip: 198.18.\(s / 256).\(s % 256)\n    port: 443\n    protocol: tcp\n    backends:\n"
            for b in 0..<backends {
                let host = (s == 0 && b == backends - 1 && changed) ? 60_000 : b + 1
                yaml += "      - { address: 10.\(s % 256).\(host / 256).\(host % 256), weight: 1 }\n"
            }
        }
        return yaml
    }

    /// A real BIRD (Debian's bird2) in a namespace of its own taking the agent's include
    /// file with 1,000 VIPs (500 IPv4, 500 IPv6, each with a MED and a community): write,
    /// rename, `configure`, answered.
    private func bird(into report: inout BenchReport) throws {
        guard BIRDProcess.isInstalled else {
            print("  (no /usr/sbin/bird: apt-get install bird2; the BIRD rows are left out)")
            return
        }
        let count = 1000
        let runs = max(options.runs, 3)
        let (times, bytes) = try Blocking.run { () async throws -> ([Double], Int) in
            let namespace = try await TestNamespace(prefix: "slbench")
            do {
                var config = BGPConfig()
                config.attributes.med = 10
                config.attributes.communities = [BGPConfig.Community("65100:100")!]
                let bird = try await BIRDProcess(namespace: namespace, config: { directory in
                    "router id 10.99.0.1;\nprotocol device {}\ninclude \"\(directory)/vips.conf\";\n"
                }, prepare: { directory in
                    config.includeFile = directory + "/vips.conf"
                    config.birdSocket = directory + "/bird.ctl"
                    try BIRDInclude.render([]) { _ in BGPConfig.Attributes() }.write(toFile: config.includeFile, atomically: true, encoding: .utf8)
                })
                let control = BIRDControl(socketPath: config.birdSocket)
                let vips = (0..<count / 2).map { IPAddress("198.18.\($0 / 256).\($0 % 256)")! }
                    + (0..<count / 2).map { IPAddress("2001:db8:\($0 / 256)::\($0 % 256 + 1)")! }
                var times: [Double] = [], bytes = 0
                for run in 0..<runs {
                    // Every other run withdraws the last VIP: a change, as an announcement is.
                    let text = BIRDInclude.render(run % 2 == 0 ? vips : Array(vips.dropLast())) { config.attributes(for: $0) }
                    bytes = max(bytes, text.utf8.count)
                    let start = ContinuousClock.now
                    try FleetAnnouncer.install(text, config: config, bird: control)
                    times.append(milliseconds(since: start))
                }
                let routes = try control.run("show route count").joined(separator: " ")
                precondition(routes.contains("\(count - (runs % 2 == 0 ? 1 : 0)) of"), "BIRD holds: \(routes)")
                _ = bird
                await namespace.remove()
                return (times, bytes)
            } catch {
                await namespace.remove()
                throw error
            }
        }
        report.add("fleet.bird.configure.\(count)_vips", group: "fleet",
                   "BIRD takes an include file of \(count) VIPs (write, configure)", value: median(times), unit: "ms",
                   details: ["min": times.min()!, "max": times.max()!, "include_bytes": Double(bytes)])
    }

    /// Bytes on the wire per synced flow (a full frame of 900 records, header, nonce and tag
    /// shared) and the time to encode and seal (encrypt and authenticate) such a frame.
    private func syncWire(into report: inout BenchReport) {
        let keys = SyncKeyRing([SyncKey(secret: Data((0..<32).map { _ in UInt8.random(in: 0...255) }))])
        for (label, record) in [
            ("dsr", FlowRecord(source: IPAddress("203.0.113.7")!, destination: IPAddress("198.51.100.10")!, sourcePort: 40000,
                               destinationPort: 443, proto: 6, backend: IPAddress("10.0.0.1")!)),
            ("fullnat", FlowRecord(source: IPAddress("203.0.113.7")!, destination: IPAddress("198.51.100.10")!, sourcePort: 40000,
                                   destinationPort: 443, proto: 6, backend: IPAddress("10.0.0.1")!, nat: 2, snatIndex: 1, snatPort: 30000)),
        ] {
            let frame = SyncFrame(kind: .records, sender: 1, sequence: 1, timestampMilliseconds: 1,
                                  records: Array(repeating: record, count: SyncFrame.maxRecords))
            var times: [Double] = [], bytes = 0
            for _ in 0..<max(options.runs, 5) {
                let start = ContinuousClock.now
                bytes = frame.encoded(keys: keys).count
                times.append(milliseconds(since: start) * 1000)
            }
            report.add("fleet.sync.\(label).bytes_per_record", group: "fleet",
                       "sync: bytes on the wire per \(label) flow (a frame of \(SyncFrame.maxRecords))",
                       value: Double(bytes) / Double(SyncFrame.maxRecords), unit: "bytes", details: ["frame_bytes": Double(bytes)])
            report.add("fleet.sync.\(label).seal_frame", group: "fleet", "  encode and seal (ChaCha20-Poly1305) that frame",
                       value: median(times), unit: "µs", details: ["min": times.min()!, "max": times.max()!])
        }
    }
}
