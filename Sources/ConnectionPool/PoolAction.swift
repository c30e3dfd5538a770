/// One thing the runtime must do. Actions within a `PoolActions` are meant to be run in order
/// (closes come before the creations that reuse their slot).
public enum PoolAction: Hashable, Sendable {
    /// Open a backend for `key` on event loop `eventLoopIndex`, then report
    /// `connectionEstablished` or `connectionFailed` (or `connectionClosed`).
    case createConnection(ConnectionID, PoolKey, eventLoopIndex: Int)
    /// Hand the (established, clean) connection to the request. Report `release` when done.
    case lease(ConnectionID, to: RequestID)
    /// The request gets no connection. Exactly one `lease` or `failRequest` per request.
    case failRequest(RequestID, PoolError)
    /// Close the connection, then report `connectionClosed` once it is closed. Until then it keeps
    /// its slot of the cap (the database still holds its session), and it is never leased.
    case closeConnection(ConnectionID)
    /// Keep one timer: (re)arm it for `at`, replacing any earlier one, and call `tick(now:)` when it
    /// fires. Emitted only when the new instant is earlier than the one already armed; a tick that
    /// finds nothing to do is harmless (it re-arms as needed).
    case scheduleTimer(at: PoolInstant)
    /// After `shutdown()`: every connection is closed. Emitted exactly once.
    case shutdownComplete
}

/// The actions of one event. Stores up to two actions inline (no allocation), more in an array.
public struct PoolActions: RandomAccessCollection, Hashable, Sendable, ExpressibleByArrayLiteral,
    CustomStringConvertible
{
    @usableFromInline
    enum Storage: Sendable {
        case zero
        case one(PoolAction)
        case two(PoolAction, PoolAction)
        case many([PoolAction])
    }

    @usableFromInline
    var storage: Storage

    @inlinable
    public init() { storage = .zero }

    public init(arrayLiteral elements: PoolAction...) {
        self.init()
        for element in elements { append(element) }
    }

    public init<S: Sequence>(_ elements: S) where S.Element == PoolAction {
        self.init()
        for element in elements { append(element) }
    }

    @inlinable
    public var startIndex: Int { 0 }

    @inlinable
    public var endIndex: Int {
        switch storage {
        case .zero: return 0
        case .one: return 1
        case .two: return 2
        case .many(let array): return array.count
        }
    }

    @inlinable
    public subscript(position: Int) -> PoolAction {
        switch storage {
        case .zero:
            preconditionFailure("index out of range")
        case .one(let a):
            precondition(position == 0, "index out of range")
            return a
        case .two(let a, let b):
            precondition(position == 0 || position == 1, "index out of range")
            return position == 0 ? a : b
        case .many(let array):
            return array[position]
        }
    }

    @inlinable
    public mutating func append(_ action: PoolAction) {
        switch storage {
        case .zero:
            storage = .one(action)
        case .one(let a):
            storage = .two(a, action)
        case .two(let a, let b):
            storage = .many([a, b, action])
        case .many(var array):
            storage = .zero  // drop the enum's reference so the append does not copy
            array.append(action)
            storage = .many(array)
        }
    }

    @inlinable
    public mutating func append<S: Sequence>(contentsOf actions: S) where S.Element == PoolAction {
        for action in actions { append(action) }
    }

    public static func == (lhs: PoolActions, rhs: PoolActions) -> Bool {
        lhs.elementsEqual(rhs)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(count)
        for action in self { hasher.combine(action) }
    }

    public var description: String { "[" + map { "\($0)" }.joined(separator: ", ") + "]" }
}
