import ConnectionPool
import MySQLWire
import NIOCore
import SQLClassifier

/// A MySQL client's session after login: when it needs a backend, how the backend is made to
/// match the client's session state, where each command's response ends, and when the backend
/// goes back to the pool. Pure: the NIO handler (`MySQLClientSession`, MySQLServer) frames the
/// bytes, runs the actions, and owns the backend object.
///
/// MySQL is one command, one response: a client sends a command (packet sequence 0) and reads
/// the server's answer to its end before the next one (a client that pipelines anyway is served:
/// every command's expectation is queued). The backend is borrowed for a command and returned
/// after the final packet of a response when the server says no more results follow, no
/// transaction is open, autocommit is on and no cursor is open, and nothing pins the session.
public struct MySQLSessionMachine: Sendable {
    public enum State: Sendable, Hashable {
        /// No backend: the next command borrows one.
        case idle
        /// The pool was asked; commands are held.
        case borrowing
        /// A backend was leased; the proxy is restoring the client's session state on it (its
        /// own statements' responses are consumed here) before the held commands go.
        case restoring(RestoreStep)
        /// Commands run on the backend.
        case attached
        /// The session ended (quit, a fatal error, the backend lost with state on it).
        case closed
    }

    public enum RestoreStep: Sendable, Hashable {
        /// `SET SESSION ...` sent; its response is awaited.
        case variables(thenSchema: String?)
        /// COM_INIT_DB sent.
        case schema
        /// `MySQLRestorePlan.clearDiagnosticsStatement` sent (first, before the plan's others):
        /// the backend's diagnostics area held another client's conditions.
        case diagnostics
    }

    /// A complete client command as the handler framed it.
    public struct Command: Sendable {
        /// The command byte (the payload's first byte).
        public var code: UInt8
        /// The raw packets (headers included): forwarded as they are.
        public var bytes: ByteBuffer
        public init(code: UInt8, bytes: ByteBuffer) {
            self.code = code
            self.bytes = bytes
        }
    }

    public enum Action: Sendable {
        case none
        /// Ask the pool for a backend (`borrowed` or `borrowFailed` follows).
        case borrow
        /// Write these client commands to the backend, in order, and flush.
        case sendToBackend(MySQLWrites)
        /// Write this command to the backend (attached: no borrow needed).
        case forwardToBackend(ByteBuffer)
        /// Send the backend a COM_QUERY with this text (a restore statement of the proxy's own).
        case sendRestoreQuery(String)
        /// Send the backend a COM_INIT_DB for this schema.
        case sendInitDB(String)
        /// Forward the server packet just given to the client.
        case forwardToClient
        /// Forward the server packet just given to the client, then return the backend to the pool.
        case forwardToClientAndRelease
        /// Forward the server packet just given to the client, then close the backend: the
        /// server is closing it (an ERR of SQLSTATE class 08), so it must not go back to the pool
        /// for another client's next command to find it dead.
        case forwardToClientAndDiscard
        /// Answer the client with this error packet (sequence id 1: the answer to its command).
        case answerClient(MySQLErrPacket)
        /// Answer a COM_PING (an OK, sequence id 1) without a backend.
        case answerPing
        /// Answer the client's command with an OK (sequence id 1): a COM_STMT_RESET the proxy
        /// handles itself (no cursor to close on a backend).
        case answerOK
        /// Forward the server packet just given (a COM_STMT_PREPARE's OK) to the client with
        /// this statement id in place of the backend's.
        case forwardToClientRewritingStatementID(UInt32)
        /// Return the backend to the pool (reusable or not).
        case release(reusable: Bool)
        /// Close the client connection, after sending it this error if any; release the backend
        /// (not reusable) if one is held.
        case close(MySQLErrPacket?)
        /// Release the backend (reusable), then close the client: COM_QUIT.
        case quit
        /// The login stands (`verifyLoginSchema`): send the client its login OK, and return the
        /// backend to the pool (reusable) if there is one. `schemaChecked`: the database showed
        /// that the schema is there and the user may use it (worth remembering); false when no
        /// backend could be had to check it (the database is down, a borrow timeout), and then
        /// the client's first command meets that problem, as it does without a schema.
        case loginStands(schemaChecked: Bool)
    }

    public private(set) var state: State = .idle {
        didSet {
            // The backend's statements are the lease holder's only while it holds the lease.
            if !holdsBackend { statementCache = nil }
        }
    }
    /// Why the session is pinned to its backend (empty: it is not).
    public private(set) var pins: MySQLPinReasons = []
    /// The session state the client wants (what its backend must have).
    public private(set) var client = MySQLSessionState()
    /// The state the leased backend has (valid while a backend is held).
    public private(set) var backend = MySQLSessionState()
    /// Where the current response stands; made for the capabilities this client negotiated
    /// (its backends share them: the pool key carries them).
    public private(set) var tracker: MySQLResponseTracker
    /// Commands waiting for a backend, a restore, or a prepare's answer (`awaiting`), or to be
    /// answered by the proxy after the responses before them: sent (or answered) in order.
    private var held: [Command] = []
    /// The client's binary-protocol statements, by the ids the proxy gave it.
    public private(set) var statements: [UInt32: MySQLClientStatement] = [:]
    private var nextStatementID: UInt32 = 1
    /// The id of the client's last prepared statement (what MariaDB's id 0xFFFFFFFF names).
    private var lastPreparedID: UInt32?
    /// The leased backend's prepared statements (nil without a lease).
    public private(set) var statementCache: MySQLBackendStatementCache?
    /// The server's `max_prepared_stmt_count`, as the last lease reported it: a client may not
    /// hold more statements through the proxy than directly.
    private var statementLimit = 16_382
    /// Statements with a cursor open on the backend (COM_STMT_EXECUTE with a cursor type, not
    /// yet exhausted, reset or closed): their COM_STMT_FETCH must reach the same backend, so
    /// it is kept.
    public private(set) var openCursors: Set<UInt32> = []
    /// Responses the proxy must treat other than by forwarding them, by their index among the
    /// responses of the lease (`sentResponses` when sent, `finishedResponses` when read).
    private var roles: [(index: UInt64, role: ResponseRole)] = []
    private var sentResponses: UInt64 = 0
    private var finishedResponses: UInt64 = 0
    /// Responses of prepares under way (the client's, or the proxy's own for a statement the
    /// backend lacks): the commands after them wait, since they may name the statement.
    private var awaiting = 0
    /// A step of the proxy's own statement preparation failed and its error answered the
    /// client's command: the rest of that preparation is only cleaned up.
    private var lazyPreparationFailed = false
    /// Backend statements to close with the next commands sent (prepared for a command that
    /// failed meanwhile).
    private var pendingCloses: [UInt32] = []
    /// Held commands can move now (a prepare was answered, or responses before a command the
    /// proxy answers itself finished): the handler calls `resume()` until it is false.
    public private(set) var needsResume = false

    /// What a response is to the proxy.
    enum ResponseRole: Sendable {
        /// The client's COM_STMT_PREPARE: forwarded, its OK's statement id the client's own.
        case clientPrepare(MySQLStatementKey)
        /// The proxy preparing a client's statement on this backend for the held execute:
        /// consumed (an ERR is that execute's answer).
        case ownPrepare(MySQLStatementKey)
        /// A COM_INIT_DB around the proxy's own prepare (to the schema the client prepared in,
        /// then back): consumed; the first one's ERR answers the held execute.
        case ownInitDB(first: Bool)
        /// A COM_STMT_RESET of the proxy's (closing a cursor of a statement the client closed).
        case ownReset
        /// The client's execute of a statement that opens (or had) a cursor.
        case execute(UInt32)
        case fetch(UInt32)
        case reset(UInt32)
    }
    /// A command's response is outstanding (the tracker queues pipelined ones).
    var inFlight: Bool { !tracker.isIdle }
    /// The packet `serverPacket` just read was an OK packet at the start of a response or result
    /// (the handler rewrites those for clients without CLIENT_SESSION_TRACK).
    public private(set) var lastPacketWasOK = false
    /// The packet `serverPacket` just read was the last of the response to one of the client's
    /// commands (not of a restore of the proxy's own): the database's answer is complete.
    public private(set) var lastPacketEndedResponse = false
    /// Commands (this one included) during which the backend is kept for a `SET TRANSACTION`
    /// that applies to the next transaction.
    private var holdForNextTransaction = 0
    /// The last response left conditions in the server's diagnostics area (an ERR, or warnings):
    /// the backend is kept for the client's next command, so that SHOW WARNINGS, SHOW ERRORS,
    /// GET DIAGNOSTICS or @@warning_count read the client's own conditions there and not
    /// another backend's. That command's own response decides again.
    private var holdForDiagnostics = false
    /// The client's earlier conditions are still in the diagnostics area through its prepare.
    private var diagnosticsBeforePrepare = false
    /// What ROW_COUNT() and FOUND_ROWS() answer for the client (MySQLSessionFunctions.swift).
    public internal(set) var functions = MySQLSessionFunctions()
    /// KILL QUERYs of the proxy's on their way to this backend (MySQLSessionMachine+Kill.swift):
    /// until the server has them, the backend must not serve another client, whose statement
    /// they would kill.
    var killsInFlight = 0
    /// The rest of a lease's restore plan while the backend's diagnostics area is cleared.
    private var planAfterClearing: MySQLRestorePlan?
    /// A lease made to check the login schema (`verifyLoginSchema`) is under way: the client
    /// has not had its login OK yet, and errors until then answer its login.
    public private(set) var verifyingLoginSchema = false
    /// The client is sending a LOCAL INFILE's content (after the server asked for it).
    public private(set) var sendingInfile = false
    /// The last server status seen on this backend (for the release decision).
    public private(set) var status: MySQLServerStatus = [.autocommit]
    /// The schema the client logged in with.
    public let loginSchema: String?
    /// The negotiated capabilities (SESSION_TRACK decides whether the OK packets the client sees
    /// may carry session-state information).
    public let capabilities: MySQLCapabilities

    public init(capabilities: MySQLCapabilities, loginSchema: String?) {
        self.capabilities = capabilities
        self.loginSchema = (loginSchema?.isEmpty ?? true) ? nil : loginSchema
        // Backends of clients with a login schema are shared by all of them and log in without
        // one: the schema is part of the state a lease restores (COM_INIT_DB).
        self.client = MySQLSessionState(schema: self.loginSchema)
        self.tracker = MySQLResponseTracker(capabilities: capabilities)
    }

    /// Whether the session holds a backend (leased).
    public var holdsBackend: Bool {
        switch state {
        case .restoring, .attached: return true
        case .idle, .borrowing, .closed: return false
        }
    }

    /// Whether the client is in a transaction as the server last reported.
    public var inTransaction: Bool { status.contains(.inTransaction) || !status.contains(.autocommit) }

    /// Whether the client has nothing under way: no command waits for a backend or for its
    /// response, and no transaction is open (with autocommit off, a transaction is open from
    /// its first statement to its COMMIT or ROLLBACK, as the server's IN_TRANS flag says). A
    /// pinned client between commands is between transactions too. Only then is a client idle
    /// (`idle_client_timeout`) or closed at once by a drain.
    public var isBetweenTransactions: Bool {
        switch state {
        case .idle:
            return true
        case .attached:
            return !inFlight && held.isEmpty && !sendingInfile && !status.contains(.inTransaction)
        case .borrowing, .restoring, .closed:
            return false
        }
    }

    // MARK: Login

    /// The client logged in with a schema the proxy has not seen on the database for this user:
    /// a MySQL server refuses such a login (`ERROR 1049 (42000): Unknown database`, or 1044 for
    /// a schema the user may not use), so the proxy checks before it answers. A backend is
    /// borrowed and the lease's restore selects the schema (COM_INIT_DB); `.loginStands`
    /// follows, or the server's error (`.close`), to be sent as the answer to the login. A
    /// failed borrow does not fail the login (`.loginStands(schemaChecked: false)`): the proxy
    /// could not ask, and the database's absence is not the client's error.
    public mutating func verifyLoginSchema() -> Action {
        guard state == .idle, loginSchema != nil else { return .loginStands(schemaChecked: false) }
        verifyingLoginSchema = true
        state = .borrowing
        return .borrow
    }

    // MARK: Client events

    /// A complete command from the client; `classification` for COM_QUERY's text (nil for
    /// other commands). The pins it adds apply before it runs.
    public mutating func commandReceived(_ command: Command, classification: MySQLClassification?) -> Action {
        if holdForNextTransaction > 0 { holdForNextTransaction -= 1 }
        // A COM_STMT_PREPARE leaves the diagnostics area as it is (MariaDB): the conditions an
        // earlier statement left stay the client's to read after it.
        diagnosticsBeforePrepare = holdForDiagnostics && command.code == MySQLCommand.stmtPrepare.rawValue
        holdForDiagnostics = false
        if let classification {
            pins.formUnion(classification.pinReasons)
            if classification.sets.contains(where: { $0.scope == .nextTransaction }) {
                // `SET TRANSACTION ...` without a scope applies to the session's next
                // transaction only: the backend stays until that one (the next command) is done.
                holdForNextTransaction = 1
            }
            if classification.unlocksTables {
                // UNLOCK TABLES ends LOCK TABLES and FLUSH TABLES WITH READ LOCK: once it
                // succeeds nothing of them is left on the backend.
                pins.subtract([.lockTables, .globalReadLock])
            }
        }
        switch command.code {
        case MySQLCommand.quit.rawValue:
            let wasHolding = holdsBackend
            state = .closed
            // An open transaction (or autocommit off: an ERR carries no status, so a failed
            // statement may have opened one unseen) dies with the client: the backend is closed
            // and the server rolls it back. Reused, the next client would run inside it, or its
            // restore's `SET autocommit` would commit it.
            return wasHolding && pins.isEmpty && !inFlight && !inTransaction && openCursors.isEmpty ? .quit : .close(nil)
        case MySQLCommand.ping.rawValue where !holdsBackend && state != .borrowing:
            return .answerPing
        case MySQLCommand.stmtPrepare.rawValue, MySQLCommand.stmtExecute.rawValue, MySQLCommand.stmtSendLongData.rawValue,
            MySQLCommand.stmtClose.rawValue, MySQLCommand.stmtReset.rawValue, MySQLCommand.stmtFetch.rawValue:
            return statementCommand(command)
        case MySQLCommand.setOption.rawValue:
            // Turns multi-statements on or off for the session: not restored on another backend.
            pins.insert(.setVariable)
        default:
            break
        }
        let expectation = MySQLResponseTracker.expectation(for: MySQLCommand(rawValue: command.code) ?? .query)
        if case .attached = state, held.isEmpty, awaiting == 0 {
            // The common case: straight to the backend the client holds.
            expect(expectation)
            return .forwardToBackend(command.bytes)
        }
        // Without a backend, a command that gets no answer has nothing to act on.
        return enqueue(command, settledWithoutBackend: expectation == .none ? Action.none : nil)
    }

    /// Holds a command until it can go (in order with the ones before it): with no backend it
    /// borrows one, unless `settledWithoutBackend` answers it; attached, `pump()` sends it when
    /// no prepare is awaited.
    private mutating func enqueue(_ command: Command, settledWithoutBackend: Action?) -> Action {
        switch state {
        case .closed:
            return .none
        case .idle:
            if let settledWithoutBackend { return settledWithoutBackend }
            held.append(command)
            state = .borrowing
            return .borrow
        case .borrowing, .restoring:
            held.append(command)
            return .none
        case .attached:
            held.append(command)
            return awaiting > 0 ? .none : pump()
        }
    }

    // MARK: Binary-protocol prepared statements

    /// COM_STMT_*: what needs no backend is done at once when the client holds none (closing a
    /// statement, buffering long data, the errors of an unknown id); the rest is held and sent
    /// in order by `pump()`, which maps the client's statement ids to the backend's.
    private mutating func statementCommand(_ command: Command) -> Action {
        enqueue(command, settledWithoutBackend: state == .idle ? withoutBackend(command) : nil)
    }

    /// The client's statement id in a command (MariaDB's 0xFFFFFFFF: the last one prepared).
    private func clientStatementID(_ command: Command) -> UInt32 {
        let id = MySQLStatementPackets.statementID(inPacket: command.bytes) ?? 0
        return id == 0xFFFF_FFFF ? (lastPreparedID ?? id) : id
    }

    /// A statement command the proxy settles without a backend (nil: it needs one): with no
    /// cursor open, COM_STMT_RESET has nothing to do on a backend and COM_STMT_FETCH has no
    /// cursor to read; an unknown id gets the server's error.
    private mutating func withoutBackend(_ command: Command) -> Action? {
        let id = clientStatementID(command)
        switch command.code {
        case MySQLCommand.stmtPrepare.rawValue:
            return statements.count >= statementLimit ? .answerClient(Self.tooManyStatements(statementLimit)) : nil
        case MySQLCommand.stmtClose.rawValue:
            statements[id] = nil
            return openCursors.contains(id) ? nil : Action.none
        case MySQLCommand.stmtSendLongData.rawValue:
            // Held until the execute, which may run on another backend. An unknown id is dropped,
            // as the server would (it reports that at the execute).
            statements.modifyValueIfPresent(forKey: id) { $0.longData.append(command.bytes) }
            return Action.none
        case MySQLCommand.stmtReset.rawValue:
            guard statements[id] != nil else { return .answerClient(Self.unknownStatement(id, in: "mysqld_stmt_reset")) }
            statements.modifyValue(forKey: id) { $0.longData.removeAll() }
            return openCursors.contains(id) ? nil : .answerOK
        case MySQLCommand.stmtFetch.rawValue:
            guard statements[id] != nil else { return .answerClient(Self.unknownStatement(id, in: "mysqld_stmt_fetch")) }
            return openCursors.contains(id) ? nil : .answerClient(Self.noOpenCursor(id))
        case MySQLCommand.stmtExecute.rawValue:
            return statements[id] == nil ? .answerClient(Self.unknownStatement(id, in: "mysqld_stmt_execute")) : nil
        default:
            return nil
        }
    }

    /// MySQL's ER_UNKNOWN_STMT_HANDLER, as the server words it for the command.
    static func unknownStatement(_ id: UInt32, in function: String) -> MySQLErrPacket {
        MySQLErrPacket(code: 1243, sqlState: "HY000", message: "Unknown prepared statement handler (\(id)) given to \(function)")
    }

    /// MySQL's ER_STMT_HAS_NO_OPEN_CURSOR.
    static func noOpenCursor(_ id: UInt32) -> MySQLErrPacket {
        MySQLErrPacket(code: 1421, sqlState: "HY000", message: "The statement (\(id)) has no open cursor.")
    }

    /// MySQL's ER_MAX_PREPARED_STMT_COUNT_REACHED: a client holds as many statements as the
    /// server allows all its connections together.
    static func tooManyStatements(_ limit: Int) -> MySQLErrPacket {
        MySQLErrPacket(
            code: 1461, sqlState: "42000",
            message: "Can't create more than max_prepared_stmt_count statements (current value: \(limit))")
    }

    /// What a held command needs done on the leased backend.
    private enum Step {
        /// Written (or settled without an answer): the next command may go.
        case done
        /// Its answer, or the answer to the proxy's own commands written for it, must come
        /// before the next command goes (a prepare); `sent`: the command itself was written
        /// (else it goes once they are answered).
        case wait(sent: Bool)
        /// The proxy answers it itself, once nothing before it is outstanding.
        case answer(Action)
    }

    /// Sends the held commands in order while attached: each statement command with the
    /// backend's id, after the backend's own preparation of the statement when it lacks it.
    /// Stops at a prepare (the commands after it may name the new statement) and before a
    /// command the proxy answers itself while responses are outstanding (answers keep their
    /// order).
    private mutating func pump() -> Action {
        needsResume = false
        guard case .attached = state else { return .none }
        var writes = MySQLWrites()
        for id in pendingCloses { writes.append(MySQLStatementPackets.command(.stmtClose, statementID: id)) }
        pendingCloses.removeAll()
        while awaiting == 0, !held.isEmpty {
            let command = held[0]
            switch step(command, writes: &writes) {
            case .done:
                held.removeFirst()
            case .wait(let sent):
                if sent { held.removeFirst() }
            case .answer(let action):
                if inFlight || !writes.isEmpty {
                    // After the responses before it: `serverPacket` asks for a resume.
                    return writes.isEmpty ? .none : .sendToBackend(writes)
                }
                held.removeFirst()
                functions.commandRanNoStatement()
                needsResume = true
                return action
            }
        }
        if writes.isEmpty { return releaseIfPossible() }
        if !inFlight, held.isEmpty {
            // Only commands without an answer went (COM_STMT_CLOSE): the lease may end next.
            needsResume = true
        }
        return .sendToBackend(writes)
    }

    private mutating func role(_ role: ResponseRole) {
        roles.append((sentResponses, role))
    }

    /// One held command on the leased backend (see `pump`).
    private mutating func step(_ command: Command, writes: inout MySQLWrites) -> Step {
        guard let cache = statementCache else {
            writes.append(command.bytes)
            expect(MySQLResponseTracker.expectation(for: MySQLCommand(rawValue: command.code) ?? .query))
            return .done
        }
        statementLimit = cache.serverLimit
        let id = clientStatementID(command)
        switch command.code {
        case MySQLCommand.stmtPrepare.rawValue:
            if let local = withoutBackend(command) { return .answer(local) }
            let key = MySQLStatementKey(schema: client.schema, sql: MySQLStatementPackets.sql(ofPrepare: command.bytes))
            for old in cache.makeRoom(for: key) { writes.append(MySQLStatementPackets.command(.stmtClose, statementID: old)) }
            writes.append(command.bytes)
            role(.clientPrepare(key))
            expect(.prepareResponse)
            awaiting += 1
            return .wait(sent: true)
        case MySQLCommand.stmtExecute.rawValue:
            if let local = withoutBackend(command) { return .answer(local) }
            return execute(command, id: id, cache: cache, writes: &writes)
        case MySQLCommand.stmtFetch.rawValue, MySQLCommand.stmtReset.rawValue, MySQLCommand.stmtClose.rawValue:
            // The statement's slot on this backend, looked up before a close forgets it.
            var slot: Int?
            if openCursors.contains(id), statements[id] != nil { slot = cache.find(&statements[id]!) }
            if let local = withoutBackend(command) {
                if case .none = local { return .done }
                return .answer(local)
            }
            guard let slot, let entry = cache.slots[slot] else {
                // A cursor keeps its backend and its statement there, so this does not happen;
                // answered as the server does a statement without a cursor.
                openCursors.remove(id)
                if command.code == MySQLCommand.stmtFetch.rawValue { return .answer(.answerClient(Self.noOpenCursor(id))) }
                if command.code == MySQLCommand.stmtReset.rawValue { return .answer(.answerOK) }
                return .done
            }
            switch command.code {
            case MySQLCommand.stmtFetch.rawValue:
                MySQLStatementPackets.appendWithStatementID(entry.backendID, command.bytes, to: &writes)
                role(.fetch(id))
                expect(.fetch)
            case MySQLCommand.stmtReset.rawValue:
                MySQLStatementPackets.appendWithStatementID(entry.backendID, command.bytes, to: &writes)
                role(.reset(id))
                expect(.response)
            default:
                // The client closed a statement whose cursor is open: the backend's statement
                // stays (other clients may use it), its cursor goes.
                openCursors.remove(id)
                writes.append(MySQLStatementPackets.command(.stmtReset, statementID: entry.backendID))
                role(.ownReset)
                expect(.response)
            }
            return .done
        case MySQLCommand.stmtSendLongData.rawValue:
            _ = withoutBackend(command)
            return .done
        default:
            writes.append(command.bytes)
            expect(MySQLResponseTracker.expectation(for: MySQLCommand(rawValue: command.code) ?? .query))
            return .done
        }
    }

    /// A COM_STMT_EXECUTE of a known statement: prepared on this backend first if it lacks it
    /// (`.wait`, the command stays held), then sent with the backend's id, the client's long
    /// data before it, and the client's parameter types when it left them out and the backend's
    /// statement has other ones bound.
    private mutating func execute(_ command: Command, id: UInt32, cache: MySQLBackendStatementCache, writes: inout MySQLWrites) -> Step {
        // One lookup, one write-back: the per-execute path (the copy shares its arrays).
        var statement = statements[id]!
        defer { statements[id] = statement }
        let parameterCount = statement.parameterCount
        if let sent = MySQLStatementPackets.boundTypes(inExecute: command.bytes, parameterCount: parameterCount),
           statement.types.map({ !$0.elementsEqual(sent) }) ?? true
        {
            statement.types = Array(sent)
        }
        guard let slot = cache.find(&statement), let entry = cache.slots[slot] else {
            prepareOnBackend(statement.key, cache: cache, writes: &writes)
            return .wait(sent: false)
        }
        if !statement.longData.isEmpty {
            for packet in statement.longData {
                MySQLStatementPackets.appendWithStatementID(entry.backendID, packet, to: &writes)
            }
            statement.longData.removeAll()
        }
        let types = statement.types
        if MySQLStatementPackets.omitsTypes(command.bytes, parameterCount: parameterCount), let types, entry.boundTypes != types {
            writes.append(MySQLStatementPackets.execute(command.bytes, backendID: entry.backendID, insertingTypes: types, parameterCount: parameterCount))
        } else {
            MySQLStatementPackets.appendWithStatementID(entry.backendID, command.bytes, to: &writes)
        }
        if entry.boundTypes != types { cache.setBoundTypes(types, slot: slot) }
        let flags = command.bytes.getInteger(at: command.bytes.readerIndex + 9, as: UInt8.self) ?? 0
        if flags & 0x07 != 0 || openCursors.contains(id) { role(.execute(id)) }
        expect(.response)
        return .done
    }

    /// The proxy's own preparation of a client's statement on the leased backend, in the schema
    /// the client prepared it in (selected for the prepare and then back, when the backend's is
    /// another; a statement prepared with no schema selected is prepared in the current one,
    /// since MySQL cannot go back to "none").
    private mutating func prepareOnBackend(_ key: MySQLStatementKey, cache: MySQLBackendStatementCache, writes: inout MySQLWrites) {
        lazyPreparationFailed = false
        for old in cache.makeRoom(for: key) { writes.append(MySQLStatementPackets.command(.stmtClose, statementID: old)) }
        let switchSchema: (to: String, back: String)?
        if let wanted = key.schema, let current = backend.schema, wanted != current {
            switchSchema = (wanted, current)
        } else {
            switchSchema = nil
        }
        if let switchSchema {
            writes.append(Self.initDB(switchSchema.to))
            role(.ownInitDB(first: true))
            expect(.response)
            awaiting += 1
        }
        writes.append(MySQLStatementPackets.prepare(key.sql))
        role(.ownPrepare(key))
        expect(.prepareResponse)
        awaiting += 1
        if let switchSchema {
            writes.append(Self.initDB(switchSchema.back))
            role(.ownInitDB(first: false))
            expect(.response)
            awaiting += 1
        }
    }

    static func initDB(_ schema: String) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(schema.utf8.count + 5)
        out.writeMySQLCommand(.initDB, schema)
        return out
    }

    /// Moves the held commands on after `needsResume` (see there).
    public mutating func resume() -> Action {
        guard needsResume else { return .none }
        return pump()
    }

    /// LOCAL INFILE content from the client (only while `sendingInfile`): forwarded; the empty
    /// packet that ends it leaves the tracker waiting for the server's OK or ERR.
    public mutating func infileDataReceived(isLast: Bool) {
        if isLast { sendingInfile = false }
    }

    /// A command whose response the tracker awaits was written in the lease (attached).
    private mutating func expect(_ expectation: MySQLResponseTracker.Expectation) {
        guard expectation != .none else { return }
        tracker.commandSent(expectation)
        sentResponses &+= 1
    }

    // MARK: Pool events

    /// The pool leased a backend whose session state is `backendState`; `baseline` is its pool
    /// key's baseline, `noBackslashEscapes` whether its sql_mode has NO_BACKSLASH_ESCAPES.
    public mutating func borrowed(
        backendState: MySQLSessionState, baseline: [String: String], noBackslashEscapes: Bool,
        statements cache: MySQLBackendStatementCache? = nil
    ) -> Action {
        guard state == .borrowing else {
            // The client left meanwhile: give it back.
            return .release(reusable: true)
        }
        backend = backendState
        statementCache = cache
        if let cache { statementLimit = cache.serverLimit }
        sentResponses = 0
        finishedResponses = 0
        roles.removeAll(keepingCapacity: true)
        awaiting = 0
        status = [.autocommit]
        let plan = MySQLRestorePlan(
            client: client, backend: backendState, baseline: baseline, loginSchema: nil,
            noBackslashEscapes: noBackslashEscapes)
        if plan.clearDiagnostics {
            // Another client's warnings or error must not be what this client's SHOW WARNINGS
            // shows: cleared first, then the rest of the plan.
            planAfterClearing = plan
            state = .restoring(.diagnostics)
            tracker.commandSent(.response)
            return .sendRestoreQuery(MySQLRestorePlan.clearDiagnosticsStatement)
        }
        return restore(plan)
    }

    /// The plan's SET SESSION, then its COM_INIT_DB, then the held commands.
    private mutating func restore(_ plan: MySQLRestorePlan) -> Action {
        if let statement = plan.setStatement {
            state = .restoring(.variables(thenSchema: plan.schema))
            tracker.commandSent(.response)
            return .sendRestoreQuery(statement)
        }
        if let schema = plan.schema {
            state = .restoring(.schema)
            tracker.commandSent(.response)
            return .sendInitDB(schema)
        }
        return sendHeld()
    }

    private mutating func sendHeld() -> Action {
        if verifyingLoginSchema {
            // The restore selected the login schema (or the backend had it): the login stands.
            // The client sends nothing before its login OK, so nothing is held.
            verifyingLoginSchema = false
            held.removeAll()
            state = .idle
            return .loginStands(schemaChecked: true)
        }
        state = .attached
        return pump()
    }

    /// The pool could not lease one: the held commands fail with `error` (RDS's 9501 for a
    /// timeout), and the session stays usable.
    public mutating func borrowFailed(_ error: MySQLErrPacket) -> Action {
        guard state == .borrowing else { return .none }
        held.removeAll()
        functions.commandsDropped()
        state = .idle
        if verifyingLoginSchema {
            verifyingLoginSchema = false
            return .loginStands(schemaChecked: false)
        }
        return .answerClient(error)
    }

    // MARK: Backend events

    /// A packet from the backend (its payload). Restoring: the proxy's own statements' answers
    /// are consumed. Attached: forwarded, and the backend released after the final packet of a
    /// response when nothing keeps it.
    public mutating func serverPacket(_ payload: ByteBuffer) throws(MySQLWireError) -> Action {
        lastPacketWasOK = false
        lastPacketEndedResponse = false
        switch state {
        case .restoring(let step):
            let outcome = try tracker.serverPacket(payload)
            switch outcome {
            case .inProgress, .localInfileRequested:
                return .none
            case .finished(let status, let wasError):
                self.status = status
                if wasError {
                    // The client's state cannot be given to this backend (a variable this server
                    // refuses, a schema dropped since): the backend is left as it is, not reused,
                    // and the client's command gets the server's error.
                    let error = (try? MySQLErrPacket(parsing: payload)) ?? MySQLErrPacket(
                        code: 1105, sqlState: "HY000", message: "Unknown error")
                    held.removeAll()
                    state = .closed
                    return .close(error)
                }
                try? recordSessionState(payload)
                switch step {
                case .diagnostics:
                    backend.mayHoldConditions = false
                    let plan = planAfterClearing ?? MySQLRestorePlan()
                    planAfterClearing = nil
                    return restore(plan)
                case .variables(let schema?):
                    state = .restoring(.schema)
                    tracker.commandSent(.response)
                    return .sendInitDB(schema)
                case .variables(nil), .schema:
                    backend = client
                    return sendHeld()
                }
            }
        case .attached:
            guard inFlight else {
                // The server spoke without being asked (it is closing the connection: an ERR
                // after a KILL or a shutdown): the client gets it.
                return .forwardToClient
            }
            if let first = roles.first, first.index == finishedResponses {
                return try statementResponse(payload, role: first.role)
            }
            lastPacketWasOK = tracker.atResultStart && payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0x00
            if lastPacketWasOK { noteInsertID(payload) }
            let outcome = try tracker.serverPacket(payload)
            switch outcome {
            case .inProgress:
                return .forwardToClient
            case .localInfileRequested:
                sendingInfile = true
                return .forwardToClient
            case .finished(let status, let wasError):
                finishedResponses &+= 1
                if !held.isEmpty, awaiting == 0 { needsResume = true }
                lastPacketEndedResponse = true
                if !wasError {
                    self.status = status
                    if status.contains(.sessionStateChanged) { try? recordSessionState(payload) }
                }
                // An ERR of SQLSTATE class 08 (1156 packets out of order, 1153 packet too large,
                // 1927 killed) comes as the server closes the connection: nothing to read there.
                let serverCloses = wasError && Self.errorClosesConnection(payload)
                functions.responseFinished(tracker)
                holdForDiagnostics = tracker.lastResponseLeftConditions && !serverCloses
                if holdForDiagnostics { backend.mayHoldConditions = true }
                // A ROW_COUNT()/FOUND_ROWS() the proxy could not follow: the next command reads it here.
                if functions.holdForNextCommand, !serverCloses { holdForDiagnostics = true }
                if canRelease {
                    state = .idle
                    return serverCloses ? .forwardToClientAndDiscard : .forwardToClientAndRelease
                }
                return .forwardToClient
            }
        case .idle, .borrowing, .closed:
            return .none
        }
    }

    /// A packet of a response the proxy treats itself (`ResponseRole`): a prepare's OK (the
    /// client's, its id rewritten; the proxy's own, recorded and consumed), the proxy's own
    /// statements' answers (consumed, but an ERR that fails the held command is its answer),
    /// and the cursor state that executes, fetches and resets leave.
    private mutating func statementResponse(_ payload: ByteBuffer, role: ResponseRole) throws(MySQLWireError) -> Action {
        let atPrepareOK = tracker.atPrepareOK
        let isError = payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0xFF
        if case .execute = role, tracker.atResultStart, payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0x00 {
            lastPacketWasOK = true
            noteInsertID(payload)
        }
        let outcome = try tracker.serverPacket(payload)
        var action: Action = .forwardToClient
        switch role {
        case .clientPrepare(let key):
            if atPrepareOK, let ok = MySQLStatementPackets.prepareOK(payload) {
                let id = nextStatementID
                nextStatementID = nextStatementID == 0xFFFF_FFFE ? 1 : nextStatementID + 1
                statements[id] = MySQLClientStatement(key: key, parameterCount: ok.parameters)
                lastPreparedID = id
                statementCache?.insert(key, backendID: ok.id)
                action = .forwardToClientRewritingStatementID(id)
            }
        case .ownPrepare(let key):
            if atPrepareOK, let ok = MySQLStatementPackets.prepareOK(payload) {
                if lazyPreparationFailed {
                    pendingCloses.append(ok.id)
                } else {
                    statementCache?.insert(key, backendID: ok.id)
                }
                action = .none
            } else {
                action = isError && !lazyPreparationFailed ? failHeldCommand() : .none
            }
        case .ownInitDB(let first):
            if isError, first, !lazyPreparationFailed {
                action = failHeldCommand()
            } else {
                if isError, !first {
                    // The backend stays in the statement's schema: the next lease's restore
                    // selects the client's again.
                    backend.schema = nil
                }
                action = .none
            }
        case .ownReset:
            action = .none
        case .execute, .fetch, .reset:
            break
        }
        guard case .finished(let status, let wasError) = outcome else {
            if case .localInfileRequested = outcome { sendingInfile = true }
            return action
        }
        finishedResponses &+= 1
        roles.removeFirst()
        switch role {
        case .clientPrepare, .ownPrepare, .ownInitDB:
            awaiting -= 1
        case .execute(let id):
            if !wasError, status.contains(.cursorExists) { openCursors.insert(id) } else { openCursors.remove(id) }
        case .fetch(let id):
            if wasError || !status.contains(.cursorExists) { openCursors.remove(id) }
        case .reset(let id):
            openCursors.remove(id)
        case .ownReset:
            break
        }
        if awaiting == 0, !held.isEmpty || !pendingCloses.isEmpty { needsResume = true }
        if case .none = action {
            // The proxy's own command: its status is the backend's, its conditions nobody's.
            if !wasError { self.status = status }
            return canRelease && !needsResume ? releaseAfterOwnCommand() : .none
        }
        lastPacketEndedResponse = true
        if !wasError {
            self.status = status
            if status.contains(.sessionStateChanged) { try? recordSessionState(payload) }
        }
        // The client's command was answered (an own prepare's ERR answers its execute).
        switch role {
        case .fetch, .reset: functions.commandRanNoStatement()
        default: functions.responseFinished(tracker)
        }
        holdForDiagnostics = tracker.lastResponseLeftConditions
        if functions.holdForNextCommand { holdForDiagnostics = true }
        if case .clientPrepare = role, diagnosticsBeforePrepare { holdForDiagnostics = true }
        if holdForDiagnostics { backend.mayHoldConditions = true }
        if case .forwardToClient = action, canRelease {
            state = .idle
            return .forwardToClientAndRelease
        }
        return action
    }

    /// The proxy's preparation for the first held command (an execute) failed: the server's
    /// ERR, forwarded as it is (sequence id 1, as the execute's answer would have), answers it.
    private mutating func failHeldCommand() -> Action {
        lazyPreparationFailed = true
        if !held.isEmpty { held.removeFirst() }
        return .forwardToClient
    }

    /// The proxy's own command (a COM_STMT_RESET closing a cursor) was the last thing under way.
    private mutating func releaseAfterOwnCommand() -> Action {
        state = .idle
        return .release(reusable: true)
    }

    /// Whether an ERR packet is one the server sends as it closes the connection: SQLSTATE
    /// class 08 (connection exception).
    static func errorClosesConnection(_ payload: ByteBuffer) -> Bool {
        guard let error = try? MySQLErrPacket(parsing: payload) else { return false }
        return error.sqlState.hasPrefix("08")
    }

    /// An OK's last-insert-id (read in place: affected rows, then the id, both length-encoded):
    /// when a statement generated one, it is what LAST_INSERT_ID() now answers for this client
    /// (restored on its next backend), and what this backend answers.
    private mutating func noteInsertID(_ payload: ByteBuffer) {
        guard let affected = payload.getMySQLLengthEncodedInteger(at: payload.readerIndex + 1),
              let id = payload.getMySQLLengthEncodedInteger(at: payload.readerIndex + 1 + affected.width),
              id.value != 0
        else { return }
        client.lastInsertID = id.value
        backend.lastInsertID = id.value
    }

    /// The backend is kept only for the client's diagnostics (the last response left warnings or
    /// an error) and must not run the client's next command: its pool retired it (the writer
    /// changed, or became read-only: it is connected to a server that no longer takes the
    /// client's writes). Called before that command: the backend goes (not reused) and the
    /// command borrows another. Anything else that keeps it (a transaction, pins, a statement
    /// running) keeps it here too: `.none`.
    public mutating func dropDiagnosticsHold() -> Action {
        guard case .attached = state, holdForDiagnostics else { return .none }
        holdForDiagnostics = false
        guard canRelease else {
            holdForDiagnostics = true
            return .none
        }
        state = .idle
        return .release(reusable: false)
    }

    /// The backend may go back to the pool now.
    var canRelease: Bool {
        killsInFlight == 0 && !inFlight && pins.isEmpty && !sendingInfile && held.isEmpty && holdForNextTransaction == 0 && !holdForDiagnostics
            && !status.contains(.moreResultsExist) && !status.contains(.inTransaction)
            && status.contains(.autocommit) && openCursors.isEmpty && awaiting == 0 && pendingCloses.isEmpty
    }

    mutating func releaseIfPossible() -> Action {
        if canRelease {
            state = .idle
            return .release(reusable: true)
        }
        return .none
    }

    /// Reads an OK packet's session-state information: each reported variable and the schema
    /// become both the backend's and the client's (the client's command changed them). A state
    /// change the server reports without naming a variable or the schema (user variables,
    /// temporary tables, prepared statements, locks) cannot be restored elsewhere: it pins.
    private mutating func recordSessionState(_ payload: ByteBuffer) throws(MySQLWireError) {
        guard let first = payload.getInteger(at: payload.readerIndex, as: UInt8.self), first == 0x00 || first == 0xFE else { return }
        let ok = try MySQLOKPacket(parsing: payload, capabilities: capabilities.union(.sessionTrack))
        var namedSomething = false
        var stateChanged = false
        for change in ok.sessionStateChanges {
            switch change {
            case .systemVariable(let name, let value):
                namedSomething = true
                if case .restoring = state {
                    backend.apply(variable: name, value: value)
                } else {
                    if Self.unrestorableVariables.contains(name.lowercased()) { pins.insert(.sessionStateChange) }
                    client.apply(variable: name, value: value)
                    backend.apply(variable: name, value: value)
                }
            case .schema(let reported):
                namedSomething = true
                // An empty schema is "none" (a session that never selected one).
                let schema: String? = reported.isEmpty ? nil : reported
                if case .restoring = state {
                    backend.schema = schema
                } else {
                    client.schema = schema
                    backend.schema = schema
                }
            case .stateChanged(let changed):
                stateChanged = stateChanged || changed
            default:
                break
            }
        }
        if stateChanged, !namedSomething, case .attached = state {
            pins.insert(.sessionStateChange)
        }
    }

    /// Variables whose change the proxy cannot carry to another backend: the trackers it relies
    /// on, and what needs privileges a restore may not have.
    static let unrestorableVariables: Set<String> = [
        "session_track_system_variables", "session_track_schema", "session_track_state_change",
        "session_track_transaction_info", "sql_log_bin", "pseudo_thread_id", "gtid_next",
    ]

    /// What a client whose backend was lost with its transaction, statement or pins on it is
    /// told before it is closed: MySQL's ER_NET_READ_ERROR (08S01, a communication failure, as
    /// drivers classify it), with the words the client library uses for a lost server. Not the
    /// library's own 2013: libmariadb shows a server's ERR with a client-side code (2000...2999)
    /// as "Received malformed packet".
    public static let lostConnection = MySQLErrPacket(
        code: 1158, sqlState: "08S01", message: "Lost connection to MySQL server during query")

    /// The backend closed or failed. A session with nothing on it just carries on (the next
    /// command borrows another); one with a command in flight, a transaction, pins or a
    /// restore under way loses them: the client is closed with an error, as a server crash
    /// would.
    public mutating func backendLost() -> Action {
        switch state {
        case .restoring, .attached:
            let lost = inFlight || !pins.isEmpty || inTransaction || sendingInfile || !held.isEmpty || !openCursors.isEmpty
            tracker = MySQLResponseTracker(capabilities: capabilities)
            held.removeAll()
            openCursors.removeAll()
            roles.removeAll()
            pendingCloses.removeAll()
            awaiting = 0
            needsResume = false
            functions.commandsDropped()
            killsInFlight = 0
            if lost {
                state = .closed
                return .close(Self.lostConnection)
            }
            state = .idle
            return .none
        case .idle, .borrowing, .closed:
            return .none
        }
    }

    /// The client closed: the backend goes back if it holds nothing of the client's.
    public mutating func clientClosed() -> Action {
        let wasHolding = holdsBackend
        let wasBorrowing = state == .borrowing
        state = .closed
        if wasHolding {
            return .release(
                reusable: !inFlight && pins.isEmpty && !inTransaction && !sendingInfile && openCursors.isEmpty
                    && pendingCloses.isEmpty && killsInFlight == 0)
        }
        _ = wasBorrowing
        return .none
    }

    /// Whether none of the client's commands is under way: none waits for a backend, a restore
    /// or its response (a transaction may be open). A COM_CHANGE_USER is answered only then.
    public var isBetweenCommands: Bool {
        switch state {
        case .idle:
            return true
        case .attached:
            return !inFlight && held.isEmpty && !sendingInfile
        case .borrowing, .restoring, .closed:
            return false
        }
    }

    /// COM_CHANGE_USER answered by the proxy (between commands): whatever the client was, it is
    /// no more (its session becomes another machine's, the new user's, once the change is
    /// authenticated). Its pins go, and the backend it holds is released: reusable when it holds
    /// nothing of the client's, closed when it is pinned or in a transaction (its state is the
    /// client's: MySQL rolls a transaction back on COM_CHANGE_USER, and closing the backend does
    /// that; reused, the next client would find it).
    public mutating func changeUser() -> Action {
        let wasHolding = holdsBackend
        let dirty = !pins.isEmpty || inTransaction
        pins = []
        holdForDiagnostics = false
        holdForNextTransaction = 0
        state = .idle
        return wasHolding ? .release(reusable: !dirty) : .none
    }

    /// COM_RESET_CONNECTION answered by the proxy: the client's state returns to its login
    /// defaults and its pins go; a pinned backend is not reusable (its state is the client's).
    public mutating func resetConnection() -> Action {
        let wasHolding = holdsBackend
        let dirty = !pins.isEmpty || inTransaction || !openCursors.isEmpty || !pendingCloses.isEmpty
        pins = []
        // The server deallocates a connection's statements on a reset; the backends' copies
        // stay theirs (shared, closed when least used).
        statements.removeAll()
        lastPreparedID = nil
        openCursors.removeAll()
        pendingCloses.removeAll()
        holdForDiagnostics = false
        functions.reset()
        client = MySQLSessionState(schema: loginSchema)
        status = [.autocommit]
        if wasHolding, state == .attached, !inFlight, killsInFlight == 0 {
            state = .idle
            return .release(reusable: !dirty)
        }
        return .none
    }
}
