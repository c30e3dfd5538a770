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
    /// Runs once per md5 login, so it builds no strings: one 36-byte buffer is hashed and the
    /// digest's hex digits are compared with the response's bytes directly.
    public static func verify(clientResponse: String, storedHash: String, salt: [UInt8]) -> Bool {
        var storedHash = storedHash
        var clientResponse = clientResponse
        return storedHash.withUTF8 { stored in
            clientResponse.withUTF8 { response in
                verify(response: response, stored: stored, salt: salt)
            }
        }
    }

    private static func verify(
        response: UnsafeBufferPointer<UInt8>, stored: UnsafeBufferPointer<UInt8>, salt: [UInt8]
    ) -> Bool {
        guard stored.count == 35, stored[0] == UInt8(ascii: "m"), stored[1] == UInt8(ascii: "d"),
              stored[2] == UInt8(ascii: "5"), stored[3...].allSatisfy(Self.isLowercaseHexDigit), salt.count == 4
        else {
            return false
        }
        // Compared in full whatever the length (the length is not secret, the content is).
        var difference: UInt8 = response.count == 35 ? 0 : 1
        var md5 = Insecure.MD5()
        md5.update(bufferPointer: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(stored)[3...]))
        salt.withUnsafeBytes { md5.update(bufferPointer: $0) }
        let digest = md5.finalize()
        func expected(_ index: Int) -> UInt8 {
            switch index {
            case 0: return UInt8(ascii: "m")
            case 1: return UInt8(ascii: "d")
            case 2: return UInt8(ascii: "5")
            default: return 0
            }
        }
        var index = 0
        func compare(_ nibble: UInt8) {
            let digit = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
            let position = 3 + index
            if position < response.count { difference |= response[position] ^ digit }
            index += 1
        }
        for byte in digest {
            compare(byte >> 4)
            compare(byte & 0x0F)
        }
        for position in 0..<3 where position < response.count {
            difference |= response[position] ^ expected(position)
        }
        return difference == 0
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
