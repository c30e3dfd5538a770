/// Errors raised while framing or parsing MySQL/MariaDB protocol packets.
///
/// One error type for the whole module, so a session machine has one thing to map to an ERR
/// packet or a closed connection. Descriptions never contain packet contents (which may carry
/// passwords or query text), only structural facts.
public enum MySQLWireError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A logical payload (all its continuation packets together) larger than the configured cap;
    /// raised as soon as the header that crosses the cap arrives, before its body is buffered, so
    /// an untrusted peer cannot make the proxy hold more than the cap.
    case payloadTooLarge(Int, max: Int)
    /// A packet whose layout does not match what its first byte (or the protocol phase) promises:
    /// truncated fields, missing NUL terminators, impossible lengths.
    case malformed(String)
    /// A packet whose sequence id does not follow the previous one. Sequence ids are the
    /// protocol's only guard against a confused peer: a client that skips one is broken or hostile.
    case unexpectedSequenceID(got: UInt8, expected: UInt8)
    /// A well-formed packet that cannot come at this point of the conversation (for example a
    /// server packet while no command is in flight, or something other than an EOF after a
    /// result set's column definitions).
    case unexpectedPacket(String)
    /// RSA key generation, parsing, encryption or decryption failed (the key is not RSA, too
    /// small, or the ciphertext does not decrypt).
    case cryptography(String)

    /// A log line without packet contents.
    public var description: String {
        switch self {
        case .payloadTooLarge(let length, let max):
            return "packet payload of \(length) bytes exceeds the limit of \(max) bytes"
        case .malformed(let reason):
            return "malformed packet: \(reason)"
        case .unexpectedSequenceID(let got, let expected):
            return "packet sequence id \(got), expected \(expected)"
        case .unexpectedPacket(let reason):
            return "unexpected packet: \(reason)"
        case .cryptography(let reason):
            return "RSA: \(reason)"
        }
    }
}
