// The agent's HTTP server (Hummingbird 2): routes, bearer-token checks, JSON answers,
// and the run loop that shuts down gracefully on SIGTERM or SIGINT (swift-service-lifecycle).
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import ServiceLifecycle
import UnixSignals
import SluiceControl
import SluiceCore
import Synchronization

public enum AgentServer {
    /// Builds the routes over `controller`. Reads (GET) are open; writes (PUT, POST) need
    /// the bearer token, are checked before the body is read and change nothing when refused.
    public static func router(_ controller: AgentController) -> Router<BasicRequestContext> {
        let router = Router()
        let table = RouteTable()
        router.add(middleware: MethodNotAllowed(table: table))
        router.get("/healthz") { _, _ in
            json(200, ["status": "ok"])
        }
        // For whatever announces this node's routes: not ready while a starting node is still
        // copying the connection table from its peers.
        router.get("/readyz") { _, _ in
            if controller.sync?.isReady ?? true { return json(200, ["ready": true]) }
            return json(503, ReadyAnswer(ready: false, reason: "copying the connection table from peers"))
        }
        router.get("/metrics") { _, _ in
            do {
                let text = try await controller.metrics()
                return Response(status: .ok, headers: [.contentType: MetricsRenderer.contentType],
                                body: .init(byteBuffer: ByteBuffer(bytes: text)))
            } catch { return failure(error) }
        }
        router.get("/v1/status") { _, _ in
            do { return json(200, try await controller.status()) } catch { return failure(error) }
        }
        router.get("/v1/bgp") { _, _ in
            do { return json(200, try controller.fleetStatus()) } catch { return failure(error) }
        }
        router.post("/v1/drain") { request, _ in
            guard controller.isAuthorized(request.headers[.authorization]) else { return failure(APIError.unauthorized) }
            var timeout: Duration?
            if let text = request.uri.queryParameters["timeout"].map(String.init) {
                guard let milliseconds = HealthCheck.parseDuration(text), (0...3_600_000).contains(milliseconds) else {
                    return failure(APIError(status: 400, "timeout \(String(reflecting: text)) is not a duration from 0s to 1h (e.g. 30s)"))
                }
                timeout = .milliseconds(milliseconds)
            }
            do { return json(200, try await controller.drain(timeout: timeout)) } catch { return failure(error) }
        }
        router.post("/v1/undrain") { request, _ in
            guard controller.isAuthorized(request.headers[.authorization]) else { return failure(APIError.unauthorized) }
            do { return json(200, try await controller.undrain()) } catch { return failure(error) }
        }
        router.get("/v1/services") { _, _ in
            do { return json(200, try await controller.services()) } catch { return failure(error) }
        }
        router.put("/v1/services") { request, _ in
            await write(request, controller) { body in try await controller.replace(body) }
        }
        router.post("/v1/services/validate") { request, _ in
            await write(request, controller) { body in try await controller.validate(body) }
        }
        table.fill(router.routes.map { ("\($0.method)", "\($0.path)") })
        return router
    }

    /// Each path the router serves and its methods, set once the routes are in.
    final class RouteTable: Sendable {
        private let methods = Mutex<[String: [String]]>([:])

        func fill(_ routes: [(method: String, path: String)]) {
            methods.withLock { table in
                for route in routes {
                    table[route.path.hasPrefix("/") ? route.path : "/" + route.path, default: []].append(route.method)
                }
            }
        }

        func methods(of path: String) -> [String]? { methods.withLock { $0[path] } }
    }

    /// A path the agent serves, asked with a method it does not serve for it: 405 with the
    /// methods it does in Allow (RFC 9110), where the router would answer 404.
    struct MethodNotAllowed<Context: RequestContext>: RouterMiddleware {
        let table: RouteTable

        func handle(_ request: Request, context: Context,
                    next: (Request, Context) async throws -> Response) async throws -> Response {
            do { return try await next(request, context) } catch let error as HTTPError where error.status == .notFound {
                guard let methods = table.methods(of: request.uri.path) else { throw error }
                var response = failure(APIError(status: 405, "\(request.method) is not served for \(request.uri.path) (\(methods.sorted().joined(separator: ", ")) is)"))
                response.headers[.allow] = methods.sorted().joined(separator: ", ")
                return response
            }
        }
    }

    private struct ReadyAnswer: Encodable {
        var ready: Bool
        var reason: String
    }

    private static func write(_ request: Request, _ controller: AgentController,
                              _ action: (String) async throws -> ApplyResponse) async -> Response {
        guard controller.isAuthorized(request.headers[.authorization]) else { return failure(APIError.unauthorized) }
        var request = request
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: AgentController.maxBody) } catch {
            return failure(APIError(status: 413, "the request body is larger than \(AgentController.maxBody) bytes"))
        }
        guard let body = buffer.getString(at: buffer.readerIndex, length: buffer.readableBytes),
              body.utf8.count == buffer.readableBytes else {
            return failure(APIError(status: 400, "the request body is not UTF-8"))
        }
        do { return json(200, try await action(body)) } catch { return failure(error) }
    }

    private static func failure(_ error: any Error) -> Response {
        let apiError = (error as? APIError) ?? APIError(status: 500, "\(error)")
        return json(apiError.status, apiError.body)
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    private static func json(_ status: Int, _ value: some Encodable) -> Response {
        var data = (try? encoder.encode(value)) ?? Data(#"{"error": "encoding the answer failed"}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        return Response(status: .init(code: status), headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Runs the agent until SIGTERM or SIGINT: adopts the pinned data plane, re-applies the
    /// persisted set, serves, and returns once in-flight requests are done.
    public static func run(config: AgentConfig, logger: Logger) async throws {
        let controller = try await AgentController(config: config, logger: logger)
        if let diff = try await controller.restore() {
            logger.info("re-applied \(config.servicesFile)", metadata: ["changes": .stringConvertible(diff.lines.count)])
            for line in diff.lines { logger.info("\(line)") }
        }
        let server: HTTPServerBuilder
        let scheme: String
        if let cert = config.tlsCertificate, let key = config.tlsKey {
            let tls: TLSConfiguration
            do {
                tls = TLSConfiguration.makeServerConfiguration(
                    certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
                    privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            } catch {
                throw ControlError.badInput("tls: cannot load \(cert) and \(key): \(error)")
            }
            server = try .tls(.http1(), tlsConfiguration: tls)
            scheme = "https"
        } else {
            server = .http1()
            scheme = "http"
        }
        let app = Application(
            router: router(controller), server: server,
            configuration: .init(address: .hostname(config.host, port: config.port), serverName: "sluice"),
            services: [controller.conntrack, controller.health, controller.neighbours] + (controller.sync.map { [$0] } ?? [])
                + (controller.fleet.map { [$0] } ?? []),
            onServerRunning: { channel in
                // Tests and scripts wait for this line; with port 0 it is how they learn the port.
                let port = channel.localAddress?.port ?? config.port
                let host = config.host.contains(":") ? "[\(config.host)]" : config.host
                let line = "lbctl agent: listening on \(scheme)://\(host):\(port) (pin path \(config.pinPath))\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            },
            logger: logger)
        // Graceful shutdown on SIGTERM and SIGINT, after the node has stopped announcing (and,
        // for shutdown_grace, new flows have stopped): the server keeps answering meanwhile.
        // A second signal cuts that wait short.
        let group = ServiceGroup(configuration: .init(services: [app], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            tasks.addTask {
                var stopping: Task<Void, Never>?
                for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                    if let stopping {  // the second signal
                        stopping.cancel()
                        break
                    }
                    guard let fleet = controller.fleet else { break }
                    logger.notice("\(signal): withdrawing every VIP before exiting")
                    stopping = Task {
                        await fleet.stopAnnouncing()
                        await group.triggerGracefulShutdown()
                    }
                }
                await group.triggerGracefulShutdown()
            }
            try await tasks.next()
            tasks.cancelAll()
        }
    }
}
