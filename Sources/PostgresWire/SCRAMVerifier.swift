/// What a SCRAM-SHA-256 server needs to check a password, derived once per secret.
///
/// Deriving runs PBKDF2 (`iterations` HMACs); checking a client login afterwards costs only a
/// few HMACs. The same layout as PostgreSQL's `pg_authid.rolpassword`
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`).
public struct SCRAMVerifier: Sendable, Hashable, CustomStringConvertible {
    /// The salt sent to clients.
    public var salt: [UInt8]
    /// The PBKDF2 iteration count sent to clients.
    public var iterations: Int
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    public var storedKey: [UInt8]
    /// `HMAC(SaltedPassword, "Server Key")`.
    public var serverKey: [UInt8]

    /// Creates a verifier from its parts.
    public init(salt: [UInt8], iterations: Int, storedKey: [UInt8], serverKey: [UInt8]) {
        self.salt = salt
        self.iterations = iterations
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Derives the verifier of `password` (used as raw UTF-8, see ``SCRAM``). `iterations` below
    /// 1 are treated as 1.
    public static func derive(password: String, salt: [UInt8], iterations: Int = SCRAM.defaultIterations) -> SCRAMVerifier {
        let iterations = max(iterations, 1)
        let saltedPassword = SCRAM.saltedPassword(password: Array(password.utf8), salt: salt, iterations: iterations)
        let keys = SCRAMKeys(saltedPassword: saltedPassword)
        return SCRAMVerifier(salt: salt, iterations: iterations, storedKey: keys.storedKey, serverKey: keys.serverKey)
    }

    /// Derives the verifier of `password` with a fresh random 16-byte salt.
    public static func derive(password: String, iterations: Int = SCRAM.defaultIterations) -> SCRAMVerifier {
        Self.derive(password: password, salt: SCRAM.randomBytes(count: SCRAM.defaultSaltLength), iterations: iterations)
    }

    /// Parses PostgreSQL's stored form `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// (base64 parts); `nil` when malformed.
    public init?(postgresFormat: String) {
        let text = Array(postgresFormat.utf8)
        let parts = text.split(separator: UInt8(ascii: "$"), omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].elementsEqual(SCRAM.mechanism.utf8) else { return nil }
        let costs = parts[1].split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        let keys = parts[2].split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        guard costs.count == 2, keys.count == 2,
              let iterations = parsePositiveInt32(costs[0]),
              let salt = SCRAMBase64.decode(costs[1]), !salt.isEmpty,
              let storedKey = SCRAMBase64.decode(keys[0]), storedKey.count == 32,
              let serverKey = SCRAMBase64.decode(keys[1]), serverKey.count == 32
        else {
            return nil
        }
        self.init(salt: salt, iterations: iterations, storedKey: storedKey, serverKey: serverKey)
    }

    /// PostgreSQL's stored form, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    public var postgresFormat: String {
        "\(SCRAM.mechanism)$\(self.iterations):\(SCRAMBase64.encodeString(self.salt))"
            + "$\(SCRAMBase64.encodeString(self.storedKey)):\(SCRAMBase64.encodeString(self.serverKey))"
    }

    /// Shows the iteration count only, never key material.
    public var description: String {
        "SCRAMVerifier(iterations: \(self.iterations), keys: <redacted>)"
    }
}

/// The keys derived from a salted password.
struct SCRAMKeys {
    var clientKey: [UInt8]
    var storedKey: [UInt8]
    var serverKey: [UInt8]

    init(saltedPassword: [UInt8]) {
        self.clientKey = SCRAM.hmac(key: saltedPassword, Array("Client Key".utf8))
        self.storedKey = SCRAM.sha256(self.clientKey)
        self.serverKey = SCRAM.hmac(key: saltedPassword, Array("Server Key".utf8))
    }
}

/// Parses ASCII digits into a value in `1...Int32.max`.
func parsePositiveInt32(_ digits: some Collection<UInt8>) -> Int? {
    guard !digits.isEmpty, digits.count <= 10 else { return nil }
    var value = 0
    for digit in digits {
        guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
        value = value * 10 + Int(digit - UInt8(ascii: "0"))
    }
    guard value >= 1, value <= Int(Int32.max) else { return nil }
    return value
}
