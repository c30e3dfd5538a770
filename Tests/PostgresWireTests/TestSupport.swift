import NIOCore
import PostgresWire
import Testing

/// Builds a buffer with `encode` and returns its single typed frame.
func encodeFrame(_ encode: (inout ByteBuffer) -> Void) throws -> PGFrame {
    var buffer = ByteBuffer()
    encode(&buffer)
    let frame = try #require(try PGFraming.nextFrame(from: &buffer, maxMessageSize: 1 << 20))
    #expect(buffer.readableBytes == 0, "encoder wrote more than one message")
    #expect(frame.bodyLength == frame.body.readableBytes)
    return frame
}

/// The bytes `encode` writes.
func encodedBytes(_ encode: (inout ByteBuffer) -> Void) -> [UInt8] {
    var buffer = ByteBuffer()
    encode(&buffer)
    return Array(buffer.readableBytesView)
}

/// A deterministic generator for fuzz-style tests (SplitMix64).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) {
        self.state = seed
    }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &self) }
    }
}

extension ByteBuffer {
    init(_ bytes: [UInt8]) {
        self.init(bytes: bytes)
    }
}
