import NIOCore
import XCTest

@testable import MySQLWire

final class FramingTests: XCTestCase {
    // MARK: Length-encoded integers and strings

    func testLengthEncodedIntegersUseTheShortestFormAndRoundTrip() {
        let cases: [(UInt64, [UInt8])] = [
            (0, [0x00]),
            (250, [0xFA]),
            (251, [0xFC, 0xFB, 0x00]),
            (0xFFFF, [0xFC, 0xFF, 0xFF]),
            (0x1_0000, [0xFD, 0x00, 0x00, 0x01]),
            (0xFF_FFFF, [0xFD, 0xFF, 0xFF, 0xFF]),
            (0x100_0000, [0xFE, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]),
            (UInt64.max, [0xFE] + [UInt8](repeating: 0xFF, count: 8)),
        ]
        for (value, bytes) in cases {
            let buffer = encoded { $0.writeMySQLLengthEncodedInteger(value) }
            XCTAssertEqual(buffer.bytes, bytes, "\(value)")
            var reader = buffer
            XCTAssertEqual(reader.readMySQLLengthEncodedInteger(), value)
            XCTAssertEqual(reader.readableBytes, 0)
            XCTAssertEqual(buffer.getMySQLLengthEncodedInteger(at: buffer.readerIndex)?.width, bytes.count)
        }
    }

    func testIncompleteOrInvalidLengthEncodedIntegersLeaveTheReaderIndex() {
        for bytes: [UInt8] in [[], [0xFC, 0x01], [0xFD, 0x01, 0x02], [0xFE, 1, 2, 3, 4, 5, 6, 7], [0xFB], [0xFF]] {
            var buffer = ByteBuffer(bytes: bytes)
            XCTAssertNil(buffer.readMySQLLengthEncodedInteger(), "\(bytes)")
            XCTAssertEqual(buffer.readerIndex, 0)
        }
        var null = ByteBuffer(bytes: [0xFB, 0x05])
        XCTAssertEqual(null.readMySQLLengthEncodedIntegerOrNull(), .some(nil))
        XCTAssertEqual(null.readMySQLLengthEncodedIntegerOrNull(), .some(5))
        var empty = ByteBuffer()
        XCTAssertTrue(empty.readMySQLLengthEncodedIntegerOrNull() == nil)
    }

    func testStringsRoundTrip() {
        var buffer = ByteBuffer()
        buffer.writeMySQLLengthEncodedString("héllo")
        buffer.writeMySQLLengthEncodedBytes([0, 1, 2])
        buffer.writeMySQLLengthEncodedString(String(repeating: "x", count: 300))
        buffer.writeMySQLNullTerminatedString("root")
        buffer.writeMySQLNullTerminatedString("")
        XCTAssertEqual(buffer.readMySQLLengthEncodedString(), "héllo")
        XCTAssertEqual(buffer.readMySQLLengthEncodedBytes(), [0, 1, 2])
        XCTAssertEqual(buffer.readMySQLLengthEncodedString(), String(repeating: "x", count: 300))
        XCTAssertEqual(buffer.readMySQLNullTerminatedString(), "root")
        XCTAssertEqual(buffer.readMySQLNullTerminatedString(), "")
        XCTAssertEqual(buffer.readableBytes, 0)
    }

    func testTruncatedStringsLeaveTheReaderIndex() {
        var lenenc = ByteBuffer(bytes: [0x05, 0x61, 0x62])
        XCTAssertNil(lenenc.readMySQLLengthEncodedString())
        XCTAssertEqual(lenenc.readerIndex, 0)
        var unterminated = ByteBuffer(bytes: [0x61, 0x62])
        XCTAssertNil(unterminated.readMySQLNullTerminatedString())
        XCTAssertEqual(unterminated.readerIndex, 0)
    }

    // MARK: Writing packets

    func testHeaderIsLittleEndianLengthAndSequenceID() {
        let buffer = encoded { $0.writeMySQLPacket(sequenceID: 7, payload: ByteBuffer(bytes: [0x0E])) }
        XCTAssertEqual(buffer.bytes, [0x01, 0x00, 0x00, 0x07, 0x0E])
        XCTAssertEqual(buffer.peekMySQLPacketHeader(), MySQLPacketHeader(length: 1, sequenceID: 7))
        XCTAssertNil(ByteBuffer(bytes: [1, 0, 0]).peekMySQLPacketHeader())
    }

    func testBodyWriterFillsTheLength() {
        var buffer = ByteBuffer(bytes: [0xAA])
        let next = buffer.writeMySQLPacket(sequenceID: 255) { $0.writeString("SELECT 1") }
        XCTAssertEqual(next, 0)
        XCTAssertEqual(buffer.bytes, [0xAA, 8, 0, 0, 255] + Array("SELECT 1".utf8))
    }

    func testBodyWriterSplitsAnOversizedPayloadInsteadOfCorruptingIt() throws {
        var buffer = ByteBuffer()
        let next = buffer.writeMySQLPacket(sequenceID: 0) { $0.writeRepeatingByte(0x61, count: 0xFF_FFFF + 1) }
        XCTAssertEqual(next, 2)
        let packets = try decodeAll(buffer)
        XCTAssertEqual(packets.count, 1)
        XCTAssertEqual(packets[0].payload.readableBytes, 0xFF_FFFF + 1)
        XCTAssertEqual(packets[0].wirePacketCount, 2)
    }

    func testPayloadOfExactlyMaxPacketEndsWithAnEmptyPacket() throws {
        let payload = ByteBuffer(repeating: 0x42, count: 0xFF_FFFF)
        var buffer = ByteBuffer()
        XCTAssertEqual(buffer.writeMySQLPacket(sequenceID: 3, payload: payload), 5)
        XCTAssertEqual(buffer.readableBytes, 4 + 0xFF_FFFF + 4)
        XCTAssertEqual(buffer.getBytes(at: 0, length: 4), [0xFF, 0xFF, 0xFF, 3])
        XCTAssertEqual(buffer.getBytes(at: 4 + 0xFF_FFFF, length: 4), [0, 0, 0, 4])

        let packets = try decodeAll(buffer, expectedSequenceID: 3)
        XCTAssertEqual(packets.count, 1)
        XCTAssertEqual(packets[0].sequenceID, 3)
        XCTAssertEqual(packets[0].nextSequenceID, 5)
        XCTAssertEqual(packets[0].payload, payload)
    }

    func testPayloadOf16MBPlusOneIsSplitAndJoined() throws {
        // A repeating 0...250 pattern, so a misplaced continuation boundary shows as a mismatch.
        let pattern = [UInt8](0...250)
        var payload = ByteBuffer()
        while payload.readableBytes + pattern.count <= 16 * 1024 * 1024 + 1 { payload.writeBytes(pattern) }
        payload.writeBytes(pattern.prefix(16 * 1024 * 1024 + 1 - payload.readableBytes))
        XCTAssertEqual(payload.readableBytes, 16 * 1024 * 1024 + 1)
        var buffer = ByteBuffer()
        XCTAssertEqual(buffer.writeMySQLPacket(sequenceID: 255, payload: payload), 1, "ids wrap at 256")
        // 16 MB + 1 = 0xFFFFFF + 2: one full packet, then 2 bytes.
        XCTAssertEqual(buffer.getBytes(at: 4 + 0xFF_FFFF, length: 4), [2, 0, 0, 0])
        let packets = try decodeAll(buffer, expectedSequenceID: 255)
        XCTAssertEqual(packets.count, 1)
        XCTAssertEqual(packets[0].payload, payload)
        XCTAssertEqual(packets[0].wirePacketCount, 2)
        var reencoded = ByteBuffer()
        reencoded.writeMySQLPacket(packets[0])
        XCTAssertEqual(reencoded, buffer)
    }

    // MARK: Decoding

    func testSinglePacketPayloadIsASliceOfTheInput() throws {
        var buffer = ByteBuffer(bytes: [3, 0, 0, 0, 0x03, 0x41, 0x42, 1, 0, 0, 1, 0x00])
        var decoder = MySQLPacketDecoder(maxPayload: 100)
        let first = try XCTUnwrap(try decoder.next(from: &buffer))
        XCTAssertEqual(first.payload.bytes, [0x03, 0x41, 0x42])
        XCTAssertEqual(first.firstByte, 0x03)
        XCTAssertEqual(first.nextSequenceID, 1)
        let second = try XCTUnwrap(try decoder.next(from: &buffer))
        XCTAssertEqual(second.sequenceID, 1)
        XCTAssertEqual(second.payload.bytes, [0x00])
        XCTAssertNil(try decoder.next(from: &buffer))
    }

    /// A stream of small, empty, exactly-max and over-max payloads, fed in one batch, one byte at
    /// a time, and in uneven chunks, decodes to the same packets.
    func testDripFedAndBatchedBytesDecodeAlike() throws {
        let payloads: [ByteBuffer] = [
            ByteBuffer(bytes: [0x03] + Array("SELECT 1".utf8)),
            ByteBuffer(),
            ByteBuffer(repeating: 0x01, count: 0xFF_FFFF),
            ByteBuffer(repeating: 0x02, count: 0xFF_FFFF + 10),
            ByteBuffer(bytes: [0x0E]),
        ]
        var stream = ByteBuffer()
        var sequenceID: UInt8 = 0
        for payload in payloads {
            sequenceID = stream.writeMySQLPacket(sequenceID: sequenceID, payload: payload)
        }

        // Batched.
        XCTAssertEqual(try decodeAll(stream, expectedSequenceID: 0).map(\.payload), payloads)

        // Uneven chunks, and one byte at a time around the packet boundaries.
        for chunkSizes in [[1], [7, 1, 3], [4096, 1], [0xFF_FFFF + 3, 1]] {
            var decoder = MySQLPacketDecoder(maxPayload: 1 << 25, expectedSequenceID: 0)
            var input = ByteBuffer()
            var remaining = stream
            var decoded: [ByteBuffer] = []
            var step = 0
            while remaining.readableBytes > 0 {
                // Small chunks only near the small packets at both ends, or this takes minutes.
                var size = chunkSizes[step % chunkSizes.count]
                step += 1
                if size < 4096, remaining.readableBytes > 64, remaining.readableBytes < stream.readableBytes - 64 {
                    size = 65536 + size
                }
                var chunk = remaining.readSlice(length: min(size, remaining.readableBytes))!
                input.writeBuffer(&chunk)
                while let packet = try decoder.next(from: &input) {
                    decoded.append(packet.payload)
                }
                input.discardReadBytes()
            }
            XCTAssertEqual(decoded, payloads, "chunks \(chunkSizes)")
            XCTAssertEqual(input.readableBytes, 0)
        }
    }

    func testEveryByteOfSmallPacketsDripFed() throws {
        var stream = ByteBuffer()
        var sequenceID: UInt8 = 0
        let payloads = (0..<20).map { ByteBuffer(bytes: [UInt8](repeating: UInt8($0), count: $0)) }
        for payload in payloads {
            sequenceID = stream.writeMySQLPacket(sequenceID: sequenceID, payload: payload)
        }
        var decoder = MySQLPacketDecoder(maxPayload: 100, expectedSequenceID: 0)
        var input = ByteBuffer()
        var decoded: [MySQLPacket] = []
        for byte in stream.readableBytesView {
            input.writeInteger(byte)
            while let packet = try decoder.next(from: &input) {
                decoded.append(packet)
            }
        }
        XCTAssertEqual(decoded.map(\.payload), payloads)
        XCTAssertEqual(decoded.map(\.sequenceID), (0..<20).map { UInt8($0) })
    }

    func testPayloadOverTheCapIsRejectedWhenItsHeaderArrives() {
        var decoder = MySQLPacketDecoder(maxPayload: 10)
        var buffer = ByteBuffer(bytes: [11, 0, 0, 0])
        XCTAssertThrowsError(try decoder.next(from: &buffer)) { error in
            XCTAssertEqual(error as? MySQLWireError, .payloadTooLarge(11, max: 10))
        }
        var atCap = ByteBuffer(bytes: [10, 0, 0, 0] + [UInt8](repeating: 0, count: 10))
        var accepting = MySQLPacketDecoder(maxPayload: 10)
        XCTAssertEqual(try accepting.next(from: &atCap)?.payload.readableBytes, 10)
    }

    func testSplitPayloadOverTheCapIsRejectedAtTheContinuationHeader() throws {
        var stream = ByteBuffer()
        stream.writeMySQLPacket(sequenceID: 0, payload: ByteBuffer(repeating: 0, count: 0xFF_FFFF + 5))
        var decoder = MySQLPacketDecoder(maxPayload: 0xFF_FFFF + 4)
        // Only the first packet and the next header: rejected without waiting for the body.
        var input = stream.getSlice(at: 0, length: 4 + 0xFF_FFFF + 4)!
        XCTAssertThrowsError(try decoder.next(from: &input)) { error in
            XCTAssertEqual(error as? MySQLWireError, .payloadTooLarge(0xFF_FFFF + 5, max: 0xFF_FFFF + 4))
        }
        // A cap below 16 MB refuses the first full-size packet outright.
        var small = MySQLPacketDecoder(maxPayload: 1 << 20)
        var again = stream
        XCTAssertThrowsError(try small.next(from: &again)) { error in
            XCTAssertEqual(error as? MySQLWireError, .payloadTooLarge(0xFF_FFFF, max: 1 << 20))
        }
    }

    func testWrongSequenceIDsAreRejected() throws {
        // First packet of a command must be 0 when told so.
        var decoder = MySQLPacketDecoder(maxPayload: 100, expectedSequenceID: 0)
        var buffer = ByteBuffer(bytes: [1, 0, 0, 1, 0x0E])
        XCTAssertThrowsError(try decoder.next(from: &buffer)) { error in
            XCTAssertEqual(error as? MySQLWireError, .unexpectedSequenceID(got: 1, expected: 0))
        }

        // Within a response, each packet follows the previous one.
        var response = MySQLPacketDecoder(maxPayload: 100, expectedSequenceID: 1)
        var packets = ByteBuffer(bytes: [1, 0, 0, 1, 0x01, 1, 0, 0, 3, 0x00])
        XCTAssertNotNil(try response.next(from: &packets))
        XCTAssertEqual(response.expectedSequenceID, 2)
        XCTAssertThrowsError(try response.next(from: &packets)) { error in
            XCTAssertEqual(error as? MySQLWireError, .unexpectedSequenceID(got: 3, expected: 2))
        }

        // Without an expectation, any first id goes, but continuations are always checked.
        var lenient = MySQLPacketDecoder(maxPayload: 1 << 25)
        var split = ByteBuffer()
        split.writeMySQLPacket(sequenceID: 9, payload: ByteBuffer(repeating: 0, count: 0xFF_FFFF))
        split.setInteger(UInt8(42), at: 4 + 0xFF_FFFF + 3)
        XCTAssertThrowsError(try lenient.next(from: &split)) { error in
            XCTAssertEqual(error as? MySQLWireError, .unexpectedSequenceID(got: 42, expected: 10))
        }
        var any = MySQLPacketDecoder(maxPayload: 100)
        var late = ByteBuffer(bytes: [1, 0, 0, 200, 0x0E])
        XCTAssertEqual(try any.next(from: &late)?.sequenceID, 200)
        XCTAssertNil(any.expectedSequenceID)
    }

    func testErrorsDescribeStructureOnly() {
        XCTAssertEqual(MySQLWireError.payloadTooLarge(20, max: 10).description, "packet payload of 20 bytes exceeds the limit of 10 bytes")
        XCTAssertEqual(MySQLWireError.unexpectedSequenceID(got: 3, expected: 2).description, "packet sequence id 3, expected 2")
    }
}
