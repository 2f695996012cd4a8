// What the balancer and the decapsulator share: the bpffs pin directory, and hooking a pinned XDP program to an interface.
import CLibbpf
import Glibc
import SluiceBPF

/// The bpffs directory programs and maps are pinned in.
enum PinDirectory {
    static let bpffsRoot = "/sys/fs/bpf"

    static func isBPFFS(_ path: String) -> Bool {
        var fs = statfs()
        let bpfFSMagic = 0xcafe_4a11
        return statfs(path, &fs) == 0 && Int(fs.f_type) == bpfFSMagic
    }

    /// The pin path must be a directory on bpffs; create it when it is not
    /// there. Like systemd and Cilium, mount bpffs at /sys/fs/bpf when the
    /// pin path is under it and nothing is mounted there yet.
    static func prepare(_ pinPath: String) throws(ControlError) {
        guard pinPath.hasPrefix("/") else { throw .badInput("--pin-path: \(pinPath) is not an absolute path") }
        if pinPath.hasPrefix(bpffsRoot + "/"), !isBPFFS(bpffsRoot), access(bpffsRoot, F_OK) == 0,
           mount("bpf", bpffsRoot, "bpf", 0, "mode=0700") != 0 {
            throw .runtime("cannot mount bpffs at \(bpffsRoot): \(String(cString: strerror(errno)))")
        }
        var components: [String] = []
        for part in pinPath.split(separator: "/") {
            components.append(String(part))
            let path = "/" + components.joined(separator: "/")
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw .runtime("cannot create the pin directory \(path): \(String(cString: strerror(errno)))")
            }
        }
        guard isBPFFS(pinPath) else {
            throw .runtime("--pin-path: \(pinPath) is not on a BPF filesystem (mount bpffs: mount -t bpf bpf /sys/fs/bpf)")
        }
    }

    /// Unlinks `names` under `pinPath`, then the directory if it is now empty.
    static func unpin(_ names: [String], at pinPath: String) {
        for name in names { unlink("\(pinPath)/\(name)") }
        rmdir(pinPath)
    }
}

/// Hooking a pinned program to interfaces through netlink, with the checks
/// every lbctl attach/detach makes: another program is never replaced or removed.
enum XDPHook {
    /// What is attached to `interface` now.
    static func query(_ interface: NetworkInterface) throws(ControlError) -> XDP.Attachment? {
        do { return try XDP.query(ifindex: interface.index) } catch {
            throw .bpf(error, while: "querying XDP on \(interface.name)")
        }
    }

    /// Throws unless what is attached is nothing or the program `ours`.
    static func refuseOther(_ existing: XDP.Attachment?, ours: UInt32?, on interface: NetworkInterface) throws(ControlError) {
        guard let existing, existing.programID != ours else { return }
        let other = (try? BPFProgram.open(id: existing.programID).identity().name) ?? "?"
        throw .runtime("\(interface.name): another XDP program is already attached (id \(existing.programID), name \"\(other)\", \(existing.mode) mode); detach it first")
    }

    /// Attaches `program` where nothing is attached, explaining a driver that refuses native mode.
    static func attach(_ program: BPFProgram, to interface: NetworkInterface, mode: XDPMode) throws(ControlError) {
        do {
            try XDP.attach(program, ifindex: interface.index, mode: mode)
        } catch {
            if error.errno == EOPNOTSUPP || error.errno == EINVAL, mode == .native {
                throw .runtime("\(interface.name): the driver refused native XDP (\(error)); try --mode generic")
            }
            throw .bpf(error, while: "attaching to \(interface.name)")
        }
    }

    /// Detaches the program `ours` (`what` names it in the error) from
    /// `interface`. False when nothing was attached; an error when another
    /// program is, which stays.
    static func detach(_ interface: NetworkInterface, ours: UInt32?, what: String) throws(ControlError) -> Bool {
        guard let existing = try query(interface) else { return false }
        guard existing.programID == ours else {
            throw .runtime("\(interface.name): the XDP program attached (id \(existing.programID)) is not \(what); leaving it alone")
        }
        do { try XDP.detach(ifindex: interface.index, mode: existing.mode) } catch {
            throw .bpf(error, while: "detaching from \(interface.name)")
        }
        return true
    }

    /// Interfaces of this namespace whose XDP program is `programID`.
    static func attachedInterfaces(programID: UInt32) -> [(name: String, mode: XDPMode)] {
        NetworkInterface.all().compactMap { interface in
            guard let attachment = try? XDP.query(ifindex: interface.index), attachment.programID == programID else { return nil }
            return (interface.name, attachment.mode)
        }
    }

    /// The kernel's id of a (pinned) program.
    static func programID(_ program: BPFProgram) throws(ControlError) -> UInt32 {
        do { return try program.identity().id } catch {
            throw .bpf(error, while: "reading the pinned program's id")
        }
    }
}
