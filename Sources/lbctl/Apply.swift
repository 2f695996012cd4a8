// lbctl apply -f FILE: validate a service file, show the change, and write it into the data plane.
import ArgumentParser
import SluiceControl
import SluiceCore

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply a service file: print what changes, then switch it in (all or nothing).")

    @Option(name: .shortAndLong, help: ArgumentHelp("The service file (YAML).", valueName: "FILE")) var file: String
    @Flag(help: "Print what would change, write nothing.") var dryRun = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let desired = try ServiceFileParser.load(path: file)
        let result: ApplyResult
        if dryRun && !Dataplane.isPinned(at: global.pinPath) {
            // A dry run against nothing pinned shows the whole file as new and loads nothing.
            result = ApplyResult(diff: .between(current: ServiceFile(services: []), desired: desired), tablesWritten: 0, bytesWritten: 0)
        } else {
            result = try Applier.apply(desired, to: try Dataplane.openOrLoad(pinPath: global.pinPath), dryRun: dryRun)
        }
        if result.diff.isEmpty {
            print("no changes")
            return
        }
        for line in result.diff.lines { print(line) }
        if dryRun {
            print("dry run: nothing applied")
        } else {
            print("applied: \(result.tablesWritten) Maglev table(s) switched, \(result.bytesWritten) bytes written")
        }
    }
}
