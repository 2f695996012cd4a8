// The one place where libbpf's and the kernel's error conventions become Swift errors.
import CLibbpf
import Glibc

/// A failed libbpf or bpf(2) call: which function, on what, and the errno.
public struct BPFError: Error, CustomStringConvertible, Sendable, Equatable {
    public let function: String
    public let context: String
    public let errno: Int32

    public init(function: String, context: String, errno: Int32) {
        self.function = function
        self.context = context
        self.errno = errno
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return context.isEmpty ? "\(function): \(reason)" : "\(function) (\(context)): \(reason)"
    }

    public var isNotFound: Bool { errno == ENOENT }
    public var isPermission: Bool { errno == EPERM || errno == EACCES }
}

/// libbpf's int-returning calls give `-errno`; the raw bpf(2) wrappers in
/// `bpf.h` give -1 and set `errno`. Both end here.
@discardableResult
func check(_ rc: Int32, _ function: String, _ context: @autoclosure () -> String = "") throws(BPFError) -> Int32 {
    guard rc < 0 else { return rc }
    let code = rc == -1 && Glibc.errno != 0 ? Glibc.errno : -rc
    throw BPFError(function: function, context: context(), errno: code)
}

/// libbpf's pointer-returning calls give NULL and set `errno`.
func check<T>(_ pointer: T?, _ function: String, _ context: @autoclosure () -> String = "") throws(BPFError) -> T {
    guard let pointer else {
        throw BPFError(function: function, context: context(), errno: Glibc.errno == 0 ? EINVAL : Glibc.errno)
    }
    return pointer
}
