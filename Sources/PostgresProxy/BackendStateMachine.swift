import NIOCore
import PostgresWire

/// One connection from the proxy to the database, as a pure state machine: login (SSLRequest,
/// startup, cleartext/md5/SCRAM), the setup queries, the pool phases (idle, leased, preparing a
/// client's parameters, resetting after a client left in a transaction), the health checker's
/// `pg_is_in_recovery()` and the parameter bookkeeping.
///
/// The NIO handler (`BackendConnection` in ConciergeServer) feeds it events and runs the
/// `Action` each returns. It keeps what must not be here: the channel, the setup and health-check
/// promises, the owner (the leasing client session) and the pool. The machine records only
/// *that* it is leased, preparing or checking. While leased, the handler forwards the database's
/// messages to the owner itself, zero-copy, asking `isLeased` per read burst and telling the
/// machine about tracked ParameterStatus reports (`parameterReportedWhileLeased`).
///
/// Messages the machine cannot parse, or does not expect in its state, throw: the handler closes
/// the connection as for any malformed input.
public struct BackendStateMachine: Sendable {
    public struct Configuration: Sendable {
        public var username: String
        public var password: String
        public var database: String
        /// Sent at login (health checks name themselves; pool backends take the client's).
        public var applicationName: String?
        /// Statements run once after login, before the backend serves anyone.
        public var initQuery: String
        /// Whether to read `max_connections` during setup (the proxy's cap derives from it).
        public var readMaxConnections: Bool
        /// Whether to ask for TLS (SSLRequest) before the startup message.
        public var requestTLS: Bool
        /// Only to name the mode in errors.
        public var tlsMode: String
        public var scramCache: (any SCRAMSaltedPasswordProvider)?
        /// Whether a reported parameter (lowercased) is carried from backend to backend.
        public var isTracked: @Sendable (String) -> Bool
        /// For the bytes the machine builds (the handler's channel allocator in production).
        public var allocator: ByteBufferAllocator

        public init(
            username: String, password: String, database: String, applicationName: String? = nil, initQuery: String = "",
            readMaxConnections: Bool = false, requestTLS: Bool = false, tlsMode: String = "disable",
            scramCache: (any SCRAMSaltedPasswordProvider)? = nil, isTracked: @escaping @Sendable (String) -> Bool,
            allocator: ByteBufferAllocator = ByteBufferAllocator()
        ) {
            self.username = username
            self.password = password
            self.database = database
            self.applicationName = applicationName
            self.initQuery = initQuery
            self.readMaxConnections = readMaxConnections
            self.requestTLS = requestTLS
            self.tlsMode = tlsMode
            self.scramCache = scramCache
            self.isTracked = isTracked
            self.allocator = allocator
        }
    }

    /// The cases with payloads are `indirect`: the state is read (copied) several times per
    /// transaction, and inline it was as large as its largest payload (an error's fields), so
    /// each read copied about 200 bytes. Those cases are set once per connection or check.
    public enum State: Sendable {
        /// No TCP connection yet.
        case connecting
        /// SSLRequest sent; waiting for the one-byte answer.
        case negotiatingTLS
        /// Startup sent; the SCRAM exchange under way, if the server asked for one.
        indirect case authenticating(SCRAMClientSession?)
        /// AuthenticationOk received; ParameterStatus and BackendKeyData until ReadyForQuery.
        case startingUp
        /// Running `setupQueries[step]` (one simple Query each, answered by one ReadyForQuery).
        /// `failure`: the first ErrorResponse among them.
        indirect case setup(step: Int, failure: PGErrorFields?)
        case idle
        /// Forwarding to the owner (the handler's).
        case leased
        /// Bringing the parameters (and statements) to the owner's, answered by one ReadyForQuery.
        /// `fromDefaults`: the values came from a startup packet (see `lease`).
        indirect case preparing(failure: PGErrorFields?, fromDefaults: Bool)
        /// A ROLLBACK for a client that left inside a transaction.
        case resetting
        /// A health check's `SELECT pg_is_in_recovery()`.
        indirect case checking(inRecovery: Bool?, failure: PGErrorFields?)
        case closed
        /// Only while a payload is modified in place (no copy-on-write of the SCRAM session).
        case modifying
    }

    /// The setup queries, in the order they run.
    public enum SetupQuery: Sendable, Hashable {
        case maxConnections
        case initQuery
        case baseline

        static let baselineSQL =
            "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'"
    }

    public enum Action: Sendable, Equatable {
        case none
        /// Write and flush.
        case write(ByteBuffer)
        /// Put a TLS client handler first in the pipeline, then report `tlsHandlerAdded` (or
        /// `tlsHandlerFailed`).
        case startTLS
        /// Record the database's process id (for cancel requests and notification pids).
        case registerProcessID(Int32, secretKey: Int32)
        /// Login and setup done: the backend can serve (`loginParameters`, `maxConnections`).
        case succeedSetup
        /// Fail the setup (the connection is already closing).
        case failSetup(BackendError)
        case failSetupAndClose(BackendError)
        /// Tell the owner its backend is ready (`owner.backendDidPrepare(.success(serverParameters))`).
        case ownerReady
        /// Tell the owner preparing failed.
        case ownerFailed(BackendError)
        /// As `ownerFailed`, and release the backend to the pool as not reusable.
        case ownerFailedReleasing(BackendError)
        /// As `ownerFailedReleasing`, and close the connection.
        case ownerFailedClosing(BackendError)
        /// Back to the pool, reusable.
        case returnToPool
        /// Release to the pool as not reusable, and close.
        case discard
        /// The health check's answer.
        case completeCheck(Result<Bool, BackendError>)
        /// The connection closed: tell the owner, then the pool.
        case ownerAndPoolLost
        /// The connection closed while in the pool's hands, or after the pool asked for its close
        /// (or it was released as not reusable): tell the pool.
        case poolLost
        /// The database reported an error outside any request of ours (logged); close if fatal.
        case unsolicitedError(PGErrorFields, close: Bool)
        /// Send Terminate, then close.
        case terminate(ByteBuffer)
        case close
    }

    public internal(set) var state: State = .connecting {
        didSet {
            if case .leased = state { isLeased = true } else { isLeased = false }
        }
    }
    /// Whether the database's messages go to the owner as they are (asked per read burst). Kept
    /// beside `state` rather than matched from it per burst: matching a case of an enum whose
    /// cases carry payloads copied the whole state (retains included) each time.
    public private(set) var isLeased = false
    public let configuration: Configuration
    /// ParameterStatus values the server reported (at login and since).
    public internal(set) var serverParameters: [String: String] = [:]
    /// Session parameters the proxy set on this backend for its current or last client, by
    /// lowercased name. Empty means the backend runs with its login defaults.
    public internal(set) var appliedParameters: [String: String] = [:]
    /// Settings the init query changed (lowercased name → value): what a client's parameter
    /// goes back to when the next client does not ask for it (RESET would lose them).
    public internal(set) var baselineParameters: [String: String] = [:]
    public internal(set) var setupQueries: [SetupQuery] = []
    /// The value of `max_connections` read during setup, when asked for.
    public internal(set) var maxConnections: Int?
    /// What the server reported at login (name-sorted), fixed once setup completes.
    public internal(set) var loginParameters: [StartupParameter] = []
    public internal(set) var processID: Int32 = 0
    public internal(set) var secretKey: Int32 = 0
    /// Why TLS with the database failed, for the setup error when the connection then closes.
    public internal(set) var tlsFailure: String?
    /// Set when the setup succeeds (the backend is the pool's from then on) and cleared when the
    /// connection's end is reported (`poolLost`, `ownerAndPoolLost`): the pool hears of the end
    /// once, whoever closed it. That includes a close the pool asked for (`closeRequested`) or
    /// that follows a release as not reusable: the pool counts such a connection against its cap
    /// until it is told it is gone.
    public internal(set) var poolAwaitsClose = false

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Whether the machine reads the database's messages itself (not forwarding them).
    public var acceptsOwnMessages: Bool {
        switch state {
        case .leased, .closed, .modifying: return false
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup, .idle, .preparing, .resetting, .checking:
            return true
        }
    }

    // MARK: Login

    /// The TCP connection is up.
    public mutating func connected() -> Action {
        guard case .connecting = state else { return .none }
        if configuration.requestTLS {
            state = .negotiatingTLS
            var request = configuration.allocator.buffer(capacity: 8)
            PGEncode.sslRequest(into: &request)
            return .write(request)
        }
        return startup()
    }

    /// The TCP connection could not be made.
    public mutating func connectFailed(_ reason: String) -> Action {
        state = .closed
        return .failSetup(.connection(reason))
    }

    /// The one-byte answer to SSLRequest; `trailingBytes`: what came after it in the same read.
    public mutating func tlsAnswer(_ answer: UInt8, trailingBytes: Int) -> Action {
        guard case .negotiatingTLS = state else { return .none }
        guard answer == UInt8(ascii: "S"), configuration.requestTLS else {
            state = .closed
            return .failSetupAndClose(
                .connection("the database does not accept TLS (target_group.tls.mode is \(configuration.tlsMode))"))
        }
        // Anything after the answer would have been sent unencrypted (CVE-2021-23222).
        guard trailingBytes == 0 else {
            state = .closed
            return .failSetupAndClose(.protocolViolation("the database sent unencrypted data after its TLS answer"))
        }
        return .startTLS
    }

    /// The TLS handler is in place (it holds writes until its handshake is done).
    public mutating func tlsHandlerAdded() -> Action {
        guard case .negotiatingTLS = state else { return .none }
        return startup()
    }

    public mutating func tlsHandlerFailed(_ reason: String) -> Action {
        state = .closed
        return .failSetupAndClose(.connection("TLS with the database could not start: \(reason)"))
    }

    private mutating func startup() -> Action {
        var buffer = configuration.allocator.buffer(capacity: 64)
        var parameters = [
            StartupParameter(name: "user", value: configuration.username),
            StartupParameter(name: "database", value: configuration.database),
        ]
        if let name = configuration.applicationName {
            parameters.append(StartupParameter(name: "application_name", value: name))
        }
        PGEncode.startupMessage(parameters: parameters, into: &buffer)
        state = .authenticating(nil)
        return .write(buffer)
    }

    /// The login took too long (the handler's deadline): fails setup if it is still under way.
    public mutating func loginTimedOut(_ reason: String) -> Action {
        switch state {
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup:
            state = .closed
            return .failSetupAndClose(.connection(reason))
        case .idle, .leased, .preparing, .resetting, .checking, .closed, .modifying:
            return .none
        }
    }

    // MARK: Messages the proxy itself consumes

    /// A complete message from the database while `acceptsOwnMessages`: login, setup, parameter
    /// changes, resets, preparation and health checks.
    public mutating func messageReceived(_ frame: PGFrame) throws -> Action {
        switch frame.type {
        case PGMessageType.Backend.authentication:
            return try authenticationReceived(PGParse.authentication(frame.body))
        case PGMessageType.Backend.parameterStatus:
            let parameter = try PGParse.parameterStatus(frame.body)
            serverParameters[parameter.name] = parameter.value
            if case .resetting = state {
                // The ROLLBACK of a client that left inside a transaction undid a tracked SET
                // the backend had reported (and recorded as applied): it runs with this again.
                let name = parameter.name.lowercased()
                if configuration.isTracked(name), appliedParameters[name] != nil {
                    appliedParameters[name] = parameter.value
                }
            }
            return .none
        case PGMessageType.Backend.backendKeyData:
            let keyData = try PGParse.backendKeyData(frame.body)
            processID = keyData.processID
            secretKey = keyData.secretKey
            return .registerProcessID(keyData.processID, secretKey: keyData.secretKey)
        case PGMessageType.Backend.errorResponse:
            return errorReceived(PGErrorFields(diagnostics: try PGParse.errorResponse(frame.body)))
        case PGMessageType.Backend.readyForQuery:
            return try readyForQuery(PGParse.readyForQuery(frame.body))
        case PGMessageType.Backend.dataRow:
            try dataRowReceived(frame.body)
            return .none
        case PGMessageType.Backend.noticeResponse, PGMessageType.Backend.notificationResponse,
            PGMessageType.Backend.rowDescription, PGMessageType.Backend.commandComplete, PGMessageType.Backend.closeComplete,
            PGMessageType.Backend.parseComplete, PGMessageType.Backend.bindComplete,
            PGMessageType.Backend.emptyQueryResponse, PGMessageType.Backend.negotiateProtocolVersion:
            return .none
        default:
            throw BackendError.protocolViolation("unexpected message type \(frame.type) outside a client's transaction")
        }
    }

    private mutating func authenticationReceived(_ request: AuthenticationRequest) throws -> Action {
        var out = configuration.allocator.buffer(capacity: 128)
        switch request {
        case .ok:
            state = .startingUp
            return .none
        case .cleartextPassword:
            PGEncode.passwordMessage(configuration.password, into: &out)
        case .md5Password(let salt):
            PGEncode.passwordMessage(
                PGMD5.hashedPassword(user: configuration.username, password: configuration.password, salt: salt), into: &out)
        case .sasl(let mechanisms):
            guard mechanisms.contains("SCRAM-SHA-256") else {
                throw BackendError.protocolViolation("the database offers no supported SASL mechanism (\(mechanisms))")
            }
            var session = SCRAMClientSession(password: configuration.password, saltedPasswordCache: configuration.scramCache)
            PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: session.clientFirstMessage(), into: &out)
            state = .authenticating(session)
        case .saslContinue(let data):
            guard case .authenticating(.some(var session)) = state else {
                throw BackendError.protocolViolation("unexpected SASL continue")
            }
            state = .modifying
            do {
                let final = try session.receiveServerFirst(data)
                state = .authenticating(session)
                PGEncode.saslResponse(data: final, into: &out)
            } catch {
                // The session is spent; the handler closes the connection on the error.
                state = .authenticating(session)
                throw error
            }
        case .saslFinal(let data):
            guard case .authenticating(.some(let session)) = state else {
                throw BackendError.protocolViolation("unexpected SASL final")
            }
            try session.verifyServerFinal(data)
            return .none
        case .kerberosV5, .gss, .sspi, .gssContinue, .unknown:
            state = .closed
            return .failSetupAndClose(
                .protocolViolation("the database asks for an authentication method the proxy does not support (\(request))"))
        }
        return .write(out)
    }

    private mutating func errorReceived(_ fields: PGErrorFields) -> Action {
        switch state {
        case .connecting, .negotiatingTLS, .authenticating, .startingUp:
            state = .closed
            return .failSetupAndClose(.server(fields))
        case .setup(let step, let failure):
            state = .setup(step: step, failure: failure ?? fields)
        case .preparing(_, let fromDefaults):
            state = .preparing(failure: fields, fromDefaults: fromDefaults)
        case .checking(let value, _):
            state = .checking(inRecovery: value, failure: fields)
        case .idle, .resetting, .closed, .leased, .modifying:
            return .unsolicitedError(fields, close: fields.severity == "FATAL" || fields.severity == "PANIC")
        }
        return .none
    }

    private mutating func dataRowReceived(_ body: ByteBuffer) throws {
        switch state {
        case .checking(_, let failure):
            let values = try PGParse.dataRowStrings(body)
            state = .checking(inRecovery: values.first.flatMap { $0 }.map { $0 == "t" }, failure: failure)
        case .setup(let step, _):
            let values = try PGParse.dataRowStrings(body)
            switch setupQueries[step] {
            case .maxConnections:
                maxConnections = values.first.flatMap { $0 }.flatMap { Int($0) }
            case .baseline:
                if values.count == 2, let name = values[0], let value = values[1] {
                    baselineParameters[name.lowercased()] = value
                }
            case .initQuery:
                break
            }
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .idle, .leased, .preparing, .resetting, .closed,
            .modifying:
            break
        }
    }

    private mutating func readyForQuery(_ status: PGTransactionStatus) throws -> Action {
        switch state {
        case .checking(let inRecovery, let failure):
            state = .idle
            if let inRecovery, failure == nil { return .completeCheck(.success(inRecovery)) }
            return .completeCheck(
                .failure(failure.map { BackendError.server($0) } ?? BackendError.protocolViolation("no answer to the health check")))
        case .startingUp:
            if configuration.readMaxConnections { setupQueries.append(.maxConnections) }
            if !configuration.initQuery.isEmpty { setupQueries += [.initQuery, .baseline] }
            guard !setupQueries.isEmpty else { return finishSetup() }
            state = .setup(step: 0, failure: nil)
            var out = configuration.allocator.buffer(capacity: 128)
            for query in setupQueries {
                switch query {
                case .maxConnections: PGEncode.query("SHOW max_connections", into: &out)
                case .initQuery: PGEncode.query(configuration.initQuery, into: &out)
                case .baseline: PGEncode.query(SetupQuery.baselineSQL, into: &out)
                }
            }
            return .write(out)
        case .setup(let step, let failure):
            if step + 1 < setupQueries.count {
                state = .setup(step: step + 1, failure: failure)
                return .none
            }
            if let failure {
                state = .closed
                return .failSetupAndClose(.server(failure))
            }
            if status != .idle {
                state = .closed
                return .failSetupAndClose(.protocolViolation("init_query left a transaction open"))
            }
            return finishSetup()
        case .preparing(let failure, let fromDefaults):
            if let failure {
                state = .closed
                return .ownerFailedClosing(.server(failure))
            }
            if fromDefaults {
                // A value the database did not change is not reported again: the backend
                // runs with its last report, not with the client's spelling of it.
                for (name, value) in serverParameters {
                    let lowercased = name.lowercased()
                    if appliedParameters[lowercased] != nil { appliedParameters[lowercased] = value }
                }
            }
            state = .leased
            return .ownerReady
        case .resetting:
            if status == .idle {
                state = .idle
                return .returnToPool
            }
            state = .closed
            return .discard
        case .connecting, .negotiatingTLS, .authenticating, .idle, .leased, .closed, .modifying:
            throw BackendError.protocolViolation("unexpected ReadyForQuery")
        }
    }

    private mutating func finishSetup() -> Action {
        state = .idle
        poolAwaitsClose = true
        loginParameters = serverParameters.sorted { $0.key < $1.key }.map { StartupParameter(name: $0.key, value: $0.value) }
        return .succeedSetup
    }
}
