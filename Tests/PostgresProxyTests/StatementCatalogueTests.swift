import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier
import Testing

/// The client's statements event by event (StatementCatalogue.swift): what the session sent or
/// was answered, each backend as its statement cache, and what the catalogue decides.
@Suite struct StatementCatalogueTests {
    /// A Parse body after the name: query, NUL, no parameter types.
    static func definition(_ sql: String) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeString(sql)
        out.writeInteger(UInt8(0))
        out.writeInteger(Int16(0))
        return out
    }

    /// A frontend message's body (after its type and length).
    static func body(_ encode: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var frame = ByteBuffer()
        encode(&frame)
        return frame.getSlice(at: 5, length: frame.readableBytes - 5)!
    }

    static func bindBody(portal: String = "", statement: String) -> ByteBuffer {
        body { PGEncode.bind(portalName: portal, statementName: statement, parameters: [], into: &$0) }
    }

    /// Parses `client` through the catalogue on the backend `cache` describes, as `sendParse`.
    static func parse(
        _ client: String, _ sql: String, into catalogue: inout StatementCatalogue, cache: inout BackendStatementCache
    ) -> (statement: ClientStatement, serverName: String) {
        guard case .define(let statement, let serverName) = catalogue.parse(
            client: client, definition: definition(sql), resets: Resets(), searchPath: nil, cache: &cache)
        else {
            Issue.record("\(client) was in use")
            return (ClientStatement(definition: definition(sql), analysed: true), "")
        }
        return (statement, serverName)
    }

    // MARK: Named statements

    @Test func aParseAcknowledgedLocallyIsPreparedOnFirstUse() {
        var catalogue = StatementCatalogue()
        let statement = ClientStatement(definition: Self.definition("SELECT 1"), analysed: false)
        catalogue.define("s1", statement)
        #expect(catalogue["s1"]?.key == statement.key)
        // First use: the backend lacks it, the proxy parses it there (its notices are new).
        var backend = BackendStatementCache()
        #expect(catalogue.useCopy(of: statement, client: "s1", cache: &backend) == nil)
        let injected = catalogue.injectParse(of: statement, client: "s1", cache: &backend)
        #expect(injected.serverName == statement.key)
        #expect(injected.parsedAt > statement.parsedAt)
        #expect(catalogue["s1"]?.analysed == true)
        // Its next use on that backend needs no Parse.
        #expect(catalogue.useCopy(of: catalogue["s1"]!, client: "s1", cache: &backend) == statement.key)
    }

    @Test func aNamedStatementIsPreparedAgainOnABackendThatLacksIt() {
        var catalogue = StatementCatalogue()
        var first = BackendStatementCache()
        let (statement, serverName) = Self.parse("s", "SELECT $1", into: &catalogue, cache: &first)
        #expect(serverName == statement.key)
        #expect(catalogue["s"]?.analysed == true)
        #expect(catalogue.backendHasCopy(of: statement, cache: first))
        #expect(catalogue.useCopy(of: statement, client: "s", cache: &first) == serverName)
        // The next transaction runs on another backend.
        var second = BackendStatementCache()
        #expect(!catalogue.backendHasCopy(of: statement, cache: second))
        #expect(catalogue.useCopy(of: statement, client: "s", cache: &second) == nil)
        #expect(catalogue.injectParse(of: statement, client: "s", cache: &second).serverName == serverName)
        #expect(catalogue.useCopy(of: statement, client: "s", cache: &second) == serverName)
        // A copy another client parsed before this client's Parse is not used for it.
        var older = BackendStatementCache()
        _ = older.parse(statement.key, at: statement.parsedAt - 1)
        #expect(catalogue.useCopy(of: statement, client: "s", cache: &older) == nil)
    }

    @Test func aSecondParseOfANameInUseIsRefusedOnThePlaceholder() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (statement, _) = Self.parse("s", "SELECT 1", into: &catalogue, cache: &backend)
        let second = catalogue.parse(
            client: "s", definition: Self.definition("SELECT 2"), resets: Resets(), searchPath: nil, cache: &backend)
        guard case .duplicate(let placeholder) = second else {
            Issue.record("a second Parse of a name in use was accepted")
            return
        }
        #expect(placeholder == StatementMessages.placeholderName)
        #expect(catalogue["s"]?.key == statement.key)  // the first statement stays
        #expect(backend.stale == [placeholder])  // deallocated at the next lease
    }

    @Test func aStatementsIdentityIncludesTheSearchPathAndTheStatementItExecutes() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (plain, _) = Self.parse("a", "SELECT * FROM t", into: &catalogue, cache: &backend)
        guard case .define(let other, _) = catalogue.parse(
            client: "b", definition: Self.definition("SELECT * FROM t"), resets: Resets(), searchPath: "s2", cache: &backend)
        else {
            Issue.record("b was in use")
            return
        }
        #expect(plain.key != other.key)
    }

    @Test func aCloseForgetsTheStatementUnlessItIsSkipped() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (statement, serverName) = Self.parse("s", "SELECT 1", into: &catalogue, cache: &backend)
        let removed = catalogue.remove("s")
        #expect(removed?.key == statement.key)
        #expect(catalogue["s"] == nil)
        // The backend keeps its copy for whoever prepares the same query next.
        #expect(backend.use(statement.key) == serverName)
        // An error earlier in the batch: PostgreSQL skipped the Close, the statement is back.
        catalogue.forget(
            .localCloseComplete(client: "s", removed: removed), failed: false, transactionFailed: false, cache: &backend)
        #expect(catalogue["s"]?.key == statement.key)
        // A Parse answered locally and then skipped: gone.
        catalogue.forget(.localParseComplete(client: "s"), failed: false, transactionFailed: false, cache: &backend)
        #expect(catalogue["s"] == nil)
    }

    @Test func aFailedParseLeavesNoStatementOnTheClientOrTheBackend() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (statement, serverName) = Self.parse("s", "SELEC 1", into: &catalogue, cache: &backend)
        catalogue.forget(
            .parse(client: "s", key: statement.key, serverName: serverName), failed: true, transactionFailed: false,
            cache: &backend)
        #expect(catalogue["s"] == nil)
        #expect(backend.use(statement.key) == nil)
    }

    @Test func aLocallyAcknowledgedStatementThatFailsItsFirstAnalysisIsGone() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let fresh = ClientStatement(definition: Self.definition("SELECT nope"), analysed: false)
        catalogue.define("fresh", fresh)
        let first = catalogue.injectParse(of: fresh, client: "fresh", cache: &backend)
        catalogue.forget(
            .injectedParse(client: "fresh", key: fresh.key, serverName: first.serverName, quiet: false), failed: true,
            transactionFailed: false, cache: &backend)
        #expect(catalogue["fresh"] == nil)
        #expect(backend.use(fresh.key) == nil)
        // One the database accepted before (DDL since) stays the client's; so does one whose
        // Parse failed only because the transaction had.
        let known = ClientStatement(definition: Self.definition("SELECT a FROM t"), analysed: true)
        catalogue.define("known", known)
        let again = catalogue.injectParse(of: known, client: "known", cache: &backend)
        catalogue.forget(
            .injectedParse(client: "known", key: known.key, serverName: again.serverName, quiet: true), failed: true,
            transactionFailed: false, cache: &backend)
        #expect(catalogue["known"] != nil)
        let other = ClientStatement(definition: Self.definition("SELECT 3"), analysed: false)
        catalogue.define("other", other)
        let third = catalogue.injectParse(of: other, client: "other", cache: &backend)
        catalogue.forget(
            .injectedParse(client: "other", key: other.key, serverName: third.serverName, quiet: false), failed: true,
            transactionFailed: true, cache: &backend)
        #expect(catalogue["other"] != nil)
    }

    // MARK: The unnamed statement

    @Test func theUnnamedStatementIsPreparedOnEachNewBackendBeforeUse() {
        var catalogue = StatementCatalogue()
        // No unnamed statement yet: the backend's (another client's) is closed first.
        #expect(catalogue.ensureUnnamed() == .close)
        #expect(catalogue.ensureUnnamed() == .ready)
        let before = catalogue.unnamedParsed(Self.definition("SELECT 1"), resets: Resets())
        #expect(before.statement == nil && before.onBackend && before.generation == 1)
        #expect(catalogue.ensureUnnamed() == .ready)
        catalogue.backendDetached()
        catalogue.backendLeased()
        #expect(catalogue.ensureUnnamed() == .parse(Self.definition("SELECT 1")))
        #expect(catalogue.ensureUnnamed() == .ready)
    }

    @Test func anUnnamedParseSkippedAfterAnErrorLeavesThePreviousOne() {
        var catalogue = StatementCatalogue()
        var none = BackendStatementCache()
        _ = catalogue.unnamedParsed(Self.definition("SELECT 1"), resets: Resets())  // batch 1, answered
        // Batch 2: Bind fails, the Parse after it is skipped.
        let before = catalogue.unnamedParsed(Self.definition("SELECT 2"), resets: Resets())
        #expect(catalogue.unnamedStatement == Self.definition("SELECT 2"))
        catalogue.forget(.unnamedParse(before), failed: false, transactionFailed: false, cache: &none)
        #expect(catalogue.unnamedStatement == Self.definition("SELECT 1"))
        #expect(catalogue.unnamedOnBackend)
        #expect(catalogue.unnamedGeneration == 1)
        // A Parse that fails itself: PostgreSQL dropped the unnamed statement before parsing.
        let failing = catalogue.unnamedParsed(Self.definition("SELEC 3"), resets: Resets())
        catalogue.forget(.unnamedParse(failing), failed: true, transactionFailed: false, cache: &none)
        #expect(catalogue.unnamedStatement == nil)
        #expect(catalogue.unnamedOnBackend)
    }

    @Test func aLaterChangeOfTheUnnamedStatementIsNotUndone() {
        var catalogue = StatementCatalogue()
        var none = BackendStatementCache()
        let parsed = catalogue.unnamedParsed(Self.definition("SELECT 1"), resets: Resets())
        // A simple Query of a later batch, sent before the Parse's error came back.
        let destroyed = catalogue.simpleQuerySent(tracking: true)
        #expect(destroyed?.statement == Self.definition("SELECT 1"))
        catalogue.forget(.unnamedParse(parsed), failed: false, transactionFailed: false, cache: &none)
        #expect(catalogue.unnamedStatement == nil)
        #expect(!catalogue.unnamedOnBackend)  // checked again before its next use
        #expect(catalogue.simpleQuerySent(tracking: false) == nil)
        // A skipped Close of the unnamed statement closed nothing.
        _ = catalogue.unnamedParsed(Self.definition("SELECT 4"), resets: Resets())
        let closed = catalogue.unnamedClosed()
        #expect(catalogue.unnamedStatement == nil)
        catalogue.forget(.close(unnamedBefore: closed), failed: false, transactionFailed: false, cache: &none)
        #expect(catalogue.unnamedStatement == Self.definition("SELECT 4"))
    }

    // MARK: Row types

    @Test func aResultTypeChangedOnAnotherBackendIsFoundBeforeTheBind() {
        var catalogue = StatementCatalogue()
        var first = BackendStatementCache()
        let (statement, serverName) = Self.parse("s", "SELECT * FROM t", into: &catalogue, cache: &first)
        // The Describe after the client's Parse: its row type, for the copy and the client.
        catalogue.recordShape(
            42, key: statement.key, serverName: serverName, parsedAt: statement.parsedAt, client: "s",
            clientParsedAt: statement.parsedAt, waiting: false, cache: &first)
        let described = catalogue["s"]!
        #expect(described.shape == 42)
        let bind = Self.bindBody(statement: "s")
        #expect(catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.bind, body: bind, resets: Resets(), cache: &first) == nil)
        // Another backend whose copy another client parsed after `ALTER TABLE t ...`.
        var second = BackendStatementCache()
        let otherName = second.parse(statement.key, at: StatementEpoch.next())
        second.record(shape: 7, key: statement.key, serverName: otherName, parsedAt: second.copy(statement.key, since: 0)!.parsedAt)
        let check = catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.bind, body: bind, resets: Resets(), cache: &second)
        #expect(check?.client == "s")
        #expect(second.copy(statement.key, since: 0) == nil)  // that copy is not trusted
        // The proxy parses it there with a Describe; the Bind waits for the answer.
        let injected = catalogue.injectParse(of: described, client: "s", cache: &second)
        #expect(injected.serverName != serverName)  // a fresh name: the old one is deallocated
        catalogue.awaitShape(key: statement.key, parsedAt: injected.parsedAt)
        #expect(catalogue.awaitingShape)
        catalogue.recordShape(
            7, key: statement.key, serverName: injected.serverName, parsedAt: injected.parsedAt, client: nil,
            clientParsedAt: 0, waiting: true, cache: &second)
        #expect(!catalogue.awaitingShape)
        // The database's current answer: the Bind goes, for a name that does not exist.
        #expect(catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.bind, body: bind, resets: Resets(), cache: &second) == nil)
        let changed = catalogue.resultTypeChanged(described, cache: second)
        #expect(changed)
        #expect(catalogue.shapeCheck == nil)
        catalogue.bound(portal: ByteBuffer(), serverName: nil)
        #expect(catalogue.serverName(ofPortal: ByteBuffer()) == nil)
        // The first backend's copy still returns the client's row type.
        let unchanged = !catalogue.resultTypeChanged(described, cache: first)
        #expect(unchanged)
    }

    @Test func aStatementWithoutARowTypeTakesTheCopysAndIsNotChecked() {
        var catalogue = StatementCatalogue()
        let statement = ClientStatement(definition: Self.definition("SELECT 1"), analysed: false)
        catalogue.define("s", statement)
        var backend = BackendStatementCache()
        // Nothing to compare with: prepared in the same round trip.
        #expect(catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.bind, body: Self.bindBody(statement: "s"), resets: Resets(), cache: &backend) == nil)
        let serverName = backend.parse(statement.key, at: StatementEpoch.next())
        backend.record(shape: 5, key: statement.key, serverName: serverName, parsedAt: backend.copy(statement.key, since: 0)!.parsedAt)
        #expect(catalogue.useCopy(of: statement, client: "s", cache: &backend) == serverName)
        #expect(catalogue["s"]?.shape == 5)
        // Messages that name no statement of the client's are never held.
        let describePortal = Self.body { PGEncode.describe(.portal, name: "s", into: &$0) }
        #expect(catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.describe, body: describePortal, resets: Resets(), cache: &backend) == nil)
        #expect(catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.bind, body: Self.bindBody(statement: "other"), resets: Resets(), cache: &backend) == nil)
    }

    @Test func aQueryThatExecutesAStatementTheBackendLacksWaitsForItsParse() {
        // SQL `EXECUTE s` of a protocol-level statement: even without a known row type, a failed
        // Parse there must not make PostgreSQL skip the Query unanswered.
        var catalogue = StatementCatalogue()
        let statement = ClientStatement(definition: Self.definition("SELECT 1"), analysed: false)
        catalogue.define("s", statement)
        var execute = Resets()
        execute.executed = ("s", 8..<9)
        var backend = BackendStatementCache()
        let query = Self.body { PGEncode.query("EXECUTE s", into: &$0) }
        let check = catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.query, body: query, resets: execute, cache: &backend)
        #expect(check?.client == "s" && check?.statement.key == statement.key)
        // A Query that executes nothing of the client's goes at once.
        #expect(catalogue.statementToCheckFirst(
            frameType: PGMessageType.Frontend.query, body: query, resets: Resets(), cache: &backend) == nil)
    }

    @Test func aFailedParseThatMessagesWaitedForReleasesThem() {
        var catalogue = StatementCatalogue()
        var none = BackendStatementCache()
        catalogue.awaitShape(key: "concierge_1", parsedAt: 3)
        let released = catalogue.forget(
            .shapeDescribe(key: "concierge_1", serverName: "concierge_1", parsedAt: 3, client: nil, clientParsedAt: 0, waiting: true),
            failed: false, transactionFailed: false, cache: &none)
        #expect(released)
        #expect(!catalogue.awaitingShape)
    }

    // MARK: Errors

    @Test func anErrorNamingTheProxysStatementNamesTheClientsInstead() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (statement, serverName) = Self.parse("mine", "SELECT 1", into: &catalogue, cache: &backend)
        func errorBody(_ code: String, _ message: String) -> ByteBuffer {
            var frame = ByteBuffer()
            PGEncode.errorResponse(PGErrorFields(severity: "ERROR", code: code, message: message), into: &frame)
            return frame.getSlice(at: 5, length: frame.readableBytes - 5)!
        }
        // Missing on the backend: the proxy's view was wrong, everything is prepared afresh.
        let missing = errorBody("26000", "prepared statement \"\(serverName)\" does not exist")
        let replaced = catalogue.errorWithoutInternalNames(missing, cache: &backend)
        #expect(replaced?.invalidated == true)
        #expect(backend.use(statement.key) == nil)
        var frame = replaced!.error
        #expect(frame.readInteger(as: UInt8.self) == PGMessageType.Backend.errorResponse)
        #expect(Int(frame.readInteger(as: Int32.self)!) == 4 + frame.readableBytes)
        let fields = try? PGParse.errorResponse(frame)
        #expect(fields?.message == "prepared statement \"mine\" does not exist")
        #expect(fields?.code == "26000")
        // Another error about it (wrong parameter count) is expected: nothing is invalidated.
        _ = backend.parse(statement.key, at: statement.parsedAt)
        let count = errorBody("08P01", "bind message supplies 1 parameters, but prepared statement \"\(serverName)\" requires 0")
        let named = catalogue.errorWithoutInternalNames(count, hint: "mine", cache: &backend)
        #expect(named?.invalidated == false)
        #expect(backend.use(statement.key) != nil)
        #expect((try? PGParse.errorResponse(named!.error.getSlice(at: 5, length: named!.error.readableBytes - 5)!))?.message
            == "bind message supplies 1 parameters, but prepared statement \"mine\" requires 0")
        // The usual case: forwarded as it is.
        #expect(catalogue.errorWithoutInternalNames(errorBody("42601", "syntax error"), cache: &backend) == nil)
    }

    // MARK: Resets and backends

    @Test func deallocateAllTakesTheStatementsOutUntilItSucceeds() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (a, _) = Self.parse("a", "SELECT 1", into: &catalogue, cache: &backend)
        let (b, _) = Self.parse("b", "SELECT 2", into: &catalogue, cache: &backend)
        var watch = ResetWatch(resets: Resets())
        watch.removed = catalogue.removeAll(cache: &backend)
        #expect(catalogue.statements.isEmpty)
        #expect(backend.use(a.key) == nil && backend.count == 0)
        // The client prepares `a` again in the same pipeline; then the reset fails.
        let (again, _) = Self.parse("a", "SELECT 10", into: &catalogue, cache: &backend)
        catalogue.forget(.execute(serverName: nil, reset: watch), failed: true, transactionFailed: false, cache: &backend)
        #expect(catalogue["a"]?.key == again.key)
        #expect(catalogue["b"]?.key == b.key)
    }

    @Test func deallocateOfOneStatementClosesTheBackendsCopyOrThePlaceholder() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (statement, serverName) = Self.parse("s", "SELECT 1", into: &catalogue, cache: &backend)
        #expect(catalogue.deallocate("s", serverName: serverName, placeholder: false, cache: &backend)?.key == statement.key)
        #expect(catalogue["s"] == nil)
        #expect(backend.takeStale() == [serverName])
        catalogue.define("t", statement)
        #expect(catalogue.deallocate("t", serverName: StatementMessages.placeholderName, placeholder: true, cache: &backend) != nil)
        #expect(backend.takeStale() == [StatementMessages.placeholderName])
        // One of the proxy's own names: nothing cached is trusted.
        _ = backend.parse("concierge_2", at: 1)
        catalogue.deallocateOther("plain", cache: &backend)
        #expect(backend.count == 1)
        catalogue.deallocateOther("concierge_2", cache: &backend)
        #expect(backend.count == 0)
    }

    @Test func aDetachedBackendTakesThePortalsAndTheChecksWithIt() {
        var catalogue = StatementCatalogue()
        var backend = BackendStatementCache()
        let (statement, serverName) = Self.parse("s", "SELECT 1", into: &catalogue, cache: &backend)
        var discard = Resets()
        discard.kinds = [.discardAll]
        _ = catalogue.unnamedParsed(Self.definition("DISCARD ALL"), resets: discard)
        catalogue.notePortalResets(discard, portal: ByteBuffer(string: "p"))
        catalogue.bound(portal: ByteBuffer(string: "p"), serverName: serverName)
        #expect(catalogue.resets(ofPortal: ByteBuffer(string: "p"))?.kinds == [.discardAll])
        #expect(catalogue.serverName(ofPortal: ByteBuffer(string: "p")) == serverName)
        catalogue.awaitShape(key: statement.key, parsedAt: statement.parsedAt)
        catalogue.backendDetached()
        #expect(catalogue.portalResets.isEmpty && catalogue.portalStatements.isEmpty)
        #expect(catalogue.resets(ofPortal: ByteBuffer(string: "p")) == nil)
        #expect(!catalogue.unnamedOnBackend && !catalogue.awaitingShape && catalogue.shapeCheck == nil)
        // What the client defined is its own, on any backend.
        #expect(catalogue["s"]?.key == statement.key)
        #expect(catalogue.unnamedStatement == Self.definition("DISCARD ALL"))
        // A Bind of the unnamed statement: the portal runs what that statement resets; a Bind
        // of a name the client never prepared runs nothing.
        catalogue.boundWithoutStatement(portal: ByteBuffer(string: "q"), unnamed: true)
        #expect(catalogue.resets(ofPortal: ByteBuffer(string: "q"))?.kinds == [.discardAll])
        catalogue.boundWithoutStatement(portal: ByteBuffer(string: "q"), unnamed: false)
        #expect(catalogue.resets(ofPortal: ByteBuffer(string: "q")) == nil)
    }
}
