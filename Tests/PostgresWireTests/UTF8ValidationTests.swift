import NIOCore
@testable import PostgresWire
import Testing

/// `pgIsValidUTF8` (startup parameters, names in messages) against the standard library's own
/// validation, on random byte strings: ASCII, ASCII with one byte changed at each position around
/// the 8-byte fast path's boundaries, and random bytes.
@Suite struct UTF8ValidationTests {
    private static func standardLibrarySays(_ bytes: [UInt8]) -> Bool {
        String(validating: bytes, as: UTF8.self) != nil
    }

    private static func check(_ bytes: [UInt8]) {
        let ours = bytes.withUnsafeBytes { pgIsValidUTF8($0) }
        #expect(ours == standardLibrarySays(bytes), "\(bytes)")
    }

    @Test func agreesWithTheStandardLibrary() {
        var generator = SystemRandomNumberGenerator()
        let specials: [UInt8] = [0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xF0, 0xF4, 0xF5, 0xFF]
        for length in 0...40 {
            let ascii = (0..<length).map { _ in UInt8.random(in: 0...0x7F, using: &generator) }
            Self.check(ascii)
            for position in 0..<length {
                for special in specials {
                    var changed = ascii
                    changed[position] = special
                    Self.check(changed)
                }
                // A valid two-byte sequence ("é") at each position, and one cut short at the end.
                var withScalar = ascii
                withScalar.replaceSubrange(position..<position + 1, with: [0xC3, 0xA9])
                Self.check(withScalar)
            }
            for _ in 0..<20 {
                Self.check((0..<length).map { _ in UInt8.random(in: 0...0xFF, using: &generator) })
            }
        }
    }
}

/// `pgWriteCString`: the string's bytes and one NUL; a NUL inside the string ends it there, so no
/// string can break a message's framing.
@Suite struct CStringWritingTests {
    private static func written(_ string: String) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.pgWriteCString(string)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    @Test func writesTheBytesAndOneNUL() {
        #expect(Self.written("") == [0])
        #expect(Self.written("application_name") == Array("application_name".utf8) + [0])
        #expect(Self.written("héllo") == Array("héllo".utf8) + [0])
        // A bridged or substring-built string: not necessarily stored contiguously.
        let built = String("xx_application_name".dropFirst(3))
        #expect(Self.written(built) == Array("application_name".utf8) + [0])
    }

    @Test func aNULInsideEndsTheString() {
        #expect(Self.written("abc\0def") == Array("abc".utf8) + [0])
        #expect(Self.written("\0") == [0])
    }
}
