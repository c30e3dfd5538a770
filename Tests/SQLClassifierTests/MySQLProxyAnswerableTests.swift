import SQLClassifier
import XCTest

/// The statements a MySQL proxy answers itself: KILL of a proxy connection id, and SELECTs of
/// ROW_COUNT(), FOUND_ROWS(), CONNECTION_ID().
final class MySQLProxyAnswerableTests: XCTestCase {
    func testKillForms() {
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL 12"), .kill(id: 12, query: false))
        XCTAssertEqual(MySQLProxyAnswerable.parse("kill connection 12;"), .kill(id: 12, query: false))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL QUERY 12"), .kill(id: 12, query: true))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL HARD QUERY 12"), .kill(id: 12, query: true))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL SOFT CONNECTION /* c */ 12"), .kill(id: 12, query: false))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL -1"), .kill(id: UInt64.max, query: false))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL 99999999999"), .kill(id: 99_999_999_999, query: false))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL QUERY CONNECTION_ID()"), .killSelf(query: true))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL QUERY ID 5"), .killQueryID(5))
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL USER app"), .killUnsupported)
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL 1+1"), .killUnsupported)
        XCTAssertEqual(MySQLClassifier.classify("KILL 5").kind, .kill)
        XCTAssertEqual(MySQLClassifier.classify("/* x */ kill query 5").kind, .kill)
        XCTAssertEqual(MySQLClassifier.classify("SELECT 1; KILL 5").kind, .kill)
        XCTAssertEqual(MySQLProxyAnswerable.parse("KILL 5; SELECT 1"), .killUnsupported)
    }

    func testSessionFunctionSelects() {
        XCTAssertEqual(MySQLProxyAnswerable.parse("SELECT ROW_COUNT()"), .select([.init(function: .rowCount, name: "ROW_COUNT()")]))
        XCTAssertEqual(
            MySQLProxyAnswerable.parse("select row_count( ) x, found_rows() AS `n`, CONNECTION_ID() 'id';"),
            .select([
                .init(function: .rowCount, name: "x"), .init(function: .foundRows, name: "n"),
                .init(function: .connectionID, name: "id"),
            ]))
        XCTAssertNil(MySQLProxyAnswerable.parse("SELECT ROW_COUNT() + 1"))
        XCTAssertNil(MySQLProxyAnswerable.parse("SELECT ROW_COUNT() FROM t"))
        XCTAssertNil(MySQLProxyAnswerable.parse("SELECT ROW_COUNT (), 1"))
        XCTAssertNil(MySQLProxyAnswerable.parse("SELECT db.ROW_COUNT()"))
        XCTAssertEqual(
            MySQLProxyAnswerable.parse("SELECT LAST_INSERT_ID() id, ROW_COUNT()"),
            .select([.init(function: .lastInsertID, name: "id"), .init(function: .rowCount, name: "ROW_COUNT()")]))
        XCTAssertNil(MySQLProxyAnswerable.parse("SELECT LAST_INSERT_ID(5)"))
        XCTAssertTrue(MySQLClassifier.classify("SELECT LAST_INSERT_ID()").mentionsSessionFunction)
        XCTAssertFalse(MySQLClassifier.classify("SELECT LAST_INSERT_ID()").pins)
    }

    func testTheClassifierFlagsSessionFunctionsAndPinsOnlyRowCountAndFoundRows() {
        let select = MySQLClassifier.classify("INSERT INTO log VALUES (ROW_COUNT())")
        XCTAssertTrue(select.mentionsSessionFunction)
        XCTAssertTrue(select.pinReasons.contains(.sessionFunction))
        let id = MySQLClassifier.classify("SELECT * FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        XCTAssertTrue(id.mentionsSessionFunction)
        XCTAssertFalse(id.pinReasons.contains(.sessionFunction))
        XCTAssertFalse(MySQLClassifier.classify("SELECT 'ROW_COUNT()', db.found_rows()").mentionsSessionFunction)
        XCTAssertEqual(MySQLPinReasons.sessionFunction.names, ["row_count_found_rows"])
    }

    func testStatementKinds() {
        XCTAssertEqual(MySQLClassifier.classify("SELECT 1").kind, .select)
        XCTAssertEqual(MySQLClassifier.classify("(SELECT 1)").kind, .select)
        XCTAssertEqual(MySQLClassifier.classify("SHOW TABLES").kind, .show)
        XCTAssertEqual(MySQLClassifier.classify("SHOW WARNINGS").kind, .showDiagnostics)
        XCTAssertEqual(MySQLClassifier.classify("DESC t").kind, .describe)
        XCTAssertEqual(MySQLClassifier.classify("DESC SELECT 1").kind, .explainOrHelp)
        XCTAssertEqual(MySQLClassifier.classify("CALL p()").kind, .call)
        XCTAssertEqual(MySQLClassifier.classify("INSERT INTO t VALUES (1)").kind, .other)
        XCTAssertFalse(MySQLClassifier.classify("INSERT INTO t VALUES (1)").containsSelect)
        XCTAssertTrue(MySQLClassifier.classify("INSERT INTO t SELECT * FROM u").containsSelect)
        XCTAssertFalse(MySQLClassifier.classify("SELECT 1").containsSelect)
    }
}
