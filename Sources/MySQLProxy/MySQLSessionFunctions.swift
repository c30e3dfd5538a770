import NIOCore
import MySQLWire
import SQLClassifier

/// What `ROW_COUNT()` and `FOUND_ROWS()` answer on the client's connection, followed from the
/// responses to its commands. MySQL keeps both per connection and they describe the previous
/// statement; under multiplexing the next statement may run on another backend, where they
/// describe another client's statement. The proxy follows them here and answers a `SELECT` of
/// the bare functions itself (`MySQLProxyAnswerable.select`).
///
/// Followed as MariaDB 10.11 sets them (checked statement by statement against the server):
/// - `ROW_COUNT()`: the last result's: an OK's affected rows (with CLIENT_FOUND_ROWS, the rows
///   matched, as the OK says); -1 after a result set or an error. Also after a CALL (its final
///   OK carries the last statement's count) and several statements in one COM_QUERY.
/// - `FOUND_ROWS()`: the rows a `SELECT`, `SHOW` (but SHOW WARNINGS / ERRORS) or `DESCRIBE`
///   returned; unchanged by other statements and by errors. After a CALL, several statements
///   or a binary-protocol execution: the rows of the response's last result set, unchanged
///   when it had none.
/// Unknown (nil) after what the proxy cannot follow: one statement with a `SELECT` inside that
/// answers with an OK (`INSERT ... SELECT`, `CREATE ... SELECT`, `UPDATE ... WHERE x IN
/// (SELECT ...)`, `SELECT ... INTO`), for which the backend is kept for the client's next
/// command (where it reads the value itself); several statements or a CALL with a `SELECT`
/// inside another statement, SQL_CALC_FOUND_ROWS (which pins: the backend answers), and rare
/// commands. An unknown value is not answered by the proxy: a client without a backend that
/// asks for it runs the statement on one and is pinned (`row_count_found_rows`).
public struct MySQLSessionFunctions: Sendable, Hashable {
    /// nil: unknown. A new MariaDB session answers 0.
    public var rowCount: Int64? = 0
    /// nil: unknown. A new MariaDB session answers 1.
    public var foundRows: UInt64? = 1
    /// The last response left a value unknown that the backend knows: it stays for one command.
    public private(set) var holdForNextCommand = false
    /// What each command in flight does to the values, in order.
    private var pending: [Effect] = []

    public init() {}

    /// How a command changes the values (decided from its classification when it is sent).
    public enum Effect: Sendable, Hashable {
        /// A COM_QUERY of one statement of this kind.
        case statement(MySQLStatementKind, containsSelect: Bool)
        /// A COM_QUERY of several statements, or a CALL; `containsSelect`: a SELECT inside
        /// another statement (FOUND_ROWS() is then unknown).
        case several(containsSelect: Bool)
        /// COM_STMT_EXECUTE.
        case execute
        /// Effects the proxy does not follow.
        case unknown
        /// COM_INIT_DB (`USE`) and COM_PING: ROW_COUNT() 0, FOUND_ROWS() unchanged.
        case initDB
        /// COM_STATISTICS, COM_STMT_PREPARE and the like: no statement runs.
        case noChange
    }

    /// The effect of a COM_QUERY with this classification.
    public static func effect(of classification: MySQLClassification) -> Effect {
        // FOUND_ROWS() after SQL_CALC_FOUND_ROWS counts rows the result set did not carry.
        if classification.pinReasons.contains(.foundRows) { return .unknown }
        if classification.statementCount != 1 || classification.kind == .call {
            return .several(containsSelect: classification.containsSelect)
        }
        return .statement(classification.kind, containsSelect: classification.containsSelect)
    }

    /// A command that has a response was sent (or held for a backend).
    public mutating func commandSent(_ effect: Effect) {
        pending.append(effect)
    }

    /// The oldest command in flight ran no statement: the proxy answered it (a statement
    /// command for an unknown statement, a reset with no cursor), or it was a COM_STMT_FETCH or
    /// COM_STMT_RESET of a cursor (the execute that opened it set the values).
    public mutating func commandRanNoStatement() {
        if !pending.isEmpty { pending.removeFirst() }
    }

    /// The commands in flight will get no response (the borrow failed, the backend was lost).
    public mutating func commandsDropped() {
        pending.removeAll()
    }

    /// The response to the oldest command in flight finished; `tracker` read it.
    public mutating func responseFinished(_ tracker: MySQLResponseTracker) {
        // Nothing registered (a caller that does not follow the functions): read as a plain statement.
        let effect = pending.isEmpty ? .statement(.other, containsSelect: false) : pending.removeFirst()
        let result = tracker.lastResult
        let results = tracker.resultsInLastResponse
        // A ping, a prepare, a field list, statistics: no statement ran, nothing changes (a
        // hold for the next command carries over to the one after).
        guard results > 0, effect != .noChange else { return }
        holdForNextCommand = false
        switch result {
        case .ok(let affected): rowCount = Int64(bitPattern: affected)
        case .resultSet, .error: rowCount = -1
        case .other: rowCount = nil
        }
        switch effect {
        case .unknown:
            rowCount = nil
            foundRows = nil
        case .initDB, .noChange:
            rowCount = 0
        case .several(let containsSelect):
            if containsSelect {
                foundRows = nil
            } else if let rows = tracker.rowsOfLastResultSetInLastResponse {
                foundRows = rows
            }
        case .execute:
            if let rows = tracker.rowsOfLastResultSetInLastResponse { foundRows = rows }
        case .statement(let kind, let containsSelect):
            switch (kind, result) {
            case (_, .error):
                break
            case (.select, .resultSet(let rows)), (.show, .resultSet(let rows)), (.describe, .resultSet(let rows)):
                foundRows = rows
            case (.select, _), (.show, _), (.describe, _):
                // SELECT ... INTO: an OK, after rows the client did not see.
                foundRows = nil
                holdForNextCommand = true
            case (.showDiagnostics, _), (.explainOrHelp, _):
                break
            default:
                if containsSelect {
                    foundRows = nil
                    holdForNextCommand = true
                }
            }
            // The realistic reader of ROW_COUNT() or FOUND_ROWS() is the very next statement.
            if rowCount == nil { holdForNextCommand = true }
        }
    }

    /// A command the proxy answered itself with a one-row result set (`SELECT ROW_COUNT()`):
    /// on the server, a result set makes ROW_COUNT() -1 and its one row FOUND_ROWS() 1.
    public mutating func answeredOneRow() {
        rowCount = -1
        foundRows = 1
        holdForNextCommand = false
    }

    /// The client reset its connection (COM_RESET_CONNECTION), or the proxy answered its
    /// COM_PING: MariaDB then answers ROW_COUNT() 0 and keeps FOUND_ROWS().
    public mutating func reset() {
        rowCount = 0
        holdForNextCommand = false
    }
}

extension MySQLSessionMachine {
    /// Whether the proxy may answer a command itself now: nothing of the client's is in flight
    /// or waiting for a backend (an answer must not overtake an earlier command's response).
    public var canAnswerWithoutBackend: Bool {
        switch state {
        case .idle: return true
        case .attached: return tracker.isIdle && !sendingInfile
        case .borrowing, .restoring, .closed: return false
        }
    }

    /// The values of a proxy-answered `SELECT` of session functions (text, as the server writes
    /// them), or nil when the proxy cannot answer it now (a value unknown, something in flight).
    /// `connectionID` is the id the client's handshake gave. On an answer the values change as
    /// the server's would after it.
    public mutating func answerSessionSelect(_ columns: [MySQLSessionFunctionColumn], connectionID: UInt32) -> [String]? {
        guard canAnswerWithoutBackend else { return nil }
        // ROW_COUNT(), FOUND_ROWS() and LAST_INSERT_ID() only without a backend: a backend the
        // client holds ran its previous statement and answers them itself (SQL_CALC_FOUND_ROWS,
        // which pins, is read there). CONNECTION_ID() is the proxy's id, backend or not.
        if state != .idle, columns.contains(where: { $0.function != .connectionID }) { return nil }
        var values: [String] = []
        values.reserveCapacity(columns.count)
        for column in columns {
            switch column.function {
            case .rowCount:
                guard let value = functions.rowCount else { return nil }
                values.append(String(value))
            case .foundRows:
                guard let value = functions.foundRows else { return nil }
                values.append(String(value))
            case .connectionID:
                values.append(String(connectionID))
            case .lastInsertID:
                // What a lease would set on the backend that ran it (`MySQLRestorePlan`).
                values.append(String(client.lastInsertID))
            }
        }
        functions.answeredOneRow()
        return values
    }

    /// Registers a command's effect on the values (`MySQLSessionFunctions.Effect`); called by
    /// the handler after `commandReceived` for a command that gets a response.
    public mutating func noteCommandForFunctions(code: UInt8, classification: MySQLClassification?, after action: Action) {
        guard state != .closed else { return }
        switch action {
        case .answerPing:
            functions.reset()
            return
        case .answerClient, .answerOK:
            // A statement command the proxy answered at once (MySQLSessionMachine.withoutBackend).
            return
        default:
            break
        }
        let command = MySQLCommand(rawValue: code) ?? .query
        guard MySQLResponseTracker.expectation(for: command) != .none else { return }
        if let classification {
            functions.commandSent(MySQLSessionFunctions.effect(of: classification))
        } else if command == .initDB || command == .ping {
            functions.commandSent(.initDB)
        } else if command == .stmtExecute {
            functions.commandSent(.execute)
        } else if command == .statistics || command == .stmtPrepare || command == .fieldList {
            functions.commandSent(.noChange)
        } else {
            functions.commandSent(.unknown)
        }
    }
}

extension MySQLSessionFunctions {
    /// The result set MariaDB sends for a `SELECT` of these functions, byte for byte (captured
    /// from MariaDB 10.11): per column `def`, empty schema and tables, the column's name, no
    /// original name, binary charset (63), and the function's type: `ROW_COUNT()` and
    /// `FOUND_ROWS()` a BIGINT (LONGLONG, length 21, NOT_NULL | BINARY), `LAST_INSERT_ID()` a
    /// BIGINT UNSIGNED, `CONNECTION_ID()` an INT UNSIGNED (LONG, length 10, NOT_NULL | UNSIGNED |
    /// BINARY); the EOF after the columns
    /// unless DEPRECATE_EOF, one text row, then an EOF, or with DEPRECATE_EOF an OK with a 0xFE
    /// header. Sequence ids from 1 (the answer to the client's command). No warnings: MariaDB
    /// reports none for these, and an answered statement leaves the diagnostics area alone.
    public static func resultSet(
        columns: [MySQLSessionFunctionColumn], values: [String], status: MySQLServerStatus,
        capabilities: MySQLCapabilities, into out: inout ByteBuffer
    ) {
        var sequenceID: UInt8 = 1
        sequenceID = out.writeMySQLPacket(sequenceID: sequenceID) { $0.writeMySQLLengthEncodedInteger(UInt64(columns.count)) }
        for column in columns {
            sequenceID = out.writeMySQLPacket(sequenceID: sequenceID) { payload in
                payload.writeMySQLLengthEncodedString("def")
                payload.writeMySQLLengthEncodedString("")  // schema
                payload.writeMySQLLengthEncodedString("")  // table
                payload.writeMySQLLengthEncodedString("")  // original table
                payload.writeMySQLLengthEncodedString(column.name)
                payload.writeMySQLLengthEncodedString("")  // original name
                payload.writeInteger(UInt8(0x0C))
                payload.writeInteger(UInt16(63), endianness: .little)
                let isConnectionID = column.function == .connectionID
                payload.writeInteger(UInt32(isConnectionID ? 10 : 21), endianness: .little)
                payload.writeInteger(UInt8(isConnectionID ? 0x03 : 0x08))
                // UNSIGNED for the ids.
                let unsigned = isConnectionID || column.function == .lastInsertID
                payload.writeInteger(UInt16(unsigned ? 0x00A1 : 0x0081), endianness: .little)
                payload.writeInteger(UInt8(0))  // decimals
                payload.writeInteger(UInt16(0))  // filler
            }
        }
        let deprecateEOF = capabilities.contains(.deprecateEOF)
        if !deprecateEOF {
            sequenceID = out.writeMySQLPacket(sequenceID: sequenceID) { eof(&$0, status: status) }
        }
        sequenceID = out.writeMySQLPacket(sequenceID: sequenceID) { payload in
            for value in values { payload.writeMySQLLengthEncodedString(value) }
        }
        _ = out.writeMySQLPacket(sequenceID: sequenceID) { payload in
            if deprecateEOF {
                payload.writeInteger(UInt8(0xFE))
                payload.writeInteger(UInt8(0))  // affected rows
                payload.writeInteger(UInt8(0))  // last insert id
                payload.writeInteger(status.rawValue, endianness: .little)
                payload.writeInteger(UInt16(0), endianness: .little)  // warnings
            } else {
                eof(&payload, status: status)
            }
        }
    }

    private static func eof(_ payload: inout ByteBuffer, status: MySQLServerStatus) {
        payload.writeInteger(UInt8(0xFE))
        payload.writeInteger(UInt16(0), endianness: .little)  // warnings
        payload.writeInteger(status.rawValue, endianness: .little)
    }
}
