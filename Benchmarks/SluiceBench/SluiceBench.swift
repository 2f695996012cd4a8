// sluice-bench: the performance table of the data plane and the control plane
// (`make bench`). Prints figures beside their references; never fails on time.
import ArgumentParser
import Foundation

@main
struct SluiceBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice-bench",
        abstract: "Measure Sluice on this machine: per-packet cost against floors, forwarding rate, control-plane times, memory.")

    enum Section: String, CaseIterable, ExpressibleByArgument {
        case dataplane, live, controlplane
    }

    @Option(help: "Sections to run, comma-separated (dataplane, live, controlplane).", transform: { text in
        try text.split(separator: ",").map { part in
            guard let section = Section(rawValue: String(part)) else {
                throw ValidationError("--only: unknown section \"\(part)\" (dataplane, live, controlplane)")
            }
            return section
        }
    })
    var only: [Section] = Section.allCases

    @Option(help: "Runs per figure; the median is reported.") var runs: Int = 5
    @Flag(help: "Fewer repetitions and smaller sets: a smoke run, not figures to quote.") var quick = false
    @Option(help: "Directory of the compiled BPF objects (bench.bpf.o).") var objects: String = "bpf/build"
    @Option(help: "Where the JSON report goes.") var out: String = "bench/results"
    @Option(help: ArgumentHelp("Another lbctl (e.g. built from main) whose agent's latency under load is measured beside this build's (controlplane.agent.baseline.*).", valueName: "PATH"))
    var baselineLbctl: String?

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs: must be at least 1, got \(runs)") }
    }

    func run() throws {
        var report = BenchReport()
        let options = BenchOptions(runs: runs, quick: quick, objectDirectory: objects)
        for section in Section.allCases where only.contains(section) {
            switch section {
            case .dataplane: try DataplaneBench(options: options).run(into: &report)
            case .live: try LiveBench(options: options).run(into: &report)
            case .controlplane:
                try ControlPlaneBench(options: options).run(into: &report)
                try FleetBench(options: options).run(into: &report)
                try AgentLatencyBench(options: options, lbctl: try ControlPlaneBench.lbctlPath(), prefix: "latency").run(into: &report)
                if let baselineLbctl {
                    try AgentLatencyBench(options: options, lbctl: baselineLbctl, prefix: "baseline").run(into: &report)
                }
            }
        }
        let path = try report.write(to: out)
        let missed = report.records.filter { $0.met == false }.map(\.name)
        print("\nwrote \(path)")
        print(missed.isEmpty ? "every target met" : "targets missed: \(missed.joined(separator: ", "))")
    }
}

/// What every section is told.
struct BenchOptions: Sendable {
    var runs: Int
    var quick: Bool
    var objectDirectory: String
}
