import ConciergeAuth
import MySQLProxy
import MySQLWire
import NIOCore
import SQLClassifier
import Testing

/// IAM tokens through caching_sha2_password's full authentication, and COM_CHANGE_USER: the
/// login machine's paths for them, event by event, and the session machine's side of a change.
@Suite struct MySQLChangeUserTests {
    typealias Login = MySQLClientLogin
    typealias T = MySQLClientLoginTests

    static let token = "proxy.example:3306/?Action=connect&DBUser=token&X-Amz-Signature=abc"

    // MARK: IAM through caching_sha2_password

    @Test func anIAMUsersCachingSHA2ScrambleGetsFullAuthenticationAndTheTokenIsChecked() throws {
        for method in [Login.PasswordMethod.cachingSHA2Password, .nativePassword] {
            for allowed in [true, false] {
                var login = T.login(method, tls: true)
                T.greet(&login, tls: true)
                // Even the scramble of the secret's password does not take the fast path: an IAM
                // user proves a token, which a scramble cannot carry.
                let scramble = MySQLAuthentication.cachingSHA2Scramble(password: "token-db-secret", nonce: LoginWire.nonce)
                let more = try #require(LoginWire.single(login.packetReceived(
                    T.response(2, user: "token", authResponse: scramble, plugin: "caching_sha2_password"),
                    environment: T.environment())))
                #expect(more.sequenceID == 3)
                #expect(LoginWire.moreData(more) == .performFullAuthentication)
                #expect(login.packetReceived(LoginWire.packet(4, bytes: Array(Self.token.utf8) + [0]), environment: T.environment())
                    == .verifyIAMToken(Self.token))
                let action = login.iamResult(ok: allowed, reason: "expired")
                if allowed {
                    guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
                    #expect(result.method == .iamToken)
                    #expect(result.nextSequenceID == 5)
                } else {
                    let failure = T.failure(action)
                    #expect(failure?.error == T.accessDenied("token"))
                    #expect(failure?.sequenceID == 5)
                    #expect(failure?.reason == .iamTokenRefused(reason: "expired"))
                }
            }
        }
    }

    @Test func anIAMUserAnsweringWithNativePasswordIsSwitchedToTheProxysCachingSHA2() throws {
        var login = T.login(.cachingSHA2Password, tls: true)
        T.greet(&login, tls: true)
        let switchPacket = try #require(LoginWire.single(login.packetReceived(
            T.response(2, user: "token", authResponse: [1, 2, 3]), environment: T.environment())))
        #expect(switchPacket.sequenceID == 3)
        let request = try #require(LoginWire.authSwitch(switchPacket))
        #expect(request.pluginName == "caching_sha2_password")
        #expect(request.pluginData.prefix(20) == LoginWire.otherNonce[...])
        let more = try #require(LoginWire.single(login.packetReceived(LoginWire.packet(4, bytes: [7, 7]), environment: T.environment())))
        #expect(more.sequenceID == 5)
        #expect(LoginWire.moreData(more) == .performFullAuthentication)
        #expect(login.packetReceived(LoginWire.packet(6, bytes: Array(Self.token.utf8) + [0]), environment: T.environment())
            == .verifyIAMToken(Self.token))
        guard case .loggedIn(let result, nil) = login.iamResult(ok: true) else { Issue.record("not logged in"); return }
        #expect(result.nextSequenceID == 7)
    }

    @Test func aNativeProxySwitchesAnIAMUsersNativeAnswerToClearPassword() throws {
        var login = T.login(.nativePassword, tls: true)
        T.greet(&login, tls: true)
        let switchPacket = try #require(LoginWire.single(login.packetReceived(
            T.response(2, user: "token", authResponse: [1, 2, 3]), environment: T.environment())))
        #expect(LoginWire.authSwitch(switchPacket)?.pluginName == "mysql_clear_password")
    }

    @Test func iamThroughCachingSHA2IsRefusedWithoutTLS() {
        var login = T.login(.cachingSHA2Password, tls: true)
        T.greet(&login)
        let failure = T.failure(login.packetReceived(
            T.response(user: "token", authResponse: [1], plugin: "caching_sha2_password"), environment: T.environment()))
        #expect(failure?.error == Login.iamRequiresTLS)
        #expect(failure?.reason == .iamWithoutTLS)
    }

    // MARK: COM_CHANGE_USER

    /// A connection logged in as `app` (native password, or caching_sha2), ready for a
    /// COM_CHANGE_USER; the machine that runs it.
    static func changing(_ method: Login.PasswordMethod = .nativePassword, tls: Bool = false) throws -> Login {
        var login = T.login(method, tls: tls)
        T.greet(&login, tls: tls)
        let scramble = method == .nativePassword ? LoginWire.Vectors.nativeDBSecret : LoginWire.Vectors.sha2DBSecret
        let action = login.packetReceived(
            T.response(tls ? 2 : 1, authResponse: scramble, plugin: method.pluginName), environment: T.environment())
        guard case .loggedIn(let result, _) = action else { throw LoginFailed(action: "\(action)") }
        #expect(login.greetingNonce == LoginWire.nonce)
        return Login(configuration: login.configuration, changingUserOf: result, greetingNonce: login.greetingNonce)
    }

    struct LoginFailed: Error { var action: String }

    static func changeUser(
        user: String = "app", authResponse: [UInt8], database: String = "orders2", characterSet: UInt8? = 224,
        plugin: String? = "mysql_native_password", capabilities: MySQLCapabilities = T.clientCapabilities
    ) -> MySQLPacket {
        let request = MySQLChangeUser(
            username: user, authResponse: authResponse, database: database, characterSet: characterSet, authPluginName: plugin,
            attributes: [MySQLConnectAttribute(name: "_client_name", value: "libmariadb")])
        return LoginWire.packet(0) { request.encode(into: &$0, capabilities: capabilities) }
    }

    @Test func theChangeUserPacketRoundTrips() throws {
        let request = MySQLChangeUser(
            username: "bob", authResponse: Array(repeating: 7, count: 20), database: "db", characterSet: 224,
            authPluginName: "mysql_native_password", attributes: [MySQLConnectAttribute(name: "a", value: "b")])
        var payload = ByteBuffer()
        request.encode(into: &payload, capabilities: T.clientCapabilities)
        #expect(try MySQLChangeUser(parsing: payload, capabilities: T.clientCapabilities) == request)
        // A client without the optional tail: user, scramble, schema only.
        var short = ByteBuffer()
        short.writeInteger(MySQLCommand.changeUser.rawValue)
        short.writeMySQLNullTerminatedString("bob")
        short.writeInteger(UInt8(0))
        short.writeMySQLNullTerminatedString("")
        let parsed = try MySQLChangeUser(parsing: short, capabilities: T.clientCapabilities)
        #expect(parsed.username == "bob" && parsed.authResponse.isEmpty && parsed.database.isEmpty)
        #expect(parsed.characterSet == nil && parsed.authPluginName == nil)
    }

    @Test func aNativeScrambleOfTheGreetingsNonceChangesTheUser() throws {
        var login = try Self.changing()
        let action = login.changeUserReceived(
            Self.changeUser(authResponse: LoginWire.Vectors.nativeDBSecret), environment: T.environment())
        guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
        #expect(result.user == "app")
        #expect(result.database == "orders2")
        #expect(result.characterSet == 224)
        #expect(result.nextSequenceID == 1)
        #expect(result.method == .password(.nativePassword))
        #expect(result.capabilities.contains(.pluginAuth))
    }

    @Test func aWrongPasswordOrAnUnknownUserIsAccessDeniedAtSequenceOne() throws {
        for (user, scramble) in [("app", LoginWire.Vectors.nativeDBSecretOtherNonce), ("nobody", LoginWire.Vectors.nativeDBSecret)] {
            var login = try Self.changing()
            let failure = T.failure(login.changeUserReceived(
                Self.changeUser(user: user, authResponse: scramble), environment: T.environment()))
            #expect(failure?.error == T.accessDenied(user))
            #expect(failure?.sequenceID == 1)
            #expect(failure?.reason == .wrongPassword)
        }
    }

    @Test func anEmptyDatabaseIsNoneAndTheCharacterSetStaysWhenNotSent() throws {
        var login = try Self.changing()
        let action = login.changeUserReceived(
            Self.changeUser(authResponse: LoginWire.Vectors.nativeDBSecret, database: "", characterSet: 0), environment: T.environment())
        guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
        #expect(result.database == nil)
        #expect(result.characterSet == 45)
    }

    @Test func anotherPluginIsSwitchedWithAFreshNonce() throws {
        var login = try Self.changing()
        let switchPacket = try #require(LoginWire.single(login.changeUserReceived(
            Self.changeUser(authResponse: [1, 2], plugin: "client_ed25519"), environment: T.environment())))
        #expect(switchPacket.sequenceID == 1)
        #expect(LoginWire.authSwitch(switchPacket)?.pluginName == "mysql_native_password")
        let action = login.packetReceived(
            LoginWire.packet(2, bytes: LoginWire.Vectors.nativeDBSecretOtherNonce), environment: T.environment())
        guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
        #expect(result.nextSequenceID == 3)
    }

    @Test func cachingSHA2FastPathAndFullAuthentication() throws {
        var fast = try Self.changing(.cachingSHA2Password)
        guard case .loggedIn(let result, let write) = fast.changeUserReceived(
            Self.changeUser(authResponse: LoginWire.Vectors.sha2DBSecret, plugin: "caching_sha2_password"), environment: T.environment())
        else { Issue.record("not logged in"); return }
        #expect(LoginWire.packets(write).map(\.sequenceID) == [1])
        #expect(result.nextSequenceID == 2)

        var full = try Self.changing(.cachingSHA2Password, tls: true)
        let more = try #require(LoginWire.single(full.changeUserReceived(
            Self.changeUser(authResponse: [9, 9], plugin: "caching_sha2_password"), environment: T.environment())))
        #expect(more.sequenceID == 1)
        #expect(LoginWire.moreData(more) == .performFullAuthentication)
        let action = full.packetReceived(LoginWire.packet(2, bytes: Array("db-secret".utf8) + [0]), environment: T.environment())
        guard case .loggedIn(let fullResult, nil) = action else { Issue.record("\(action)"); return }
        #expect(fullResult.nextSequenceID == 3)
        #expect(fullResult.isTLS)
    }

    @Test func anIAMUserChangesInWithAToken() throws {
        var login = try Self.changing(.cachingSHA2Password, tls: true)
        let more = try #require(LoginWire.single(login.changeUserReceived(
            Self.changeUser(user: "token", authResponse: [1], plugin: "caching_sha2_password"), environment: T.environment())))
        #expect(LoginWire.moreData(more) == .performFullAuthentication)
        #expect(login.packetReceived(LoginWire.packet(2, bytes: Array(Self.token.utf8) + [0]), environment: T.environment())
            == .verifyIAMToken(Self.token))
        #expect(login.user == "token")
        guard case .loggedIn(let result, nil) = login.iamResult(ok: true) else { Issue.record("not logged in"); return }
        #expect(result.user == "token")
        #expect(result.nextSequenceID == 3)

        var clear = try Self.changing(tls: true)
        #expect(clear.changeUserReceived(
            Self.changeUser(user: "token", authResponse: Array("tok".utf8) + [0], plugin: "mysql_clear_password"),
            environment: T.environment()) == .verifyIAMToken("tok"))
        let failure = T.failure(clear.iamResult(ok: false, reason: "bad signature"))
        #expect(failure?.error == T.accessDenied("token"))
        #expect(failure?.sequenceID == 1)
    }

    @Test func iamWithoutTLSIsRefusedOnChangeUserToo() throws {
        var login = try Self.changing()
        let failure = T.failure(login.changeUserReceived(
            Self.changeUser(user: "token", authResponse: [1]), environment: T.environment()))
        #expect(failure?.error == Login.iamRequiresTLS)
        #expect(failure?.sequenceID == 1)
    }

    @Test func theClientLimitDoesNotApplyToAChangeOfUser() throws {
        var login = try Self.changing()
        guard case .loggedIn = login.changeUserReceived(
            Self.changeUser(authResponse: LoginWire.Vectors.nativeDBSecret), environment: T.environment(full: true))
        else { Issue.record("refused"); return }
    }

    @Test func aMalformedChangeUserIsABadHandshake() throws {
        var login = try Self.changing()
        let failure = T.failure(login.changeUserReceived(LoginWire.packet(0, bytes: [0x11, 0x61]), environment: T.environment()))
        #expect(failure?.error.code == 1043)
        #expect(failure?.sequenceID == 1)
        // Only once: the machine is spent.
        #expect(login.changeUserReceived(Self.changeUser(authResponse: []), environment: T.environment()) == .none)
    }

    // MARK: The session machine's side

    static let caps: MySQLCapabilities = [.protocol41, .transactions, .sessionTrack, .multiResults, .multiStatements]

    static func query(_ sql: String) -> MySQLSessionMachine.Command {
        var bytes = ByteBuffer()
        bytes.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(MySQLCommand.query.rawValue)
            payload.writeString(sql)
        }
        return .init(code: MySQLCommand.query.rawValue, bytes: bytes)
    }

    static func ok(_ status: MySQLServerStatus) -> ByteBuffer {
        var buffer = ByteBuffer()
        MySQLOKPacket(status: status, sessionStateChanges: []).encode(into: &buffer, capabilities: caps)
        return buffer
    }

    /// A session whose `sql` ran on a backend it still holds (diagnostics aside) after `status`.
    static func ran(_ sql: String, status: MySQLServerStatus) throws -> MySQLSessionMachine {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        _ = machine.commandReceived(query(sql), classification: MySQLClassifier.classify(sql))
        _ = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false)
        _ = try machine.serverPacket(ok(status))
        return machine
    }

    @Test func changeUserReleasesAPinnedOrTransactionsBackendAsNotReusable() throws {
        for (sql, status) in [("SET @x = 1", MySQLServerStatus.autocommit), ("BEGIN", [.autocommit, .inTransaction]),
                              ("SET autocommit = 0", [])] {
            var machine = try Self.ran(sql, status: status)
            #expect(machine.isBetweenCommands)
            guard case .release(let reusable) = machine.changeUser() else { Issue.record("no release for \(sql)"); continue }
            #expect(!reusable, "\(sql): the backend carries the client's state")
            #expect(machine.pins.isEmpty)
            #expect(machine.state == .idle)
        }
    }

    @Test func changeUserReleasesACleanBackendForReuse() throws {
        // A statement with a warning keeps the backend for the client's SHOW WARNINGS.
        var machine = MySQLSessionMachine(capabilities: Self.caps, loginSchema: nil)
        _ = machine.commandReceived(Self.query("SELECT 1/0"), classification: MySQLClassifier.classify("SELECT 1/0"))
        _ = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false)
        var withWarning = ByteBuffer()
        MySQLOKPacket(status: .autocommit, warnings: 1, sessionStateChanges: []).encode(into: &withWarning, capabilities: Self.caps)
        _ = try machine.serverPacket(withWarning)
        #expect(machine.holdsBackend)
        guard case .release(let reusable) = machine.changeUser() else { Issue.record("no release"); return }
        #expect(reusable)
        // Without a backend there is nothing to release.
        var idle = MySQLSessionMachine(capabilities: Self.caps, loginSchema: nil)
        #expect(idle.isBetweenCommands)
        guard case .none = idle.changeUser() else { Issue.record("released nothing held"); return }
    }

    @Test func aCommandUnderWayIsNotBetweenCommands() {
        var machine = MySQLSessionMachine(capabilities: Self.caps, loginSchema: nil)
        _ = machine.commandReceived(Self.query("SELECT 1"), classification: MySQLClassifier.classify("SELECT 1"))
        #expect(!machine.isBetweenCommands, "borrowing")
        _ = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false)
        #expect(!machine.isBetweenCommands, "its response is awaited")
    }
}
