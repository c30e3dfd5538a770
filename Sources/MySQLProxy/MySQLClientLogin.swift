import ConciergeAuth
import MySQLWire
import NIOCore
import ProxyCore

/// A MySQL client's login, from the proxy's greeting to the moment the client is known to be
/// the user it claims, as a pure state machine: the proxy speaks first (HandshakeV10), then the
/// client's SSLRequest (TLS), its HandshakeResponse41, the auth policy (TLS, the client limit,
/// IAM) and the password exchange of the proxy's `client_password_auth_type`
/// (mysql_native_password or caching_sha2_password, with its full authentication over TLS or
/// with the RSA public key), or an IAM token: sent with mysql_clear_password, or as the password
/// of caching_sha2_password's full authentication over TLS (clients that keep
/// mysql_clear_password disabled, as MySQL's own do, send it so). The same machine answers a
/// COM_CHANGE_USER (`init(configuration:changingUserOf:greetingNonce:)`).
///
/// The session handler frames the client's bytes into packets, feeds them to `packetReceived`
/// and runs what each event returns: write these bytes, start TLS, check a token, fail. After
/// `.loggedIn` the machine is spent: the **session** sends the OK packet that completes the
/// login, with `LoginResult.nextSequenceID`, once it is ready to serve the client (or an ERR
/// with that id, e.g. for an unknown database), so that what the OK packet says (status flags,
/// session state) is the session's to decide. The authentication timeout is the session's clock.
///
/// Every packet the proxy writes here carries the client's sequence id + 1; a client packet
/// with another id than the one expected is a protocol violation (ERR 1156, then close).
///
/// An unknown user goes through exactly the exchange of a known user with a wrong password
/// (same packets, same steps, the same ERR 1045), so neither the answer nor the behaviour tells
/// them apart.
///
/// caching_sha2_password: the proxy holds the clear password, so it checks the fast-path
/// scramble itself (it needs no cache): a right password always takes the fast path (AuthMoreData
/// 0x03). A scramble that does not match (a wrong password, an unknown user, garbage) gets full
/// authentication (AuthMoreData 0x04), as MySQL does on a cache miss: the password in clear over
/// TLS, or RSA-encrypted with the proxy's key without it. An empty response is refused at once
/// with `using password: NO`, as MySQL does (both plugins).
///
/// The errors: 1045 (28000) for every authentication failure, IAM tokens included; 1040 (HY000)
/// `Number simultaneous connections exceeded (N)` beyond `max_client_connections`; 3159 (HY000)
/// for `require_tls` (MySQL's ER_SECURE_TRANSPORT_REQUIRED: the reference gives no MySQL wording)
/// and for IAM without TLS (RDS Proxy's wording); 1043 (08S01) `Bad handshake` for malformed or
/// misplaced packets; 1156 (08S01) for a wrong sequence id; 1251 (08004) for a client that
/// cannot switch plugins. `Failure` tells the handler why, for its log and metrics.
public struct MySQLClientLogin: Sendable {
    /// The proxy's `client_password_auth_type` for MySQL: the plugin announced in the greeting
    /// and required of every client (one that answers with another is switched to it).
    public enum PasswordMethod: Sendable, Hashable {
        /// MYSQL_NATIVE_PASSWORD.
        case nativePassword
        /// MYSQL_CACHING_SHA2_PASSWORD.
        case cachingSHA2Password

        public var pluginName: String {
            switch self {
            case .nativePassword: return MySQLAuthentication.nativePasswordPlugin
            case .cachingSHA2Password: return MySQLAuthentication.cachingSHA2PasswordPlugin
            }
        }
    }

    /// What the proxy is, fixed for the life of the connection.
    public struct Configuration: Sendable {
        public var passwordMethod: PasswordMethod
        /// The proxy has a certificate: CLIENT_SSL is advertised and an SSLRequest accepted.
        public var tlsAvailable: Bool
        /// For caching_sha2_password's full authentication without TLS (the client asks for the
        /// public key). Nil: such a client is refused (with ERR 1045, as a wrong password).
        public var rsaKeyPair: MySQLRSAKeyPair?
        /// A fresh 20-byte scramble nonce, for an AuthSwitchRequest (`MySQLNonce.make` in
        /// production).
        public var makeNonce: @Sendable () -> [UInt8]
        public var allocator: ByteBufferAllocator

        public init(
            passwordMethod: PasswordMethod, tlsAvailable: Bool, rsaKeyPair: MySQLRSAKeyPair? = nil,
            makeNonce: @escaping @Sendable () -> [UInt8] = { MySQLNonce.make() },
            allocator: ByteBufferAllocator = ByteBufferAllocator()
        ) {
            self.passwordMethod = passwordMethod
            self.tlsAvailable = tlsAvailable
            self.rsaKeyPair = rsaKeyPair
            self.makeNonce = makeNonce
            self.allocator = allocator
        }
    }

    /// A user the proxy can log clients in as.
    public struct User: Sendable {
        /// The clear password, from the proxy's secrets (the proxy must hold it: it logs in to
        /// the database with it, and verifies both plugins' scrambles from it).
        public var password: String
        /// `iam_auth: REQUIRED`: the client logs in with an IAM token (mysql_clear_password,
        /// over TLS only).
        public var iamRequired: Bool

        public init(password: String, iamRequired: Bool = false) {
            self.password = password
            self.iamRequired = iamRequired
        }
    }

    /// What the runtime says when the client's HandshakeResponse41 arrives.
    public struct Environment {
        /// `require_tls`, and the order of the checks (RDS Proxy's: TLS, the client limit, IAM).
        public var policy: AuthPolicy
        /// Beyond `max_client_connections`.
        public var clientLimitExceeded: Bool
        /// The limit, as ERR 1040 names it.
        public var clientLimit: Int
        /// The user's entry, or nil for a user the proxy does not know.
        public var user: (String) -> User?

        public init(policy: AuthPolicy, clientLimitExceeded: Bool = false, clientLimit: Int = 0, user: @escaping (String) -> User?) {
            self.policy = policy
            self.clientLimitExceeded = clientLimitExceeded
            self.clientLimit = clientLimit
            self.user = user
        }
    }

    /// Who logged in, and what the connection agreed on.
    public struct LoginResult: Sendable, Hashable {
        public var user: String
        /// CLIENT_CONNECT_WITH_DB's schema, nil when the client named none.
        public var database: String?
        /// The client's collation id (its connection character set).
        public var characterSet: UInt8
        /// The capabilities in force: the client's ∩ the proxy's.
        public var capabilities: MySQLCapabilities
        /// What the client asked for (before the intersection).
        public var clientCapabilities: MySQLCapabilities
        public var maxPacketSize: UInt32
        /// The client's connection attributes (CLIENT_CONNECT_ATTRS), in its order.
        public var attributes: [MySQLConnectAttribute]
        /// The sequence id of the packet that completes the login (the session's OK or ERR).
        public var nextSequenceID: UInt8
        /// The connection is on TLS.
        public var isTLS: Bool
        /// How the client proved who it is.
        public var method: AuthenticationMethod
    }

    public enum AuthenticationMethod: Sendable, Hashable {
        case password(PasswordMethod)
        /// caching_sha2_password's full authentication (the password itself, over TLS or RSA).
        case cachingSHA2FullAuthentication
        case iamToken
    }

    /// Why a login failed, for the handler's metrics and log (the client sees only the ERR).
    public enum Failure: Sendable, Hashable {
        /// `require_tls` and a plaintext client.
        case tlsRequired
        /// IAM (the user's `iam_auth: REQUIRED`, or the client's mysql_clear_password) over a
        /// plaintext connection.
        case iamWithoutTLS
        /// Unknown user or wrong password: the same answer for both.
        case wrongPassword
        /// The IAM token was refused (the reason is logged only).
        case iamTokenRefused(reason: String)
        /// Beyond `max_client_connections` (not an authentication failure).
        case tooManyClients
        /// The client cannot speak what the proxy requires (no CLIENT_PLUGIN_AUTH while the
        /// proxy's plugin is caching_sha2_password, no CLIENT_PROTOCOL_41).
        case unsupportedClient(String)
        /// Malformed packets, wrong sequence ids, bytes after an SSLRequest.
        case protocolViolation(String)

        /// Counted in ClientConnectionsSetupFailedAuth.
        public var countsAsFailedAuthentication: Bool {
            switch self {
            case .tlsRequired, .iamWithoutTLS, .wrongPassword, .iamTokenRefused: return true
            case .tooManyClients, .unsupportedClient, .protocolViolation: return false
            }
        }
    }

    public enum Action: Sendable, Equatable {
        /// Nothing to do.
        case none
        /// Write these packets (and flush); wait for the client's next packet.
        case write(ByteBuffer)
        /// The SSLRequest is accepted: put the TLS server handler first in the pipeline (nothing
        /// is written in reply: the client starts the TLS handshake). Its next packet is the
        /// HandshakeResponse41, encrypted.
        case startTLS
        /// Check this IAM token for `user`, then report with `iamResult(ok:reason:)`.
        case verifyIAMToken(String)
        /// The client is who it claims. Write `write` first when there is one (caching_sha2's
        /// fast-auth-success AuthMoreData), then let the session complete the login with its OK
        /// packet (sequence id `nextSequenceID`).
        case loggedIn(LoginResult, write: ByteBuffer?)
        /// Write this ERR packet (`error`, already framed in `packet`), then close.
        case fail(packet: ByteBuffer, error: MySQLErrPacket, reason: Failure)
    }

    /// What is known of the client once its HandshakeResponse41 is read.
    public struct Client: Sendable {
        public var user: String
        public var database: String?
        public var characterSet: UInt8
        public var clientCapabilities: MySQLCapabilities
        public var capabilities: MySQLCapabilities
        public var maxPacketSize: UInt32
        public var attributes: [MySQLConnectAttribute]
        /// The user's entry (nil: unknown user), held only while the exchange lasts.
        var entry: User?
        /// The sequence id the client's next packet must carry.
        var nextClientSequenceID: UInt8
        /// The user logs in with an IAM token (`iam_auth: REQUIRED`, or the client chose
        /// mysql_clear_password): caching_sha2_password's full authentication carries the token.
        var iam = false

        /// The same client after the proxy answered its packet `sequenceID` with one packet.
        func expecting(after sequenceID: UInt8) -> Client {
            var next = self
            next.nextClientSequenceID = sequenceID &+ 2
            return next
        }
    }

    public enum State: Sendable {
        /// Nothing sent yet (`start`).
        case initial
        /// The greeting (HandshakeV10, sequence id 0) was sent: the SSLRequest or the
        /// HandshakeResponse41 comes next, with id 1.
        case greeted(nonce: [UInt8], capabilities: MySQLCapabilities)
        /// The SSLRequest was accepted (`.startTLS`): the HandshakeResponse41 comes next, over
        /// TLS, with id 2.
        case tlsStarted(nonce: [UInt8], capabilities: MySQLCapabilities)
        /// An AuthSwitchRequest was sent: the client answers with its auth data for `plugin`
        /// (a scramble of `nonce`, or the IAM token for mysql_clear_password).
        case switchingPlugin(Client, plugin: SwitchedPlugin, nonce: [UInt8])
        /// caching_sha2_password's AuthMoreData "perform full authentication" was sent: the
        /// client sends its password (NUL-terminated) over TLS; without TLS it asks for the
        /// public key ([0x02]) or, if it has it already, sends the password RSA-encrypted.
        case fullAuthentication(Client, nonce: [UInt8])
        /// The public key was sent: the RSA-encrypted password comes next.
        case awaitingEncryptedPassword(Client, nonce: [UInt8])
        /// An IAM token is being checked (`.verifyIAMToken`); `replyID`: the id of the answer.
        case checkingIAMToken(Client, replyID: UInt8)
        /// A COM_CHANGE_USER is expected (`init(configuration:changingUserOf:greetingNonce:)`):
        /// its payload goes to `changeUserReceived`, on a connection logged in as `previous`.
        case awaitingChangeUser(previous: LoginResult)
        /// `.loggedIn` was returned: the session owns the connection.
        case loggedIn
        /// The login failed (or TLS could not start): nothing more is read.
        case failed
    }

    /// The plugin an AuthSwitchRequest asked the client for.
    public enum SwitchedPlugin: Sendable, Hashable {
        case password(PasswordMethod)
        case clearPassword
    }

    public let configuration: Configuration
    public private(set) var state: State = .initial
    /// The client negotiated TLS (SSLRequest accepted).
    public private(set) var isTLS = false
    /// The user the client names in its HandshakeResponse41 (empty before it): for the log, and
    /// for the IAM check of `.verifyIAMToken`.
    public private(set) var user = ""
    /// The capabilities in force once the HandshakeResponse41 is read (before it, CLIENT_PROTOCOL_41
    /// only: what an ERR packet is encoded with).
    public private(set) var negotiatedCapabilities: MySQLCapabilities = .protocol41
    /// The greeting's nonce: clients compute a COM_CHANGE_USER's scramble with it (they keep it
    /// for the life of the connection), so the session keeps it for its change-user machines.
    public private(set) var greetingNonce: [UInt8] = []

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// A machine for a COM_CHANGE_USER on a connection logged in as `previous` (its TLS, its
    /// capabilities and the greeting's nonce stay): the command's payload goes to
    /// `changeUserReceived`, and the exchange goes on as a login's does (the same plugins, IAM
    /// and errors), its packets numbered from the command's 0. `.loggedIn` ends it (the session
    /// sends the OK), `.fail` too (the ERR, then the connection closes, as MySQL closes it).
    public init(configuration: Configuration, changingUserOf previous: LoginResult, greetingNonce: [UInt8]) {
        self.configuration = configuration
        self.isTLS = previous.isTLS
        self.negotiatedCapabilities = previous.capabilities
        self.greetingNonce = greetingNonce
        self.state = .awaitingChangeUser(previous: previous)
    }

    /// The sequence id of the proxy's answer to the client's next packet: what an ERR the proxy
    /// sends now, unasked (the authentication timeout's), must carry for the client to read it as
    /// the answer it waits for. (0 once the login is over.)
    public var replySequenceID: UInt8 {
        switch state {
        case .initial, .greeted:
            return 2
        case .awaitingChangeUser:
            return 1
        case .tlsStarted:
            return 3
        case .switchingPlugin(let client, _, _), .fullAuthentication(let client, _), .awaitingEncryptedPassword(let client, _):
            return client.nextClientSequenceID &+ 1
        case .checkingIAMToken(_, let replyID):
            return replyID
        case .loggedIn, .failed:
            return 0
        }
    }

    // MARK: Events

    /// The connection is accepted: greet the client. `capabilities`: the session's capability
    /// profile; the machine adds `requiredCapabilities`, advertises CLIENT_SSL exactly when TLS
    /// is available, and never `neverAdvertised`. `nonce`: 20 bytes (`MySQLNonce.make()`).
    public mutating func start(
        connectionID: UInt32, nonce: [UInt8], serverVersion: String, capabilities: MySQLCapabilities,
        characterSet: UInt8 = 45, status: MySQLServerStatus = .autocommit
    ) -> Action {
        guard case .initial = state else { return .none }
        var advertised = capabilities.union(Self.requiredCapabilities).subtracting(Self.neverAdvertised)
        if configuration.tlsAvailable { advertised.insert(.ssl) } else { advertised.remove(.ssl) }
        let handshake = MySQLHandshakeV10(
            serverVersion: serverVersion, connectionID: connectionID, authPluginData: nonce, capabilities: advertised,
            characterSet: characterSet, status: status, authPluginName: configuration.passwordMethod.pluginName)
        state = .greeted(nonce: nonce, capabilities: advertised)
        greetingNonce = nonce
        return .write(packet(sequenceID: 0) { handshake.encode(into: &$0) })
    }

    /// A packet from the client. `trailingBytes`: bytes the client sent after this packet in the
    /// same read (after an SSLRequest, they would be read as if they had come over TLS: refused).
    /// `environment` is read once, when the HandshakeResponse41 arrives.
    public mutating func packetReceived(
        _ packet: MySQLPacket, trailingBytes: Int = 0, environment: @autoclosure () -> Environment
    ) -> Action {
        let sequenceID = packet.sequenceID
        let payload = packet.payload
        switch state {
        case .initial, .loggedIn, .failed, .awaitingChangeUser:
            return .none
        case .greeted(let nonce, let capabilities):
            guard sequenceID == 1 else { return outOfOrder(sequenceID, replyID: sequenceID &+ 1) }
            if MySQLSSLRequest.isSSLRequest(payload: payload) {
                guard configuration.tlsAvailable else {
                    return protocolViolation("SSL request, but the proxy did not offer TLS", replyID: 2)
                }
                // A client must wait for the TLS handshake before sending more: bytes already
                // here would be read as if they had come encrypted (the CVE-2021-23214 class).
                guard trailingBytes == 0 else {
                    return protocolViolation("received unencrypted data after SSL request", replyID: 2)
                }
                isTLS = true
                state = .tlsStarted(nonce: nonce, capabilities: capabilities)
                return .startTLS
            }
            return handshakeResponse(payload, sequenceID: sequenceID, nonce: nonce, advertised: capabilities, environment: environment())
        case .tlsStarted(let nonce, let capabilities):
            guard sequenceID == 2 else { return outOfOrder(sequenceID, replyID: sequenceID &+ 1) }
            if MySQLSSLRequest.isSSLRequest(payload: payload) {
                return protocolViolation("SSL request received on an encrypted connection", replyID: 3)
            }
            return handshakeResponse(payload, sequenceID: sequenceID, nonce: nonce, advertised: capabilities, environment: environment())
        case .switchingPlugin(let client, let plugin, let nonce):
            guard sequenceID == client.nextClientSequenceID else { return outOfOrder(sequenceID, replyID: sequenceID &+ 1) }
            let data = Array(payload.readableBytesView)
            switch plugin {
            case .password(let method):
                return authenticate(client, method: method, authData: data, nonce: nonce, sequenceID: sequenceID)
            case .clearPassword:
                return iamToken(client, data: data, sequenceID: sequenceID)
            }
        case .fullAuthentication(let client, let nonce):
            guard sequenceID == client.nextClientSequenceID else { return outOfOrder(sequenceID, replyID: sequenceID &+ 1) }
            let data = Array(payload.readableBytesView)
            if client.iam {
                // The token, in clear: the admission let IAM in over TLS only.
                guard isTLS else { return wrongPassword(client, replyID: sequenceID &+ 1, passwordUsed: true) }
                return iamToken(client, data: data, sequenceID: sequenceID)
            }
            if isTLS {
                return fullAuthentication(client, password: Self.droppingNUL(data), sequenceID: sequenceID)
            }
            if data == MySQLAuthentication.requestPublicKey {
                guard let keys = configuration.rsaKeyPair else {
                    // Nothing to encrypt with: the client cannot prove anything.
                    return wrongPassword(client, replyID: sequenceID &+ 1, passwordUsed: true)
                }
                state = .awaitingEncryptedPassword(client.expecting(after: sequenceID), nonce: nonce)
                return .write(authMoreData(.publicKey(keys.publicKeyPEM), sequenceID: sequenceID &+ 1))
            }
            // A client that has the key already (--server-public-key-path) sends the password
            // encrypted at once.
            return encryptedPassword(client, ciphertext: data, nonce: nonce, sequenceID: sequenceID)
        case .awaitingEncryptedPassword(let client, let nonce):
            guard sequenceID == client.nextClientSequenceID else { return outOfOrder(sequenceID, replyID: sequenceID &+ 1) }
            return encryptedPassword(client, ciphertext: Array(payload.readableBytesView), nonce: nonce, sequenceID: sequenceID)
        case .checkingIAMToken(_, let replyID):
            // The client must wait for the verdict (the OK or ERR packet).
            return protocolViolation("packet received while the IAM token is checked", replyID: replyID)
        }
    }

    /// TLS could not be started after the SSLRequest was accepted.
    public mutating func tlsFailed() {
        state = .failed
    }

    /// The runtime's verdict on the token of `.verifyIAMToken`. `reason`: why it was refused,
    /// for the log only.
    public mutating func iamResult(ok: Bool, reason: String = "") -> Action {
        guard case .checkingIAMToken(let client, let replyID) = state else { return .none }
        guard ok else {
            return fail(
                Self.accessDenied(user: client.user, passwordUsed: true), sequenceID: replyID,
                reason: .iamTokenRefused(reason: reason))
        }
        return loggedIn(client, method: .iamToken, nextSequenceID: replyID)
    }

    // MARK: Steps

    /// What the proxy always advertises: its exchanges need them (and CLIENT_MYSQL: the proxy
    /// presents itself as a MySQL server, so MariaDB clients send no extended capabilities).
    public static let requiredCapabilities: MySQLCapabilities = [
        .longPassword, .protocol41, .secureConnection, .pluginAuth, .pluginAuthLenencClientData,
    ]

    /// What the proxy never advertises, whatever the caller's profile: wire formats it does not
    /// speak (compression, query attributes, optional metadata, multi-factor authentication),
    /// expired-password sandboxes, and MariaDB's extended capabilities.
    public static let neverAdvertised: MySQLCapabilities = MySQLCapabilities.mariadbExtended.union([
        .compress, .zstdCompression, .queryAttributes, .optionalResultsetMetadata, .multiFactorAuth,
        .canHandleExpiredPasswords,
    ])

    private mutating func handshakeResponse(
        _ payload: ByteBuffer, sequenceID: UInt8, nonce: [UInt8], advertised: MySQLCapabilities, environment: Environment
    ) -> Action {
        let replyID = sequenceID &+ 1
        // A pre-4.1 client (its first two bytes are its capabilities, in every protocol).
        if let capabilities = payload.getInteger(at: payload.readerIndex, endianness: .little, as: UInt16.self),
           UInt64(capabilities) & MySQLCapabilities.protocol41.rawValue == 0
        {
            return fail(Self.badHandshake, sequenceID: replyID, reason: .unsupportedClient("no CLIENT_PROTOCOL_41"))
        }
        let response: MySQLHandshakeResponse41
        do {
            response = try MySQLHandshakeResponse41(parsing: payload)
        } catch {
            return protocolViolation("malformed handshake response: \(error)", replyID: replyID)
        }
        var negotiated = response.capabilities.intersection(advertised)
        if isTLS { negotiated.insert(.ssl) } else { negotiated.remove(.ssl) }
        negotiatedCapabilities = negotiated
        user = response.username
        let client = Client(
            user: response.username,
            database: response.capabilities.contains(.connectWithDB) ? response.database : nil,
            characterSet: response.characterSet, clientCapabilities: response.capabilities, capabilities: negotiated,
            maxPacketSize: response.maxPacketSize,
            attributes: response.attributes,
            entry: environment.user(response.username), nextClientSequenceID: sequenceID &+ 2)
        // Without CLIENT_PLUGIN_AUTH the client speaks mysql_native_password (4.1 scramble).
        let clientPlugin = response.capabilities.contains(.pluginAuth)
            ? (response.authPluginName ?? MySQLAuthentication.nativePasswordPlugin) : MySQLAuthentication.nativePasswordPlugin
        return authenticationBegins(
            client, clientPlugin: clientPlugin, pluginAuth: response.capabilities.contains(.pluginAuth),
            authResponse: response.authResponse, nonce: nonce, sequenceID: sequenceID, environment: environment)
    }

    /// A COM_CHANGE_USER (its payload, sequence id 0) on a machine made with
    /// `init(configuration:changingUserOf:greetingNonce:)`. The user, schema, character set and
    /// connection attributes are the command's; capabilities, TLS and the maximum packet size
    /// are the connection's. The client limit is not checked again (the client holds its slot).
    public mutating func changeUserReceived(_ packet: MySQLPacket, environment: Environment) -> Action {
        guard case .awaitingChangeUser(let previous) = state else { return .none }
        let sequenceID = packet.sequenceID
        let request: MySQLChangeUser
        do {
            request = try MySQLChangeUser(parsing: packet.payload, capabilities: previous.capabilities)
        } catch {
            return protocolViolation("malformed COM_CHANGE_USER: \(error)", replyID: sequenceID &+ 1)
        }
        user = request.username
        let characterSet = request.characterSet.flatMap { $0 == 0 ? nil : $0 } ?? previous.characterSet
        let client = Client(
            user: request.username, database: request.database.isEmpty ? nil : request.database,
            characterSet: characterSet, clientCapabilities: previous.clientCapabilities,
            capabilities: previous.capabilities, maxPacketSize: previous.maxPacketSize,
            attributes: request.attributes.isEmpty ? previous.attributes : request.attributes,
            entry: environment.user(request.username), nextClientSequenceID: sequenceID &+ 2)
        let pluginAuth = previous.capabilities.contains(.pluginAuth)
        let clientPlugin = pluginAuth
            ? (request.authPluginName ?? MySQLAuthentication.nativePasswordPlugin) : MySQLAuthentication.nativePasswordPlugin
        var policy = environment
        policy.clientLimitExceeded = false
        return authenticationBegins(
            client, clientPlugin: clientPlugin, pluginAuth: pluginAuth, authResponse: request.authResponse,
            nonce: greetingNonce, sequenceID: sequenceID, environment: policy)
    }

    /// Who the client claims to be is known (its HandshakeResponse41 or COM_CHANGE_USER, the
    /// packet `sequenceID`): the auth policy, then the exchange of the user's method. `nonce`:
    /// the one the client's scramble was computed with.
    private mutating func authenticationBegins(
        _ client: Client, clientPlugin: String, pluginAuth: Bool, authResponse: [UInt8], nonce: [UInt8],
        sequenceID: UInt8, environment: Environment
    ) -> Action {
        let replyID = sequenceID &+ 1
        let asksForClearPassword = clientPlugin == MySQLAuthentication.clearPasswordPlugin
        let admission = environment.policy.admit(
            clientUsesTLS: isTLS, clientLimitExceeded: environment.clientLimitExceeded,
            iamRequired: (client.entry?.iamRequired ?? false) || asksForClearPassword)
        switch admission {
        case .refuse(.tlsRequired, _):
            return fail(Self.insecureTransport, sequenceID: replyID, reason: .tlsRequired)
        case .refuse(.tooManyClients, _):
            return fail(Self.tooManyConnections(limit: environment.clientLimit), sequenceID: replyID, reason: .tooManyClients)
        case .refuse(let error, _):
            // `.iamRequiresTLS` (the policy refuses nothing else here).
            return fail(
                MySQLErrPacket(code: 3159, sqlState: "HY000", message: error.message), sequenceID: replyID,
                reason: .iamWithoutTLS)
        case .iamToken:
            if asksForClearPassword {
                return iamToken(client, data: authResponse, sequenceID: sequenceID)
            }
            var iamClient = client
            iamClient.iam = true
            if clientPlugin == MySQLAuthentication.cachingSHA2PasswordPlugin {
                // caching_sha2_password's full authentication: over TLS the client sends its
                // password (the token) in clear, so clients that keep mysql_clear_password
                // disabled (libmysqlclient unless told otherwise) log in with a token too. Its
                // scramble is not looked at: a token cannot be checked from one.
                state = .fullAuthentication(iamClient.expecting(after: sequenceID), nonce: nonce)
                return .write(authMoreData(.performFullAuthentication, sequenceID: replyID))
            }
            if configuration.passwordMethod == .cachingSHA2Password, pluginAuth {
                // The proxy's own plugin, then its full authentication (above).
                let fresh = configuration.makeNonce()
                state = .switchingPlugin(iamClient, plugin: .password(.cachingSHA2Password), nonce: fresh)
                return .write(authSwitch(
                    plugin: MySQLAuthentication.cachingSHA2PasswordPlugin, data: fresh, sequenceID: replyID))
            }
            state = .switchingPlugin(client, plugin: .clearPassword, nonce: [])
            return .write(authSwitch(plugin: MySQLAuthentication.clearPasswordPlugin, data: [], sequenceID: replyID))
        case .password:
            break
        }
        let method = configuration.passwordMethod
        guard clientPlugin == method.pluginName else {
            guard pluginAuth else {
                // No AuthSwitchRequest without CLIENT_PLUGIN_AUTH (MySQL's own answer).
                return fail(
                    Self.notSupportedAuthMode, sequenceID: replyID, reason: .unsupportedClient("no CLIENT_PLUGIN_AUTH"))
            }
            let fresh = configuration.makeNonce()
            state = .switchingPlugin(client, plugin: .password(method), nonce: fresh)
            // (Sent NUL-terminated, as MySQL does: clients check its length.)
            return .write(authSwitch(plugin: method.pluginName, data: fresh, sequenceID: replyID))
        }
        return authenticate(client, method: method, authData: authResponse, nonce: nonce, sequenceID: sequenceID)
    }

    /// The client's scramble for `method`, in the packet `sequenceID` (its HandshakeResponse41,
    /// or its answer to an AuthSwitchRequest).
    private mutating func authenticate(
        _ client: Client, method: PasswordMethod, authData: [UInt8], nonce: [UInt8], sequenceID: UInt8
    ) -> Action {
        let replyID = sequenceID &+ 1
        if client.iam {
            // An IAM user switched to caching_sha2_password: its full authentication carries
            // the token (the scramble cannot prove one).
            state = .fullAuthentication(client.expecting(after: sequenceID), nonce: nonce)
            return .write(authMoreData(.performFullAuthentication, sequenceID: replyID))
        }
        // An unknown user is checked against a password nobody has, so the work (and its time)
        // is the same as for a known user; it can never succeed.
        let password = client.entry?.password
        let checked = password ?? Self.unknownUserPassword
        // An empty response (or a lone NUL) is a client without a password: only an account
        // without one accepts it (MySQL's "using password: NO").
        if authData.isEmpty || authData == [0] {
            guard let password, password.isEmpty else {
                return wrongPassword(client, replyID: replyID, passwordUsed: false)
            }
            switch method {
            case .nativePassword:
                return loggedIn(client, method: .password(method), nextSequenceID: replyID)
            case .cachingSHA2Password:
                return loggedIn(
                    client, method: .password(method), nextSequenceID: replyID &+ 1,
                    write: authMoreData(.fastAuthSuccess, sequenceID: replyID))
            }
        }
        switch method {
        case .nativePassword:
            let matches = MySQLAuthentication.verifyNativePassword(response: authData, password: checked, nonce: nonce)
            guard matches, password != nil else { return wrongPassword(client, replyID: replyID, passwordUsed: true) }
            return loggedIn(client, method: .password(method), nextSequenceID: replyID)
        case .cachingSHA2Password:
            let matches = MySQLAuthentication.verifyCachingSHA2(response: authData, password: checked, nonce: nonce)
            if matches, password != nil {
                return loggedIn(
                    client, method: .password(method), nextSequenceID: replyID &+ 1,
                    write: authMoreData(.fastAuthSuccess, sequenceID: replyID))
            }
            // A scramble that does not match (a wrong password, an unknown user, garbage) gets
            // full authentication, as MySQL does on a cache miss: the same steps for everyone.
            state = .fullAuthentication(client.expecting(after: sequenceID), nonce: nonce)
            return .write(authMoreData(.performFullAuthentication, sequenceID: replyID))
        }
    }

    /// caching_sha2_password's full authentication: the password itself (sent over TLS, or
    /// decrypted), in the packet `sequenceID`.
    private mutating func fullAuthentication(_ client: Client, password given: [UInt8], sequenceID: UInt8) -> Action {
        let replyID = sequenceID &+ 1
        let expected = Array((client.entry?.password ?? Self.unknownUserPassword).utf8)
        let matches = Self.constantTimeEquals(given, expected)
        guard matches, client.entry != nil else { return wrongPassword(client, replyID: replyID, passwordUsed: true) }
        return loggedIn(client, method: .cachingSHA2FullAuthentication, nextSequenceID: replyID)
    }

    private mutating func encryptedPassword(_ client: Client, ciphertext: [UInt8], nonce: [UInt8], sequenceID: UInt8) -> Action {
        guard let keys = configuration.rsaKeyPair, let password = try? keys.decryptPassword(ciphertext, nonce: nonce) else {
            return wrongPassword(client, replyID: sequenceID &+ 1, passwordUsed: true)
        }
        return fullAuthentication(client, password: Array(password.utf8), sequenceID: sequenceID)
    }

    /// The IAM token, sent with mysql_clear_password (NUL-terminated) in the packet `sequenceID`.
    private mutating func iamToken(_ client: Client, data: [UInt8], sequenceID: UInt8) -> Action {
        let token = String(decoding: Self.droppingNUL(data), as: UTF8.self)
        var next = client
        next.entry = nil
        state = .checkingIAMToken(next, replyID: sequenceID &+ 1)
        return .verifyIAMToken(token)
    }

    private mutating func loggedIn(
        _ client: Client, method: AuthenticationMethod, nextSequenceID: UInt8, write: ByteBuffer? = nil
    ) -> Action {
        state = .loggedIn
        let result = LoginResult(
            user: client.user, database: client.database, characterSet: client.characterSet,
            capabilities: client.capabilities, clientCapabilities: client.clientCapabilities,
            maxPacketSize: client.maxPacketSize, attributes: client.attributes, nextSequenceID: nextSequenceID,
            isTLS: isTLS, method: method)
        return .loggedIn(result, write: write)
    }

    private mutating func wrongPassword(_ client: Client, replyID: UInt8, passwordUsed: Bool) -> Action {
        fail(Self.accessDenied(user: client.user, passwordUsed: passwordUsed), sequenceID: replyID, reason: .wrongPassword)
    }

    private mutating func outOfOrder(_ sequenceID: UInt8, replyID: UInt8) -> Action {
        fail(Self.packetsOutOfOrder, sequenceID: replyID, reason: .protocolViolation("unexpected sequence id \(sequenceID)"))
    }

    private mutating func protocolViolation(_ reason: String, replyID: UInt8) -> Action {
        fail(Self.badHandshake, sequenceID: replyID, reason: .protocolViolation(reason))
    }

    private mutating func fail(_ error: MySQLErrPacket, sequenceID: UInt8, reason: Failure) -> Action {
        state = .failed
        return .fail(packet: packet(sequenceID: sequenceID) { error.encode(into: &$0) }, error: error, reason: reason)
    }

    // MARK: Packets

    private func packet(sequenceID: UInt8, _ body: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var out = configuration.allocator.buffer(capacity: 128)
        out.writeMySQLPacket(sequenceID: sequenceID, body)
        return out
    }

    private func authMoreData(_ data: MySQLAuthMoreData, sequenceID: UInt8) -> ByteBuffer {
        packet(sequenceID: sequenceID) { data.encode(into: &$0) }
    }

    private func authSwitch(plugin: String, data: [UInt8], sequenceID: UInt8) -> ByteBuffer {
        packet(sequenceID: sequenceID) { MySQLAuthSwitchRequest(pluginName: plugin, pluginData: data).encode(into: &$0) }
    }

    // MARK: Errors (RDS Proxy's wording where the reference gives one, MySQL's otherwise)

    /// Unknown user or wrong password (reference 001: `ERROR 1045 (28000): Access denied for
    /// user 'DB_USER'@'%' (using password: YES)`); `NO` when the client sent no password.
    public static func accessDenied(user: String, passwordUsed: Bool) -> MySQLErrPacket {
        MySQLErrPacket(
            code: 1045, sqlState: "28000",
            message: "Access denied for user '\(user)'@'%' (using password: \(passwordUsed ? "YES" : "NO"))")
    }

    /// Beyond `max_client_connections` (reference 001: `ERROR 1040 (HY000): Number simultaneous
    /// connections exceeded (limit value)`).
    public static func tooManyConnections(limit: Int) -> MySQLErrPacket {
        MySQLErrPacket(code: 1040, sqlState: "HY000", message: "Number simultaneous connections exceeded (\(limit))")
    }

    /// `require_tls` and a plaintext client: the reference has no MySQL wording, so MySQL's own
    /// ER_SECURE_TRANSPORT_REQUIRED.
    public static let insecureTransport = MySQLErrPacket(
        code: 3159, sqlState: "HY000",
        message: "Connections using insecure transport are prohibited while --require_secure_transport=ON.")

    /// IAM over a plaintext connection: RDS Proxy's wording (`ProxyError.iamRequiresTLS`) with
    /// MySQL's code for an insecure transport.
    public static let iamRequiresTLS = MySQLErrPacket(code: 3159, sqlState: "HY000", message: ProxyError.iamRequiresTLS.message)

    /// ER_HANDSHAKE_ERROR: a malformed handshake, an SSLRequest out of place, bytes after it.
    public static let badHandshake = MySQLErrPacket(code: 1043, sqlState: "08S01", message: "Bad handshake")

    /// ER_NET_PACKETS_OUT_OF_ORDER: a packet with the wrong sequence id.
    public static let packetsOutOfOrder = MySQLErrPacket(code: 1156, sqlState: "08S01", message: "Got packets out of order")

    /// ER_NOT_SUPPORTED_AUTH_MODE: the client cannot switch to the proxy's plugin.
    public static let notSupportedAuthMode = MySQLErrPacket(
        code: 1251, sqlState: "08004",
        message: "Client does not support authentication protocol requested by server; consider upgrading MySQL client")

    // MARK: Helpers

    /// What an unknown user's scramble is checked against (a check that must fail, whatever
    /// the scramble, since the result is also required to come from a known user).
    static let unknownUserPassword = "\u{0}concierge-unknown-user"

    static func droppingNUL(_ bytes: [UInt8]) -> [UInt8] {
        bytes.last == 0 ? Array(bytes.dropLast()) : bytes
    }

    static func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        var difference = UInt8(lhs.count == rhs.count ? 0 : 1)
        for index in 0..<max(lhs.count, rhs.count) {
            let left = index < lhs.count ? lhs[index] : 0
            let right = index < rhs.count ? rhs[index] : 0
            difference |= left ^ right
        }
        return difference == 0
    }
}
