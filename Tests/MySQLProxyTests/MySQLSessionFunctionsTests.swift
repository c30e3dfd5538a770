import MySQLWire
import NIOCore
import SQLClassifier
import XCTest
@testable import MySQLProxy

/// ROW_COUNT(), FOUND_ROWS() and CONNECTION_ID() answered by the proxy, and KILL QUERY aimed at a
/// session: the machine's side, event by event, without sockets.
final class MySQLSessionFunctionsTests: XCTestCase {
    let caps: MySQLCapabilities = [.protocol41, .transactions, .sessionTrack, .multiResults, .multiStatements]

    func command(_ sql: String) -> MySQLSessionMachine.Command {
        var bytes = ByteBuffer()
        bytes.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(MySQLCommand.query.rawValue)
            payload.writeString(sql)
        }
        return .init(code: MySQLCommand.query.rawValue, bytes: bytes)
    }

    /// As the handler does: the command, then its effect on the functions.
    @discardableResult
    func send(_ machine: inout MySQLSessionMachine, _ sql: String) -> MySQLSessionMachine.Action {
        var classification = MySQLClassifier.classify(sql)
        // The handler's rule: the backend the client holds ran its previous statement.
        if machine.state != .idle { classification.pinReasons.remove(.sessionFunction) }
        let action = machine.commandReceived(command(sql), classification: classification)
        machine.noteCommandForFunctions(code: MySQLCommand.query.rawValue, classification: classification, after: action)
        if case .borrow = action {
            _ = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false)
        }
        return action
    }

    func ok(affected: UInt64, _ status: MySQLServerStatus = .autocommit) -> ByteBuffer {
        var buffer = ByteBuffer()
        MySQLOKPacket(affectedRows: affected, lastInsertID: 0, status: status, warnings: 0, info: "", sessionStateChanges: [])
            .encode(into: &buffer, capabilities: caps)
        return buffer
    }

    /// A one-column result set of `rows` rows, its packets in order (EOFs: no DEPRECATE_EOF).
    func resultSet(rows: Int) -> [ByteBuffer] {
        var packets: [ByteBuffer] = []
        var count = ByteBuffer()
        count.writeMySQLLengthEncodedInteger(1)
        packets.append(count)
        var column = ByteBuffer()
        for part in ["def", "", "", "", "a", ""] { column.writeMySQLLengthEncodedString(part) }
        column.writeBytes([0x0C, 63, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0])
        packets.append(column)
        var eof = ByteBuffer()
        MySQLEOFPacket(status: .autocommit).encode(into: &eof)
        packets.append(eof)
        for _ in 0..<rows {
            var row = ByteBuffer()
            row.writeMySQLLengthEncodedString("1")
            packets.append(row)
        }
        packets.append(eof)
        return packets
    }

    func feed(_ machine: inout MySQLSessionMachine, _ packets: [ByteBuffer]) throws -> MySQLSessionMachine.Action {
        var last = MySQLSessionMachine.Action.none
        for packet in packets { last = try machine.serverPacket(packet) }
        return last
    }

    func isRelease(_ action: MySQLSessionMachine.Action) -> Bool {
        if case .forwardToClientAndRelease = action { return true }
        return false
    }

    let rowCount = [MySQLSessionFunctionColumn(function: .rowCount, name: "ROW_COUNT()")]
    let foundRows = [MySQLSessionFunctionColumn(function: .foundRows, name: "FOUND_ROWS()")]

    func testANewSessionAnswersWhatANewMariaDBSessionDoes() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        XCTAssertEqual(machine.answerSessionSelect(rowCount, connectionID: 7), ["0"])
        // The answer was a one-row result set: ROW_COUNT() -1, FOUND_ROWS() 1 from now.
        XCTAssertEqual(machine.answerSessionSelect(rowCount + foundRows, connectionID: 7), ["-1", "1"])
        XCTAssertEqual(
            machine.answerSessionSelect([.init(function: .connectionID, name: "CONNECTION_ID()")], connectionID: 7), ["7"])
    }

    func testAffectedRowsAndResultSetRowsAreFollowedAcrossReleases() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "UPDATE t SET v = 1")
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(affected: 3))))
        XCTAssertEqual(machine.state, .idle)
        XCTAssertEqual(machine.functions.rowCount, 3)
        send(&machine, "SELECT * FROM t LIMIT 4")
        XCTAssertTrue(isRelease(try feed(&machine, resultSet(rows: 4))))
        XCTAssertEqual(machine.functions.rowCount, -1)
        XCTAssertEqual(machine.functions.foundRows, 4)
        // Neither an INSERT nor SHOW WARNINGS changes FOUND_ROWS().
        send(&machine, "INSERT INTO t VALUES (1), (2)")
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(affected: 2))))
        send(&machine, "SHOW WARNINGS")
        XCTAssertTrue(isRelease(try feed(&machine, resultSet(rows: 0))))
        XCTAssertEqual(machine.answerSessionSelect(foundRows + rowCount, connectionID: 1), ["4", "-1"])
    }

    func testLastInsertIDIsAnsweredWithTheValueALeaseWouldRestore() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "INSERT INTO t (v) VALUES (1), (2)")
        var okPacket = ByteBuffer()
        MySQLOKPacket(affectedRows: 2, lastInsertID: 41, status: .autocommit, warnings: 0, info: "", sessionStateChanges: [])
            .encode(into: &okPacket, capabilities: caps)
        XCTAssertTrue(isRelease(try machine.serverPacket(okPacket)))
        XCTAssertEqual(
            machine.answerSessionSelect([.init(function: .lastInsertID, name: "id")] + rowCount, connectionID: 1), ["41", "2"])
        // Bytes as MariaDB's `SELECT LAST_INSERT_ID()` (captured, answering 0).
        var out = ByteBuffer()
        MySQLSessionFunctions.resultSet(
            columns: [.init(function: .lastInsertID, name: "LAST_INSERT_ID()")], values: ["0"], status: .autocommit,
            capabilities: caps, into: &out)
        XCTAssertEqual(Array(out.readableBytesView), Array(
            "\u{01}\0\0\u{01}\u{01}&\0\0\u{02}\u{03}def\0\0\0\u{10}LAST_INSERT_ID()\0\u{0c}?\0\u{15}\0\0\0\u{08}\u{a1}\0\0\0\0\u{05}\0\0\u{03}\u{fe}\0\0\u{02}\0\u{02}\0\0\u{04}\u{01}0\u{05}\0\0\u{05}\u{fe}\0\0\u{02}\0"
                .unicodeScalars.map { UInt8($0.value) }))
    }

    func testAnErrorMakesRowCountMinusOneAndLeavesFoundRows() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "SELECT * FROM t")
        _ = try feed(&machine, resultSet(rows: 2))
        send(&machine, "SELECT nosuch")
        var err = ByteBuffer()
        MySQLErrPacket(code: 1054, message: "Unknown column").encode(into: &err)
        _ = try machine.serverPacket(err)
        XCTAssertEqual(machine.functions.rowCount, -1)
        XCTAssertEqual(machine.functions.foundRows, 2)
    }

    func testAnInsertSelectLeavesFoundRowsUnknownAndKeepsTheBackendForTheNextCommand() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "INSERT INTO t SELECT * FROM u")
        let action = try machine.serverPacket(ok(affected: 5))
        XCTAssertFalse(isRelease(action), "the backend knows FOUND_ROWS(); it stays for the next command")
        XCTAssertEqual(machine.state, .attached)
        XCTAssertNil(machine.functions.foundRows)
        XCTAssertNil(machine.answerSessionSelect(foundRows, connectionID: 1), "unknown: the backend answers")
        // The next command runs there; a plain SELECT makes the value known again and frees it.
        send(&machine, "SELECT FOUND_ROWS()")
        XCTAssertTrue(isRelease(try feed(&machine, resultSet(rows: 1))))
        XCTAssertEqual(machine.functions.foundRows, 1)
    }

    func testACallIsReadFromItsLastResultsAndReleasesTheBackend() throws {
        // As MariaDB: ROW_COUNT() the CALL's final OK, FOUND_ROWS() its last result set's rows.
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "CALL p()")
        var packets = resultSet(rows: 3)
        var last = ByteBuffer()
        MySQLEOFPacket(status: [.autocommit, .moreResultsExist]).encode(into: &last)
        packets[packets.count - 1] = last
        packets.append(ok(affected: 2))
        XCTAssertTrue(isRelease(try feed(&machine, packets)))
        XCTAssertEqual(machine.functions.rowCount, 2)
        XCTAssertEqual(machine.functions.foundRows, 3)
        // Several statements with a SELECT inside another: FOUND_ROWS() unknown, not held.
        send(&machine, "INSERT INTO t SELECT * FROM u; DO 1")
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(affected: 0))))
        XCTAssertNil(machine.functions.foundRows)
        XCTAssertNil(machine.answerSessionSelect(foundRows, connectionID: 1))
        XCTAssertEqual(machine.answerSessionSelect(rowCount, connectionID: 1), ["0"])
    }

    func testNothingIsAnsweredWhileACommandIsInFlight() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "SELECT SLEEP(1)")
        XCTAssertFalse(machine.canAnswerWithoutBackend)
        XCTAssertNil(machine.answerSessionSelect(rowCount, connectionID: 1))
    }

    func testAFailedBorrowForgetsTheHeldCommandsEffects() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let classification = MySQLClassifier.classify("CALL p()")
        let action = machine.commandReceived(command("CALL p()"), classification: classification)
        machine.noteCommandForFunctions(code: MySQLCommand.query.rawValue, classification: classification, after: action)
        _ = machine.borrowFailed(MySQLErrPacket(code: 9501, message: "Timed-out waiting to acquire database connection"))
        send(&machine, "DELETE FROM t")
        _ = try machine.serverPacket(ok(affected: 1))
        XCTAssertEqual(machine.functions.rowCount, 1, "the DELETE's response is read as the DELETE's, not the CALL's")
        XCTAssertEqual(machine.functions.foundRows, 1)
    }

    func testAnAnsweredPingResetsRowCountAsTheServersDoes() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "DELETE FROM t")
        _ = try machine.serverPacket(ok(affected: 4))
        var ping = ByteBuffer()
        ping.writeMySQLPacket(sequenceID: 0) { $0.writeInteger(MySQLCommand.ping.rawValue) }
        let action = machine.commandReceived(.init(code: MySQLCommand.ping.rawValue, bytes: ping), classification: nil)
        guard case .answerPing = action else { return XCTFail("expected the proxy to answer the ping") }
        machine.noteCommandForFunctions(code: MySQLCommand.ping.rawValue, classification: nil, after: action)
        XCTAssertEqual(machine.functions.rowCount, 0)
    }

    func testTheAnsweredResultSetIsMariaDBsByteForByte() {
        // Captured from MariaDB 10.11: `SELECT ROW_COUNT()` (without DEPRECATE_EOF) answering 0.
        var out = ByteBuffer()
        MySQLSessionFunctions.resultSet(
            columns: [.init(function: .rowCount, name: "ROW_COUNT()")], values: ["0"], status: .autocommit, capabilities: caps,
            into: &out)
        XCTAssertEqual(Array(out.readableBytesView), Array(
            "\u{01}\0\0\u{01}\u{01}!\0\0\u{02}\u{03}def\0\0\0\u{0b}ROW_COUNT()\0\u{0c}?\0\u{15}\0\0\0\u{08}\u{81}\0\0\0\0\u{05}\0\0\u{03}\u{fe}\0\0\u{02}\0\u{02}\0\0\u{04}\u{01}0\u{05}\0\0\u{05}\u{fe}\0\0\u{02}\0"
                .unicodeScalars.map { UInt8($0.value) }))
        // With DEPRECATE_EOF: `SELECT CONNECTION_ID()` answering 15.
        out.clear()
        MySQLSessionFunctions.resultSet(
            columns: [.init(function: .connectionID, name: "CONNECTION_ID()")], values: ["15"], status: .autocommit,
            capabilities: caps.union(.deprecateEOF), into: &out)
        XCTAssertEqual(Array(out.readableBytesView), Array(
            "\u{01}\0\0\u{01}\u{01}%\0\0\u{02}\u{03}def\0\0\0\u{0f}CONNECTION_ID()\0\u{0c}?\0\n\0\0\0\u{03}\u{a1}\0\0\0\0\u{03}\0\0\u{03}\u{02}15\u{07}\0\0\u{04}\u{fe}\0\0\u{02}\0\0\0"
                .unicodeScalars.map { UInt8($0.value) }))
    }

    // MARK: KILL QUERY

    func testKillQueryOfAnIdleClientIsANoOp() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        XCTAssertEqual(machine.killQueryRequested(), .nothingRunning)
    }

    func testKillQueryOfARunningStatementKeepsTheBackendUntilTheKillIsDelivered() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "SELECT SLEEP(30)")
        XCTAssertEqual(machine.state, .attached)
        XCTAssertEqual(machine.killQueryRequested(), .killOnBackend)
        // The statement ends before the kill reaches the server: the backend must not go back to
        // the pool, where the kill would stop another client's statement.
        let action = try feed(&machine, resultSet(rows: 1))
        XCTAssertFalse(isRelease(action))
        XCTAssertTrue(machine.killPending)
        guard case .release(let reusable) = machine.killDelivered() else { return XCTFail("expected the release") }
        XCTAssertTrue(reusable)
        XCTAssertEqual(machine.state, .idle)
    }

    func testTheKilledClientLeavingBeforeTheKillArrivesDoesNotReuseTheBackend() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        send(&machine, "SELECT SLEEP(30)")
        XCTAssertEqual(machine.killQueryRequested(), .killOnBackend)
        guard case .release(let reusable) = machine.clientClosed() else { return XCTFail("expected a release") }
        XCTAssertFalse(reusable)
    }

    func testKillQueryWhileWaitingForABackendCancelsTheWait() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let classification = MySQLClassifier.classify("SELECT 1")
        guard case .borrow = machine.commandReceived(command("SELECT 1"), classification: classification) else {
            return XCTFail("expected a borrow")
        }
        XCTAssertEqual(machine.killQueryRequested(), .cancelWait)
        guard case .answerClient(let error) = machine.borrowFailed(MySQLSessionMachine.queryInterrupted) else {
            return XCTFail("expected the error")
        }
        XCTAssertEqual(error.code, 1317)
        XCTAssertEqual(machine.state, .idle)
    }

    func testKillQueryDuringARestoreWaitsForTheCommandsToGo() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .borrow = machine.commandReceived(command("SELECT 1"), classification: MySQLClassifier.classify("SELECT 1")) else {
            return XCTFail("expected a borrow")
        }
        // A backend on another schema: COM_INIT_DB first.
        guard case .sendInitDB = machine.borrowed(backendState: .init(schema: "other"), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail("expected a restore")
        }
        XCTAssertEqual(machine.killQueryRequested(), .afterSend)
    }
}
