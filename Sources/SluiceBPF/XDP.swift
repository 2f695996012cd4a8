// Attaching XDP programs to interfaces through netlink, so they outlive the process.
import CLibbpf
import Glibc

public enum XDPMode: String, Sendable, CaseIterable {
    case native, generic

    var flag: UInt32 { self == .native ? CLibbpf_XDP_FLAGS_DRV_MODE() : CLibbpf_XDP_FLAGS_SKB_MODE() }
}

public enum XDP {
    /// What is attached to an interface: the program id and its mode, if any.
    public struct Attachment: Sendable, Equatable {
        public var programID: UInt32
        public var mode: XDPMode
    }

    public static func query(ifindex: Int32) throws(BPFError) -> Attachment? {
        var opts = bpf_xdp_query_opts()
        opts.sz = libbpfOptsSize(through: \bpf_xdp_query_opts.attach_mode)
        try check(bpf_xdp_query(ifindex, 0, &opts), "bpf_xdp_query", "ifindex \(ifindex)")
        if opts.drv_prog_id != 0 { return Attachment(programID: opts.drv_prog_id, mode: .native) }
        if opts.skb_prog_id != 0 { return Attachment(programID: opts.skb_prog_id, mode: .generic) }
        if opts.hw_prog_id != 0 { return Attachment(programID: opts.hw_prog_id, mode: .native) }
        return nil
    }

    /// Attaches `program`; when `replacing` is given, only if that program is
    /// still the one attached (atomic swap); otherwise only if none is.
    public static func attach(_ program: BPFProgram, ifindex: Int32, mode: XDPMode,
                              replacing old: BPFProgram? = nil) throws(BPFError) {
        var flags = mode.flag
        var opts = bpf_xdp_attach_opts()
        opts.sz = libbpfOptsSize(through: \bpf_xdp_attach_opts.old_prog_fd)
        if let old {
            flags |= CLibbpf_XDP_FLAGS_REPLACE()
            opts.old_prog_fd = old.fd
        } else {
            flags |= CLibbpf_XDP_FLAGS_UPDATE_IF_NOEXIST()
        }
        try check(bpf_xdp_attach(ifindex, program.fd, flags, &opts), "bpf_xdp_attach", "ifindex \(ifindex)")
    }

    public static func detach(ifindex: Int32, mode: XDPMode) throws(BPFError) {
        try check(bpf_xdp_detach(ifindex, mode.flag, nil), "bpf_xdp_detach", "ifindex \(ifindex)")
    }
}
