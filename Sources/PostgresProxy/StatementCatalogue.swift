import ConnectionPool
import NIOCore
import PostgresWire

/// The client's statements as the proxy models them (see PreparedStatements.swift): its named
/// statements, its unnamed statement, its portals, and the row-type check under way. Pure: the
/// session (`ClientSession`) asks it what to send and tells it what was sent and answered; the
/// session writes the bytes. Decisions that depend on what a backend holds take that backend's
/// `BackendStatementCache` (borrowed, or `inout` when they change it), never the connection.
public struct StatementCatalogue {
    /// The client's named statements.
    public private(set) var statements: [String: ClientStatement] = [:]
    /// What executing the unnamed statement resets (its last Parse).
    public private(set) var unnamedResets = Resets()
    /// The client's unnamed statement (the definition of its last unnamed Parse). PostgreSQL
    /// keeps it across Syncs, until the next unnamed Parse or simple Query, so a client may bind
    /// it in a later transaction, on another backend.
    public private(set) var unnamedStatement: ByteBuffer?
    /// The backend the client holds has the client's unnamed statement (or, when the client has
    /// none, none either). False at every new lease: the backend's unnamed statement may be
    /// another client's, which this client must never execute.
    public private(set) var unnamedOnBackend = false
    /// How many times messages sent so far changed the client's unnamed statement (see
    /// `UnnamedBefore.generation`).
    public private(set) var unnamedGeneration: UInt32 = 0
    /// Portal → what executing it resets (only portals that reset something).
    public private(set) var portalResets: [String: Resets] = [:]
    /// Portal → server-side statement of its Bind, for `cached plan must not change result type`.
    public private(set) var portalStatements: [String: String] = [:]
    /// The proxy parsed one of the client's statements on this backend to learn its row type
    /// before the client's Bind or Describe of it goes out (`statementToCheckFirst`): the
    /// client's messages wait for that answer.
    public private(set) var awaitingShape = false
    /// The statement (key) and parse of the last such check: a copy parsed by it is the database's
    /// current answer, so a row type other than the client's is final (`resultTypeChanged`).
    public private(set) var shapeCheck: (key: String, parsedAt: UInt64)?

    public init() {}

    /// The client's statement named `client`.
    public subscript(client: String) -> ClientStatement? {
        statements[client]
    }

    // MARK: Answered by the proxy, without a backend

    /// A Parse of a name not in use, acknowledged by the proxy: prepared on first use.
    public mutating func define(_ client: String, _ statement: ClientStatement) {
        statements[client] = statement
    }

    /// A Close of a named statement (or `DEALLOCATE name`) answered by the proxy, or sent: the
    /// client no longer has it (the backends keep their copies for whoever prepares it next).
    @discardableResult
    public mutating func remove(_ client: String) -> ClientStatement? {
        statements.removeValue(forKey: client)
    }

    /// A simple Query answered by the proxy: it destroys the unnamed statement, whatever it runs.
    public mutating func simpleQueryAnsweredLocally() {
        unnamedStatement = nil
        unnamedOnBackend = false
        unnamedGeneration &+= 1
    }

    // MARK: Backends

    /// A backend was leased to the client: its unnamed statement may be another client's.
    public mutating func backendLeased() {
        unnamedOnBackend = false
    }

    /// The backend went back to the pool, or was lost: its portals and unnamed statement are
    /// not the client's any more, and no row-type check is under way.
    public mutating func backendDetached() {
        // The storage is kept while small: a client that binds a portal per transaction would
        // otherwise free it and allocate it again each time.
        if !portalStatements.isEmpty { portalStatements.removeAll(keepingCapacity: portalStatements.count <= 8) }
        if !portalResets.isEmpty { portalResets.removeAll(keepingCapacity: portalResets.count <= 8) }
        unnamedOnBackend = false
        awaitingShape = false
        shapeCheck = nil
    }

    // MARK: The unnamed statement

    /// A simple Query goes to the backend: it destroys the unnamed statement (unless PostgreSQL
    /// skips it). It counts as a change even when there is none now: an earlier change undone
    /// later must not bring back a statement this Query destroys. What the client had before,
    /// when the answers are tracked (`tracking`).
    public mutating func simpleQuerySent(tracking: Bool) -> UnnamedBefore? {
        unnamedGeneration &+= 1
        let before = tracking ? currentUnnamed : nil
        unnamedStatement = nil
        unnamedOnBackend = true
        return before
    }

    /// A Close of the unnamed statement goes to the backend: the client has none from now on.
    public mutating func unnamedClosed() -> UnnamedBefore {
        unnamedGeneration &+= 1
        let before = currentUnnamed
        unnamedStatement = nil
        unnamedOnBackend = true
        return before
    }

    /// A Parse of the unnamed statement (`definition`, after the name) goes to the backend.
    public mutating func unnamedParsed(_ definition: ByteBuffer, resets: Resets) -> UnnamedBefore {
        unnamedResets = resets
        unnamedGeneration &+= 1
        let before = currentUnnamed
        unnamedStatement = definition
        unnamedOnBackend = true
        return before
    }

    private var currentUnnamed: UnnamedBefore {
        UnnamedBefore(statement: unnamedStatement, onBackend: unnamedOnBackend, generation: unnamedGeneration)
    }

    /// What a Bind or Describe of the unnamed statement needs first (`ensureUnnamed`).
    public enum UnnamedPreparation: Equatable {
        /// The backend has the client's unnamed statement (or none, as the client).
        case ready
        /// The backend may hold another client's: prepare the client's there (its ParseComplete
        /// dropped), with this definition.
        case parse(ByteBuffer)
        /// The client has none: close the backend's, so PostgreSQL answers as it would directly.
        case close
    }

    /// Before a Bind or Describe of the unnamed statement on a backend that may hold another
    /// client's; from then on the backend has the client's.
    public mutating func ensureUnnamed() -> UnnamedPreparation {
        guard !unnamedOnBackend else { return .ready }
        unnamedOnBackend = true
        if let definition = unnamedStatement { return .parse(definition) }
        return .close
    }

    /// The unnamed statement as `state` says, for a message (`change`) that failed or was
    /// skipped, unless a message sent after it changed the unnamed statement again: that later
    /// change stands, and the backend's unnamed statement is checked again before its next use.
    private mutating func undoUnnamed(_ change: UnnamedBefore, to state: UnnamedBefore) {
        guard unnamedGeneration == change.generation else {
            unnamedOnBackend = false
            return
        }
        unnamedStatement = state.statement
        unnamedOnBackend = state.onBackend
        unnamedGeneration = change.generation &- 1
    }

    // MARK: Named statements

    /// How a client's Parse of a named statement goes to the backend (`parse(client:...)`).
    public enum NamedParse {
        /// The name is in use: PostgreSQL refuses a second Parse of it (42P05), after parsing
        /// the new text (its syntax error, or 25P02 in a failed transaction, comes first), and
        /// keeps the first statement. The backend refuses it the same way on the proxy's
        /// placeholder name, prepared just before with a text that any transaction state accepts
        /// (the client's statement need not be on this backend); the error names the client's.
        case duplicate(placeholder: String)
        /// A new statement, parsed afresh on the backend under `serverName` even when the backend
        /// has the text already: the database infers parameter types now (its copy may predate
        /// DDL), and answers errors (a failed transaction's among them) where it would directly.
        case define(ClientStatement, serverName: String)
    }

    /// A client's Parse of `client` (its `definition`, what it `resets`, the client's
    /// `searchPath`), on its way to the backend that `cache` describes.
    public mutating func parse(
        client: String, definition: ByteBuffer, resets: Resets, searchPath: String?, cache: inout BackendStatementCache
    ) -> NamedParse {
        if statements[client] != nil {
            cache.discardLater(StatementMessages.placeholderName)  // not left in pg_prepared_statements
            return .duplicate(placeholder: StatementMessages.placeholderName)
        }
        let statement = ClientStatement(
            definition: definition, analysed: true, resets: resets, refersTo: resets.executed.flatMap { statements[$0.name]?.key },
            searchPath: searchPath)
        statements[client] = statement
        return .define(statement, serverName: cache.parse(statement.key, at: statement.parsedAt))
    }

    /// The server-side name of the backend's current copy of `statement` (the client's
    /// `client`), marking it used; nil when the proxy must parse it there first
    /// (`injectParse`). A statement whose row type is unknown takes the copy's: what the client
    /// sees first.
    public mutating func useCopy(of statement: ClientStatement, client: String, cache: inout BackendStatementCache) -> String? {
        guard let serverName = cache.use(statement.key, since: statement.parsedAt) else { return nil }
        if statement.shape == nil, let shape = cache.shape(of: statement.key) {
            statements.modifyValueIfPresent(forKey: client) { $0.shape = shape }
        }
        return serverName
    }

    /// The proxy parses the client's `statement` on the backend (its ParseComplete dropped):
    /// the server-side name and the time of that Parse. The database analyses it for the client.
    public mutating func injectParse(
        of statement: ClientStatement, client: String, cache: inout BackendStatementCache
    ) -> (serverName: String, parsedAt: UInt64) {
        let parsedAt = StatementEpoch.next()
        let serverName = cache.parse(statement.key, at: parsedAt)
        if !statement.analysed { statements.modifyValueIfPresent(forKey: client) { $0.analysed = true } }
        return (serverName, parsedAt)
    }

    /// Whether the backend has a copy of `statement` that may serve the client.
    public func backendHasCopy(of statement: ClientStatement, cache: borrowing BackendStatementCache) -> Bool {
        cache.copy(statement.key, since: statement.parsedAt) != nil
    }

    /// SQL `DEALLOCATE client` of one of the client's statements goes to the backend, naming
    /// `serverName`: the client's copy there (`placeholder` false), or the proxy's placeholder,
    /// for a backend without one. Either way the outcome is PostgreSQL's; the statement is taken
    /// out of the client's now (put back if the Query fails: `ResetWatch.removed`).
    public mutating func deallocate(
        _ client: String, serverName: String, placeholder: Bool, cache: inout BackendStatementCache
    ) -> ClientStatement? {
        if placeholder {
            cache.discardLater(serverName)
        } else {
            cache.invalidate(serverName: serverName)
        }
        return statements.removeValue(forKey: client)
    }

    /// SQL `DEALLOCATE name` of a name that is none of the client's protocol-level statements:
    /// if it is one of the proxy's own names, whatever happens, nothing cached is trusted.
    public func deallocateOther(_ name: String, cache: inout BackendStatementCache) {
        if name.hasPrefix("concierge_") { cache.invalidateAll() }
    }

    /// A statement that deallocates every statement (`DEALLOCATE ALL`, `DISCARD ALL`) goes to
    /// the backend: the backend's statements are prepared afresh after it, and the client's
    /// leave the catalogue (so that what follows in the same pipeline sees them gone, as
    /// PostgreSQL will). Returns them, for `restoreStatements` should it fail.
    public mutating func removeAll(cache: inout BackendStatementCache) -> [String: ClientStatement] {
        cache.invalidateAll()
        let removed = statements
        statements.removeAll()
        return removed
    }

    /// A reset failed or was skipped: the client's statements it took out are back (unless the
    /// client defined the name again since).
    public mutating func restoreStatements(of watch: ResetWatch) {
        for (name, statement) in watch.removed where statements[name] == nil {
            statements[name] = statement
        }
    }

    // MARK: Portals

    /// A Bind of `portal` to a statement that resets something (or not: `resets` empty).
    public mutating func notePortalResets(_ resets: Resets, portal: ByteBuffer) {
        if !resets.isEmpty {
            portalResets[String(buffer: portal)] = resets
        } else if !portalResets.isEmpty {
            portalResets[String(buffer: portal)] = nil
        }
    }

    /// A Bind of `portal` to the unnamed statement (`unnamed`) or to a name the client never
    /// prepared (PostgreSQL answers it), sent as the client wrote it.
    public mutating func boundWithoutStatement(portal: ByteBuffer, unnamed: Bool) {
        if !portalStatements.isEmpty { portalStatements[String(buffer: portal)] = nil }
        notePortalResets(unnamed ? unnamedResets : Resets(), portal: portal)
    }

    /// A Bind of `portal` to one of the client's statements, sent for `serverName` (nil: for a
    /// name that does not exist, the statement's row type having changed).
    public mutating func bound(portal: ByteBuffer, serverName: String?) {
        if let serverName {
            portalStatements[String(buffer: portal)] = serverName
        } else if !portalStatements.isEmpty {
            portalStatements[String(buffer: portal)] = nil
        }
    }

    /// What executing `portal` resets, if anything. (The portal's name becomes a String only
    /// for a lookup in a map that is not empty.)
    public func resets(ofPortal portal: ByteBuffer) -> Resets? {
        portalResets.isEmpty ? nil : portalResets[String(buffer: portal)]
    }

    /// The server-side statement `portal` runs, when known.
    public func serverName(ofPortal portal: ByteBuffer) -> String? {
        portalStatements.isEmpty ? nil : portalStatements[String(buffer: portal)]
    }

    // MARK: Row types

    /// Before a client message goes to the backend (`frameType`, `body`, what the classifier
    /// found it `resets`): a Bind or Describe of one of the client's named statements whose row
    /// type is known, or a Query that `EXECUTE`s one. If the backend lacks a current copy, or has
    /// one that another client parsed with another row type (DDL since, or another search_path),
    /// returns the statement: the proxy parses it there now with a Describe (`awaitShape`), and
    /// the message (and everything after it) waits for that answer, after which the copy is the
    /// database's current view and decides (`resultTypeChanged`). One round trip per statement
    /// and backend, the first time that backend serves it to a client that prepared it elsewhere.
    /// Nil: the message goes out now.
    public func statementToCheckFirst(
        frameType: UInt8, body: ByteBuffer, resets: Resets, cache: inout BackendStatementCache
    ) -> (statement: ClientStatement, client: String)? {
        guard !statements.isEmpty else { return nil }
        let client: String
        if frameType == PGMessageType.Frontend.query {
            guard let (name, _) = resets.executed else { return nil }
            client = name
        } else if frameType == PGMessageType.Frontend.bind || frameType == PGMessageType.Frontend.describe {
            // Read as the session sends them: a malformed one names no statement.
            let name: ByteBuffer
            if frameType == PGMessageType.Frontend.bind {
                guard let bind = try? PGFrontend.Bind(body) else { return nil }
                name = bind.statement
            } else {
                guard let describe = try? PGFrontend.describe(body), describe.kind == .statement else { return nil }
                name = describe.name
            }
            guard name.readableBytes > 0 else { return nil }
            client = String(buffer: name)
        } else {
            return nil
        }
        guard let statement = statements[client] else { return nil }
        if let copy = cache.copy(statement.key, since: statement.parsedAt) {
            // Unknown: its Describe is on its way in this batch (the client's own Parse).
            guard let expected = statement.shape, let shape = copy.shape, shape != expected else { return nil }
            if let check = shapeCheck, check.key == statement.key, check.parsedAt == copy.parsedAt { return nil }
            cache.invalidate(key: statement.key)
        } else if statement.shape == nil, frameType != PGMessageType.Frontend.query {
            // Nothing to compare with: prepared in the same round trip (`useCopy`, `injectParse`).
            return nil
        }
        return (statement, client)
    }

    /// The proxy parsed `key` on the backend at `parsedAt`, with a Describe, to learn its row
    /// type: the client's messages wait for the answer (`awaitingShape`).
    public mutating func awaitShape(key: String, parsedAt: UInt64) {
        shapeCheck = (key, parsedAt)
        awaitingShape = true
    }

    /// Whether the backend's copy of `statement` returns another row type than the one the
    /// client prepared: PostgreSQL fails every use of such a statement. Only asked once
    /// `statementToCheckFirst` made the copy's row type known and current; ends that check.
    public mutating func resultTypeChanged(_ statement: ClientStatement, cache: borrowing BackendStatementCache) -> Bool {
        defer { shapeCheck = nil }
        guard let expected = statement.shape, let shape = cache.shape(of: statement.key) else { return false }
        return shape != expected
    }

    /// The answer to a Describe the proxy sent after a Parse (`PendingResponse.shapeDescribe`):
    /// the row type (`shape`; nil if malformed) of the backend's copy, and of the client's
    /// statement if that Parse was its first. `waiting`: the client's messages go on.
    public mutating func recordShape(
        _ shape: Int?, key: String, serverName: String, parsedAt: UInt64, client: String?, clientParsedAt: UInt64,
        waiting: Bool, cache: inout BackendStatementCache
    ) {
        if let shape {
            cache.record(shape: shape, key: key, serverName: serverName, parsedAt: parsedAt)
            if let client, statements[client]?.key == key, statements[client]?.parsedAt == clientParsedAt,
               statements[client]?.shape == nil
            {
                statements.modifyValue(forKey: client) { $0.shape = shape }
            }
        }
        if waiting { awaitingShape = false }
    }

    // MARK: Errors

    /// An error that names one of the proxy's statements (`concierge_...`): the client must not
    /// see the proxy's names, so they are replaced by the client's own (`hint`, or the statement
    /// whose key it is). Unless `expected` (or the error is not that a statement is missing, or
    /// present for a Parse), the proxy's view of the backend was wrong, a bug: the backend's
    /// statements are all prepared afresh from the next use on (`invalidated`). Nil (the usual
    /// case): the error is forwarded as it is.
    public func errorWithoutInternalNames(
        _ body: ByteBuffer, expected: Bool = false, hint: String? = nil, cache: inout BackendStatementCache
    ) -> (error: ByteBuffer, invalidated: Bool)? {
        let prefix = Array("concierge_".utf8)
        let bytes = Array(body.readableBytesView)
        guard bytes.count >= prefix.count,
              (0...(bytes.count - prefix.count)).contains(where: { bytes[$0..<($0 + prefix.count)].elementsEqual(prefix) })
        else { return nil }
        // Errors about a statement the backend has (a Bind with the wrong number of parameters)
        // name it too; only one that says it is missing (or present, for a Parse) means the
        // proxy's view of the backend was wrong.
        let code = (try? PGParse.errorResponse(body))?.code
        let expected = expected || (code != "26000" && code != "42P05")
        if !expected { cache.invalidateAll() }
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            if index + prefix.count <= bytes.count, bytes[index..<(index + prefix.count)].elementsEqual(prefix) {
                var end = index + prefix.count
                while end < bytes.count, bytes[end] == UInt8(ascii: "_") || (bytes[end] >= 0x30 && bytes[end] <= 0x39)
                    || (bytes[end] >= 0x61 && bytes[end] <= 0x66) { end += 1 }
                let serverName = String(decoding: bytes[index..<end], as: UTF8.self)
                let client = hint
                    ?? statements.first(where: { serverName == $0.value.key || serverName.hasPrefix($0.value.key + "_") })?.key
                out += Array((client ?? "").utf8)
                index = end
            } else {
                out.append(bytes[index])
                index += 1
            }
        }
        var frame = ByteBuffer()
        frame.writeInteger(PGMessageType.Backend.errorResponse)
        frame.writeInteger(Int32(4 + out.count))
        frame.writeBytes(out)
        return (frame, !expected)
    }

    /// A message that `failed` (or was skipped after a failure: PostgreSQL skips every message up
    /// to Sync) did not create, close or destroy what it would have: `entry` is undone. Entries
    /// are undone last first, then the failed one: each skipped message restores what the one
    /// before it left (a Close then a Parse of the same name, two unnamed Parses).
    /// `transactionFailed`: the backend's transaction had failed before. Returns whether the
    /// messages waiting for a row type (`awaitingShape`) go on: the Parse they waited for failed.
    @discardableResult
    public mutating func forget(
        _ entry: PendingResponse, failed: Bool, transactionFailed: Bool, cache: inout BackendStatementCache
    ) -> Bool {
        switch entry {
        case .parse(let client, let key, let serverName):
            if let client { statements[client] = nil }
            if !key.isEmpty { cache.forget(key, serverName: serverName) }
        case .unnamedParse(let before):
            if failed {
                // PostgreSQL drops the unnamed statement before parsing the new one.
                undoUnnamed(before, to: UnnamedBefore(statement: nil, onBackend: true, generation: 0))
            } else {
                undoUnnamed(before, to: before)
            }
        case .injectedParse(let client, let key, let serverName, let analysedBefore):
            cache.forget(key, serverName: serverName)
            if client == nil { unnamedOnBackend = false }  // the client's unnamed statement is not there
            // A statement a backend accepted before and this one refuses (its text no longer
            // valid after DDL) stays the client's: PostgreSQL keeps it, and fails each use of it
            // with the same error until the DDL is undone. Its next use parses it again. One
            // whose Parse the proxy answered without a backend and that fails at its first
            // analysis is gone, as after a failed Parse (unless the transaction had failed).
            if failed, let client, !analysedBefore, !transactionFailed { statements[client] = nil }
        case .injectedClose(unnamed: true):
            unnamedOnBackend = false
        case .shapeDescribe(_, _, _, _, _, waiting: true):
            awaitingShape = false  // skipped after its Parse failed: the waiting messages go on
            return true
        case .close(let before?):
            if !failed { undoUnnamed(before, to: before) }
        case .localParseComplete(let client):
            statements[client] = nil
        case .localCloseComplete(let client, let removed?):
            // A skipped Close closed nothing.
            if statements[client] == nil { statements[client] = removed }
        case .execute(_, let watch?):
            // A reset that failed or was skipped removed nothing.
            restoreStatements(of: watch)
        case .resetQuery(let watch):
            // Skipped after an error before it: it removed and destroyed nothing.
            restoreStatements(of: watch)
            if let before = watch.unnamedBefore { undoUnnamed(before, to: before) }
        default:
            break
        }
        return false
    }
}
