// A throw-away network namespace for tests that touch real interfaces: a
// unique name, commands and Swift code run inside it, veth pairs, and cleanup
// that runs however the test ends (`withTestNamespace`).
import CLibbpf
import Foundation
import Glibc

/// A named network namespace (`ip netns add sltest-<id>`), removed by
/// `remove()` or, as a safety net, on deinit (not awaited there). Nothing here ever
/// touches the host namespace's interfaces or routes: links are created inside the
/// namespace.
public final class TestNamespace: @unchecked Sendable {
    public static let ip = "/usr/sbin/ip"
    public static let nsenter = "/usr/bin/nsenter"

    /// `sltest-` and 8 hex digits: unique per test, so runs can overlap.
    public let name: String
    /// The bind mount `ip netns` keeps; setns(2) and nsenter open it.
    public var path: String { "/run/netns/\(name)" }

    private let lock = NSLock()
    private var removed = false

    /// Creates the namespace with loopback up and IPv6 off, so the kernel's
    /// own neighbour discovery and MLD chatter never mixes into captures.
    public init(prefix: String = "sltest") async throws {
        name = "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
        try await Command.check(Self.ip, ["netns", "add", name])
        do {
            try await ip("link", "set", "lo", "up")
            // /proc/sys/net shows the namespace of whoever opens it: here, nsenter's child.
            try await exec(["/bin/sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
                            + "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"], check: true)
        } catch {
            await remove()
            throw error
        }
    }

    /// A namespace nobody removed: `ip netns del`, started and not awaited.
    deinit {
        guard takeRemoval() else { return }
        let null = FileHandle.nullDevice
        _ = try? ChildProcess(Self.ip, ["netns", "del", name], stdout: null, stderr: null)
    }

    /// True for the first caller only.
    private func takeRemoval() -> Bool {
        lock.withLock {
            defer { removed = true }
            return !removed
        }
    }

    /// Deletes the namespace; its veths and their XDP programs go with it.
    /// Safe to call more than once.
    public func remove() async {
        guard takeRemoval() else { return }
        _ = try? await Command.run(Self.ip, ["netns", "del", name])
    }

    /// Names of every namespace `ip netns` knows.
    public static func list() async -> [String] {
        let output = (try? await Command.run(ip, ["netns", "list"]).stdout) ?? ""
        return output.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    /// True while `ip netns` still knows the namespace called `name`.
    public static func exists(_ name: String) async -> Bool {
        await list().contains(name) || access("/run/netns/\(name)", F_OK) == 0
    }

    // MARK: Commands

    /// `ip -n NAME arguments...`; throws unless it exits 0.
    @discardableResult
    public func ip(_ arguments: String...) async throws -> CommandResult {
        try await Command.check(Self.ip, ["-n", name] + arguments)
    }

    /// Runs a command inside the namespace with nsenter, which keeps the
    /// host's mounts (bpffs pins stay visible, unlike with `ip netns exec`).
    @discardableResult
    public func exec(_ command: [String], check: Bool = false) async throws -> CommandResult {
        let arguments = ["--net=\(path)"] + command
        return check ? try await Command.check(Self.nsenter, arguments) : try await Command.run(Self.nsenter, arguments)
    }

    /// Creates the veth pair `name` <-> `peer` inside the namespace, both up.
    public func addVethPair(_ name: String, peer: String) async throws {
        try await ip("link", "add", name, "type", "veth", "peer", "name", peer)
        try await ip("link", "set", name, "up")
        try await ip("link", "set", peer, "up")
    }

    /// `ip -j link show` of one interface, as a JSON object.
    public func link(_ interface: String) async throws -> [String: Any] {
        let output = try await ip("-j", "link", "show", "dev", interface).stdoutData
        guard let links = try JSONSerialization.jsonObject(with: output) as? [[String: Any]], let link = links.first else {
            throw CommandError("ip -n \(name) -j link show \(interface): unexpected output")
        }
        return link
    }

    /// The interface's MAC address, read through `ip -j` (sysfs shows the host's namespace).
    public func macAddress(of interface: String) async throws -> [UInt8] {
        guard let text = try await link(interface)["address"] as? String else {
            throw CommandError("\(interface) in \(name) has no link-layer address")
        }
        let bytes = text.split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard bytes.count == 6 else { throw CommandError("\(interface): \"\(text)\" is not a MAC address") }
        return bytes
    }

    /// The id of the XDP program attached to the interface, if any.
    public func xdpProgramID(of interface: String) async throws -> UInt32? {
        guard let xdp = try await link(interface)["xdp"] as? [String: Any] else { return nil }
        if let prog = xdp["prog"] as? [String: Any], let id = prog["id"] as? Int { return UInt32(id) }
        if let attached = xdp["attached"] as? [[String: Any]],
           let id = attached.lazy.compactMap({ ($0["prog"] as? [String: Any])?["id"] as? Int }).first {
            return UInt32(id)
        }
        return nil
    }

    // MARK: Code inside the namespace

    /// Runs `body` on a new thread switched into the namespace and returns its
    /// result. Namespaces are per thread: this never moves a Swift
    /// concurrency thread, and the thread ends with `body`. Sockets opened in
    /// `body` stay in the namespace after it returns.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        let path = self.path
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    continuation.resume(throwing: CommandError("open \(path): \(String(cString: strerror(errno)))"))
                    return
                }
                defer { close(fd) }
                guard setns(fd, CLibbpf_CLONE_NEWNET) == 0 else {
                    continuation.resume(throwing: CommandError("setns \(path): \(String(cString: strerror(errno)))"))
                    return
                }
                continuation.resume(with: Result { try body() })
            }
            thread.name = "netns \(name)"
            thread.start()
        }
    }

    /// Attaches a two-instruction XDP program returning XDP_PASS to
    /// `interface`, in native mode, and returns its program id. On a veth this
    /// is what lets the peer's XDP_TX frames arrive (see docs/DEVELOPING.md); on an
    /// interface of its own it plays "somebody else's program".
    @discardableResult
    public func attachXDPPass(to interface: String) async throws -> UInt32 {
        try await run {
            let program = try XDPPassProgram()
            let index = if_nametoindex(interface)
            guard index != 0 else { throw CommandError("no interface \(interface)") }
            let rc = bpf_xdp_attach(Int32(index), program.fd, CLibbpf_XDP_FLAGS_DRV_MODE(), nil)
            guard rc == 0 else {
                throw CommandError("bpf_xdp_attach(\(interface)): \(String(cString: strerror(-rc)))")
            }
            return try program.id()
        }
    }
}

/// `r0 = XDP_PASS; exit`, loaded straight from its instructions (no ELF).
public final class XDPPassProgram {
    public static let name = "sltest_pass"
    public let fd: Int32

    public init() throws {
        // Each instruction: opcode, dst/src registers, 16-bit offset, 32-bit immediate (little endian).
        let movR0Pass: [UInt8] = [0xb7, 0x00, 0, 0, UInt8(XDP_PASS.rawValue), 0, 0, 0] // BPF_ALU64|BPF_MOV|BPF_K
        let exitInstruction: [UInt8] = [0x95, 0x00, 0, 0, 0, 0, 0, 0]                            // BPF_JMP|BPF_EXIT
        let code = movR0Pass + exitInstruction
        let fd = code.withUnsafeBytes { raw in
            bpf_prog_load(BPF_PROG_TYPE_XDP, Self.name, "GPL", raw.baseAddress!.assumingMemoryBound(to: bpf_insn.self),
                          code.count / 8, nil)
        }
        guard fd >= 0 else { throw CommandError("bpf_prog_load(\(Self.name)): \(String(cString: strerror(-fd)))") }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The kernel's id for the program.
    public func id() throws -> UInt32 {
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        let rc = bpf_obj_get_info_by_fd(fd, &info, &length)
        guard rc == 0 else { throw CommandError("bpf_obj_get_info_by_fd: \(String(cString: strerror(-rc)))") }
        return info.id
    }
}

/// A fresh namespace for `body`, removed (awaited) however `body` ends.
public func withTestNamespace<T>(prefix: String = "sltest", _ body: (TestNamespace) async throws -> T) async throws -> T {
    let namespace = try await TestNamespace(prefix: prefix)
    return try await withCleanup { try await body(namespace) } cleanup: { await namespace.remove() }
}
