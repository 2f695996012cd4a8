// The live benchmark's two namespaces: a generator namespace and a balancer
// namespace joined by one veth pair, the sink on the generator's end, the
// balancer (or the MAC-swap floor) on the other.
import CLibbpf
import CSluice
import Foundation
import Glibc
import SluiceBPF
import SluiceControl
import SluiceCore
import SluiceTestSupport

/// Shared with the signal handler's queue, which only calls close() (locked).
final class LiveTestbed: @unchecked Sendable {
    /// The service the balancer serves: one IPv4 VIP, TCP, ten backends.
    static let vip = "198.51.100.10"
    static let port: UInt16 = 80
    /// Clients come from the benchmarking range (RFC 2544).
    static let client = "198.18.0.1"
    static let clientPort: UInt16 = 10000
    static let serviceFile = """
        node:
          source_v4: 192.0.2.10
        services:
          - name: bench
            vip: \(vip)
            port: \(port)
            protocol: tcp
            backends:
        \((1...10).map { "      - { address: 10.1.0.\($0) }" }.joined(separator: "\n"))

        """

    enum Forwarder { case balancer, swap }

    let programs: LivePrograms
    let generatorNamespace: TestNamespace
    let balancerNamespace: TestNamespace
    let bpffs: BPFFSMount
    /// Interface names carry a random tag, so the NAPI threads (`napi/NAME-ID`)
    /// of this run can be told from other runs'.
    let generatorInterface: String
    let balancerInterface: String
    var pinPath: String { bpffs.path + "/lb" }
    private(set) var generatorIndex: UInt32 = 0
    private(set) var balancerIndex: Int32 = 0
    private(set) var generatorMAC: [UInt8] = []
    private(set) var balancerMAC: [UInt8] = []
    private(set) var dataplane: Dataplane?
    private(set) var forwarder: Forwarder?
    private let lock = NSLock()
    private var closed = false

    init(programs: LivePrograms) throws {
        self.programs = programs
        let tag = String(format: "%04x", UInt32.random(in: 0...0xffff))
        generatorInterface = "slg\(tag)"
        balancerInterface = "slb\(tag)"
        // The test-support helpers are async; this runs on the bench's synchronous main thread.
        let generator = try Blocking.run { try await TestNamespace(prefix: "slbench-gen") }
        generatorNamespace = generator
        do {
            balancerNamespace = try Blocking.run { try await TestNamespace(prefix: "slbench-lb") }
        } catch {
            removeNamespaces([generator])
            throw error
        }
        do {
            bpffs = try BPFFSMount()
        } catch {
            removeNamespaces([generatorNamespace, balancerNamespace])
            throw error
        }
        do {
            try setUp()
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Removes both namespaces (with them the veths and their XDP programs),
    /// the balancer's pins and the private bpffs. Safe to call twice, and from
    /// a signal handler's queue.
    func close() {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        removeNamespaces([generatorNamespace, balancerNamespace])
        Dataplane.removePins(at: pinPath)
        bpffs.close()
    }

    /// Names left behind, if any (for the caller's check).
    var leftovers: [String] {
        let names = [generatorNamespace.name, balancerNamespace.name]
        return (try? Blocking.run {
            var left: [String] = []
            for name in names { if await TestNamespace.exists(name) { left.append(name) } }
            return left
        }) ?? names
    }

    private func setUp() throws {
        let generator = generatorNamespace, balancer = balancerNamespace
        let generatorName = generatorInterface, balancerName = balancerInterface
        (generatorMAC, balancerMAC) = try Blocking.run {
            try await generator.ip("link", "add", generatorName, "type", "veth", "peer", "name", balancerName, "netns", balancer.name)
            try await generator.ip("link", "set", generatorName, "up")
            try await balancer.ip("link", "set", balancerName, "up")
            return (try await generator.macAddress(of: generatorName), try await balancer.macAddress(of: balancerName))
        }

        // The sink: counts and drops what comes back; also what lets the
        // balancer's XDP_TX frames into the generator's veth at all.
        let sink = programs.sink
        generatorIndex = try inGenerator {
            let index = if_nametoindex(generatorName)
            guard index != 0 else { throw LiveError("no interface \(generatorName)") }
            try XDP.attach(sink, ifindex: Int32(index), mode: .native)
            return index
        }

        // The balancer, attached as lbctl attaches it, its next hop the generator.
        let pin = pinPath
        let gateway = MACAddress(bytes: generatorMAC)
        balancerIndex = try inBalancer {
            _ = try Attacher.attach(interface: balancerName, mode: .native, gateway: gateway, pinPath: pin,
                                    conntrackSize: UInt32(SL_CT_DEFAULT_SIZE))
            return Int32(if_nametoindex(balancerName))
        }
        forwarder = .balancer
        let dataplane = try Dataplane.open(pinPath: pinPath)
        _ = try dataplane.apply(ServiceFileParser.parse(Self.serviceFile, file: "live-bench.yaml"))
        self.dataplane = dataplane
    }

    func inGenerator<T>(cpu: Int? = nil, _ body: @escaping () throws -> T) throws -> T {
        try LiveSystem.run(inNamespace: generatorNamespace.path, cpu: cpu, body)
    }

    func inBalancer<T>(_ body: @escaping () throws -> T) throws -> T {
        try LiveSystem.run(inNamespace: balancerNamespace.path, body)
    }

    /// Puts the balancer or the MAC-swap floor on the balancer's veth, by an
    /// atomic replace (the veth keeps its NAPI context and thread).
    func use(_ wanted: Forwarder) throws {
        guard wanted != forwarder, let current = forwarder, let dataplane else { return }
        let program = { (f: Forwarder) in f == .balancer ? dataplane.program : self.programs.swap }
        let new = program(wanted), old = program(current), index = balancerIndex
        try inBalancer { try XDP.attach(new, ifindex: index, mode: .native, replacing: old) }
        forwarder = wanted
    }

    /// The balancer's own count of what it did (zero before it is loaded).
    func balancerStats() throws -> NodeStats {
        guard let dataplane else { return NodeStats() }
        return try dataplane.nodeCounters()
    }

    /// Fills the connection table to capacity with flows no generated frame
    /// belongs to (clients 10.128.0.0/12 to the VIP), as a node that has run a
    /// while has it: the balancer never deletes entries, so a new flow then
    /// evicts the least recently used one. Returns how many were written.
    func fillConntrack() throws -> Int {
        guard let dataplane else { return 0 }
        let count = dataplane[.conntrack].info.maxEntries
        precondition(dataplane[.conntrack].info.keySize == MemoryLayout<sl_flow_key>.size
                     && dataplane[.conntrack].info.valueSize == MemoryLayout<sl_ct_entry>.size)
        guard let vip = IPAddress(Self.vip)?.words.0 else { throw LiveError("bad VIP \(Self.vip)") }
        var keys = [sl_flow_key](repeating: sl_flow_key(), count: count)
        var values = [sl_ct_entry](repeating: sl_ct_entry(), count: count)
        for i in 0..<count {
            keys[i].src.0 = (UInt32(0x0a80_0000) + UInt32(i)).bigEndian
            keys[i].dst.0 = vip
            keys[i].sport = UInt16(40000).bigEndian
            keys[i].dport = Self.port.bigEndian
            keys[i].proto = 6
            keys[i].family = UInt8(SL_FAMILY_V4.rawValue)
            values[i].backend_id = UInt32(i % 10)
        }
        var done = 0
        let chunk = 65536
        while done < count {
            var n = UInt32(min(chunk, count - done))
            var opts = bpf_map_batch_opts()
            opts.sz = MemoryLayout<bpf_map_batch_opts>.size
            opts.elem_flags = UInt64(BPF_ANY)
            let rc = keys.withUnsafeBytes { k in
                values.withUnsafeBytes { v in
                    bpf_map_update_batch(dataplane[.conntrack].fd, k.baseAddress! + done * MemoryLayout<sl_flow_key>.stride,
                                         v.baseAddress! + done * MemoryLayout<sl_ct_entry>.stride, &n, &opts)
                }
            }
            guard rc == 0 else { throw LiveError("filling sl_conntrack: \(String(cString: strerror(errno)))") }
            done += Int(n)
        }
        return done
    }

    /// The 64-byte frame the generator sends: TCP from the client to the VIP,
    /// addressed from the generator's veth to the balancer's.
    func frame(flags: Set<TCPFlag>) -> [UInt8] {
        var builder = PacketBuilder()
        builder.sourceMAC = generatorMAC
        builder.destinationMAC = balancerMAC
        let headers = 14 + 20 + 20
        return builder.tcp(from: Self.client, Self.clientPort, to: Self.vip, Self.port, flags: flags,
                           payload: [UInt8](repeating: 0x5a, count: LivePrograms.frameLength - headers))
    }
}

/// Removes `namespaces` (TestNamespace's helpers are async; the bench is synchronous).
private func removeNamespaces(_ namespaces: [TestNamespace]) {
    _ = try? Blocking.run { for namespace in namespaces { await namespace.remove() } }
}
