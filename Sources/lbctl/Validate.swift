// lbctl validate -f FILE: check a service file without touching the data plane.
import ArgumentParser
import SluiceCore

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check a service file; touches nothing.")

    @Option(name: .shortAndLong, help: ArgumentHelp("The service file (YAML).", valueName: "FILE")) var file: String

    func run() throws {
        let parsed = try ServiceFileParser.load(path: file)
        let backends = parsed.services.reduce(0) { $0 + $1.backends.count }
        print("\(file): ok (\(parsed.services.count) services, \(backends) backends)")
    }
}
