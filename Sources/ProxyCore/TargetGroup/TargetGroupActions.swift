import NIOCore

/// A backend open the target group keeps waiting, for a writer (a failover) or for an open slot.
/// The runtime keeps the open's promise under this id; the machine keeps only what it decides on.
public struct OpenWaiterID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: OpenWaiterID, rhs: OpenWaiterID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "open-waiter-\(rawValue)" }
}

extension TargetGroupStateMachine {
    /// Why a backend cannot be opened to a writer. `text` is what clients see (wrapped in their
    /// engine's connection error), and must stay word for word: drivers' tests and operators
    /// match on it.
    public enum NoWriterReason: Hashable, Sendable {
        /// The target group is empty.
        case noTargetRegistered
        /// Every target that answers says it is not the writer.
        case noTargetIsWriter
        /// The writer is down; `description` is its health's description, when it has one.
        case writerUnavailable(Target, description: String?)
        /// The open waited its whole time for a writer and none appeared.
        case waitTimedOut

        public var text: String {
            switch self {
            case .noTargetRegistered: return "no database target is registered"
            case .noTargetIsWriter: return "no target is a writer (every reachable target is in recovery)"
            case .writerUnavailable(let writer, let description): return "\(writer): \(description ?? "unavailable")"
            case .waitTimedOut: return "no writer is available (the target group has no healthy primary)"
            }
        }
    }

    /// What a backend open does now (`openRequested`).
    public enum OpenDecision: Hashable, Sendable {
        /// A writer is available: connect to it.
        case proceed
        /// Wait for a writer (a failover, or the first health check): the runtime keeps the open's
        /// promise under this id, until `targetChecked` resumes or refuses it or `waiterTimedOut`.
        case wait(OpenWaiterID)
        /// Fail at once: waiting would only delay this error.
        case fail(NoWriterReason)
    }

    /// What an open asking for a slot does (`openSlotRequested`).
    public enum OpenSlotDecision: Hashable, Sendable {
        /// Fewer than the limit are opening: this one proceeds (and must call `openFinished`).
        case granted
        /// Wait: a finishing open hands its slot to the oldest queued one (`openFinished`).
        case queued(OpenWaiterID)
    }

    /// The writer changed: the writer's pool retires its backends (they are to the old one) and, when
    /// the new writer's connection limit is known, is resized from it.
    public struct WriterChange: Hashable, Sendable {
        public var old: Target?
        public var new: Target
        public var maxConnections: Int?
    }

    /// A health check got no answer from `target`: its backends would wait for ever for answers that
    /// do not come. They are aborted (the writer's pool when `wasWriter`, and the target's reader
    /// pool if it has one), so that clients mid-transaction get an error now.
    public struct Unresponsive: Hashable, Sendable {
        public var target: Target
        /// The target was the writer when the check reported (before any election it caused).
        public var wasWriter: Bool
        /// The previous check had an answer: the stop is logged (once, not at every check).
        public var newly: Bool
    }

    /// A reader that READ_ONLY endpoints may now use: its pool is made (or resized, if it was
    /// used before) with `maxConnections` (nil: not read yet).
    public struct ReaderActivation: Hashable, Sendable {
        public var target: Target
        public var maxConnections: Int?
    }

    /// Changes of the reader set: readers that left it (failed or promoted) retire their pool (idle
    /// backends close now, the others as they are returned).
    public struct ReaderChanges: Hashable, Sendable {
        public var activate: [ReaderActivation] = []
        public var retire: [Target] = []
    }

    /// What the runtime does after a health check, in this order: refuse the waiters that are not
    /// in a failover, abort an unresponsive target's pools, retire a demoted writer's pool, apply a
    /// writer change (or log that the writer is available again), log a lost writer, resume the
    /// waiters, then apply reader changes.
    public struct TargetCheckedAction: Hashable, Sendable {
        /// Waiters to fail with `refusal` (all with the same reason: it does not depend on the waiter).
        public var refuse: [OpenWaiterID] = []
        public var refusal: NoWriterReason?
        public var unresponsive: Unresponsive?
        public var writerChange: WriterChange?
        /// The writer's check found it up but a reader now (it was demoted while up, not lost):
        /// the writer's pool retires its backends, which are to a server that refuses writes, so
        /// that new transactions wait for the next writer instead of failing there.
        public var writerDemoted: Target?
        /// The target group has a writer again (logged unless `writerChange` says more).
        public var writerBecameAvailable = false
        /// The target group lost its writer: new opens wait for one (up to the borrow timeout).
        public var writerBecameUnavailable = false
        /// Waiters to resume: a writer is available.
        public var resume: [OpenWaiterID] = []
        public var readers = ReaderChanges()

        public init() {}
    }
}
