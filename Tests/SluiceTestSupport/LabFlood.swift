// Floods for the lab: spoofed-source TCP SYNs or UDP datagrams from the client namespace
// (`lab-client.py synflood|udpflood`), the router told to send what comes back for the
// spoofed prefix to the client (which drops it), and the balancer program's own CPU time,
// from the kernel's BPF run-time statistics while a flood runs.
import CLibbpf
import Foundation
import Glibc

extension Lab {
    public enum FloodKind: String, Sendable { case syn = "synflood", udp = "udpflood" }

    /// What `lab-client.py synflood|udpflood` prints.
    public struct FloodResult: Decodable, Sendable {
        public var sent: Int
        public var seconds: Double
        public var rate: Double { Double(sent) / max(seconds, 0.001) }
    }

    /// The /16 the floods spoof their sources from (RFC 2544's benchmarking range).
    public static let floodPrefix = "198.18.0.0"

    /// Routes the flood prefix on the router back toward the client, so the router forwards
    /// the spoofed packets (a strict reverse-path check would drop them) and what the backends
    /// answer them ends in the client namespace, where no address takes it.
    public func routeFloodPrefixToClient() async throws {
        try Self.checked(await Command.run("/usr/sbin/ip", ["-n", try info("router_ns"), "route", "replace",
                                                            "\(Self.floodPrefix)/16", "via", try info("client_v4")]))
    }

    /// `count` spoofed packets of `kind` to `host:port`, as fast as one client thread sends them.
    public func flood(_ kind: FloodKind, _ host: String, _ port: Int, count: Int) async throws -> FloodResult {
        let result = try Self.checked(await Self.run("client", name, [kind.rawValue, host, String(port), String(count), Self.floodPrefix]))
        return try JSONDecoder().decode(FloodResult.self, from: result.stdoutData)
    }
}

/// The kernel's run-time statistics of BPF programs, on while this lives (BPF_ENABLE_STATS:
/// off again once the last holder closes its descriptor, so nothing is left switched on).
public final class BPFRunStats: @unchecked Sendable {
    private let fd: Int32

    public init() throws {
        fd = bpf_enable_stats(BPF_STATS_RUN_TIME)
        guard fd >= 0 else { throw CommandError("BPF_ENABLE_STATS: \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    /// Runs and nanoseconds the program with this id has spent since statistics were on.
    public static func of(programID: Int) throws -> (runs: UInt64, nanoseconds: UInt64) {
        let prog = bpf_prog_get_fd_by_id(UInt32(programID))
        guard prog >= 0 else { throw CommandError("program \(programID): \(String(cString: strerror(errno)))") }
        defer { close(prog) }
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        guard bpf_obj_get_info_by_fd(prog, &info, &length) == 0 else {
            throw CommandError("program \(programID) info: \(String(cString: strerror(errno)))")
        }
        return (info.run_cnt, info.run_time_ns)
    }
}
