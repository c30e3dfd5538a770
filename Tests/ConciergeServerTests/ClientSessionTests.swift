import PostgresProxy
import ConciergeConfig
import NIOCore
import NIOEmbedded
import PostgresWire
import Testing

@testable import ConciergeRuntime
@testable import ConciergeServer
@testable import PostgresServer

/// The client side of the protocol up to authentication, driven through an EmbeddedChannel.
/// Everything after login needs a real database and lives in tests/integration.
@Suite struct ClientSessionTests {
    let runtime: PostgresRuntime
    let channel: EmbeddedChannel

    init() throws {
        let proxy = ProxyConfiguration(
            name: "unit", listen: HostPort(host: "127.0.0.1", port: 1),
            auth: [AuthConfiguration(secretARN: "env:X", secret: .env(name: "X"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "127.0.0.1", port: 2))]))
        let embedded = EmbeddedEventLoop()
        runtime = try PostgresRuntime(
            configuration: proxy, credentials: [DatabaseCredential(username: "app", password: "secret")],
            group: embedded, logger: .init(label: "test"))
        channel = EmbeddedChannel(loop: embedded)
        try channel.pipeline.syncOperations.addHandler(runtime.makeSession(on: embedded))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
    }

    private func send(_ bytes: [UInt8]) throws {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try channel.writeInbound(buffer)
    }

    private func startupPacket(version: UInt32 = PGProtocol.version3, _ parameters: [(String, String)]) -> [UInt8] {
        var buffer = ByteBuffer()
        PGEncode.startupMessage(
            parameters: parameters.map { StartupParameter(name: $0.0, value: $0.1) }, protocolVersion: version,
            into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// All bytes the session wrote so far, as typed frames.
    private func readFrames() throws -> [PGFrame] {
        var all = ByteBuffer()
        while var next = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&next) }
        var frames: [PGFrame] = []
        while let frame = try PGFraming.nextFrame(from: &all, maxMessageSize: 1 << 20) { frames.append(frame) }
        return frames
    }

    private func errorMessage(_ frames: [PGFrame]) throws -> PGDiagnosticFields? {
        guard let frame = frames.first(where: { $0.type == PGMessageType.Backend.errorResponse }) else { return nil }
        return try PGParse.errorResponse(frame.body)
    }

    @Test func sslRequestIsAnsweredNo() throws {
        var buffer = ByteBuffer()
        PGEncode.sslRequest(into: &buffer)
        try channel.writeInbound(buffer)
        let reply = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(Array(reply.readableBytesView) == [UInt8(ascii: "N")])
        #expect(channel.isActive)
    }

    @Test func bytesAfterSSLRequestAreRefused() throws {
        var buffer = ByteBuffer()
        PGEncode.sslRequest(into: &buffer)
        buffer.writeBytes(startupPacket([("user", "app")]))
        try channel.writeInbound(buffer)
        let error = try #require(try errorMessage(readFrames()))
        #expect(error.code == "08P01")
        #expect(error.message == "received unencrypted data after SSL request")
        #expect(!channel.isActive)
    }

    @Test func protocolTwoIsRefusedAsPostgreSQLDoes() throws {
        try send(startupPacket(version: 2 << 16, [("user", "app")]))
        let error = try #require(try errorMessage(readFrames()))
        #expect(error.code == "0A000")
        #expect(error.message == "unsupported frontend protocol 2.0: server supports 3.0 to 3.0")
        #expect(!channel.isActive)
    }

    @Test func startupWithoutUserIsRefused() throws {
        try send(startupPacket([("database", "app")]))
        let error = try #require(try errorMessage(readFrames()))
        #expect(error.code == "28000")
        #expect(!channel.isActive)
    }

    @Test func impossibleStartupLengthIsRefused() throws {
        try send([0, 0, 0, 3, 0, 0, 0, 0])
        let error = try #require(try errorMessage(readFrames()))
        #expect(error.code == "08P01")
        #expect(!channel.isActive)
    }

    @Test func scramIsOfferedToKnownAndUnknownUsersAlike() throws {
        for user in ["app", "nobody"] {
            let channel = EmbeddedChannel(loop: self.channel.embeddedEventLoop)
            try channel.pipeline.syncOperations.addHandler(runtime.makeSession(on: channel.eventLoop))
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
            var buffer = ByteBuffer()
            buffer.writeBytes(startupPacket([("user", user)]))
            try channel.writeInbound(buffer)
            var reply = try #require(try channel.readOutbound(as: ByteBuffer.self))
            let frame = try #require(try PGFraming.nextFrame(from: &reply, maxMessageSize: 1024))
            #expect(try PGParse.authentication(frame.body) == .sasl(mechanisms: ["SCRAM-SHA-256"]))
        }
    }

    /// A startup packet that takes two reads: the session keeps its first part as a copy, so
    /// SwiftNIO's receive buffer is not held (SwiftNIO reuses it only if no one else holds it;
    /// otherwise it allocates another, and an array of buffer slots, for the connection's life).
    @Test func aPartialPacketIsCopiedOutOfTheReceiveBuffer() throws {
        let packet = startupPacket([("user", "app"), ("application_name", String(repeating: "x", count: 200))])
        var first = channel.allocator.buffer(capacity: 64)
        first.writeBytes(packet[..<64])
        try channel.writeInbound(first)
        #expect(first.modifyIfUniquelyOwned { _ in true } == true)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        var rest = channel.allocator.buffer(capacity: packet.count - 64)
        rest.writeBytes(packet[64...])
        try channel.writeInbound(rest)
        var reply = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let frame = try #require(try PGFraming.nextFrame(from: &reply, maxMessageSize: 1024))
        #expect(try PGParse.authentication(frame.body) == .sasl(mechanisms: ["SCRAM-SHA-256"]))
    }

    @Test func wrongPasswordAndUnknownUserFailTheSameWay() throws {
        for user in ["app", "nobody"] {
            let channel = EmbeddedChannel(loop: self.channel.embeddedEventLoop)
            try channel.pipeline.syncOperations.addHandler(runtime.makeSession(on: channel.eventLoop))
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
            var client = SCRAMClientSession(password: "wrong")
            var out = ByteBuffer()
            out.writeBytes(startupPacket([("user", user)]))
            try channel.writeInbound(out)
            _ = try channel.readOutbound(as: ByteBuffer.self)
            out = ByteBuffer()
            PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: client.clientFirstMessage(), into: &out)
            try channel.writeInbound(out)
            var reply = try #require(try channel.readOutbound(as: ByteBuffer.self))
            let frame = try #require(try PGFraming.nextFrame(from: &reply, maxMessageSize: 1024))
            guard case .saslContinue(let serverFirst) = try PGParse.authentication(frame.body) else {
                Issue.record("expected SASL continue")
                return
            }
            out = ByteBuffer()
            PGEncode.saslResponse(data: try client.receiveServerFirst(serverFirst), into: &out)
            try channel.writeInbound(out)
            var rest = try #require(try channel.readOutbound(as: ByteBuffer.self))
            let errorFrame = try #require(try PGFraming.nextFrame(from: &rest, maxMessageSize: 1024))
            let error = try PGParse.errorResponse(errorFrame.body)
            #expect(error.code == "28P01")
            #expect(error.message == "password authentication failed for user \"\(user)\"")
            #expect(!channel.isActive)
        }
    }
}

@Suite struct LoggedStatementTests {
    @Test func aStatementThatIsNotUTF8IsNotLogged() {
        // LATIN1 bytes of `SELECT $a£$ x $aô$ secret $a£$`: decoded, both tags read `$a\u{FFFD}$`
        // and the quote seemed to end before `secret` (the fuzz harness's redact target).
        var latin1 = ByteBuffer()
        latin1.writeBytes(Array("SELECT $a".utf8) + [0xA3] + Array("$ x $a".utf8) + [0xF4] + Array("$ secret $a".utf8) + [0xA3] + Array("$".utf8))
        let logged = ClientSession.loggableStatement(latin1)
        #expect(!logged.contains("secret"))
        var utf8 = ByteBuffer(string: "ALTER ROLE victim PASSWORD 'secret'")
        #expect(!ClientSession.loggableStatement(utf8).contains("secret"))
        utf8 = ByteBuffer(string: "SET search_path = public")
        #expect(ClientSession.loggableStatement(utf8).contains("search_path"))
    }
}

@Suite struct SessionParameterTests {
    @Test func optionsParseLikePostgreSQL() throws {
        let parsed = try ClientLogin.parseOptions("-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=a\\ b")
        #expect(parsed.map { "\($0.0)=\($0.1)" } == ["search_path=a,b", "statement_timeout=5s", "work_mem=4MB", "x=a b"])
        #expect(throws: (any Error).self) { try ClientLogin.parseOptions("-x") }
        #expect(throws: (any Error).self) { try ClientLogin.parseOptions("-c") }
        #expect(throws: (any Error).self) { try ClientLogin.parseOptions("-c =v") }
    }

    @Test func parameterSyncSetsOnlyDifferencesAndResetsTheRest() {
        #expect(BackendConnection.parameterSyncSQL(from: ["a": "1"], to: ["a": "1"]) == nil)
        #expect(
            BackendConnection.parameterSyncSQL(from: ["a": "1", "c": "3"], to: ["a": "2", "b": "1"])
                == "SELECT pg_catalog.set_config(E'a', E'2', false) IS NULL, pg_catalog.set_config(E'b', E'1', false) IS NULL; RESET \"c\"")
    }

    @Test func parametersSetByInitQueryGoBackToTheirInitValue() {
        #expect(
            BackendConnection.parameterSyncSQL(
                from: ["statement_timeout": "5s"], to: [:], baseline: ["statement_timeout": "1234ms"])
                == "SELECT pg_catalog.set_config(E'statement_timeout', E'1234ms', false) IS NULL")
    }

    @Test func startupValuesApplyToTheDefaultsNotToThePreviousClients() {
        // `DateStyle=SQL` keeps the current day/month order: from a backend the last client left
        // at `German, DMY` it must still give what a direct login gives (the default's order).
        #expect(
            BackendConnection.parameterSyncSQL(
                from: ["datestyle": "German, DMY", "timezone": "UTC"], to: ["datestyle": "SQL", "timezone": "UTC"],
                fromDefaults: true)
                == "RESET \"datestyle\"; SELECT pg_catalog.set_config(E'datestyle', E'SQL', false) IS NULL")
        #expect(
            BackendConnection.parameterSyncSQL(
                from: ["datestyle": "German, DMY"], to: ["datestyle": "SQL"], baseline: ["datestyle": "ISO, DMY"],
                fromDefaults: true)
                == "SELECT pg_catalog.set_config(E'datestyle', E'ISO, DMY', false) IS NULL; "
                + "SELECT pg_catalog.set_config(E'datestyle', E'SQL', false) IS NULL")
    }

    @Test func literalsAndIdentifiersAreQuoted() {
        #expect(BackendConnection.quoteLiteral("it's a \\ test") == "E'it''s a \\\\ test'")
        #expect(BackendConnection.quoteIdentifier("we\"ird") == "\"we\"\"ird\"")
    }
}
