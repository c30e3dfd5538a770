import ConnectionPool
import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier
import Testing

/// What the session writes to its backend for each client message (ClientSessionMachine+Send.swift
/// and +Resets.swift), event by event: the backend is its statement cache and the messages
/// written to it, described as short strings ("P concierge_… SELECT 1", "B portal statement").
@Suite struct ClientSessionSendTests {
    typealias Frontend = PGMessageType.Frontend
    typealias Backend = PGMessageType.Backend
    typealias Machine = ClientSessionMachine

    /// A backend as the machine sees it: its statement cache, and what was written to it.
    struct FakeBackend {
        var cache = BackendStatementCache()
        var written: [String] = []

        /// What was written since the last call.
        mutating func take() -> [String] {
            defer { written.removeAll() }
            return written
        }
    }

    // MARK: Messages

    static func frame(_ encode: (inout ByteBuffer) -> Void) -> PGFrame {
        var bytes = ByteBuffer()
        encode(&bytes)
        return try! PGFraming.nextFrame(from: &bytes, maxMessageSize: 1 << 20)!
    }

    static func parse(_ name: String, _ sql: String) -> PGFrame {
        frame { PGEncode.parse(statementName: name, query: sql, into: &$0) }
    }
    static func bind(_ statement: String, portal: String = "") -> PGFrame {
        frame { PGEncode.bind(portalName: portal, statementName: statement, parameters: [], into: &$0) }
    }
    static func describe(_ statement: String) -> PGFrame { frame { PGEncode.describe(.statement, name: statement, into: &$0) } }
    static func close(_ statement: String) -> PGFrame { frame { PGEncode.close(.statement, name: statement, into: &$0) } }
    static func execute(_ portal: String = "") -> PGFrame { frame { PGEncode.execute(portalName: portal, into: &$0) } }
    static func query(_ sql: String) -> PGFrame { frame { PGEncode.query(sql, into: &$0) } }
    static var sync: PGFrame { frame { PGEncode.sync(into: &$0) } }
    static var flush: PGFrame { frame { PGEncode.flush(into: &$0) } }
    static func copyData(_ text: String) -> PGFrame { PGFrame(type: Frontend.copyData, body: ByteBuffer(string: text)) }
    static var copyDone: PGFrame { PGFrame(type: Frontend.copyDone, body: ByteBuffer()) }

    /// One message written to the backend, in short.
    static func describe(written bytes: ByteBuffer) -> String {
        var bytes = bytes
        guard let type = bytes.readInteger(as: UInt8.self), bytes.readInteger(as: Int32.self) != nil else { return "?" }
        func string() -> String {
            guard let end = bytes.readableBytesView.firstIndex(of: 0) else { return "?" }
            let text = bytes.readString(length: end - bytes.readerIndex) ?? "?"
            bytes.moveReaderIndex(forwardBy: 1)
            return text
        }
        let letter = String(UnicodeScalar(type))
        switch type {
        case Frontend.parse:
            let name = string()
            return "P \(name) \(string())"
        case Frontend.bind:
            let portal = string()
            return "B \(portal) \(string())"
        case Frontend.describe, Frontend.close:
            let kind = bytes.readInteger(as: UInt8.self).map { String(UnicodeScalar($0)) } ?? "?"
            return "\(letter) \(kind) \(string())"
        case Frontend.query:
            return "Q \(string())"
        case Frontend.execute:
            return "E \(string())"
        default:
            return letter
        }
    }

    // MARK: The session

    /// A session attached to a backend, between statements of an open transaction (nothing
    /// pending).
    static func attached() -> Machine {
        var machine = ClientSessionMachineTests.attached()
        _ = ClientSessionMachineTests.answered(&machine, 1, .inTransaction)
        #expect(machine.responses.isEmpty)
        return machine
    }

    /// The client sends `frame`: through the gate and `frontendMessage`, then, when it is routed,
    /// sent to `backend` as the handler does. The proxy's own reply, when it answers.
    @discardableResult
    static func client(_ frame: PGFrame, _ machine: inout Machine, _ backend: inout FakeBackend) throws -> Machine.LocalReply? {
        guard machine.messageArrived(frame.type) == .proceed else { return nil }
        let decision = try machine.frontendMessage(frame)
        switch decision.action {
        case .route(let message):
            _ = send(message, &machine, &backend)
            return nil
        case .reply(let reply):
            return reply
        default:
            return nil
        }
    }

    /// `send`, as the handler calls it, with what it wrote recorded.
    @discardableResult
    static func send(_ message: HeldMessage, _ machine: inout Machine, _ backend: inout FakeBackend) -> Machine.Sent {
        var out: [ByteBuffer] = []
        let sent = machine.send(message, cache: &backend.cache, allocator: ByteBufferAllocator()) { out.append($0) }
        backend.written += out.map { describe(written: $0) }
        return sent
    }

    /// The client's statement "s1" (`SELECT * FROM t`, row type 7) and the backend's copy of it,
    /// whose row type (8) has since changed: a Bind of it is checked first.
    static func defineStatementWithChangedRowType(_ machine: inout Machine, _ backend: inout FakeBackend) throws -> ClientStatement {
        var statement = ClientStatement(definition: definition("SELECT * FROM t"), analysed: true)
        statement.shape = 7
        machine.catalogue.define("s1", statement)
        let serverName = backend.cache.parse(statement.key, at: StatementEpoch.next())
        let copiedAt = try #require(backend.cache.copy(statement.key, since: 0)).parsedAt
        backend.cache.record(shape: 8, key: statement.key, serverName: serverName, parsedAt: copiedAt)
        return statement
    }

    /// The backend answers with a message of `type`: what the response tracker decides.
    static func backend(_ type: UInt8, _ machine: inout Machine) -> ResponseTracker.Action {
        machine.responses.received(type)
    }

    static func dropped(_ action: ResponseTracker.Action) -> Bool {
        if case .drop = action { return true }
        return false
    }

    static func forwarded(_ action: ResponseTracker.Action) -> Bool {
        if case .forward = action { return true }
        return false
    }

    static func definition(_ sql: String) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeString(sql)
        out.writeInteger(UInt8(0))
        out.writeInteger(Int16(0))
        return out
    }

    // MARK: Named statements

    @Test func aNamedStatementTheBackendLacksIsPreparedInTheSameRoundTrip() throws {
        // Parsed while no backend serves the client: acknowledged by the proxy.
        var machine = ClientSessionMachineTests.loggedIn()
        var backend = FakeBackend()
        same(try Self.client(Self.parse("s1", "SELECT 1"), &machine, &backend), .parseComplete)
        same(try Self.client(Self.sync, &machine, &backend), .readyForQuery)
        let key = try #require(machine.catalogue["s1"]).key
        // Its Bind needs a backend: borrowed, leased, prepared, then the held Bind is sent.
        let held = try #require(try machine.frontendMessage(Self.bind("s1")).action.routed)
        same(machine.route(held, now: ClientSessionMachineTests.t0, sendable: true), .borrow)
        _ = machine.borrowSucceeded(now: ClientSessionMachineTests.t0)
        machine.catalogue.backendLeased()
        same(machine.backendPrepared(), .sendHeld(thenCancel: false))
        let popped = machine.popHeld()
        let bind = try #require(popped)
        same(Self.send(bind, &machine, &backend).answerLocally, true)
        // Close, Parse under the proxy's name, the Describe that learns its row type, then the Bind.
        #expect(backend.take() == ["C S \(key)", "P \(key) SELECT 1", "D S \(key)", "B  \(key)"])
        try Self.client(Self.execute(), &machine, &backend)
        try Self.client(Self.sync, &machine, &backend)
        #expect(backend.take() == ["E ", "S"])
        // The answers to the proxy's own messages are dropped; the client's are forwarded.
        #expect(Self.dropped(Self.backend(Backend.closeComplete, &machine)))
        guard case .drop(answered: .injectedParse(let client, _, _, let quiet)?) = Self.backend(Backend.parseComplete, &machine) else {
            Issue.record("the injected Parse's ParseComplete is dropped")
            return
        }
        #expect(client == "s1" && !quiet)  // its notices are the client's first
        #expect(Self.dropped(Self.backend(Backend.parameterDescription, &machine)))
        #expect(Self.dropped(Self.backend(Backend.rowDescription, &machine)))
        #expect(Self.forwarded(Self.backend(Backend.bindComplete, &machine)))
        #expect(Self.forwarded(Self.backend(Backend.commandComplete, &machine)))
        guard case .readyForQuery(answered: .sync?) = Self.backend(Backend.readyForQuery, &machine) else {
            Issue.record("ReadyForQuery answers the Sync")
            return
        }
        #expect(machine.responses.isEmpty)
        // The next Bind on that backend uses its copy: no Parse.
        try Self.client(Self.bind("s1"), &machine, &backend)
        #expect(backend.take() == ["B  \(key)"])
    }

    @Test func aStatementTheBackendHasIsBoundWithoutAParse() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        let statement = ClientStatement(definition: Self.definition("SELECT 2"), analysed: true)
        machine.catalogue.define("s2", statement)
        // Another client parsed the same text on this backend since.
        let serverName = backend.cache.parse(statement.key, at: StatementEpoch.next())
        let sent = Self.send(HeldMessage(Self.describe("s2")), &machine, &backend)
        #expect(backend.take() == ["D S \(serverName)"])
        #expect(sent.answerLocally && !sent.startsResponseTime)
        try Self.client(Self.bind("s2", portal: "p"), &machine, &backend)
        #expect(backend.take() == ["B p \(serverName)"])
        #expect(machine.catalogue.serverName(ofPortal: ByteBuffer(string: "p")) == serverName)
    }

    @Test func aParseWhileAttachedIsParsedAfreshAndAParseWithoutABackendIsAnsweredLocally() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        try Self.client(Self.parse("s1", "SELECT 1"), &machine, &backend)
        let key = try #require(machine.catalogue["s1"]).key
        #expect(backend.take() == ["C S \(key)", "P \(key) SELECT 1", "D S \(key)"])
        // The client's own Parse: its ParseComplete is the client's.
        #expect(Self.dropped(Self.backend(Backend.closeComplete, &machine)))
        guard case .forward(answered: .parse(let client?, _, _)?) = Self.backend(Backend.parseComplete, &machine) else {
            Issue.record("the client's ParseComplete is forwarded")
            return
        }
        #expect(client == "s1")
        // A second Parse of the name fails on the placeholder, as PostgreSQL would fail it.
        try Self.client(Self.parse("s1", "SELECT 3"), &machine, &backend)
        let placeholder = StatementMessages.placeholderName
        #expect(backend.take() == ["C S \(placeholder)", "P \(placeholder) ROLLBACK", "P \(placeholder) SELECT 3"])

        // Without a backend, a Parse of a new name is the proxy's to answer.
        var idle = ClientSessionMachineTests.loggedIn()
        same(try Self.client(Self.parse("s9", "SELECT 9"), &idle, &backend), .parseComplete)
        #expect(backend.take().isEmpty)
        #expect(idle.catalogue["s9"]?.analysed == false)
    }

    @Test func theCloseOfANamedStatementIsAnsweredLocallyInItsPlace() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        try Self.client(Self.parse("s1", "SELECT 1"), &machine, &backend)
        _ = backend.take()
        // Behind the Parse's answers: CloseComplete is due once they are forwarded.
        let sent = Self.send(HeldMessage(Self.close("s1")), &machine, &backend)
        #expect(sent.answerLocally)
        #expect(backend.take().isEmpty)
        #expect(machine.catalogue["s1"] == nil)
        same(machine.responses.popLocalAnswer(), nil)
        _ = Self.backend(Backend.closeComplete, &machine)
        _ = Self.backend(Backend.parseComplete, &machine)
        _ = Self.backend(Backend.parameterDescription, &machine)
        _ = Self.backend(Backend.noData, &machine)
        same(machine.responses.popLocalAnswer(), .closeComplete)
        #expect(machine.responses.isEmpty)
        // Nothing in flight: answered at once.
        try Self.client(Self.parse("s2", "SELECT 2"), &machine, &backend)
        try Self.client(Self.sync, &machine, &backend)
        for type in [Backend.closeComplete, Backend.parseComplete, Backend.parameterDescription, Backend.noData, Backend.readyForQuery] {
            _ = Self.backend(type, &machine)
        }
        _ = backend.take()
        Self.send(HeldMessage(Self.close("s2")), &machine, &backend)
        same(machine.responses.popLocalAnswer(), .closeComplete)
        #expect(backend.take().isEmpty)
    }

    // MARK: The unnamed statement

    @Test func theUnnamedStatementIsRestoredOnANewBackend() throws {
        var machine = Self.attached()
        var first = FakeBackend()
        try Self.client(Self.parse("", "SELECT 1"), &machine, &first)
        try Self.client(Self.sync, &machine, &first)
        #expect(first.take() == ["P  SELECT 1", "S"])
        _ = Self.backend(Backend.parseComplete, &machine)
        _ = Self.backend(Backend.readyForQuery, &machine)
        same(machine.readyForQueryForwarded(count: 1, status: .idle), .release(thenClose: false))
        machine.catalogue.backendDetached()
        machine.backendReleased(now: ClientSessionMachineTests.t0)
        // A later batch binds it on another backend, whose unnamed statement may be another
        // client's: the client's is parsed there first, its ParseComplete dropped.
        var second = FakeBackend()
        let bind = try #require(try machine.frontendMessage(Self.bind("")).action.routed)
        same(machine.route(bind, now: ClientSessionMachineTests.t0, sendable: false), .borrow)
        _ = machine.borrowSucceeded(now: ClientSessionMachineTests.t0)
        machine.catalogue.backendLeased()
        _ = machine.backendPrepared()
        let popped = machine.popHeld()
        Self.send(try #require(popped), &machine, &second)
        #expect(second.take() == ["P  SELECT 1", "B  "])
        guard case .drop(answered: .injectedParse(nil, _, _, _)?) = Self.backend(Backend.parseComplete, &machine) else {
            Issue.record("the restoring Parse's ParseComplete is dropped")
            return
        }
        // Bound again on the same backend: it is there.
        try Self.client(Self.bind(""), &machine, &second)
        #expect(second.take() == ["B  "])
    }

    @Test func aClientWithoutAnUnnamedStatementHasTheBackendsClosed() throws {
        var machine = Self.attached()
        machine.catalogue.backendLeased()
        var backend = FakeBackend()
        try Self.client(Self.describe(""), &machine, &backend)
        #expect(backend.take() == ["C S ", "D S "])
        #expect(Self.dropped(Self.backend(Backend.closeComplete, &machine)))
    }

    // MARK: Resets

    @Test func discardAllEmptiesTheCatalogueAndReleasesThePinsBeforeIt() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        try Self.client(Self.parse("s1", "SELECT 1"), &machine, &backend)
        try Self.client(Self.sync, &machine, &backend)
        for type in [Backend.closeComplete, Backend.parseComplete, Backend.parameterDescription, Backend.noData, Backend.readyForQuery] {
            _ = Self.backend(type, &machine)
        }
        _ = machine.readyForQueryForwarded(count: 1, status: .inTransaction)
        try Self.client(Self.query("CREATE TEMP TABLE t (x int)"), &machine, &backend)
        #expect(machine.pins.reasons == .temporaryObject)
        _ = Self.backend(Backend.commandComplete, &machine)
        _ = Self.backend(Backend.readyForQuery, &machine)
        _ = machine.readyForQueryForwarded(count: 1, status: .idle)
        _ = backend.take()

        try Self.client(Self.query("DISCARD ALL"), &machine, &backend)
        // The original bytes go; the client's statements leave the catalogue now (what follows in
        // the pipeline sees them gone), the backend's are prepared afresh after it.
        #expect(backend.take() == ["Q DISCARD ALL"])
        #expect(machine.catalogue["s1"] == nil)
        #expect(backend.cache.count == 0)
        #expect(machine.resetWindow != nil && machine.resetWindow?.parameters == nil)
        guard case .resetQuery(let watch)? = machine.responses.head else {
            Issue.record("a reset query is watched")
            return
        }
        #expect(watch.removed["s1"] != nil)
        // Its command tag confirms it: the pins it undoes are released.
        same(machine.applyResetAtCompletion(watch, tag: ByteBuffer(string: "DISCARD ALL\0")), .temporaryObject)
        #expect(!machine.pins.isPinned)
        #expect(machine.resetWindow?.discarded == true)
        same(machine.applyResetAtReady(watch, status: .idle), Machine.ReadyUnpins())
        #expect(machine.catalogue["s1"] == nil)
    }

    @Test func aFailedDeallocateAllPutsTheStatementsBack() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        machine.catalogue.define("s1", ClientStatement(definition: Self.definition("SELECT 1"), analysed: false))
        try Self.client(Self.query("DEALLOCATE ALL"), &machine, &backend)
        #expect(backend.take() == ["Q DEALLOCATE ALL"])
        #expect(machine.catalogue["s1"] == nil)
        guard case .resetQuery(let watch)? = machine.responses.head else {
            Issue.record("a reset query is watched")
            return
        }
        // In a failed transaction: an error, no command tag.
        guard case .error(.resetQuery) = Self.backend(Backend.errorResponse, &machine) else {
            Issue.record("the reset query's error")
            return
        }
        machine.resetQueryFailed = true
        same(machine.applyResetAtReady(watch, status: .failed), Machine.ReadyUnpins())
        #expect(machine.catalogue["s1"] != nil)
        #expect(!machine.resetQueryFailed)
    }

    @Test func deallocateOfAStatementTheBackendLacksDeallocatesThePlaceholder() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        machine.catalogue.define("s1", ClientStatement(definition: Self.definition("SELECT 1"), analysed: false))
        // Something in flight: the DEALLOCATE is not the proxy's to answer.
        try Self.client(Self.query("SELECT 1"), &machine, &backend)
        #expect(backend.take() == ["Q SELECT 1"])
        try Self.client(Self.query("DEALLOCATE s1"), &machine, &backend)
        let placeholder = StatementMessages.placeholderName
        #expect(backend.take() == [
            "C S \(placeholder)", "P \(placeholder) ROLLBACK", "Q DEALLOCATE \(ParameterSync.quoteIdentifier(placeholder))",
        ])
        #expect(machine.catalogue["s1"] == nil)
        guard case .resetQuery(let watch)? = machine.responses.pending.last else {
            Issue.record("a reset query is watched")
            return
        }
        #expect(watch.deallocated == "s1")
        _ = machine.applyResetAtCompletion(watch, tag: ByteBuffer(string: "DEALLOCATE\0"))
        #expect(machine.statementResetConfirmed)
    }

    @Test func anExecuteOfAPortalThatResetsIsWatched() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        machine.catalogue.define("s1", ClientStatement(definition: Self.definition("SELECT 1"), analysed: false))
        _ = machine.pins.pin(.sqlPrepare)
        try Self.client(Self.parse("", "DEALLOCATE ALL"), &machine, &backend)
        try Self.client(Self.bind("", portal: "p"), &machine, &backend)
        #expect(machine.catalogue.resets(ofPortal: ByteBuffer(string: "p"))?.kinds.contains(.deallocateAll) == true)
        #expect(machine.catalogue["s1"] != nil)  // not before it runs
        try Self.client(Self.execute("p"), &machine, &backend)
        #expect(backend.take() == ["P  DEALLOCATE ALL", "B p ", "E p"])
        #expect(machine.catalogue["s1"] == nil)
        guard case .execute(nil, let watch?)? = machine.responses.pending.last else {
            Issue.record("the Execute watches its reset")
            return
        }
        #expect(watch.removed["s1"] != nil)
        same(machine.applyResetAtExecuteCompletion(watch, tag: ByteBuffer(string: "DEALLOCATE ALL\0")), .sqlPrepare)
        #expect(!machine.statementResetConfirmed)
    }

    // MARK: COPY, errors

    @Test func syncsDuringCopyInOweNothing() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        try Self.client(Self.parse("", "COPY t FROM STDIN"), &machine, &backend)
        try Self.client(Self.bind(""), &machine, &backend)
        try Self.client(Self.execute(), &machine, &backend)
        try Self.client(Self.sync, &machine, &backend)
        #expect(machine.responses.outstandingSyncs == 1)
        _ = Self.backend(Backend.parseComplete, &machine)
        _ = Self.backend(Backend.bindComplete, &machine)
        // PostgreSQL ignores the Sync sent after the Execute until the copy ends.
        guard case .copyIn(awaitingCopyEnd: true) = Self.backend(Backend.copyInResponse, &machine) else {
            Issue.record("copy-in awaits its end")
            return
        }
        #expect(machine.responses.outstandingSyncs == 0)
        machine.copyInActive = true  // (the handler's, on that answer)
        _ = backend.take()
        let sync = Self.send(HeldMessage(Self.sync), &machine, &backend)
        #expect(!sync.startsResponseTime && !sync.answerLocally)
        Self.send(HeldMessage(Self.copyData("1\n")), &machine, &backend)
        Self.send(HeldMessage(Self.copyDone), &machine, &backend)
        #expect(backend.take() == ["S", "d", "c"])
        #expect(!machine.copyInActive)
        #expect(machine.responses.outstandingSyncs == 0)
        // The Sync after it is PostgreSQL's to answer.
        let last = Self.send(HeldMessage(Self.sync), &machine, &backend)
        #expect(last.startsResponseTime)
        #expect(machine.responses.outstandingSyncs == 1)
    }

    @Test func afterAnErrorEverythingUntilSyncIsSkipped() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        try Self.client(Self.parse("", "SELECT nope"), &machine, &backend)
        try Self.client(Self.bind(""), &machine, &backend)
        _ = backend.take()
        guard case .error(.failed(let failed, let skipped, let syncFollows)) = Self.backend(Backend.errorResponse, &machine) else {
            Issue.record("the Parse failed")
            return
        }
        if case .unnamedParse = failed {} else { Issue.record("the Parse failed") }
        #expect(skipped.count == 1 && !syncFollows)
        machine.skippingUntilSync = true  // (the handler's, on that answer)
        let execute = Self.send(HeldMessage(Self.execute()), &machine, &backend)
        same(execute, Machine.Sent())
        #expect(backend.take().isEmpty)
        #expect(machine.responses.isEmpty)
        let sync = Self.send(HeldMessage(Self.sync), &machine, &backend)
        #expect(sync.startsResponseTime)
        #expect(backend.take() == ["S"])
        #expect(!machine.skippingUntilSync)
    }

    @Test func aQueryAnsweredByASyncAfterItsStatementFailedToParse() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        machine.syncInsteadOfQuery = true
        machine.skippingUntilSync = true
        let sent = Self.send(HeldMessage(Self.query("EXECUTE s1")), &machine, &backend)
        #expect(sent.startsResponseTime && !sent.answerLocally)
        #expect(backend.take() == ["S"])
        #expect(!machine.syncInsteadOfQuery && !machine.skippingUntilSync)
        guard case .query? = machine.responses.head else {
            Issue.record("the Sync answers as the Query")
            return
        }
    }

    // MARK: Pins, row types

    @Test func aBindOfAStatementThatPinsPinsAgain() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        try Self.client(Self.parse("s1", "CREATE TEMP TABLE t (x int)"), &machine, &backend)
        #expect(machine.pins.isPinned)
        var reset = Resets()
        reset.pinClock = machine.pins.clock
        same(machine.unpin(.temporaryObject, for: reset), .temporaryObject)
        #expect(!machine.pins.isPinned)
        let message = try #require(try machine.frontendMessage(Self.bind("s1")).action.routed)
        let sent = Self.send(message, &machine, &backend)
        #expect(sent.newPins == .temporaryObject && sent.firstPin)
    }

    @Test func aStatementWhoseCopyHasAnotherRowTypeIsCheckedFirst() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        let statement = try Self.defineStatementWithChangedRowType(&machine, &backend)
        let bind = HeldMessage(Self.bind("s1"))
        var out: [ByteBuffer] = []
        let waits = machine.mustCheckResultTypeFirst(bind, cache: &backend.cache, allocator: ByteBufferAllocator()) { out.append($0) }
        #expect(waits)
        let key = statement.key
        #expect(out.map { Self.describe(written: $0) } == ["C S \(key)_1", "P \(key)_1 SELECT * FROM t", "D S \(key)_1", "H"])
        #expect(machine.catalogue.awaitingShape)
        #expect(machine.mustWaitForEarlierBatches(bind))
        #expect(!machine.preparingForQuery)
    }

    // MARK: Taking messages now, releasing held ones

    @Test func aMessageGoesStraightToAnAttachedBackendUnlessItsRowTypeIsCheckedFirst() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        var out: [ByteBuffer] = []
        let query = HeldMessage(Self.query("SELECT 1"))
        let plain = machine.takesNow(query, cache: &backend.cache, allocator: ByteBufferAllocator()) { out.append($0) }
        #expect(plain.takes && !plain.flush && out.isEmpty)

        _ = try Self.defineStatementWithChangedRowType(&machine, &backend)
        let bind = HeldMessage(Self.bind("s1"))
        let checked = machine.takesNow(bind, cache: &backend.cache, allocator: ByteBufferAllocator()) { out.append($0) }
        // The check (Close, Parse, Describe, Flush) was written and must be flushed; the Bind waits.
        #expect(!checked.takes && checked.flush)
        #expect(out.map { Self.describe(written: $0) }.last == "H")
        // Everything after it waits for that answer too.
        let later = machine.takesNow(query, cache: &backend.cache, allocator: ByteBufferAllocator()) { out.append($0) }
        #expect(!later.takes && !later.flush)
    }

    @Test func heldMessagesAreReleasedInOrderUntilOneMustWait() throws {
        var machine = Self.attached()
        var backend = FakeBackend()
        var written: [ByteBuffer] = []
        func pop(sentSinceForced: Bool = false) -> Machine.HeldTake {
            machine.popSendable(sentSinceForced: sentSinceForced, cache: &backend.cache, allocator: ByteBufferAllocator()) {
                written.append($0)
            }
        }
        guard case .empty = pop() else { Issue.record("nothing held: nothing to send"); return }
        same(machine.route(HeldMessage(Self.query("SELECT 1")), now: .uptimeNanoseconds(0), sendable: false), .held)
        same(machine.route(HeldMessage(Self.sync), now: .uptimeNanoseconds(0), sendable: false), .held)
        guard case .send(let first, forced: false) = pop() else { Issue.record("the Query goes first"); return }
        #expect(first.frame.type == Frontend.query)
        guard case .send(let second, forced: false) = pop(sentSinceForced: true) else { Issue.record("then the Sync"); return }
        #expect(second.frame.type == Frontend.sync)
        guard case .empty = pop(sentSinceForced: true) else { Issue.record("all sent"); return }
        let drained = machine.heldDrained()
        #expect(drained)

        // A Bind held while a row-type check is in flight waits for its answer.
        _ = try Self.defineStatementWithChangedRowType(&machine, &backend)
        same(machine.route(HeldMessage(Self.bind("s1")), now: .uptimeNanoseconds(0), sendable: false), .held)
        same(machine.route(HeldMessage(Self.sync), now: .uptimeNanoseconds(0), sendable: false), .held)
        let heldBytes = machine.heldBytes
        guard case .wait(flush: true) = pop() else { Issue.record("the check is written and flushed"); return }
        #expect(written.map { Self.describe(written: $0) }.last == "H")
        #expect(machine.catalogue.awaitingShape)
        guard case .wait(flush: false) = pop() else { Issue.record("the Bind waits for the check's answer"); return }
        // A message that must wait is put back where it was, and the queue's sizes with it.
        #expect(machine.held.map(\.frame.type) == [Frontend.bind, Frontend.sync])
        #expect(machine.heldBytes == heldBytes && machine.heldSyncPoints == 1)
    }
}

extension ClientSessionMachine.FrontendAction {
    /// The message, when routed to a backend.
    var routed: HeldMessage? {
        if case .route(let message) = self { return message }
        return nil
    }
}
