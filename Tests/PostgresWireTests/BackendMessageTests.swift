import NIOCore
import PostgresWire
import Testing

@Suite struct BackendMessageTests {
    @Test func readyForQueryIsByteExactAndRoundTrips() throws {
        #expect(encodedBytes { PGEncode.readyForQuery(.idle, into: &$0) } == [0x5A, 0, 0, 0, 5, 0x49])
        for status in PGTransactionStatus.allCases {
            let frame = try encodeFrame { PGEncode.readyForQuery(status, into: &$0) }
            #expect(frame.type == PGMessageType.Backend.readyForQuery)
            #expect(try PGParse.readyForQuery(frame.body) == status)
        }
    }

    @Test func readyForQueryRejectsBadBodies() {
        #expect(throws: PGWireError.self) { try PGParse.readyForQuery(ByteBuffer([0x58])) }
        #expect(throws: PGWireError.self) { try PGParse.readyForQuery(ByteBuffer()) }
        #expect(throws: PGWireError.self) { try PGParse.readyForQuery(ByteBuffer([0x49, 0x49])) }
    }

    @Test func authenticationMessagesRoundTrip() throws {
        #expect(encodedBytes { PGEncode.authenticationOk(into: &$0) } == [0x52, 0, 0, 0, 8, 0, 0, 0, 0])
        let cases: [(AuthenticationRequest, (inout ByteBuffer) -> Void)] = [
            (.ok, { PGEncode.authenticationOk(into: &$0) }),
            (.cleartextPassword, { PGEncode.authenticationCleartextPassword(into: &$0) }),
            (.md5Password(salt: [9, 8, 7, 6]), { PGEncode.authenticationMD5Password(salt: [9, 8, 7, 6], into: &$0) }),
            (.sasl(mechanisms: ["SCRAM-SHA-256"]), { PGEncode.authenticationSASL(into: &$0) }),
            (.sasl(mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]), {
                PGEncode.authenticationSASL(mechanisms: ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], into: &$0)
            }),
            (.saslContinue(Array("r=abc,s=c2FsdA==,i=4096".utf8)), {
                PGEncode.authenticationSASLContinue(data: Array("r=abc,s=c2FsdA==,i=4096".utf8), into: &$0)
            }),
            (.saslFinal(Array("v=xyz".utf8)), { PGEncode.authenticationSASLFinal(data: Array("v=xyz".utf8), into: &$0) }),
        ]
        for (expected, encode) in cases {
            let frame = try encodeFrame(encode)
            #expect(frame.type == PGMessageType.Backend.authentication)
            #expect(try PGParse.authentication(frame.body) == expected)
        }
    }

    @Test func authenticationParsesOtherCodes() throws {
        #expect(try PGParse.authentication(ByteBuffer([0, 0, 0, 2])) == .kerberosV5)
        #expect(try PGParse.authentication(ByteBuffer([0, 0, 0, 7])) == .gss)
        #expect(try PGParse.authentication(ByteBuffer([0, 0, 0, 8, 1, 2, 3])) == .gssContinue)
        #expect(try PGParse.authentication(ByteBuffer([0, 0, 0, 9])) == .sspi)
        #expect(try PGParse.authentication(ByteBuffer([0, 0, 0, 99, 1])) == .unknown(99))
        #expect(throws: PGWireError.self) { try PGParse.authentication(ByteBuffer([0, 0, 0, 5, 1, 2, 3])) }  // short salt
        #expect(throws: PGWireError.self) { try PGParse.authentication(ByteBuffer([0, 0, 0, 0, 0])) }  // trailing byte
        #expect(throws: PGWireError.self) { try PGParse.authentication(ByteBuffer([0, 0, 0, 10, 0x41, 0])) }  // no list terminator
        #expect(throws: PGWireError.self) { try PGParse.authentication(ByteBuffer([0, 0])) }
    }

    @Test func md5SaltIsAlwaysFourBytes() throws {
        let frame = try encodeFrame { PGEncode.authenticationMD5Password(salt: [1, 2], into: &$0) }
        #expect(try PGParse.authentication(frame.body) == .md5Password(salt: [1, 2, 0, 0]))
    }

    @Test func parameterStatusRoundTrips() throws {
        let frame = try encodeFrame { PGEncode.parameterStatus(name: "TimeZone", value: "Europe/Paris", into: &$0) }
        #expect(frame.type == PGMessageType.Backend.parameterStatus)
        #expect(try PGParse.parameterStatus(frame.body) == PGParameterStatus(name: "TimeZone", value: "Europe/Paris"))
        #expect(throws: PGWireError.self) { try PGParse.parameterStatus(ByteBuffer(Array("a\0b".utf8))) }
    }

    @Test func backendKeyDataIsByteExactAndRoundTrips() throws {
        #expect(encodedBytes { PGEncode.backendKeyData(processID: 0x0102_0304, secretKey: -1, into: &$0) }
            == [0x4B, 0, 0, 0, 12, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF])
        let frame = try encodeFrame { PGEncode.backendKeyData(processID: 77, secretKey: 1_234_567, into: &$0) }
        #expect(try PGParse.backendKeyData(frame.body) == PGBackendKeyData(processID: 77, secretKey: 1_234_567))
        #expect(throws: PGWireError.self) { try PGParse.backendKeyData(ByteBuffer([0, 0, 0, 1, 0, 0, 0])) }
    }

    @Test func errorResponseRoundTrips() throws {
        let fields = PGErrorFields.fatal(code: PGSQLState.tooManyConnections, message: "too many", detail: "d", hint: "h")
        let frame = try encodeFrame { PGEncode.errorResponse(fields, into: &$0) }
        #expect(frame.type == PGMessageType.Backend.errorResponse)
        let parsed = try PGParse.errorResponse(frame.body)
        #expect(parsed.severity == "FATAL")
        #expect(parsed[PGDiagnosticFields.Code.severity] == "FATAL")
        #expect(parsed.code == "53300")
        #expect(parsed.message == "too many")
        #expect(parsed.detail == "d")
        #expect(parsed.hint == "h")
        #expect(parsed.isFatal)
        #expect(parsed.errorFields == fields)
        #expect(parsed.fields.count == 6)
    }

    @Test func errorResponseIsByteExact() {
        let bytes = encodedBytes { PGEncode.errorResponse(.error(code: "08P01", message: "bad"), into: &$0) }
        let body = Array("SERROR\0VERROR\0C08P01\0Mbad\0\0".utf8)
        #expect(bytes == [0x45, 0, 0, 0, UInt8(body.count + 4)] + body)
    }

    @Test func noticeResponseRoundTripsWithoutOptionalFields() throws {
        let fields = PGErrorFields.notice(message: "hello")
        let frame = try encodeFrame { PGEncode.noticeResponse(fields, into: &$0) }
        #expect(frame.type == PGMessageType.Backend.noticeResponse)
        let parsed = try PGParse.noticeResponse(frame.body)
        #expect(parsed.errorFields == fields)
        #expect(parsed.detail == nil)
        #expect(!parsed.isFatal)
    }

    @Test func diagnosticFieldsKeepUnknownCodesAndRejectMissingTerminator() throws {
        let parsed = try PGParse.errorResponse(ByteBuffer(Array("SERREUR\0Zfuture\0\0".utf8)))
        #expect(parsed.severity == "ERREUR")  // falls back to S without V
        #expect(parsed[UInt8(ascii: "Z")] == "future")
        #expect(parsed.errorFields.code == PGSQLState.internalError)
        #expect(throws: PGWireError.self) { try PGParse.errorResponse(ByteBuffer(Array("SERROR\0".utf8))) }
        #expect(throws: PGWireError.self) { try PGParse.errorResponse(ByteBuffer(Array("SERROR".utf8))) }
        #expect(throws: PGWireError.self) { try PGParse.errorResponse(ByteBuffer(Array("\0x".utf8))) }
    }

    @Test func negotiateProtocolVersionRoundTrips() throws {
        let frame = try encodeFrame {
            PGEncode.negotiateProtocolVersion(newestMinorVersion: 0, unsupportedOptions: ["_pq_.a", "_pq_.b"], into: &$0)
        }
        #expect(frame.type == PGMessageType.Backend.negotiateProtocolVersion)
        #expect(try PGParse.negotiateProtocolVersion(frame.body) == PGNegotiateProtocolVersion(newestMinorVersion: 0, unsupportedOptions: ["_pq_.a", "_pq_.b"]))
        // A count larger than the message cannot cause a large allocation.
        #expect(throws: PGWireError.self) { try PGParse.negotiateProtocolVersion(ByteBuffer([0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF])) }
        #expect(throws: PGWireError.self) { try PGParse.negotiateProtocolVersion(ByteBuffer([0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])) }
    }

    @Test func commandCompleteRoundTrips() throws {
        let frame = try encodeFrame { PGEncode.commandComplete(tag: "INSERT 0 1", into: &$0) }
        #expect(frame.type == PGMessageType.Backend.commandComplete)
        #expect(try PGParse.commandComplete(frame.body) == "INSERT 0 1")
    }

    @Test func emptyMessagesAreByteExact() {
        #expect(encodedBytes { PGEncode.parseComplete(into: &$0) } == [0x31, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.bindComplete(into: &$0) } == [0x32, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.closeComplete(into: &$0) } == [0x33, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.emptyQueryResponse(into: &$0) } == [0x49, 0, 0, 0, 4])
        #expect(encodedBytes { PGEncode.noData(into: &$0) } == [0x6E, 0, 0, 0, 4])
    }

    @Test func sslAndGSSRepliesAreSingleBytes() {
        #expect(encodedBytes { PGEncode.sslResponse(accepted: true, into: &$0) } == [0x53])
        #expect(encodedBytes { PGEncode.sslResponse(accepted: false, into: &$0) } == [0x4E])
        #expect(encodedBytes { PGEncode.gssEncResponse(accepted: true, into: &$0) } == [0x47])
        #expect(encodedBytes { PGEncode.gssEncResponse(accepted: false, into: &$0) } == [0x4E])
    }

    @Test func rowDescriptionAndDataRowRoundTrip() throws {
        let columns = [
            PGColumnDescription(name: "pg_is_in_recovery", typeOID: 16, typeSize: 1),
            PGColumnDescription(name: "max_connections"),
        ]
        let description = try encodeFrame { PGEncode.rowDescription(columns, into: &$0) }
        #expect(description.type == PGMessageType.Backend.rowDescription)
        #expect(try PGParse.rowDescription(description.body) == columns)

        let names = try encodeFrame { PGEncode.rowDescription(columnNames: ["a", "b"], into: &$0) }
        #expect(try PGParse.rowDescription(names.body).map(\.name) == ["a", "b"])
        #expect(try PGParse.rowDescription(names.body).allSatisfy { $0.typeOID == PGColumnDescription.textTypeOID })

        let row = try encodeFrame { PGEncode.dataRow(["f", nil, "", "100"], into: &$0) }
        #expect(row.type == PGMessageType.Backend.dataRow)
        #expect(try PGParse.dataRowStrings(row.body) == ["f", nil, "", "100"])
        let slices = try PGParse.dataRow(row.body)
        #expect(slices.count == 4)
        #expect(slices[1] == nil)
    }

    @Test func dataRowRejectsLiesAboutLengths() {
        #expect(throws: PGWireError.self) { try PGParse.dataRow(ByteBuffer([0, 1, 0, 0, 0, 5, 0x61])) }
        #expect(throws: PGWireError.self) { try PGParse.dataRow(ByteBuffer([0, 1, 0xFF, 0xFF, 0xFF, 0xFE])) }
        #expect(throws: PGWireError.self) { try PGParse.dataRow(ByteBuffer([0x7F, 0xFF])) }
        #expect(throws: PGWireError.self) { try PGParse.dataRow(ByteBuffer([0xFF, 0xFF])) }
        #expect(throws: PGWireError.self) { try PGParse.rowDescription(ByteBuffer([0, 1, 0x61, 0])) }
    }

    @Test func stringsWithNULCannotBreakFraming() throws {
        let frame = try encodeFrame { PGEncode.parameterStatus(name: "a\0b", value: "c", into: &$0) }
        #expect(try PGParse.parameterStatus(frame.body) == PGParameterStatus(name: "a", value: "c"))
    }

    @Test func errorDescriptionsAreReadable() {
        #expect(PGWireError.malformedMessage(type: 0x51, reason: "x").description == "malformed message of type 'Q': x")
        #expect(PGWireError.malformedMessage(type: 0x01, reason: "x").description == "malformed message of type 0x1: x")
        #expect(PGWireError.unsupportedProtocolVersion(2 << 16).description == "unsupported frontend protocol 2.0")
    }
}
