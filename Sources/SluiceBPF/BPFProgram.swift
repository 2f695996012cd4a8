// A loaded BPF program: its descriptor, pinning, identity, and BPF_PROG_TEST_RUN.
import CLibbpf
import Glibc

public final class BPFProgram: @unchecked Sendable {
    public let fd: Int32
    public let name: String
    private let ownsDescriptor: Bool
    private let owner: AnyObject?

    init(borrowing fd: Int32, name: String, owner: AnyObject) {
        self.fd = fd
        self.name = name
        self.ownsDescriptor = false
        self.owner = owner
    }

    private init(owning fd: Int32, name: String) {
        self.fd = fd
        self.name = name
        self.ownsDescriptor = true
        self.owner = nil
    }

    deinit { if ownsDescriptor { close(fd) } }

    public static func openPinned(_ path: String) throws(BPFError) -> BPFProgram {
        BPFProgram(owning: try check(bpf_obj_get(path), "bpf_obj_get", path), name: path)
    }

    public static func open(id: UInt32) throws(BPFError) -> BPFProgram {
        BPFProgram(owning: try check(bpf_prog_get_fd_by_id(id), "bpf_prog_get_fd_by_id", "id \(id)"), name: "id \(id)")
    }

    public func pin(at path: String) throws(BPFError) {
        try check(bpf_obj_pin(fd, path), "bpf_obj_pin", path)
    }

    /// The kernel's id and name of this program.
    public func identity() throws(BPFError) -> (id: UInt32, name: String) {
        var info = bpf_prog_info()
        var len = UInt32(MemoryLayout<bpf_prog_info>.size)
        try check(bpf_obj_get_info_by_fd(fd, &info, &len), "bpf_obj_get_info_by_fd", name)
        let progName = withUnsafeBytes(of: info.name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return (info.id, progName)
    }

    public struct TestRun: Sendable {
        public var verdict: UInt32
        public var output: [UInt8]
        /// Mean time per repetition as the kernel measured it.
        public var durationNanoseconds: UInt32
    }

    /// Runs the program once (or `repetitions` times) on `packet` with
    /// BPF_PROG_TEST_RUN. With repetitions > 1 the kernel does not restore the
    /// frame between passes (see docs/DEVELOPING.md, "Measuring").
    public func testRun(_ packet: [UInt8], repetitions: UInt32 = 1, outputCapacity: Int = 4096) throws(BPFError) -> TestRun {
        var output = [UInt8](repeating: 0, count: max(outputCapacity, packet.count + 256))
        var opts = bpf_test_run_opts()
        opts.sz = MemoryLayout<bpf_test_run_opts>.size
        opts.repeat = Int32(repetitions)
        let rc = packet.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                opts.data_in = input.baseAddress
                opts.data_size_in = UInt32(input.count)
                opts.data_out = out.baseAddress
                opts.data_size_out = UInt32(out.count)
                return bpf_prog_test_run_opts(fd, &opts)
            }
        }
        try check(rc, "bpf_prog_test_run_opts", name)
        return TestRun(verdict: opts.retval, output: Array(output.prefix(Int(opts.data_size_out))),
                       durationNanoseconds: opts.duration)
    }
}
