import NIOCore
import PostgresWire
import Testing

/// The zero-copy views of `PGFrontend`: what they read, that they share the body's storage, and
/// that they reject what PostgreSQL rejects, with the reasons clients see.
@Suite struct FrontendViewTests {
    /// One valid body of each message a strict view parses, by name.
    static let strictBodies: [(String, [UInt8])] = [
        ("Query", Array("SELECT 1\0".utf8)),
        ("Parse", Array("s1\0SELECT $1, $2\0".utf8) + [0, 2, 0, 0, 0, 23, 0, 0, 0, 0]),
        ("Parse unnamed", Array("\0SELECT 1\0".utf8) + [0, 0]),
        ("BindArguments", [0, 1, 0, 1, 0, 2, 0, 0, 0, 2, 0x34, 0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0, 1, 0, 0]),
        ("Describe", Array("Sname\0".utf8)),
        ("Close", Array("P\0".utf8)),
        ("Execute", Array("c1\0".utf8) + [0, 0, 0, 50]),
        ("PasswordMessage", Array("md5abc\0".utf8)),
        ("SASLInitialResponse", Array("SCRAM-SHA-256\0".utf8) + [0, 0, 0, 3, 0x6E, 0x2C, 0x2C]),
        ("SASLInitialResponse without data", Array("X\0".utf8) + [0xFF, 0xFF, 0xFF, 0xFF]),
    ]

    static func parse(_ name: String, _ body: ByteBuffer) throws(PGWireError) {
        switch name {
        case "Query": _ = try PGFrontend.Query(body)
        case "Parse", "Parse unnamed": _ = try PGFrontend.Parse(body)
        case "BindArguments": _ = try PGFrontend.BindArguments(body)
        case "Describe": _ = try PGFrontend.describe(body)
        case "Close": _ = try PGFrontend.close(body)
        case "Execute": _ = try PGFrontend.Execute(body)
        case "PasswordMessage": _ = try PGFrontend.PasswordMessage(body)
        default: _ = try PGFrontend.SASLInitialResponse(body)
        }
    }

    @Test(arguments: strictBodies)
    func everyTruncationAndEveryTrailingByteIsRejected(name: String, bytes: [UInt8]) throws {
        try Self.parse(name, ByteBuffer(bytes))
        for length in 0..<bytes.count {
            #expect(throws: PGWireError.self, "\(name) cut to \(length) bytes") { try Self.parse(name, ByteBuffer(Array(bytes[..<length]))) }
        }
        for extra: UInt8 in [0, 0x41] {
            #expect(throws: PGWireError.self, "\(name) with a trailing byte") { try Self.parse(name, ByteBuffer(bytes + [extra])) }
        }
    }

    @Test func bindNeedsBothNamesOnlyAndKeepsTheRest() throws {
        let names = Array("p\0s1\0".utf8)
        let rest: [UInt8] = [0, 0, 0, 1, 0, 0, 0, 1, 0x37, 0, 0]
        for length in 0..<names.count {
            #expect(throws: PGWireError.self) { try PGFrontend.Bind(ByteBuffer(Array(names[..<length]))) }
        }
        // Whatever follows the names is forwarded as it came; PostgreSQL judges it.
        for length in 0...rest.count {
            let bind = try PGFrontend.Bind(ByteBuffer(names + rest[..<length]))
            #expect(String(buffer: bind.portal) == "p" && String(buffer: bind.statement) == "s1")
            #expect(Array(bind.parametersAndFormats.readableBytesView) == Array(rest[..<length]))
        }
        let arguments = try PGFrontend.Bind(ByteBuffer(names + rest)).arguments()
        #expect(arguments.parameterFormatCount == 0 && arguments.parameterCount == 1 && arguments.resultFormatCount == 0)
        #expect(Array(arguments.parameterValues.readableBytesView) == [0, 0, 0, 1, 0x37])
    }

    @Test func bindArgumentsReadFormatsValuesAndResults() throws {
        // One format code (binary) for both parameters, "42" and NULL, one result format (text).
        let arguments = try PGFrontend.BindArguments(ByteBuffer(Self.strictBodies[3].1))
        #expect(arguments.parameterFormatCount == 1)
        #expect(Array(arguments.parameterFormats.readableBytesView) == [0, 1])
        #expect(arguments.parameterCount == 2)
        #expect(Array(arguments.parameterValues.readableBytesView) == [0, 0, 0, 2, 0x34, 0x32, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(arguments.resultFormatCount == 1)
        #expect(Array(arguments.resultFormats.readableBytesView) == [0, 0])
    }

    @Test func bindArgumentsRejectWhatPostgreSQLRejects() {
        // Two format codes for one parameter (PostgreSQL: "bind message has 2 parameter formats
        // but 1 parameters").
        #expect(throws: PGWireError.malformedMessage(type: 0x42, reason: "2 parameter formats for 1 parameters")) {
            try PGFrontend.BindArguments(ByteBuffer([0, 2, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x42, reason: "negative parameter length")) {
            try PGFrontend.BindArguments(ByteBuffer([0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE, 0, 0]))
        }
        #expect(throws: PGWireError.self) { try PGFrontend.BindArguments(ByteBuffer([0, 0, 0, 1, 0, 0, 0, 5, 1, 0, 0])) }
        #expect(throws: PGWireError.self) { try PGFrontend.BindArguments(ByteBuffer([0xFF, 0xFF])) }
    }

    @Test func viewsShareTheBodysStorage() throws {
        let body = ByteBuffer(Self.strictBodies[1].1)
        let parse = try PGFrontend.Parse(body)
        let base = body.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(parse.name.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } == base)
        #expect(parse.definition.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } == base + 3)
        #expect(parse.query.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } == base + 3)
        #expect(parse.parameterTypes.oids.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } == base + 19)
    }

    @Test func aParseDefinitionParsesAgainAlone() throws {
        let parse = try PGFrontend.Parse(ByteBuffer(Self.strictBodies[1].1))
        #expect(Array(parse.definition.readableBytesView) == Array(Self.strictBodies[1].1.dropFirst(3)))
        #expect(try PGFrontend.Parse(name: parse.name, definition: parse.definition) == parse)
        let unnamed = try PGFrontend.Parse(definition: parse.definition)
        #expect(unnamed.name.readableBytes == 0 && unnamed.query == parse.query && Array(unnamed.parameterTypes) == [23, 0])
        #expect(throws: PGWireError.self) { try PGFrontend.Parse(definition: ByteBuffer(Array("SELECT 1\0".utf8))) }
    }

    @Test func parameterTypeCountsAreUnsignedAsInPostgreSQL() throws {
        // PostgreSQL reads the count as an unsigned 16-bit word: up to 65535 parameters.
        let count = 40_000
        var body = ByteBuffer(Array("\0q\0".utf8))
        body.writeInteger(UInt16(count))
        for oid in 0..<count { body.writeInteger(UInt32(oid)) }
        let parse = try PGFrontend.Parse(body)
        #expect(parse.parameterTypes.count == count)
        #expect(parse.parameterTypes[0] == 0 && parse.parameterTypes[count - 1] == UInt32(count - 1))
    }

    @Test func emptyNames() throws {
        let parse = try PGFrontend.Parse(ByteBuffer(Self.strictBodies[2].1))
        #expect(parse.name.readableBytes == 0 && String(buffer: parse.query) == "SELECT 1" && parse.parameterTypes.isEmpty)
        let bind = try PGFrontend.Bind(ByteBuffer([0, 0, 0, 0, 0, 0, 0, 0]))
        #expect(bind.portal.readableBytes == 0 && bind.statement.readableBytes == 0)
        #expect(try bind.arguments().parameterCount == 0)
        let describe = try PGFrontend.describe(ByteBuffer(Array("S\0".utf8)))
        #expect(describe.isUnnamedStatement)
        #expect(try PGFrontend.describe(ByteBuffer(Array("P\0".utf8))).isUnnamedStatement == false)
        #expect(try PGFrontend.close(ByteBuffer(Array("Sa\0".utf8))).isUnnamedStatement == false)
        #expect(try PGFrontend.close(ByteBuffer(Array("S\0".utf8))).isUnnamedStatement)
        #expect(try PGFrontend.Execute(ByteBuffer([0, 0, 0, 0, 0])).portal.readableBytes == 0)
        #expect(try PGFrontend.Query(ByteBuffer([0])).sql.readableBytes == 0)
        #expect(try PGFrontend.PasswordMessage(ByteBuffer([0])).string == "")
        #expect(try PGFrontend.SASLInitialResponse(ByteBuffer([0, 0, 0, 0, 0])).data?.readableBytes == 0)
    }

    /// The reasons a client sees in the proxy's protocol-violation error ("invalid message of type
    /// 81: ..."): the texts the earlier parsers gave.
    @Test func reasonsAreThoseClientsSee() {
        #expect(throws: PGWireError.malformedMessage(type: 0x51, reason: "missing NUL terminator in query string")) {
            try PGFrontend.Query(ByteBuffer(Array("SELECT 1".utf8)))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x51, reason: "2 unexpected trailing bytes")) {
            try PGFrontend.Query(ByteBuffer(Array("SELECT 1\0;\0".utf8)))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "missing NUL terminator in password")) {
            try PGFrontend.PasswordMessage(ByteBuffer([0x61]))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "password is not valid UTF-8")) {
            try PGFrontend.PasswordMessage(ByteBuffer([0x61, 0xFF, 0]))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "1 unexpected trailing bytes")) {
            try PGFrontend.PasswordMessage(ByteBuffer([0x61, 0, 0x62]))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "missing NUL terminator in mechanism")) {
            try PGFrontend.SASLInitialResponse(ByteBuffer(Array("SCRAM".utf8)))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "truncated response length")) {
            try PGFrontend.SASLInitialResponse(ByteBuffer(Array("X\0".utf8) + [0, 0]))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "negative response length")) {
            try PGFrontend.SASLInitialResponse(ByteBuffer(Array("X\0".utf8) + [0xFF, 0xFF, 0xFF, 0xFE]))
        }
        #expect(throws: PGWireError.malformedMessage(type: 0x70, reason: "truncated response")) {
            try PGFrontend.SASLInitialResponse(ByteBuffer(Array("X\0".utf8) + [0, 0, 0, 2, 1]))
        }
    }

    @Test func aSASLResponseIsItsWholeBody() {
        #expect(PGFrontend.SASLResponse(ByteBuffer()).data.readableBytes == 0)
        #expect(Array(PGFrontend.SASLResponse(ByteBuffer([0, 1, 0])).data.readableBytesView) == [0, 1, 0])
    }
}
