import NIOCore

/// The 4-byte header of every packet: a 3-byte little-endian payload length and a 1-byte
/// sequence id. Peeking it lets a decoder reject an oversized or out-of-sequence packet before
/// its body arrives.
public struct MySQLPacketHeader: Sendable, Hashable {
    /// The length of this packet's payload (0...0xFFFFFF); 0xFFFFFF means a continuation follows.
    public var length: Int
    /// The packet's sequence id: 0 for the first packet of a command, +1 (mod 256) for each
    /// packet after it, in both directions, until the command's response ends.
    public var sequenceID: UInt8

    /// Creates a header, for tests and encoders that write headers themselves.
    public init(length: Int, sequenceID: UInt8) {
        self.length = length
        self.sequenceID = sequenceID
    }

    /// The largest payload one packet carries; a payload of this length is continued by the next
    /// packet, so a logical payload of N × 0xFFFFFF bytes ends with an empty packet.
    public static let maxPacketPayload = 0xFF_FFFF
    /// The header's size, for callers that reserve room for it.
    public static let size = 4
}

/// One logical payload, reassembled from one packet or from a packet and its continuations.
///
/// Session machines work on logical payloads only: a 20 MB row and a 17 MB statement are one
/// `MySQLPacket` each, so no state machine ever sees a continuation packet.
public struct MySQLPacket: Sendable, Hashable {
    /// The sequence id of the first wire packet; the next packet in the conversation (either
    /// direction) carries ``nextSequenceID``.
    public var sequenceID: UInt8
    /// The payload without headers. For a single wire packet it is a slice of the input buffer
    /// (no copy); a split payload is joined into a fresh buffer.
    public var payload: ByteBuffer
    /// The number of wire packets that carried this payload (1 below 16 MB), so the next
    /// sequence id can be computed without re-splitting.
    public var wirePacketCount: Int

    /// Creates a packet of one wire packet.
    public init(sequenceID: UInt8, payload: ByteBuffer) {
        self.sequenceID = sequenceID
        self.payload = payload
        self.wirePacketCount = 1
    }

    /// Creates a packet carried by `wirePacketCount` wire packets.
    public init(sequenceID: UInt8, payload: ByteBuffer, wirePacketCount: Int) {
        self.sequenceID = sequenceID
        self.payload = payload
        self.wirePacketCount = wirePacketCount
    }

    /// The sequence id that the next packet of the conversation must carry (wrapping at 256).
    public var nextSequenceID: UInt8 {
        self.sequenceID &+ UInt8(truncatingIfNeeded: self.wirePacketCount)
    }

    /// The payload's first byte (OK 0x00, ERR 0xFF, EOF 0xFE, a command byte, ...), nil when
    /// empty: what a session machine routes on before parsing anything.
    public var firstByte: UInt8? {
        self.payload.getInteger(at: self.payload.readerIndex, as: UInt8.self)
    }
}

/// Reassembles logical payloads from a byte stream: splits packets, joins continuation packets,
/// enforces a size cap, and checks sequence ids.
///
/// Use it from a `ByteToMessageDecoder` or straight from a channel handler's read; it keeps only
/// the partial payload of a split packet between calls, so it can be fed one byte at a time.
public struct MySQLPacketDecoder: Sendable {
    /// The largest logical payload accepted (the peer's max_allowed_packet, as the proxy sees it).
    public let maxPayload: Int
    /// When set, the sequence id the next packet must carry; after each packet it moves to that
    /// packet's id + 1, so a whole response is checked. Set it to 0 before reading a client's
    /// command (every command starts a sequence), to the command's next id before reading the
    /// server's response, or to nil to accept any first id. Continuation packets are always
    /// checked.
    public var expectedSequenceID: UInt8?

    private var partial: ByteBuffer?
    private var partialFirstSequenceID: UInt8 = 0
    private var partialNextSequenceID: UInt8 = 0
    private var partialPacketCount = 0

    /// Creates a decoder that rejects logical payloads above `maxPayload` bytes.
    public init(maxPayload: Int, expectedSequenceID: UInt8? = nil) {
        self.maxPayload = maxPayload
        self.expectedSequenceID = expectedSequenceID
    }

    /// Whether a split payload is half-read: the stream must not end here.
    public var hasPartialPacket: Bool { self.partial != nil }

    /// Takes the next complete logical payload from `buffer`, advancing its reader index past
    /// the packets consumed; nil when more bytes are needed (partial continuation packets are
    /// kept inside the decoder, an incomplete packet is left in `buffer`).
    ///
    /// - Throws: ``MySQLWireError/payloadTooLarge(_:max:)`` as soon as a header would take the
    ///   payload over the cap, ``MySQLWireError/unexpectedSequenceID(got:expected:)`` for an id
    ///   out of sequence. The stream is unusable afterwards.
    public mutating func next(from buffer: inout ByteBuffer) throws(MySQLWireError) -> MySQLPacket? {
        while true {
            guard let word = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else {
                return nil
            }
            let length = Int(word & 0xFF_FFFF)
            let sequenceID = UInt8(truncatingIfNeeded: word >> 24)
            let joinedSoFar = self.partial?.readableBytes ?? 0
            if self.partial != nil {
                guard sequenceID == self.partialNextSequenceID else {
                    throw .unexpectedSequenceID(got: sequenceID, expected: self.partialNextSequenceID)
                }
            } else if let expected = self.expectedSequenceID, sequenceID != expected {
                throw .unexpectedSequenceID(got: sequenceID, expected: expected)
            }
            guard joinedSoFar + length <= self.maxPayload else {
                throw .payloadTooLarge(joinedSoFar + length, max: self.maxPayload)
            }
            guard buffer.readableBytes >= 4 + length else { return nil }
            buffer.moveReaderIndex(forwardBy: 4)
            var body = buffer.readSlice(length: length)!

            if length == MySQLPacketHeader.maxPacketPayload {
                if self.partial == nil {
                    self.partial = ByteBuffer()
                    self.partialFirstSequenceID = sequenceID
                    self.partialPacketCount = 0
                }
                self.partial!.writeBuffer(&body)
                self.partialNextSequenceID = sequenceID &+ 1
                self.partialPacketCount += 1
                continue
            }

            let packet: MySQLPacket
            if var joined = self.partial {
                self.partial = nil
                joined.writeBuffer(&body)
                packet = MySQLPacket(
                    sequenceID: self.partialFirstSequenceID, payload: joined, wirePacketCount: self.partialPacketCount + 1
                )
            } else {
                packet = MySQLPacket(sequenceID: sequenceID, payload: body)
            }
            if self.expectedSequenceID != nil {
                self.expectedSequenceID = sequenceID &+ 1
            }
            return packet
        }
    }
}

extension ByteBuffer {
    /// Peeks the header of the packet at the reader index, nil if fewer than 4 bytes are
    /// readable: lets a caller check length and sequence id before the body arrives.
    @inlinable
    public func peekMySQLPacketHeader() -> MySQLPacketHeader? {
        guard let word = self.getInteger(at: self.readerIndex, endianness: .little, as: UInt32.self) else {
            return nil
        }
        return MySQLPacketHeader(length: Int(word & 0xFF_FFFF), sequenceID: UInt8(truncatingIfNeeded: word >> 24))
    }

    /// Writes one logical payload as packets, splitting it at 0xFFFFFF bytes (and ending a payload
    /// of an exact multiple of 0xFFFFFF with an empty packet), numbered from `sequenceID`.
    ///
    /// - Returns: The sequence id the next packet of the conversation must carry.
    @discardableResult
    public mutating func writeMySQLPacket(sequenceID: UInt8, payload: ByteBuffer) -> UInt8 {
        var payload = payload
        var sequenceID = sequenceID
        let packets = payload.readableBytes / MySQLPacketHeader.maxPacketPayload + 1
        self.reserveCapacity(minimumWritableBytes: payload.readableBytes + 4 * packets)
        while true {
            let length = min(payload.readableBytes, MySQLPacketHeader.maxPacketPayload)
            self.writeInteger(UInt32(length) | UInt32(sequenceID) << 24, endianness: .little)
            var chunk = payload.readSlice(length: length)!
            self.writeBuffer(&chunk)
            sequenceID &+= 1
            if length < MySQLPacketHeader.maxPacketPayload { return sequenceID }
        }
    }

    /// Writes a packet whose payload `body` writes in place: reserves the header, runs `body`,
    /// then fills in the length, so encoders build packets without an intermediate buffer. Meant
    /// for payloads below 16 MB; a larger one is split (with one copy) rather than corrupted.
    ///
    /// - Returns: The sequence id the next packet of the conversation must carry.
    @discardableResult
    public mutating func writeMySQLPacket(sequenceID: UInt8, _ body: (inout ByteBuffer) -> Void) -> UInt8 {
        let headerIndex = self.writerIndex
        self.writeInteger(UInt32(0))
        body(&self)
        let length = self.writerIndex - headerIndex - 4
        if length < MySQLPacketHeader.maxPacketPayload {
            self.setInteger(UInt32(length) | UInt32(sequenceID) << 24, at: headerIndex, endianness: .little)
            return sequenceID &+ 1
        }
        let payload = self.getSlice(at: headerIndex + 4, length: length)!
        self.moveWriterIndex(to: headerIndex)
        return self.writeMySQLPacket(sequenceID: sequenceID, payload: payload)
    }

    /// Writes a decoded packet back as wire packets with its own sequence id: what a proxy does
    /// to forward a packet it has looked at.
    @discardableResult
    public mutating func writeMySQLPacket(_ packet: MySQLPacket) -> UInt8 {
        self.writeMySQLPacket(sequenceID: packet.sequenceID, payload: packet.payload)
    }

    // MARK: Length-encoded integers

    /// The length-encoded integer at `index` and the number of bytes it takes, without moving
    /// the reader index (for allocation-free peeking on the per-packet path). Nil when the bytes
    /// are incomplete or the first byte is 0xFB (NULL in a text row) or 0xFF (not an integer).
    @inlinable
    public func getMySQLLengthEncodedInteger(at index: Int) -> (value: UInt64, width: Int)? {
        guard let first = self.getInteger(at: index, as: UInt8.self) else { return nil }
        switch first {
        case 0..<0xFB:
            return (UInt64(first), 1)
        case 0xFC:
            guard let value = self.getInteger(at: index + 1, endianness: .little, as: UInt16.self) else { return nil }
            return (UInt64(value), 3)
        case 0xFD:
            guard let low = self.getInteger(at: index + 1, endianness: .little, as: UInt16.self),
                  let high = self.getInteger(at: index + 3, as: UInt8.self)
            else { return nil }
            return (UInt64(low) | UInt64(high) << 16, 4)
        case 0xFE:
            guard let value = self.getInteger(at: index + 1, endianness: .little, as: UInt64.self) else { return nil }
            return (value, 9)
        default:
            return nil
        }
    }

    /// Reads a length-encoded integer (1, 3, 4 or 9 bytes); nil, with the reader index
    /// unchanged, when incomplete or when the first byte is 0xFB (a text row's NULL, see
    /// ``readMySQLLengthEncodedIntegerOrNull()``) or 0xFF.
    @inlinable
    public mutating func readMySQLLengthEncodedInteger() -> UInt64? {
        guard let (value, width) = self.getMySQLLengthEncodedInteger(at: self.readerIndex) else { return nil }
        self.moveReaderIndex(forwardBy: width)
        return value
    }

    /// Reads a text-row field length, where 0xFB means NULL: `.some(nil)` for NULL, `.some(n)`
    /// for a length, nil (reader index unchanged) when incomplete or 0xFF.
    public mutating func readMySQLLengthEncodedIntegerOrNull() -> UInt64?? {
        if self.getInteger(at: self.readerIndex, as: UInt8.self) == 0xFB {
            self.moveReaderIndex(forwardBy: 1)
            return .some(nil)
        }
        guard let value = self.readMySQLLengthEncodedInteger() else { return nil }
        return .some(value)
    }

    /// Writes `value` in the shortest length-encoded form.
    @inlinable
    public mutating func writeMySQLLengthEncodedInteger(_ value: UInt64) {
        switch value {
        case 0..<0xFB:
            self.writeInteger(UInt8(value))
        case 0xFB..<(1 << 16):
            self.writeInteger(UInt8(0xFC))
            self.writeInteger(UInt16(value), endianness: .little)
        case (1 << 16)..<(1 << 24):
            self.writeInteger(UInt8(0xFD))
            self.writeInteger(UInt16(truncatingIfNeeded: value), endianness: .little)
            self.writeInteger(UInt8(truncatingIfNeeded: value >> 16))
        default:
            self.writeInteger(UInt8(0xFE))
            self.writeInteger(value, endianness: .little)
        }
    }

    // MARK: Strings

    /// Reads a length-encoded string's bytes as a slice (no copy); nil, with the reader index
    /// unchanged, when incomplete.
    public mutating func readMySQLLengthEncodedSlice() -> ByteBuffer? {
        let start = self.readerIndex
        guard let length = self.readMySQLLengthEncodedInteger() else { return nil }
        guard length <= UInt64(self.readableBytes), let slice = self.readSlice(length: Int(length)) else {
            self.moveReaderIndex(to: start)
            return nil
        }
        return slice
    }

    /// Reads a length-encoded string (decoded as UTF-8, invalid sequences repaired); nil, with
    /// the reader index unchanged, when incomplete.
    public mutating func readMySQLLengthEncodedString() -> String? {
        guard let slice = self.readMySQLLengthEncodedSlice() else { return nil }
        return String(buffer: slice)
    }

    /// Reads a length-encoded string's bytes (auth responses, connection attributes kept as
    /// bytes); nil, with the reader index unchanged, when incomplete.
    public mutating func readMySQLLengthEncodedBytes() -> [UInt8]? {
        guard let slice = self.readMySQLLengthEncodedSlice() else { return nil }
        return Array(slice.readableBytesView)
    }

    /// Writes a length-encoded string.
    public mutating func writeMySQLLengthEncodedString(_ string: String) {
        self.writeMySQLLengthEncodedInteger(UInt64(string.utf8.count))
        self.writeString(string)
    }

    /// Writes length-encoded bytes.
    public mutating func writeMySQLLengthEncodedBytes(_ bytes: some Collection<UInt8>) {
        self.writeMySQLLengthEncodedInteger(UInt64(bytes.count))
        self.writeBytes(bytes)
    }

    /// Reads a NUL-terminated string and its terminator; nil, with the reader index unchanged,
    /// when no NUL is readable yet.
    public mutating func readMySQLNullTerminatedString() -> String? {
        guard let bytes = self.readMySQLNullTerminatedSlice() else { return nil }
        return String(buffer: bytes)
    }

    /// Reads the bytes of a NUL-terminated string (without the NUL) as a slice and skips the NUL;
    /// nil, with the reader index unchanged, when no NUL is readable yet.
    public mutating func readMySQLNullTerminatedSlice() -> ByteBuffer? {
        let view = self.readableBytesView
        guard let nul = view.firstIndex(of: 0) else { return nil }
        let slice = self.readSlice(length: nul - view.startIndex)!
        self.moveReaderIndex(forwardBy: 1)
        return slice
    }

    /// Writes a string and a NUL terminator.
    public mutating func writeMySQLNullTerminatedString(_ string: String) {
        self.writeString(string)
        self.writeInteger(UInt8(0))
    }
}
