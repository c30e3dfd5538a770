import NIOCore

/// One regular (typed) protocol message, as received.
///
/// A proxy forwards ``bytes`` untouched and looks into ``body`` only for the few messages it must
/// inspect.
public struct PGFrame: Sendable, Hashable {
    /// The message type byte (see ``PGMessageType``).
    public let type: UInt8
    /// The whole message: type byte + Int32 length + body, exactly as received (ready to forward).
    public let bytes: ByteBuffer

    /// The body only: the bytes after the length word. A slice of ``bytes``, no copy.
    @inlinable
    public var body: ByteBuffer {
        self.bytes.getSlice(at: self.bytes.readerIndex &+ 5, length: self.bytes.readableBytes &- 5) ?? ByteBuffer()
    }

    /// The number of bytes in ``body``.
    @inlinable
    public var bodyLength: Int { self.bytes.readableBytes &- 5 }

    /// Wraps bytes already known to hold exactly one message of `type` (used by ``PGFraming``).
    @usableFromInline
    init(validatedType type: UInt8, bytes: ByteBuffer) {
        self.type = type
        self.bytes = bytes
    }

    /// Builds a frame from a type byte and a body by writing a fresh message (copies `body`).
    public init(type: UInt8, body: ByteBuffer) {
        var bytes = ByteBuffer()
        bytes.reserveCapacity(5 + body.readableBytes)
        bytes.pgWriteMessage(type: type) { $0.writeImmutableBuffer(body) }
        self.type = type
        self.bytes = bytes
    }
}

/// A `name=value` pair of a StartupMessage (for example `user`, `database`, `application_name`,
/// `options`, or a `_pq_.` protocol option).
public struct StartupParameter: Sendable, Hashable {
    /// The parameter name.
    public var name: String
    /// The parameter value.
    public var value: String

    /// Creates a parameter.
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

extension Array where Element == StartupParameter {
    /// The value of the parameter called `name`, if present.
    public func value(of name: String) -> String? {
        self.first(where: { $0.name == name })?.value
    }
}

/// A packet of the startup phase (the first packet a client sends; these have no type byte).
public enum StartupPacket: Sendable, Hashable {
    /// A StartupMessage with its protocol version and its parameters in the order received.
    /// When a name repeats, the last value wins (kept at the first occurrence's position).
    case startup(protocolVersion: UInt32, parameters: [StartupParameter])
    /// An SSLRequest: the client asks for TLS. Answer with a single `S` or `N` byte.
    case sslRequest
    /// A GSSENCRequest: the client asks for GSSAPI encryption. Answer with a single `G` or `N` byte.
    case gssEncRequest
    /// A CancelRequest for the backend identified by the BackendKeyData values.
    case cancel(processID: Int32, secretKey: Int32)
}

/// Message framing: splits a byte stream into messages without copying.
public enum PGFraming {
    /// Parses one complete typed message from `buffer`, advancing its reader index past it.
    ///
    /// - Returns: The frame (a slice of `buffer`, no copy), or `nil` when the message is not
    ///   complete yet; the reader index is then unchanged.
    /// - Throws: ``PGWireError/invalidMessageLength(_:)`` when the length word is below 4 (the
    ///   length counts itself) or negative, ``PGWireError/messageTooLarge(length:limit:)`` when it
    ///   exceeds `maxMessageSize`. Both are reported as soon as the header arrives. The reader
    ///   index is unchanged.
    @inlinable
    public static func nextFrame(from buffer: inout ByteBuffer, maxMessageSize: Int) throws(PGWireError) -> PGFrame? {
        guard let (type, size) = try peekFrame(in: buffer, maxMessageSize: maxMessageSize),
              let bytes = buffer.readSlice(length: size)
        else { return nil }
        return PGFrame(validatedType: type, bytes: bytes)
    }

    /// The type and total size (type byte included) of the complete message at the start of
    /// `buffer`, validated like `nextFrame`, without slicing it: for callers that only need to
    /// look at a message and skip it (`moveReaderIndex(forwardBy: size)`). Nil when the message is
    /// not complete yet. Does not move the reader index.
    @inlinable
    public static func peekFrame(in buffer: ByteBuffer, maxMessageSize: Int) throws(PGWireError) -> (type: UInt8, size: Int)? {
        guard let (type, length) = buffer.getMultipleIntegers(at: buffer.readerIndex, as: (UInt8, UInt32).self) else {
            return nil
        }
        guard length >= 4, length <= UInt32(Int32.max) else {
            throw .invalidMessageLength(Int(Int32(bitPattern: length)))
        }
        let messageLength = Int(length)
        guard messageLength <= maxMessageSize else {
            throw .messageTooLarge(length: messageLength, limit: maxMessageSize)
        }
        guard buffer.readableBytes > messageLength else { return nil }
        return (type, messageLength &+ 1)
    }

    /// Parses one complete startup-phase packet from `buffer`, advancing its reader index past it.
    ///
    /// The packet is an Int32 length (counting itself) followed by an Int32 request code or
    /// protocol version and the payload.
    ///
    /// - Parameter maxLength: The largest accepted length; PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`
    ///   by default.
    /// - Returns: The packet, or `nil` when it is not complete yet (reader index unchanged).
    /// - Throws: ``PGWireError/invalidMessageLength(_:)`` for a length below 8,
    ///   ``PGWireError/messageTooLarge(length:limit:)`` above `maxLength`,
    ///   ``PGWireError/invalidStartupPacket(_:)`` for a bad layout or unknown request code,
    ///   ``PGWireError/unsupportedProtocolVersion(_:)`` for a major version other than 3.
    ///   On error the reader index is unchanged.
    public static func nextStartupPacket(
        from buffer: inout ByteBuffer,
        maxLength: Int = PGProtocol.maxStartupPacketLength
    ) throws(PGWireError) -> StartupPacket? {
        guard let rawLength = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else {
            return nil
        }
        guard rawLength >= 8, rawLength <= UInt32(Int32.max) else {
            throw .invalidMessageLength(Int(Int32(bitPattern: rawLength)))
        }
        let length = Int(rawLength)
        guard length <= maxLength else {
            throw .messageTooLarge(length: length, limit: maxLength)
        }
        guard var payload = buffer.getSlice(at: buffer.readerIndex &+ 4, length: length &- 4) else {
            return nil
        }
        let packet = try Self.parseStartupPayload(&payload)
        buffer.moveReaderIndex(forwardBy: length)
        return packet
    }

    /// Parses the bytes after the length word of a startup packet.
    private static func parseStartupPayload(_ payload: inout ByteBuffer) throws(PGWireError) -> StartupPacket {
        guard let code = payload.readInteger(as: UInt32.self) else {
            throw .invalidStartupPacket("truncated request code")
        }
        switch code {
        case PGProtocol.sslRequestCode:
            guard payload.readableBytes == 0 else { throw .invalidStartupPacket("SSLRequest must be 8 bytes long") }
            return .sslRequest
        case PGProtocol.gssEncRequestCode:
            guard payload.readableBytes == 0 else { throw .invalidStartupPacket("GSSENCRequest must be 8 bytes long") }
            return .gssEncRequest
        case PGProtocol.cancelRequestCode:
            guard payload.readableBytes == 8, let (processID, secretKey) = payload.readMultipleIntegers(as: (Int32, Int32).self) else {
                throw .invalidStartupPacket("CancelRequest must be 16 bytes long")
            }
            return .cancel(processID: processID, secretKey: secretKey)
        default:
            switch PGProtocol.majorVersion(code) {
            case 3:
                return .startup(protocolVersion: code, parameters: try Self.parseStartupParameters(&payload))
            case 1234:
                throw .invalidStartupPacket("unknown request code \(PGProtocol.minorVersion(code))")
            default:
                throw .unsupportedProtocolVersion(code)
            }
        }
    }

    /// Parses `name\0value\0 ... \0` as PostgreSQL does: the list ends at an empty name, which
    /// must be the last byte of the packet. Names and values must be valid UTF-8.
    private static func parseStartupParameters(_ payload: inout ByteBuffer) throws(PGWireError) -> [StartupParameter] {
        var parameters: [StartupParameter] = []
        // Room for what drivers send (libpq: user, database, application_name, client_encoding
        // and a few more): the array is not regrown three times per login.
        parameters.reserveCapacity(8)
        // Clients send a handful: a linear search for a repeated name beats hashing each one, and
        // past 16 parameters an index keeps a long packet linear.
        var indexByName: [String: Int]?
        while true {
            guard let nameSlice = payload.pgReadCStringSlice() else {
                throw .invalidStartupPacket("expected terminator as last byte")
            }
            if nameSlice.readableBytes == 0 {
                break
            }
            guard let valueSlice = payload.pgReadCStringSlice() else {
                throw .invalidStartupPacket("missing NUL terminator after a parameter value")
            }
            guard let name = nameSlice.pgValidatedUTF8String(), let value = valueSlice.pgValidatedUTF8String() else {
                throw .invalidStartupPacket("parameter is not valid UTF-8")
            }
            let existing: Int?
            if let index = indexByName {
                existing = index[name]
            } else {
                existing = parameters.firstIndex { $0.name == name }
                if parameters.count == 16 {
                    indexByName = Dictionary(parameters.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { $1 })
                }
            }
            if let existing {
                parameters[existing].value = value
            } else {
                indexByName?[name] = parameters.count
                parameters.append(StartupParameter(name: name, value: value))
            }
        }
        guard payload.readableBytes == 0 else {
            throw .invalidStartupPacket("expected terminator as last byte")
        }
        return parameters
    }
}
