// Routes libbpf's own messages (verifier logs, pin mismatches) to stderr, warnings only.
import CLibbpf
import Glibc

public enum LibbpfLog {
    /// Installs a printer that keeps libbpf's warnings (they carry the
    /// verifier log when a load fails) and drops its info/debug chatter.
    public static func warningsToStderr() {
        libbpf_set_print { level, format, args in
            guard level == LIBBPF_WARN, let format, let args else { return 0 }
            var buffer = [CChar](repeating: 0, count: 4096)
            let n = vsnprintf(&buffer, buffer.count, format, args)
            buffer.withUnsafeBufferPointer { p in _ = write(STDERR_FILENO, p.baseAddress!, strlen(p.baseAddress!)) }
            return n
        }
    }
}
