import NIOCore
import Synchronization
import PostgresWire
import SQLClassifier

/// Protocol-level named prepared statements in transaction mode, without pinning.
///
/// A client's statement names are its own: the session maps each (`statements`) to its text and
/// parameter types. A backend knows statements by a name derived from that text
/// (`BackendStatementCache`), so every client preparing the same query shares one server-side
/// statement per backend. Before a Bind or Describe reaches a backend that lacks the statement, the
/// session prepares it there in the same round trip and drops the ParseComplete that answers it;
/// a Parse for a statement the backend already has, and a Close of a statement, are answered by
/// the proxy (ParseComplete, CloseComplete) at the place in the response stream where PostgreSQL
/// would have answered them. `PendingResponse` is that ordering: one entry per message sent to the
/// backend (or answered locally), consumed as the backend's responses arrive.

/// A statement as a client prepared it.
struct ClientStatement {
    /// The Parse body after the statement name: query text, NUL, parameter type count and OIDs.
    let definition: ByteBuffer
    /// The statement's identity on any backend: derived from `definition`.
    let key: String
    /// The database has analysed it for the client (its Parse reached a backend, or it was
    /// prepared since): notices of later Parses of it are not the client's news.
    var analysed: Bool
    /// When the client (last) defined it, on the proxy-wide clock of Parses (`StatementEpoch`).
    /// A backend's copy parsed before that is not used for it: that copy may predate DDL the
    /// client has seen (PostgreSQL infers parameter types at Parse, never again), so its first
    /// use there parses it afresh, for every client that shares it.
    var parsedAt: UInt64
    /// What executing it resets (`DISCARD ALL` prepared as a statement, ...).
    let resets: Resets
    /// The row type it returns, as the database described it after the client's Parse
    /// (`ResultShape`); nil until that answer arrives. PostgreSQL fixes a prepared statement's
    /// row type at Parse: once DDL changes it, every use fails with `cached plan must not change
    /// result type`. A backend that parses the text afresh for this client must fail it the
    /// same way, not return rows of another type (asyncpg decoded them as garbage).
    var shape: Int?

    /// `refersTo`: for `EXECUTE name`, the key of the statement it runs (part of its identity:
    /// two clients' `EXECUTE foobar` may run different statements). `searchPath`: the client's
    /// when it defined the statement, also part of its identity: the same text names other
    /// tables under another search_path, and a backend's copy analysed for one client would
    /// fail (or serve) another.
    init(
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
enum StatementEpoch {
    private static let clock = Atomic<UInt64>(0)

    static func next() -> UInt64 {
        clock.add(1, ordering: .relaxed).newValue
    }
}

/// The statements a backend holds, by key, least recently used first out. Touched only by the
/// session the backend is leased to (and by the backend itself at lease time, when no session
/// touches it).
struct BackendStatementCache {
    /// How many statements a backend keeps; beyond it, the least recently used are deallocated
    /// when the backend is next leased (PgBouncer's `max_prepared_statements` is 200).
    static let capacity = 256

    private struct Entry {
        var serverName: String
        var lastUse: UInt64
        /// When it was last parsed on the backend (`StatementEpoch`).
        var parsedAt: UInt64
        /// Its row type (`ResultShape`), once the Describe sent after its Parse is answered.
        var shape: Int?
    }

    private var entries: [String: Entry] = [:]
    private var clock: UInt64 = 0
    private var generation = 0
    /// Server-side names to deallocate at the next lease (evicted or invalidated ones).
    private(set) var stale: [String] = []

    var count: Int { entries.count }

    /// The server-side name of `key`, marking it used; nil if the backend lacks it, or has only
    /// a copy parsed before `since`.
    mutating func use(_ key: String, since: UInt64 = 0) -> String? {
        guard let entry = entries[key], entry.parsedAt >= since else { return nil }
        clock &+= 1
        entries[key]!.lastUse = clock
        return entry.serverName
    }

    /// The backend's copy of `key` if it may serve a client that defined it at `since`: when it
    /// was parsed and its row type (nil while its Describe is unanswered). Does not mark it used.
    func copy(_ key: String, since: UInt64) -> (parsedAt: UInt64, shape: Int?)? {
        guard let entry = entries[key], entry.parsedAt >= since else { return nil }
        return (entry.parsedAt, entry.shape)
    }

    /// The row type of the backend's copy of `key`, when known.
    func shape(of key: String) -> Int? {
        entries[key]?.shape
    }

    /// The Describe after the Parse of `serverName` at `parsedAt` was answered with this row type.
    mutating func record(shape: Int, key: String, serverName: String, parsedAt: UInt64) {
        guard let entry = entries[key], entry.serverName == serverName, entry.parsedAt == parsedAt else { return }
        entries[key]!.shape = shape
    }

    /// Records that `key` is being (re)prepared on the backend, at `parsedAt`; returns its
    /// server-side name (the existing one when it is parsed again).
    mutating func parse(_ key: String, at parsedAt: UInt64) -> String {
        clock &+= 1
        if entries[key] != nil {
            entries[key]!.lastUse = clock
            entries[key]!.parsedAt = parsedAt
            entries[key]!.shape = nil
            return entries[key]!.serverName
        }
        // A key whose statement was invalidated gets a fresh name: the old one is deallocated later.
        let name = generation == 0 ? key : key + "_" + String(generation)
        entries[key] = Entry(serverName: name, lastUse: clock, parsedAt: parsedAt)
        return name
    }

    /// A statement of the proxy's own (the placeholder) to deallocate at the next lease.
    mutating func discardLater(_ serverName: String) {
        if !stale.contains(serverName) { stale.append(serverName) }
    }

    /// The Parse that prepared `key` failed or was skipped: the backend does not have it.
    mutating func forget(_ key: String, serverName: String) {
        if entries[key]?.serverName == serverName { entries[key] = nil }
    }

    /// The server-side plan of `serverName` is unusable (`cached plan must not change result
    /// type`): the next use prepares it again under a new name.
    mutating func invalidate(serverName: String) {
        guard let key = entries.first(where: { $0.value.serverName == serverName })?.key else { return }
        invalidate(key: key)
    }

    /// As `invalidate(serverName:)`, by key.
    mutating func invalidate(key: String) {
        guard let serverName = entries[key]?.serverName else { return }
        entries[key] = nil
        stale.append(serverName)
        generation += 1
    }

    /// A statement that may deallocate any of them (`DEALLOCATE ALL`, `DISCARD ALL`, a
    /// `DEALLOCATE` of one of the proxy's names) is on its way to the server. Whether it succeeds
    /// or not, nothing known is used again: the next use prepares afresh under a new name, and
    /// the old names are closed at the next lease (a Close of a name that no longer exists is
    /// not an error), so no Parse can collide with a statement the server still has.
    mutating func invalidateAll() {
        guard !entries.isEmpty else { return }
        for entry in entries.values { stale.append(entry.serverName) }
        entries.removeAll()
        generation += 1
    }

    /// At lease time: moves the least recently used statements beyond `capacity` to `stale` and
    /// returns (and clears) everything to deallocate.
    mutating func takeStale() -> [String] {
        if entries.count > Self.capacity {
            let victims = entries.sorted { $0.value.lastUse < $1.value.lastUse }.prefix(entries.count - Self.capacity)
            for (key, entry) in victims {
                entries[key] = nil
                stale.append(entry.serverName)
            }
        }
        defer { stale.removeAll() }
        return stale
    }
}

/// What the backend owes the client for a message sent to it (or answered by the proxy), in
/// order.
enum PendingResponse {
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
    /// the client's next messages wait for it (`ClientSession.mustCheckResultTypeFirst`).
    case shapeDescribe(
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
    /// gets no ReadyForQuery (see `ClientSession.backendEnteredCopyIn`).
    case copyEnd
    /// A Close of a named statement answered by the proxy: CloseComplete at this point. The
    /// statement it removed comes back if PostgreSQL would have skipped the Close (an error
    /// before it in the same batch).
    case localCloseComplete(client: String, removed: ClientStatement?)

    /// An entry whose failure (or skipping after an earlier error) changes what the proxy knows
    /// of the client's statements: a message of a later batch that depends on them waits until
    /// it is answered (`ClientSession.mustWaitForEarlierBatches`).
    var isUncertain: Bool {
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

    var isLocal: Bool {
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
struct UnnamedBefore {
    var statement: ByteBuffer?
    var onBackend: Bool
    var generation: UInt32
}

/// What a statement resets, as the classifier found it (see `SessionResets`).
struct Resets {
    var kinds: SessionResets = []
    /// `RESET name`, `SET name TO DEFAULT`: the parameters, as the classifier names them.
    var parameters: [String] = []
    /// `DEALLOCATE name`: the name.
    var deallocated: String?
    /// `EXECUTE name`: the name and where it is in the query text.
    var executed: (name: String, range: Range<Int>)?
    /// What the same statement (or Query) pins: a reset does not release those
    /// (`UNLISTEN *; LISTEN x`).
    var pins: PinReasons = []
    /// The session's pin clock when it was classified: pins added later (by messages after it)
    /// are not released by it.
    var pinClock: UInt64 = 0
    /// Parameters the statement SETs for the session (lowercased): a reset window open before it
    /// leaves them to it (`ClientSession.ResetWindow.setAfter`).
    var sets: Set<String> = []

    init() {}

    init(_ classification: Classification) {
        kinds = classification.resets
        pins = classification.pinReasons
        deallocated = classification.deallocatedName
        if let name = classification.executedName, let range = classification.executedNameRange {
            executed = (name, range)
        }
        for command in classification.setCommands where !command.isReset && command.scope == .session {
            sets.insert(command.name.lowercased())
        }
        if kinds.contains(.resetParameter) {
            parameters = classification.setCommands.filter { $0.isReset && $0.scope == .session && $0.name != "all" }
                .map { $0.name.lowercased() }
        }
    }

    var isEmpty: Bool { kinds.isEmpty }
}

/// A statement that resets session state, on its way to the database: what the session applies
/// once the database confirms it (see `ClientSession.applyResetAtCompletion`).
struct ResetWatch {
    var resets: Resets
    /// The client's statements it removes (DEALLOCATE ALL, DISCARD ALL, DEALLOCATE name): taken
    /// out of the client's statements when it is sent, so that what follows it in the same
    /// pipeline sees them gone, as PostgreSQL will; put back if it fails.
    var removed: [String: ClientStatement] = [:]
    /// `DEALLOCATE name` of one of the client's protocol-level statements.
    var deallocated: String?
    /// `EXECUTE name` of one of the client's protocol-level statements.
    var executed: String?
    /// That statement's row type changed (`ClientSession.resultTypeChanged`): the Query runs
    /// a name that does not exist, and its error is replaced by PostgreSQL's for that case.
    var changedResultType = false
    /// A Query sent after extended messages not yet synced destroys the client's unnamed
    /// statement only if PostgreSQL does not skip it (after an error in those messages): what
    /// the client had before it.
    var unnamedBefore: UnnamedBefore?
}

enum StatementMessages {
    /// `text` (a client's SQL, without its NUL) with the bytes at `range` (the statement name of
    /// an `EXECUTE name`) replaced by the backend's name for that statement, quoted. Bytes, not a
    /// String: the text is in the client's encoding, not necessarily UTF-8. Nil when `range`
    /// lies outside `text`.
    static func executeText(_ text: ByteBuffer, naming range: Range<Int>, as serverName: String) -> ByteBuffer? {
        guard range.lowerBound >= 0, range.upperBound <= text.readableBytes,
              let before = text.getSlice(at: text.readerIndex, length: range.lowerBound),
              let after = text.getSlice(at: text.readerIndex + range.upperBound, length: text.readableBytes - range.upperBound)
        else { return nil }
        let quoted = BackendConnection.quoteIdentifier(serverName)
        var out = ByteBuffer()
        out.reserveCapacity(before.readableBytes + quoted.utf8.count + after.readableBytes + 1)
        out.writeImmutableBuffer(before)
        out.writeString(quoted)
        out.writeImmutableBuffer(after)
        return out
    }

    /// Parse of `name` with a definition (query, NUL, parameter types) taken from a client's Parse.
    static func parse(name: String, definition: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 6 + name.utf8.count + definition.readableBytes)
        out.writeInteger(PGMessageType.Frontend.parse)
        out.writeInteger(Int32(4 + name.utf8.count + 1 + definition.readableBytes))
        out.writeString(name)
        out.writeInteger(UInt8(0))
        var definition = definition
        out.writeBuffer(&definition)
        return out
    }

    /// Bind with its statement name replaced: `portal`, then `rest` (formats, values, result formats).
    static func bind(portal: ByteBuffer, statement: String, rest: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 7 + portal.readableBytes + statement.utf8.count + rest.readableBytes)
        out.writeInteger(PGMessageType.Frontend.bind)
        out.writeInteger(Int32(4 + portal.readableBytes + 1 + statement.utf8.count + 1 + rest.readableBytes))
        var portal = portal
        out.writeBuffer(&portal)
        out.writeInteger(UInt8(0))
        out.writeString(statement)
        out.writeInteger(UInt8(0))
        var rest = rest
        out.writeBuffer(&rest)
        return out
    }

    /// Describe of statement `name`.
    static func describeStatement(_ name: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 7 + name.utf8.count)
        out.writeInteger(PGMessageType.Frontend.describe)
        out.writeInteger(Int32(4 + 1 + name.utf8.count + 1))
        out.writeInteger(UInt8(ascii: "S"))
        out.writeString(name)
        out.writeInteger(UInt8(0))
        return out
    }

    /// Close of statement `name` (a Close of a name that does not exist is not an error).
    static func closeStatement(_ name: String, into out: inout ByteBuffer) {
        out.writeInteger(PGMessageType.Frontend.close)
        out.writeInteger(Int32(4 + 1 + name.utf8.count + 1))
        out.writeInteger(UInt8(ascii: "S"))
        out.writeString(name)
        out.writeInteger(UInt8(0))
    }

    /// The placeholder statement (see `PendingResponse.injectedPlaceholder`): a name of the
    /// proxy's form (`concierge_` and hex digits, which errors shown to clients never contain)
    /// that no statement key takes in practice, and a transaction-exit text, which PostgreSQL
    /// parses even in a failed transaction.
    static let placeholderName = "concierge_0"
    static let placeholderDefinition: ByteBuffer = {
        var out = ByteBuffer()
        out.writeString("ROLLBACK")
        out.writeInteger(UInt8(0))
        out.writeInteger(Int16(0))
        return out
    }()

    /// A Bind or Describe sent for this name fails (`PendingResponse.changedResultType`): no
    /// statement has it (the proxy's names are `concierge_` and hex digits).
    static let missingName = "concierge_none"

    static let flush: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "H"), 0, 0, 0, 4])
    static let sync: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "S"), 0, 0, 0, 4])

    /// PostgreSQL's error for a prepared statement whose row type changed, with its source
    /// fields: drivers recognise it by them (asyncpg raises `InvalidCachedStatementError`, and
    /// re-prepares, when the routine is `RevalidateCachedQuery`; the message may be localised).
    /// The line is PostgreSQL 15's.
    static let changedResultTypeError: ByteBuffer = {
        var out = ByteBuffer()
        PGEncode.errorResponse(PGErrorFields(
            severity: "ERROR", code: "0A000", message: "cached plan must not change result type",
            source: ("plancache.c", "722", "RevalidateCachedQuery")), into: &out)
        return out
    }()

    static let parseComplete: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "1"), 0, 0, 0, 4])
    static let closeComplete: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "3"), 0, 0, 0, 4])
}

/// A statement's row type, as a hash of what PostgreSQL compares when it decides that a cached
/// plan changed its result type (the columns' names, types, lengths and type modifiers; not the
/// table and column a value comes from). NoData is `noRows`.
enum ResultShape {
    static let noRows = 0

    /// The shape of a RowDescription's body (after the message header); nil if malformed.
    static func of(rowDescription body: ByteBuffer) -> Int? {
        var body = body
        guard let count = body.readInteger(as: Int16.self), count >= 0 else { return nil }
        var hasher = Hasher()
        hasher.combine(count)
        for _ in 0..<count {
            guard let name = body.readNullTerminatedSlice() else { return nil }
            name.withUnsafeReadableBytes { hasher.combine(bytes: $0) }
            hasher.combine(UInt8(0))
            // Table OID (4) and column number (2) are where values come from, not their type.
            guard body.readSlice(length: 6) != nil,
                  let type = body.readInteger(as: UInt32.self),
                  let length = body.readInteger(as: Int16.self),
                  let modifier = body.readInteger(as: Int32.self),
                  body.readInteger(as: Int16.self) != nil
            else { return nil }
            hasher.combine(type)
            hasher.combine(length)
            hasher.combine(modifier)
        }
        let shape = hasher.finalize()
        return shape == noRows ? 1 : shape
    }
}
