import ConciergeRandom
import Crypto
import _CryptoExtras

/// Shared constants and helpers of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it.
///
/// Passwords are used as their raw UTF-8 bytes. PostgreSQL applies SASLprep first and falls
/// back to the raw bytes when SASLprep fails; for ASCII passwords (SASLprep either leaves them
/// unchanged or fails on control characters) both agree. Non-ASCII passwords agree only when
/// they are already SASLprep-normalized (NFKC, no non-ASCII spaces, no "mapped to nothing"
/// characters such as soft hyphens).
public enum SCRAM {
    /// The SASL mechanism name.
    public static let mechanism = "SCRAM-SHA-256"
    /// PostgreSQL's default iteration count (`scram_iterations`).
    public static let defaultIterations = 4096
    /// The number of random bytes in a nonce before base64 (as PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
    static let rawNonceLength = 18
    /// The salt length PostgreSQL uses for new verifiers (`SCRAM_DEFAULT_SALT_LEN`).
    static let defaultSaltLength = 16

    /// A fresh random nonce: 18 bytes from the system CSPRNG, base64-encoded (24 printable characters).
    public static func randomNonce() -> String {
        String(decoding: SCRAMBase64.encode(randomBytes(count: rawNonceLength)), as: UTF8.self)
    }

    /// `nonce` as bytes when it is a valid nonce (see ``isPrintable(_:)``), else a fresh random one.
    static func nonceBytes(_ nonce: String?) -> [UInt8] {
        if let nonce, Self.isPrintable(nonce.utf8) {
            return Array(nonce.utf8)
        }
        return Array(Self.randomNonce().utf8)
    }

    static func randomBytes(count: Int) -> [UInt8] {
        SecureRandom.bytes(count)
    }

    /// Whether `bytes` is a valid nonce: non-empty, printable ASCII except `,`.
    static func isPrintable(_ bytes: some Collection<UInt8>) -> Bool {
        !bytes.isEmpty && bytes.allSatisfy { ($0 >= 0x21 && $0 <= 0x7E) && $0 != UInt8(ascii: ",") }
    }

    // MARK: Cryptographic primitives

    static func hmac(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
    }

    static func sha256(_ bytes: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: bytes))
    }

    static func xor(_ lhs: [UInt8], _ rhs: [UInt8]) -> [UInt8] {
        var result = lhs
        for index in result.indices where index < rhs.count {
            result[index] ^= rhs[index]
        }
        return result
    }

    /// SaltedPassword := Hi(password, salt, i), i.e. PBKDF2-HMAC-SHA-256 with a 32-byte output.
    ///
    /// Uses BoringSSL's PBKDF2 through `_CryptoExtras`, falling back to ``pbkdf2Fallback`` if it
    /// reports an error. `iterations` below 1 are treated as 1.
    static func saltedPassword(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let rounds = max(iterations, 1)
        if let key = try? KDF.Insecure.PBKDF2.deriveKey(
            from: password, salt: salt, using: .sha256, outputByteCount: SHA256.byteCount, unsafeUncheckedRounds: rounds
        ) {
            return key.withUnsafeBytes { Array($0) }
        }
        return Self.pbkdf2Fallback(password: password, salt: salt, iterations: rounds)
    }

    /// A straightforward PBKDF2-HMAC-SHA-256 (one 32-byte block), used when BoringSSL fails and
    /// to cross-check it in tests.
    static func pbkdf2Fallback(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var first = HMAC<SHA256>(key: key)
        first.update(data: salt)
        first.update(data: [0, 0, 0, 1])
        var block = first.finalize()
        var result = Array(block)
        for _ in 1..<max(iterations, 1) {
            var next = HMAC<SHA256>(key: key)
            block.withUnsafeBytes { next.update(data: $0) }
            block = next.finalize()
            block.withUnsafeBytes { bytes in
                for index in 0..<result.count {
                    result[index] ^= bytes[index]
                }
            }
        }
        return result
    }
}

/// Errors of a SCRAM exchange. A server should map all of them to one generic authentication
/// failure towards the client. Descriptions never contain secrets.
public enum SCRAMError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A message arrived in a state that does not expect it (or after a failure).
    case unexpectedMessage
    /// A NUL byte inside a SCRAM message.
    case invalidEncoding
    /// The attribute named `expected` is missing, out of order or not of the form `x=value`.
    case malformedAttribute(expected: Character)
    /// The GS2 header is not `n,,` or `y,,`.
    case invalidGS2Header
    /// The client requires channel binding (`p=`), which is not offered (no SCRAM-SHA-256-PLUS).
    case channelBindingNotSupported
    /// The client sent an authorization identity (`a=`), which PostgreSQL does not support.
    case authorizationIdentityNotSupported
    /// The message starts with a mandatory extension (`m=`).
    case unsupportedMandatoryExtension
    /// A nonce is empty or contains non-printable characters.
    case invalidNonce
    /// The nonce does not continue the client's nonce (client side) or does not match the
    /// combined nonce (server side).
    case nonceMismatch
    /// An attribute value is not valid base64.
    case invalidBase64
    /// The salt is empty.
    case invalidSalt
    /// The iteration count is not a positive 32-bit integer.
    case invalidIterationCount
    /// The channel binding attribute (`c=`) does not repeat the GS2 header.
    case channelBindingMismatch
    /// The client proof is not 32 bytes.
    case invalidProofLength
    /// Bytes after the last expected attribute.
    case trailingData
    /// The client proof is wrong: wrong password.
    case authenticationFailed
    /// The server reported an error (`e=`) in its final message.
    case serverError(String)
    /// The server signature is wrong: the server does not know the password.
    case serverSignatureMismatch

    public var description: String {
        switch self {
        case .unexpectedMessage: return "unexpected SCRAM message"
        case .invalidEncoding: return "malformed SCRAM message (NUL byte)"
        case .malformedAttribute(let expected): return "malformed SCRAM message (attribute \"\(expected)\" expected)"
        case .invalidGS2Header: return "malformed SCRAM message (invalid GS2 header)"
        case .channelBindingNotSupported: return "SCRAM channel binding is not supported"
        case .authorizationIdentityNotSupported: return "SCRAM authorization identity is not supported"
        case .unsupportedMandatoryExtension: return "SCRAM mandatory extension is not supported"
        case .invalidNonce: return "malformed SCRAM message (invalid nonce)"
        case .nonceMismatch: return "SCRAM nonce mismatch"
        case .invalidBase64: return "malformed SCRAM message (invalid base64)"
        case .invalidSalt: return "malformed SCRAM message (invalid salt)"
        case .invalidIterationCount: return "malformed SCRAM message (invalid iteration count)"
        case .channelBindingMismatch: return "SCRAM channel binding check failed"
        case .invalidProofLength: return "malformed SCRAM message (invalid proof length)"
        case .trailingData: return "malformed SCRAM message (garbage at end of message)"
        case .authenticationFailed: return "SCRAM authentication failed"
        case .serverError(let error): return "SCRAM server error: \(error)"
        case .serverSignatureMismatch: return "SCRAM server signature mismatch"
        }
    }
}

/// A cursor over a SCRAM message: comma-separated `x=value` attributes.
struct SCRAMScanner {
    let bytes: [UInt8]
    private(set) var index: Int

    init(_ bytes: [UInt8], startingAt index: Int = 0) throws(SCRAMError) {
        guard !bytes.contains(0) else { throw .invalidEncoding }
        self.bytes = bytes
        self.index = index
    }

    var isAtEnd: Bool { self.index >= self.bytes.count }

    /// The next byte without consuming it.
    var peek: UInt8? { self.isAtEnd ? nil : self.bytes[self.index] }

    /// Reads `name=value` up to the next comma (consumed unless it is the last byte) or the end.
    mutating func readAttribute(_ name: Character) throws(SCRAMError) -> ArraySlice<UInt8> {
        guard let ascii = name.asciiValue,
              self.index + 1 < self.bytes.count,
              self.bytes[self.index] == ascii,
              self.bytes[self.index + 1] == UInt8(ascii: "=")
        else {
            throw .malformedAttribute(expected: name)
        }
        return self.readValue(from: self.index + 2)
    }

    /// Reads any `x=value` attribute (an extension), `x` being an ASCII letter.
    mutating func skipAnyAttribute() throws(SCRAMError) {
        guard self.index + 1 < self.bytes.count,
              Self.isASCIILetter(self.bytes[self.index]),
              self.bytes[self.index + 1] == UInt8(ascii: "=")
        else {
            throw .malformedAttribute(expected: "?")
        }
        _ = self.readValue(from: self.index + 2)
    }

    private mutating func readValue(from start: Int) -> ArraySlice<UInt8> {
        var end = start
        while end < self.bytes.count && self.bytes[end] != UInt8(ascii: ",") {
            end += 1
        }
        let value = self.bytes[start..<end]
        // Consume the comma only when an attribute follows, so a trailing comma is left over
        // (and rejected by the caller).
        self.index = end + 1 < self.bytes.count ? end + 1 : end
        return value
    }

    /// Consumes `byte` or throws `error`.
    mutating func expect(_ byte: UInt8, else error: SCRAMError) throws(SCRAMError) {
        guard self.peek == byte else { throw error }
        self.index += 1
    }

    static func isASCIILetter(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
    }
}

/// Strict standard base64 (RFC 4648 with padding, no whitespace).
enum SCRAMBase64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var iterator = bytes.makeIterator()
        while let first = iterator.next() {
            let second = iterator.next()
            let third = iterator.next()
            let group = UInt32(first) << 16 | UInt32(second ?? 0) << 8 | UInt32(third ?? 0)
            output.append(alphabet[Int(group >> 18 & 0x3F)])
            output.append(alphabet[Int(group >> 12 & 0x3F)])
            output.append(second == nil ? UInt8(ascii: "=") : alphabet[Int(group >> 6 & 0x3F)])
            output.append(third == nil ? UInt8(ascii: "=") : alphabet[Int(group & 0x3F)])
        }
        return output
    }

    static func encodeString(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: encode(bytes), as: UTF8.self)
    }

    /// Decodes, or returns `nil` for a length not a multiple of 4, a character outside the
    /// alphabet, or misplaced padding.
    static func decode(_ input: some Collection<UInt8>) -> [UInt8]? {
        let input = Array(input)
        guard input.count % 4 == 0 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(input.count / 4 * 3)
        var index = 0
        while index < input.count {
            let isLastGroup = index + 4 == input.count
            var group: UInt32 = 0
            var padding = 0
            for offset in 0..<4 {
                let character = input[index + offset]
                if character == UInt8(ascii: "=") {
                    // Padding only in the last two positions of the last group.
                    guard isLastGroup, offset >= 2 else { return nil }
                    padding += 1
                    group <<= 6
                } else {
                    guard padding == 0, let value = Self.value(of: character) else { return nil }
                    group = group << 6 | UInt32(value)
                }
            }
            output.append(UInt8(truncatingIfNeeded: group >> 16))
            if padding < 2 { output.append(UInt8(truncatingIfNeeded: group >> 8)) }
            if padding < 1 { output.append(UInt8(truncatingIfNeeded: group)) }
            index += 4
        }
        return output
    }

    private static func value(of character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return character - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return character - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return character - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}
