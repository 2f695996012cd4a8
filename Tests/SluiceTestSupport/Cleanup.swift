// Scoped clean-up that awaits: Swift's `defer` cannot, and a deinit must not block on a
// process, so the fixtures that start processes or build namespaces come with a
// `withX { }` helper built on this.

/// Runs `body`, then `cleanup` whether `body` returned or threw; returns what `body`
/// returned, or rethrows what it threw.
public func withCleanup<T>(_ body: () async throws -> T, cleanup: () async -> Void) async rethrows -> T {
    let value: T
    do {
        value = try await body()
    } catch {
        await cleanup()
        throw error
    }
    await cleanup()
    return value
}
