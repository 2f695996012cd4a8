// `make bench` must keep working: sluice-bench in its --quick mode runs every
// section against the real programs and writes a report with the documented
// record names. Figures are never judged here (a noisy machine must not fail
// `make test`); only that each was measured and is a positive number.
import Foundation
import SluiceTestSupport
import Testing

@Suite("sluice-bench, smoke run")
struct BenchSmokeTests {
    /// The sluice-bench built beside lbctl (same build configuration).
    static var path: String {
        URL(fileURLWithPath: Lbctl.path).deletingLastPathComponent().appendingPathComponent("sluice-bench").path
    }

    @Test("--quick measures every section and writes the JSON report with its stable names")
    func quickRunWritesTheReport() async throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-bench-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: out) }
        let objects = Lbctl.packageRoot.appendingPathComponent("bpf/build").path
        // It keeps both cores busy (its live section pins a generator and the balancer's NAPI
        // thread to them) for most of a minute, and the lab tests measure time: it runs while
        // no lab is up, holding every lab permit.
        let run = try await LabSlots.shared.withPermits(LabSlots.shared.permits) {
            try await Command.run(Self.path, ["--quick", "--runs", "1", "--objects", objects, "--out", out.path])
        }
        try #require(run.status == 0, "\(run)")

        let data = try Data(contentsOf: out.appendingPathComponent("latest.json"))
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let records = try #require(report["records"] as? [[String: Any]])
        var values: [String: Double] = [:]
        for record in records {
            if let name = record["name"] as? String, let value = record["value"] as? Double { values[name] = value }
        }
        for name in ["dataplane.floor.pass", "dataplane.floor.swap_tx", "dataplane.floor.encap",
                     "dataplane.established_v4.vips1.backends10", "dataplane.syn_v4.ct_empty.vips1.backends10",
                     "dataplane.udp_v4.vips1.backends10", "dataplane.established_6in6.vips1.backends10",
                     "dataplane.established_4in6.vips1.backends10", "dataplane.no_vip.vips1.backends10",
                     "dataplane.first_ack_v4.sync.ct_empty.vips1.backends10", "dataplane.first_ack_v4.ct_empty.vips1.backends10",
                     "live.floor.swap_tx", "live.established_v4", "live.syn_v4",
                     "controlplane.maglev_build.m65537.n1000", "controlplane.apply.32x10.one_backend_change",
                     "controlplane.metrics.1000x10.scrape", "controlplane.metrics.1000x10.bytes",
                     "controlplane.agent.idle.rss", "controlplane.agent.1000x10.rss",
                     "fleet.apply.8x1000.one_backend_change", "fleet.bird.configure.1000_vips",
                     "fleet.sync.dsr.bytes_per_record", "fleet.sync.fullnat.seal_frame",
                     "memory.sl_conntrack", "memory.maglev_tables", "memory.sl_nat", "memory.total"] {
            let value = values[name]
            #expect(value != nil && value! > 0, "no positive figure named \(name) in the report: \(values.keys.sorted())")
        }
        #expect((report["method"] as? [String: String])?.isEmpty == false, "the report says nothing of its method")
    }
}
