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

    /// Nil when the backend passed, else why it failed (for logs and `lbctl status`).
    public func run(on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async -> String? {
        let deadline = NIODeadline.now() + .milliseconds(Int64(timeoutMilliseconds))
        do {
            let target = try SocketAddress(ipAddress: address.description, port: Int(port))
            switch kind {
            case .tcp:
                let channel = try await ClientBootstrap(group: group)
                    .connectTimeout(.milliseconds(Int64(timeoutMilliseconds)))
                    .connect(to: target).get()
                try? await channel.close()
            case .http:
                let reply = try await exchange(stream: target, group: group, deadline: deadline)
                let statusLine = reply.split(separator: UInt8(ascii: "\r")).first.map { String(decoding: $0, as: UTF8.self) } ?? ""
                let fields = statusLine.split(separator: " ")
                guard fields.count >= 2, fields[0].hasPrefix("HTTP/"), let status = Int(fields[1]) else {
                    throw Failure(description: "not an HTTP answer: \(String(reflecting: String(statusLine.prefix(80))))")
                }
                guard status == expectStatus else { throw Failure(description: "HTTP status \(status), expected \(expectStatus)") }
            case .udp:
                let reply = try await exchange(datagram: target, group: group, deadline: deadline)
                if let expect, !reply.contains(expect) {
                    throw Failure(description: "the reply does not contain \(String(reflecting: String(decoding: expect, as: UTF8.self)))")
                }
            }
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
        case ChannelError.connectTimeout: "no connection within the timeout"
        default: "\(error)"
        }
    }

    /// Sends the GET and returns what came back up to the end of the status line.
    private func exchange(stream target: SocketAddress, group: any EventLoopGroup, deadline: NIODeadline) async throws -> [UInt8] {
        let request = "GET \(path) HTTP/1.0\r\nHost: \(address.family == .v6 ? "[\(address)]" : address.description)\r\nUser-Agent: sluice-healthcheck\r\nConnection: close\r\n\r\n"
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.milliseconds(Int64(timeoutMilliseconds)))
            .connect(to: target).get()
        let reply = try await collect(on: channel, deadline: deadline, enough: { $0.contains(UInt8(ascii: "\r")) },
                                      payload: { (buffer: ByteBuffer) in buffer }) {
            channel.writeAndFlush(ByteBuffer(string: request))
        }
        return reply
    }

    /// Sends the datagram from an ephemeral port connected to the backend (so an ICMP
    /// port-unreachable fails the probe at once) and returns the first reply.
    private func exchange(datagram target: SocketAddress, group: any EventLoopGroup, deadline: NIODeadline) async throws -> [UInt8] {
        let channel = try await DatagramBootstrap(group: group).connect(to: target).get()
        let payload = send
        return try await collect(on: channel, deadline: deadline, enough: { _ in true },
                                 payload: { (envelope: AddressedEnvelope<ByteBuffer>) in envelope.data }) {
            channel.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: ByteBuffer(bytes: payload)))
        }
    }

    /// Adds a collector to `channel`, runs `start`, and waits until `enough` says the bytes
    /// read suffice, the peer closes, or `deadline` passes; closes the channel in every case.
    private func collect<Inbound>(on channel: any Channel, deadline: NIODeadline, enough: @escaping @Sendable ([UInt8]) -> Bool,
                                  payload: @escaping @Sendable (Inbound) -> ByteBuffer,
                                  start: @escaping @Sendable () -> EventLoopFuture<Void>) async throws -> [UInt8] {
        let promise = channel.eventLoop.makePromise(of: [UInt8].self)
        let timeout = channel.eventLoop.scheduleTask(deadline: deadline) {
            promise.fail(Failure(description: "no answer within \(timeoutMilliseconds) ms"))
        }
        defer {
            timeout.cancel()
            channel.close(promise: nil)
        }
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(ReplyCollector(promise: promise, enough: enough, payload: payload))
        }.get()
        start().whenFailure { promise.fail($0) }
        return try await promise.futureResult.get()
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
