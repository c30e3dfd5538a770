import MySQLWire
import NIOCore
import SQLClassifier
import XCTest
@testable import MySQLProxy

/// COM_QUIT from a client that holds a backend: the backend goes back to the pool for reuse only
/// when nothing of the client's is left on it. An open transaction must die with the client (the
/// server rolls it back when the connection closes), never be handed on.
final class MySQLSessionQuitTests: XCTestCase {
    let caps: MySQLCapabilities = [.protocol41, .transactions, .sessionTrack, .multiResults, .multiStatements]

    func packet(_ code: MySQLCommand, _ text: String = "") -> MySQLSessionMachine.Command {
        var bytes = ByteBuffer()
        bytes.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(code.rawValue)
            payload.writeString(text)
        }
        return .init(code: code.rawValue, bytes: bytes)
    }

    func ok(_ status: MySQLServerStatus) -> ByteBuffer {
        var buffer = ByteBuffer()
        MySQLOKPacket(status: status).encode(into: &buffer, capabilities: caps)
        return buffer
    }

    /// A machine whose backend ran `sql` and answered OK with `status`.
    func machine(after sql: String, status: MySQLServerStatus) throws -> MySQLSessionMachine {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .borrow = machine.commandReceived(packet(.query, sql), classification: MySQLClassifier.classify(sql)) else {
            XCTFail("expected a borrow"); return machine
        }
        guard case .sendToBackend = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false) else {
            XCTFail("expected the command to go out"); return machine
        }
        _ = try machine.serverPacket(ok(status))
        return machine
    }

    func quit(_ machine: inout MySQLSessionMachine) -> MySQLSessionMachine.Action {
        machine.commandReceived(packet(.quit), classification: nil)
    }

    /// mysqlclient (autocommit off by default) inserts and closes without COMMIT: the backend
    /// held the open transaction. Given back for reuse, the next client's restore
    /// (`SET SESSION autocommit = DEFAULT`) committed the insert, and until then its locks
    /// blocked other clients (a DROP TABLE waited forever in mysqlclient's test suite).
    func testQuitWithAutocommitOffAndATransactionOpenDoesNotReuseTheBackend() throws {
        var machine = try machine(after: "INSERT INTO t VALUES (1)", status: .inTransaction)
        XCTAssertTrue(machine.holdsBackend)
        guard case .close(nil) = quit(&machine) else { return XCTFail("the backend must not be reused") }
        XCTAssertEqual(machine.state, .closed)
    }

    func testQuitInsideAnExplicitTransactionDoesNotReuseTheBackend() throws {
        var machine = try machine(after: "BEGIN", status: [.autocommit, .inTransaction])
        guard case .close(nil) = quit(&machine) else { return XCTFail("the backend must not be reused") }
    }

    /// Autocommit off, no IN_TRANS reported: a failed statement's ERR carries no status, so the
    /// proxy cannot tell whether it left a transaction open; the backend is not reused either.
    func testQuitWithAutocommitOffDoesNotReuseTheBackend() throws {
        var machine = try machine(after: "SET autocommit = 0", status: [])
        guard case .close(nil) = quit(&machine) else { return XCTFail("the backend must not be reused") }
    }

    func testQuitBetweenTransactionsOfAPinnedSessionWithoutStateStillQuits() throws {
        // A held backend with autocommit on, no transaction, no pin (kept for the diagnostics
        // area after a warning): reusable.
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        _ = machine.commandReceived(packet(.query, "SELECT 1"), classification: MySQLClassifier.classify("SELECT 1"))
        _ = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false)
        var warning = ByteBuffer()
        MySQLOKPacket(status: .autocommit, warnings: 1).encode(into: &warning, capabilities: caps)
        _ = try machine.serverPacket(warning)
        XCTAssertTrue(machine.holdsBackend, "a response with warnings keeps the backend")
        guard case .quit = quit(&machine) else { return XCTFail("nothing of the client's is on the backend") }
    }
}
