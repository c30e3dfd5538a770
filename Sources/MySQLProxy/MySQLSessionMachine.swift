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
        case sendToBackend([ByteBuffer])
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

    public private(set) var state: State = .idle
    /// Why the session is pinned to its backend (empty: it is not).
    public private(set) var pins: MySQLPinReasons = []
    /// The session state the client wants (what its backend must have).
    public private(set) var client = MySQLSessionState()
    /// The state the leased backend has (valid while a backend is held).
    public private(set) var backend = MySQLSessionState()
    /// Where the current response stands; made for the capabilities this client negotiated
    /// (its backends share them: the pool key carries them).
    public private(set) var tracker: MySQLResponseTracker
    /// Commands waiting for a backend.
    private var held: [ByteBuffer] = []
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
            return wasHolding && pins.isEmpty && !inFlight && !inTransaction ? .quit : .close(nil)
        case MySQLCommand.ping.rawValue where !holdsBackend && state != .borrowing:
            return .answerPing
        case MySQLCommand.stmtPrepare.rawValue:
            // Binary-protocol statements live on the backend that prepared them (the next issue
            // multiplexes them).
            pins.insert(.binaryPreparedStatement)
        case MySQLCommand.setOption.rawValue:
            // Turns multi-statements on or off for the session: not restored on another backend.
            pins.insert(.setVariable)
        default:
            break
        }
        let expectation = MySQLResponseTracker.expectation(for: MySQLCommand(rawValue: command.code) ?? .query)
        switch state {
        case .closed:
            return .none
        case .idle:
            if expectation == .none {
                // COM_STMT_CLOSE / SEND_LONG_DATA with no backend: there is no statement to act
                // on (a statement pins its backend), and the server would answer nothing.
                return .none
            }
            held.append(command.bytes)
            heldExpectations.append(expectation)
            state = .borrowing
            return .borrow
        case .borrowing, .restoring:
            held.append(command.bytes)
            heldExpectations.append(expectation)
            return .none
        case .attached:
            expect(expectation)
            return .forwardToBackend(command.bytes)
        }
    }

    /// Expectations of the held commands, sent with them.
    private var heldExpectations: [MySQLResponseTracker.Expectation] = []

    /// LOCAL INFILE content from the client (only while `sendingInfile`): forwarded; the empty
    /// packet that ends it leaves the tracker waiting for the server's OK or ERR.
    public mutating func infileDataReceived(isLast: Bool) {
        if isLast { sendingInfile = false }
    }

    private mutating func expect(_ expectation: MySQLResponseTracker.Expectation) {
        guard expectation != .none else { return }
        tracker.commandSent(expectation)
    }

    // MARK: Pool events

    /// The pool leased a backend whose session state is `backendState`; `baseline` is its pool
    /// key's baseline, `noBackslashEscapes` whether its sql_mode has NO_BACKSLASH_ESCAPES.
    public mutating func borrowed(
        backendState: MySQLSessionState, baseline: [String: String], noBackslashEscapes: Bool
    ) -> Action {
        guard state == .borrowing else {
            // The client left meanwhile: give it back.
            return .release(reusable: true)
        }
        backend = backendState
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
            heldExpectations.removeAll()
            state = .idle
            return .loginStands(schemaChecked: true)
        }
        state = .attached
        let commands = held
        let expectations = heldExpectations
        held.removeAll(keepingCapacity: true)
        heldExpectations.removeAll(keepingCapacity: true)
        for expectation in expectations { expect(expectation) }
        if commands.isEmpty { return releaseIfPossible() }
        return .sendToBackend(commands)
    }

    /// The pool could not lease one: the held commands fail with `error` (RDS's 9501 for a
    /// timeout), and the session stays usable.
    public mutating func borrowFailed(_ error: MySQLErrPacket) -> Action {
        guard state == .borrowing else { return .none }
        held.removeAll()
        heldExpectations.removeAll()
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
                    heldExpectations.removeAll()
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
            lastPacketWasOK = tracker.atResultStart && payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0x00
            if lastPacketWasOK { noteInsertID(payload) }
            guard inFlight else {
                // The server spoke without being asked (it is closing the connection: an ERR
                // after a KILL or a shutdown): the client gets it.
                return .forwardToClient
            }
            let outcome = try tracker.serverPacket(payload)
            switch outcome {
            case .inProgress:
                return .forwardToClient
            case .localInfileRequested:
                sendingInfile = true
                return .forwardToClient
            case .finished(let status, let wasError):
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
            && status.contains(.autocommit) && !status.contains(.cursorExists)
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
            let lost = inFlight || !pins.isEmpty || inTransaction || sendingInfile || !held.isEmpty
            tracker = MySQLResponseTracker(capabilities: capabilities)
            held.removeAll()
            heldExpectations.removeAll()
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
            return .release(reusable: !inFlight && pins.isEmpty && !inTransaction && !sendingInfile && killsInFlight == 0)
        }
        _ = wasBorrowing
        return .none
    }

    /// COM_RESET_CONNECTION answered by the proxy: the client's state returns to its login
    /// defaults and its pins go; a pinned backend is not reusable (its state is the client's).
    public mutating func resetConnection() -> Action {
        let wasHolding = holdsBackend
        let dirty = !pins.isEmpty || inTransaction
        pins = []
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
