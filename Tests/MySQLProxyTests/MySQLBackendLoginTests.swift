import MySQLProxy
import MySQLWire
import NIOCore
import Testing

/// The backend login machine event by event, against servers scripted packet by packet (MariaDB
/// has no caching_sha2_password server plugin: these scripted exchanges, with known-answer
/// vectors, are the test of that side).
@Suite struct MySQLBackendLoginTests {
    typealias Login = MySQLBackendLogin

    /// What MySQL 8 offers (no MariaDB extended capabilities: it sets CLIENT_MYSQL).
    static let mysql8: MySQLCapabilities = [
        .longPassword, .foundRows, .longFlag, .connectWithDB, .noSchema, .compress, .odbc, .localFiles, .ignoreSpace,
        .protocol41, .interactive, .ssl, .ignoreSigpipe, .transactions, .reserved, .secureConnection, .multiStatements,
        .multiResults, .psMultiResults, .pluginAuth, .connectAttrs, .pluginAuthLenencClientData, .canHandleExpiredPasswords,
        .sessionTrack, .deprecateEOF, .optionalResultsetMetadata, .zstdCompression, .queryAttributes, .multiFactorAuth,
        .sslVerifyServerCert, .rememberOptions,
    ]

    /// What MariaDB 10.11 offers: no CLIENT_MYSQL, extended capabilities, no DEPRECATE_EOF... (it
    /// has it since 10.2, but a server without it shows the intersection).
    static let mariadb: MySQLCapabilities = [
        .foundRows, .longFlag, .connectWithDB, .noSchema, .compress, .odbc, .localFiles, .ignoreSpace, .protocol41,
        .interactive, .ignoreSigpipe, .transactions, .reserved, .secureConnection, .multiStatements, .multiResults,
        .psMultiResults, .pluginAuth, .connectAttrs, .pluginAuthLenencClientData, .canHandleExpiredPasswords, .sessionTrack,
        .mariadbProgress, .mariadbComMulti, .mariadbStmtBulkOperations, .mariadbExtendedTypeInfo, .mariadbCacheMetadata,
    ]

    /// The session's profile for this backend.
    static let wanted: MySQLCapabilities = [
        .deprecateEOF, .foundRows, .multiStatements, .multiResults, .psMultiResults, .sessionTrack, .localFiles,
        // Asked for, never sent:
        .compress, .queryAttributes, .mariadbStmtBulkOperations,
    ]

    static func login(
        password: String = "db-secret", database: String? = "orders", tls: Bool = false, wanted: MySQLCapabilities = wanted
    ) -> Login {
        Login(configuration: Login.Configuration(
            username: "app", password: password, database: database, useTLS: tls, tlsMode: tls ? "require" : "disable",
            capabilities: wanted, characterSet: MySQLCharacterSet.utf8mb4GeneralCI))
    }

    static func handshake(
        plugin: String = "mysql_native_password", capabilities: MySQLCapabilities = mysql8, nonce: [UInt8] = LoginWire.nonce
    ) -> MySQLPacket {
        let handshake = MySQLHandshakeV10(
            serverVersion: "8.0.36", connectionID: 42, authPluginData: nonce, capabilities: capabilities, characterSet: 255,
            status: .autocommit, authPluginName: plugin)
        return LoginWire.packet(0) { handshake.encode(into: &$0) }
    }

    static func ok(_ sequenceID: UInt8, status: MySQLServerStatus = .autocommit) -> MySQLPacket {
        LoginWire.packet(sequenceID) { MySQLOKPacket(status: status).encode(into: &$0, capabilities: [.protocol41]) }
    }

    static func err(_ sequenceID: UInt8, _ error: MySQLErrPacket) -> MySQLPacket {
        LoginWire.packet(sequenceID) { error.encode(into: &$0) }
    }

    static func moreData(_ sequenceID: UInt8, _ data: MySQLAuthMoreData) -> MySQLPacket {
        LoginWire.packet(sequenceID) { data.encode(into: &$0) }
    }

    static func authSwitch(_ sequenceID: UInt8, plugin: String, data: [UInt8]) -> MySQLPacket {
        LoginWire.packet(sequenceID) { MySQLAuthSwitchRequest(pluginName: plugin, pluginData: data).encode(into: &$0) }
    }

    /// The HandshakeResponse41 the machine wrote, with its sequence id.
    static func response(_ action: Login.Action) throws -> (MySQLHandshakeResponse41, UInt8) {
        let packet = try #require(LoginWire.single(action))
        return (try MySQLHandshakeResponse41(parsing: packet.payload), packet.sequenceID)
    }

    static func bytes(_ action: Login.Action) -> (bytes: [UInt8], sequenceID: UInt8)? {
        LoginWire.single(action).map { (Array($0.payload.readableBytesView), $0.sequenceID) }
    }

    static func authenticated(_ action: Login.Action) -> Login.Authenticated? {
        guard case .authenticated(let result) = action else { return nil }
        return result
    }

    static func failure(_ action: Login.Action) -> Login.Failure? {
        guard case .failed(let failure) = action else { return nil }
        return failure
    }

    // MARK: mysql_native_password, capabilities

    @Test func nativePasswordLoginWithoutTLS() throws {
        var login = Self.login()
        let (response, sequenceID) = try Self.response(login.packetReceived(Self.handshake()))
        #expect(sequenceID == 1)
        #expect(response.username == "app")
        #expect(response.authResponse == LoginWire.Vectors.nativeDBSecret)
        #expect(response.authPluginName == "mysql_native_password")
        #expect(response.database == "orders")
        #expect(response.characterSet == 45)
        #expect(response.maxPacketSize == 1 << 30)
        #expect(response.attributes == [MySQLConnectAttribute(name: "program_name", value: "concierge")])
        #expect(response.capabilities == [
            .longPassword, .foundRows, .connectWithDB, .localFiles, .protocol41, .transactions, .secureConnection,
            .multiStatements, .multiResults, .psMultiResults, .pluginAuth, .connectAttrs, .pluginAuthLenencClientData,
            .sessionTrack, .deprecateEOF,
        ])
        guard case .authenticating(_, .nativePassword, LoginWire.nonce) = login.state else { Issue.record("state \(login.state)"); return }

        let result = try #require(Self.authenticated(login.packetReceived(Self.ok(2, status: [.autocommit, .noBackslashEscapes]))))
        #expect(result == Login.Authenticated(
            serverCapabilities: Self.mysql8, capabilities: response.capabilities, connectionID: 42, serverVersion: "8.0.36",
            status: [.autocommit, .noBackslashEscapes]))
        guard case .authenticated = login.state else { Issue.record("state \(login.state)"); return }
        #expect(login.packetReceived(Self.ok(3)) == .none)
    }

    @Test func capabilitiesAreTheWantedOnesTheServerOffers() throws {
        var login = Self.login(database: nil)
        let (response, _) = try Self.response(login.packetReceived(Self.handshake(capabilities: Self.mariadb)))
        // CLIENT_MYSQL is set whatever MariaDB says: it reads no extended capabilities from us.
        #expect(response.capabilities.contains(.clientMySQL))
        #expect(response.capabilities.isDisjoint(with: .mariadbExtended))
        #expect(!response.capabilities.contains(.deprecateEOF))
        #expect(!response.capabilities.contains(.connectWithDB))
        #expect(response.database == nil)
        #expect(!response.capabilities.contains(.compress) && !response.capabilities.contains(.ssl))
        #expect(response.capabilities.isSuperset(of: [.protocol41, .secureConnection, .pluginAuth, .transactions, .connectAttrs]))
        #expect(login.capabilities(offered: Self.mariadb) == response.capabilities)
    }

    @Test func attributesAreSentOnlyWhenTheServerTakesThem() throws {
        var login = Self.login()
        let (response, _) = try Self.response(login.packetReceived(Self.handshake(capabilities: Self.mysql8.subtracting(.connectAttrs))))
        #expect(!response.capabilities.contains(.connectAttrs))
        #expect(response.attributes.isEmpty)
    }

    @Test func anEmptyPasswordSendsAnEmptyResponse() throws {
        for plugin in ["mysql_native_password", "caching_sha2_password"] {
            var login = Self.login(password: "")
            let (response, _) = try Self.response(login.packetReceived(Self.handshake(plugin: plugin)))
            #expect(response.authResponse.isEmpty)
        }
    }

    @Test func theServersRefusalBeforeItsHandshakeIsItsError() {
        var login = Self.login()
        let tooMany = MySQLErrPacket(code: 1040, sqlState: "08004", message: "Too many connections")
        #expect(Self.failure(login.packetReceived(Self.err(0, tooMany))) == .server(tooMany))
        guard case .failed = login.state else { Issue.record("state \(login.state)"); return }
        #expect(login.packetReceived(Self.handshake()) == .none)
    }

    @Test func failuresAreClassifiedByCode() {
        func server(_ code: UInt16) -> Login.Failure { .server(MySQLErrPacket(code: code, message: "")) }
        #expect(server(1045).isAuthenticationFailure && !server(1045).isTooManyConnections)
        #expect(server(1040).isTooManyConnections && server(1203).isTooManyConnections)
        #expect(!server(1049).isAuthenticationFailure && !server(1049).isTooManyConnections)
        #expect(!Login.Failure.protocolViolation("x").isAuthenticationFailure)
        #expect(!Login.Failure.unsupported("x").isTooManyConnections)
    }

    @Test func aWrongPasswordIsTheServersError1045() {
        var login = Self.login(password: "nope")
        _ = login.packetReceived(Self.handshake())
        let denied = MySQLErrPacket(code: 1045, sqlState: "28000", message: "Access denied for user 'app'@'10.0.0.1' (using password: YES)")
        let failure = Self.failure(login.packetReceived(Self.err(2, denied)))
        #expect(failure == .server(denied))
        #expect(failure?.description == "ERROR 1045 (28000): Access denied for user 'app'@'10.0.0.1' (using password: YES)")
    }

    // MARK: Protocol violations

    @Test func aMalformedHandshakeIsAViolation() {
        var login = Self.login()
        guard case .protocolViolation = Self.failure(login.packetReceived(LoginWire.packet(0, bytes: [9, 1, 2]))) else {
            Issue.record("not a violation")
            return
        }
    }

    @Test func theHandshakeMustBeSequenceZero() {
        var login = Self.login()
        var handshake = Self.handshake()
        handshake.sequenceID = 1
        #expect(Self.failure(login.packetReceived(handshake)) == .protocolViolation("handshake with sequence id 1"))
    }

    @Test func aServerWithoutPluginAuthIsUnsupported() {
        var login = Self.login()
        guard case .unsupported = Self.failure(login.packetReceived(Self.handshake(capabilities: Self.mysql8.subtracting(.pluginAuth))))
        else { Issue.record("accepted"); return }
    }

    @Test func wrongSequenceIDsAndUnexpectedPacketsAreViolations() {
        var login = Self.login()
        _ = login.packetReceived(Self.handshake())
        var skipped = login
        #expect(Self.failure(skipped.packetReceived(Self.ok(3))) == .protocolViolation("packet with sequence id 3, expected 2"))
        var unexpected = login
        #expect(Self.failure(unexpected.packetReceived(LoginWire.packet(2, bytes: [0x03, 0x00])))
            == .protocolViolation("unexpected packet during authentication"))
        // AuthMoreData belongs to caching_sha2_password only.
        #expect(Self.failure(login.packetReceived(Self.moreData(2, .fastAuthSuccess)))
            == .protocolViolation("unexpected AuthMoreData for mysql_native_password"))
    }

    @Test func aMalformedOKOrERRIsAViolation() {
        var login = Self.login()
        _ = login.packetReceived(Self.handshake())
        var ok = login
        guard case .protocolViolation = Self.failure(ok.packetReceived(LoginWire.packet(2, bytes: [0x00]))) else {
            Issue.record("a truncated OK was accepted")
            return
        }
        guard case .protocolViolation = Self.failure(login.packetReceived(LoginWire.packet(2, bytes: [0xFF]))) else {
            Issue.record("a truncated ERR was accepted")
            return
        }
    }

    // MARK: TLS

    @Test func tlsSendsTheSSLRequestThenTheResponseOverTLS() throws {
        var login = Self.login(tls: true)
        let action = login.packetReceived(Self.handshake())
        guard case .sendSSLRequestAndStartTLS(let bytes) = action else { Issue.record("\(action)"); return }
        let request = try #require(LoginWire.packets(bytes).first)
        #expect(request.sequenceID == 1)
        #expect(MySQLSSLRequest.isSSLRequest(payload: request.payload))
        let ssl = try MySQLSSLRequest(parsing: request.payload)
        #expect(ssl.capabilities.contains(.ssl))
        #expect(ssl.characterSet == 45)
        guard case .negotiatingTLS = login.state else { Issue.record("state \(login.state)"); return }

        // Nothing may come before TLS is in place.
        var early = login
        #expect(Self.failure(early.packetReceived(Self.ok(2))) == .protocolViolation("packet received before the TLS handshake"))

        let (response, sequenceID) = try Self.response(login.tlsHandlerAdded())
        #expect(sequenceID == 2)
        #expect(response.capabilities == ssl.capabilities)
        #expect(response.authResponse == LoginWire.Vectors.nativeDBSecret)
        #expect(login.tlsHandlerAdded() == .none)
        let result = try #require(Self.authenticated(login.packetReceived(Self.ok(3))))
        #expect(result.capabilities.contains(.ssl))
    }

    @Test func aServerWithoutTLSIsRefusedWhenTLSIsConfigured() {
        var login = Self.login(tls: true)
        #expect(Self.failure(login.packetReceived(Self.handshake(capabilities: Self.mysql8.subtracting(.ssl))))
            == .unsupported("the database does not accept TLS (target_group.tls.mode is require)"))
    }

    @Test func aTLSFailureFailsTheLogin() {
        var login = Self.login(tls: true)
        _ = login.packetReceived(Self.handshake())
        #expect(Self.failure(login.tlsFailed("certificate verify failed"))
            == .unsupported("TLS with the database could not start: certificate verify failed"))
        #expect(login.tlsFailed("again") == .none)
    }

    // MARK: caching_sha2_password, against a scripted server

    @Test func cachingSHA2FastPath() throws {
        var login = Self.login()
        let (response, _) = try Self.response(login.packetReceived(Self.handshake(plugin: "caching_sha2_password")))
        #expect(response.authPluginName == "caching_sha2_password")
        #expect(response.authResponse == LoginWire.Vectors.sha2DBSecret)
        // The scripted server finds the scramble in its cache.
        #expect(login.packetReceived(Self.moreData(2, .fastAuthSuccess)) == .none)
        guard case .awaitingFastAuthOK = login.state else { Issue.record("state \(login.state)"); return }
        var skipped = login
        #expect(Self.failure(skipped.packetReceived(Self.ok(4))) == .protocolViolation("packet with sequence id 4, expected 3"))
        var other = login
        #expect(Self.failure(other.packetReceived(Self.moreData(3, .fastAuthSuccess)))
            == .protocolViolation("expected OK or ERR after caching_sha2_password authentication"))
        #expect(Self.authenticated(login.packetReceived(Self.ok(3))) != nil)
    }

    @Test func cachingSHA2FullAuthenticationWithTheServersRSAKey() throws {
        // The scripted server: its own key pair, a cache miss, then a check of the password.
        let serverKeys = LoginWire.keys
        var login = Self.login()
        _ = login.packetReceived(Self.handshake(plugin: "caching_sha2_password"))
        let request = try #require(Self.bytes(login.packetReceived(Self.moreData(2, .performFullAuthentication))))
        #expect(request.bytes == [0x02])
        #expect(request.sequenceID == 3)
        guard case .awaitingPublicKey = login.state else { Issue.record("state \(login.state)"); return }
        let encrypted = try #require(Self.bytes(login.packetReceived(Self.moreData(4, .publicKey(serverKeys.publicKeyPEM)))))
        #expect(encrypted.sequenceID == 5)
        #expect(encrypted.bytes.count == 256)
        #expect(try serverKeys.decryptPassword(encrypted.bytes, nonce: LoginWire.nonce) == "db-secret")
        guard case .awaitingFullAuthResult = login.state else { Issue.record("state \(login.state)"); return }
        #expect(Self.authenticated(login.packetReceived(Self.ok(6))) != nil)
    }

    @Test func cachingSHA2FullAuthenticationOverTLSSendsThePassword() throws {
        var login = Self.login(tls: true)
        _ = login.packetReceived(Self.handshake(plugin: "caching_sha2_password"))
        _ = login.tlsHandlerAdded()
        let password = try #require(Self.bytes(login.packetReceived(Self.moreData(3, .performFullAuthentication))))
        #expect(password.bytes == Array("db-secret".utf8) + [0])
        #expect(password.sequenceID == 4)
        let denied = MySQLErrPacket(code: 1045, sqlState: "28000", message: "Access denied")
        var refused = login
        #expect(Self.failure(refused.packetReceived(Self.err(5, denied))) == .server(denied))
        #expect(Self.authenticated(login.packetReceived(Self.ok(5))) != nil)
    }

    @Test func theServersKeyExchangeCanFail() {
        var login = Self.login()
        _ = login.packetReceived(Self.handshake(plugin: "caching_sha2_password"))
        _ = login.packetReceived(Self.moreData(2, .performFullAuthentication))
        var notAKey = login
        guard case .protocolViolation = Self.failure(notAKey.packetReceived(Self.moreData(4, .publicKey("-----BEGIN PUBLIC KEY-----\nxx\n"))))
        else { Issue.record("a bad key was accepted"); return }
        var notMoreData = login
        #expect(Self.failure(notMoreData.packetReceived(Self.ok(4))) == .protocolViolation("expected the database's public key"))
        let error = MySQLErrPacket(code: 1045, sqlState: "28000", message: "Access denied")
        #expect(Self.failure(login.packetReceived(Self.err(4, error))) == .server(error))
    }

    @Test func anUnknownAuthMoreDataCodeIsAViolation() {
        var login = Self.login()
        _ = login.packetReceived(Self.handshake(plugin: "caching_sha2_password"))
        guard case .protocolViolation = Self.failure(login.packetReceived(Self.moreData(2, .data([0x07])))) else {
            Issue.record("accepted")
            return
        }
    }

    // MARK: AuthSwitchRequest

    @Test func anAuthSwitchChangesPluginAndNonce() throws {
        // MySQL 8 announces caching_sha2; the account uses native.
        var login = Self.login()
        _ = login.packetReceived(Self.handshake(plugin: "caching_sha2_password"))
        let answer = try #require(Self.bytes(login.packetReceived(
            Self.authSwitch(2, plugin: "mysql_native_password", data: LoginWire.otherNonce))))
        #expect(answer.bytes == LoginWire.Vectors.nativeDBSecretOtherNonce)
        #expect(answer.sequenceID == 3)
        // One switch only.
        var again = login
        #expect(Self.failure(again.packetReceived(Self.authSwitch(4, plugin: "mysql_native_password", data: LoginWire.nonce)))
            == .protocolViolation("a second authentication switch"))
        #expect(Self.authenticated(login.packetReceived(Self.ok(4))) != nil)
    }

    @Test func anAuthSwitchToCachingSHA2ThenItsFullAuthentication() throws {
        // MariaDB-style greeting (native), a scripted server whose account uses caching_sha2.
        var login = Self.login()
        _ = login.packetReceived(Self.handshake(plugin: "mysql_native_password", capabilities: Self.mariadb))
        let scramble = try #require(Self.bytes(login.packetReceived(
            Self.authSwitch(2, plugin: "caching_sha2_password", data: LoginWire.otherNonce))))
        #expect(scramble.bytes == LoginWire.Vectors.sha2DBSecretOtherNonce)
        _ = login.packetReceived(Self.moreData(4, .performFullAuthentication))
        let encrypted = try #require(Self.bytes(login.packetReceived(Self.moreData(6, .publicKey(LoginWire.keys.publicKeyPEM)))))
        #expect(encrypted.sequenceID == 7)
        // Encrypted for the switch's nonce, not the handshake's.
        #expect(try LoginWire.keys.decryptPassword(encrypted.bytes, nonce: LoginWire.otherNonce) == "db-secret")
        #expect(Self.authenticated(login.packetReceived(Self.ok(8))) != nil)
    }

    @Test func clearPasswordOnlyOverTLS() throws {
        var plain = Self.login()
        _ = plain.packetReceived(Self.handshake())
        guard case .unsupported(let reason) = Self.failure(plain.packetReceived(Self.authSwitch(2, plugin: "mysql_clear_password", data: [])))
        else { Issue.record("clear text sent without TLS"); return }
        #expect(reason.contains("only over TLS"))

        var secure = Self.login(tls: true)
        _ = secure.packetReceived(Self.handshake())
        _ = secure.tlsHandlerAdded()
        let password = try #require(Self.bytes(secure.packetReceived(Self.authSwitch(3, plugin: "mysql_clear_password", data: []))))
        #expect(password.bytes == Array("db-secret".utf8) + [0])
        #expect(password.sequenceID == 4)
    }

    @Test func unsupportedPluginsAreClearErrors() {
        var login = Self.login()
        _ = login.packetReceived(Self.handshake(capabilities: Self.mariadb))
        #expect(Self.failure(login.packetReceived(Self.authSwitch(2, plugin: "client_ed25519", data: Array(1...32))))
            == .unsupported("the database asks for authentication plugin client_ed25519, which the proxy does not support"))

        var old = Self.login()
        _ = old.packetReceived(Self.handshake())
        #expect(Self.failure(old.packetReceived(LoginWire.packet(2, bytes: [0xFE])))
            == .unsupported("the database asks for mysql_old_password authentication"))
    }

    @Test func anUnknownHandshakePluginIsAnsweredWithNativePassword() throws {
        // The handshake's plugin is the server's default, not necessarily the user's: answer as
        // MySQL's client does, and let the server switch.
        for plugin in ["client_ed25519", "sha256_password", "mysql_clear_password"] {
            var login = Self.login()
            let (response, _) = try Self.response(login.packetReceived(Self.handshake(plugin: plugin)))
            #expect(response.authPluginName == "mysql_native_password")
            #expect(response.authResponse == LoginWire.Vectors.nativeDBSecret)
        }
        // Over TLS, a clear-password handshake is answered in clear.
        var secure = Self.login(tls: true)
        _ = secure.packetReceived(Self.handshake(plugin: "mysql_clear_password"))
        let (response, _) = try Self.response(secure.tlsHandlerAdded())
        #expect(response.authPluginName == "mysql_clear_password")
        #expect(response.authResponse == Array("db-secret".utf8) + [0])
    }
}

/// The two machines against each other: the backend login (the proxy as a client) logs in to
/// the client login (the proxy as a server), packet by packet, as a MySQL 8 server with
/// caching_sha2_password would answer. TLS is the handlers' business: here each side is told
/// it started.
@Suite struct MySQLLoginsAgainstEachOtherTests {
    enum Outcome: Equatable {
        case loggedIn(MySQLClientLogin.LoginResult, MySQLBackendLogin.Authenticated)
        case refused(MySQLErrPacket, MySQLClientLogin.Failure)
    }

    /// Runs the exchange; `trace` gets each packet's direction, sequence id and first byte.
    static func run(
        method: MySQLClientLogin.PasswordMethod, password: String, user: String = "app", tls: Bool = false,
        trace: inout [String]
    ) throws -> Outcome {
        var server = MySQLClientLogin(configuration: .init(
            passwordMethod: method, tlsAvailable: tls, rsaKeyPair: LoginWire.keys, makeNonce: { LoginWire.otherNonce }))
        var client = MySQLBackendLogin(configuration: .init(
            username: user, password: password, database: "orders", useTLS: tls, capabilities: [.deprecateEOF, .sessionTrack]))
        let environment = MySQLClientLogin.Environment(
            policy: .init(requireTLS: tls), user: { $0 == "app" ? MySQLClientLogin.User(password: "db-secret") : nil })

        // Server packets with their first byte; client packets with theirs only when it is
        // all there is (the key request).
        func record(_ direction: String, _ packets: [MySQLPacket]) {
            for packet in packets {
                let byte = packet.firstByte.map { String($0, radix: 16) } ?? "-"
                trace.append(direction == "S" || packet.payload.readableBytes == 1 ? "\(direction)\(packet.sequenceID):\(byte)" : "\(direction)\(packet.sequenceID)")
            }
        }

        var toClient = LoginWire.packets(try #require({
            if case .write(let bytes) = server.start(
                connectionID: 9, nonce: LoginWire.nonce, serverVersion: "8.0.36-concierge",
                capabilities: MySQLClientProfile.offeredToClients)
            { return bytes }
            return nil
        }()))
        for _ in 0..<10 {
            record("S", toClient)
            var toServer: [MySQLPacket] = []
            for packet in toClient {
                switch client.packetReceived(packet) {
                case .write(let bytes):
                    toServer += LoginWire.packets(bytes)
                case .sendSSLRequestAndStartTLS(let bytes):
                    toServer += LoginWire.packets(bytes)
                case .authenticated(let result):
                    Issue.record("authenticated before the session's OK: \(result)")
                case .failed(let failure):
                    Issue.record("the backend side failed: \(failure)")
                case .none:
                    break
                }
            }
            record("C", toServer)
            toClient = []
            for packet in toServer {
                let action = server.packetReceived(packet, environment: environment)
                switch action {
                case .write(let bytes):
                    toClient += LoginWire.packets(bytes)
                case .startTLS:
                    // Both sides' TLS handlers are in place; the response follows.
                    guard case .write(let bytes) = client.tlsHandlerAdded() else {
                        Issue.record("no response after TLS")
                        return .refused(MySQLErrPacket(code: 0, message: ""), .protocolViolation(""))
                    }
                    let response = LoginWire.packets(bytes)
                    record("C", response)
                    guard let first = response.first else { break }
                    let next = server.packetReceived(first, environment: environment)
                    guard case .write(let more) = next else {
                        return try finish(next, client: &client) { record("S", $0) }
                    }
                    toClient += LoginWire.packets(more)
                case .verifyIAMToken:
                    Issue.record("no IAM here")
                case .loggedIn, .fail:
                    return try finish(action, client: &client) { record("S", $0) }
                case .none:
                    break
                }
            }
        }
        Issue.record("no end after ten rounds")
        return .refused(MySQLErrPacket(code: 0, message: ""), .protocolViolation(""))
    }

    /// The server side's last word, and the session's OK (or the ERR) to the client side.
    static func finish(
        _ action: MySQLClientLogin.Action, client: inout MySQLBackendLogin, record: ([MySQLPacket]) -> Void
    ) throws -> Outcome {
        switch action {
        case .loggedIn(let result, let write):
            record(LoginWire.packets(write))
            for packet in LoginWire.packets(write) {
                #expect(client.packetReceived(packet) == .none)
            }
            let ok = LoginWire.packet(result.nextSequenceID) {
                MySQLOKPacket(status: .autocommit).encode(into: &$0, capabilities: result.capabilities)
            }
            record([ok])
            guard case .authenticated(let authenticated) = client.packetReceived(ok) else {
                Issue.record("the session's OK did not complete the backend side")
                return .refused(MySQLErrPacket(code: 0, message: ""), .protocolViolation(""))
            }
            return .loggedIn(result, authenticated)
        case .fail(let bytes, let error, let reason):
            let packet = try #require(LoginWire.packets(bytes).first)
            record([packet])
            #expect(client.packetReceived(packet) == .failed(.server(error)))
            return .refused(error, reason)
        case .none, .write, .startTLS, .verifyIAMToken:
            Issue.record("unexpected \(action)")
            return .refused(MySQLErrPacket(code: 0, message: ""), .protocolViolation(""))
        }
    }

    static func run(method: MySQLClientLogin.PasswordMethod, password: String, user: String = "app", tls: Bool = false) throws
        -> (Outcome, [String])
    {
        var trace: [String] = []
        let outcome = try run(method: method, password: password, user: user, tls: tls, trace: &trace)
        return (outcome, trace)
    }

    @Test func nativePassword() throws {
        let (outcome, trace) = try Self.run(method: .nativePassword, password: "db-secret")
        guard case .loggedIn(let result, let authenticated) = outcome else { Issue.record("\(outcome)"); return }
        #expect(trace == ["S0:a", "C1", "S2:0"])
        #expect(result.user == "app" && result.database == "orders")
        #expect(result.capabilities == authenticated.capabilities)
        #expect(authenticated.connectionID == 9)
        #expect(authenticated.serverVersion == "8.0.36-concierge")
        #expect(result.attributes == [MySQLConnectAttribute(name: "program_name", value: "concierge")])
    }

    @Test func cachingSHA2FastPath() throws {
        let (outcome, trace) = try Self.run(method: .cachingSHA2Password, password: "db-secret")
        guard case .loggedIn(let result, _) = outcome else { Issue.record("\(outcome)"); return }
        #expect(trace == ["S0:a", "C1", "S2:1", "S3:0"])
        #expect(result.method == .password(.cachingSHA2Password))
        #expect(result.nextSequenceID == 3)
    }

    @Test func cachingSHA2FastPathOverTLS() throws {
        let (outcome, trace) = try Self.run(method: .cachingSHA2Password, password: "db-secret", tls: true)
        guard case .loggedIn(let result, let authenticated) = outcome else { Issue.record("\(outcome)"); return }
        #expect(trace == ["S0:a", "C1", "C2", "S3:1", "S4:0"])
        #expect(result.isTLS && authenticated.capabilities.contains(.ssl))
        #expect(result.nextSequenceID == 4)
    }

    @Test func aWrongPasswordGoesThroughTheRSAExchangeToError1045() throws {
        let (outcome, trace) = try Self.run(method: .cachingSHA2Password, password: "wrong")
        #expect(outcome == .refused(MySQLClientLoginTests.accessDenied("app"), .wrongPassword))
        // Greeting, response, "full authentication", key request, key, ciphertext, ERR.
        #expect(trace == ["S0:a", "C1", "S2:1", "C3:2", "S4:1", "C5", "S6:ff"])
    }

    @Test func anUnknownUserGoesThroughTheSameExchange() throws {
        let (wrong, wrongTrace) = try Self.run(method: .cachingSHA2Password, password: "wrong")
        let (unknown, unknownTrace) = try Self.run(method: .cachingSHA2Password, password: "wrong", user: "ghost")
        #expect(wrongTrace == unknownTrace)
        #expect(unknown == .refused(MySQLClientLoginTests.accessDenied("ghost"), .wrongPassword))
        #expect(wrong == .refused(MySQLClientLoginTests.accessDenied("app"), .wrongPassword))
    }

    @Test func aWrongPasswordOverTLSIsSentInClearAndRefused() throws {
        let (outcome, trace) = try Self.run(method: .cachingSHA2Password, password: "wrong", tls: true)
        #expect(outcome == .refused(MySQLClientLoginTests.accessDenied("app"), .wrongPassword))
        // Greeting, SSLRequest, response, "full authentication", the password, ERR.
        #expect(trace == ["S0:a", "C1", "C2", "S3:1", "C4", "S5:ff"])
    }
}
