import NIOCore
import PostgresWire
import Testing

@Suite struct FrontendMessageTests {
    @Test func queryRoundTripsAsStringAndSlice() throws {
        let frame = try encodeFrame { PGEncode.query("SELECT 'é'", into: &$0) }
        #expect(frame.type == PGMessageType.Frontend.query)
        #expect(String(buffer: try PGFrontend.Query(frame.body).sql) == "SELECT 'é'")
        let slice = try PGFrontend.Query(frame.body).sql
        #expect(Array(slice.readableBytesView) == Array("SELECT 'é'".utf8))
    }

    @Test func queryRejectsMissingOrEmbeddedNUL() {
        #expect(throws: PGWireError.self) { try PGFrontend.Query(ByteBuffer(Array("SELECT 1".utf8))) }
        #expect(throws: PGWireError.self) { try PGFrontend.Query(ByteBuffer(Array("SELECT 1\0; DROP\0".utf8))) }
        #expect(throws: PGWireError.self) { try PGFrontend.Query(ByteBuffer()) }
    }

    @Test func parseRoundTrips() throws {
        let frame = try encodeFrame {
            PGEncode.parse(statementName: "s1", query: "SELECT $1, $2", parameterTypeOIDs: [23, 0], into: &$0)
        }
        #expect(frame.type == PGMessageType.Frontend.parse)
        let parse = try PGFrontend.Parse(frame.body)
        #expect(String(buffer: parse.name) == "s1")
        #expect(String(buffer: parse.query) == "SELECT $1, $2")
        #expect(Array(parse.parameterTypes) == [23, 0])
        #expect(parse.name.readableBytes != 0)
        #expect(parse.name.readableBytesView.elementsEqual("s1".utf8))

        let unnamed = try encodeFrame { PGEncode.parse(statementName: "", query: "SELECT 1", into: &$0) }
        #expect(try PGFrontend.Parse(unnamed.body).name.readableBytes == 0)
        #expect(Array(try PGFrontend.Parse(unnamed.body).parameterTypes) == [])
    }

    @Test func parseRejectsBadCounts() {
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer(Array("s\0q\0".utf8) + [0xFF, 0xFF])) }
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer(Array("s\0q\0".utf8) + [0x7F, 0xFF, 0, 0, 0, 1])) }
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer(Array("s\0q\0".utf8) + [0, 1, 0, 0])) }
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer(Array("s\0q\0".utf8))) }
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer(Array("s\0q".utf8))) }
    }

    @Test func bindRoundTripsNamesAndKeepsTheRestRaw() throws {
        let frame = try encodeFrame {
            PGEncode.bind(portalName: "p", statementName: "s1", parameters: [Array("42".utf8), nil], into: &$0)
        }
        #expect(frame.type == PGMessageType.Frontend.bind)
        let bind = try PGFrontend.Bind(frame.body)
        #expect(String(buffer: bind.portal) == "p")
        #expect(String(buffer: bind.statement) == "s1")
        // formats: 0 codes; 2 params: "42", NULL; 0 result codes
        #expect(Array(bind.parametersAndFormats.readableBytesView) == [0, 0, 0, 2, 0, 0, 0, 2, 0x34, 0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0])

        let renamed = try encodeFrame {
            PGEncode.bind(portalName: "", statementName: "concierge_7", parametersAndFormats: bind.parametersAndFormats, into: &$0)
        }
        let reparsed = try PGFrontend.Bind(renamed.body)
        #expect(String(buffer: reparsed.portal) == "")
        #expect(String(buffer: reparsed.statement) == "concierge_7")
        #expect(reparsed.parametersAndFormats == bind.parametersAndFormats)
        #expect(reparsed.portal.readableBytes == 0)
    }

    @Test func bindRejectsMissingNames() {
        #expect(throws: PGWireError.self) { try PGFrontend.Bind(ByteBuffer(Array("p\0s".utf8))) }
        #expect(throws: PGWireError.self) { try PGFrontend.Bind(ByteBuffer()) }
    }

    @Test(arguments: PGObjectKind.allCases)
    func describeAndCloseRoundTrip(kind: PGObjectKind) throws {
        let describe = try encodeFrame { PGEncode.describe(kind, name: "n", into: &$0) }
        #expect(describe.type == PGMessageType.Frontend.describe)
        let described = try PGFrontend.describe(describe.body)
        #expect(described.kind == kind && String(buffer: described.name) == "n")
        let close = try encodeFrame { PGEncode.close(kind, name: "", into: &$0) }
        #expect(close.type == PGMessageType.Frontend.close)
        let closed = try PGFrontend.close(close.body)
        #expect(closed.kind == kind && String(buffer: closed.name) == "")
    }

    @Test func describeRejectsBadKinds() {
        #expect(throws: PGWireError.malformedMessage(type: 0x44, reason: "kind must be 'S' or 'P'")) {
            try PGFrontend.describe(ByteBuffer(Array("Xn\0".utf8)))
        }
        #expect(throws: PGWireError.self) { try PGFrontend.close(ByteBuffer(Array("S".utf8))) }
    }

    @Test func executeRoundTrips() throws {
        let frame = try encodeFrame { PGEncode.execute(portalName: "c1", maxRows: 50, into: &$0) }
        #expect(frame.type == PGMessageType.Frontend.execute)
        let execute = try PGFrontend.Execute(frame.body)
        #expect(String(buffer: execute.portal) == "c1" && execute.maxRows == 50)
        #expect(throws: PGWireError.self) { try PGFrontend.Execute(ByteBuffer(Array("c1\0".utf8) + [0, 0])) }
    }

    @Test func emptyMessagesAreByteExact() {
        #expect(encodedBytes { PGEncode.sync(into: &$0) } == [0x53, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.flush(into: &$0) } == [0x48, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.terminate(into: &$0) } == [0x58, 0, 0, 0, 4])
    }

    @Test func passwordMessageRoundTrips() throws {
        let frame = try encodeFrame { PGEncode.passwordMessage("md5abc", into: &$0) }
        #expect(frame.type == PGMessageType.Frontend.password)
        #expect(try PGFrontend.PasswordMessage(frame.body).string == "md5abc")
        #expect(throws: PGWireError.self) { try PGFrontend.PasswordMessage(ByteBuffer([0x61, 0xFF, 0])) }
        #expect(throws: PGWireError.self) { try PGFrontend.PasswordMessage(ByteBuffer([0x61])) }
        #expect(throws: PGWireError.self) { try PGFrontend.PasswordMessage(ByteBuffer([0x61, 0, 0x62])) }
    }

    @Test func saslMessagesRoundTrip() throws {
        let initial = try encodeFrame {
            PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: Array("n,,n=,r=abc".utf8), into: &$0)
        }
        #expect(initial.type == PGMessageType.Frontend.password)
        let parsed = try PGFrontend.SASLInitialResponse(initial.body)
        #expect(String(buffer: parsed.mechanism) == "SCRAM-SHA-256")
        #expect(parsed.data.map { Array($0.readableBytesView) } == Array("n,,n=,r=abc".utf8))

        let empty = try encodeFrame { PGEncode.saslInitialResponse(mechanism: "X", data: nil, into: &$0) }
        let parsedEmpty = try PGFrontend.SASLInitialResponse(empty.body)
        #expect(String(buffer: parsedEmpty.mechanism) == "X" && parsedEmpty.data == nil)

        let response = try encodeFrame { PGEncode.saslResponse(data: [1, 2, 3], into: &$0) }
        #expect(Array(PGFrontend.SASLResponse(response.body).data.readableBytesView) == [1, 2, 3])
    }

    @Test func saslInitialResponseRejectsBadLengths() {
        let mechanism = Array("SCRAM-SHA-256\0".utf8)
        #expect(throws: PGWireError.self) { try PGFrontend.SASLInitialResponse(ByteBuffer(mechanism + [0xFF, 0xFF, 0xFF, 0xFE])) }
        #expect(throws: PGWireError.self) { try PGFrontend.SASLInitialResponse(ByteBuffer(mechanism + [0, 0, 0, 9, 1])) }
        #expect(throws: PGWireError.self) { try PGFrontend.SASLInitialResponse(ByteBuffer(mechanism + [0, 0, 0, 1, 1, 2])) }
        #expect(throws: PGWireError.self) { try PGFrontend.SASLInitialResponse(ByteBuffer(mechanism + [0, 0])) }
    }

    @Test func startupPhaseRequestsRoundTrip() throws {
        #expect(encodedBytes { PGEncode.cancelRequest(processID: 1, secretKey: 2, into: &$0) }
            == [0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E, 0, 0, 0, 1, 0, 0, 0, 2])
        #expect(encodedBytes { PGEncode.sslRequest(into: &$0) } == [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F])
        var buffer = ByteBuffer()
        PGEncode.cancelRequest(processID: -5, secretKey: Int32.max, into: &buffer)
        PGEncode.sslRequest(into: &buffer)
        PGEncode.gssEncRequest(into: &buffer)
        #expect(try PGFraming.nextStartupPacket(from: &buffer) == .cancel(processID: -5, secretKey: Int32.max))
        #expect(try PGFraming.nextStartupPacket(from: &buffer) == .sslRequest)
        #expect(try PGFraming.nextStartupPacket(from: &buffer) == .gssEncRequest)
        #expect(buffer.readableBytes == 0)
    }

    @Test func namesAtTheStartOfDegenerateBodies() throws {
        // An empty body names nothing; a name needs its NUL; a lone NUL is the empty name.
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer()) }
        #expect(throws: PGWireError.self) { try PGFrontend.Bind(ByteBuffer()) }
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(ByteBuffer(Array("abc".utf8))) }
        #expect(throws: PGWireError.self) { try PGFrontend.Bind(ByteBuffer(Array("abc".utf8))) }
        #expect(try PGFrontend.Bind(ByteBuffer([0, 0])).portal.readableBytes == 0)
        #expect(try PGFrontend.Execute(ByteBuffer([0, 0, 0, 0, 0])).portal.readableBytes == 0)
    }

    @Test func parsersNeverTrapOnRandomBodies() {
        var generator = SeededGenerator(seed: 42)
        for _ in 0..<3000 {
            let body = ByteBuffer(generator.bytes(count: Int.random(in: 0...24, using: &generator)))
            _ = try? PGFrontend.Query(body)
            _ = try? PGFrontend.Parse(body)
            _ = try? PGFrontend.Parse(definition: body)
            _ = try? PGFrontend.Bind(body)
            _ = try? PGFrontend.BindArguments(body)
            _ = try? PGFrontend.describe(body)
            _ = try? PGFrontend.close(body)
            _ = try? PGFrontend.Execute(body)
            _ = try? PGFrontend.PasswordMessage(body)
            _ = try? PGFrontend.SASLInitialResponse(body)
            _ = PGFrontend.SASLResponse(body)
            _ = try? PGParse.readyForQuery(body)
            _ = try? PGParse.errorResponse(body)
            _ = try? PGParse.parameterStatus(body)
            _ = try? PGParse.backendKeyData(body)
            _ = try? PGParse.authentication(body)
            _ = try? PGParse.negotiateProtocolVersion(body)
            _ = try? PGParse.commandComplete(body)
            _ = try? PGParse.rowDescription(body)
            _ = try? PGParse.dataRow(body)
        }
    }
}
