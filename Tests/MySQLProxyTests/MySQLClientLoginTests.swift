import ConciergeAuth
import MySQLProxy
import MySQLWire
import NIOCore
import Testing

/// Packets for the login machines' tests: built with MySQLWire's encoders, read back from the
/// machines' framed output.
enum LoginWire {
    /// The packets in `bytes` (the machines write whole, framed packets).
    static func packets(_ bytes: ByteBuffer?) -> [MySQLPacket] {
        guard var buffer = bytes else { return [] }
        var decoder = MySQLPacketDecoder(maxPayload: 1 << 24)
        var out: [MySQLPacket] = []
        while let packet = try? decoder.next(from: &buffer) { out.append(packet) }
        #expect(buffer.readableBytes == 0, "a partial packet in the machine's output")
        return out
    }

    static func packet(_ sequenceID: UInt8, _ body: (inout ByteBuffer) -> Void) -> MySQLPacket {
        var payload = ByteBuffer()
        body(&payload)
        return MySQLPacket(sequenceID: sequenceID, payload: payload)
    }

    static func packet(_ sequenceID: UInt8, bytes: [UInt8]) -> MySQLPacket {
        packet(sequenceID) { $0.writeBytes(bytes) }
    }

    /// The one packet of a `.write` action.
    static func single(_ action: some Any) -> MySQLPacket? {
        let buffer: ByteBuffer?
        switch action {
        case let action as MySQLClientLogin.Action:
            guard case .write(let bytes) = action else { return nil }
            buffer = bytes
        case let action as MySQLBackendLogin.Action:
            switch action {
            case .write(let bytes), .sendSSLRequestAndStartTLS(let bytes): buffer = bytes
            case .none, .authenticated, .failed: return nil
            }
        default:
            return nil
        }
        let packets = packets(buffer)
        return packets.count == 1 ? packets[0] : nil
    }

    static func err(_ packet: MySQLPacket?) -> MySQLErrPacket? {
        guard let packet else { return nil }
        return try? MySQLErrPacket(parsing: packet.payload)
    }

    static func moreData(_ packet: MySQLPacket?) -> MySQLAuthMoreData? {
        guard let packet else { return nil }
        return try? MySQLAuthMoreData(parsing: packet.payload)
    }

    static func authSwitch(_ packet: MySQLPacket?) -> MySQLAuthSwitchRequest? {
        guard let packet else { return nil }
        return try? MySQLAuthSwitchRequest(parsing: packet.payload)
    }

    /// 1...20: the nonce of the known-answer vectors.
    static let nonce: [UInt8] = Array(1...20)
    static let otherNonce: [UInt8] = Array("abcdefghijklmnopqrst".utf8)

    static func hex(_ string: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = string.startIndex
        while index < string.endIndex {
            let next = string.index(index, offsetBy: 2)
            bytes.append(UInt8(string[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    /// Known answers (computed independently, with Python's hashlib) for password "db-secret".
    enum Vectors {
        /// mysql_native_password, nonce 1...20.
        static let nativeDBSecret = hex("939fb85fdfb3984ef0a2b9c026bd73f2ae6c2b86")
        /// caching_sha2_password, nonce 1...20.
        static let sha2DBSecret = hex("7052aa9cff7d8efaee71674fa2fac6fdde13c3452d3a1fb55eb584f5b38512c9")
        /// mysql_native_password, nonce "abcdefghijklmnopqrst".
        static let nativeDBSecretOtherNonce = hex("cea36c6d5ac1d0d5eca7c98311bcb015911c269a")
        /// caching_sha2_password, nonce "abcdefghijklmnopqrst".
        static let sha2DBSecretOtherNonce = hex("662132fa7c5ac042ae13c93131b2dec3c10d811a9900534030ad5383fcadf4bb")
        /// caching_sha2_password for "app-secret", nonce 1...20.
        static let sha2AppSecret = hex("638e01899d95df1dea2cdce0d271dc891acb2a7d5c7aa1565151e7244724a589")
    }

    /// One key pair for every test (generation takes a tenth of a second).
    static let keys = try! MySQLRSAKeyPair.generate()
}

/// The client login machine event by event: what a client sends, what the proxy answers,
/// without a socket.
@Suite struct MySQLClientLoginTests {
    typealias Login = MySQLClientLogin

    static let users: [String: Login.User] = [
        "app": Login.User(password: "db-secret"),
        "token": Login.User(password: "token-db-secret", iamRequired: true),
        "nopass": Login.User(password: ""),
    ]

    static func environment(requireTLS: Bool = false, full: Bool = false) -> Login.Environment {
        Login.Environment(
            policy: AuthPolicy(requireTLS: requireTLS), clientLimitExceeded: full, clientLimit: 5, user: { users[$0] })
    }

    /// What a mysql/mariadb client offers (no compression asked here: see the stripping test).
    static let clientCapabilities: MySQLCapabilities = [
        .longPassword, .foundRows, .longFlag, .connectWithDB, .localFiles, .protocol41, .interactive, .transactions,
        .secureConnection, .multiStatements, .multiResults, .psMultiResults, .pluginAuth, .connectAttrs,
        .pluginAuthLenencClientData, .sessionTrack, .deprecateEOF,
    ]

    /// The proxy's profile for clients (what `start` is given).
    static let serverCapabilities: MySQLCapabilities = [
        .longPassword, .foundRows, .longFlag, .connectWithDB, .localFiles, .protocol41, .transactions, .secureConnection,
        .multiStatements, .multiResults, .pluginAuth, .connectAttrs, .pluginAuthLenencClientData, .sessionTrack,
        .deprecateEOF,
    ]

    static func login(_ method: Login.PasswordMethod = .nativePassword, tls: Bool = false, keys: MySQLRSAKeyPair? = LoginWire.keys)
        -> Login
    {
        Login(configuration: Login.Configuration(
            passwordMethod: method, tlsAvailable: tls, rsaKeyPair: keys, makeNonce: { LoginWire.otherNonce }))
    }

    static func response(
        _ sequenceID: UInt8 = 1, user: String = "app", authResponse: [UInt8], plugin: String? = "mysql_native_password",
        capabilities: MySQLCapabilities = clientCapabilities, database: String? = "orders"
    ) -> MySQLPacket {
        let response = MySQLHandshakeResponse41(
            capabilities: capabilities, maxPacketSize: 1 << 24, characterSet: 45, username: user, authResponse: authResponse,
            database: database, authPluginName: plugin,
            attributes: [MySQLConnectAttribute(name: "_client_name", value: "libmariadb"), MySQLConnectAttribute(name: "program_name", value: "mysql")])
        return LoginWire.packet(sequenceID) { response.encode(into: &$0) }
    }

    static func sslRequest(_ capabilities: MySQLCapabilities = clientCapabilities.union(.ssl)) -> MySQLPacket {
        LoginWire.packet(1) { MySQLSSLRequest(capabilities: capabilities, maxPacketSize: 1 << 24, characterSet: 45).encode(into: &$0) }
    }

    /// Starts the login and checks the greeting; with `tls`, the SSLRequest is accepted.
    @discardableResult
    static func greet(_ login: inout Login, tls: Bool = false) -> MySQLHandshakeV10? {
        let greeting = LoginWire.single(login.start(
            connectionID: 7, nonce: LoginWire.nonce, serverVersion: "8.0.36-concierge", capabilities: serverCapabilities))
        #expect(greeting?.sequenceID == 0)
        if tls {
            #expect(login.packetReceived(sslRequest(), environment: environment()) == .startTLS)
            #expect(login.isTLS)
        }
        return greeting.flatMap { try? MySQLHandshakeV10(parsing: $0.payload) }
    }

    /// The failure of `action`: its ERR, the packet's sequence id, the reason.
    static func failure(_ action: Login.Action) -> (error: MySQLErrPacket, sequenceID: UInt8, reason: Login.Failure)? {
        guard case .fail(let bytes, let error, let reason) = action else { return nil }
        let packets = LoginWire.packets(bytes)
        #expect(packets.count == 1)
        #expect(LoginWire.err(packets.first) == error)
        return packets.first.map { (error, $0.sequenceID, reason) }
    }

    static func accessDenied(_ user: String, passwordUsed: Bool = true) -> MySQLErrPacket {
        MySQLErrPacket(
            code: 1045, sqlState: "28000",
            message: "Access denied for user '\(user)'@'%' (using password: \(passwordUsed ? "YES" : "NO"))")
    }

    // MARK: The greeting

    @Test func theGreetingAnnouncesTheProxysPluginAndCapabilities() throws {
        for (method, plugin) in [(Login.PasswordMethod.nativePassword, "mysql_native_password"), (.cachingSHA2Password, "caching_sha2_password")] {
            var login = Self.login(method)
            let handshake = try #require(Self.greet(&login))
            #expect(handshake.authPluginName == plugin)
            #expect(handshake.authPluginData == LoginWire.nonce)
            #expect(handshake.connectionID == 7)
            #expect(handshake.serverVersion == "8.0.36-concierge")
            #expect(handshake.capabilities.isSuperset(of: Self.serverCapabilities))
            #expect(!handshake.capabilities.contains(.ssl))
            guard case .greeted = login.state else { Issue.record("state \(login.state)"); return }
        }
    }

    @Test func tlsIsAdvertisedOnlyWhenConfigured() throws {
        var login = Self.login(tls: true)
        #expect(try #require(Self.greet(&login)).capabilities.contains(.ssl))
        // A profile that names SSL without a certificate does not advertise it.
        var plain = Self.login()
        let greeting = LoginWire.single(plain.start(
            connectionID: 1, nonce: LoginWire.nonce, serverVersion: "8.0", capabilities: Self.serverCapabilities.union(.ssl)))
        #expect(!(try MySQLHandshakeV10(parsing: try #require(greeting).payload)).capabilities.contains(.ssl))
    }

    @Test func unsupportedFormatsAreNeverAdvertised() throws {
        var login = Self.login()
        let greeting = LoginWire.single(login.start(
            connectionID: 1, nonce: LoginWire.nonce, serverVersion: "8.0",
            capabilities: [.compress, .queryAttributes, .zstdCompression, .mariadbProgress, .protocol41]))
        let handshake = try MySQLHandshakeV10(parsing: try #require(greeting).payload)
        #expect(handshake.capabilities.isDisjoint(with: Login.neverAdvertised))
        #expect(handshake.capabilities.isSuperset(of: Login.requiredCapabilities))
        // Started once only.
        #expect(login.start(connectionID: 2, nonce: LoginWire.nonce, serverVersion: "8.0", capabilities: []) == .none)
    }

    @Test func nothingHappensBeforeTheGreeting() {
        var login = Self.login()
        #expect(login.packetReceived(Self.response(authResponse: []), environment: Self.environment()) == .none)
    }

    // MARK: mysql_native_password

    @Test func nativePasswordLogsTheClientIn() throws {
        var login = Self.login()
        Self.greet(&login)
        let action = login.packetReceived(Self.response(authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment())
        guard case .loggedIn(let result, let write) = action else { Issue.record("\(action)"); return }
        #expect(write == nil)
        #expect(result.user == "app")
        #expect(result.database == "orders")
        #expect(result.characterSet == 45)
        #expect(result.nextSequenceID == 2)
        #expect(result.method == .password(.nativePassword))
        #expect(!result.isTLS)
        #expect(result.maxPacketSize == 1 << 24)
        #expect(result.clientCapabilities == Self.clientCapabilities)
        #expect(result.capabilities == Self.clientCapabilities.intersection(Self.serverCapabilities.union(Login.requiredCapabilities)))
        #expect(!result.capabilities.contains(.interactive) && !result.capabilities.contains(.psMultiResults))
        #expect(result.attributes == [
            MySQLConnectAttribute(name: "_client_name", value: "libmariadb"), MySQLConnectAttribute(name: "program_name", value: "mysql"),
        ])
        #expect(login.negotiatedCapabilities == result.capabilities)
        guard case .loggedIn = login.state else { Issue.record("state \(login.state)"); return }
        // The machine is spent: later packets are the session's.
        #expect(login.packetReceived(LoginWire.packet(0, bytes: [3]), environment: Self.environment()) == .none)
    }

    @Test func aClientWithoutADatabaseHasNone() throws {
        var login = Self.login()
        Self.greet(&login)
        let action = login.packetReceived(
            Self.response(
                authResponse: LoginWire.Vectors.nativeDBSecret, capabilities: Self.clientCapabilities.subtracting(.connectWithDB),
                database: nil),
            environment: Self.environment())
        guard case .loggedIn(let result, _) = action else { Issue.record("\(action)"); return }
        #expect(result.database == nil)
        #expect(!result.capabilities.contains(.connectWithDB))
    }

    @Test func aWrongNativePasswordIsAccessDenied() throws {
        var login = Self.login()
        Self.greet(&login)
        var wrong = LoginWire.Vectors.nativeDBSecret
        wrong[0] ^= 1
        let failure = try #require(Self.failure(login.packetReceived(Self.response(authResponse: wrong), environment: Self.environment())))
        #expect(failure.error == Self.accessDenied("app"))
        #expect(failure.error.description == "ERROR 1045 (28000): Access denied for user 'app'@'%' (using password: YES)")
        #expect(failure.sequenceID == 2)
        #expect(failure.reason == .wrongPassword)
        #expect(failure.reason.countsAsFailedAuthentication)
        guard case .failed = login.state else { Issue.record("state \(login.state)"); return }
        #expect(login.packetReceived(Self.response(3, authResponse: []), environment: Self.environment()) == .none)
    }

    @Test func anUnknownUserGetsExactlyTheAnswerOfAWrongPassword() throws {
        func attempt(_ user: String) -> Login.Action {
            var login = Self.login()
            Self.greet(&login)
            return login.packetReceived(Self.response(user: user, authResponse: LoginWire.Vectors.sha2AppSecret.prefix(20).map { $0 }), environment: Self.environment())
        }
        guard case .fail(let wrong, _, let wrongReason) = attempt("app"), case .fail(let unknown, _, let unknownReason) = attempt("ghost")
        else { Issue.record("expected failures"); return }
        #expect(wrongReason == unknownReason)
        // Byte for byte the same, but for the user name the client gave.
        #expect(LoginWire.err(LoginWire.packets(unknown).first) == Self.accessDenied("ghost"))
        #expect(LoginWire.packets(wrong).first?.sequenceID == LoginWire.packets(unknown).first?.sequenceID)
    }

    @Test func noPasswordIsUsingPasswordNo() throws {
        for method in [Login.PasswordMethod.nativePassword, .cachingSHA2Password] {
            for user in ["app", "ghost"] {
                for empty in [[], [UInt8(0)]] {
                    var login = Self.login(method)
                    Self.greet(&login)
                    let failure = try #require(Self.failure(login.packetReceived(
                        Self.response(user: user, authResponse: empty, plugin: method.pluginName), environment: Self.environment())))
                    #expect(failure.error == Self.accessDenied(user, passwordUsed: false))
                    #expect(failure.sequenceID == 2)
                }
            }
        }
    }

    @Test func anAccountWithoutAPasswordAcceptsAnEmptyResponse() {
        var native = Self.login()
        Self.greet(&native)
        guard case .loggedIn(let result, nil) = native.packetReceived(
            Self.response(user: "nopass", authResponse: []), environment: Self.environment())
        else { Issue.record("not logged in"); return }
        #expect(result.nextSequenceID == 2)

        var sha2 = Self.login(.cachingSHA2Password)
        Self.greet(&sha2)
        let action = sha2.packetReceived(
            Self.response(user: "nopass", authResponse: [0], plugin: "caching_sha2_password"), environment: Self.environment())
        guard case .loggedIn(let sha2Result, let write) = action else { Issue.record("\(action)"); return }
        #expect(LoginWire.moreData(LoginWire.packets(write).first) == .fastAuthSuccess)
        #expect(LoginWire.packets(write).first?.sequenceID == 2)
        #expect(sha2Result.nextSequenceID == 3)
    }

    @Test func aClientWithoutPluginAuthSpeaksNativePassword() {
        let old = Self.clientCapabilities.subtracting([.pluginAuth, .connectAttrs])
        var native = Self.login()
        Self.greet(&native)
        guard case .loggedIn = native.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.nativeDBSecret, plugin: nil, capabilities: old), environment: Self.environment())
        else { Issue.record("not logged in"); return }

        // It cannot be switched to caching_sha2_password: MySQL's own refusal.
        var sha2 = Self.login(.cachingSHA2Password)
        Self.greet(&sha2)
        let failure = Self.failure(sha2.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.nativeDBSecret, plugin: nil, capabilities: old), environment: Self.environment()))
        #expect(failure?.error.code == 1251)
        #expect(failure?.error.sqlState == "08004")
        #expect(failure?.reason == .unsupportedClient("no CLIENT_PLUGIN_AUTH"))
        #expect(failure?.reason.countsAsFailedAuthentication == false)
    }

    // MARK: Switching plugins

    @Test func aClientWithAnotherPluginIsSwitchedWithAFreshNonce() throws {
        // The proxy wants caching_sha2; the client answered with native.
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        let switchPacket = try #require(LoginWire.single(login.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment())))
        #expect(switchPacket.sequenceID == 2)
        // NUL-terminated on the wire (libmysqlclient checks for 21 bytes).
        #expect(Array(switchPacket.payload.readableBytesView.suffix(21)) == LoginWire.otherNonce + [0])
        let request = try #require(LoginWire.authSwitch(switchPacket))
        #expect(request.pluginName == "caching_sha2_password")
        #expect(request.pluginData == LoginWire.otherNonce)
        guard case .switchingPlugin(_, .password(.cachingSHA2Password), LoginWire.otherNonce) = login.state else {
            Issue.record("state \(login.state)")
            return
        }
        let action = login.packetReceived(
            LoginWire.packet(3, bytes: LoginWire.Vectors.sha2DBSecretOtherNonce), environment: Self.environment())
        guard case .loggedIn(let result, let write) = action else { Issue.record("\(action)"); return }
        let fast = LoginWire.packets(write)
        #expect(fast.count == 1 && fast.first?.sequenceID == 4)
        #expect(LoginWire.moreData(fast.first) == .fastAuthSuccess)
        #expect(result.nextSequenceID == 5)
        #expect(result.method == .password(.cachingSHA2Password))
    }

    @Test func aSwitchToNativePasswordChecksTheNewNonce() throws {
        var login = Self.login(.nativePassword)
        Self.greet(&login)
        let request = LoginWire.authSwitch(LoginWire.single(login.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.sha2DBSecret, plugin: "caching_sha2_password"), environment: Self.environment())))
        #expect(request == MySQLAuthSwitchRequest(pluginName: "mysql_native_password", pluginData: LoginWire.otherNonce))
        // The scramble of the handshake's nonce no longer counts.
        var stale = login
        let failure = Self.failure(stale.packetReceived(LoginWire.packet(3, bytes: LoginWire.Vectors.nativeDBSecret), environment: Self.environment()))
        #expect(failure?.error == Self.accessDenied("app"))
        #expect(failure?.sequenceID == 4)
        let action = login.packetReceived(LoginWire.packet(3, bytes: LoginWire.Vectors.nativeDBSecretOtherNonce), environment: Self.environment())
        guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
        #expect(result.nextSequenceID == 4)
    }

    @Test func theSwitchResponseMustCarryTheNextSequenceID() {
        var login = Self.login(.nativePassword)
        Self.greet(&login)
        _ = login.packetReceived(Self.response(authResponse: [1, 2, 3], plugin: "caching_sha2_password"), environment: Self.environment())
        let failure = Self.failure(login.packetReceived(LoginWire.packet(4, bytes: LoginWire.Vectors.nativeDBSecretOtherNonce), environment: Self.environment()))
        #expect(failure?.error == MySQLErrPacket(code: 1156, sqlState: "08S01", message: "Got packets out of order"))
        #expect(failure?.reason == .protocolViolation("unexpected sequence id 4"))
    }

    // MARK: caching_sha2_password

    @Test func cachingSHA2FastPathSendsFastAuthSuccess() throws {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        let action = login.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.sha2DBSecret, plugin: "caching_sha2_password"), environment: Self.environment())
        guard case .loggedIn(let result, let write) = action else { Issue.record("\(action)"); return }
        let packets = LoginWire.packets(write)
        #expect(packets.count == 1)
        #expect(packets.first?.sequenceID == 2)
        #expect(Array(packets.first?.payload.readableBytesView ?? []) == [0x01, 0x03])
        #expect(result.nextSequenceID == 3)
    }

    @Test func cachingSHA2FullAuthenticationOverTLS() throws {
        for (password, succeeds) in [("db-secret", true), ("wrong", false)] {
            var login = Self.login(.cachingSHA2Password, tls: true)
            Self.greet(&login, tls: true)
            // A garbled scramble: full authentication.
            let more = try #require(LoginWire.single(login.packetReceived(
                Self.response(2, authResponse: [9, 9, 9], plugin: "caching_sha2_password"), environment: Self.environment())))
            #expect(more.sequenceID == 3)
            #expect(LoginWire.moreData(more) == .performFullAuthentication)
            let action = login.packetReceived(LoginWire.packet(4, bytes: Array(password.utf8) + [0]), environment: Self.environment())
            if succeeds {
                guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
                #expect(result.nextSequenceID == 5)
                #expect(result.isTLS)
                #expect(result.capabilities.contains(.ssl))
                #expect(result.method == .cachingSHA2FullAuthentication)
            } else {
                let failure = Self.failure(action)
                #expect(failure?.error == Self.accessDenied("app"))
                #expect(failure?.sequenceID == 5)
            }
        }
    }

    @Test func overTLSABytesTwoIsAPasswordNotAKeyRequest() throws {
        var login = Self.login(.cachingSHA2Password, tls: true)
        Self.greet(&login, tls: true)
        _ = login.packetReceived(Self.response(2, authResponse: [9], plugin: "caching_sha2_password"), environment: Self.environment())
        let failure = Self.failure(login.packetReceived(LoginWire.packet(4, bytes: [2]), environment: Self.environment()))
        #expect(failure?.error == Self.accessDenied("app"))
    }

    /// The RSA exchange without TLS: the client asks for the key, encrypts with it.
    func rsaExchange(user: String, password: String) throws -> (packets: [MySQLPacket], final: Login.Action) {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        // A scramble that does not match (wrong password, unknown user, cache miss).
        var scramble = MySQLAuthentication.cachingSHA2Scramble(password: password, nonce: LoginWire.nonce)
        if user == "app", password == "db-secret" { scramble[0] ^= 1 }
        let more = try #require(LoginWire.single(login.packetReceived(
            Self.response(user: user, authResponse: scramble, plugin: "caching_sha2_password"), environment: Self.environment())))
        #expect(more.sequenceID == 2)
        #expect(LoginWire.moreData(more) == .performFullAuthentication)
        let keyPacket = try #require(LoginWire.single(login.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: Self.environment())))
        #expect(keyPacket.sequenceID == 4)
        guard case .publicKey(let pem) = LoginWire.moreData(keyPacket) else { Issue.record("no public key"); return ([], .none) }
        #expect(pem == LoginWire.keys.publicKeyPEM)
        let encrypted = try MySQLAuthentication.rsaEncryptPassword(password: password, nonce: LoginWire.nonce, publicKeyPEM: pem)
        return ([more, keyPacket], login.packetReceived(LoginWire.packet(5, bytes: encrypted), environment: Self.environment()))
    }

    @Test func cachingSHA2FullAuthenticationWithTheRSAKey() throws {
        let (_, final) = try rsaExchange(user: "app", password: "db-secret")
        guard case .loggedIn(let result, nil) = final else { Issue.record("\(final)"); return }
        #expect(result.nextSequenceID == 6)
        #expect(result.method == .cachingSHA2FullAuthentication)
        #expect(!result.isTLS)
    }

    @Test func theRSAExchangeOfAnUnknownUserIsThatOfAWrongPassword() throws {
        let wrong = try rsaExchange(user: "app", password: "nope")
        let unknown = try rsaExchange(user: "ghost", password: "nope")
        // The same packets, step by step (the nonce is the test's, so the bytes are equal).
        #expect(wrong.packets.map(\.payload) == unknown.packets.map(\.payload))
        #expect(wrong.packets.map(\.sequenceID) == unknown.packets.map(\.sequenceID))
        let wrongFailure = Self.failure(wrong.final)
        let unknownFailure = Self.failure(unknown.final)
        #expect(wrongFailure?.error == Self.accessDenied("app"))
        #expect(unknownFailure?.error == Self.accessDenied("ghost"))
        #expect(wrongFailure?.sequenceID == 6 && unknownFailure?.sequenceID == 6)
        #expect(wrongFailure?.reason == .wrongPassword && unknownFailure?.reason == .wrongPassword)
    }

    @Test func anUnknownUserWithAPlausibleScrambleStillGoesThroughFullAuthentication() throws {
        // The scramble of the right password for "app", presented as "ghost": never fast-auth.
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        let more = LoginWire.single(login.packetReceived(
            Self.response(user: "ghost", authResponse: LoginWire.Vectors.sha2DBSecret, plugin: "caching_sha2_password"),
            environment: Self.environment()))
        #expect(LoginWire.moreData(more) == .performFullAuthentication)
    }

    @Test func aClientThatHasTheKeySendsTheCiphertextAtOnce() throws {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        _ = login.packetReceived(Self.response(authResponse: [1, 2], plugin: "caching_sha2_password"), environment: Self.environment())
        let encrypted = try MySQLAuthentication.rsaEncryptPassword(
            password: "db-secret", nonce: LoginWire.nonce, publicKeyPEM: LoginWire.keys.publicKeyPEM)
        guard case .loggedIn(let result, nil) = login.packetReceived(LoginWire.packet(3, bytes: encrypted), environment: Self.environment())
        else { Issue.record("not logged in"); return }
        #expect(result.nextSequenceID == 4)
    }

    @Test func aCiphertextForAnotherNonceIsRefused() throws {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        _ = login.packetReceived(Self.response(authResponse: [1, 2], plugin: "caching_sha2_password"), environment: Self.environment())
        _ = login.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: Self.environment())
        let replayed = try MySQLAuthentication.rsaEncryptPassword(
            password: "db-secret", nonce: LoginWire.otherNonce, publicKeyPEM: LoginWire.keys.publicKeyPEM)
        let failure = Self.failure(login.packetReceived(LoginWire.packet(5, bytes: replayed), environment: Self.environment()))
        #expect(failure?.error == Self.accessDenied("app"))
        #expect(failure?.sequenceID == 6)
    }

    @Test func garbageInsteadOfACiphertextIsAccessDenied() {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        _ = login.packetReceived(Self.response(authResponse: [1, 2], plugin: "caching_sha2_password"), environment: Self.environment())
        _ = login.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: Self.environment())
        #expect(Self.failure(login.packetReceived(LoginWire.packet(5, bytes: [1, 2, 3]), environment: Self.environment()))?.error
            == Self.accessDenied("app"))
    }

    @Test func withoutAKeyPairAKeyRequestIsAccessDenied() {
        var login = Self.login(.cachingSHA2Password, keys: nil)
        Self.greet(&login)
        _ = login.packetReceived(Self.response(authResponse: [1, 2], plugin: "caching_sha2_password"), environment: Self.environment())
        let failure = Self.failure(login.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: Self.environment()))
        #expect(failure?.error == Self.accessDenied("app"))
        #expect(failure?.sequenceID == 4)
    }

    @Test func fullAuthenticationChecksSequenceIDs() {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        _ = login.packetReceived(Self.response(authResponse: [1, 2], plugin: "caching_sha2_password"), environment: Self.environment())
        var skipped = login
        #expect(Self.failure(skipped.packetReceived(LoginWire.packet(5, bytes: [0x02]), environment: Self.environment()))?.error.code == 1156)
        _ = login.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: Self.environment())
        #expect(Self.failure(login.packetReceived(LoginWire.packet(3, bytes: [1]), environment: Self.environment()))?.error.code == 1156)
    }

    // MARK: TLS

    @Test func afterTheSSLRequestTheResponseComesWithSequenceTwo() {
        var login = Self.login(tls: true)
        Self.greet(&login, tls: true)
        guard case .tlsStarted = login.state else { Issue.record("state \(login.state)"); return }
        var wrongID = login
        #expect(Self.failure(wrongID.packetReceived(Self.response(1, authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment()))?.error.code == 1156)
        guard case .loggedIn(let result, nil) = login.packetReceived(
            Self.response(2, authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment())
        else { Issue.record("not logged in"); return }
        #expect(result.nextSequenceID == 3)
        #expect(result.isTLS)
    }

    @Test func bytesAfterTheSSLRequestAreRefused() {
        var login = Self.login(tls: true)
        Self.greet(&login)
        let failure = Self.failure(login.packetReceived(Self.sslRequest(), trailingBytes: 40, environment: Self.environment()))
        #expect(failure?.error == MySQLErrPacket(code: 1043, sqlState: "08S01", message: "Bad handshake"))
        #expect(failure?.sequenceID == 2)
        #expect(failure?.reason == .protocolViolation("received unencrypted data after SSL request"))
        #expect(!login.isTLS)
    }

    @Test func anSSLRequestWithoutACertificateIsABadHandshake() {
        var login = Self.login()
        Self.greet(&login)
        #expect(Self.failure(login.packetReceived(Self.sslRequest(), environment: Self.environment()))?.reason
            == .protocolViolation("SSL request, but the proxy did not offer TLS"))
    }

    @Test func aSecondSSLRequestIsABadHandshake() {
        var login = Self.login(tls: true)
        Self.greet(&login, tls: true)
        var second = Self.sslRequest()
        second.sequenceID = 2
        #expect(Self.failure(login.packetReceived(second, environment: Self.environment()))?.error.code == 1043)
    }

    @Test func tlsFailureEndsTheLogin() {
        var login = Self.login(tls: true)
        Self.greet(&login, tls: true)
        login.tlsFailed()
        guard case .failed = login.state else { Issue.record("state \(login.state)"); return }
        #expect(login.packetReceived(Self.response(2, authResponse: []), environment: Self.environment()) == .none)
    }

    // MARK: Policy

    @Test func requireTLSRefusesAPlaintextClient() {
        var login = Self.login(tls: true)
        Self.greet(&login)
        let failure = Self.failure(login.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment(requireTLS: true)))
        #expect(failure?.error == MySQLErrPacket(
            code: 3159, sqlState: "HY000",
            message: "Connections using insecure transport are prohibited while --require_secure_transport=ON."))
        #expect(failure?.reason == .tlsRequired)
        #expect(failure?.sequenceID == 2)

        var secure = Self.login(tls: true)
        Self.greet(&secure, tls: true)
        guard case .loggedIn = secure.packetReceived(
            Self.response(2, authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment(requireTLS: true))
        else { Issue.record("not logged in"); return }
    }

    @Test func theClientLimitIsError1040() {
        var login = Self.login()
        Self.greet(&login)
        let failure = Self.failure(login.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment(full: true)))
        #expect(failure?.error.description == "ERROR 1040 (HY000): Number simultaneous connections exceeded (5)")
        #expect(failure?.reason == .tooManyClients)
        #expect(failure?.reason.countsAsFailedAuthentication == false)
        // require_tls is checked first (RDS Proxy's order).
        var plain = Self.login()
        Self.greet(&plain)
        #expect(Self.failure(plain.packetReceived(
            Self.response(authResponse: []), environment: Self.environment(requireTLS: true, full: true)))?.reason == .tlsRequired)
    }

    @Test func theEnvironmentIsReadOnlyForTheHandshakeResponse() {
        var login = Self.login(.cachingSHA2Password)
        Self.greet(&login)
        var reads = 0
        func environment() -> Login.Environment {
            reads += 1
            return Self.environment()
        }
        _ = login.packetReceived(Self.response(authResponse: [1], plugin: "caching_sha2_password"), environment: environment())
        _ = login.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: environment())
        #expect(reads == 1)
    }

    // MARK: IAM

    @Test func anIAMUserIsSwitchedToClearPasswordAndItsTokenChecked() throws {
        for allowed in [true, false] {
            var login = Self.login(tls: true)
            Self.greet(&login, tls: true)
            let switchPacket = try #require(LoginWire.single(login.packetReceived(
                Self.response(2, user: "token", authResponse: [1, 2, 3]), environment: Self.environment())))
            #expect(switchPacket.sequenceID == 3)
            #expect(LoginWire.authSwitch(switchPacket)?.pluginName == "mysql_clear_password")
            let token = "proxy.example:3306/?Action=connect&DBUser=token&X-Amz-Signature=abc"
            #expect(login.packetReceived(LoginWire.packet(4, bytes: Array(token.utf8) + [0]), environment: Self.environment())
                == .verifyIAMToken(token))
            #expect(login.user == "token")
            guard case .checkingIAMToken(_, replyID: 5) = login.state else { Issue.record("state \(login.state)"); return }
            let action = login.iamResult(ok: allowed, reason: "signature mismatch")
            if allowed {
                guard case .loggedIn(let result, nil) = action else { Issue.record("\(action)"); return }
                #expect(result.user == "token")
                #expect(result.method == .iamToken)
                #expect(result.nextSequenceID == 5)
            } else {
                let failure = Self.failure(action)
                #expect(failure?.error == Self.accessDenied("token"))
                #expect(failure?.reason == .iamTokenRefused(reason: "signature mismatch"))
                #expect(failure?.sequenceID == 5)
            }
            #expect(login.iamResult(ok: true) == .none)
        }
    }

    @Test func aClientThatAsksForClearPasswordSendsItsTokenAtOnce() {
        var login = Self.login(tls: true)
        Self.greet(&login, tls: true)
        #expect(login.packetReceived(
            Self.response(2, user: "app", authResponse: Array("tok".utf8) + [0], plugin: "mysql_clear_password"),
            environment: Self.environment()) == .verifyIAMToken("tok"))
        guard case .loggedIn(let result, nil) = login.iamResult(ok: true) else { Issue.record("not logged in"); return }
        #expect(result.nextSequenceID == 3)
    }

    @Test func iamIsRefusedWithoutTLS() {
        for (user, plugin) in [("token", "mysql_native_password"), ("app", "mysql_clear_password")] {
            var login = Self.login(tls: true)
            Self.greet(&login)
            let failure = Self.failure(login.packetReceived(
                Self.response(user: user, authResponse: [1], plugin: plugin), environment: Self.environment()))
            #expect(failure?.error == MySQLErrPacket(
                code: 3159, sqlState: "HY000", message: "IAM authentication is allowed only with SSL connections."))
            #expect(failure?.reason == .iamWithoutTLS)
        }
    }

    @Test func aPacketWhileTheTokenIsCheckedIsAViolation() {
        var login = Self.login(tls: true)
        Self.greet(&login, tls: true)
        _ = login.packetReceived(
            Self.response(2, authResponse: Array("tok".utf8), plugin: "mysql_clear_password"), environment: Self.environment())
        let failure = Self.failure(login.packetReceived(LoginWire.packet(3, bytes: [3]), environment: Self.environment()))
        #expect(failure?.error.code == 1043)
        #expect(failure?.sequenceID == 3)
        #expect(login.iamResult(ok: true) == .none)
    }

    // MARK: Malformed input

    @Test func aMalformedResponseIsABadHandshake() {
        var login = Self.login()
        Self.greet(&login)
        let failure = Self.failure(login.packetReceived(LoginWire.packet(1, bytes: [0x0F, 0xA2]), environment: Self.environment()))
        #expect(failure?.error == MySQLErrPacket(code: 1043, sqlState: "08S01", message: "Bad handshake"))
        #expect(failure?.sequenceID == 2)
        if case .protocolViolation = failure?.reason {} else { Issue.record("reason \(String(describing: failure?.reason))") }
    }

    @Test func theFirstResponseMustCarrySequenceOne() {
        var login = Self.login()
        Self.greet(&login)
        let failure = Self.failure(login.packetReceived(
            Self.response(0, authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment()))
        #expect(failure?.error.code == 1156)
        #expect(failure?.sequenceID == 1)
    }
}

extension MySQLClientLoginTests {
    @Test func aPre41ClientIsRefused() {
        var login = Self.login()
        Self.greet(&login)
        // A 3.23/4.0 response: two bytes of capabilities without CLIENT_PROTOCOL_41, three of max
        // packet size, the user.
        let failure = Self.failure(login.packetReceived(
            LoginWire.packet(1, bytes: [0x85, 0x80, 0, 0, 0x10] + Array("app".utf8) + [0]), environment: Self.environment()))
        #expect(failure?.error.code == 1043)
        #expect(failure?.reason == .unsupportedClient("no CLIENT_PROTOCOL_41"))
    }
}

extension MySQLClientLoginTests {
    /// The authentication timeout's ERR is sent unasked: it carries the id of the answer the
    /// client waits for at that step (it was 1 whatever the step: found by test_mysql_lifecycle.py,
    /// where a client stalled after an AuthSwitchRequest got an ERR with sequence id 1).
    @Test func theReplySequenceIDFollowsTheExchange() throws {
        var login = Self.login()
        Self.greet(&login)
        #expect(login.replySequenceID == 2, "the answer to the HandshakeResponse41")

        var tls = Self.login(tls: true)
        Self.greet(&tls, tls: true)
        #expect(tls.replySequenceID == 3, "the answer to the HandshakeResponse41 after the SSLRequest")

        // A client of the other plugin is switched (AuthSwitchRequest, id 2): its answer is 3.
        var switched = Self.login()
        Self.greet(&switched)
        let switchRequest = LoginWire.single(switched.packetReceived(
            Self.response(authResponse: Array(repeating: 1, count: 32), plugin: "caching_sha2_password"),
            environment: Self.environment()))
        #expect(switchRequest?.sequenceID == 2)
        #expect(LoginWire.authSwitch(switchRequest) != nil)
        #expect(switched.replySequenceID == 4)

        // caching_sha2 without TLS: full authentication (id 2), the key request (3), the key (4).
        var sha2 = Self.login(.cachingSHA2Password)
        Self.greet(&sha2)
        let more = LoginWire.single(sha2.packetReceived(
            Self.response(authResponse: Array(repeating: 1, count: 32), plugin: "caching_sha2_password"),
            environment: Self.environment()))
        #expect(more?.sequenceID == 2)
        #expect(sha2.replySequenceID == 4)
        let key = LoginWire.single(sha2.packetReceived(LoginWire.packet(3, bytes: [0x02]), environment: Self.environment()))
        #expect(key?.sequenceID == 4)
        #expect(sha2.replySequenceID == 6)

        let done = login.packetReceived(
            Self.response(authResponse: LoginWire.Vectors.nativeDBSecret), environment: Self.environment())
        guard case .loggedIn = done else { Issue.record("expected a login, got \(done)"); return }
        #expect(login.replySequenceID == 0)
    }
}
