import Crypto

/// Just enough of the PostgreSQL protocol for a plaintext md5 login and a pooled simple query.
enum Wire {
    static func int32(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int {
        Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
    }

    static func int32(_ bytes: [UInt8], at offset: Int) -> Int {
        bytes.withUnsafeBytes { int32($0, at: offset) }
    }

    static func bigEndian(_ value: Int) -> [UInt8] {
        [UInt8((value >> 24) & 255), UInt8((value >> 16) & 255), UInt8((value >> 8) & 255), UInt8(value & 255)]
    }

    static func message(_ type: UInt8, _ body: [UInt8]) -> [UInt8] {
        [type] + bigEndian(body.count + 4) + body
    }

    static func authenticationMD5(salt: [UInt8]) -> [UInt8] { message(0x52, bigEndian(5) + salt) }

    /// AuthenticationOk, the given ParameterStatus messages, BackendKeyData, ReadyForQuery(idle).
    static func loginOK(parameterStatus: [UInt8]) -> [UInt8] {
        message(0x52, bigEndian(0)) + parameterStatus + message(0x4B, bigEndian(4242) + bigEndian(1_234_567))
            + message(0x5A, [0x49])
    }

    static func startup(user: String, database: String) -> [UInt8] {
        var body = bigEndian(196_608)
        for string in ["user", user, "database", database] { body += Array(string.utf8) + [0] }
        body.append(0)
        return bigEndian(body.count + 4) + body
    }

    /// A few ParameterStatus messages, as libpq and pgbench expect after a login.
    static let defaultParameterStatus: [UInt8] = [
        ("server_version", "15.18"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
    ].flatMap { message(0x53, Array($0.0.utf8) + [0] + Array($0.1.utf8) + [0]) }

    // md5 authentication: "md5" + hex(md5(hex(md5(password + user)) + salt)).
    static func md5Hex(_ bytes: [UInt8]) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return Insecure.MD5.hash(data: bytes).flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }
    }

    static func storedHash(user: String, password: String) -> [UInt8] { md5Hex(Array(password.utf8) + Array(user.utf8)) }

    static func md5Response(storedHash: [UInt8], salt: [UInt8]) -> [UInt8] { Array("md5".utf8) + md5Hex(storedHash + salt) }
}
