import NIOCore
import PostgresWire
import Testing

@Suite struct StartupPacketTests {
    /// A startup packet: length word, then `payload`.
    private func packet(_ payload: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(payload.count + 4))
        buffer.writeBytes(payload)
        return buffer
    }

    private func versionBytes(_ version: UInt32) -> [UInt8] {
        [UInt8(version >> 24), UInt8(truncatingIfNeeded: version >> 16), UInt8(truncatingIfNeeded: version >> 8), UInt8(truncatingIfNeeded: version)]
    }

    @Test func parsesParametersInOrder() throws {
        var buffer = self.packet(self.versionBytes(PGProtocol.version3) + Array("user\0alice\0database\0shop\0application_name\0psql\0\0".utf8))
        let parsed = try PGFraming.nextStartupPacket(from: &buffer)
        let expected: [StartupParameter] = [
            .init(name: "user", value: "alice"), .init(name: "database", value: "shop"), .init(name: "application_name", value: "psql"),
        ]
        #expect(parsed == .startup(protocolVersion: PGProtocol.version3, parameters: expected))
        #expect(buffer.readableBytes == 0)
        #expect(expected.value(of: "database") == "shop")
        #expect(expected.value(of: "options") == nil)
    }

    @Test func duplicateNamesKeepTheLastValue() throws {
        var buffer = self.packet(self.versionBytes(PGProtocol.version3) + Array("user\0a\0database\0d\0user\0b\0\0".utf8))
        let parsed = try PGFraming.nextStartupPacket(from: &buffer)
        #expect(parsed == .startup(protocolVersion: PGProtocol.version3, parameters: [.init(name: "user", value: "b"), .init(name: "database", value: "d")]))
    }

    /// Past 16 parameters the parser switches from a linear search to an index: repeats before
    /// and after the switch still keep the first position and the last value.
    @Test func duplicateNamesAcrossManyParametersKeepTheLastValue() throws {
        var text = ""
        for index in 0..<40 { text += "p\(index)\0v\(index)\0" }
        text += "p3\0late\0p30\0later\0user\0u\0p15\0x\0p16\0y\0\0"
        var buffer = self.packet(self.versionBytes(PGProtocol.version3) + Array(text.utf8))
        var expected = (0..<40).map { StartupParameter(name: "p\($0)", value: "v\($0)") }
        expected[3].value = "late"
        expected[30].value = "later"
        expected[15].value = "x"
        expected[16].value = "y"
        expected.append(StartupParameter(name: "user", value: "u"))
        #expect(try PGFraming.nextStartupPacket(from: &buffer) == .startup(protocolVersion: PGProtocol.version3, parameters: expected))
    }

    @Test func acceptsNewerMinorVersionsAndEmptyParameterLists() throws {
        let version32: UInt32 = 3 << 16 | 2
        var buffer = self.packet(self.versionBytes(version32) + [0])
        #expect(try PGFraming.nextStartupPacket(from: &buffer) == .startup(protocolVersion: version32, parameters: []))
    }

    @Test func encoderRoundTrips() throws {
        let parameters = [StartupParameter(name: "user", value: "ü"), StartupParameter(name: "_pq_.x", value: "")]
        var buffer = ByteBuffer()
        PGEncode.startupMessage(parameters: parameters, into: &buffer)
        #expect(try PGFraming.nextStartupPacket(from: &buffer) == .startup(protocolVersion: PGProtocol.version3, parameters: parameters))
    }

    @Test(arguments: [
        Array("user\0alice\0".utf8),  // no terminator
        Array("user\0alice".utf8),  // value without NUL
        Array("user".utf8),  // name without NUL
        Array("user\0alice\0\0x".utf8),  // bytes after the terminator
        [],  // nothing at all
    ])
    func rejectsBadParameterLayouts(body: [UInt8]) {
        var buffer = self.packet(self.versionBytes(PGProtocol.version3) + body)
        #expect(throws: PGWireError.self) {
            try PGFraming.nextStartupPacket(from: &buffer)
        }
        #expect(buffer.readerIndex == 0)
    }

    @Test func rejectsInvalidUTF8() {
        var buffer = self.packet(self.versionBytes(PGProtocol.version3) + [0x75, 0, 0xFF, 0xFE, 0, 0])
        #expect(throws: PGWireError.invalidStartupPacket("parameter is not valid UTF-8")) {
            try PGFraming.nextStartupPacket(from: &buffer)
        }
    }

    @Test func recognisesSpecialRequests() throws {
        var ssl = self.packet(self.versionBytes(PGProtocol.sslRequestCode))
        #expect(try PGFraming.nextStartupPacket(from: &ssl) == .sslRequest)
        var gss = self.packet(self.versionBytes(PGProtocol.gssEncRequestCode))
        #expect(try PGFraming.nextStartupPacket(from: &gss) == .gssEncRequest)
        var cancel = self.packet(self.versionBytes(PGProtocol.cancelRequestCode) + [0, 0, 0x30, 0x39, 0xFF, 0xFF, 0xFF, 0xFE])
        #expect(try PGFraming.nextStartupPacket(from: &cancel) == .cancel(processID: 12345, secretKey: -2))
    }

    @Test func specialRequestsMustHaveTheirExactLength() {
        var ssl = self.packet(self.versionBytes(PGProtocol.sslRequestCode) + [0])
        #expect(throws: PGWireError.invalidStartupPacket("SSLRequest must be 8 bytes long")) {
            try PGFraming.nextStartupPacket(from: &ssl)
        }
        var gss = self.packet(self.versionBytes(PGProtocol.gssEncRequestCode) + [0, 0, 0, 0])
        #expect(throws: PGWireError.self) { try PGFraming.nextStartupPacket(from: &gss) }
        var cancel = self.packet(self.versionBytes(PGProtocol.cancelRequestCode) + [0, 0, 0, 1])
        #expect(throws: PGWireError.invalidStartupPacket("CancelRequest must be 16 bytes long")) {
            try PGFraming.nextStartupPacket(from: &cancel)
        }
    }

    @Test func rejectsUnknownCodesAndVersions() {
        var unknown = self.packet(self.versionBytes(1234 << 16 | 5681) + [0])
        #expect(throws: PGWireError.invalidStartupPacket("unknown request code 5681")) {
            try PGFraming.nextStartupPacket(from: &unknown)
        }
        var version2 = self.packet(self.versionBytes(2 << 16) + [0])
        #expect(throws: PGWireError.unsupportedProtocolVersion(2 << 16)) {
            try PGFraming.nextStartupPacket(from: &version2)
        }
    }

    @Test func rejectsBadLengths() {
        var short = ByteBuffer([0, 0, 0, 7, 0, 0, 0])
        #expect(throws: PGWireError.invalidMessageLength(7)) { try PGFraming.nextStartupPacket(from: &short) }
        var negative = ByteBuffer([0xFF, 0xFF, 0xFF, 0xF0])
        #expect(throws: PGWireError.invalidMessageLength(-16)) { try PGFraming.nextStartupPacket(from: &negative) }
        var huge = ByteBuffer([0, 0, 0x27, 0x11])  // 10_001, header only
        #expect(throws: PGWireError.messageTooLarge(length: 10_001, limit: 10_000)) { try PGFraming.nextStartupPacket(from: &huge) }
        var custom = ByteBuffer([0, 0, 0, 20])
        #expect(throws: PGWireError.messageTooLarge(length: 20, limit: 16)) { try PGFraming.nextStartupPacket(from: &custom, maxLength: 16) }
    }

    @Test func partialPacketsReturnNil() throws {
        var full = ByteBuffer()
        PGEncode.startupMessage(parameters: [.init(name: "user", value: "u")], into: &full)
        let bytes = Array(full.readableBytesView)
        for prefixLength in 0..<bytes.count {
            var partial = ByteBuffer(Array(bytes[0..<prefixLength]))
            #expect(try PGFraming.nextStartupPacket(from: &partial) == nil)
            #expect(partial.readerIndex == 0)
        }
    }

    @Test func garbageNeverTraps() {
        var generator = SeededGenerator(seed: 7)
        for _ in 0..<3000 {
            var payload = generator.bytes(count: Int.random(in: 0...48, using: &generator))
            if Bool.random(using: &generator) {  // a plausible header over random content
                payload = versionBytes(PGProtocol.version3) + payload
            }
            var buffer = self.packet(payload)
            _ = try? PGFraming.nextStartupPacket(from: &buffer)
            var raw = ByteBuffer(generator.bytes(count: Int.random(in: 0...16, using: &generator)))
            _ = try? PGFraming.nextStartupPacket(from: &raw)
        }
    }
}
