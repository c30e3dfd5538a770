import ConciergeAuth
import ConciergeConfig
import NIOCore
import PostgresProxy
import PostgresWire
import ProxyCore
import Testing

/// The login machine event by event: what a client sends, what the proxy answers, without a
/// socket.
@Suite struct ClientLoginTests {
    static let users = PostgresUsers(
        credentials: [
            DatabaseCredential(username: "app", password: "app-secret"),
            DatabaseCredential(username: "legacy", password: "legacy-secret"),
            DatabaseCredential(username: "token", password: "db-secret"),
        ],
        auth: [
            AuthConfiguration(secretARN: "env:A", secret: .env(name: "A")),
            AuthConfiguration(secretARN: "env:B", secret: .env(name: "B"), clientPasswordAuthType: .postgresMD5),
            AuthConfiguration(secretARN: "env:C", secret: .env(name: "C"), iamAuth: .required),
        ])

    static func environment(requireTLS: Bool = false, full: Bool = false) -> ClientLogin.Environment {
        ClientLogin.Environment(
            policy: AuthPolicy(requireTLS: requireTLS), clientLimitExceeded: full, users: users, md5Salt: { [1, 2, 3, 4] })
    }

    static func startup(_ parameters: [(String, String)], version: UInt32 = 0x0003_0000) -> StartupPacket {
        .startup(protocolVersion: version, parameters: parameters.map { StartupParameter(name: $0.0, value: $0.1) })
    }

    /// The authentication requests in `bytes`.
    static func requests(_ bytes: ByteBuffer) throws -> [AuthenticationRequest] {
        var buffer = bytes
        var out: [AuthenticationRequest] = []
        while let frame = try PGFraming.nextFrame(from: &buffer, maxMessageSize: 1 << 20) {
            if frame.type == PGMessageType.Backend.authentication { out.append(try PGParse.authentication(frame.body)) }
        }
        return out
    }

    static func frame(_ encode: (inout ByteBuffer) -> Void) throws -> PGFrame {
        var buffer = ByteBuffer()
        encode(&buffer)
        return try #require(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 1 << 20))
    }

    func begin(_ login: inout ClientLogin, user: String, tls: Bool = false, environment: ClientLogin.Environment = environment())
        throws -> [AuthenticationRequest]
    {
        if tls {
            guard case .answerEncryptionRequest(acceptTLS: true) = login.packetReceived(
                .sslRequest, trailingBytes: 0, tlsAvailable: true, environment: environment)
            else { Issue.record("TLS refused"); return [] }
        }
        let action = login.packetReceived(
            Self.startup([("user", user), ("database", "orders")]), trailingBytes: 0, tlsAvailable: true,
            environment: environment)
        guard case .write(let bytes) = action else {
            Issue.record("expected an authentication request, got \(action)")
            return []
        }
        return try Self.requests(bytes)
    }

    // MARK: Before the startup packet

    @Test func anSSLRequestIsAcceptedOnlyWithACertificate() {
        var login = ClientLogin()
        guard case .answerEncryptionRequest(acceptTLS: false) = login.packetReceived(
            .sslRequest, trailingBytes: 0, tlsAvailable: false, environment: Self.environment())
        else { Issue.record("expected N"); return }
        #expect(!login.isTLS)
        guard case .answerEncryptionRequest(acceptTLS: true) = login.packetReceived(
            .sslRequest, trailingBytes: 0, tlsAvailable: true, environment: Self.environment())
        else { Issue.record("expected S"); return }
        #expect(login.isTLS)
    }

    @Test func gssEncryptionIsAlwaysRefused() {
        var login = ClientLogin()
        guard case .answerEncryptionRequest(acceptTLS: false) = login.packetReceived(
            .gssEncRequest, trailingBytes: 0, tlsAvailable: true, environment: Self.environment())
        else { Issue.record("expected N"); return }
    }

    @Test func bytesAfterAnSSLRequestAreAProtocolViolation() {
        var login = ClientLogin()
        guard case .fail(let fields, nil) = login.packetReceived(
            .sslRequest, trailingBytes: 8, tlsAvailable: true, environment: Self.environment())
        else { Issue.record("expected a failure"); return }
        #expect(fields.code == "08P01" && fields.message == "received unencrypted data after SSL request")
    }

    @Test func aSecondSSLRequestInsideTLSIsRefused() {
        var login = ClientLogin()
        _ = login.packetReceived(.sslRequest, trailingBytes: 0, tlsAvailable: true, environment: Self.environment())
        guard case .fail(let fields, nil) = login.packetReceived(
            .sslRequest, trailingBytes: 0, tlsAvailable: true, environment: Self.environment())
        else { Issue.record("expected a failure"); return }
        #expect(fields.message == "SSL request received on an encrypted connection")
    }

    @Test func aCancelRequestIsRoutedAndEndsTheLogin() {
        var login = ClientLogin()
        guard case .cancel(processID: 42, secretKey: 7) = login.packetReceived(
            .cancel(processID: 42, secretKey: 7), trailingBytes: 0, tlsAvailable: false, environment: Self.environment())
        else { Issue.record("expected the cancel"); return }
        guard case .done = login.state else { Issue.record("expected done"); return }
    }

    // MARK: The startup packet

    @Test func theStartupPacketsParametersAndOptionsAreKept() throws {
        var login = ClientLogin()
        let action = login.packetReceived(
            Self.startup([
                ("user", "app"), ("application_name", "psql"), ("options", "-c search_path=a,b --DateStyle=ISO"),
                ("DateStyle", "SQL"),
            ]),
            trailingBytes: 0, tlsAvailable: false, environment: Self.environment())
        guard case .write = action else { Issue.record("expected a request"); return }
        #expect(login.user == "app")
        #expect(login.database == "app")  // defaults to the user
        #expect(login.parameters == ["application_name": "psql", "search_path": "a,b", "datestyle": "SQL"])
    }

    @Test func startupErrorsUsePostgreSQLsCodes() {
        var login = ClientLogin()
        guard case .fail(let version, nil) = login.packetReceived(
            Self.startup([("user", "app")], version: 0x0002_0000), trailingBytes: 0, tlsAvailable: false,
            environment: Self.environment())
        else { Issue.record("expected a failure"); return }
        #expect(version.code == "0A000")
        login = ClientLogin()
        guard case .fail(let noUser, nil) = login.packetReceived(
            Self.startup([("database", "orders")]), trailingBytes: 0, tlsAvailable: false, environment: Self.environment())
        else { Issue.record("expected a failure"); return }
        #expect(noUser.code == "28000" && noUser.message == "no PostgreSQL user name specified in startup packet")
        login = ClientLogin()
        guard case .fail(let replication, nil) = login.packetReceived(
            Self.startup([("user", "app"), ("replication", "database")]), trailingBytes: 0, tlsAvailable: false,
            environment: Self.environment())
        else { Issue.record("expected a failure"); return }
        #expect(replication.code == "0A000")
        login = ClientLogin()
        guard case .fail(let option, nil) = login.packetReceived(
            Self.startup([("user", "app"), ("options", "-x")]), trailingBytes: 0, tlsAvailable: false,
            environment: Self.environment())
        else { Issue.record("expected a failure"); return }
        #expect(option.message == "unsupported startup option: -x")
    }

    @Test func aNewerMinorVersionOrProtocolOptionsAreNegotiatedDown() throws {
        var login = ClientLogin()
        guard case .write(let bytes) = login.packetReceived(
            Self.startup([("user", "app"), ("_pq_.compression", "on")], version: 0x0003_0002), trailingBytes: 0,
            tlsAvailable: false, environment: Self.environment())
        else { Issue.record("expected a request"); return }
        var buffer = bytes
        let first = try #require(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 1 << 20))
        #expect(first.type == PGMessageType.Backend.negotiateProtocolVersion)
        let negotiated = try PGParse.negotiateProtocolVersion(first.body)
        #expect(negotiated.newestMinorVersion == 0 && negotiated.unsupportedOptions == ["_pq_.compression"])
        #expect(try Self.requests(buffer) == [.sasl(mechanisms: ["SCRAM-SHA-256"])])
    }

    @Test func thePolicyRefusesPlaintextAndAFullProxy() {
        var login = ClientLogin()
        guard case .fail(let tls, .tlsRequired) = login.packetReceived(
            Self.startup([("user", "app")]), trailingBytes: 0, tlsAvailable: true,
            environment: Self.environment(requireTLS: true))
        else { Issue.record("expected the TLS refusal"); return }
        #expect(tls.code == "28000")
        login = ClientLogin()
        guard case .fail(let full, nil) = login.packetReceived(
            Self.startup([("user", "app")]), trailingBytes: 0, tlsAvailable: true, environment: Self.environment(full: true))
        else { Issue.record("expected the client-limit refusal"); return }
        #expect(full.code == "53300" && full.severity == "FATAL")
    }

    // MARK: Passwords

    @Test func scramWithTheRightPasswordAuthenticates() throws {
        var login = ClientLogin()
        #expect(try begin(&login, user: "app") == [.sasl(mechanisms: ["SCRAM-SHA-256"])])
        var client = SCRAMClientSession(username: "app", password: "app-secret")
        let first = client.clientFirstMessage()
        guard case .write(let challenge) = login.messageReceived(
            try Self.frame { PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: first, into: &$0) })
        else { Issue.record("expected the server-first message"); return }
        guard case .saslContinue(let serverFirst)? = try Self.requests(challenge).first else {
            Issue.record("expected SASLContinue"); return
        }
        let final = try client.receiveServerFirst(serverFirst)
        guard case .authenticated(let bytes) = login.messageReceived(
            try Self.frame { PGEncode.saslResponse(data: final, into: &$0) })
        else { Issue.record("expected success"); return }
        let answers = try Self.requests(bytes)
        #expect(answers.count == 2 && answers.last == .ok)
        guard case .saslFinal(let serverFinal) = answers[0] else { Issue.record("expected SASLFinal"); return }
        try client.verifyServerFinal(serverFinal)
        #expect(login.userEntry?.credential.username == "app")
        login.forgetCredentials()
        #expect(login.userEntry == nil)
    }

    @Test func scramWithAWrongPasswordOrAnUnknownUserFailsAlike() throws {
        for (user, password) in [("app", "wrong"), ("nobody", "app-secret")] {
            var login = ClientLogin()
            #expect(try begin(&login, user: user) == [.sasl(mechanisms: ["SCRAM-SHA-256"])])
            var client = SCRAMClientSession(username: user, password: password)
            let first = client.clientFirstMessage()
            guard case .write(let challenge) = login.messageReceived(
                try Self.frame { PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: first, into: &$0) }),
                case .saslContinue(let serverFirst)? = try Self.requests(challenge).first
            else { Issue.record("expected a challenge"); return }
            let final = try client.receiveServerFirst(serverFirst)
            guard case .fail(let fields, .wrongPassword) = login.messageReceived(
                try Self.frame { PGEncode.saslResponse(data: final, into: &$0) })
            else { Issue.record("expected a failure"); return }
            #expect(fields.code == "28P01" && fields.message == "password authentication failed for user \"\(user)\"")
        }
    }

    @Test func anotherSASLMechanismIsAProtocolViolation() throws {
        var login = ClientLogin()
        _ = try begin(&login, user: "app")
        guard case .fail(let fields, nil) = login.messageReceived(
            try Self.frame { PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256-PLUS", data: [1], into: &$0) })
        else { Issue.record("expected a failure"); return }
        #expect(fields.message == "client selected an invalid SASL authentication mechanism")
    }

    @Test func aMessageOtherThanAPasswordIsAProtocolViolation() throws {
        var login = ClientLogin()
        _ = try begin(&login, user: "app")
        guard case .fail(let fields, nil) = login.messageReceived(PGFrame(type: PGMessageType.Frontend.query, body: ByteBuffer()))
        else { Issue.record("expected a failure"); return }
        #expect(fields.message == "expected password response, got message type \(PGMessageType.Frontend.query)")
    }

    @Test func md5UsersGetTheirChallenge() throws {
        var login = ClientLogin()
        #expect(try begin(&login, user: "legacy") == [.md5Password(salt: [1, 2, 3, 4])])
        let right = PGMD5.hashedPassword(user: "legacy", password: "legacy-secret", salt: [1, 2, 3, 4])
        guard case .authenticated(let bytes) = login.messageReceived(try Self.frame { PGEncode.passwordMessage(right, into: &$0) })
        else { Issue.record("expected success"); return }
        #expect(try Self.requests(bytes) == [.ok])

        login = ClientLogin()
        _ = try begin(&login, user: "legacy")
        let wrong = PGMD5.hashedPassword(user: "legacy", password: "guess", salt: [1, 2, 3, 4])
        guard case .fail(_, .wrongPassword) = login.messageReceived(try Self.frame { PGEncode.passwordMessage(wrong, into: &$0) })
        else { Issue.record("expected a failure"); return }
    }

    // MARK: IAM

    @Test func anIAMUserSendsATokenOverTLSWhichTheRuntimeChecks() throws {
        var login = ClientLogin()
        #expect(try begin(&login, user: "token", tls: true) == [.cleartextPassword])
        guard case .checkIAMToken("the-token") = login.messageReceived(
            try Self.frame { PGEncode.passwordMessage("the-token", into: &$0) })
        else { Issue.record("expected a token check"); return }
        guard case .authenticated(let bytes) = login.iamTokenChecked(allowed: true, reason: "") else {
            Issue.record("expected success"); return
        }
        #expect(try Self.requests(bytes) == [.ok])
    }

    @Test func aRefusedTokenFailsWithRDSProxysWordingAndTheReasonForTheLogOnly() throws {
        var login = ClientLogin()
        _ = try begin(&login, user: "token", tls: true)
        _ = login.messageReceived(try Self.frame { PGEncode.passwordMessage("the-token", into: &$0) })
        guard case .fail(let fields, .iamTokenRefused(reason: "expired")) = login.iamTokenChecked(allowed: false, reason: "expired")
        else { Issue.record("expected a failure"); return }
        #expect(fields.message.hasPrefix("IAM authentication failed for user token."))
        #expect(!fields.message.contains("expired"))
    }

    @Test func anIAMUserWithoutTLSIsRefusedBeforeSendingAToken() {
        var login = ClientLogin()
        guard case .fail(let fields, .iamWithoutTLS) = login.packetReceived(
            Self.startup([("user", "token")]), trailingBytes: 0, tlsAvailable: true, environment: Self.environment())
        else { Issue.record("expected the refusal"); return }
        #expect(fields.message == "IAM authentication is allowed only with SSL connections.")
    }

    @Test func optionsAreParsedAsPostgreSQLDoes() throws {
        let parsed = try ClientLogin.parseOptions(#"-c search_path=a,b --statement-timeout=5s -capplication_name=x\ y"#)
        #expect(parsed.map { "\($0.0)=\($0.1)" } == ["search_path=a,b", "statement_timeout=5s", "application_name=x y"])
    }
}
