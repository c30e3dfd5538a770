import MySQLWire
import NIOCore

/// A MySQL backend connection's life after its login (`MySQLBackendLogin` runs before): setup,
/// idle in the pool, leased to a session, checked by the health monitor, closing. Pure; the NIO
/// handler (`MySQLBackendConnection`, MySQLServer) frames the packets and runs the actions.
public struct MySQLBackendMachine: Sendable {
    public enum State: Sendable {
        case loggingIn
        case settingUp(MySQLBackendSetup)
        /// In the pool, nobody's.
        case idle
        /// A session owns it: what the database sends goes to the session.
        case leased
        /// A health check's query runs (probe connections only, never pooled).
        case checking(MySQLTextResultReader, MySQLResponseTracker)
        /// COM_QUIT sent, or the socket closing.
        case closing
        case closed
    }

    public enum Action: Sendable {
        case none
        /// Send a COM_QUERY with this text (sequence 0).
        case sendQuery(String)
        /// Setup finished: the backend can serve clients.
        case setupSucceeded
        /// Setup or login failed with this error; the connection is closed.
        case setupFailed(MySQLErrPacket)
        /// The health check finished: the rows of its query, or an error.
        case checkCompleted(Result<[[String?]], MySQLErrPacket>)
        /// Send COM_QUIT, then close the socket.
        case quitAndClose
        /// Close the socket.
        case close
        /// Tell the pool the backend is back (reusable) or gone.
        case returnToPool
        /// The backend is not reusable: close it (the pool is told when it closes).
        case discard
    }

    public private(set) var state: State = .loggingIn
    /// What setup learned (see `MySQLBackendSetup`).
    public private(set) var baseline: [String: String] = [:]
    public private(set) var maxConnections: Int?
    public private(set) var maxPreparedStatements: Int?
    public private(set) var noBackslashEscapes = false
    /// The session state the backend has now (a change set over `baseline`).
    public var sessionState = MySQLSessionState()
    private let initQuery: String
    private var capabilities: MySQLCapabilities = []

    public init(initQuery: String) {
        self.initQuery = initQuery
    }

    public var isLeased: Bool {
        if case .leased = state { return true }
        return false
    }

    public var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// The login succeeded with these negotiated capabilities: setup starts.
    public mutating func loggedIn(capabilities: MySQLCapabilities) -> Action {
        self.capabilities = capabilities
        var setup = MySQLBackendSetup(initQuery: initQuery, capabilities: capabilities)
        let action = setup.start()
        state = .settingUp(setup)
        guard case .send(let query) = action else { return .none }
        return .sendQuery(query)
    }

    /// A packet from the database while the backend is not leased (a leased backend's packets
    /// go to its session without passing here).
    public mutating func packetReceived(_ payload: ByteBuffer) -> Action {
        switch state {
        case .settingUp(var setup):
            let action = setup.packetReceived(payload)
            switch action {
            case .none:
                state = .settingUp(setup)
                return .none
            case .send(let query):
                state = .settingUp(setup)
                return .sendQuery(query)
            case .ready:
                baseline = setup.baseline
                maxConnections = setup.maxConnections
                maxPreparedStatements = setup.maxPreparedStatements
                noBackslashEscapes = setup.noBackslashEscapes
                state = .idle
                return .setupSucceeded
            case .failed(let error):
                state = .closing
                return .setupFailed(error)
            }
        case .checking(var reader, var tracker):
            do {
                try reader.packet(payload, capabilities: capabilities)
                switch try tracker.serverPacket(payload) {
                case .inProgress:
                    state = .checking(reader, tracker)
                    return .none
                case .localInfileRequested:
                    state = .closing
                    return .checkCompleted(.failure(MySQLErrPacket(code: 2027, sqlState: "HY000", message: "unexpected LOCAL INFILE request")))
                case .finished(_, let wasError):
                    state = .idle
                    if wasError {
                        let error = (try? MySQLErrPacket(parsing: payload)) ?? MySQLErrPacket(code: 1105, sqlState: "HY000", message: "Unknown error")
                        return .checkCompleted(.failure(error))
                    }
                    return .checkCompleted(.success(reader.rows))
                }
            } catch {
                state = .closing
                return .checkCompleted(.failure(MySQLErrPacket(code: 2027, sqlState: "HY000", message: "malformed packet: \(error)")))
            }
        case .idle:
            // A server speaking unasked to an idle connection is ending it (an ERR before it
            // closes, e.g. wait_timeout or a KILL): the connection is done.
            state = .closing
            return .close
        case .loggingIn, .leased, .closing, .closed:
            return .none
        }
    }

    /// The pool leases the backend to a session.
    public mutating func lease() -> Bool {
        guard case .idle = state else { return false }
        state = .leased
        return true
    }

    /// The session gives the backend back with the session state it leaves on it.
    public mutating func released(reusable: Bool, sessionState: MySQLSessionState) -> Action {
        guard case .leased = state else { return .none }
        self.sessionState = sessionState
        if reusable {
            state = .idle
            return .returnToPool
        }
        state = .closing
        return .discard
    }

    /// The health monitor asks for the target's role (probe connections only).
    public mutating func checkRequested(_ query: String) -> Action? {
        guard case .idle = state else { return nil }
        var tracker = MySQLResponseTracker(capabilities: capabilities)
        tracker.commandSent(.response)
        state = .checking(MySQLTextResultReader(), tracker)
        return .sendQuery(query)
    }

    /// Close politely (COM_QUIT) if the connection can still say it.
    public mutating func closeRequested() -> Action {
        switch state {
        case .closing, .closed:
            return .none
        case .loggingIn, .settingUp:
            state = .closing
            return .close
        case .idle, .leased, .checking:
            state = .closing
            return .quitAndClose
        }
    }

    /// The socket closed.
    public mutating func connectionClosed() {
        state = .closed
    }
}
