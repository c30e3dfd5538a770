import NIOCore
import PostgresProxy
import PostgresWire
import Testing

@Suite struct BackendPoolPhaseTests {
    @Test func leaseWithNothingToChangeIsReadyAtOnceAndReleaseReturnsToThePool() throws {
        var machine = try Wire.idleMachine()
        var asked = false
        #expect(machine.lease(parameters: [:], fromDefaults: false, takingStale: { asked = true; return [] }) == .ownerReady)
        #expect(asked)
        #expect(machine.isLeased)
        #expect(!machine.acceptsOwnMessages)
        #expect(machine.released(reusable: true) == .returnToPool)
        #expect(machine.state.name == "idle")
        #expect(machine.released(reusable: true) == .none)
    }

    @Test func leaseBringsParametersAndClosesStaleStatementsInOneRoundTrip() throws {
        var machine = try Wire.idleMachine()
        let action = machine.lease(
            parameters: ["timezone": "Europe/Paris"], fromDefaults: false, takingStale: { ["concierge_1f", "concierge_2a"] })
        let messages = Wire.messages(action)
        #expect(messages.map(\.type) == [PGMessageType.Frontend.close, PGMessageType.Frontend.close, PGMessageType.Frontend.query])
        let closed = try PGFrontend.close(messages[0].body)
        #expect(closed.kind == .statement && String(buffer: closed.name) == "concierge_1f")
        #expect(
            Wire.queries(action) == [ParameterSync.parameterSyncSQL(from: [:], to: ["timezone": "Europe/Paris"])!])
        #expect(machine.state.name == "preparing")
        #expect(machine.appliedParameters == ["timezone": "Europe/Paris"])
        // The answer: what the server reports is forwarded later; here it is only noted.
        _ = try machine.messageReceived(Wire.closeComplete)
        _ = try machine.messageReceived(Wire.parameter("TimeZone", "Europe/Paris"))
        #expect(try machine.messageReceived(Wire.ready()) == .ownerReady)
        #expect(machine.isLeased)
        #expect(machine.serverParameters["TimeZone"] == "Europe/Paris")
    }

    @Test func staleStatementsAloneAreClosedWithASync() throws {
        var machine = try Wire.idleMachine()
        let action = machine.lease(parameters: [:], fromDefaults: false, takingStale: { ["concierge_9"] })
        #expect(Wire.messages(action).map(\.type) == [PGMessageType.Frontend.close, PGMessageType.Frontend.sync])
        #expect(try machine.messageReceived(Wire.closeComplete) == .none)
        #expect(try machine.messageReceived(Wire.ready()) == .ownerReady)
    }

    @Test func leaseFromDefaultsKeepsTheServersSpellingOfAppliedValues() throws {
        var machine = try Wire.idleMachine(parameters: [("DateStyle", "ISO, MDY")])
        let action = machine.lease(parameters: ["datestyle": "sql"], fromDefaults: true, takingStale: { [] })
        #expect(
            Wire.queries(action) == [
                ParameterSync.parameterSyncSQL(from: [:], to: ["datestyle": "sql"], fromDefaults: true)!,
            ])
        _ = try machine.messageReceived(Wire.parameter("DateStyle", "SQL, MDY"))
        #expect(try machine.messageReceived(Wire.ready()) == .ownerReady)
        #expect(machine.appliedParameters == ["datestyle": "SQL, MDY"])
    }

    @Test func preparingThatFailsClosesTheBackend() throws {
        var machine = try Wire.idleMachine()
        _ = machine.lease(parameters: ["timezone": "Mars/Olympus"], fromDefaults: false, takingStale: { [] })
        let fields = PGErrorFields.error(code: "22023", message: "invalid value for parameter \"TimeZone\"")
        #expect(try machine.messageReceived(Wire.error(fields)) == .none)
        #expect(try machine.messageReceived(Wire.ready()) == .ownerFailedClosing(.server(fields)))
        #expect(machine.state.name == "closed")
        // Released as not reusable: the pool keeps its slot until told it is gone.
        #expect(machine.channelInactive() == .poolLost)
        #expect(machine.channelInactive() == .none)
    }

    @Test func leaseOfABackendThatIsNotIdle() throws {
        var leased = try Wire.leasedMachine()
        #expect(
            leased.lease(parameters: [:], fromDefaults: false, takingStale: { Issue.record("stale taken"); return [] })
                == .ownerFailedReleasing(.connection("the database connection closed")))
        var closed = try Wire.idleMachine()
        _ = closed.channelInactive()
        #expect(closed.lease(parameters: [:], fromDefaults: false, takingStale: { [] }) == .ownerFailed(.connection("the database connection closed")))
    }

    @Test func releasedAsNotReusableIsDiscarded() throws {
        var machine = try Wire.leasedMachine()
        #expect(machine.released(reusable: false) == .discard)
        #expect(machine.state.name == "closed")
        #expect(machine.channelInactive() == .poolLost)  // the pool counts it until then
        var preparing = try Wire.idleMachine()
        _ = preparing.lease(parameters: ["timezone": "UTC"], fromDefaults: false, takingStale: { [] })
        #expect(preparing.released(reusable: true) == .returnToPool)
    }

    @Test func rollbackThenResetReturnsToThePoolOrDiscards() throws {
        var machine = try Wire.leasedMachine()
        machine.noteApplied(name: "timezone", value: "Asia/Tokyo")
        let rollback = machine.rollbackRequested()
        #expect(Wire.queries(rollback) == ["ROLLBACK"])
        #expect(machine.state.name == "resetting")
        #expect(machine.acceptsOwnMessages)
        // The ROLLBACK undid the SET: the backend runs with the reported value again.
        _ = try machine.messageReceived(Wire.parameter("TimeZone", "UTC"))
        _ = try machine.messageReceived(Wire.parameter("server_version", "17.0"))
        #expect(machine.appliedParameters == ["timezone": "UTC"])
        _ = try machine.messageReceived(Wire.complete("ROLLBACK"))
        #expect(try machine.messageReceived(Wire.ready()) == .returnToPool)
        #expect(machine.state.name == "idle")

        var stuck = try Wire.leasedMachine()
        _ = stuck.rollbackRequested()
        #expect(try stuck.messageReceived(Wire.ready(.failed)) == .discard)
        #expect(stuck.state.name == "closed")

        var idle = try Wire.idleMachine()
        #expect(idle.rollbackRequested() == .none)
    }

    @Test func reapplyWhileLeased() throws {
        var machine = try Wire.leasedMachine()
        #expect(machine.reapply(parameters: [:]) == .ownerReady)
        let action = machine.reapply(parameters: ["timezone": "UTC"])
        let messages = Wire.messages(action)
        #expect(messages.map(\.type) == [
            PGMessageType.Frontend.parse, PGMessageType.Frontend.bind, PGMessageType.Frontend.execute,
            PGMessageType.Frontend.close, PGMessageType.Frontend.close, PGMessageType.Frontend.sync,
        ])
        let parse = try PGFrontend.Parse(messages[0].body)
        #expect(String(buffer: parse.name) == ParameterSync.resyncName)
        #expect(String(buffer: parse.query) == ParameterSync.parameterSyncStatement(from: [:], to: ["timezone": "UTC"]))
        #expect(machine.state.name == "preparing")
        _ = try machine.messageReceived(Wire.frame { PGEncode.parseComplete(into: &$0) })
        _ = try machine.messageReceived(Wire.frame { PGEncode.bindComplete(into: &$0) })
        _ = try machine.messageReceived(Wire.row([nil]))
        _ = try machine.messageReceived(Wire.complete("SELECT 1"))
        #expect(try machine.messageReceived(Wire.ready(.inTransaction)) == .ownerReady)
        #expect(machine.isLeased)

        var idle = try Wire.idleMachine()
        #expect(idle.reapply(parameters: ["timezone": "UTC"]) == .ownerFailed(.connection("the database connection closed")))
    }

    @Test func parameterBookkeeping() throws {
        var machine = BackendStateMachine(configuration: Wire.configuration(initQuery: "SET work_mem = '8MB'"))
        _ = machine.connected()
        _ = try machine.messageReceived(Wire.authenticationOk)
        _ = try machine.messageReceived(Wire.ready())
        _ = try machine.messageReceived(Wire.ready())
        _ = try machine.messageReceived(Wire.row(["work_mem", "8MB"]))
        #expect(try machine.messageReceived(Wire.ready()) == .succeedSetup)
        _ = machine.lease(parameters: ["timezone": "UTC"], fromDefaults: false, takingStale: { [] })
        _ = try machine.messageReceived(Wire.ready())
        let tracked = machine.parameterReportedWhileLeased(name: "TimeZone", value: "Asia/Tokyo")
        let untracked = machine.parameterReportedWhileLeased(name: "is_superuser", value: "on")
        #expect(tracked && !untracked)
        #expect(machine.appliedParameters == ["timezone": "Asia/Tokyo"])
        #expect(machine.serverParameters["is_superuser"] == "on")
        machine.noteApplied(name: "datestyle", value: "German")
        machine.noteApplied(name: "timezone", value: String?.none)
        #expect(machine.appliedParameters == ["datestyle": "German"])
        machine.noteParametersReset(["datestyle", "work_mem"])
        #expect(machine.appliedParameters == ["work_mem": ParameterSync.lostBaseline])
        machine.noteApplied(name: "timezone", value: "UTC")
        machine.noteParametersReset(Set<String>?.none)
        #expect(machine.appliedParameters == ["work_mem": ParameterSync.lostBaseline])
    }

    @Test func healthCheckAnswersTrueFalseOrAnError() throws {
        for (value, expected) in [("t", true), ("f", false)] {
            var machine = try Wire.idleMachine()
            #expect(Wire.queries(machine.checkRequested()) == ["SELECT pg_catalog.pg_is_in_recovery()"])
            #expect(machine.state.name == "checking")
            _ = try machine.messageReceived(Wire.frame { PGEncode.rowDescription(columnNames: ["pg_is_in_recovery"], into: &$0) })
            _ = try machine.messageReceived(Wire.row([value]))
            _ = try machine.messageReceived(Wire.complete("SELECT 1"))
            #expect(try machine.messageReceived(Wire.ready()) == .completeCheck(.success(expected)))
            #expect(machine.state.name == "idle")
        }
        var failing = try Wire.idleMachine()
        _ = failing.checkRequested()
        let fields = PGErrorFields.error(code: "57014", message: "canceling statement due to statement timeout")
        _ = try failing.messageReceived(Wire.error(fields))
        #expect(try failing.messageReceived(Wire.ready()) == .completeCheck(.failure(.server(fields))))

        var silent = try Wire.idleMachine()
        _ = silent.checkRequested()
        #expect(try silent.messageReceived(Wire.ready()) == .completeCheck(.failure(.protocolViolation("no answer to the health check"))))
    }

    @Test func healthCheckOnABusyConnectionIsRefused() throws {
        var machine = try Wire.idleMachine()
        _ = machine.checkRequested()
        #expect(machine.checkRequested() == .completeCheck(.failure(.connection("the health-check connection is not ready"))))
        #expect(machine.state.name == "checking")
    }

    @Test func channelClosedInEachPhaseTellsWhoHadTheBackend() throws {
        var idle = try Wire.idleMachine()
        #expect(idle.channelInactive() == .poolLost)
        var leased = try Wire.leasedMachine()
        #expect(leased.channelInactive() == .ownerAndPoolLost)
        var preparing = try Wire.idleMachine()
        _ = preparing.lease(parameters: ["timezone": "UTC"], fromDefaults: false, takingStale: { [] })
        #expect(preparing.channelInactive() == .ownerAndPoolLost)
        var resetting = try Wire.leasedMachine()
        _ = resetting.rollbackRequested()
        #expect(resetting.channelInactive() == .poolLost)
        var checking = try Wire.idleMachine()
        _ = checking.checkRequested()
        #expect(checking.channelInactive() == .completeCheck(.failure(.connection("the database closed the health-check connection"))))
        #expect(checking.state.name == "closed")
        #expect(checking.channelInactive() == .none)
        var closing = try Wire.leasedMachine()
        var terminate = ByteBuffer()
        PGEncode.terminate(into: &terminate)
        // Closed at the pool's request: the pool keeps its slot in the cap until it hears the
        // connection is gone, once.
        #expect(closing.closeRequested() == .terminate(terminate))
        #expect(closing.channelInactive() == .poolLost)
        #expect(closing.channelInactive() == .none)
        var closedIdle = try Wire.idleMachine()
        _ = closedIdle.closeRequested()
        #expect(closedIdle.channelInactive() == .poolLost)
        var reported = try Wire.idleMachine()
        #expect(reported.channelInactive() == .poolLost)
        #expect(reported.closeRequested() == .terminate(terminate))
        #expect(reported.channelInactive() == .none)
    }

    @Test func unexpectedMessagesOnAnIdleConnection() throws {
        var machine = try Wire.idleMachine()
        #expect(throws: BackendError.protocolViolation("unexpected ReadyForQuery")) {
            try machine.messageReceived(Wire.ready())
        }
        #expect(throws: BackendError.self) {
            try machine.messageReceived(Wire.frame { $0.writeInteger(UInt8(ascii: "G")); $0.writeInteger(Int32(4)) })
        }
        let warning = PGErrorFields.error(code: "25P03", message: "idle-in-transaction timeout")
        #expect(try machine.messageReceived(Wire.error(warning)) == .unsolicitedError(warning, close: false))
        let fatal = PGErrorFields.fatal(code: "57P01", message: "terminating connection due to administrator command")
        #expect(try machine.messageReceived(Wire.error(fatal)) == .unsolicitedError(fatal, close: true))
        // Notices and notifications are read and dropped.
        #expect(try machine.messageReceived(Wire.frame { PGEncode.noticeResponse(.notice(message: "hi"), into: &$0) }) == .none)
    }

    @Test func aLeasedMachineDoesNotReadMessagesItself() throws {
        var machine = try Wire.leasedMachine()
        #expect(!machine.acceptsOwnMessages)
        #expect(machine.checkRequested() == .completeCheck(.failure(.connection("the health-check connection is not ready"))))
        #expect(machine.isLeased)
    }
}
