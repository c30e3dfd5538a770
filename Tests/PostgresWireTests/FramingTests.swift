import NIOCore
import NIOTestUtils
import PostgresWire
import Testing

@Suite struct FramingTests {
    @Test func decoderHandlesDripFedAndBatchedMessages() throws {
        var readyForQuery = ByteBuffer()
        PGEncode.readyForQuery(.idle, into: &readyForQuery)
        var twoMessages = ByteBuffer()
        PGEncode.query("SELECT 1", into: &twoMessages)
        PGEncode.sync(into: &twoMessages)
        var large = ByteBuffer()
        PGEncode.query(String(repeating: "x", count: 5000), into: &large)

        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (readyForQuery, [PGFrame(type: PGMessageType.Backend.readyForQuery, body: ByteBuffer([0x49]))]),
                (twoMessages, [
                    PGFrame(type: PGMessageType.Frontend.query, body: ByteBuffer(Array("SELECT 1\0".utf8))),
                    PGFrame(type: PGMessageType.Frontend.sync, body: ByteBuffer()),
                ]),
                (large, [PGFrame(type: PGMessageType.Frontend.query, body: ByteBuffer(Array((String(repeating: "x", count: 5000) + "\0").utf8)))]),
            ],
            decoderFactory: { FramingDecoder(maxMessageSize: 8192) }
        )
    }

    @Test func startupDecoderHandlesDripFedAndBatchedPackets() throws {
        var ssl = ByteBuffer()
        PGEncode.sslRequest(into: &ssl)
        var startup = ByteBuffer()
        let parameters = [StartupParameter(name: "user", value: "app"), StartupParameter(name: "database", value: "db")]
        PGEncode.startupMessage(parameters: parameters, into: &startup)
        var cancelAndGSS = ByteBuffer()
        PGEncode.cancelRequest(processID: 42, secretKey: -7, into: &cancelAndGSS)
        PGEncode.gssEncRequest(into: &cancelAndGSS)

        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (ssl, [.sslRequest]),
                (startup, [.startup(protocolVersion: PGProtocol.version3, parameters: parameters)]),
                (cancelAndGSS, [.cancel(processID: 42, secretKey: -7), .gssEncRequest]),
            ],
            decoderFactory: { StartupFramingDecoder() }
        )
    }

    @Test func frameKeepsOriginalBytesAndSlicesBody() throws {
        let raw: [UInt8] = [0x51, 0, 0, 0, 7, 0x61, 0x62, 0] + [0x53, 0, 0, 0, 4]
        var buffer = ByteBuffer(raw)
        let first = try #require(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 100))
        #expect(first.type == 0x51)
        #expect(Array(first.bytes.readableBytesView) == Array(raw[0..<8]))
        #expect(Array(first.body.readableBytesView) == [0x61, 0x62, 0])
        #expect(first.bodyLength == 3)
        let second = try #require(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 100))
        #expect(second.type == PGMessageType.Frontend.sync)
        #expect(second.body.readableBytes == 0)
        #expect(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 100) == nil)
    }

    @Test func peekFrameGivesTypeAndSizeOfCompleteMessagesOnly() throws {
        let raw: [UInt8] = [0x44, 0, 0, 0, 6, 0, 0] + [0x5A, 0, 0, 0, 5, 0x49]
        var buffer = ByteBuffer(raw)
        let first = try #require(try PGFraming.peekFrame(in: buffer, maxMessageSize: 100))
        #expect(first.type == 0x44 && first.size == 7)
        #expect(buffer.readerIndex == 0)
        buffer.moveReaderIndex(forwardBy: first.size)
        let second = try #require(try PGFraming.peekFrame(in: buffer, maxMessageSize: 100))
        #expect(second.type == PGMessageType.Backend.readyForQuery && second.size == 6)
        for prefix in 0..<raw.count - 1 where prefix != 7 {
            // Every strict prefix of a message (7 is exactly the first message) is incomplete.
            let partial = ByteBuffer(bytes: prefix < 7 ? Array(raw[0..<prefix]) : Array(raw[7..<prefix]))
            #expect(try PGFraming.peekFrame(in: partial, maxMessageSize: 100) == nil)
        }
        #expect(throws: PGWireError.invalidMessageLength(3)) {
            try PGFraming.peekFrame(in: ByteBuffer(bytes: [0x44, 0, 0, 0, 3]), maxMessageSize: 100)
        }
        #expect(throws: PGWireError.messageTooLarge(length: 101, limit: 100)) {
            try PGFraming.peekFrame(in: ByteBuffer(bytes: [0x44, 0, 0, 0, 101]), maxMessageSize: 100)
        }
    }

    @Test func partialMessagesReturnNilAndKeepReaderIndex() throws {
        var full = ByteBuffer()
        PGEncode.parse(statementName: "s1", query: "SELECT $1", parameterTypeOIDs: [23], into: &full)
        let bytes = Array(full.readableBytesView)
        for prefixLength in 0..<bytes.count {
            var partial = ByteBuffer()
            partial.writeBytes([0xFF, 0xFF])  // consumed junk before the reader index
            partial.moveReaderIndex(forwardBy: 2)
            partial.writeBytes(bytes[0..<prefixLength])
            let readerIndex = partial.readerIndex
            #expect(try PGFraming.nextFrame(from: &partial, maxMessageSize: 1000) == nil)
            #expect(partial.readerIndex == readerIndex)
        }
    }

    @Test(arguments: [
        ([0x51, 0, 0, 0, 3] as [UInt8], PGWireError.invalidMessageLength(3)),
        ([0x51, 0, 0, 0, 0], PGWireError.invalidMessageLength(0)),
        ([0x51, 0xFF, 0xFF, 0xFF, 0xFF], PGWireError.invalidMessageLength(-1)),
        ([0x51, 0x80, 0, 0, 0], PGWireError.invalidMessageLength(Int(Int32.min))),
        ([0x51, 0, 0, 0x01, 0x01], PGWireError.messageTooLarge(length: 257, limit: 256)),
    ])
    func invalidLengthsThrowAsSoonAsTheHeaderArrives(header: [UInt8], expected: PGWireError) {
        var buffer = ByteBuffer(header)
        #expect(throws: expected) {
            try PGFraming.nextFrame(from: &buffer, maxMessageSize: 256)
        }
        #expect(buffer.readerIndex == 0)
    }

    @Test func lengthEqualToTheLimitIsAccepted() throws {
        var buffer = ByteBuffer([0x64, 0, 0, 0, 8, 1, 2, 3, 4])
        let frame = try #require(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 8))
        #expect(frame.bodyLength == 4)
    }

    @Test func frameInitializerWritesHeader() {
        let frame = PGFrame(type: 0x5A, body: ByteBuffer([0x49]))
        #expect(Array(frame.bytes.readableBytesView) == [0x5A, 0, 0, 0, 5, 0x49])
        #expect(Array(frame.body.readableBytesView) == [0x49])
    }

    @Test func decoderErrorsPropagate() {
        var decoder = FramingDecoder(maxMessageSize: 16)
        var buffer = ByteBuffer([0x51, 0, 0, 0, 100])
        #expect(throws: PGWireError.messageTooLarge(length: 100, limit: 16)) {
            try decoder.decode(buffer: &buffer)
        }
    }

    @Test func randomBytesNeverTrap() {
        var generator = SeededGenerator(seed: 1)
        for _ in 0..<2000 {
            var buffer = ByteBuffer(generator.bytes(count: Int.random(in: 0...40, using: &generator)))
            while true {
                guard let frame = try? PGFraming.nextFrame(from: &buffer, maxMessageSize: 64) else { break }
                _ = frame.body
            }
        }
    }
}

// `PGFraming` as NIO decoders, for `ByteToMessageDecoderVerifier` to feed it drip by drip and in
// batches. Production has no such decoder: the client session frames each read burst itself,
// so that the messages it forwards leave as one slice of the burst.

/// One ``PGFrame`` per typed message.
private struct FramingDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = PGFrame
    let maxMessageSize: Int

    mutating func decode(buffer: inout ByteBuffer) throws -> PGFrame? {
        try PGFraming.nextFrame(from: &buffer, maxMessageSize: self.maxMessageSize)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> PGFrame? {
        try self.decode(buffer: &buffer)
    }
}

/// One ``StartupPacket`` per startup-phase packet.
private struct StartupFramingDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = StartupPacket

    mutating func decode(buffer: inout ByteBuffer) throws -> StartupPacket? {
        try PGFraming.nextStartupPacket(from: &buffer)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> StartupPacket? {
        try self.decode(buffer: &buffer)
    }
}
