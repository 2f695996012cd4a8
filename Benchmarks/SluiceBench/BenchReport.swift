// The benchmark report: one record per figure under a stable name, printed as a
// table and written as JSON, so later issues add rows without changing the format.
import Foundation

/// One measured figure, and how it compares with its reference and target.
struct BenchRecord: Codable, Sendable {
    /// Stable identifier, dotted: `dataplane.established_v4.vips1.backends10`.
    var name: String
    /// The table section: `dataplane`, `live`, `controlplane`, `memory`.
    var group: String
    /// What was measured, for a person.
    var description: String
    var value: Double
    /// `ns/packet`, `ms`, `packets/s`, `bytes`, `MiB`.
    var unit: String
    /// The record this one is a multiple of (`dataplane.floor.encap`), if any.
    var reference: String? = nil
    /// value / the reference's value.
    var ratio: Double? = nil
    /// The goal, readable (`<= 1.5x encap floor`, `< 10 ms`), if there is one.
    var target: String? = nil
    /// Whether the goal was met; nil without a target.
    var met: Bool? = nil
    /// Spread or side figures (`min`, `max`, `offered_pps`), by name.
    var details: [String: Double] = [:]
}

/// A whole run: the machine it ran on and every figure.
struct BenchReport: Codable, Sendable {
    var date: String
    var machine: [String: String]
    /// How the per-packet figures were taken (restore-and-tail-call, repeat count, runs).
    var method: [String: String] = [:]
    var records: [BenchRecord] = []

    init() {
        date = ISO8601DateFormatter().string(from: Date())
        machine = Self.describeMachine()
    }

    func record(named name: String) -> BenchRecord? { records.first { $0.name == name } }

    /// Adds a figure. With a `reference` already recorded, fills in the ratio;
    /// with `limit`, judges the target (`ratio <= limit` when there is a reference, else `value < limit`).
    mutating func add(_ name: String, group: String, _ description: String, value: Double, unit: String,
                      reference: String? = nil, limit: Double? = nil, target: String? = nil,
                      details: [String: Double] = [:]) {
        var record = BenchRecord(name: name, group: group, description: description, value: value, unit: unit,
                                 reference: reference, target: target, details: details)
        if let reference, let base = self.record(named: reference), base.value > 0 {
            record.ratio = value / base.value
        }
        if let limit {
            let measured = record.ratio ?? value
            record.met = reference != nil ? measured <= limit : measured < limit
        }
        records.append(record)
        printRow(record)
    }

    static let columns = [("figure", 58), ("value", 14), ("ratio", 8), ("target", 22), ("met", 4)]

    static func printHeader(_ title: String) {
        print("\n\(title)")
        print(columns.map { pad($0.0, $0.1) }.joined(separator: " "))
    }

    private func printRow(_ r: BenchRecord) {
        let value = r.value >= 100 ? String(format: "%.0f", r.value) : String(format: "%.1f", r.value)
        let cells = [r.description, "\(value) \(r.unit)", r.ratio.map { String(format: "%.2fx", $0) } ?? "",
                     r.target ?? "", r.met.map { $0 ? "yes" : "NO" } ?? ""]
        print(zip(cells, Self.columns).map { Self.pad($0.0, $0.1.1) }.joined(separator: " "))
        fflush(nil) // rows appear as they are measured, also through a pipe
    }

    private static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s.padding(toLength: width, withPad: " ", startingAt: 0)
    }

    /// Writes `DIR/bench-DATE.json` and `DIR/latest.json`; returns the first path.
    func write(to directory: String) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(self)
        let stamp = date.replacingOccurrences(of: ":", with: "")
        let path = "\(directory)/bench-\(stamp).json"
        try data.write(to: URL(fileURLWithPath: path))
        try data.write(to: URL(fileURLWithPath: "\(directory)/latest.json"))
        return path
    }

    private static func describeMachine() -> [String: String] {
        var machine: [String: String] = ["cpus": String(ProcessInfo.processInfo.activeProcessorCount)]
        var name = utsname()
        uname(&name)
        machine["kernel"] = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
           let model = line.split(separator: ":", maxSplits: 1).last {
            machine["cpu"] = model.trimmingCharacters(in: .whitespaces)
        }
        return machine
    }
}

/// The median of `values` (not empty).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
