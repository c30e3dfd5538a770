import MySQLWire
import NIOCore

/// The proxy's login to a MySQL/MariaDB server, as its client, as a pure state machine: the
/// server's greeting (HandshakeV10), the SSLRequest and TLS when configured, the
/// HandshakeResponse41 with the capabilities the proxy wants, and the server's authentication
/// plugin: mysql_native_password, caching_sha2_password (fast path, or full authentication:
/// the password over TLS, or RSA-encrypted with the server's public key without TLS), and
/// mysql_clear_password over TLS only. An AuthSwitchRequest changes plugin and nonce once.
///
/// The NIO handler (`MySQLBackendConnection`) frames the server's packets and feeds them to
/// `packetReceived`, runs the action each returns, and hands the connection to
/// `MySQLBackendMachine` (setup, pool phases) after `.authenticated`. A packet with the wrong
/// sequence id, or one the current step does not expect, fails the login as a protocol
/// violation; an ERR packet fails it with the server's error (the pool classifies it by code:
/// 1045 authentication, 1040 and 1203 too many connections).
///
/// The login timeout is the handler's deadline, not the machine's.
public struct MySQLBackendLogin: Sendable {
    public struct Configuration: Sendable {
        public var username: String
        public var password: String
        /// The schema to log in to (CLIENT_CONNECT_WITH_DB); nil: none.
        public var database: String?
        /// Ask for TLS (SSLRequest) before the HandshakeResponse41; a server that does not offer
        /// CLIENT_SSL is then refused.
        public var useTLS: Bool
        /// Only to name the mode in errors.
        public var tlsMode: String
        /// The capabilities the proxy wants for this backend (its clients' profile:
        /// DEPRECATE_EOF, FOUND_ROWS, MULTI_STATEMENTS, MULTI_RESULTS, SESSION_TRACK, ...). The
        /// machine adds what it always needs (`MySQLBackendLogin.always`), intersects with the
        /// server's, and never asks for `MySQLBackendLogin.never`.
        public var capabilities: MySQLCapabilities
        /// The collation id of the handshake (the connection's character set).
        public var characterSet: UInt8
        public var maxPacketSize: UInt32
        /// Connection attributes (CLIENT_CONNECT_ATTRS), in order.
        public var attributes: [MySQLConnectAttribute]
        /// For the bytes the machine builds (the handler's channel allocator in production).
        public var allocator: ByteBufferAllocator

        public init(
            username: String, password: String, database: String? = nil, useTLS: Bool = false, tlsMode: String = "disable",
            capabilities: MySQLCapabilities = [], characterSet: UInt8 = MySQLCharacterSet.utf8mb4GeneralCI,
            maxPacketSize: UInt32 = 1 << 30, attributes: [MySQLConnectAttribute] = [MySQLConnectAttribute(name: "program_name", value: "concierge")],
            allocator: ByteBufferAllocator = ByteBufferAllocator()
        ) {
            self.username = username
            self.password = password
            self.database = database
            self.useTLS = useTLS
            self.tlsMode = tlsMode
            self.capabilities = capabilities
            self.characterSet = characterSet
            self.maxPacketSize = maxPacketSize
            self.attributes = attributes
            self.allocator = allocator
        }
    }

    /// What the login established, for the backend machine and the pool.
    public struct Authenticated: Sendable, Hashable {
        /// What the server offered in its handshake.
        public var serverCapabilities: MySQLCapabilities
        /// What is in force on this connection (what the proxy sent, within the server's).
        public var capabilities: MySQLCapabilities
        public var connectionID: UInt32
        public var serverVersion: String
        /// The status flags of the final OK packet.
        public var status: MySQLServerStatus

        public init(
            serverCapabilities: MySQLCapabilities, capabilities: MySQLCapabilities, connectionID: UInt32, serverVersion: String,
            status: MySQLServerStatus
        ) {
            self.serverCapabilities = serverCapabilities
            self.capabilities = capabilities
            self.connectionID = connectionID
            self.serverVersion = serverVersion
            self.status = status
        }
    }

    /// Why the login failed (the connection is closing).
    public enum Failure: Error, Sendable, Hashable, CustomStringConvertible {
        /// The server refused with this ERR packet (1045 wrong password, 1040/1203 too many
        /// connections, 1049 unknown database, ...).
        case server(MySQLErrPacket)
        /// The server spoke out of turn: a wrong sequence id, an unexpected or malformed packet.
        case protocolViolation(String)
        /// The server asks for something the proxy does not do (an authentication plugin, clear
        /// text without TLS, TLS it does not offer, a protocol older than 4.1).
        case unsupported(String)

        /// The server refused the proxy's credentials: 1045 (access denied), 1044 (no access to
        /// the database), 1698 (access denied without a password), 1862 (expired password).
        public var isAuthenticationFailure: Bool {
            guard case .server(let error) = self else { return false }
            return [1044, 1045, 1698, 1862].contains(error.code)
        }

        /// The server has no room: 1040 (too many connections), 1203 (the user's
        /// max_user_connections).
        public var isTooManyConnections: Bool {
            guard case .server(let error) = self else { return false }
            return error.code == 1040 || error.code == 1203
        }

        public var description: String {
            switch self {
            case .server(let error): return "ERROR \(error.code) (\(error.sqlState)): \(error.message)"
            case .protocolViolation(let reason): return "protocol violation: \(reason)"
            case .unsupported(let reason): return "unsupported: \(reason)"
            }
        }
    }

    public enum Action: Sendable, Equatable {
        case none
        /// Write these packets and flush.
        case write(ByteBuffer)
        /// Write and flush this SSLRequest, then put a TLS client handler first in the pipeline
        /// (it holds writes until its handshake is done) and report `tlsHandlerAdded()` (or
        /// `tlsFailed(_:)`).
        case sendSSLRequestAndStartTLS(ByteBuffer)
        /// The server accepted the login (its OK packet): hand the connection to its setup.
        case authenticated(Authenticated)
        /// The login failed: close the connection.
        case failed(Failure)
    }

    /// An authentication plugin the proxy can answer.
    public enum Plugin: String, Sendable, Hashable {
        case nativePassword = "mysql_native_password"
        case cachingSHA2Password = "caching_sha2_password"
        case clearPassword = "mysql_clear_password"
    }

    /// What the server said in its handshake, and what the proxy chose.
    public struct Session: Sendable, Hashable {
        public var serverVersion: String
        public var connectionID: UInt32
        public var serverCapabilities: MySQLCapabilities
        /// What the proxy sends (SSLRequest and HandshakeResponse41).
        public var capabilities: MySQLCapabilities
        /// The sequence id the server's next packet must carry.
        public var nextSequenceID: UInt8
        /// An AuthSwitchRequest was followed already (a server gets one).
        public var switched: Bool
    }

    public enum State: Sendable {
        /// Connected: the server speaks first.
        case awaitingHandshake
        /// The SSLRequest is written and the TLS handler being added; the HandshakeResponse41
        /// follows (`tlsHandlerAdded`). `nonce`/`plugin`: the handshake's.
        case negotiatingTLS(Session, plugin: String, nonce: [UInt8])
        /// Auth data for `plugin` was sent (in the HandshakeResponse41 or after an
        /// AuthSwitchRequest): OK, ERR, an AuthSwitchRequest or AuthMoreData comes next.
        case authenticating(Session, plugin: Plugin, nonce: [UInt8])
        /// caching_sha2_password's fast authentication succeeded (AuthMoreData 0x03): the OK
        /// packet follows.
        case awaitingFastAuthOK(Session)
        /// The server's RSA public key was asked for (full authentication without TLS).
        case awaitingPublicKey(Session, nonce: [UInt8])
        /// The password itself was sent (full authentication): OK or ERR comes next.
        case awaitingFullAuthResult(Session)
        case authenticated
        case failed
    }

    /// What the proxy always asks for (when the server offers it).
    public static let always: MySQLCapabilities = [
        .longPassword, .protocol41, .secureConnection, .pluginAuth, .pluginAuthLenencClientData, .transactions,
        .connectAttrs,
    ]

    /// What the proxy never asks for: compression (it forwards plain packets), query attributes,
    /// optional result-set metadata and multi-factor authentication (wire formats it does not
    /// speak), expired-password sandboxes (a backend must be usable), and MariaDB's extended
    /// capabilities (CLIENT_MYSQL stays set, so the server reads none).
    public static let never: MySQLCapabilities = MySQLCapabilities.mariadbExtended.union([
        .compress, .zstdCompression, .queryAttributes, .optionalResultsetMetadata, .multiFactorAuth,
        .canHandleExpiredPasswords,
    ])

    /// What the proxy cannot do without.
    static let required: MySQLCapabilities = [.protocol41, .secureConnection, .pluginAuth]

    public let configuration: Configuration
    public private(set) var state: State = .awaitingHandshake

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// The capabilities the proxy sends to a server that offers `server`: CLIENT_SSL exactly when
    /// TLS is configured, CLIENT_CONNECT_WITH_DB exactly when there is a database.
    public func capabilities(offered server: MySQLCapabilities) -> MySQLCapabilities {
        var wanted = configuration.capabilities.union(Self.always).subtracting(Self.never).subtracting([.ssl, .connectWithDB])
        if configuration.database != nil { wanted.insert(.connectWithDB) }
        var capabilities = wanted.intersection(server)
        // CLIENT_MYSQL (MySQL's LONG_PASSWORD): set by every MySQL client, whatever the server
        // says; a MariaDB server then reads no extended capabilities from us.
        capabilities.insert(.longPassword)
        if configuration.useTLS { capabilities.insert(.ssl) }
        return capabilities
    }

    // MARK: Events

    /// A packet from the server.
    public mutating func packetReceived(_ packet: MySQLPacket) -> Action {
        let sequenceID = packet.sequenceID
        let payload = packet.payload
        switch state {
        case .awaitingHandshake:
            guard sequenceID == 0 else { return protocolViolation("handshake with sequence id \(sequenceID)") }
            if packet.firstByte == MySQLPacketHeaderByte.err {
                // A server that refuses before its handshake (too many connections, host not
                // allowed) sends an ERR instead.
                return serverError(payload)
            }
            do {
                return handshakeReceived(try MySQLHandshakeV10(parsing: payload))
            } catch {
                return protocolViolation("malformed handshake: \(error)")
            }
        case .negotiatingTLS:
            return protocolViolation("packet received before the TLS handshake")
        case .authenticating(let session, let plugin, let nonce):
            guard sequenceID == session.nextSequenceID else { return outOfOrder(sequenceID, session) }
            switch packet.firstByte {
            case MySQLPacketHeaderByte.ok:
                return ok(payload, session)
            case MySQLPacketHeaderByte.err:
                return serverError(payload)
            case MySQLPacketHeaderByte.eof:
                return authSwitch(payload, session, sequenceID: sequenceID)
            case MySQLPacketHeaderByte.authMoreData:
                return authMoreData(payload, session, plugin: plugin, nonce: nonce, sequenceID: sequenceID)
            default:
                return protocolViolation("unexpected packet during authentication")
            }
        case .awaitingFastAuthOK(let session), .awaitingFullAuthResult(let session):
            guard sequenceID == session.nextSequenceID else { return outOfOrder(sequenceID, session) }
            switch packet.firstByte {
            case MySQLPacketHeaderByte.ok:
                return ok(payload, session)
            case MySQLPacketHeaderByte.err:
                return serverError(payload)
            default:
                return protocolViolation("expected OK or ERR after caching_sha2_password authentication")
            }
        case .awaitingPublicKey(let session, let nonce):
            guard sequenceID == session.nextSequenceID else { return outOfOrder(sequenceID, session) }
            switch packet.firstByte {
            case MySQLPacketHeaderByte.err:
                return serverError(payload)
            case MySQLPacketHeaderByte.authMoreData:
                let pem: String
                switch try? MySQLAuthMoreData(parsing: payload) {
                case .publicKey(let key): pem = key
                case .data(let bytes): pem = String(decoding: bytes, as: UTF8.self)
                case .fastAuthSuccess, .performFullAuthentication, nil:
                    return protocolViolation("expected the database's public key")
                }
                let encrypted: [UInt8]
                do {
                    encrypted = try MySQLAuthentication.rsaEncryptPassword(
                        password: configuration.password, nonce: nonce, publicKeyPEM: pem)
                } catch {
                    return protocolViolation("the database's public key cannot be used: \(error)")
                }
                return send(encrypted, after: sequenceID, session) { .awaitingFullAuthResult($0) }
            default:
                return protocolViolation("expected the database's public key")
            }
        case .authenticated, .failed:
            return .none
        }
    }

    /// The server's greeting (sequence id 0).
    public mutating func handshakeReceived(_ handshake: MySQLHandshakeV10) -> Action {
        guard case .awaitingHandshake = state else { return .none }
        guard handshake.capabilities.isSuperset(of: Self.required) else {
            return fail(.unsupported(
                "the database does not offer the 4.1 protocol with authentication plugins (server \(handshake.serverVersion))"))
        }
        if configuration.useTLS, !handshake.capabilities.contains(.ssl) {
            return fail(.unsupported("the database does not accept TLS (target_group.tls.mode is \(configuration.tlsMode))"))
        }
        let capabilities = capabilities(offered: handshake.capabilities)
        var session = Session(
            serverVersion: handshake.serverVersion, connectionID: handshake.connectionID,
            serverCapabilities: handshake.capabilities, capabilities: capabilities, nextSequenceID: 1, switched: false)
        let nonce = Self.nonce(handshake.authPluginData)
        let plugin = handshake.authPluginName
        if configuration.useTLS {
            let request = MySQLSSLRequest(
                capabilities: capabilities, maxPacketSize: configuration.maxPacketSize, characterSet: configuration.characterSet)
            session.nextSequenceID = 2
            state = .negotiatingTLS(session, plugin: plugin, nonce: nonce)
            return .sendSSLRequestAndStartTLS(packet(sequenceID: 1) { request.encode(into: &$0) })
        }
        return handshakeResponse(session, plugin: plugin, nonce: nonce, sequenceID: 1)
    }

    /// The TLS handler is in place: the HandshakeResponse41 goes over it.
    public mutating func tlsHandlerAdded() -> Action {
        guard case .negotiatingTLS(let session, let plugin, let nonce) = state else { return .none }
        return handshakeResponse(session, plugin: plugin, nonce: nonce, sequenceID: 2)
    }

    /// TLS could not start (or its handshake failed).
    public mutating func tlsFailed(_ reason: String) -> Action {
        switch state {
        case .authenticated, .failed:
            return .none
        case .awaitingHandshake, .negotiatingTLS, .authenticating, .awaitingFastAuthOK, .awaitingPublicKey,
            .awaitingFullAuthResult:
            return fail(.unsupported("TLS with the database could not start: \(reason)"))
        }
    }

    // MARK: Steps

    /// The HandshakeResponse41, answering the handshake's plugin. A plugin the proxy does not
    /// know is answered with mysql_native_password, as MySQL's own client does: the server's
    /// default plugin need not be the user's, and the server switches to the user's if needed.
    private mutating func handshakeResponse(_ session: Session, plugin name: String, nonce: [UInt8], sequenceID: UInt8) -> Action {
        var plugin = Plugin(rawValue: name) ?? .nativePassword
        if plugin == .clearPassword, !configuration.useTLS { plugin = .nativePassword }
        let authResponse = authData(plugin, nonce: nonce)
        let response = MySQLHandshakeResponse41(
            capabilities: session.capabilities, maxPacketSize: configuration.maxPacketSize,
            characterSet: configuration.characterSet, username: configuration.username, authResponse: authResponse,
            database: configuration.database, authPluginName: plugin.rawValue,
            attributes: session.capabilities.contains(.connectAttrs) ? configuration.attributes : [])
        var next = session
        next.nextSequenceID = sequenceID &+ 1
        state = .authenticating(next, plugin: plugin, nonce: nonce)
        return .write(packet(sequenceID: sequenceID) { response.encode(into: &$0) })
    }

    /// What `plugin` answers to `nonce`.
    private func authData(_ plugin: Plugin, nonce: [UInt8]) -> [UInt8] {
        switch plugin {
        case .nativePassword:
            return MySQLAuthentication.nativePasswordScramble(password: configuration.password, nonce: nonce)
        case .cachingSHA2Password:
            return MySQLAuthentication.cachingSHA2Scramble(password: configuration.password, nonce: nonce)
        case .clearPassword:
            return Array(configuration.password.utf8) + [0]
        }
    }

    private mutating func authSwitch(_ payload: ByteBuffer, _ session: Session, sequenceID: UInt8) -> Action {
        guard !session.switched else { return protocolViolation("a second authentication switch") }
        guard payload.readableBytes > 1 else {
            // The pre-4.1 switch to mysql_old_password.
            return fail(.unsupported("the database asks for mysql_old_password authentication"))
        }
        let request: MySQLAuthSwitchRequest
        do {
            request = try MySQLAuthSwitchRequest(parsing: payload)
        } catch {
            return protocolViolation("malformed authentication switch: \(error)")
        }
        guard let plugin = Plugin(rawValue: request.pluginName) else {
            return fail(.unsupported(
                "the database asks for authentication plugin \(request.pluginName), which the proxy does not support"))
        }
        if plugin == .clearPassword, !configuration.useTLS {
            return fail(.unsupported(
                "the database asks for mysql_clear_password, which the proxy sends only over TLS (target_group.tls.mode is \(configuration.tlsMode))"))
        }
        let nonce = Self.nonce(request.pluginData)
        var next = session
        next.switched = true
        return send(authData(plugin, nonce: nonce), after: sequenceID, next) {
            .authenticating($0, plugin: plugin, nonce: nonce)
        }
    }

    private mutating func authMoreData(
        _ payload: ByteBuffer, _ session: Session, plugin: Plugin, nonce: [UInt8], sequenceID: UInt8
    ) -> Action {
        guard plugin == .cachingSHA2Password else {
            return protocolViolation("unexpected AuthMoreData for \(plugin.rawValue)")
        }
        switch try? MySQLAuthMoreData(parsing: payload) {
        case .fastAuthSuccess:
            var next = session
            next.nextSequenceID = sequenceID &+ 1
            state = .awaitingFastAuthOK(next)
            return .none
        case .performFullAuthentication:
            if configuration.useTLS {
                return send(Array(configuration.password.utf8) + [0], after: sequenceID, session) { .awaitingFullAuthResult($0) }
            }
            return send(MySQLAuthentication.requestPublicKey, after: sequenceID, session) { .awaitingPublicKey($0, nonce: nonce) }
        case .publicKey, .data, nil:
            return protocolViolation("unexpected caching_sha2_password AuthMoreData of \(payload.readableBytes) bytes")
        }
    }

    private mutating func ok(_ payload: ByteBuffer, _ session: Session) -> Action {
        let packet: MySQLOKPacket
        do {
            packet = try MySQLOKPacket(parsing: payload, capabilities: session.capabilities)
        } catch {
            return protocolViolation("malformed OK packet: \(error)")
        }
        state = .authenticated
        return .authenticated(Authenticated(
            serverCapabilities: session.serverCapabilities, capabilities: session.capabilities,
            connectionID: session.connectionID, serverVersion: session.serverVersion, status: packet.status))
    }

    private mutating func serverError(_ payload: ByteBuffer) -> Action {
        do {
            return fail(.server(try MySQLErrPacket(parsing: payload)))
        } catch {
            return protocolViolation("malformed ERR packet: \(error)")
        }
    }

    /// Answers the server's packet `sequenceID` with `data`, and moves to `next`.
    private mutating func send(_ data: [UInt8], after sequenceID: UInt8, _ session: Session, next: (Session) -> State) -> Action {
        var session = session
        session.nextSequenceID = sequenceID &+ 2
        state = next(session)
        return .write(packet(sequenceID: sequenceID &+ 1) { $0.writeBytes(data) })
    }

    private mutating func outOfOrder(_ sequenceID: UInt8, _ session: Session) -> Action {
        protocolViolation("packet with sequence id \(sequenceID), expected \(session.nextSequenceID)")
    }

    private mutating func protocolViolation(_ reason: String) -> Action {
        fail(.protocolViolation(reason))
    }

    private mutating func fail(_ failure: Failure) -> Action {
        state = .failed
        return .failed(failure)
    }

    private func packet(sequenceID: UInt8, _ body: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var out = configuration.allocator.buffer(capacity: 128)
        out.writeMySQLPacket(sequenceID: sequenceID, body)
        return out
    }

    /// A scramble nonce as servers send it: 20 bytes, sometimes with a NUL after them.
    static func nonce(_ data: [UInt8]) -> [UInt8] {
        data.count == 21 && data.last == 0 ? Array(data.dropLast()) : data
    }
}
