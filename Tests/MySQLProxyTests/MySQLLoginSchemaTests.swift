import MySQLWire
import NIOCore
import XCTest
@testable import MySQLProxy

/// A login naming a schema the proxy has not seen on the database is checked with a lease
/// before the login OK (`verifyLoginSchema`): a MySQL server refuses such a login itself
/// (1049 Unknown database, 1044), and through the proxy the client only learnt it at its first
/// command.
extension MySQLSessionMachineTests {
    func testLoginSchemaAFreshBackendSelectsItThenTheLoginStandsAndTheBackendGoesBack() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        guard case .borrow = machine.verifyLoginSchema() else { return XCTFail("a lease checks the schema") }
        XCTAssertTrue(machine.verifyingLoginSchema)
        XCTAssertFalse(machine.isBetweenTransactions, "waiting for a backend")
        guard case .sendInitDB("app") = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail("the restore selects the login schema")
        }
        guard case .loginStands(schemaChecked: true) = try machine.serverPacket(ok(.autocommit, changes: [.schema("app")])) else {
            return XCTFail("the schema is there: the login stands")
        }
        XCTAssertFalse(machine.verifyingLoginSchema)
        XCTAssertEqual(machine.state, .idle, "the backend goes back; the next command borrows")
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
    }

    func testLoginSchemaABackendThatHasItAlreadyProvesIt() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        _ = machine.verifyLoginSchema()
        guard case .loginStands(schemaChecked: true) = machine.borrowed(backendState: .init(schema: "app"), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail("the same user's backend had it selected")
        }
        XCTAssertEqual(machine.state, .idle)
    }

    func testLoginSchemaUnknownIsTheLoginsError() throws {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "no_such_db")
        _ = machine.verifyLoginSchema()
        guard case .sendInitDB("no_such_db") = machine.borrowed(backendState: .init(), baseline: [:], noBackslashEscapes: false) else {
            return XCTFail()
        }
        var refusal = ByteBuffer()
        MySQLErrPacket(code: 1049, sqlState: "42000", message: "Unknown database 'no_such_db'").encode(into: &refusal)
        guard case .close(let error?) = try machine.serverPacket(refusal) else { return XCTFail("the login fails") }
        XCTAssertEqual(error.code, 1049)
        XCTAssertEqual(error.sqlState, "42000")
        XCTAssertEqual(machine.state, .closed)
    }

    func testLoginSchemaNoBackendLetsTheLoginStandUncheckedAndTheFirstCommandMeetsTheProblem() {
        // The database down or a borrow timeout is not the client's error: its login stands (as
        // a login without a schema does) and its first command gets the borrow's error.
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: "app")
        _ = machine.verifyLoginSchema()
        let timeout = MySQLErrPacket(code: 9501, sqlState: "HY000", message: "Timed-out waiting to acquire database connection")
        guard case .loginStands(schemaChecked: false) = machine.borrowFailed(timeout) else { return XCTFail() }
        XCTAssertFalse(machine.verifyingLoginSchema)
        XCTAssertEqual(machine.state, .idle)
        guard case .borrow = send(&machine, "SELECT 1") else { return XCTFail() }
        guard case .answerClient(let error) = machine.borrowFailed(timeout) else { return XCTFail() }
        XCTAssertEqual(error.code, 9501)
    }

    func testLoginSchemaNoneMeansNothingToCheck() {
        var machine = MySQLSessionMachine(capabilities: caps, loginSchema: nil)
        guard case .loginStands(schemaChecked: false) = machine.verifyLoginSchema() else { return XCTFail() }
        XCTAssertEqual(machine.state, .idle)
    }
}
