// lbctl decap attach/detach on a veth in a test namespace: exit codes, the
// program and its pins, and a real tunnelled frame that the kernel (which has
// no ipip driver here) delivers to a UDP socket on the VIP only once the
// decapsulator strips it.
import Foundation
import Glibc
import SluiceCore
import SluiceTestSupport
import Testing

/// A namespace with veth bk0 (the backend's interface, 10.88.0.2/24) <-> cl0
/// (where test frames are sent from), a VIP on lo, rp_filter off, and a
/// private bpffs. Everything goes away with `close()`; `DecapLab.with { }` calls it.
private final class DecapLab: @unchecked Sendable {
    static let backendAddress = "10.88.0.2"
    static let peerAddress = "10.88.0.1"
    static let vip = "198.51.100.77"

    let namespace: TestNamespace
    let bpffs: BPFFSMount
    var pin: String { "\(bpffs.path)/lb" }

    init(vipOnLo: Bool = true) async throws {
        namespace = try await TestNamespace()
        do {
            bpffs = try BPFFSMount()
        } catch {
            await namespace.remove()
            throw error
        }
        do {
            try await namespace.addVethPair("bk0", peer: "cl0")
            try await namespace.ip("addr", "add", "\(Self.backendAddress)/24", "dev", "bk0")
            if vipOnLo { try await namespace.ip("addr", "add", "\(Self.vip)/32", "dev", "lo") }
            // The inner source is no neighbour of bk0: strict reverse-path filtering would drop it.
            for key in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.bk0.rp_filter=0"] {
                try await Command.check(TestNamespace.ip, ["netns", "exec", namespace.name, "/usr/sbin/sysctl", "-w", key])
            }
        } catch {
            await close()
            throw error
        }
    }

    /// A lab for `body`, closed however `body` ends.
    static func with(vipOnLo: Bool = true, _ body: (DecapLab) async throws -> Void) async throws {
        let lab = try await DecapLab(vipOnLo: vipOnLo)
        try await withCleanup { try await body(lab) } cleanup: { await lab.close() }
    }

    func close() async {
        await namespace.remove()
        bpffs.close()
    }

    func lbctl(_ arguments: String...) async throws -> CommandResult {
        try await Lbctl.run(arguments + ["--pin-path", pin], in: namespace)
    }

    func pinned(_ name: String) -> Bool { FileManager.default.fileExists(atPath: "\(pin)/\(name)") }
    var decapPins: [String] { ["sl_decap", "sl_decap_locals", "sl_decap_vips", "sl_decap_config", "sl_decap_stats"] }
}

/// A UDP socket bound inside a namespace (the socket stays there).
private final class UDPSocket: @unchecked Sendable {
    let fd: Int32

    init(binding address: String, port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CommandError("socket(AF_INET, SOCK_DGRAM): \(String(cString: strerror(errno)))") }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        guard inet_pton(AF_INET, address, &sin.sin_addr) == 1 else { throw CommandError("bad address \(address)") }
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw CommandError("bind \(address):\(port): \(reason)")
        }
    }

    deinit { Glibc.close(fd) }

    /// The next datagram and its source address, or nil after `timeout`. It never blocks its
    /// thread: it looks, then sleeps a few milliseconds, and looks once more after the deadline.
    func receive(timeout: Duration) async throws -> (payload: [UInt8], source: String)? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let datagram = receiveNow() { return datagram }
            if ContinuousClock.now >= deadline { return nil }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    private func receiveNow() -> (payload: [UInt8], source: String)? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 0) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 2048)
        var from = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length) }
            }
        }
        guard count >= 0 else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        inet_ntop(AF_INET, &from.sin_addr, &text, socklen_t(text.count))
        return (Array(buffer.prefix(count)), String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// `frame`'s IPv4 packet inside an IPv4 header from `from` to `to` (protocol 4).
private func ipip(_ frame: [UInt8], from: String, to: String) -> [UInt8] {
    let inner = Array(frame[14...])
    var outer: [UInt8] = [0x45, 0, UInt8((20 + inner.count) >> 8), UInt8((20 + inner.count) & 0xff),
                          0, 0, 0x40, 0, 64, 4, 0, 0]
    outer += IPAddress(from)!.bytes + IPAddress(to)!.bytes
    let sum = internetChecksum(outer)
    outer[10] = UInt8(sum >> 8)
    outer[11] = UInt8(sum & 0xff)
    return Array(frame.prefix(14)) + outer + inner
}

@Suite("lbctl decap", .enabled(if: getuid() == 0, "needs root: namespaces, XDP and bpffs"))
struct DecapCommandTests {
    @Test("attach hooks the decapsulator with the interface's addresses and lo's VIPs; re-running it replaces them; detach removes it and its pins")
    func attachReattachDetach() async throws {
        try await DecapLab.with { lab in

            let attach = try await lab.lbctl("decap", "attach", "bk0")
            #expect(attach.status == 0, "\(attach)")
            #expect(attach.stdout.contains("local: \(DecapLab.backendAddress)\n"), "\(attach)")
            #expect(attach.stdout.contains("vips: \(DecapLab.vip)\n"), "lo's 127.0.0.1 is no VIP: \(attach)")
            #expect(attach.stdout.contains("gue_port: 6080\n"), "GUE on its default port: \(attach)")
            let id = try await lab.namespace.xdpProgramID(of: "bk0")
            #expect(id != nil, "the program is attached")
            for name in lab.decapPins { #expect(lab.pinned(name), "\(name) is pinned") }

            let again = try await lab.lbctl("decap", "attach", "bk0", "--vip", "198.51.100.78", "--vip", "2001:db8::78",
                                            "--local", "10.88.0.9", "--gue-port", "0")
            #expect(again.status == 0, "\(again)")
            #expect(again.stdout.contains("gue_port: off\n"), "\(again)")
            #expect(again.stdout.contains("already attached"), "\(again)")
            #expect(again.stdout.contains("vips: 198.51.100.78 2001:db8::78\n") && again.stdout.contains("local: 10.88.0.9\n"),
                    "\(again)")
            #expect(try await lab.namespace.xdpProgramID(of: "bk0") == id, "the same program stays")

            let detach = try await lab.lbctl("decap", "detach", "bk0")
            #expect(detach.status == 0, "\(detach)")
            #expect(try await lab.namespace.xdpProgramID(of: "bk0") == nil)
            for name in lab.decapPins { #expect(!lab.pinned(name), "\(name) is unpinned") }
            #expect(!FileManager.default.fileExists(atPath: lab.pin), "the empty pin directory is removed")

            let twice = try await lab.lbctl("decap", "detach", "bk0")
            #expect(twice.status == 0 && twice.stdout.contains("no decapsulator was attached"), "\(twice)")
        }
    }

    @Test("bad addresses, no VIP and an unknown interface are bad input (exit 2): nothing is attached or pinned")
    func badInput() async throws {
        try await DecapLab.with(vipOnLo: false) { lab in

            let badVIP = try await lab.lbctl("decap", "attach", "bk0", "--vip", "198.51.100.300")
            #expect(badVIP.status == 2, "\(badVIP)")
            #expect(badVIP.stderr.contains("--vip") && badVIP.stderr.contains("198.51.100.300"), "\(badVIP)")

            let badLocal = try await lab.lbctl("decap", "attach", "bk0", "--vip", DecapLab.vip, "--local", "fe80::1%bk0")
            #expect(badLocal.status == 2, "\(badLocal)")
            #expect(badLocal.stderr.contains("--local") && badLocal.stderr.contains("fe80::1%bk0"), "\(badLocal)")

            let noVIP = try await lab.lbctl("decap", "attach", "bk0")
            #expect(noVIP.status == 2, "\(noVIP)")
            #expect(noVIP.stderr.contains("no VIP on lo and no --vip given"), "\(noVIP)")

            let badPort = try await lab.lbctl("decap", "attach", "bk0", "--vip", DecapLab.vip, "--gue-port", "65536")
            #expect(badPort.status == 2 && badPort.stderr.contains("gue-port"), "\(badPort)")

            let noInterface = try await lab.lbctl("decap", "attach", "nosuch0", "--vip", DecapLab.vip)
            #expect(noInterface.status == 2, "\(noInterface)")

            #expect(try await lab.namespace.xdpProgramID(of: "bk0") == nil)
            #expect(!FileManager.default.fileExists(atPath: lab.pin), "nothing was pinned")
        }
    }

    @Test("another XDP program on the interface is an error (exit 1) and stays attached")
    func anotherProgram() async throws {
        try await DecapLab.with { lab in
            let other = try await lab.namespace.attachXDPPass(to: "bk0")

            let attach = try await lab.lbctl("decap", "attach", "bk0")
            #expect(attach.status == 1, "\(attach)")
            #expect(attach.stderr.contains("another XDP program"), "\(attach)")
            let detach = try await lab.lbctl("decap", "detach", "bk0")
            #expect(detach.status == 1, "\(detach)")
            #expect(try await lab.namespace.xdpProgramID(of: "bk0") == other)
            #expect(!FileManager.default.fileExists(atPath: "\(lab.pin)/sl_decap"))
        }
    }

    @Test("detach removes only the decapsulator's pins: the balancer's under the same pin path stay")
    func besideTheBalancer() async throws {
        try await DecapLab.with { lab in
            let balancer = try await lab.lbctl("attach", "cl0", "--mode", "generic", "--gateway-mac", "02:00:00:00:00:01")
            #expect(balancer.status == 0, "\(balancer)")
            let attach = try await lab.lbctl("decap", "attach", "bk0", "--mode", "generic")
            #expect(attach.status == 0, "\(attach)")

            let detach = try await lab.lbctl("decap", "detach", "bk0")
            #expect(detach.status == 0, "\(detach)")
            for name in lab.decapPins { #expect(!lab.pinned(name), "\(name) is unpinned") }
            #expect(lab.pinned("sl_balancer") && lab.pinned("sl_conntrack"), "the balancer's pins stay")
            #expect(try await lab.namespace.xdpProgramID(of: "cl0") != nil, "the balancer stays attached")
            #expect(try await lab.lbctl("detach", "cl0").status == 0)
        }
    }

    @Test("a tunnelled frame reaches a UDP socket on the VIP once the decapsulator runs, and not before")
    func realFrameIsDelivered() async throws {
        try await DecapLab.with { lab in
            let socket = try await lab.namespace.run { try UDPSocket(binding: DecapLab.vip, port: 7777) }
            let raw = try await RawSocket.open(interface: "cl0", in: lab.namespace)

            var builder = PacketBuilder()
            builder.destinationMAC = try await lab.namespace.macAddress(of: "bk0")
            builder.sourceMAC = try await lab.namespace.macAddress(of: "cl0")
            let client = builder.udp(from: "203.0.113.5", 40000, to: DecapLab.vip, 7777, payload: Array("through the tunnel".utf8))
            let frame = ipip(client, from: DecapLab.peerAddress, to: DecapLab.backendAddress)

            // Without the decapsulator this kernel (no ipip driver) cannot deliver it.
            try raw.send(frame)
            #expect(try await socket.receive(timeout: .milliseconds(500)) == nil, "the tunnel was delivered without decapsulation")

            let attach = try await lab.lbctl("decap", "attach", "bk0")
            try #require(attach.status == 0, "\(attach)")
            try raw.send(frame)
            let received = try await socket.receive(timeout: .seconds(3))
            #expect(received?.payload == Array("through the tunnel".utf8), "the inner datagram reaches the VIP's socket")
            #expect(received?.source == "203.0.113.5", "from the client's address")

            #expect(try await lab.lbctl("decap", "detach", "bk0").status == 0)
        }
    }
}
