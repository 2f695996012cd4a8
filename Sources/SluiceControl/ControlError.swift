// The errors lbctl and the agent report, split by whose fault they are (exit 2 vs exit 1).
import SluiceBPF
import SluiceCore

public struct ControlError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable { case badInput, runtime }
    public let kind: Kind
    public let message: String

    public static func badInput(_ message: String) -> ControlError { ControlError(kind: .badInput, message: message) }
    public static func runtime(_ message: String) -> ControlError { ControlError(kind: .runtime, message: message) }

    public var description: String { message }

    /// Wraps a libbpf failure with what we were doing and, for EPERM, the likely cause.
    public static func bpf(_ error: BPFError, while doing: String) -> ControlError {
        var text = "\(doing): \(error)"
        if error.isPermission { text += " (lbctl needs root, or CAP_BPF and CAP_NET_ADMIN)" }
        return .runtime(text)
    }
}

extension ConfigError {
    public var asControlError: ControlError { .badInput(description) }
}
