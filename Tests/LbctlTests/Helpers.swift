// Small helpers of the lbctl tests (the service files and the scratch directory they
// share with the agent tests are in SluiceTestSupport's Fixtures).
import SluiceTestSupport
import Testing

/// True when a bpffs is mounted at `path` (see Lab.isMounted).
func isMounted(_ path: String) -> Bool { Lab.isMounted(path) }

/// Expects `object` to be a JSON object with every key of `expected`.
func expectKeys(_ object: Any?, _ expected: [String], in what: String,
                sourceLocation: SourceLocation = #_sourceLocation) {
    let missing = missingKeys(object, expected)
    #expect(missing.isEmpty, "\(what) lacks \(missing) in \(String(describing: object))", sourceLocation: sourceLocation)
}

extension Array where Element == UInt8 {
    /// True when `needle` occurs anywhere in these bytes.
    func containsBytes(_ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        return (0...(count - needle.count)).contains { start in self[start..<(start + needle.count)].elementsEqual(needle) }
    }
}
