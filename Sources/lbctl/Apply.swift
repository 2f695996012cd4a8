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
        let dataplane = try Dataplane.openOrLoad(pinPath: global.pinPath)
        let result = try Applier.apply(desired, to: dataplane, dryRun: dryRun)
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
