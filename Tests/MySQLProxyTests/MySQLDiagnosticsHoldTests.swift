import MySQLWire
import NIOCore
import XCTest
@testable import MySQLProxy

extension MySQLSessionMachineTests {
    /// A backend kept for the client's diagnostics can be let go before the next command when
    /// its pool retired it (a failover): the command then borrows another. Found by
    /// test_mysql_failover.py: after a switchover by read_only, a writer whose INSERT got the
    /// demoted primary's 1290 kept that backend, so each next INSERT went there and got 1290
    /// again, for ever.
    func testADiagnosticsHoldIsDroppedForTheNextCommandOnRequest() throws {
        var machine = attached("INSERT INTO t VALUES (1)")
        let readOnly = err(1290, "The MariaDB server is running with the --read-only option so it cannot execute this statement")
        XCTAssertTrue(isForward(try machine.serverPacket(readOnly)), "kept for SHOW WARNINGS")
        XCTAssertEqual(machine.state, .attached)
        guard case .release(reusable: false) = machine.dropDiagnosticsHold() else {
            return XCTFail("the retired backend goes, not reused")
        }
        XCTAssertEqual(machine.state, .idle)
        guard case .borrow = send(&machine, "INSERT INTO t VALUES (2)") else {
            return XCTFail("the next command borrows another backend")
        }
    }

    func testOnlyADiagnosticsHoldIsDropped() throws {
        // Nothing held for diagnostics: nothing to drop.
        var machine = attached("SELECT 1")
        XCTAssertTrue(isRelease(try machine.serverPacket(ok(.autocommit))))
        guard case .none = machine.dropDiagnosticsHold() else { return XCTFail("not holding") }

        // A transaction keeps its backend whatever its diagnostics: its client's work is there.
        machine = attached("BEGIN")
        XCTAssertTrue(isForward(try machine.serverPacket(ok([.autocommit, .inTransaction]))))
        guard case .forwardToBackend = send(&machine, "INSERT INTO t VALUES (1)") else { return XCTFail("same backend") }
        XCTAssertTrue(isForward(try machine.serverPacket(err(1290, "read-only"))))
        guard case .none = machine.dropDiagnosticsHold() else { return XCTFail("the transaction keeps it") }
        XCTAssertEqual(machine.state, .attached)
        guard case .forwardToBackend = send(&machine, "ROLLBACK") else { return XCTFail("same backend") }

        // A pinned session too (a user variable lives on that backend).
        machine = attached("SET @x = 1")
        XCTAssertTrue(isForward(try machine.serverPacket(err(1290, "read-only"))))
        guard case .none = machine.dropDiagnosticsHold() else { return XCTFail("the pin keeps it") }
        XCTAssertEqual(machine.state, .attached)
    }
}
