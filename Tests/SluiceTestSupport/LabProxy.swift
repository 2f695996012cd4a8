// The PROXY v2 services of the NAT lab (client_address: proxy-v2, issue #13): nginx with
// proxy_protocol, HAProxy with accept-proxy, and lab-server.py's banner and echo servers
// that read the header first, all on be4-be6 behind full NAT. What their tests drive: the
// client modes that check each answer names the connection's own address and port, what
// the backends logged from the headers, the data plane's PROXY counters, and a drop rule
// (nftables, Debian's) inside a backend's namespace.
import Foundation
import SluiceCore

extension Lab {
    /// What `lab-client.py proxyhttp|banner|bigecho|download` prints.
    public struct ProxyResult: Decodable, Sendable {
        public var sent: Int
        public var ok: Int
        public var failed: Int
        /// Answers by backend name (by "SHA256:BYTES" for download).
        public var backends: [String: Int]
        public var errors: [String]
        /// "ADDRESS PORT" of each connection that succeeded, as the client's socket names it.
        public var clients: [String]?
        public var output: String = ""
        enum CodingKeys: String, CodingKey { case sent, ok, failed, backends, errors, clients }
    }

    /// `lab-client.py MODE HOST PORT COUNT EXTRA...` in the client namespace.
    public func proxyClient(_ mode: String, _ host: String, _ port: Int, count: Int, _ extra: String...) async throws -> ProxyResult {
        let result = try await Self.run("client", name, [mode, host, String(port), String(count)] + extra)
        guard var decoded = try? JSONDecoder().decode(ProxyResult.self, from: result.stdoutData) else {
            throw CommandError("lab client printed no result:\n\(result)")
        }
        decoded.output = result.description
        return decoded
    }

    /// A line a PROXY-reading server logged: `PROTO LOCAL PEER CLIENT:PORT`, the last taken
    /// from the header (nginx's $proxy_protocol_addr:$proxy_protocol_port, HAProxy's %ci:%cp).
    public struct ProxyLogLine: Sendable, Equatable {
        public var proto: String
        public var local: String
        public var client: String
    }

    /// The PROXY-reading servers' lines in `backend`'s logs (proxy-nginx, proxy-banner and
    /// proxy-echo in the backend's log, proxy-haproxy in HAProxy's own), and any
    /// "bad-header" line as a client of "bad-header".
    public func proxyLog(of backend: String) throws -> [ProxyLogLine] {
        let haproxy = (try? String(contentsOfFile: "\(directory)/\(backend).haproxy.log", encoding: .utf8)) ?? ""
        let text = try String(contentsOfFile: info("\(backend)_log"), encoding: .utf8) + haproxy
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count >= 4, fields[0].hasPrefix("proxy-") else { return nil }
            return ProxyLogLine(proto: fields[0], local: fields[1], client: fields[3])
        }
    }

    /// The data plane's PROXY counters (`lbctl stats --json`).
    public struct ProxyStats: Decodable, Sendable {
        public var proxyHeaders: Int
        public var proxyResent: Int
        public var proxyTFOTrimmed: Int
        public var proxyMidstream: Int
        public var drops: [String: Int]
        enum CodingKeys: String, CodingKey {
            case drops, proxyHeaders = "proxy_headers", proxyResent = "proxy_resent"
            case proxyTFOTrimmed = "proxy_tfo_trimmed", proxyMidstream = "proxy_midstream"
        }
    }

    public func proxyStats() async throws -> ProxyStats {
        try decode(ProxyStats.self, Self.checked(await lbctl("stats", "--json")))
    }

    /// Runs `nft ARGS...` in NODE's namespace (the lab's own: nothing of the host's).
    @discardableResult
    public func nft(_ node: String, _ arguments: String...) async throws -> CommandResult {
        try Self.checked(await Self.run("exec", name, [node, "nft"] + arguments))
    }
}
