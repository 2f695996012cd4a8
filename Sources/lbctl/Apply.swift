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
    @Flag(help: "Print what would change, write nothing.") var dryRun = false
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
               unresolved: result.unresolved)
    }

    private func report(lines: [String], applied: Bool, tables: Int, bytes: Int, unresolved: [UnresolvedNeighbour]) {
        for neighbour in unresolved {
            FileHandle.standardError.write(Data("lbctl: warning: \(neighbour)\n".utf8))
        }
        if lines.isEmpty {
            print("no changes")
            return
        }
        for line in lines { print(line) }
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
        let token: String
        do {
            token = try String(contentsOfFile: tokenFile, encoding: .utf8)
                .split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        } catch {
            throw ControlError.badInput("\(tokenFile): cannot read the token: \(error.localizedDescription)")
        }
        let base = server.hasSuffix("/") ? String(server.dropLast()) : server
        guard let url = URL(string: base + (dryRun ? "/v1/services/validate" : "/v1/services")),
              url.scheme == "http" || url.scheme == "https", url.host != nil else {
            throw ControlError.badInput("--server \(String(reflecting: server)) is not an http:// or https:// URL")
        }
        // AsyncHTTPClient rather than URLSession: on Linux URLSession has no way to trust a given CA.
        var tls = TLSConfiguration.makeClientConfiguration()
        if let cacert {
            let roots: [NIOSSLCertificate]
            do { roots = try NIOSSLCertificate.fromPEMFile(cacert) } catch {
                throw ControlError.badInput("--cacert \(cacert): cannot read PEM certificates from it: \(error)")
            }
            guard !roots.isEmpty else { throw ControlError.badInput("--cacert \(cacert): holds no PEM certificate") }
            tls.trustRoots = .certificates(roots)
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, timeout: .init(connect: .seconds(10), read: .seconds(60)))
        // One attempt: a refused connection or a TLS failure is reported at once, not retried until the timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = dryRun ? .POST : .PUT
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Content-Type", value: file.hasSuffix(".json") ? "application/json" : "application/yaml")
        request.body = .bytes(ByteBuffer(bytes: body))

        let exchange: Result<(status: Int, data: Data), any Error>
        do {
            let response = try await client.execute(request, timeout: .seconds(60))
            exchange = .success((Int(response.status.code), Data(try await response.body.collect(upTo: 64 << 20).readableBytesView)))
        } catch {
            exchange = .failure(error)
        }
        try? await client.shutdown()
        let status: Int, data: Data
        switch exchange {
        case .success(let answer): (status, data) = answer
        case .failure(let error): throw RemoteError(message: "\(url): \(Self.describe(error, url: url))", isBadInput: false)
        }
        guard status == 200 else {
            let message = (try? JSONDecoder().decode(APIError.ErrorBody.self, from: data))?.error
                ?? String(decoding: data.prefix(500), as: UTF8.self)
            throw RemoteError(message: "\(url): \(status): \(message)", isBadInput: (400..<500).contains(status))
        }
        guard let answer = try? JSONDecoder().decode(ApplyResponse.self, from: data) else {
            throw RemoteError(message: "\(url): the answer is not an apply result: \(String(decoding: data.prefix(500), as: UTF8.self))",
                              isBadInput: false)
        }
        report(lines: answer.changes, applied: answer.applied, tables: answer.tablesWritten, bytes: answer.bytesWritten,
               unresolved: answer.unresolvedNeighbours ?? [])
    }
}

extension Apply {
    /// A transport error in words; a certificate that does not verify says so and names the remedy.
    static func describe(_ error: any Error, url: URL) -> String {
        let text = String(describing: error)
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("failedToValidateHostname") {
            return "TLS: the agent's certificate could not be verified (\(text)); "
                + "pass --cacert FILE with the CA that signed it, or check that it is issued for \(url.host ?? "the host")"
        }
        if error is NIOSSLError || error is BoringSSLError { return "TLS handshake failed: \(text)" }
        return text
    }
}

/// An agent refused the request (4xx: bad input, exit 2) or could not be reached or failed (exit 1).
struct RemoteError: Error {
    var message: String
    var isBadInput: Bool
}
