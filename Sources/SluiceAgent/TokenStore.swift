// The bearer token that guards the control API's writes, re-read when its file changes
// (WatchedFile), so a token can be rotated without restarting the agent (and so without a
// gap in /metrics or the API). An unreadable or empty file keeps the previous token
// (logged as a warning) until the file changes again.
import Foundation
import Logging
import SluiceControl

public final class TokenStore: Sendable {
    private let file: WatchedFile<[UInt8]>

    public var path: String { file.path }

    /// Reads the token now; a missing, unreadable or empty file is an error here (the agent
    /// does not start without a token).
    public init(config: AgentConfig, interval: Duration = .seconds(1),
                logger: Logger = Logger(label: "sluice.agent")) throws(ControlError) {
        let path = config.tokenFile
        do {
            file = try WatchedFile(path: path, interval: interval, read: { Array(try config.readToken().utf8) }) { result in
                switch result {
                case .success: logger.notice("token_file \(path) changed: the new token is in force")
                case let .failure(error): logger.warning("token_file \(path) changed but gives no token (\(error)); keeping the previous token")
                }
            }
        } catch let error as ControlError {
            throw error
        } catch {
            throw .badInput("token_file \(path): \(error)")
        }
    }

    /// The token in force.
    public func current() -> [UInt8] { file.current() }

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
}
