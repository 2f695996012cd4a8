// Watching for a change that a test must time: a poll that runs a command again and
// again, driven by a dispatch timer and the commands' termination handlers, so that
// neither when it looks nor when it notices depends on Swift concurrency's pool, which
// other suites may keep busy for seconds (an awaiting task can resume that late). No
// thread is blocked either: the timer and the handlers run only while there is work.
import Foundation

public final class CommandWatch: @unchecked Sendable {
    /// One look: the commands' results (run side by side) and when it began and ended.
    public struct Look: Sendable {
        public var results: [CommandResult]
        public var started: ContinuousClock.Instant
        /// When the last of the commands exited: the latest the seen state can date from.
        public var finished: ContinuousClock.Instant
    }

    /// How a watch ended: the first look that satisfied the condition, or the last look
    /// when `timeout` passed first (nil if not a single look could be made, with why), and
    /// the look before it: a change the satisfying look saw happened after `previous` began.
    public struct Outcome: Sendable {
        public var satisfied: Bool
        public var look: Look?
        public var previous: Look?
        public var error: String?
        /// Every look, in order (for a failure's message).
        public var looks: [Look] = []
    }

    private let commands: [(executable: String, arguments: [String])]
    private let interval: Duration
    private let deadline: ContinuousClock.Instant
    private let condition: @Sendable ([CommandResult]) -> Bool
    private let queue = DispatchQueue(label: "sluice-command-watch")
    // Guarded by `queue`.
    private var ended: Outcome?
    private var looks: [Look] = []
    private var waiters: [CheckedContinuation<Outcome, Never>] = []

    /// Starts watching at once: runs `commands` side by side, and again `interval` after
    /// each look, until `condition` holds for a look's results or `timeout` has passed.
    /// `outcome` awaits the end.
    public init(_ commands: [(String, [String])], every interval: Duration = .milliseconds(100), timeout: Duration,
                until condition: @escaping @Sendable ([CommandResult]) -> Bool) {
        self.commands = commands.map { (executable: $0.0, arguments: $0.1) }
        self.interval = interval
        deadline = ContinuousClock.now + timeout
        self.condition = condition
        queue.async { self.look() }
    }

    /// The end of the watch.
    public var outcome: Outcome {
        get async {
            await withCheckedContinuation { continuation in
                queue.async {
                    if let ended = self.ended { continuation.resume(returning: ended) } else { self.waiters.append(continuation) }
                }
            }
        }
    }

    /// The results of one look as they come in; guarded by `queue`.
    private final class Pending: @unchecked Sendable {
        var results: [CommandResult?]
        var left: Int
        init(_ count: Int) {
            results = [CommandResult?](repeating: nil, count: count)
            left = count
        }
    }

    /// On `queue`.
    private func look() {
        let started = ContinuousClock.now
        let pending = Pending(commands.count)
        for (index, command) in commands.enumerated() {
            do {
                try Command.start(command.executable, command.arguments) { result in
                    self.queue.async {
                        switch result {
                        case .success(let value): pending.results[index] = value
                        case .failure(let error): self.end(Outcome(satisfied: false, error: "\(error)"))
                        }
                        pending.left -= 1
                        if pending.left == 0, self.ended == nil {
                            self.judge(Look(results: pending.results.compactMap { $0 }, started: started, finished: .now))
                        }
                    }
                }
            } catch {
                end(Outcome(satisfied: false, error: "\(error)"))
                return
            }
        }
    }

    /// On `queue`: the look is in.
    private func judge(_ look: Look) {
        let previous = looks.last
        looks.append(look)
        if condition(look.results) { return end(Outcome(satisfied: true, look: look, previous: previous)) }
        // Looks once more after the wait before it reads the clock, as the async polls do.
        guard look.started < deadline else { return end(Outcome(satisfied: false, look: look, previous: previous)) }
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        queue.asyncAfter(deadline: .now() + seconds) { self.look() }
    }

    /// On `queue`.
    private func end(_ outcome: Outcome) {
        guard ended == nil else { return }
        var outcome = outcome
        outcome.looks = looks
        ended = outcome
        for waiter in waiters { waiter.resume(returning: outcome) }
        waiters = []
    }
}
