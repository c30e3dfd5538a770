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
        guard utf8.count == 35, utf8.starts(with: "md5".utf8), utf8[3...].allSatisfy(Self.isLowercaseHexDigit) else {
            return nil
        }
        return Self.saltedResponse(innerHex: Array(utf8[3...]), salt: salt)
    }

    /// Checks a client's PasswordMessage against a stored hash in constant time (for equal lengths).
    public static func verify(clientResponse: String, storedHash: String, salt: [UInt8]) -> Bool {
        guard let expected = Self.expectedResponse(storedHash: storedHash, salt: salt) else {
            return false
        }
        return constantTimeEquals(Array(clientResponse.utf8), Array(expected.utf8))
    }

    private static func saltedResponse(innerHex: [UInt8], salt: [UInt8]) -> String {
        "md5" + String(decoding: Self.md5Hex(innerHex + salt), as: UTF8.self)
    }

    private static func md5Hex(_ bytes: [UInt8]) -> [UInt8] {
        let digest = Insecure.MD5.hash(data: bytes)
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        hex.reserveCapacity(32)
        for byte in digest {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 0x0F)])
        }
        return hex
    }

    private static func isLowercaseHexDigit(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f"))
    }
}

/// Compares two byte sequences in time independent of their contents (the length is not secret).
func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else {
        return false
    }
    var difference: UInt8 = 0
    for index in lhs.indices {
        difference |= lhs[index] ^ rhs[index]
    }
    return difference == 0
}
