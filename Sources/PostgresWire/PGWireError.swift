/// Errors raised while framing or parsing PostgreSQL protocol messages.
///
/// Descriptions never contain message contents (which may carry passwords), only structural facts.
public enum PGWireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A length word below the protocol minimum (4 for typed messages, 8 for startup packets),
    /// or one that does not fit a signed 32-bit integer.
    case invalidMessageLength(Int)
    /// A length word above the configured limit.
    case messageTooLarge(length: Int, limit: Int)
    /// A message body that does not match the layout of its type (truncated, missing NUL
    /// terminator, trailing bytes, out-of-range value, ...).
    case malformedMessage(type: UInt8, reason: String)
    /// A startup-phase packet with an invalid layout or an unknown request code.
    case invalidStartupPacket(String)
    /// A StartupMessage whose major protocol version is not 3.
    case unsupportedProtocolVersion(UInt32)

    public var description: String {
        switch self {
        case .invalidMessageLength(let length):
            return "invalid message length \(length)"
        case .messageTooLarge(let length, let limit):
            return "message length \(length) exceeds the limit of \(limit) bytes"
        case .malformedMessage(let type, let reason):
            return "malformed message of type \(PGWireError.describeType(type)): \(reason)"
        case .invalidStartupPacket(let reason):
            return "invalid startup packet: \(reason)"
        case .unsupportedProtocolVersion(let version):
            return "unsupported frontend protocol \(PGProtocol.majorVersion(version)).\(PGProtocol.minorVersion(version))"
        }
    }

    private static func describeType(_ type: UInt8) -> String {
        if type >= 0x21 && type <= 0x7E {
            return "'\(Character(Unicode.Scalar(type)))'"
        }
        return "0x\(String(type, radix: 16))"
    }
}
