// A private bpffs instance per test, so tests that pin maps and programs never
// see each other's pins (or the host's) and leave nothing behind.
//
// /sys/fs/bpf is not necessarily a bpffs mount on a test machine, and sharing
// one would let parallel tests collide; each BPFFSMount mounts a fresh bpffs on
// a unique directory under /tmp and lazily unmounts and removes it on close()
// or deinit, also when the test fails.

import Glibc

public struct BPFFSMountError: Error, CustomStringConvertible {
    public let description: String
}

public final class BPFFSMount: @unchecked Sendable {
    /// The mount point; pin under it (e.g. `path + "/lb"`).
    public let path: String
    private var mounted = true

    public init() throws {
        var template = Array("/tmp/sluice-test-bpffs-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BPFFSMountError(description: "mkdtemp under /tmp: \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
        guard mount("bpf", path, "bpf", 0, "mode=0700") == 0 else {
            let reason = String(cString: strerror(errno))
            rmdir(path)
            mounted = false
            throw BPFFSMountError(description: "mount -t bpf bpf \(path): \(reason) (the data-plane tests need root)")
        }
    }

    /// Unmounts (MNT_DETACH, so open descriptors do not keep it busy) and
    /// removes the directory. Pinned objects go away with the mount once
    /// nothing else references them. Safe to call twice.
    public func close() {
        guard mounted else { return }
        mounted = false
        umount2(path, Int32(MNT_DETACH))
        rmdir(path)
    }

    deinit { close() }
}
