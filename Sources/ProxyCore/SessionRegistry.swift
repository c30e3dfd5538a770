/// The key a client is given to cancel what its session runs, from another connection.
///
/// Every engine has one: PostgreSQL's BackendKeyData (process id and secret key, sent back in a
/// CancelRequest), MySQL's connection id (named by `KILL QUERY`). The proxy hands out its own, never
/// the database's: a client's statements run on whichever backend serves it, so only the proxy
/// knows where to send the cancel.
public struct CancelKey: Hashable, Sendable, CustomStringConvertible {
    /// Positive and at most `Int32.max`, so it fits both PostgreSQL's signed process id and
    /// MySQL's unsigned connection id; unique among the proxy's sessions.
    public var id: UInt32
    /// Random; an engine without a secret ignores it.
    public var secret: UInt32

    public init(id: UInt32, secret: UInt32) {
        self.id = id
        self.secret = secret
    }

    /// Only the id: the secret never goes to logs.
    public var description: String { "\(id)" }
}

/// A registered session and its secret. Not nested in `SessionRegistry`: a type nested in a
/// generic one is generic itself, and the unspecialised runtime then looked up the metadata of
/// it and of its dictionary, and ran the dictionary's unspecialised code, at every register
/// (about 2,000 instructions per login, counted with `bench/profile/callgrind.sh ... -C`).
@usableFromInline
struct SessionRegistryEntry {
    @usableFromInline var secret: UInt32
    @usableFromInline var session: AnyObject

    @usableFromInline
    init(secret: UInt32, session: AnyObject) {
        self.secret = secret
        self.session = session
    }
}

/// The proxy's client sessions by cancel key: who is connected, and where a cancel goes.
///
/// A value type, engine-neutral: the runtime keeps it under its lock; `Session` is whatever the
/// engine's session handler is.
///
/// The storage is not generic: the runtime that registers and removes a session per connection
/// is generic code that is not specialised (ConciergeRuntime), and a dictionary whose element
/// type involved `Session` (a tuple with it) had its type metadata looked up at run time on every
/// register (about 1% of the proxy's user CPU in an md5 connection storm). Sessions are kept as
/// `AnyObject` and cast back without a check, since only `Session`s go in.
public struct SessionRegistry<Session: AnyObject> {
    @usableFromInline typealias Entry = SessionRegistryEntry

    @usableFromInline var sessions: [UInt32: Entry] = [:]

    public init() {}

    public var count: Int { sessions.count }
    @inlinable public var isEmpty: Bool { sessions.isEmpty }
    public var all: [Session] { sessions.values.map { unsafeDowncast($0.session, to: Session.self) } }

    /// Draws a fresh key from `random` (64 random bits: the low 31 the id, the high 32 the secret),
    /// drawing again while the id is zero or taken, and registers the session `make` builds with it.
    @inlinable
    public mutating func register(random: () -> UInt64, _ make: (CancelKey) -> Session) -> Session {
        var key: CancelKey
        repeat {
            let bits = random()
            key = CancelKey(id: UInt32(truncatingIfNeeded: bits & 0x7FFF_FFFF), secret: UInt32(truncatingIfNeeded: bits >> 32))
        } while key.id == 0 || sessions[key.id] != nil
        let session = make(key)
        sessions[key.id] = Entry(secret: key.secret, session: session)
        return session
    }

    @inlinable
    public mutating func remove(id: UInt32) {
        sessions[id] = nil
    }

    /// The session with this id, whatever its secret: MySQL's `KILL` names a connection by its
    /// id alone (the server checks who asks, and so does the engine).
    public func session(id: UInt32) -> Session? {
        sessions[id].map { unsafeDowncast($0.session, to: Session.self) }
    }

    /// The session a cancel request names, if both halves of its key match: a wrong secret finds
    /// nothing (and the engine says nothing, as the databases do).
    public func session(for key: CancelKey) -> Session? {
        guard let entry = sessions[key.id], entry.secret == key.secret else { return nil }
        return unsafeDowncast(entry.session, to: Session.self)
    }
}
