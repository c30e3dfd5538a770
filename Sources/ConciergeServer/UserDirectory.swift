import ConciergeConfig
@preconcurrency import Crypto
import PostgresWire

/// The database users one proxy can log clients in as, with their precomputed client-auth keys.
///
/// SCRAM keys are derived once per secret here (PostgreSQL stores a verifier the same way), so a
/// client login costs a few HMACs instead of a 4096-round PBKDF2: connection storms depend on it.
struct UserDirectory: Sendable {
    struct Entry: Sendable {
        var credential: DatabaseCredential
        var authType: ClientPasswordAuthType
        var scram: SCRAMVerifier
        var md5StoredHash: String
        /// `iam_auth: REQUIRED`: clients log in with an IAM token instead of the password.
        var iamRequired: Bool
    }

    private var entries: [String: Entry]
    /// Seed for the mock SCRAM exchange of unknown users, so a probe cannot tell unknown users
    /// from wrong passwords (same messages, same salt for the same name, always failing).
    private let mockSeed: SymmetricKey

    /// Usernames in auth-entry order (nil where an entry's secret was not read).
    private let usernamesByAuthIndex: [String?]

    /// `reusing`: a previous directory whose derived keys are kept for unchanged users (a reload
    /// then costs no key derivation for them).
    init(credentials: [DatabaseCredential], auth: [AuthConfiguration], reusing previous: UserDirectory? = nil) {
        var entries: [String: Entry] = [:]
        var names: [String?] = []
        for (credential, authConfig) in zip(credentials, auth) {
            names.append(credential.username)
            if var old = previous?.entries[credential.username], old.credential == credential,
               old.authType == authConfig.clientPasswordAuthType
            {
                old.iamRequired = authConfig.iamAuth == .required
                entries[credential.username] = old
                continue
            }
            let salt = SecureRandom.bytes(16)
            entries[credential.username] = Entry(
                credential: credential,
                authType: authConfig.clientPasswordAuthType,
                scram: SCRAMVerifier.derive(password: credential.password, salt: salt),
                md5StoredHash: PGMD5.storedHash(user: credential.username, password: credential.password),
                iamRequired: authConfig.iamAuth == .required)
        }
        self.entries = entries
        self.usernamesByAuthIndex = names
        self.mockSeed = previous?.mockSeed ?? SymmetricKey(size: .bits256)
    }

    func username(forAuthIndex index: Int) -> String? {
        index < usernamesByAuthIndex.count ? usernamesByAuthIndex[index] : nil
    }

    func entry(for user: String) -> Entry? { entries[user] }

    var usernames: [String] { entries.keys.sorted() }

    /// A verifier no password matches, with a salt that is stable for a given user name.
    func mockVerifier(for user: String) -> SCRAMVerifier {
        let mac = HMAC<SHA256>.authenticationCode(for: Array(user.utf8), using: mockSeed)
        let bytes = Array(mac)
        let random = SecureRandom.bytes(32)
        return SCRAMVerifier(
            salt: Array(bytes[0..<16]), iterations: 4096, storedKey: random, serverKey: Array(random.reversed()))
    }
}
