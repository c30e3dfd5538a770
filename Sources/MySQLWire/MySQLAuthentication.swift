import ConciergeRandom
import Crypto
import _CryptoExtras

/// The password scrambles of MySQL's authentication plugins, both sides: the proxy computes
/// them to log in to backends and verifies them to log clients in against the secret.
///
/// Nonces are the 20-byte server nonce without its trailing NUL; only the first 20 bytes are
/// used, as the server does (SCRAMBLE_LENGTH).
public enum MySQLAuthentication {
    /// The plugin name of the SHA-1 challenge-response every server supports.
    public static let nativePasswordPlugin = "mysql_native_password"
    /// The plugin name of MySQL 8's default (SHA-256 scramble with a server-side cache).
    public static let cachingSHA2PasswordPlugin = "caching_sha2_password"
    /// The plugin name of the password-in-clear plugin (only ever over TLS).
    public static let clearPasswordPlugin = "mysql_clear_password"
    /// What a caching_sha2 client sends to ask for the server's RSA public key (no TLS).
    public static let requestPublicKey: [UInt8] = [0x02]

    /// mysql_native_password: `SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))`; an empty
    /// password gives an empty response, as clients send.
    public static func nativePasswordScramble(password: String, nonce: [UInt8]) -> [UInt8] {
        guard !password.isEmpty else { return [] }
        let stage1 = Array(Insecure.SHA1.hash(data: Array(password.utf8)))
        let stage2 = Array(Insecure.SHA1.hash(data: stage1))
        return Self.nativeXOR(stage1: stage1, stage2: stage2, nonce: nonce)
    }

    /// `SHA1(SHA1(password))`, what `mysql.user` stores (as `*HEX`) for native passwords: lets
    /// a verifier keep a hash instead of the password.
    public static func nativePasswordStoredHash(password: String) -> [UInt8] {
        Array(Insecure.SHA1.hash(data: Array(Insecure.SHA1.hash(data: Array(password.utf8)))))
    }

    /// Checks a client's native scramble in constant time (for equal lengths).
    public static func verifyNativePassword(response: [UInt8], password: String, nonce: [UInt8]) -> Bool {
        constantTimeEquals(response, Self.nativePasswordScramble(password: password, nonce: nonce))
    }

    /// Checks a native scramble against the stored hash `SHA1(SHA1(password))` the way the
    /// server does: recover `SHA1(password)` from the response, hash it, compare. An empty
    /// response matches only an empty stored hash.
    public static func verifyNativePassword(response: [UInt8], storedHash: [UInt8], nonce: [UInt8]) -> Bool {
        if response.isEmpty || storedHash.isEmpty { return response.isEmpty && storedHash.isEmpty }
        guard response.count == 20, storedHash.count == 20 else { return false }
        var hasher = Insecure.SHA1()
        hasher.update(data: Array(nonce.prefix(20)))
        hasher.update(data: storedHash)
        let key = Array(hasher.finalize())
        var stage1 = response
        for index in 0..<20 { stage1[index] ^= key[index] }
        return constantTimeEquals(Array(Insecure.SHA1.hash(data: stage1)), storedHash)
    }

    private static func nativeXOR(stage1: [UInt8], stage2: [UInt8], nonce: [UInt8]) -> [UInt8] {
        var hasher = Insecure.SHA1()
        hasher.update(data: Array(nonce.prefix(20)))
        hasher.update(data: stage2)
        var result = stage1
        for (index, byte) in hasher.finalize().enumerated() { result[index] ^= byte }
        return result
    }

    /// caching_sha2_password's fast-path scramble:
    /// `SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce)`; empty password → empty.
    public static func cachingSHA2Scramble(password: String, nonce: [UInt8]) -> [UInt8] {
        guard !password.isEmpty else { return [] }
        let stage1 = Array(SHA256.hash(data: Array(password.utf8)))
        let stage2 = Array(SHA256.hash(data: stage1))
        var hasher = SHA256()
        hasher.update(data: stage2)
        hasher.update(data: Array(nonce.prefix(20)))
        var result = stage1
        for (index, byte) in hasher.finalize().enumerated() { result[index] ^= byte }
        return result
    }

    /// Checks a client's caching_sha2 fast-path scramble in constant time (for equal lengths).
    public static func verifyCachingSHA2(response: [UInt8], password: String, nonce: [UInt8]) -> Bool {
        constantTimeEquals(response, Self.cachingSHA2Scramble(password: password, nonce: nonce))
    }

    /// What a client sends a caching_sha2 (or sha256_password) server without TLS:
    /// `(password + NUL) XOR nonce` (nonce repeated), RSA-OAEP-encrypted (SHA-1, MGF1-SHA-1)
    /// with the server's public key, which is accepted in SPKI or PKCS#1 PEM and from 1024 bits
    /// (the proxy talks to whatever key a server has).
    public static func rsaEncryptPassword(password: String, nonce: [UInt8], publicKeyPEM: String) throws(MySQLWireError) -> [UInt8] {
        let key: _RSA.Encryption.PublicKey
        do {
            key = try _RSA.Encryption.PublicKey(unsafePEMRepresentation: publicKeyPEM)
        } catch {
            throw .cryptography("the server's public key is not an RSA key of at least 1024 bits")
        }
        let plain = Self.xorWithNonce(Array(password.utf8) + [0], nonce: nonce)
        guard plain.count <= key.maximumEncryptSize(with: .PKCS1_OAEP) else {
            throw .cryptography("the password is too long for the server's RSA key")
        }
        do {
            return Array(try key.encrypt(plain, padding: .PKCS1_OAEP))
        } catch {
            throw .cryptography("encryption failed")
        }
    }

    /// XORs `bytes` with the nonce (its first 20 bytes) repeated: the obfuscation under the RSA
    /// layer of caching_sha2, which binds the ciphertext to this connection's nonce.
    static func xorWithNonce(_ bytes: [UInt8], nonce: [UInt8]) -> [UInt8] {
        let nonce = Array(nonce.prefix(20))
        guard !nonce.isEmpty else { return bytes }
        var result = bytes
        for index in result.indices { result[index] ^= nonce[index % nonce.count] }
        return result
    }

    /// Compares two byte arrays in time independent of their contents (for equal lengths).
    static func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}

/// The proxy's own RSA key pair, for clients that log in with caching_sha2_password without TLS
/// and ask for a public key to encrypt their password with: generated at startup (2048 bits, as
/// the server's auto-generated key), or loaded from a configured PEM.
public struct MySQLRSAKeyPair: Sendable {
    /// BoringSSL's RSA key is immutable after creation and safe for concurrent private-key
    /// operations; `_RSA.Encryption.PrivateKey` is just not annotated `Sendable`.
    private final class Box: @unchecked Sendable {
        let key: _RSA.Encryption.PrivateKey
        init(_ key: _RSA.Encryption.PrivateKey) { self.key = key }
    }

    private let box: Box
    /// The public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`, newline-terminated), what
    /// clients read with `PEM_read_bio_RSA_PUBKEY` from the AuthMoreData the proxy sends.
    public let publicKeyPEM: String

    private init(key: _RSA.Encryption.PrivateKey) {
        self.box = Box(key)
        var pem = key.publicKey.pemRepresentation
        if !pem.hasSuffix("\n") { pem += "\n" }
        self.publicKeyPEM = pem
    }

    /// Generates a fresh 2048-bit key pair (about 0.1 s: do it once at startup).
    public static func generate() throws(MySQLWireError) -> MySQLRSAKeyPair {
        do {
            return MySQLRSAKeyPair(key: try _RSA.Encryption.PrivateKey(keySize: .bits2048))
        } catch {
            throw .cryptography("key generation failed")
        }
    }

    /// Loads a key pair from a private key in PEM (PKCS#1 or PKCS#8), at least 2048 bits.
    public init(privateKeyPEM: String) throws(MySQLWireError) {
        do {
            self.init(key: try _RSA.Encryption.PrivateKey(pemRepresentation: privateKeyPEM))
        } catch {
            throw .cryptography("the private key is not an RSA key of at least 2048 bits")
        }
    }

    /// Decrypts what a client sent after receiving ``publicKeyPEM`` and recovers the password:
    /// RSA-OAEP (SHA-1), XOR with the connection's nonce, then the terminating NUL is required
    /// and removed (a wrong nonce or a garbled ciphertext fails here rather than yielding a
    /// wrong password).
    public func decryptPassword(_ encrypted: [UInt8], nonce: [UInt8]) throws(MySQLWireError) -> String {
        let decrypted: [UInt8]
        do {
            decrypted = Array(try self.box.key.decrypt(encrypted, padding: .PKCS1_OAEP))
        } catch {
            throw .cryptography("decryption failed")
        }
        var plain = MySQLAuthentication.xorWithNonce(decrypted, nonce: nonce)
        guard plain.last == 0 else { throw .cryptography("the decrypted password is not NUL-terminated") }
        plain.removeLast()
        return String(decoding: plain, as: UTF8.self)
    }
}

/// The nonce a server (here, the proxy facing its clients) sends in its handshake.
public enum MySQLNonce {
    /// The nonce length every plugin uses (SCRAMBLE_LENGTH).
    public static let length = 20

    /// 20 bytes from the system CSPRNG, mapped like the server's `generate_user_salt` into
    /// 1...127 without `$` (NUL would end the C string that some clients copy it into; `$`
    /// is the separator in stored sha2 hashes).
    public static func make() -> [UInt8] {
        var bytes = SecureRandom.bytes(Self.length)
        for index in bytes.indices {
            var byte = bytes[index] & 0x7F
            if byte == 0 || byte == UInt8(ascii: "$") { byte += 1 }
            bytes[index] = byte
        }
        return bytes
    }
}
