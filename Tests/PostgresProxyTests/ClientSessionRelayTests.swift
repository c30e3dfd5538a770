import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier
import Testing

/// The backend's answers, message by message (ClientSessionMachine+Relay.swift): what the handler
/// forwards, drops or replaces, and what each does to the session.
@Suite struct ClientSessionRelayTests {
    typealias Backend = PGMessageType.Backend
    typealias Machine = ClientSessionMachine
    typealias Send = ClientSessionSendTests

    /// One backend message, relayed as the handler does (`relayError` for an ErrorResponse).
    static func relay(_ encode: (inout ByteBuffer) -> Void, _ machine: inout Machine, _ backend: inout Send.FakeBackend) -> Machine.Relayed {
        var bytes = ByteBuffer(string: "xx")  // not at index 0, as inside a burst
        bytes.moveReaderIndex(forwardBy: 2)
        encode(&bytes)
        let (type, size) = try! PGFraming.peekFrame(in: bytes, maxMessageSize: 1 << 20)!
        if type == Backend.errorResponse {
            return machine.relayError(in: bytes, at: bytes.readerIndex, size: size, cache: &backend.cache)
        }
        return machine.relay(type, in: bytes, at: bytes.readerIndex, size: size)
    }

    static func error(_ code: String, _ message: String) -> (inout ByteBuffer) -> Void {
        { PGEncode.errorResponse(PGErrorFields(severity: "ERROR", code: code, message: message), into: &$0) }
    }
    static let closeComplete: @Sendable (inout ByteBuffer) -> Void = { PGEncode.closeComplete(into: &$0) }
    static let parseComplete: @Sendable (inout ByteBuffer) -> Void = { PGEncode.parseComplete(into: &$0) }
    static let bindComplete: @Sendable (inout ByteBuffer) -> Void = { PGEncode.bindComplete(into: &$0) }
    static let noData: @Sendable (inout ByteBuffer) -> Void = { PGEncode.noData(into: &$0) }
    static let parameterDescription: @Sendable (inout ByteBuffer) -> Void = {
        $0.writeInteger(Backend.parameterDescription)
        $0.writeInteger(Int32(6))
        $0.writeInteger(Int16(0))
    }
    static func ready(_ status: PGTransactionStatus) -> (inout ByteBuffer) -> Void {
        { PGEncode.readyForQuery(status, into: &$0) }
    }
    static func complete(_ tag: String) -> (inout ByteBuffer) -> Void {
        { PGEncode.commandComplete(tag: tag, into: &$0) }
    }

    @Test func theAnswersToTheProxysParseAndDescribeAreDroppedAndTheRowTypeRecorded() throws {
        var machine = Send.attached()
        var backend = Send.FakeBackend()
        try Send.client(Send.parse("s1", "SELECT 1 AS a"), &machine, &backend)
        try Send.client(Send.sync, &machine, &backend)
        same(Self.relay(Self.closeComplete, &machine, &backend).action, .drop)
        same(Self.relay(Self.parseComplete, &machine, &backend).action, .forward)
        same(Self.relay(Self.parameterDescription, &machine, &backend).action, .drop)
        let row = Self.relay({ PGEncode.rowDescription(columnNames: ["a"], into: &$0) }, &machine, &backend)
        same(row.action, .drop)
        let shape = try #require(row.shape)
        #expect(shape.client == "s1" && shape.shape != nil && !shape.waiting)
        machine.recordShape(shape, cache: &backend.cache)
        #expect(machine.catalogue["s1"]?.shape == shape.shape)
        #expect(backend.cache.shape(of: shape.key) == shape.shape)
        same(Self.relay(Self.ready(.idle), &machine, &backend).action, .forward)
        #expect(machine.responses.isEmpty && machine.transactionStatus == .idle)
    }

    @Test func anErrorNamingTheProxysStatementNamesTheClients() throws {
        var machine = Send.attached()
        var backend = Send.FakeBackend()
        machine.catalogue.define("s1", ClientStatement(definition: Send.definition("SELECT 1"), analysed: true))
        let key = try #require(machine.catalogue["s1"]).key
        let serverName = backend.cache.parse(key, at: StatementEpoch.next())
        try Send.client(Send.bind("s1"), &machine, &backend)
        try Send.client(Send.sync, &machine, &backend)
        // The backend lost it (the proxy's view was wrong): the client reads its own name.
        let relayed = Self.relay(Self.error("26000", "prepared statement \"\(serverName)\" does not exist"), &machine, &backend)
        guard case .replace(let replacement) = relayed.action else {
            Issue.record("the error is rewritten")
            return
        }
        var body = replacement
        body.moveReaderIndex(forwardBy: 5)
        #expect(try PGParse.errorResponse(body).message == "prepared statement \"s1\" does not exist")
        #expect(relayed.statementsInvalidated)
        #expect(backend.cache.count == 0)
        // A Sync was sent: nothing the client sends next is skipped.
        #expect(!machine.skippingUntilSync)
        same(Self.relay(Self.ready(.idle), &machine, &backend).action, .forward)
    }

    @Test func anErrorBeforeTheSyncSkipsUntilItAndForgetsTheStatement() throws {
        var machine = Send.attached()
        var backend = Send.FakeBackend()
        try Send.client(Send.parse("s1", "SELECT nope"), &machine, &backend)
        #expect(machine.catalogue["s1"] != nil)
        same(Self.relay(Self.closeComplete, &machine, &backend).action, .drop)
        let relayed = Self.relay(Self.error("42703", "column \"nope\" does not exist"), &machine, &backend)
        same(relayed.action, .forward)
        #expect(machine.catalogue["s1"] == nil)
        #expect(machine.skippingUntilSync && machine.sentUnsynced)
        #expect(machine.responses.isEmpty)
        // The client's Bind is skipped as PostgreSQL skips it; its Sync goes.
        try Send.client(Send.bind("s1"), &machine, &backend)
        try Send.client(Send.sync, &machine, &backend)
        #expect(backend.take().last == "S")
        #expect(!machine.skippingUntilSync)
    }

    @Test func resetAllHoldsBackTheParameterReportsUntilItsReadyForQuery() throws {
        var machine = Send.attached()
        var backend = Send.FakeBackend()
        try Send.client(Send.query("RESET ALL"), &machine, &backend)
        #expect(machine.resetWindow != nil)
        let report = Self.relay({ PGEncode.parameterStatus(name: "DateStyle", value: "ISO, MDY", into: &$0) }, &machine, &backend)
        same(report.action, .drop)
        #expect(machine.resetWindow!.reports.readableBytes > 0)
        same(Self.relay(Self.complete("RESET"), &machine, &backend).action, .forward)
        same(Self.relay(Self.ready(.idle), &machine, &backend).action, .closeResetWindowBefore(.idle))
    }

    @Test func discardAllReleasesItsPinsAtItsCommandTag() throws {
        var machine = Send.attached()
        var backend = Send.FakeBackend()
        _ = machine.pins.pin(.temporaryObject)
        try Send.client(Send.query("DISCARD ALL"), &machine, &backend)
        let tag = Self.relay(Self.complete("DISCARD ALL"), &machine, &backend)
        same(tag.action, .forward)
        same(tag.unpinned, .temporaryObject)
        #expect(!machine.pins.isPinned)
        same(Self.relay(Self.ready(.idle), &machine, &backend).action, .closeResetWindowBefore(.idle))
    }

    @Test func copyInMakesTheClientsSyncsOweNothing() throws {
        var machine = Send.attached()
        var backend = Send.FakeBackend()
        try Send.client(Send.parse("", "COPY t FROM STDIN"), &machine, &backend)
        try Send.client(Send.bind(""), &machine, &backend)
        try Send.client(Send.execute(), &machine, &backend)
        same(Self.relay(Self.parseComplete, &machine, &backend).action, .forward)
        same(Self.relay(Self.bindComplete, &machine, &backend).action, .forward)
        let copy = Self.relay({
            $0.writeInteger(Backend.copyInResponse)
            $0.writeInteger(Int32(7))
            $0.writeInteger(UInt8(0))
            $0.writeInteger(Int16(0))
        }, &machine, &backend)
        same(copy.action, .forward)
        #expect(machine.copyInActive)
    }
}
