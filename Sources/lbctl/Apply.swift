// lbctl apply -f FILE: validate a service file, show the change, and write it into the data plane,
// here or (with --server) through an agent's control API.
import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import SluiceAgent
import SluiceControl
import SluiceCore

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply a service file: print what changes, then switch it in (all or nothing).",
        discussion: "With --server, the file is sent to an agent (PUT /v1/services, or POST /v1/services/validate for --dry-run) and the agent's diff is printed.")

    @Option(name: .shortAndLong, help: ArgumentHelp("The service file (YAML).", valueName: "FILE")) var file: String
    @Flag(help: "Print what would change and what it would disturb (moved placements, flows on removed backends); write nothing.")
    var dryRun = false
    @Option(help: ArgumentHelp("An agent's base URL, e.g. https://lb1:9300: apply through its control API.", valueName: "URL"))
    var server: String?
    @Option(help: ArgumentHelp("File holding the agent's bearer token (with --server).", valueName: "FILE"))
    var tokenFile: String?
    @Option(help: ArgumentHelp("PEM file of the CA certificate(s) to trust for an https:// --server, instead of the system's.",
                               valueName: "FILE"))
    var cacert: String?
    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if server != nil && tokenFile == nil { throw ValidationError("--server needs --token-file") }
        if server == nil && tokenFile != nil { throw ValidationError("--token-file is only used with --server") }
        if server == nil && cacert != nil { throw ValidationError("--cacert is only used with --server") }
    }

    func run() async throws {
        if let server, let tokenFile { return try await remote(server: server, tokenFile: tokenFile) }
        let desired = try ServiceFileParser.load(path: file)
        let checked = desired.services.filter { $0.healthCheck != nil }.map(\.name)
        if !checked.isEmpty {
            FileHandle.standardError.write(Data("lbctl: note: health checks (of \(checked.joined(separator: ", "))) are run by the agent (lbctl agent, or --server); applied here they are only validated, and the health verdicts the maps hold are kept\n".utf8))
        }
        let result: ApplyResult
        if dryRun && !Dataplane.isPinned(at: global.pinPath) {
            // A dry run against nothing pinned shows the whole file as new and loads nothing.
            result = ApplyResult(diff: .between(current: ServiceFile(services: []), desired: desired.withoutHealthChecks),
                                 tablesWritten: 0, bytesWritten: 0)
        } else {
            result = try Dataplane.openOrLoad(pinPath: global.pinPath).apply(desired, dryRun: dryRun)
        }
        report(lines: result.diff.lines, applied: !dryRun, tables: result.tablesWritten, bytes: result.bytesWritten,
               unresolved: result.unresolved, disruption: result.disruption)
    }

    private func report(lines: [String], applied: Bool, tables: Int, bytes: Int, unresolved: [UnresolvedNeighbour],
                        disruption: [ServiceDisruption]) {
        for neighbour in unresolved {
            FileHandle.standardError.write(Data("lbctl: warning: \(neighbour)\n".utf8))
        }
        if lines.isEmpty {
            print("no changes")
            return
        }
        for line in lines { print(line) }
        for service in disruption { print(service.line) }
        if applied {
            print("applied: \(tables) Maglev table(s) switched, \(bytes) bytes written")
        } else {
            print("dry run: nothing applied")
        }
    }

    /// Sends the file as it is (the agent parses and validates it) and prints the agent's answer.
    private func remote(server: String, tokenFile: String) async throws {
        let body: Data
        do { body = try Data(contentsOf: URL(fileURLWithPath: file)) } catch {
            throw ControlError.badInput("\(file): cannot read it: \(error.localizedDescription)")
        }
        let token = try AgentClient.readToken(tokenFile)
        let client = AgentClient(server: server, cacert: cacert)
        let data = try await client.exchange(dryRun ? .POST : .PUT, dryRun ? "/v1/services/validate" : "/v1/services", token: token,
                                             body: body, contentType: file.hasSuffix(".json") ? "application/json" : "application/yaml")
        let answer = try client.decode(ApplyResponse.self, data, what: "an apply result")
        report(lines: answer.changes, applied: answer.applied, tables: answer.tablesWritten, bytes: answer.bytesWritten,
               unresolved: answer.unresolvedNeighbours ?? [], disruption: answer.disruption ?? [])
    }
}
