import ConciergeRandom
import ConciergeAuth
import ConciergeConfig
import PostgresWire

/// What PostgreSQL's password exchanges check a client against.
public struct PostgresPasswordKeys: Sendable {
    public var scram: SCRAMVerifier
    public var md5StoredHash: String

    /// SCRAM keys are derived once per secret here (PostgreSQL stores a verifier the same way).
    public init(_ credential: DatabaseCredential) {
        scram = SCRAMVerifier.derive(password: credential.password, salt: SecureRandom.bytes(16))
        md5StoredHash = PGMD5.storedHash(user: credential.username, password: credential.password)
    }
}

/// The PostgreSQL engine's users: the shared directory with PostgreSQL's keys.
public typealias PostgresUsers = UserDirectory<PostgresPasswordKeys>

extension UserDirectory where Keys == PostgresPasswordKeys {
    public init(credentials: [DatabaseCredential], auth: [AuthConfiguration], reusing previous: Self? = nil) {
        self.init(credentials: credentials, auth: auth, reusing: previous, deriveKeys: PostgresPasswordKeys.init)
    }

    /// A verifier no password matches, with a salt that is stable for a given user name.
    public func mockVerifier(for user: String) -> SCRAMVerifier {
        let bytes = mockSalt(for: user)
        let random = SecureRandom.bytes(32)
        return SCRAMVerifier(
            salt: Array(bytes[0..<16]), iterations: 4096, storedKey: random, serverKey: Array(random.reversed()))
    }
}

extension UserDirectory.Entry where Keys == PostgresPasswordKeys {
    public var scram: SCRAMVerifier { keys.scram }
    public var md5StoredHash: String { keys.md5StoredHash }
}
