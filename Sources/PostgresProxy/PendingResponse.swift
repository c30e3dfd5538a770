import NIOCore
import SQLClassifier
import Synchronization

// What the backend owes the client, entry by entry (`PendingResponse`), and the client's statements
// and session resets those entries carry. The client's statements are kept by `StatementCatalogue`,
// each backend's by `BackendStatementCache` (PreparedStatements.swift, with the messages the proxy
// builds).

/// A statement as a client prepared it.
public struct ClientStatement {
    /// The Parse body after the statement name: query text, NUL, parameter type count and OIDs.
    public let definition: ByteBuffer
    /// The statement's identity on any backend: derived from `definition`.
    public let key: String
    /// The database has analysed it for the client (its Parse reached a backend, or it was
    /// prepared since): notices of later Parses of it are not the client's news.
    public var analysed: Bool
    /// When the client (last) defined it, on the proxy-wide clock of Parses (`StatementEpoch`).
    /// A backend's copy parsed before that is not used for it: that copy may predate DDL the
    /// client has seen (PostgreSQL infers parameter types at Parse, never again), so its first
    /// use there parses it afresh, for every client that shares it.
    public var parsedAt: UInt64
    /// What executing it resets (`DISCARD ALL` prepared as a statement, ...).
    public let resets: Resets
    /// The row type it returns, as the database described it after the client's Parse
    /// (`ResultShape`); nil until that answer arrives. PostgreSQL fixes a prepared statement's
    /// row type at Parse: once DDL changes it, every use fails with `cached plan must not change
    /// result type`. A backend that parses the text afresh for this client must fail it the
    /// same way, not return rows of another type (asyncpg decoded them as garbage).
    public var shape: Int?

    /// `refersTo`: for `EXECUTE name`, the key of the statement it runs (part of its identity:
    /// two clients' `EXECUTE foobar` may run different statements). `searchPath`: the client's
    /// when it defined the statement, also part of its identity: the same text names other
    /// tables under another search_path, and a backend's copy analysed for one client would
    /// fail (or serve) another.
    public init(
        definition: ByteBuffer, analysed: Bool, parsedAt: UInt64 = StatementEpoch.next(), resets: Resets = Resets(),
        refersTo: String? = nil, searchPath: String? = nil
    ) {
        self.definition = definition
        self.analysed = analysed
        self.parsedAt = parsedAt
        self.resets = resets
        var hasher = Hasher()
        definition.withUnsafeReadableBytes { hasher.combine(bytes: $0) }
        if let refersTo { hasher.combine(refersTo) }
        if let searchPath { hasher.combine(searchPath) }
        let hash = UInt64(bitPattern: Int64(hasher.finalize()))
        self.key = "concierge_" + String(hash, radix: 16)
    }
}

/// A proxy-wide clock of Parses: each client definition of a statement, and each Parse the proxy
/// sends of one, takes the next value (see `ClientStatement.parsedAt`).
public enum StatementEpoch {
    private static let clock = Atomic<UInt64>(0)

    public static func next() -> UInt64 {
        clock.add(1, ordering: .relaxed).newValue
    }
}

/// What the backend owes the client for a message sent to it (or answered by the proxy), in
/// order.
public enum PendingResponse {
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    case query
    /// Sync: ReadyForQuery.
    case sync
    /// A client's Parse, forwarded (ParseComplete forwarded). `client`/`key`/`serverName`: the
    /// named statement it defines (nil for the unnamed statement).
    case parse(client: String?, key: String, serverName: String)
    /// A client's Parse of the unnamed statement (ParseComplete forwarded), with the unnamed
    /// statement the client had before it: a Parse skipped after an error leaves that one.
    case unnamedParse(UnnamedBefore)
    /// A Parse the proxy added so the backend has a statement: its ParseComplete is dropped.
    /// `quiet`: the database analysed the statement for the client before (the client's own
    /// Parse reached a backend): the notices of this Parse (`nonstandard use of escape`...) are
    /// ones the client has had, and are dropped.
    case injectedParse(client: String?, key: String, serverName: String, quiet: Bool = true)
    /// A client's Parse of a name it already uses, sent as a Parse of the existing statement's
    /// server-side name so that PostgreSQL refuses it (`42P05 ... already exists`, renamed to the
    /// client's name) exactly where it would refuse it directly; the old statement stays.
    case duplicateParse(serverName: String, client: String)
    /// A Close the proxy sends before each Parse of one of its names: its CloseComplete is
    /// dropped. Should the proxy's view of the backend ever be wrong, the Parse still cannot fail
    /// with `already exists` (a Close of a name the server lacks is not an error).
    /// `unnamed`: the Close of the unnamed statement the proxy sends when the client has none.
    case injectedClose(unnamed: Bool = false)
    /// Bind (BindComplete), with the server-side statement it used and the client's name for it
    /// (to name it in an error).
    case bind(serverName: String?, client: String? = nil)
    /// Describe of a statement: ParameterDescription, then RowDescription or NoData.
    case describeStatement
    /// A Describe the proxy sends after each Parse of a named statement (the client's, or its
    /// own): its ParameterDescription and RowDescription (or NoData) are dropped, and the row
    /// type is recorded for the backend's copy (`parsedAt`) and, for the first Parse of the
    /// client's statement (`client`, defined at `clientParsedAt`), for that statement. `waiting`:
    /// the client's next messages wait for it (`StatementCatalogue.statementToCheckFirst`).
    /// (Indirect, as `localCloseComplete`: both are large and rare, and an entry is as large as
    /// its largest case; see `ResetWatch`.)
    indirect case shapeDescribe(
        key: String, serverName: String, parsedAt: UInt64, client: String?, clientParsedAt: UInt64, waiting: Bool)
    /// A Bind or Describe of a statement whose row type changed since the client prepared it,
    /// sent for a name that does not exist: PostgreSQL fails it (aborting the transaction and
    /// skipping to Sync) where it would have failed it directly, and its error is replaced by
    /// the one PostgreSQL gives for that case.
    case changedResultType
    /// Describe of a portal: RowDescription or NoData.
    case describePortal
    /// Execute: rows and copy data, ended by CommandComplete, EmptyQueryResponse or
    /// PortalSuspended; with the statement of the portal, when known, and what it resets.
    case execute(serverName: String?, reset: ResetWatch?)
    /// A simple Query with a statement that resets session state (`SessionResets`): like
    /// `.query`, and its command tags and outcome are watched.
    case resetQuery(ResetWatch)
    /// Close of a portal or the unnamed statement (CloseComplete forwarded). `unnamedBefore`:
    /// for the unnamed statement, what the client had before it (a skipped Close closes nothing).
    case close(unnamedBefore: UnnamedBefore? = nil)
    /// The placeholder statement the proxy prepares so that a Parse of a name in use can fail
    /// as in PostgreSQL (`ClientSession.sendParse`): its ParseComplete is dropped.
    case injectedPlaceholder
    /// A Parse answered by the proxy: ParseComplete is sent to the client at this point.
    case localParseComplete(client: String)
    /// CopyDone or CopyFail: no answer of its own. A Sync sent before it, while the backend is in
    /// copy-in mode (the extended protocol's COPY FROM STDIN), is ignored by PostgreSQL and
    /// gets no ReadyForQuery (see `ResponseTracker`, CopyInResponse).
    case copyEnd
    /// A Close of a named statement answered by the proxy: CloseComplete at this point. The
    /// statement it removed comes back if PostgreSQL would have skipped the Close (an error
    /// before it in the same batch).
    indirect case localCloseComplete(client: String, removed: ClientStatement?)

    /// An entry whose failure (or skipping after an earlier error) changes what the proxy knows
    /// of the client's statements: a message of a later batch that depends on them waits until
    /// it is answered (`ClientSession.mustWaitForEarlierBatches`).
    public var isUncertain: Bool {
        switch self {
        case .parse(let client, _, _): return client != nil
        case .unnamedParse, .localParseComplete: return true
        // A statement the proxy puts on the backend for the client (named or unnamed), or the
        // backend's unnamed statement it closes: skipped, the backend is not as recorded.
        case .injectedParse, .injectedClose(unnamed: true): return true
        case .localCloseComplete(_, let removed): return removed != nil
        case .close(let unnamedBefore): return unnamedBefore != nil
        case .resetQuery(let watch): return !watch.removed.isEmpty || watch.deallocated != nil || watch.unnamedBefore != nil
        case .execute(_, let watch?): return !watch.removed.isEmpty
        default: return false
        }
    }

    /// It carries a `ResetWatch` (see `ResponseTracker.watched`).
    @inlinable public var isWatched: Bool {
        switch self {
        case .resetQuery, .execute(_, _?): return true
        default: return false
        }
    }

    @inlinable public var isLocal: Bool {
        switch self {
        case .localParseComplete, .localCloseComplete, .copyEnd: return true
        default: return false
        }
    }
}

/// The client's unnamed statement before a message that changes it (a Parse of it, a Close of
/// it, a simple Query): what the proxy puts back if PostgreSQL skips that message. `generation`
/// is the session's count of such changes once this one was made: a change made since (by a
/// message of a later batch, sent before the error came back) is not undone by it.
public struct UnnamedBefore {
    public var statement: ByteBuffer?
    public var onBackend: Bool
    public var generation: UInt32

    public init(statement: ByteBuffer?, onBackend: Bool, generation: UInt32) {
        self.statement = statement
        self.onBackend = onBackend
        self.generation = generation
    }
}

/// What a statement resets, as the classifier found it (see `SessionResets`).
///
/// Every message the session holds carries one (`HeldMessage`), and most reset nothing: the
/// names and sets, rare, live in a box that exists only when one of them is set, so that an
/// empty `Resets` is a few plain words with nothing to retain (inline, its arrays, strings and
/// set made each held message about 100 bytes, copied and moved per message).
public struct Resets {
    public var kinds: SessionResets = []
    /// What the same statement (or Query) pins: a reset does not release those
    /// (`UNLISTEN *; LISTEN x`).
    public var pins: PinReasons = []
    /// The session's pin clock when it was classified: pins added later (by messages after it)
    /// are not released by it.
    public var pinClock: UInt64 = 0

    private final class Names {
        var parameters: [String] = []
        var deallocated: String?
        var executed: (name: String, range: Range<Int>)?
        var sets: Set<String> = []

        func copy() -> Names {
            let copy = Names()
            copy.parameters = parameters
            copy.deallocated = deallocated
            copy.executed = executed
            copy.sets = sets
            return copy
        }
    }

    private var names: Names?

    private mutating func uniqueNames() -> Names {
        guard let names else {
            let created = Names()
            self.names = created
            return created
        }
        if isKnownUniquelyReferenced(&self.names) { return names }
        let copy = names.copy()
        self.names = copy
        return copy
    }

    /// `RESET name`, `SET name TO DEFAULT`: the parameters, as the classifier names them.
    public var parameters: [String] {
        get { names?.parameters ?? [] }
        set { uniqueNames().parameters = newValue }
    }
    /// `DEALLOCATE name`: the name.
    public var deallocated: String? {
        get { names?.deallocated }
        set { uniqueNames().deallocated = newValue }
    }
    /// `EXECUTE name`: the name and where it is in the query text.
    public var executed: (name: String, range: Range<Int>)? {
        get { names?.executed }
        set { uniqueNames().executed = newValue }
    }
    /// Parameters the statement SETs for the session (lowercased): a reset window open before it
    /// leaves them to it (`ClientSession.ResetWindow.setAfter`).
    public var sets: Set<String> {
        get { names?.sets ?? [] }
        set { uniqueNames().sets = newValue }
    }

    public init() {}

    public init(_ classification: Classification) {
        kinds = classification.resets
        pins = classification.pinReasons
        if let name = classification.deallocatedName { deallocated = name }
        if let name = classification.executedName, let range = classification.executedNameRange {
            executed = (name, range)
        }
        var sets = Set<String>()
        for command in classification.setCommands where !command.isReset && command.scope == .session {
            sets.insert(command.name.lowercased())
        }
        if !sets.isEmpty { self.sets = sets }
        if kinds.contains(.resetParameter) {
            parameters = classification.setCommands.filter { $0.isReset && $0.scope == .session && $0.name != "all" }
                .map { $0.name.lowercased() }
        }
    }

    public var isEmpty: Bool { kinds.isEmpty }
}

/// A statement that resets session state, on its way to the database: what the session applies
/// once the database confirms it (see `ClientSession.applyResetAtCompletion`).
///
/// Its fields live in one boxed, copy-on-write storage. A watch rides in `PendingResponse`
/// (`.execute`, `.resetQuery`), and an enum is as large as its largest case: inline, the watch's
/// ~170 bytes made every entry that large, so that each entry appended, popped or looked at for
/// every message of a tracked burst (a prepared statement's BindComplete, CommandComplete...)
/// moved that much memory. Boxed it is one word; the box is allocated once per statement that
/// resets something, which is rare.
public struct ResetWatch {
    private final class Storage {
        var resets: Resets
        var removed: [String: ClientStatement] = [:]
        var deallocated: String?
        var executed: String?
        var changedResultType = false
        var unnamedBefore: UnnamedBefore?

        init(resets: Resets) {
            self.resets = resets
        }

        func copy() -> Storage {
            let copy = Storage(resets: resets)
            copy.removed = removed
            copy.deallocated = deallocated
            copy.executed = executed
            copy.changedResultType = changedResultType
            copy.unnamedBefore = unnamedBefore
            return copy
        }
    }

    private var storage: Storage

    public init(resets: Resets) {
        storage = Storage(resets: resets)
    }

    private mutating func unique() -> Storage {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return storage
    }

    public var resets: Resets {
        get { storage.resets }
        _modify {
            let storage = unique()
            yield &storage.resets
        }
    }
    /// The client's statements it removes (DEALLOCATE ALL, DISCARD ALL, DEALLOCATE name): taken
    /// out of the client's statements when it is sent, so that what follows it in the same
    /// pipeline sees them gone, as PostgreSQL will; put back if it fails.
    public var removed: [String: ClientStatement] {
        get { storage.removed }
        _modify {
            let storage = unique()
            yield &storage.removed
        }
    }
    /// `DEALLOCATE name` of one of the client's protocol-level statements.
    public var deallocated: String? {
        get { storage.deallocated }
        _modify {
            let storage = unique()
            yield &storage.deallocated
        }
    }
    /// `EXECUTE name` of one of the client's protocol-level statements.
    public var executed: String? {
        get { storage.executed }
        _modify {
            let storage = unique()
            yield &storage.executed
        }
    }
    /// That statement's row type changed (`StatementCatalogue.resultTypeChanged`): the Query runs
    /// a name that does not exist, and its error is replaced by PostgreSQL's for that case.
    public var changedResultType: Bool {
        get { storage.changedResultType }
        _modify {
            let storage = unique()
            yield &storage.changedResultType
        }
    }
    /// A Query sent after extended messages not yet synced destroys the client's unnamed
    /// statement only if PostgreSQL does not skip it (after an error in those messages): what
    /// the client had before it.
    public var unnamedBefore: UnnamedBefore? {
        get { storage.unnamedBefore }
        _modify {
            let storage = unique()
            yield &storage.unnamedBefore
        }
    }
}

