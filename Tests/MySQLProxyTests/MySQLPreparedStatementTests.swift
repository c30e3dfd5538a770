import MySQLWire
import NIOCore
import SQLClassifier
import XCTest
@testable import MySQLProxy

/// Binary-protocol prepared statements through the session machine, without sockets: the
/// client's ids, each backend's lazy preparation, the parameter types an execute leaves out,
/// long data, cursors, and what the proxy answers itself. None of it pins.
final class MySQLPreparedStatementTests: XCTestCase {
    let caps: MySQLCapabilities = [.protocol41, .transactions, .sessionTrack, .multiResults, .multiStatements]

    func packet(_ code: MySQLCommand, _ body: (inout ByteBuffer) -> Void) -> MySQLSessionMachine.Command {
        var bytes = ByteBuffer()
        bytes.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(code.rawValue)
            body(&payload)
        }
        return .init(code: code.rawValue, bytes: bytes)
    }

    /// A client command, as the handler gives it: to the machine, then its effect on the
    /// session functions noted.
    func receive(_ machine: inout MySQLSessionMachine, _ command: MySQLSessionMachine.Command) -> MySQLSessionMachine.Action {
        let action = machine.commandReceived(command, classification: nil)
        machine.noteCommandForFunctions(code: command.code, classification: nil, after: action)
        return action
    }

    func prepare(_ sql: String) -> MySQLSessionMachine.Command {
        packet(.stmtPrepare) { $0.writeString(sql) }
    }

    /// COM_STMT_EXECUTE of `id` with one BIGINT parameter; `types`: whether it sends the types.
    func execute(_ id: UInt32, value: Int64 = 7, types: Bool, cursor: Bool = false) -> MySQLSessionMachine.Command {
        packet(.stmtExecute) {
            $0.writeInteger(id, endianness: .little)
            $0.writeInteger(UInt8(cursor ? 1 : 0))
            $0.writeInteger(UInt32(1), endianness: .little)
            $0.writeInteger(UInt8(0))  // NULL bitmap
            $0.writeInteger(UInt8(types ? 1 : 0))
            if types { $0.writeInteger(UInt16(8), endianness: .little) }
            $0.writeInteger(value, endianness: .little)
        }
    }

    func statementCommand(_ code: MySQLCommand, _ id: UInt32, extra: (inout ByteBuffer) -> Void = { _ in }) -> MySQLSessionMachine.Command {
        packet(code) {
            $0.writeInteger(id, endianness: .little)
            extra(&$0)
        }
    }

    func prepareOK(id: UInt32, columns: UInt16 = 0, parameters: UInt16 = 1) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt8(0))
        b.writeInteger(id, endianness: .little)
        b.writeInteger(columns, endianness: .little)
        b.writeInteger(parameters, endianness: .little)
        b.writeInteger(UInt8(0))
        b.writeInteger(UInt16(0), endianness: .little)
        return b
    }

    func definition() -> ByteBuffer {
        var b = ByteBuffer()
        for part in ["def", "", "", "", "?", ""] { b.writeMySQLLengthEncodedString(part) }
        return b
    }

    func eof(_ status: MySQLServerStatus = .autocommit) -> ByteBuffer {
        var b = ByteBuffer()
        MySQLEOFPacket(status: status).encode(into: &b)
        return b
    }

    func ok(_ status: MySQLServerStatus = .autocommit) -> ByteBuffer {
        var b = ByteBuffer()
        MySQLOKPacket(status: status).encode(into: &b, capabilities: caps)
        return b
    }

    func err(_ code: UInt16, _ message: String) -> ByteBuffer {
        var b = ByteBuffer()
        MySQLErrPacket(code: code, message: message).encode(into: &b)
        return b
    }

    /// The bytes of each buffer of a send action, joined.
    func sent(_ action: MySQLSessionMachine.Action) -> [UInt8]? {
        guard case .sendToBackend(let buffers) = action else { return nil }
        return buffers.flatMap { Array($0.readableBytesView) }
    }

    /// The payloads of the packets in `bytes`.
    func packets(_ bytes: [UInt8]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var i = 0
        while i + 4 <= bytes.count {
            let length = Int(bytes[i]) | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2]) << 16
            out.append(Array(bytes[(i + 4)..<(i + 4 + length)]))
            i += 4 + length
        }
        return out
    }

    func statementID(_ payload: [UInt8]) -> UInt32 {
        UInt32(payload[1]) | UInt32(payload[2]) << 8 | UInt32(payload[3]) << 16 | UInt32(payload[4]) << 24
    }

    func cache(capacity: Int = 8) -> MySQLBackendStatementCache {
        MySQLBackendStatementCache(maxPreparedStatements: capacity * 10, maxConnections: 10)
    }

    /// Borrows for the held command(s) with `cache` as the backend's statements.
    func lease(_ machine: inout MySQLSessionMachine, _ cache: MySQLBackendStatementCache) -> MySQLSessionMachine.Action {
        machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false, statements: cache)
    }

    /// Prepares "SELECT ?" through the machine on `cache`'s backend (backend id `backendID`):
    /// the client's id comes back.
    func prepared(_ machine: inout MySQLSessionMachine, on cache: MySQLBackendStatementCache, backendID: UInt32) throws -> UInt32 {
        guard case .borrow = receive(&machine, prepare("SELECT ?")) else { XCTFail("borrow"); return 0 }
        XCTAssertNotNil(sent(lease(&machine, cache)), "the client's prepare goes to the backend")
        guard case .forwardToClientRewritingStatementID(let id) = try machine.serverPacket(prepareOK(id: backendID)) else {
            XCTFail("the prepare's OK goes to the client with the proxy's id"); return 0
        }
        XCTAssertEqual(try machine.serverPacket(definition()).isForward, true)
        // Prepared: the backend goes back with the answer's last packet.
        guard case .forwardToClientAndRelease = try machine.serverPacket(eof()) else {
            XCTFail("the backend goes back after the prepare"); return id
        }
        XCTAssertFalse(machine.needsResume)
        XCTAssertEqual(machine.pins, [])
        return id
    }

    func testAPrepareDoesNotPinAndTheClientSeesItsOwnID() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let backend = cache()
        let id = try prepared(&machine, on: backend, backendID: 77)
        XCTAssertEqual(id, 1)
        XCTAssertEqual(machine.state, .idle)
        XCTAssertEqual(backend.count, 1)
        XCTAssertEqual(machine.statements[id]?.parameterCount, 1)
    }

    func testAnExecuteOnAnotherBackendPreparesThereFirstAndSendsTheTypesTheClientLeftOut() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let first = cache(), second = cache()
        let id = try prepared(&machine, on: first, backendID: 77)

        // First execute, with types, on the first backend: the backend's id replaces the client's.
        guard case .borrow = receive(&machine, execute(id, types: true)) else { return XCTFail() }
        let one = try XCTUnwrap(sent(lease(&machine, first)))
        XCTAssertEqual(packets(one).map { statementID($0) }, [77])
        guard case .forwardToClientAndRelease = try machine.serverPacket(ok()) else { return XCTFail() }

        // Second execute, without types, on the other backend: prepared there (consumed), then
        // executed with the types the client sent last time.
        guard case .borrow = receive(&machine, execute(id, value: 8, types: false)) else { return XCTFail() }
        let preparing = try XCTUnwrap(sent(lease(&machine, second)))
        XCTAssertEqual(packets(preparing).map { $0[0] }, [MySQLCommand.stmtPrepare.rawValue])
        XCTAssertEqual(Array(packets(preparing)[0].dropFirst()), Array("SELECT ?".utf8))
        guard case .none = try machine.serverPacket(prepareOK(id: 5)) else { return XCTFail("the proxy's own prepare is not the client's") }
        guard case .none = try machine.serverPacket(definition()) else { return XCTFail() }
        guard case .none = try machine.serverPacket(eof()) else { return XCTFail() }
        XCTAssertTrue(machine.needsResume)
        let executing = try XCTUnwrap(sent(machine.resume()))
        let payload = try XCTUnwrap(packets(executing).first)
        XCTAssertEqual(statementID(payload), 5)
        XCTAssertEqual(payload[11], 1, "new_params_bound_flag set by the proxy")
        XCTAssertEqual(Array(payload[12..<14]), [8, 0], "the client's BIGINT type")
        XCTAssertEqual(Array(payload[14..<22]), [8, 0, 0, 0, 0, 0, 0, 0], "the client's value")
        guard case .forwardToClientAndRelease = try machine.serverPacket(ok()) else { return XCTFail() }

        // Once bound there, later executes without types go as they are.
        guard case .borrow = receive(&machine, execute(id, value: 9, types: false)) else { return XCTFail() }
        let again = try XCTUnwrap(packets(XCTUnwrap(sent(lease(&machine, second)))).first)
        XCTAssertEqual(statementID(again), 5)
        XCTAssertEqual(again[11], 0)
        XCTAssertEqual(machine.pins, [])
    }

    func testALazyPrepareThatFailsAnswersTheExecuteWithTheServersError() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let id = try prepared(&machine, on: cache(), backendID: 1)
        guard case .borrow = receive(&machine, execute(id, types: true)) else { return XCTFail() }
        XCTAssertNotNil(sent(lease(&machine, cache())))
        // The table went since (DDL): the server's error is the execute's answer, as directly.
        guard case .forwardToClient = try machine.serverPacket(err(1146, "Table 'app.t' doesn't exist")) else {
            return XCTFail("the prepare's error answers the execute")
        }
        // Kept for the client's SHOW WARNINGS / SHOW ERRORS, as after any error.
        XCTAssertEqual(machine.state, .attached)
        XCTAssertFalse(machine.needsResume)
        // The next command runs there.
        guard case .forwardToBackend = receive(&machine, command("SHOW ERRORS")) else { return XCTFail() }
    }

    func command(_ sql: String) -> MySQLSessionMachine.Command {
        packet(.query) { $0.writeString(sql) }
    }

    func testUnknownStatementsAndCursorlessFetchesAreAnsweredWithoutABackend() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .answerClient(let unknown) = receive(&machine, execute(42, types: true)) else { return XCTFail() }
        XCTAssertEqual(unknown.code, 1243)
        XCTAssertEqual(unknown.message, "Unknown prepared statement handler (42) given to mysqld_stmt_execute")
        let id = try prepared(&machine, on: cache(), backendID: 1)
        guard case .answerClient(let noCursor) = receive(&machine, statementCommand(.stmtFetch, id) { $0.writeInteger(UInt32(10), endianness: .little) }) else { return XCTFail() }
        XCTAssertEqual(noCursor.code, 1421)
        guard case .answerOK = receive(&machine, statementCommand(.stmtReset, id)) else { return XCTFail() }
        guard case .none = receive(&machine, statementCommand(.stmtClose, id)) else { return XCTFail() }
        XCTAssertNil(machine.statements[id])
        XCTAssertEqual(machine.state, .idle, "nothing borrowed")
    }

    func testLongDataWaitsForTheExecuteAndGoesBeforeItWithTheBackendsID() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let backend = cache()
        let id = try prepared(&machine, on: backend, backendID: 31)
        let longData = statementCommand(.stmtSendLongData, id) {
            $0.writeInteger(UInt16(0), endianness: .little)
            $0.writeString("a long value")
        }
        guard case .none = receive(&machine, longData) else { return XCTFail("held, no backend") }
        XCTAssertEqual(machine.state, .idle)
        guard case .borrow = receive(&machine, execute(id, types: true)) else { return XCTFail() }
        let out = packets(try XCTUnwrap(sent(lease(&machine, backend))))
        XCTAssertEqual(out.map { $0[0] }, [MySQLCommand.stmtSendLongData.rawValue, MySQLCommand.stmtExecute.rawValue])
        XCTAssertEqual(out.map { statementID($0) }, [31, 31])
        XCTAssertEqual(Array(out[0][7...]), Array("a long value".utf8))
    }

    func testACursorKeepsItsBackendUntilItsLastRow() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let backend = cache()
        let id = try prepared(&machine, on: backend, backendID: 9)
        guard case .borrow = receive(&machine, execute(id, types: true, cursor: true)) else { return XCTFail() }
        XCTAssertNotNil(sent(lease(&machine, backend)))
        var count = ByteBuffer()
        count.writeMySQLLengthEncodedInteger(1)
        _ = try machine.serverPacket(count)
        _ = try machine.serverPacket(definition())
        guard case .forwardToClient = try machine.serverPacket(eof([.autocommit, .cursorExists])) else {
            return XCTFail("an open cursor keeps the backend")
        }
        XCTAssertEqual(machine.openCursors, [id])
        let fetch = statementCommand(.stmtFetch, id) { $0.writeInteger(UInt32(2), endianness: .little) }
        let fetched = packets(try XCTUnwrap(sent(receive(&machine, fetch))))
        XCTAssertEqual(fetched.map { statementID($0) }, [9])
        _ = try machine.serverPacket(ByteBuffer(bytes: [0x00, 0x00, 1, 0, 0, 0, 0, 0, 0, 0]))
        guard case .forwardToClient = try machine.serverPacket(eof([.autocommit, .cursorExists])) else { return XCTFail() }
        _ = receive(&machine, fetch)
        guard case .forwardToClientAndRelease = try machine.serverPacket(eof([.autocommit, .lastRowSent])) else {
            return XCTFail("the last row releases the backend")
        }
        XCTAssertEqual(machine.openCursors, [])
    }

    func testAFullCacheClosesItsLeastRecentlyUsedStatement() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let backend = MySQLBackendStatementCache(maxPreparedStatements: 10, maxConnections: 10)
        XCTAssertEqual(backend.capacity, 1)
        _ = try prepared(&machine, on: backend, backendID: 1)
        guard case .borrow = receive(&machine, prepare("SELECT ? + 1")) else { return XCTFail() }
        let out = packets(try XCTUnwrap(sent(lease(&machine, backend))))
        XCTAssertEqual(out.map { $0[0] }, [MySQLCommand.stmtClose.rawValue, MySQLCommand.stmtPrepare.rawValue])
        XCTAssertEqual(statementID(out[0]), 1)
    }

    /// Found by Connector/J's workload, 50 threads over 5 backends: a client statement
    /// remembered where it was found by the cache's address, and a backend closed and replaced
    /// got a cache at the same address, where the remembered slot held another statement: the
    /// execute ran that one ("Data too long for column").
    func testAStatementIsNotFoundInANewCacheAtAnOldOnesAddress() {
        let one = MySQLStatementKey(schema: "app", sql: Array("INSERT INTO t (k, v) VALUES (?, ?)".utf8))
        let other = MySQLStatementKey(schema: "app", sql: Array("INSERT INTO t (v, k) VALUES (?, ?)".utf8))
        var statement = MySQLClientStatement(key: one, parameterCount: 2)
        for _ in 0..<100 {
            do {
                let closed = cache()
                closed.insert(one, backendID: 1)
                XCTAssertNotNil(closed.find(&statement))
            }
            let replacement = cache()
            replacement.insert(other, backendID: 2)
            XCTAssertNil(replacement.find(&statement), "the new backend does not have the statement")
        }
    }

    func testMariaDBsLastStatementIDFollowsAPipelinedPrepare() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        let backend = cache()
        guard case .borrow = receive(&machine, prepare("SELECT ?")) else { return XCTFail() }
        guard case .none = receive(&machine, execute(0xFFFF_FFFF, types: true)) else { return XCTFail() }
        let first = packets(try XCTUnwrap(sent(lease(&machine, backend))))
        XCTAssertEqual(first.map { $0[0] }, [MySQLCommand.stmtPrepare.rawValue], "the execute waits for the prepare's answer")
        guard case .forwardToClientRewritingStatementID(1) = try machine.serverPacket(prepareOK(id: 12)) else { return XCTFail() }
        _ = try machine.serverPacket(definition())
        _ = try machine.serverPacket(eof())
        let second = packets(try XCTUnwrap(sent(machine.resume())))
        XCTAssertEqual(second.map { statementID($0) }, [12])
    }
}

extension MySQLSessionMachine.Action {
    var isForward: Bool {
        if case .forwardToClient = self { return true }
        return false
    }
}
