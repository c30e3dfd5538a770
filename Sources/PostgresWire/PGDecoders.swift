import NIOCore

/// A `ByteToMessageDecoder` producing one ``PGFrame`` per typed message (after the startup phase).
///
/// A thin wrapper around ``PGFraming/nextFrame(from:maxMessageSize:)``.
public struct PGMessageDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = PGFrame

    /// The largest accepted length word (which counts itself).
    public let maxMessageSize: Int

    /// Creates a decoder rejecting messages whose length word exceeds `maxMessageSize`.
    public init(maxMessageSize: Int) {
        self.maxMessageSize = maxMessageSize
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> PGFrame? {
        try PGFraming.nextFrame(from: &buffer, maxMessageSize: self.maxMessageSize)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> PGFrame? {
        try self.decode(buffer: &buffer)
    }
}

/// A `ByteToMessageDecoder` producing ``StartupPacket``s (the untyped packets of the startup phase).
///
/// A thin wrapper around ``PGFraming/nextStartupPacket(from:maxLength:)``. A server normally
/// removes it after the StartupMessage; note that after an SSLRequest no further bytes may be
/// accepted before the TLS handshake (the CVE-2021-23214 class), which the server must check.
public struct PGStartupDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = StartupPacket

    /// The largest accepted packet length.
    public let maxLength: Int

    /// Creates a decoder; `maxLength` defaults to PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
    public init(maxLength: Int = PGProtocol.maxStartupPacketLength) {
        self.maxLength = maxLength
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> StartupPacket? {
        try PGFraming.nextStartupPacket(from: &buffer, maxLength: self.maxLength)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> StartupPacket? {
        try self.decode(buffer: &buffer)
    }
}
