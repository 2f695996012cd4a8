// The bearer token that guards the control API's writes, re-read when its file changes,
// so a token can be rotated without restarting the agent (and so without a gap in
// /metrics or the API). On a write request, at most once per `interval`, the file is
// stat'ed; when its device, inode, size, mtime or ctime differ from the last look, it is
// read again. An unreadable or empty file keeps the previous token (logged as a warning)
// until the file changes again.
import Foundation
import Glibc
import Logging
import SluiceControl
import Synchronization

public final class TokenStore: Sendable {
    /// What identifies one version of the file: a rename over it changes the inode, a
    /// rewrite in place the size or the times.
    struct Stamp: Equatable {
        var device: UInt64, inode: UInt64, size: Int64
        var mtime: Int, mtimeNanoseconds: Int, ctime: Int, ctimeNanoseconds: Int
    }

    struct State {
        var token: [UInt8]
        var stamp: Stamp?
        var lastCheck: ContinuousClock.Instant
    }

    public let path: String
    private let config: AgentConfig
    private let interval: Duration
    private let logger: Logger
    private let state: Mutex<State>

    /// Reads the token now; a missing, unreadable or empty file is an error here (the agent
    /// does not start without a token).
    public init(config: AgentConfig, interval: Duration = .seconds(1),
                logger: Logger = Logger(label: "sluice.agent")) throws(ControlError) {
        self.config = config
        path = config.tokenFile
        self.interval = interval
        self.logger = logger
        let stamp = Self.stamp(of: config.tokenFile)
        let token = Array(try config.readToken().utf8)
        state = Mutex(State(token: token, stamp: stamp, lastCheck: .now))
    }

    /// The token in force, after re-reading the file if it changed and the last look is
    /// `interval` old.
    public func current() -> [UInt8] {
        state.withLock { state in
            let now = ContinuousClock.now
            guard now - state.lastCheck >= interval else { return state.token }
            state.lastCheck = now
            let stamp = Self.stamp(of: path)
            guard stamp != state.stamp else { return state.token }
            state.stamp = stamp
            do {
                let token = Array(try config.readToken().utf8)
                if token != state.token {
                    state.token = token
                    logger.notice("token_file \(path) changed: the new token is in force")
                }
            } catch {
                logger.warning("token_file \(path) changed but gives no token (\(error)); keeping the previous token")
            }
            return state.token
        }
    }

    /// Compares the bearer token in constant time (for a given token length).
    public func isAuthorized(_ header: String?) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let token = current()
        let given = Array(header.dropFirst("Bearer ".count).trimmingCharacters(in: .whitespaces).utf8)
        var difference = UInt8(given.count == token.count ? 0 : 1)
        for i in 0..<token.count {
            difference |= token[i] ^ (i < given.count ? given[i] : 0)
        }
        return difference == 0
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
