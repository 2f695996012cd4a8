// A value read from a file (a secret the operator rotates: the API token, the sync keys)
// and read again when the file changes, so it can be replaced without restarting the
// agent. At most once per `interval`, on a call for the value, the file is stat'ed; when
// its device, inode, size, mtime or ctime differ from the last look, it is read again. A
// read that fails keeps the previous value (reported to `changed`) until the file changes
// again.
import Glibc
import Synchronization

final class WatchedFile<Value: Sendable & Equatable>: Sendable {
    /// What identifies one version of the file: a rename over it changes the inode, a
    /// rewrite in place the size or the times.
    struct Stamp: Equatable {
        var device: UInt64, inode: UInt64, size: Int64
        var mtime: Int, mtimeNanoseconds: Int, ctime: Int, ctimeNanoseconds: Int
    }

    private struct State {
        var value: Value
        var stamp: Stamp?
        var lastCheck: ContinuousClock.Instant
    }

    let path: String
    private let interval: Duration
    private let read: @Sendable () throws -> Value
    private let changed: @Sendable (Result<Value, any Error>) -> Void
    private let state: Mutex<State>

    /// Reads the value now: a failure here is the caller's error. `changed` hears of each
    /// later read that gave another value, or failed.
    init(path: String, interval: Duration, read: @escaping @Sendable () throws -> Value,
         changed: @escaping @Sendable (Result<Value, any Error>) -> Void) rethrows {
        self.path = path
        self.interval = interval
        self.read = read
        self.changed = changed
        let stamp = Self.stamp(of: path)
        state = Mutex(State(value: try read(), stamp: stamp, lastCheck: .now))
    }

    /// The value in force, after reading the file again if it changed and the last look is
    /// `interval` old.
    func current() -> Value {
        state.withLock { state in
            let now = ContinuousClock.now
            guard now - state.lastCheck >= interval else { return state.value }
            state.lastCheck = now
            let stamp = Self.stamp(of: path)
            guard stamp != state.stamp else { return state.value }
            state.stamp = stamp
            do {
                let value = try read()
                if value != state.value {
                    state.value = value
                    changed(.success(value))
                }
            } catch {
                changed(.failure(error))
            }
            return state.value
        }
    }

    /// stat(2) of `path` (following a symlink, as a rotated secret often is), nil if it fails.
    static func stamp(of path: String) -> Stamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Stamp(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                     mtime: info.st_mtim.tv_sec, mtimeNanoseconds: info.st_mtim.tv_nsec,
                     ctime: info.st_ctim.tv_sec, ctimeNanoseconds: info.st_ctim.tv_nsec)
    }
}
