import NIOCore
import PostgresWire
import Testing

@testable import ConciergeRuntime
@testable import ConciergeServer
@testable import PostgresServer
import PostgresProxy

/// The proxy's bookkeeping of each backend's statements (PreparedStatements.swift).
@Suite struct BackendStatementCacheTests {
    /// The backend machine closes stale statements with PGEncode's Close: the same bytes as the
    /// session's own Close of a statement.
    @Test func closeOfAStatementIsEncodedAlikeByTheMachineAndTheSession() {
        var session = ByteBuffer()
        StatementMessages.closeStatement("concierge_1f", into: &session)
        var machine = ByteBuffer()
        PGEncode.close(.statement, name: "concierge_1f", into: &machine)
        #expect(session == machine)
    }

    @Test func invalidatingEverythingNeverReusesANameTheServerMayStillHave() {
        var cache = BackendStatementCache()
        let first = cache.parse("concierge_a", at: 1)
        #expect(cache.use("concierge_a") == first)
        // DEALLOCATE ALL on its way: whether it succeeds or not, the next use is a new name.
        cache.invalidateAll()
        #expect(cache.use("concierge_a") == nil)
        let second = cache.parse("concierge_a", at: 1)
        #expect(second != first)
        #expect(cache.use("concierge_a") == second)
        // The old name is closed at the next lease (a Close of a missing name is harmless).
        #expect(cache.takeStale() == [first])
        #expect(cache.takeStale() == [])
    }

    @Test func invalidatingAnEmptyCacheChangesNoName() {
        var cache = BackendStatementCache()
        cache.invalidateAll()
        #expect(cache.parse("concierge_b", at: 1) == "concierge_b")
    }

    @Test func aFailedParseIsForgottenOnlyUnderItsOwnName() {
        var cache = BackendStatementCache()
        let old = cache.parse("k", at: 1)
        cache.invalidateAll()
        let new = cache.parse("k", at: 1)
        cache.forget("k", serverName: old)  // a late failure of the old Parse
        #expect(cache.use("k") == new)
        cache.forget("k", serverName: new)
        #expect(cache.use("k") == nil)
    }

    @Test func aCopyParsedBeforeAClientsOwnParseIsNotUsedForIt() {
        // Another client parsed the text on this backend before DDL; this client parsed it after:
        // the old copy (with the old parameter types) must not serve it.
        var cache = BackendStatementCache()
        let name = cache.parse("k", at: 5)
        #expect(cache.use("k", since: 5) == name)
        #expect(cache.use("k", since: 7) == nil)
        // Parsed again on the backend, under the same name, for every client sharing it.
        #expect(cache.parse("k", at: 8) == name)
        #expect(cache.use("k", since: 7) == name)
        #expect(cache.use("k", since: 5) == name)
        #expect(StatementEpoch.next() < StatementEpoch.next())
    }

    /// The sync SQL is ASCII whatever the values (issue 16: it was parsed in the previous
    /// client's client_encoding), and reads back as the value.
    @Test func aCopysRowTypeIsRecordedOnlyForTheParseItAnswers() {
        var cache = BackendStatementCache()
        let name = cache.parse("k", at: 5)
        #expect(cache.copy("k", since: 5)?.shape == nil)  // its Describe is on its way
        cache.record(shape: 42, key: "k", serverName: name, parsedAt: 4)  // an older Parse's answer
        #expect(cache.shape(of: "k") == nil)
        cache.record(shape: 42, key: "k", serverName: name, parsedAt: 5)
        #expect(cache.copy("k", since: 5)?.shape == 42)
        #expect(cache.copy("k", since: 6) == nil)  // a client that parsed later: not for it
        _ = cache.parse("k", at: 7)  // parsed again: its row type is asked again
        #expect(cache.shape(of: "k") == nil)
        cache.invalidate(key: "k")
        #expect(cache.copy("k", since: 0) == nil)
        #expect(cache.parse("k", at: 8) != name)
    }

    @Test func theRowTypeComparesWhatPostgreSQLComparesAndNotWhereValuesComeFrom() {
        func rowDescription(_ columns: [(name: String, table: UInt32, type: UInt32, length: Int16, modifier: Int32)]) -> ByteBuffer {
            var out = ByteBuffer()
            out.writeInteger(Int16(columns.count))
            for column in columns {
                out.writeString(column.name)
                out.writeInteger(UInt8(0))
                out.writeInteger(column.table)
                out.writeInteger(Int16(1))
                out.writeInteger(column.type)
                out.writeInteger(column.length)
                out.writeInteger(column.modifier)
                out.writeInteger(Int16(0))
            }
            return out
        }
        let int = ResultShape.of(rowDescription: rowDescription([("a", 100, 23, 4, -1), ("b", 100, 23, 4, -1)]))
        #expect(int != nil && int != ResultShape.noRows)
        // Another table with the same columns: the same row type.
        #expect(ResultShape.of(rowDescription: rowDescription([("a", 200, 23, 4, -1), ("b", 200, 23, 4, -1)])) == int)
        // A column's type, type modifier or name changed, or a column more: another row type.
        #expect(ResultShape.of(rowDescription: rowDescription([("a", 100, 23, 4, -1), ("b", 100, 25, -1, -1)])) != int)
        #expect(ResultShape.of(rowDescription: rowDescription([("a", 100, 23, 4, -1), ("b", 100, 23, 4, 8)])) != int)
        #expect(ResultShape.of(rowDescription: rowDescription([("a", 100, 23, 4, -1), ("c", 100, 23, 4, -1)])) != int)
        #expect(ResultShape.of(rowDescription: rowDescription([("a", 100, 23, 4, -1)])) != int)
        // Truncated: no row type at all.
        var truncated = rowDescription([("a", 100, 23, 4, -1)])
        truncated.moveWriterIndex(to: truncated.writerIndex - 3)
        #expect(ResultShape.of(rowDescription: truncated) == nil)
    }

    @Test func parameterSyncSQLIsASCII() {
        let sql = BackendConnection.parameterSyncSQL(
            from: ["x.é": "a"], to: ["search_path": "schéma", "application_name": "ぁ\\' ; 😀"])!
        let ascii = sql.unicodeScalars.allSatisfy { $0.isASCII }
        #expect(ascii, "\(sql)")
        let expected: [String] = [#"E'sch\u00E9ma'"#, #"E'\u3041\\'' ; \U0001F600'"#, #"RESET U&"x.\00E9""#]
        for part in expected {
            #expect(sql.split(separator: part).count > 1 || sql.hasSuffix(part), "\(sql) lacks \(part)")
        }
    }

    @Test func closeIsEncodedAsPostgreSQLExpectsIt() {
        var out = ByteBuffer()
        StatementMessages.closeStatement("s1", into: &out)
        #expect(Array(out.readableBytesView) == [UInt8(ascii: "C"), 0, 0, 0, 8, UInt8(ascii: "S"), UInt8(ascii: "s"), UInt8(ascii: "1"), 0])
    }

    @Test func executeTextNamesTheBackendsStatementInTheClientsBytes() {
        // `EXECUTE foo(1)` with a byte that is not UTF-8 after the name: kept as it came.
        let text = ByteBuffer(bytes: Array("EXECUTE foo(1) -- ".utf8) + [0xFF])
        let rewritten = StatementMessages.executeText(text, naming: 8..<11, as: "concierge_ab")
        #expect(rewritten.map { Array($0.readableBytesView) } == Array("EXECUTE \"concierge_ab\"(1) -- ".utf8) + [0xFF])
        #expect(StatementMessages.executeText(text, naming: 8..<text.readableBytes, as: "x").map { String(buffer: $0) } == "EXECUTE \"x\"")
        #expect(StatementMessages.executeText(text, naming: 8..<(text.readableBytes + 1), as: "x") == nil)
    }

    @Test func afterResetAllTheInitQuerysValuesAreSetAgain() {
        // RESET ALL took the backend to its login defaults: the baseline (init_query) values are
        // lost, so a client that wants them gets them set again; one that wants others too.
        let lost = BackendConnection.lostBaseline
        #expect(
            BackendConnection.parameterSyncSQL(
                from: ["statement_timeout": lost], to: [:], baseline: ["statement_timeout": "1234ms"])
                == "SELECT pg_catalog.set_config(E'statement_timeout', E'1234ms', false) IS NULL")
        #expect(
            BackendConnection.parameterSyncSQL(
                from: ["statement_timeout": lost], to: ["statement_timeout": "5s"], baseline: ["statement_timeout": "1234ms"])
                == "SELECT pg_catalog.set_config(E'statement_timeout', E'5s', false) IS NULL")
    }
}
