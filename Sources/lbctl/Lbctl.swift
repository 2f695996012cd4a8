// The lbctl command tree and the one place where errors become exit codes.
import ArgumentParser
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore

@main
struct Lbctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lbctl",
        abstract: "Sluice: an XDP Layer-4 load balancer (Maglev, connection tracking, IP-in-IP direct server return).",
        version: AgentBuild.version,
        subcommands: [Attach.self, Detach.self, Apply.self, Validate.self, Status.self, Stats.self, Top.self, Flows.self, Explain.self, Doctor.self,
                      DecapCommand.self, Agent.self, Drain.self, Undrain.self, Withdraw.self])

    /// Exit codes are a contract: 0 success, 1 runtime failure, 2 bad input.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as ControlError {
            FileHandle.standardError.write(Data("lbctl: error: \(error.message)\n".utf8))
            Foundation.exit(error.kind == .badInput ? 2 : 1)
        } catch let error as RemoteError {
            FileHandle.standardError.write(Data("lbctl: error: \(error.message)\n".utf8))
            Foundation.exit(error.isBadInput ? 2 : 1)
        } catch let error as ConfigError {
            FileHandle.standardError.write(Data("lbctl: error: \(error)\n".utf8))
            Foundation.exit(2)
        } catch let code as ExitCode {
            Foundation.exit(code.rawValue)  // a verdict (lbctl doctor's findings), already reported
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            // Usage and validation errors are bad input.
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(2)
        }
    }
}

/// Options every subcommand takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Directory in bpffs holding the pinned maps and program.", valueName: "DIR"))
    var pinPath: String = Dataplane.defaultPinPath
}

/// Prints `value` as stable, sorted, pretty JSON.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Left-aligned text columns for the human tables.
func printTable(_ header: [String], _ rows: [[String]]) {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    for row in all {
        let cells = row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
        print(String(cells.joined(separator: "  ").reversed().drop { $0 == " " }.reversed()))
    }
}

extension XDPModeArgument: ExpressibleByArgument {}
