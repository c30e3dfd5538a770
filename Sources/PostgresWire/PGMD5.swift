import Crypto

/// PostgreSQL's md5 password authentication, client and server side.
///
/// The client answers AuthenticationMD5Password with
/// `"md5" + md5hex(md5hex(password + user) + salt)`; the server stores `"md5" + md5hex(password + user)`.
public enum PGMD5 {
    /// The response a client sends for `user`/`password` and the server's 4-byte `salt`.
    public static func hashedPassword(user: String, password: String, salt: [UInt8]) -> String {
        Self.saltedResponse(innerHex: Self.md5Hex(Array(password.utf8) + Array(user.utf8)), salt: salt)
    }

    /// The value PostgreSQL stores in `pg_authid.rolpassword` for md5: `"md5" + md5hex(password + user)`.
    public static func storedHash(user: String, password: String) -> String {
        "md5" + String(decoding: Self.md5Hex(Array(password.utf8) + Array(user.utf8)), as: UTF8.self)
    }

    /// The response expected from a client, computed from a stored hash (see ``storedHash(user:password:)``);
    /// `nil` if `storedHash` is not of the form `md5` + 32 lowercase hex digits.
    public static func expectedResponse(storedHash: String, salt: [UInt8]) -> String? {
        let utf8 = Array(storedHash.utf8)
        guard isStoredHash(utf8) else { return nil }
        return Self.saltedResponse(innerHex: Array(utf8[3...]), salt: salt)
    }

    /// Checks a client's PasswordMessage against a stored hash in constant time (for equal lengths).
    /// Runs once per md5 login, so it builds no strings: the expected response is written into a
    /// 35-byte buffer on the stack and compared with the response's bytes.
    public static func verify(clientResponse: String, storedHash: String, salt: [UInt8]) -> Bool {
        var storedHash = storedHash
        var clientResponse = clientResponse
        return storedHash.withUTF8 { stored in
            guard isStoredHash(stored), salt.count == 4 else { return false }
            var md5 = Insecure.MD5()
            md5.update(bufferPointer: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(stored)[3...]))
            salt.withUnsafeBytes { md5.update(bufferPointer: $0) }
            let digest = md5.finalize()
            return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 35) { expected in
                for (index, byte) in "md5".utf8.enumerated() { expected[index] = byte }
                var index = 3
                for byte in digest {
                    expected[index] = hexDigit(byte >> 4)
                    expected[index + 1] = hexDigit(byte & 0x0F)
                    index += 2
                }
                return clientResponse.withUTF8 { constantTimeEquals($0, UnsafeBufferPointer(expected)) }
            }
        }
    }

    /// `md5` followed by 32 lowercase hex digits.
    private static func isStoredHash<Bytes: Collection<UInt8>>(_ utf8: Bytes) -> Bool {
        utf8.count == 35 && utf8.starts(with: "md5".utf8) && utf8.dropFirst(3).allSatisfy(Self.isLowercaseHexDigit)
    }

    private static func saltedResponse(innerHex: [UInt8], salt: [UInt8]) -> String {
        "md5" + String(decoding: Self.md5Hex(innerHex + salt), as: UTF8.self)
    }

    private static func md5Hex(_ bytes: [UInt8]) -> [UInt8] {
        let digest = Insecure.MD5.hash(data: bytes)
        var hex: [UInt8] = []
        hex.reserveCapacity(32)
        for byte in digest {
            hex.append(hexDigit(byte >> 4))
            hex.append(hexDigit(byte & 0x0F))
        }
        return hex
    }

    /// The lowercase hex digit of a value below 16.
    private static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }

    private static func isLowercaseHexDigit(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f"))
    }
}

/// Compares two byte sequences in time independent of their contents (the length is not secret).
func constantTimeEquals<L: Collection<UInt8>, R: Collection<UInt8>>(_ lhs: L, _ rhs: R) -> Bool {
    guard lhs.count == rhs.count else {
        return false
    }
    var difference: UInt8 = 0
    for (left, right) in zip(lhs, rhs) {
        difference |= left ^ right
    }
    return difference == 0
}
