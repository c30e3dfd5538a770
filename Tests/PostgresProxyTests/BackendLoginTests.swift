import NIOCore
import PostgresProxy
import PostgresWire
import Testing

@Suite struct BackendLoginTests {
    @Test func trustLoginSendsStartupAndSucceedsAtReadyForQuery() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(applicationName: "probe"))
        let startup = machine.connected()
        guard case .startup(_, let parameters)? = Wire.startup(startup) else {
            Issue.record("no startup packet: \(startup)")
            return
        }
        #expect(parameters == [
            StartupParameter(name: "user", value: "alice"), StartupParameter(name: "database", value: "app"),
            StartupParameter(name: "application_name", value: "probe"),
        ])
        #expect(machine.state.name == "authenticating")
        #expect(try machine.messageReceived(Wire.authenticationOk) == .none)
        #expect(machine.state.name == "startingUp")
        #expect(try machine.messageReceived(Wire.parameter("TimeZone", "UTC")) == .none)
        #expect(try machine.messageReceived(Wire.parameter("DateStyle", "ISO, MDY")) == .none)
        #expect(try machine.messageReceived(Wire.keyData(42, 7)) == .registerProcessID(42, secretKey: 7))
        #expect(try machine.messageReceived(Wire.frame { PGEncode.noticeResponse(.notice(message: "hi"), into: &$0) }) == .none)
        #expect(try machine.messageReceived(Wire.ready()) == .succeedSetup)
        #expect(machine.state.name == "idle")
        #expect(machine.loginParameters == [
            StartupParameter(name: "DateStyle", value: "ISO, MDY"), StartupParameter(name: "TimeZone", value: "UTC"),
        ])
        #expect(machine.processID == 42 && machine.secretKey == 7)
        #expect(machine.maxConnections == nil)
    }

    @Test func cleartextPasswordIsSent() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(password: "pw1"))
        _ = machine.connected()
        let answer = try machine.messageReceived(Wire.authentication(3))
        let messages = Wire.messages(answer)
        #expect(messages.count == 1)
        #expect(messages.first?.type == PGMessageType.Frontend.password)
        #expect(try PGFrontend.PasswordMessage(messages[0].body).string == "pw1")
        #expect(machine.state.name == "authenticating")
    }

    @Test func md5PasswordIsHashedWithTheSalt() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(password: "pw1"))
        _ = machine.connected()
        let salt: [UInt8] = [1, 2, 3, 4]
        let messages = Wire.messages(try machine.messageReceived(Wire.authentication(5, salt)))
        #expect(messages.count == 1)
        #expect(try PGFrontend.PasswordMessage(messages[0].body).string == PGMD5.hashedPassword(user: "alice", password: "pw1", salt: salt))
    }

    @Test func scramExchangeAgainstARealServerSession() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(password: "pencil"))
        _ = machine.connected()
        var server = SCRAMServerSession(verifier: SCRAMVerifier.derive(password: "pencil", iterations: 4096))
        let initial = Wire.messages(try machine.messageReceived(Wire.frame { PGEncode.authenticationSASL(into: &$0) }))
        #expect(initial.count == 1)
        let response = try PGFrontend.SASLInitialResponse(initial[0].body)
        #expect(String(buffer: response.mechanism) == "SCRAM-SHA-256")
        let serverFirst = try server.receiveClientFirst(Array(try #require(response.data).readableBytesView))
        let final = Wire.messages(
            try machine.messageReceived(Wire.frame { PGEncode.authenticationSASLContinue(data: serverFirst, into: &$0) }))
        #expect(final.count == 1)
        let serverFinal = try server.receiveClientFinal(Array(PGFrontend.SASLResponse(final[0].body).data.readableBytesView))
        #expect(server.isAuthenticated)
        #expect(
            try machine.messageReceived(Wire.frame { PGEncode.authenticationSASLFinal(data: serverFinal, into: &$0) }) == .none)
        #expect(try machine.messageReceived(Wire.authenticationOk) == .none)
        #expect(machine.state.name == "startingUp")
    }

    @Test func scramWithAForgedServerSignatureThrows() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(password: "pencil"))
        _ = machine.connected()
        // The server knows another password: its signature cannot match.
        var server = SCRAMServerSession(verifier: SCRAMVerifier.derive(password: "other", iterations: 4096))
        let initial = Wire.messages(try machine.messageReceived(Wire.frame { PGEncode.authenticationSASL(into: &$0) }))
        let serverFirst = try server.receiveClientFirst(Array(try #require(PGFrontend.SASLInitialResponse(initial[0].body).data).readableBytesView))
        _ = try machine.messageReceived(Wire.frame { PGEncode.authenticationSASLContinue(data: serverFirst, into: &$0) })
        let forged = Array("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".utf8)
        #expect(throws: (any Error).self) {
            try machine.messageReceived(Wire.frame { PGEncode.authenticationSASLFinal(data: forged, into: &$0) })
        }
    }

    @Test func saslWithoutScramSha256OrOutOfTurnThrows() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration())
        _ = machine.connected()
        #expect(throws: BackendError.protocolViolation("unexpected SASL continue")) {
            try machine.messageReceived(Wire.frame { PGEncode.authenticationSASLContinue(data: [1], into: &$0) })
        }
        #expect(throws: BackendError.self) {
            try machine.messageReceived(Wire.frame { PGEncode.authenticationSASL(mechanisms: ["SCRAM-SHA-256-PLUS"], into: &$0) })
        }
    }

    @Test func unsupportedAuthenticationMethodFailsSetup() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration())
        _ = machine.connected()
        let action = try machine.messageReceived(Wire.authentication(7))  // GSS
        guard case .failSetupAndClose(.protocolViolation(let reason)) = action else {
            Issue.record("unexpected \(action)")
            return
        }
        #expect(reason.hasPrefix("the database asks for an authentication method the proxy does not support"))
        #expect(machine.state.name == "closed")
        #expect(machine.channelInactive() == .none)
    }

    @Test func errorResponseDuringLoginFailsSetupWithItsFields() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration())
        _ = machine.connected()
        let fields = PGErrorFields.fatal(code: "28P01", message: "password authentication failed for user \"alice\"")
        #expect(try machine.messageReceived(Wire.error(fields)) == .failSetupAndClose(.server(fields)))
        #expect(machine.state.name == "closed")
        // The setup was answered already: the close tells nobody.
        #expect(machine.channelInactive() == .none)
    }

    @Test func tlsRefusedFailsWhateverTheMode() throws {
        for mode in ["require", "prefer"] {
            var machine = BackendStateMachine(configuration: Wire.configuration(requestTLS: true, tlsMode: mode))
            var expected = ByteBuffer()
            PGEncode.sslRequest(into: &expected)
            #expect(machine.connected() == .write(expected))
            #expect(machine.state.name == "negotiatingTLS")
            #expect(
                machine.tlsAnswer(UInt8(ascii: "N"), trailingBytes: 0)
                    == .failSetupAndClose(.connection("the database does not accept TLS (target_group.tls.mode is \(mode))")))
            #expect(machine.state.name == "closed")
        }
    }

    @Test func tlsAcceptedStartsTLSThenSendsStartup() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(requestTLS: true, tlsMode: "require"))
        _ = machine.connected()
        #expect(machine.tlsAnswer(UInt8(ascii: "S"), trailingBytes: 0) == .startTLS)
        #expect(machine.state.name == "negotiatingTLS")
        let startup = machine.tlsHandlerAdded()
        guard case .startup? = Wire.startup(startup) else {
            Issue.record("no startup after TLS: \(startup)")
            return
        }
        #expect(machine.state.name == "authenticating")
    }

    @Test func bytesAfterTheTLSAnswerOrAHandlerFailureFailSetup() {
        var machine = BackendStateMachine(configuration: Wire.configuration(requestTLS: true, tlsMode: "require"))
        _ = machine.connected()
        #expect(
            machine.tlsAnswer(UInt8(ascii: "S"), trailingBytes: 3)
                == .failSetupAndClose(.protocolViolation("the database sent unencrypted data after its TLS answer")))
        var other = BackendStateMachine(configuration: Wire.configuration(requestTLS: true, tlsMode: "require"))
        _ = other.connected()
        _ = other.tlsAnswer(UInt8(ascii: "S"), trailingBytes: 0)
        #expect(other.tlsHandlerFailed("bad") == .failSetupAndClose(.connection("TLS with the database could not start: bad")))
    }

    @Test func aTLSErrorNamesTheModeWhenTheConnectionThenCloses() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(requestTLS: true, tlsMode: "verify-full"))
        _ = machine.connected()
        _ = machine.tlsAnswer(UInt8(ascii: "S"), trailingBytes: 0)
        _ = machine.tlsHandlerAdded()
        #expect(machine.errorCaught(tlsFailure: "certificate expired") == .close)
        #expect(
            machine.channelInactive()
                == .failSetup(.connection("TLS with the database failed (target_group.tls.mode verify-full): certificate expired")))
    }

    @Test func closedDuringLoginFailsSetup() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration())
        _ = machine.connected()
        _ = try machine.messageReceived(Wire.authenticationOk)
        #expect(machine.errorCaught(tlsFailure: nil) == .close)
        #expect(machine.channelInactive() == .failSetup(.connection("the database closed the connection during login")))
        #expect(machine.state.name == "closed")
    }

    @Test func connectFailureAndLoginTimeout() throws {
        var refused = BackendStateMachine(configuration: Wire.configuration())
        #expect(refused.connectFailed("db:5432: refused") == .failSetup(.connection("db:5432: refused")))
        #expect(refused.loginTimedOut("late") == .none)

        var slow = BackendStateMachine(configuration: Wire.configuration())
        _ = slow.connected()
        #expect(slow.loginTimedOut("no answer") == .failSetupAndClose(.connection("no answer")))
        #expect(slow.channelInactive() == .none)

        var ready = try Wire.idleMachine()
        #expect(ready.loginTimedOut("no answer") == .none)
        #expect(ready.state.name == "idle")
    }

    @Test func setupQueriesReadMaxConnectionsAndTheBaseline() throws {
        var machine = BackendStateMachine(
            configuration: Wire.configuration(initQuery: "SET search_path = app", readMaxConnections: true))
        _ = machine.connected()
        _ = try machine.messageReceived(Wire.authenticationOk)
        let setup = try machine.messageReceived(Wire.ready())
        #expect(Wire.queries(setup) == [
            "SHOW max_connections", "SET search_path = app",
            "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'",
        ])
        #expect(machine.setupQueries == [.maxConnections, .initQuery, .baseline])
        #expect(machine.state.name == "setup(0)")
        _ = try machine.messageReceived(Wire.frame { PGEncode.rowDescription(columnNames: ["max_connections"], into: &$0) })
        _ = try machine.messageReceived(Wire.row(["150"]))
        _ = try machine.messageReceived(Wire.complete("SHOW"))
        #expect(try machine.messageReceived(Wire.ready()) == .none)
        #expect(machine.maxConnections == 150)
        #expect(machine.state.name == "setup(1)")
        _ = try machine.messageReceived(Wire.complete("SET"))
        #expect(try machine.messageReceived(Wire.ready()) == .none)
        _ = try machine.messageReceived(Wire.row(["search_path", "app"]))
        _ = try machine.messageReceived(Wire.row(["Work_Mem", "8MB"]))
        #expect(try machine.messageReceived(Wire.ready()) == .succeedSetup)
        #expect(machine.baselineParameters == ["search_path": "app", "work_mem": "8MB"])
        #expect(machine.state.name == "idle")
    }

    @Test func maxConnectionsThatIsNotANumberIsNil() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(readMaxConnections: true))
        _ = machine.connected()
        _ = try machine.messageReceived(Wire.authenticationOk)
        #expect(Wire.queries(try machine.messageReceived(Wire.ready())) == ["SHOW max_connections"])
        _ = try machine.messageReceived(Wire.row(["lots"]))
        #expect(try machine.messageReceived(Wire.ready()) == .succeedSetup)
        #expect(machine.maxConnections == nil)
    }

    @Test func initQueryFailureFailsSetupWithTheFirstError() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(initQuery: "SET nonsense = 1"))
        _ = machine.connected()
        _ = try machine.messageReceived(Wire.authenticationOk)
        _ = try machine.messageReceived(Wire.ready())
        let first = PGErrorFields.error(code: "42704", message: "unrecognized configuration parameter \"nonsense\"")
        #expect(try machine.messageReceived(Wire.error(first)) == .none)
        #expect(try machine.messageReceived(Wire.ready()) == .none)
        #expect(try machine.messageReceived(Wire.error(.error(code: "XX000", message: "second"))) == .none)
        #expect(try machine.messageReceived(Wire.ready()) == .failSetupAndClose(.server(first)))
        #expect(machine.state.name == "closed")
    }

    @Test func initQueryLeavingATransactionOpenFailsSetup() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(initQuery: "BEGIN"))
        _ = machine.connected()
        _ = try machine.messageReceived(Wire.authenticationOk)
        _ = try machine.messageReceived(Wire.ready())
        _ = try machine.messageReceived(Wire.ready(.inTransaction))
        #expect(
            try machine.messageReceived(Wire.ready(.inTransaction))
                == .failSetupAndClose(.protocolViolation("init_query left a transaction open")))
    }

    @Test func unexpectedMessagesDuringLoginThrow() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration())
        _ = machine.connected()
        #expect(throws: BackendError.protocolViolation("unexpected ReadyForQuery")) {
            try machine.messageReceived(Wire.ready())
        }
        #expect(throws: BackendError.self) {
            try machine.messageReceived(Wire.frame { $0.writeInteger(UInt8(ascii: "G")); $0.writeInteger(Int32(4)) })
        }
    }
}
