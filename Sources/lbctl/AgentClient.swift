// One exchange with an agent's control API (lbctl apply --server, drain, undrain, status
// --server): the URL checked, the CA to trust, the bearer token read from its file, and the
// agent's error answers turned into RemoteError (4xx: bad input, exit 2; else exit 1).
import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceAgent
import SluiceControl

struct AgentClient {
    let base: String
    let cacert: String?

    init(server: String, cacert: String?) {
        base = server.hasSuffix("/") ? String(server.dropLast()) : server
        self.cacert = cacert
    }

    /// The token file's first line, without surrounding whitespace.
    static func readToken(_ tokenFile: String) throws -> String {
        do {
            return try String(contentsOfFile: tokenFile, encoding: .utf8)
                .split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        } catch {
            throw ControlError.badInput("\(tokenFile): cannot read the token: \(error.localizedDescription)")
        }
    }

    /// `method path` with `body`; returns the answer's body when the status is 200.
    func exchange(_ method: HTTPMethod, _ path: String, token: String?, body: Data? = nil, contentType: String? = nil,
                  timeout: TimeAmount = .seconds(60)) async throws -> Data {
        guard let url = URL(string: base + path), url.scheme == "http" || url.scheme == "https", url.host != nil else {
            throw ControlError.badInput("--server \(String(reflecting: base)) is not an http:// or https:// URL")
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
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, timeout: .init(connect: .seconds(10), read: timeout))
        // One attempt: a refused connection or a TLS failure is reported at once, not retried until the timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }

        let result: Result<(status: Int, data: Data), any Error>
        do {
            let response = try await client.execute(request, timeout: timeout)
            result = .success((Int(response.status.code), Data(try await response.body.collect(upTo: 64 << 20).readableBytesView)))
        } catch {
            result = .failure(error)
        }
        try? await client.shutdown()
        let status: Int, data: Data
        switch result {
        case .success(let answer): (status, data) = answer
        case .failure(let error): throw RemoteError(message: "\(url): \(Self.describe(error, url: url))", isBadInput: false)
        }
        guard status == 200 else {
            let message = (try? JSONDecoder().decode(APIError.ErrorBody.self, from: data))?.error
                ?? String(decoding: data.prefix(500), as: UTF8.self)
            throw RemoteError(message: "\(url): \(status): \(message)", isBadInput: (400..<500).contains(status))
        }
        return data
    }

    /// Decodes an answer, or says what came instead.
    func decode<T: Decodable>(_ type: T.Type, _ data: Data, what: String) throws -> T {
        guard let value = try? JSONDecoder().decode(type, from: data) else {
            throw RemoteError(message: "\(base): the answer is not \(what): \(String(decoding: data.prefix(500), as: UTF8.self))",
                              isBadInput: false)
        }
        return value
    }

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

/// Where an agent is: --server URL (with --token-file for writes), or --config FILE (the
/// agent's own configuration: its listen address and token file, for the agent on this node).
struct AgentOptions: ParsableArguments {
    @Option(help: ArgumentHelp("An agent's base URL, e.g. http://127.0.0.1:9300.", valueName: "URL"))
    var server: String?
    @Option(help: ArgumentHelp("File holding the agent's bearer token (with --server).", valueName: "FILE"))
    var tokenFile: String?
    @Option(help: ArgumentHelp("The agent's configuration file: reach the agent it configures (its listen address and token).",
                               valueName: "FILE"))
    var config: String?
    @Option(help: ArgumentHelp("PEM file of the CA certificate(s) to trust for an https:// agent.", valueName: "FILE"))
    var cacert: String?

    func validate() throws {
        if server != nil && config != nil { throw ValidationError("give --server or --config, not both") }
        if config != nil && tokenFile != nil { throw ValidationError("--token-file comes from --config's token_file") }
    }

    /// The client and the token (nil when `needsToken` is false and none was given).
    func client(needsToken: Bool) throws -> (AgentClient, String?) {
        if let config {
            let agent = try AgentConfig.load(path: config)
            let host = agent.host == "0.0.0.0" ? "127.0.0.1" : agent.host == "::" ? "::1" : agent.host
            let scheme = agent.tlsCertificate == nil ? "http" : "https"
            let url = "\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(agent.port)"
            return (AgentClient(server: url, cacert: cacert), try agent.readToken())
        }
        guard let server else { throw ValidationError("give --server URL (and --token-file) or --config FILE") }
        if needsToken && tokenFile == nil { throw ValidationError("--server needs --token-file") }
        return (AgentClient(server: server, cacert: cacert), try tokenFile.map(AgentClient.readToken))
    }
}
