// One health probe of one backend over SwiftNIO: a TCP connect, an HTTP/1.0 GET whose status
// line is read, or a UDP datagram that must be answered. Each probe has one deadline for
// everything it does, and NIO's event loops carry thousands of them without a thread each.
import Glibc
import NIOCore
import NIOPosix
import SluiceCore

public struct HealthProbe: Sendable, Hashable {
    public var kind: HealthCheck.Kind
    public var address: IPAddress
    public var port: UInt16
    public var path: String
    public var expectStatus: Int
    public var send: [UInt8]
    public var expect: [UInt8]?
    public var timeoutMilliseconds: Int

    /// The probe `check` describes for `backend` of a service listening on `servicePort`.
    public init(_ check: HealthCheck, backend: IPAddress, servicePort: UInt16, timeoutMilliseconds: Int) {
        kind = check.kind
        address = backend
        port = check.port ?? servicePort
        path = check.path ?? "/"
        expectStatus = check.expectStatus ?? 200
        send = Array((check.send ?? "").utf8)
        expect = check.expect.map { Array($0.utf8) }
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Nil when the backend passed, else why it failed (for logs and `lbctl status`). The whole
    /// probe, its deadline included, runs as one future chain on an event loop: a busy Swift
    /// concurrency pool can delay the answer, never fail a healthy backend.
    public func run(on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async -> String? {
        do {
            try await start(on: group.next()).get()
            return nil
        } catch {
            return Self.describe(error)
        }
    }

    /// `connection refused`, not NIO's `connection reset (error set): Connection refused) (errno: 111)`.
    static func describe(_ error: any Error) -> String {
        switch error {
        case let failure as Failure: failure.description
        case let error as IOError: String(cString: strerror(error.errnoCode)).lowercased()
        case ChannelError.connectTimeout(let limit): "no connection within \(limit.nanoseconds / 1_000_000) ms"
        default: "\(error)"
        }
    }

    private func start(on loop: any EventLoop) -> EventLoopFuture<Void> {
        let target: SocketAddress
        do { target = try SocketAddress(ipAddress: address.description, port: Int(port)) } catch {
            return loop.makeFailedFuture(error)
        }
        let timeout = TimeAmount.milliseconds(Int64(timeoutMilliseconds))
        switch kind {
        case .tcp:
            return ClientBootstrap(group: loop).connectTimeout(timeout).connect(to: target).flatMap { $0.close() }
        case .http:
            let host = address.family == .v6 ? "[\(address)]" : address.description
            let request = ByteBuffer(string: "GET \(path) HTTP/1.0\r\nHost: \(host)\r\nUser-Agent: sluice-healthcheck\r\nConnection: close\r\n\r\n")
            let bootstrap = ClientBootstrap(group: loop).connectTimeout(timeout)
            return exchange(on: loop, payload: { (buffer: ByteBuffer) in buffer }, enough: { $0.contains(UInt8(ascii: "\r")) },
                            connect: { initializer in bootstrap.channelInitializer(initializer).connect(to: target) },
                            request: request)
                .flatMapThrowing { [expectStatus] reply in
                    let statusLine = reply.split(separator: UInt8(ascii: "\r")).first.map { String(decoding: $0, as: UTF8.self) } ?? ""
                    let fields = statusLine.split(separator: " ")
                    guard fields.count >= 2, fields[0].hasPrefix("HTTP/"), let status = Int(fields[1]) else {
                        throw Failure(description: "not an HTTP answer: \(String(reflecting: String(statusLine.prefix(80))))")
                    }
                    guard status == expectStatus else { throw Failure(description: "HTTP status \(status), expected \(expectStatus)") }
                }
        case .udp:
            // Connected to the backend, so an ICMP port unreachable fails the probe at once.
            let bootstrap = DatagramBootstrap(group: loop)
            return exchange(on: loop, payload: { (envelope: AddressedEnvelope<ByteBuffer>) in envelope.data }, enough: { _ in true },
                            connect: { initializer in bootstrap.channelInitializer(initializer).connect(to: target) },
                            request: AddressedEnvelope(remoteAddress: target, data: ByteBuffer(bytes: send)))
                .flatMapThrowing { [expect] reply in
                    if let expect, !reply.contains(expect) {
                        throw Failure(description: "the reply does not contain \(String(reflecting: String(decoding: expect, as: UTF8.self)))")
                    }
                }
        }
    }

    /// Connects with a ReplyCollector in the pipeline, sends `request`, and completes with
    /// what came back once `enough` says so, the peer closes, or the deadline passes; the
    /// channel is closed whatever happens.
    private func exchange<Inbound, Request: Sendable>(
        on loop: any EventLoop, payload: @escaping @Sendable (Inbound) -> ByteBuffer, enough: @escaping @Sendable ([UInt8]) -> Bool,
        connect: (@escaping @Sendable (any Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<any Channel>,
        request: Request
    ) -> EventLoopFuture<[UInt8]> {
        let promise = loop.makePromise(of: [UInt8].self)
        let timeoutMilliseconds = timeoutMilliseconds
        let timeout = loop.scheduleTask(in: .milliseconds(Int64(timeoutMilliseconds))) {
            promise.fail(Failure(description: "no answer within \(timeoutMilliseconds) ms"))
        }
        connect { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(ReplyCollector(promise: promise, enough: enough, payload: payload))
            }
        }.whenComplete { result in
            switch result {
            case .failure(let error):
                promise.fail(error)
            case .success(let channel):
                promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
                channel.writeAndFlush(request).whenFailure { promise.fail($0) }
            }
        }
        return promise.futureResult.always { _ in timeout.cancel() }
    }
}

/// Gathers what a probe's channel reads (stream bytes or datagrams) into its promise. A
/// completed promise ignores later completions, so the timeout, EOF and errors may race.
private final class ReplyCollector<Inbound>: ChannelInboundHandler {
    typealias InboundIn = Inbound

    private let promise: EventLoopPromise<[UInt8]>
    private let enough: ([UInt8]) -> Bool
    private let payload: (Inbound) -> ByteBuffer
    private var bytes: [UInt8] = []

    init(promise: EventLoopPromise<[UInt8]>, enough: @escaping ([UInt8]) -> Bool, payload: @escaping (Inbound) -> ByteBuffer) {
        self.promise = promise
        self.enough = enough
        self.payload = payload
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = payload(unwrapInboundIn(data))
        bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
        if enough(bytes) { promise.succeed(bytes) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if bytes.isEmpty {
            promise.fail(HealthProbe.Failure(description: "the connection closed with no answer"))
        } else {
            promise.succeed(bytes)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
