// Value types shared by the pool state machine and the runtime that drives it.
// Pure Swift: no Foundation, no NIO, no clock reads.

/// Backends are pooled per (database user, database name), and per variant: what else must be
/// the same between a client and the backend serving it (MySQL: the capability flags that shape
/// the wire format, and the handshake's character set; PostgreSQL: nothing, empty).
public struct PoolKey: Hashable, Sendable, CustomStringConvertible {
    /// One reference instead of three strings: the pool copies keys (in its records of
    /// connections and waiters) about a dozen times per transaction, and each copy of three
    /// strings cost three retains and three releases.
    private final class Storage: Sendable {
        let user: String
        let database: String
        let variant: String
        /// Computed once: the pool looks keys up several times per transaction, and hashing two
        /// strings each time showed up in profiles.
        let hash: Int

        init(user: String, database: String, variant: String) {
            self.user = user
            self.database = database
            self.variant = variant
            var hasher = Hasher()
            hasher.combine(user)
            hasher.combine(database)
            hasher.combine(variant)
            self.hash = hasher.finalize()
        }
    }

    private let storage: Storage

    public init(user: String, database: String, variant: String = "") {
        storage = Storage(user: user, database: database, variant: variant)
    }

    public var user: String { storage.user }
    public var database: String { storage.database }
    public var variant: String { storage.variant }

    public static func == (lhs: PoolKey, rhs: PoolKey) -> Bool {
        let (l, r) = (lhs.storage, rhs.storage)
        return l === r || (l.hash == r.hash && l.user == r.user && l.database == r.database && l.variant == r.variant)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(storage.hash)
    }

    /// Without a `Hasher` (FastHash.swift).
    public func _rawHashValue(seed: Int) -> Int {
        poolFastHash(UInt64(bitPattern: Int64(storage.hash)), seed: seed)
    }

    public var description: String { variant.isEmpty ? "\(user)@\(database)" : "\(user)@\(database)[\(variant)]" }
}

/// A backend connection, allocated by the machine (monotonically increasing, never reused).
public struct ConnectionID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int

    public init(_ rawValue: Int) { self.rawValue = rawValue }

    public static func < (lhs: ConnectionID, rhs: ConnectionID) -> Bool { lhs.rawValue < rhs.rawValue }
    /// Without a `Hasher` (FastHash.swift).
    public func _rawHashValue(seed: Int) -> Int { poolFastHash(UInt64(bitPattern: Int64(rawValue)), seed: seed) }
    public var description: String { "conn#\(rawValue)" }
}

/// A borrow request, allocated by the caller. Must be unique among the requests currently
/// waiting. (`PoolDriver` numbers requests in `clientID` and writes the slot where it keeps the
/// waiting requester in `sequence`.)
public struct RequestID: Hashable, Sendable, CustomStringConvertible {
    public var clientID: UInt64
    public var sequence: UInt64

    public init(clientID: UInt64, sequence: UInt64 = 0) {
        self.clientID = clientID
        self.sequence = sequence
    }

    public var description: String { "req#\(clientID).\(sequence)" }

    /// Without a `Hasher` (FastHash.swift); the sequence is folded in with an odd multiplier so
    /// that (client, sequence) pairs do not cancel out.
    public func _rawHashValue(seed: Int) -> Int {
        poolFastHash(clientID ^ (sequence &* 0x9e37_79b9_7f4a_7c15), seed: seed)
    }
}

/// A point on a monotonic clock chosen by the runtime (e.g. `NIODeadline.uptimeNanoseconds`).
/// Arithmetic saturates: it never traps.
public struct PoolInstant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static let zero = PoolInstant(nanoseconds: 0)
    /// The far future; a deadline here is treated as "never".
    public static let distantFuture = PoolInstant(nanoseconds: .max)

    public static func < (lhs: PoolInstant, rhs: PoolInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    /// Saturating: negative durations count as zero, overflow clamps to `distantFuture`.
    public static func + (lhs: PoolInstant, rhs: Duration) -> PoolInstant {
        lhs.advanced(byNanoseconds: rhs.poolNanoseconds)
    }

    public static func += (lhs: inout PoolInstant, rhs: Duration) { lhs = lhs + rhs }

    /// The (signed) duration between two instants.
    public static func - (lhs: PoolInstant, rhs: PoolInstant) -> Duration {
        if lhs >= rhs {
            return .nanoseconds(Int64(clamping: lhs.nanoseconds - rhs.nanoseconds))
        }
        return .nanoseconds(-Int64(clamping: rhs.nanoseconds - lhs.nanoseconds))
    }

    func advanced(byNanoseconds delta: UInt64) -> PoolInstant {
        let (sum, overflow) = nanoseconds.addingReportingOverflow(delta)
        return PoolInstant(nanoseconds: overflow ? .max : sum)
    }

    public var description: String { "t+\(nanoseconds)ns" }
}

extension Duration {
    /// Whole nanoseconds, clamped to `0...UInt64.max`.
    var poolNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 || attoseconds < 0 { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (sum, overflow2) = whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000))
        return overflow2 ? .max : sum
    }
}

/// The pool's limits; can be changed at runtime with `PoolStateMachine.updateLimits(_:now:)`.
public struct PoolLimits: Hashable, Sendable {
    /// Cap on connections across all keys (connecting + idle + leased + closing). Negative counts
    /// as 0.
    public var maxConnections: Int
    /// Idle connections kept indefinitely (across all keys); idle ones beyond this are closed after
    /// `idleTimeout`, oldest idle first. Negative counts as 0.
    public var maxIdleConnections: Int
    /// How long a request may wait. Zero: never wait for a busy pool at its cap (fail with `.timeout`);
    /// a request still waits for a connection being opened for it.
    public var borrowTimeout: Duration
    /// How long a surplus idle connection (beyond `maxIdleConnections`) is kept.
    public var idleTimeout: Duration
    /// Event-loop affinity with bounded unfairness. A connection that becomes available for key K
    /// (released reusable or newly established) goes to the oldest waiter of K on the connection's
    /// own event loop, unless the oldest waiter of K arrived `affinityWindow` or more before that
    /// one: then the oldest is served. So no waiter is overtaken by one that arrived this much
    /// later, and each waiter is passed over a bounded number of times.
    /// Zero (or negative): strict FIFO per key.
    public var affinityWindow: Duration

    /// The default `affinityWindow`: far below any borrow timeout. Measured with pgbench at 100
    /// clients on 2 event loops: 2 ms let 18% of leases cross threads, 20 ms 1.8%.
    public static let defaultAffinityWindow: Duration = .milliseconds(20)

    public init(
        maxConnections: Int, maxIdleConnections: Int, borrowTimeout: Duration, idleTimeout: Duration,
        affinityWindow: Duration = PoolLimits.defaultAffinityWindow
    ) {
        self.maxConnections = maxConnections
        self.maxIdleConnections = maxIdleConnections
        self.borrowTimeout = borrowTimeout
        self.idleTimeout = idleTimeout
        self.affinityWindow = affinityWindow
    }
}

/// Why opening a backend failed; forwarded to the waiter that is failed for it.
public struct ConnectionFailure: Hashable, Sendable, CustomStringConvertible {
    /// A stable code, e.g. a SQLSTATE from the database's ErrorResponse (`28P01`), if any.
    public var code: String?
    /// Human-readable; must not contain secrets.
    public var message: String

    public init(code: String? = nil, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        if let code { return "\(code): \(message)" }
        return message
    }
}

/// The outcome of a request that did not get a connection.
public enum PoolError: Error, Hashable, Sendable {
    /// Waited `borrowTimeout` (or could not wait at all with a zero timeout).
    case timeout
    /// An attempt to open a backend for this key failed.
    case connectionFailed(ConnectionFailure)
    /// The pool is shutting down.
    case shuttingDown
    /// The request was cancelled by the caller (`cancel(request:now:)`).
    case cancelled
}

/// Connection counts; `total` = connecting + idle + leased + closing: the slots of the cap in use
/// (waiting requests are not connections).
public struct PoolCounts: Hashable, Sendable {
    /// Opens under way, and opens waiting for a closing connection's slot (the one it makes room
    /// for: that connection is counted here instead, not under `closing`).
    public var connecting: Int = 0
    public var idle: Int = 0
    public var leased: Int = 0
    public var waiting: Int = 0
    /// Connections the pool asked to close that the runtime has not reported closed yet: the
    /// database still holds a session for each, so each still takes a slot of the cap. Never
    /// leased.
    public var closing: Int = 0

    public init(connecting: Int = 0, idle: Int = 0, leased: Int = 0, waiting: Int = 0, closing: Int = 0) {
        self.connecting = connecting
        self.idle = idle
        self.leased = leased
        self.waiting = waiting
        self.closing = closing
    }

    public var total: Int { connecting + idle + leased + closing }
    var isEmpty: Bool { total == 0 && waiting == 0 }
}

/// A cheap snapshot for metrics and the admin API.
public struct PoolStats: Hashable, Sendable {
    public var totals: PoolCounts
    /// Keys with at least one connection or waiting request.
    public var perKey: [PoolKey: PoolCounts]
    public var limits: PoolLimits
    public var isShuttingDown: Bool

    public init(totals: PoolCounts, perKey: [PoolKey: PoolCounts], limits: PoolLimits, isShuttingDown: Bool) {
        self.totals = totals
        self.perKey = perKey
        self.limits = limits
        self.isShuttingDown = isShuttingDown
    }
}

/// What the machine knows about one connection (admin / debugging).
public struct PoolConnectionInfo: Hashable, Sendable {
    public enum State: Hashable, Sendable {
        case connecting
        case idle(since: PoolInstant)
        case leased(to: RequestID)
        /// Asked to close (`closeConnection`); gone when the runtime reports `connectionClosed`.
        case closing
        /// An open decided but not started: it starts (`createConnection`) when the closing
        /// connection `freedBy` is reported closed, in the slot that one leaves. Its id is not
        /// known to the runtime until then.
        case awaitingSlot(freedBy: ConnectionID)
    }

    public var id: ConnectionID
    public var key: PoolKey
    public var eventLoopIndex: Int
    public var state: State
}
