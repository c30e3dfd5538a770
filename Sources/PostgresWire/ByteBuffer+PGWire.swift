import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Internal reading and writing helpers shared by the parsers and encoders.

/// A cursor over one message body that turns every shortfall into `PGWireError.malformedMessage`.
struct PGBodyReader {
    var buffer: ByteBuffer
    let type: UInt8

    init(_ body: ByteBuffer, type: UInt8) {
        self.buffer = body
        self.type = type
    }

    func malformed(_ reason: String) -> PGWireError {
        .malformedMessage(type: self.type, reason: reason)
    }

    /// Reads a NUL-terminated string as a slice (without the NUL). No copy.
    mutating func readCStringSlice(_ field: String) throws(PGWireError) -> ByteBuffer {
        guard let slice = self.buffer.pgReadCStringSlice() else {
            throw self.malformed("missing NUL terminator in \(field)")
        }
        return slice
    }

    /// Reads a NUL-terminated string, replacing invalid UTF-8 with U+FFFD.
    mutating func readCString(_ field: String) throws(PGWireError) -> String {
        let slice = try self.readCStringSlice(field)
        return String(buffer: slice)
    }

    mutating func readUInt8(_ field: String) throws(PGWireError) -> UInt8 {
        guard let value = self.buffer.readInteger(as: UInt8.self) else { throw self.malformed("truncated \(field)") }
        return value
    }

    mutating func readUInt16(_ field: String) throws(PGWireError) -> UInt16 {
        guard let value = self.buffer.readInteger(as: UInt16.self) else { throw self.malformed("truncated \(field)") }
        return value
    }

    mutating func readInt16(_ field: String) throws(PGWireError) -> Int16 {
        guard let value = self.buffer.readInteger(as: Int16.self) else { throw self.malformed("truncated \(field)") }
        return value
    }

    mutating func readInt32(_ field: String) throws(PGWireError) -> Int32 {
        guard let value = self.buffer.readInteger(as: Int32.self) else { throw self.malformed("truncated \(field)") }
        return value
    }

    mutating func readUInt32(_ field: String) throws(PGWireError) -> UInt32 {
        guard let value = self.buffer.readInteger(as: UInt32.self) else { throw self.malformed("truncated \(field)") }
        return value
    }

    mutating func readSlice(length: Int, _ field: String) throws(PGWireError) -> ByteBuffer {
        guard length >= 0, let slice = self.buffer.readSlice(length: length) else {
            throw self.malformed("truncated \(field)")
        }
        return slice
    }

    mutating func readBytes(length: Int, _ field: String) throws(PGWireError) -> [UInt8] {
        guard length >= 0, let bytes = self.buffer.readBytes(length: length) else {
            throw self.malformed("truncated \(field)")
        }
        return bytes
    }

    mutating func readRemainingBytes() -> [UInt8] {
        self.buffer.readBytes(length: self.buffer.readableBytes) ?? []
    }

    /// A count word (Int16 or Int32) that must not be negative and must leave room for at least
    /// `minimumElementSize` bytes per element, so that a lying count cannot cause a huge allocation.
    func checkedCount(_ count: some BinaryInteger, minimumElementSize: Int, _ field: String) throws(PGWireError) -> Int {
        guard count >= 0 else { throw self.malformed("negative \(field)") }
        let count = Int(count)
        guard count <= self.buffer.readableBytes / max(minimumElementSize, 1) else {
            throw self.malformed("\(field) exceeds the message size")
        }
        return count
    }

    func expectEnd() throws(PGWireError) {
        guard self.buffer.readableBytes == 0 else {
            throw self.malformed("\(self.buffer.readableBytes) unexpected trailing bytes")
        }
    }
}

extension ByteBuffer {
    /// The offset (from `readerIndex`) of the first NUL byte, if any.
    func pgFirstNULOffset() -> Int? {
        // memchr, not `firstIndex(of:)`: the proxy finds the end of every Query's text with
        // this, and the generic loop cost about 6 instructions a byte (1% of a select-only
        // transaction's instructions); libc's scans 16 or 32 bytes at a time.
        self.withUnsafeReadableBytes { raw -> Int? in
            guard let base = raw.baseAddress, let hit = memchr(base, 0, raw.count) else { return nil }
            return base.distance(to: UnsafeRawPointer(hit))
        }
    }

    /// Reads a NUL-terminated string as a slice without the terminator; `nil` (reader index
    /// unchanged) when there is no NUL. Public: the proxy reads command tags and names with it.
    public mutating func pgReadCStringSlice() -> ByteBuffer? {
        guard let length = self.pgFirstNULOffset(), let slice = self.getSlice(at: self.readerIndex, length: length) else {
            return nil
        }
        self.moveReaderIndex(forwardBy: length + 1)
        return slice
    }

    /// The readable bytes as a `String` if they are valid UTF-8, else `nil`.
    func pgValidatedUTF8String() -> String? {
        self.withUnsafeReadableBytes { raw -> String? in
            guard pgIsValidUTF8(raw) else { return nil }
            return String(decoding: raw, as: UTF8.self)
        }
    }

    /// Writes `string` followed by a NUL. A NUL inside `string` ends it early, so a string can
    /// never break the message framing.
    mutating func pgWriteCString(_ string: String) {
        // Through the string's contiguous bytes and memchr: `utf8.firstIndex(of: 0)` walked the
        // view an index at a time (about 400 instructions for a short name, twice per
        // ParameterStatus at every login).
        var string = string
        string.withUTF8 { bytes in
            guard let base = bytes.baseAddress else { return }
            let length = memchr(base, 0, bytes.count).map { UnsafeRawPointer($0) - UnsafeRawPointer(base) } ?? bytes.count
            self.writeBytes(UnsafeRawBufferPointer(start: base, count: length))
        }
        self.writeInteger(UInt8(0))
    }

    /// Writes one typed message: the type byte, a length word and the body produced by `body`,
    /// then patches the length word.
    mutating func pgWriteMessage(type: UInt8, _ body: (inout ByteBuffer) -> Void) {
        self.writeInteger(type)
        let lengthIndex = self.writerIndex
        self.writeInteger(UInt32(0))
        body(&self)
        self.setInteger(UInt32(truncatingIfNeeded: self.writerIndex - lengthIndex), at: lengthIndex)
    }

    /// Writes a typed message with an empty body (length 4).
    mutating func pgWriteEmptyMessage(type: UInt8) {
        self.writeMultipleIntegers(type, UInt32(4))
    }
}

/// Whether `bytes` is well-formed UTF-8. Does not allocate.
func pgIsValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
    // ASCII (every startup parameter drivers send, and most text) is valid UTF-8: checked eight
    // bytes at a time, where the scalar parser below cost about 200 instructions per short string.
    var ascii = true
    var index = 0
    let count = bytes.count
    while index + 8 <= count {
        if bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 {
            ascii = false
            break
        }
        index += 8
    }
    if ascii {
        while index < count, bytes[index] < 0x80 { index += 1 }
        if index == count { return true }
    }
    var iterator = bytes.makeIterator()
    var parser = Unicode.UTF8.ForwardParser()
    while true {
        switch parser.parseScalar(from: &iterator) {
        case .valid:
            continue
        case .emptyInput:
            return true
        case .error:
            return false
        }
    }
}
