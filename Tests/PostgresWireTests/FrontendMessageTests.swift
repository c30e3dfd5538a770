import NIOCore
import PostgresWire
import Testing

@Suite struct FrontendMessageTests {
    @Test func queryRoundTripsAsStringAndSlice() throws {
        let frame = try encodeFrame { PGEncode.query("SELECT 'é'", into: &$0) }
        #expect(frame.type == PGMessageType.Frontend.query)
        #expect(try PGParse.query(frame.body) == "SELECT 'é'")
        let slice = try PGParse.queryBytes(frame.body)
        #expect(Array(slice.readableBytesView) == Array("SELECT 'é'".utf8))
    }

    @Test func queryRejectsMissingOrEmbeddedNUL() {
        #expect(throws: PGWireError.self) { try PGParse.query(ByteBuffer(Array("SELECT 1".utf8))) }
        #expect(throws: PGWireError.self) { try PGParse.query(ByteBuffer(Array("SELECT 1\0; DROP\0".utf8))) }
        #expect(throws: PGWireError.self) { try PGParse.queryBytes(ByteBuffer()) }
    }

    @Test func parseRoundTrips() throws {
        let frame = try encodeFrame {
            PGEncode.parse(statementName: "s1", query: "SELECT $1, $2", parameterTypeOIDs: [23, 0], into: &$0)
        }
        #expect(frame.type == PGMessageType.Frontend.parse)
        #expect(try PGParse.parseMessage(frame.body) == PGParseMessage(statementName: "s1", query: "SELECT $1, $2", parameterTypeOIDs: [23, 0]))
        #expect(!PGParse.firstCStringIsEmpty(frame.body))
        let name = try #require(PGParse.firstCString(frame.body))
        #expect(name.readableBytesView.elementsEqual("s1".utf8))

        let unnamed = try encodeFrame { PGEncode.parse(statementName: "", query: "SELECT 1", into: &$0) }
        #expect(PGParse.firstCStringIsEmpty(unnamed.body))
        #expect(try PGParse.parseMessage(unnamed.body).parameterTypeOIDs == [])
    }

    @Test func parseRejectsBadCounts() {
        #expect(throws: PGWireError.self) { try PGParse.parseMessage(ByteBuffer(Array("s\0q\0".utf8) + [0xFF, 0xFF])) }
        #expect(throws: PGWireError.self) { try PGParse.parseMessage(ByteBuffer(Array("s\0q\0".utf8) + [0x7F, 0xFF, 0, 0, 0, 1])) }
        #expect(throws: PGWireError.self) { try PGParse.parseMessage(ByteBuffer(Array("s\0q\0".utf8) + [0, 1, 0, 0])) }
        #expect(throws: PGWireError.self) { try PGParse.parseMessage(ByteBuffer(Array("s\0q\0".utf8))) }
        #expect(throws: PGWireError.self) { try PGParse.parseMessage(ByteBuffer(Array("s\0q".utf8))) }
    }

    @Test func bindRoundTripsNamesAndKeepsTheRestRaw() throws {
        let frame = try encodeFrame {
            PGEncode.bind(portalName: "p", statementName: "s1", parameters: [Array("42".utf8), nil], into: &$0)
        }
        #expect(frame.type == PGMessageType.Frontend.bind)
        let bind = try PGParse.bind(frame.body)
        #expect(bind.portalName == "p")
        #expect(bind.statementName == "s1")
        // formats: 0 codes; 2 params: "42", NULL; 0 result codes
        #expect(Array(bind.parametersAndFormats.readableBytesView) == [0, 0, 0, 2, 0, 0, 0, 2, 0x34, 0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0])

        let renamed = try encodeFrame {
            PGEncode.bind(portalName: "", statementName: "concierge_7", parametersAndFormats: bind.parametersAndFormats, into: &$0)
        }
        let reparsed = try PGParse.bind(renamed.body)
        #expect(reparsed == PGBindMessage(portalName: "", statementName: "concierge_7", parametersAndFormats: bind.parametersAndFormats))
        #expect(PGParse.firstCStringIsEmpty(renamed.body))
    }

    @Test func bindRejectsMissingNames() {
        #expect(throws: PGWireError.self) { try PGParse.bind(ByteBuffer(Array("p\0s".utf8))) }
        #expect(throws: PGWireError.self) { try PGParse.bind(ByteBuffer()) }
    }

    @Test(arguments: PGObjectKind.allCases)
    func describeAndCloseRoundTrip(kind: PGObjectKind) throws {
        let describe = try encodeFrame { PGEncode.describe(kind, name: "n", into: &$0) }
        #expect(describe.type == PGMessageType.Frontend.describe)
        #expect(try PGParse.describe(describe.body) == PGObjectReference(kind: kind, name: "n"))
        let close = try encodeFrame { PGEncode.close(kind, name: "", into: &$0) }
        #expect(close.type == PGMessageType.Frontend.close)
        #expect(try PGParse.close(close.body) == PGObjectReference(kind: kind, name: ""))
    }

    @Test func describeRejectsBadKinds() {
        #expect(throws: PGWireError.malformedMessage(type: 0x44, reason: "kind must be 'S' or 'P'")) {
            try PGParse.describe(ByteBuffer(Array("Xn\0".utf8)))
        }
        #expect(throws: PGWireError.self) { try PGParse.close(ByteBuffer(Array("S".utf8))) }
    }

    @Test func executeRoundTrips() throws {
        let frame = try encodeFrame { PGEncode.execute(portalName: "c1", maxRows: 50, into: &$0) }
        #expect(frame.type == PGMessageType.Frontend.execute)
        #expect(try PGParse.execute(frame.body) == PGExecuteMessage(portalName: "c1", maxRows: 50))
        #expect(throws: PGWireError.self) { try PGParse.execute(ByteBuffer(Array("c1\0".utf8) + [0, 0])) }
    }

    @Test func emptyMessagesAreByteExact() {
        #expect(encodedBytes { PGEncode.sync(into: &$0) } == [0x53, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.flush(into: &$0) } == [0x48, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.terminate(into: &$0) } == [0x58, 0, 0, 0, 4])
    }

    @Test func passwordMessageRoundTrips() throws {
        let frame = try encodeFrame { PGEncode.passwordMessage("md5abc", into: &$0) }
        #expect(frame.type == PGMessageType.Frontend.password)
        #expect(try PGParse.passwordMessage(frame.body) == "md5abc")
        #expect(throws: PGWireError.self) { try PGParse.passwordMessage(ByteBuffer([0x61, 0xFF, 0])) }
        #expect(throws: PGWireError.self) { try PGParse.passwordMessage(ByteBuffer([0x61])) }
        #expect(throws: PGWireError.self) { try PGParse.passwordMessage(ByteBuffer([0x61, 0, 0x62])) }
    }

    @Test func saslMessagesRoundTrip() throws {
        let initial = try encodeFrame {
            PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: Array("n,,n=,r=abc".utf8), into: &$0)
        }
        #expect(initial.type == PGMessageType.Frontend.password)
        #expect(try PGParse.saslInitialResponse(initial.body) == PGSASLInitialResponse(mechanism: "SCRAM-SHA-256", data: Array("n,,n=,r=abc".utf8)))

        let empty = try encodeFrame { PGEncode.saslInitialResponse(mechanism: "X", data: nil, into: &$0) }
        #expect(try PGParse.saslInitialResponse(empty.body) == PGSASLInitialResponse(mechanism: "X", data: nil))

        let response = try encodeFrame { PGEncode.saslResponse(data: [1, 2, 3], into: &$0) }
        #expect(PGParse.saslResponse(response.body) == [1, 2, 3])
    }

    @Test func saslInitialResponseRejectsBadLengths() {
        let mechanism = Array("SCRAM-SHA-256\0".utf8)
        #expect(throws: PGWireError.self) { try PGParse.saslInitialResponse(ByteBuffer(mechanism + [0xFF, 0xFF, 0xFF, 0xFE])) }
        #expect(throws: PGWireError.self) { try PGParse.saslInitialResponse(ByteBuffer(mechanism + [0, 0, 0, 9, 1])) }
        #expect(throws: PGWireError.self) { try PGParse.saslInitialResponse(ByteBuffer(mechanism + [0, 0, 0, 1, 1, 2])) }
        #expect(throws: PGWireError.self) { try PGParse.saslInitialResponse(ByteBuffer(mechanism + [0, 0])) }
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

    @Test func firstCStringHelpersHandleDegenerateBodies() {
        #expect(!PGParse.firstCStringIsEmpty(ByteBuffer()))
        #expect(PGParse.firstCString(ByteBuffer(Array("abc".utf8))) == nil)
        #expect(PGParse.firstCString(ByteBuffer([0]))?.readableBytes == 0)
    }

    @Test func parsersNeverTrapOnRandomBodies() {
        var generator = SeededGenerator(seed: 42)
        for _ in 0..<3000 {
            let body = ByteBuffer(generator.bytes(count: Int.random(in: 0...24, using: &generator)))
            _ = try? PGParse.query(body)
            _ = try? PGParse.parseMessage(body)
            _ = try? PGParse.bind(body)
            _ = try? PGParse.describe(body)
            _ = try? PGParse.close(body)
            _ = try? PGParse.execute(body)
            _ = try? PGParse.passwordMessage(body)
            _ = try? PGParse.saslInitialResponse(body)
            _ = try? PGParse.readyForQuery(body)
            _ = try? PGParse.errorResponse(body)
            _ = try? PGParse.parameterStatus(body)
            _ = try? PGParse.backendKeyData(body)
            _ = try? PGParse.authentication(body)
            _ = try? PGParse.negotiateProtocolVersion(body)
            _ = try? PGParse.commandComplete(body)
            _ = try? PGParse.rowDescription(body)
            _ = try? PGParse.dataRow(body)
            _ = PGParse.firstCString(body)
        }
    }
}
