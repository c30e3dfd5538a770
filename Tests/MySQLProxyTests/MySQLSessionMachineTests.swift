import MySQLWire
import NIOCore
import SQLClassifier
import XCTest
@testable import MySQLProxy

/// The MySQL session machine, event by event, without sockets: when a backend is borrowed,
/// restored, kept and returned.
final class MySQLSessionMachineTests: XCTestCase {
    let caps: MySQLCapabilities = [.protocol41, .transactions, .sessionTrack, .multiResults, .multiStatements]

    func command(_ sql: String) -> MySQLSessionMachine.Command {
        var bytes = ByteBuffer()
        bytes.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(MySQLCommand.query.rawValue)
            payload.writeString(sql)
        }
        return .init(code: MySQLCommand.query.rawValue, bytes: bytes)
    }

    func ok(_ status: MySQLServerStatus, changes: [MySQLSessionStateChange] = []) -> ByteBuffer {
        var buffer = ByteBuffer()
        var status = status
        if !changes.isEmpty { status.insert(.sessionStateChanged) }
        MySQLOKPacket(status: status, sessionStateChanges: changes).encode(into: &buffer, capabilities: caps)
        return buffer
    }

    func eof(_ status: MySQLServerStatus) -> ByteBuffer {
        var buffer = ByteBuffer()
        MySQLEOFPacket(status: status).encode(into: &buffer)
        return buffer
    }

    func err(_ code: UInt16, _ message: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        MySQLErrPacket(code: code, message: message).encode(into: &buffer)
        return buffer
    }

    func send(_ machine: inout MySQLSessionMachine, _ sql: String) -> MySQLSessionMachine.Action {
        machine.commandReceived(command(sql), classification: MySQLClassifier.classify(sql))
    }

    /// A machine that has a fresh backend attached for `sql`.
    func attached(_ sql: String = "SELECT 1") -> MySQLSessionMachine {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .borrow = send(&machine, sql) else { XCTFail("expected a borrow"); return machine }
        // A backend whose last client used the same schema.
        guard case .sendToBackend(let commands) = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false) else {
            XCTFail("expected the held command to go out"); return machine
        }
        XCTAssertEqual(commands.count, 1)
        return machine
    }

    func isForward(_ action: MySQLSessionMachine.Action) -> Bool {
        if case .forwardToClient = action { return true }
        return false
    }

    func isRelease(_ action: MySQLSessionMachine.Action) -> Bool {
        if case .forwardToClientAndRelease = action { return true }
        return false
    }

    func testAnAutocommitStatementBorrowsAndReturnsTheBackendAtItsOK() throws {
        var machine = attached()
        XCTAssertEqual(machine.state, .attached)
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
        XCTAssertEqual(machine.state, .idle)
    }

    func testAResultSetReturnsTheBackendOnlyAfterItsLastPacket() throws {
        var machine = attached()
        var count = ByteBuffer()
        count.writeMySQLLengthEncodedInteger(1)
        XCTAssertTrue(isForward(try machine.serverPacket(count)))
        var column = ByteBuffer()
        for part in ["def", "", "", "", "1", ""] { column.writeMySQLLengthEncodedString(part) }
        column.writeBytes([0x0C, 0x3F, 0x00, 0x01, 0, 0, 0, 0x08, 0x81, 0x00, 0x00, 0x00, 0x00])
        XCTAssertTrue(isForward(try machine.serverPacket(column)))
        XCTAssertTrue(isForward(try machine.serverPacket(eof(.autocommit))))
        var row = ByteBuffer()
        row.writeMySQLLengthEncodedString("1")
        XCTAssertTrue(isForward(try machine.serverPacket(row)))
        XCTAssertTrue(isRelease(try machine.serverPacket(eof(.autocommit))))
    }

    func testATransactionKeepsTheBackendUntilItsEnd() throws {
        var machine = attached("BEGIN")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction]))))
        XCTAssertTrue(machine.inTransaction)
        guard case .forwardToBackend = send(&machine, "INSERT INTO t VALUES (1)") else { return XCTFail() }
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction]))))
        guard case .forwardToBackend = send(&machine, "COMMIT") else { return XCTFail() }
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
    }

    func testAutocommitOffCountsAsATransaction() throws {
        var machine = attached("SET autocommit = 0")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([]))))
        XCTAssertTrue(machine.inTransaction)
        XCTAssertEqual(machine.state, .attached)
    }

    func testAPinnedSessionKeepsItsBackend() throws {
        var machine = attached("SET @x = 1")
        XCTAssertEqual(machine.pins, .userVariable)
        XCTAssertTrue(isForward(try machine.serverPacket(ok(.autocommit))))
        XCTAssertEqual(machine.state, .attached)
    }

    func testLookAlikesDoNotPin() throws {
        var machine = attached("SELECT '@x' /* LOCK TABLES */")
        XCTAssertEqual(machine.pins, [])
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
    }

    func testUnlockTablesReleasesTheLockPin() throws {
        var machine = attached("LOCK TABLES t WRITE")
        XCTAssertTrue(isForward(try machine.serverPacket(ok(.autocommit))))
        guard case .forwardToBackend = send(&machine, "UNLOCK TABLES") else { return XCTFail() }
        XCTAssertEqual(machine.pins, [])
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
    }

    func testMoreResultsKeepTheBackendUntilTheLastResult() throws {
        var machine = attached("SELECT 1; SELECT 2")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .moreResultsExist]))))
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
    }

    func testABorrowTimeoutAnswersTheHeldCommandAndTheSessionGoesOn() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: nil)
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
        guard case .answerClient(let error) = machine.borrowFailed(MySQLErrPacket(code: 9501, message: "Timed-out waiting to acquire database connection")) else {
            return XCTFail()
        }
        XCTAssertEqual(error.code, 9501)
        XCTAssertEqual(machine.state, .idle)
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail("the next command borrows again") }
    }

    func testCommandsPipelinedWhileBorrowingGoOutTogether() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: nil)
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
        guard case .none = send(&machine, "SELECT 2") else { return XCTFail() }
        guard case .sendToBackend(let commands) = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail()
        }
        XCTAssertEqual(commands.count, 2)
    }

    func testReportedVariablesBecomeTheClientsStateAndAreRestoredOnTheNextBackend() throws {
        var machine = attached("SET time_zone = '+01:00'")
        let reported = ok(.autocommit, changes: [.systemVariable(name: "time_zone", value: "+01:00"), .stateChanged(true)])
        XCTAssertTrue(isRelease(try machine.serverPacket(reported)))
        XCTAssertEqual(machine.client.variables, ["time_zone": "+01:00"])
        XCTAssertEqual(machine.pins, [])
        // The next command gets another backend, fresh: the variable is set before it.
        guard case .borrow = send(&machine, "SELECT NOW()") else { return XCTFail() }
        guard case .sendRestoreQuery(let restore) = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail()
        }
        XCTAssertEqual(restore, "SET SESSION time_zone = '+01:00'")
        // The restore's own OK is not the client's; then the held command goes.
        let restored = ok(.autocommit, changes: [.systemVariable(name: "time_zone", value: "+01:00"), .stateChanged(true)])
        guard case .sendToBackend(let commands) = try machine.serverPacket(restored) else { return XCTFail() }
        XCTAssertEqual(commands.count, 1)
        XCTAssertEqual(machine.backend, machine.client)
    }

    func testTheSchemaIsRestoredWithInitDB() throws {
        var machine = attached("USE other")
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit, changes: [.schema("other"), .stateChanged(true)]))))
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
        guard case .sendInitDB("other") = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail()
        }
        guard case .sendToBackend = try machine.serverPacket(ok(.autocommit, changes: [.schema("other")])) else { return XCTFail() }
    }

    func testAStateChangeNoVariableNamesPins() throws {
        // E.g. a user variable set inside a stored procedure, which the classifier cannot see.
        var machine = attached("CALL p()")
        XCTAssertTrue(isForward(try machine.serverPacket(ok(.autocommit, changes: [.stateChanged(true)]))))
        XCTAssertEqual(machine.pins, .sessionStateChange)
    }

    func testARefusedRestoreClosesTheClientWithTheServersError() throws {
        var machine = attached("USE gone")
        _ = try machine.serverPacket(ok(.autocommit, changes: [.schema("gone")]))
        _ = send(&machine, "SELECT 1")
        guard case .sendInitDB("gone") = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail()
        }
        guard case .close(let error?) = try machine.serverPacket(err(1049, "Unknown database 'gone'")) else { return XCTFail() }
        XCTAssertEqual(error.code, 1049)
    }

    func testPingIsAnsweredWithoutABackend() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: nil)
        var bytes = ByteBuffer()
        bytes.writeMySQLPacket(sequenceID: 0) { $0.writeInteger(MySQLCommand.ping.rawValue) }
        guard case .answerPing = machine.commandReceived(.init(code: MySQLCommand.ping.rawValue, bytes: bytes), classification: nil) else {
            return XCTFail()
        }
    }

    func testABackendLostBetweenStatementsOfNoTransactionIsNotTheClientsLoss() throws {
        var machine = attached("SELECT 1")
        _ = try machine.serverPacket(ok(.autocommit))
        XCTAssertEqual(machine.state, .idle)
        guard case .none = machine.backendLost() else { return XCTFail() }
    }

    func testABackendLostMidTransactionClosesTheClientWithAnError() throws {
        var machine = attached("BEGIN")
        _ = try machine.serverPacket(ok([.autocommit, .inTransaction]))
        guard case .close(let error?) = machine.backendLost() else { return XCTFail() }
        XCTAssertEqual(error.code, 1158)  // a server's code: never the client library's 2013
        XCTAssertEqual(error.sqlState, "08S01")
        XCTAssertEqual(machine.state, .closed)
    }

    func testABackendLostMidStatementClosesTheClient() {
        var machine = attached("SELECT SLEEP(10)")
        guard case .close = machine.backendLost() else { return XCTFail() }
    }

    func testAClientLeavingMidStatementDoesNotReturnTheBackendForReuse() {
        var machine = attached("SELECT SLEEP(10)")
        guard case .release(let reusable) = machine.clientClosed() else { return XCTFail() }
        XCTAssertFalse(reusable)
    }

    func testResetConnectionDropsPinsAndState() throws {
        var machine = attached("SET @x = 1")
        _ = try machine.serverPacket(ok(.autocommit))
        guard case .release(let reusable) = machine.resetConnection() else { return XCTFail() }
        XCTAssertFalse(reusable, "a pinned backend carries the client's state: not reused")
        XCTAssertEqual(machine.pins, [])
        XCTAssertEqual(machine.state, .idle)
    }

    func testLocalInfileKeepsTheBackendUntilTheServersAnswer() throws {
        var machine = attached("LOAD DATA LOCAL INFILE 'x' INTO TABLE t")
        var request = ByteBuffer()
        request.writeInteger(UInt8(0xFB))
        request.writeString("x")
        XCTAssertTrue(isForward(try machine.serverPacket(request)))
        XCTAssertTrue(machine.sendingInfile)
        machine.infileDataReceived(isLast: false)
        machine.infileDataReceived(isLast: true)
        XCTAssertFalse(machine.sendingInfile)
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
    }
}

extension MySQLSessionMachineTests {
    func testSetTransactionKeepsTheBackendForTheNextTransactionOnly() throws {
        var machine = attached("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        XCTAssertTrue(isForward(try machine.serverPacket(ok(.autocommit))), "the next transaction must run here")
        guard case .forwardToBackend = send(&machine, "SELECT 1") else { return XCTFail() }
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
    }
}

extension MySQLSessionMachineTests {
    /// The restore's own OK is not "the last packet was an OK for the client": the handler
    /// rewrote it for the client (found with PyMySQL: the restore's OK reached the client and
    /// the held command never went).
    func testARestoresOKIsNotMarkedAsTheClientsOK() throws {
        var machine = attached("SET time_zone = '+01:00'")
        _ = try machine.serverPacket(ok(.autocommit, changes: [.systemVariable(name: "time_zone", value: "+01:00")]))
        XCTAssertTrue(machine.lastPacketWasOK)
        _ = send(&machine, "SELECT 1")
        _ = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false)
        guard case .sendToBackend = try machine.serverPacket(ok(.autocommit, changes: [.systemVariable(name: "time_zone", value: "+01:00")])) else {
            return XCTFail()
        }
        XCTAssertFalse(machine.lastPacketWasOK)
    }
}

extension MySQLSessionMachineTests {
    /// Backends of clients that logged in with a schema log in without one and are shared:
    /// a fresh one gets the client's login schema first.
    func testAFreshBackendGetsTheLoginSchema() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        _ = send(&machine, "SELECT 1")
        guard case .sendInitDB("app") = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail()
        }
        guard case .sendToBackend = try machine.serverPacket(ok(.autocommit, changes: [.schema("app")])) else { return XCTFail() }
        XCTAssertEqual(machine.backend.schema, "app")
    }

    func testResetConnectionGoesBackToTheLoginSchema() throws {
        var machine = attached("USE other")
        _ = try machine.serverPacket(ok(.autocommit, changes: [.schema("other")]))
        XCTAssertEqual(machine.client.schema, "other")
        _ = machine.resetConnection()
        XCTAssertEqual(machine.client.schema, "app")
    }
}

extension MySQLSessionMachineTests {
    func okWithInsertID(_ id: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer()
        MySQLOKPacket(affectedRows: 1, lastInsertID: id, status: .autocommit).encode(into: &buffer, capabilities: caps)
        return buffer
    }

    /// LAST_INSERT_ID() is per connection in MySQL: the client's own id is set on its next
    /// backend (found by the integration test: another client's INSERT ran there in between).
    func testTheClientsLastInsertIDIsRestoredOnItsNextBackend() throws {
        var machine = attached("INSERT INTO t (v) VALUES (1)")
        XCTAssertTrue(isRelease(try machine.serverPacket(okWithInsertID(7))))
        XCTAssertEqual(machine.client.lastInsertID, 7)
        _ = send(&machine, "SELECT LAST_INSERT_ID()")
        guard case .sendRestoreQuery(let restore) = machine.borrowed(
            backendState: .init(schema: "app", lastInsertID: 9), baseline: [:], noBackslashEscapes: false)
        else { return XCTFail() }
        XCTAssertEqual(restore, "SET SESSION last_insert_id = 7")
    }

    func testAStatementThatGeneratesNoIDKeepsTheLastOne() throws {
        var machine = attached("INSERT INTO t (v) VALUES (1)")
        _ = try machine.serverPacket(okWithInsertID(7))
        _ = send(&machine, "UPDATE t SET v = 2")
        _ = machine.borrowed(backendState: .init(schema: "app", lastInsertID: 7), baseline: [:], noBackslashEscapes: false)
        _ = try machine.serverPacket(okWithInsertID(0))
        XCTAssertEqual(machine.client.lastInsertID, 7)
    }
}

extension MySQLSessionMachineTests {
    /// A statement whose answer left conditions (warnings, or an error) keeps the backend for the
    /// client's next command: SHOW WARNINGS must read this backend's diagnostics area, not
    /// another's, where another client's error or nothing would show (found by mysqlclient's
    /// workload in test_mysql_clients.py: SHOW WARNINGS after INSERT IGNORE showed another
    /// client's error).
    func testConditionsKeepTheBackendForTheNextCommand() throws {
        var warningOK = ByteBuffer()
        MySQLOKPacket(status: .autocommit, warnings: 1).encode(into: &warningOK, capabilities: caps)
        var machine = attached("INSERT IGNORE INTO t VALUES (1)")
        XCTAssertTrue(isForward(try machine.serverPacket(warningOK)), "SHOW WARNINGS must come here")
        XCTAssertEqual(machine.state, .attached)
        guard case .forwardToBackend = send(&machine, "SHOW WARNINGS") else { return XCTFail("expected the same backend") }
        var count = ByteBuffer()
        count.writeMySQLLengthEncodedInteger(3)
        var column = ByteBuffer()
        for part in ["def", "", "", "", "Level", ""] { column.writeMySQLLengthEncodedString(part) }
        for packet in [count, column, column, column, eof(.autocommit)] {
            XCTAssertTrue(isForward(try machine.serverPacket(packet)))
        }
        // The warnings' own listing reports no new ones: the backend goes back after it.
        XCTAssertTrue(isRelease(try machine.serverPacket(eof(.autocommit))))

        // An error: the same.
        machine = attached("SELECT * FROM no_such_table")
        XCTAssertTrue(isForward(try machine.serverPacket(err(1146, "Table 'app.no_such_table' doesn't exist"))))
        guard case .forwardToBackend = send(&machine, "SELECT 1") else { return XCTFail("expected the same backend") }
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))

        // An error the server closes the connection with (SQLSTATE class 08) keeps nothing: the
        // client's next command must borrow a live backend (found by test_mysql_bad_input.py:
        // after 1156 the next command went to the closing backend and the client lost it). Nor
        // does the backend go back to the pool: another client's next command found it dead
        // there (the same test, about one run in twenty).
        machine = attached("SELECT 2")
        var closing = ByteBuffer()
        MySQLErrPacket(code: 1156, sqlState: "08S01", message: "Got packets out of order").encode(into: &closing)
        guard case .forwardToClientAndDiscard = try machine.serverPacket(closing) else {
            return XCTFail("a backend the server closes is not returned for reuse")
        }
        guard case .borrow = send(&machine, "SELECT 3") else { return XCTFail("the next command borrows") }
    }
}

extension MySQLSessionMachineTests {
    /// Between transactions (idle for idle_client_timeout, closed at once by a drain): nothing
    /// waits for a backend or a response and no transaction is open; a pinned client between
    /// commands is, a client with autocommit off is only between its COMMIT and its next
    /// statement (found by test_mysql_lifecycle.py: a pinned client never timed out nor let a
    /// drain end, a client waiting for a backend was closed as idle, and one with autocommit
    /// off held a drain up after its COMMIT).
    func testBetweenTransactions() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        XCTAssertTrue(machine.isBetweenTransactions)
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
        XCTAssertFalse(machine.isBetweenTransactions, "waiting for a backend")
        _ = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false)
        XCTAssertFalse(machine.isBetweenTransactions, "waiting for the response")
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
        XCTAssertTrue(machine.isBetweenTransactions)

        machine = attached("BEGIN")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction]))))
        XCTAssertFalse(machine.isBetweenTransactions, "in a transaction")
        guard case .forwardToBackend = send(&machine, "COMMIT") else { return XCTFail() }
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
        XCTAssertTrue(machine.isBetweenTransactions)

        machine = attached("SET @x = 1")
        XCTAssertTrue(isForward(try machine.serverPacket(ok(.autocommit))))
        XCTAssertEqual(machine.state, .attached)
        XCTAssertTrue(machine.isBetweenTransactions, "pinned, between commands")
        guard case .forwardToBackend = send(&machine, "SELECT @x") else { return XCTFail() }
        XCTAssertFalse(machine.isBetweenTransactions, "pinned, a command in flight")

        machine = attached("SET autocommit = 0")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([]))))
        XCTAssertTrue(machine.isBetweenTransactions, "autocommit off, no statement yet")
        guard case .forwardToBackend = send(&machine, "INSERT INTO t VALUES (1)") else { return XCTFail() }
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.inTransaction]))))
        XCTAssertFalse(machine.isBetweenTransactions, "autocommit off, a statement run")
        guard case .forwardToBackend = send(&machine, "COMMIT") else { return XCTFail() }
        XCTAssertTrue(isForward(try machine.serverPacket(ok([]))))
        XCTAssertEqual(machine.state, .attached, "autocommit off keeps the backend")
        XCTAssertTrue(machine.isBetweenTransactions, "autocommit off, after COMMIT")
    }

    /// The end of each response to a client command is marked (QueryDatabaseResponseLatency
    /// counts every one, in a transaction or pinned too: found by test_mysql_metrics.py, where
    /// only responses that returned the backend were counted); a restore's is not the client's.
    func testEachResponseEndIsMarked() throws {
        var machine = attached("BEGIN")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction]))))
        XCTAssertTrue(machine.lastPacketEndedResponse)
        guard case .forwardToBackend = send(&machine, "SELECT 1; SELECT 2") else { return XCTFail() }
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction, .moreResultsExist]))))
        XCTAssertFalse(machine.lastPacketEndedResponse, "another result follows")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction]))))
        XCTAssertTrue(machine.lastPacketEndedResponse)
        guard case .forwardToBackend = send(&machine, "COMMIT") else { return XCTFail() }
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
        XCTAssertTrue(machine.lastPacketEndedResponse)

        // A restore's answer is the proxy's own.
        machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
        guard case .sendInitDB = machine.borrowed(backendState: .init(schema: "other"), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail("expected the schema to be restored")
        }
        guard case .sendToBackend = try machine.serverPacket(ok(.autocommit, changes: [.schema("app")])) else { return XCTFail() }
        XCTAssertFalse(machine.lastPacketEndedResponse)
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
        XCTAssertTrue(machine.lastPacketEndedResponse)
    }
}

extension MySQLSessionMachineTests {
    /// A backend returned with conditions in its diagnostics area (the last client's warnings or
    /// error, which MariaDB keeps until a statement uses a table) is cleared before the next
    /// client's commands, then restored as usual: that client's SHOW WARNINGS must not show
    /// another's error (found with test_mysql_clients.py's diagnostics test).
    func testAnotherClientsConditionsAreClearedOnTheNextLease() throws {
        // The first client's error marks its backend.
        var first = attached("SELECT * FROM no_such_table")
        XCTAssertTrue(isForward(try first.serverPacket(err(1146, "Table 'app.no_such_table' doesn't exist"))))
        XCTAssertTrue(first.backend.mayHoldConditions)
        guard case .forwardToBackend = send(&first, "SELECT 1") else { return XCTFail() }
        XCTAssertTrue(isRelease(try first.serverPacket(ok(.autocommit))))
        XCTAssertTrue(first.backend.mayHoldConditions, "SELECT 1 does not clear MariaDB's diagnostics area")

        // The next client, whose time zone differs: clearing, then its SET, then its command.
        var next = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .borrow = send(&next, "SHOW WARNINGS") else { return XCTFail() }
        var backendState = first.backend
        backendState.variables["time_zone"] = "+01:00"
        guard case .sendRestoreQuery(let clear) = next.borrowed(backendState: backendState, baseline: ["time_zone": "SYSTEM"], noBackslashEscapes: false)
        else { return XCTFail("expected the diagnostics area to be cleared first") }
        XCTAssertEqual(clear, MySQLRestorePlan.clearDiagnosticsStatement)
        XCTAssertEqual(next.state, .restoring(.diagnostics))
        guard case .sendRestoreQuery(let set) = try next.serverPacket(ok(.autocommit)) else { return XCTFail() }
        XCTAssertEqual(set, "SET SESSION time_zone = 'SYSTEM'")
        guard case .sendToBackend(let commands) = try next.serverPacket(ok(.autocommit)) else { return XCTFail() }
        XCTAssertEqual(commands.count, 1)
        XCTAssertFalse(next.backend.mayHoldConditions)

        // A clean backend: no clearing.
        var clean = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        _ = send(&clean, "SHOW WARNINGS")
        guard case .sendToBackend = clean.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false)
        else { return XCTFail("a clean backend needs no restore") }
    }
}
