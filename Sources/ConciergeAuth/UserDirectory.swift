import ConciergeConfig
@preconcurrency import Crypto

/// The database users one proxy can log clients in as, with the keys each engine's password
/// exchange checks against (`Keys`: PostgreSQL's SCRAM verifier and md5 hash; MySQL's hashes).
///
/// Keys are derived once per secret here (as a database stores a verifier), so a client login
/// costs a few HMACs instead of a key derivation: connection storms depend on it. A reload keeps
/// the keys of unchanged users.
public struct UserDirectory<Keys: Sendable>: Sendable {
    public struct Entry: Sendable {
        public var credential: DatabaseCredential
        public var authType: ClientPasswordAuthType
        public var keys: Keys
        /// `iam_auth: REQUIRED`: clients log in with an IAM token instead of the password.
        public var iamRequired: Bool
    }

    private var entries: [String: Entry]
    /// Seed for the mock exchange of unknown users, so a probe cannot tell unknown users from
    /// wrong passwords (same messages, same salt for the same name, always failing).
    private let mockSeed: SymmetricKey

    /// Usernames in auth-entry order (nil where an entry's secret was not read).
    private let usernamesByAuthIndex: [String?]

    /// `reusing`: a previous directory whose derived keys are kept for unchanged users (a reload
    /// then costs no key derivation for them). `deriveKeys`: the engine's.
    public init(
        credentials: [DatabaseCredential], auth: [AuthConfiguration], reusing previous: UserDirectory? = nil,
        deriveKeys: (DatabaseCredential) -> Keys
    ) {
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
            entries[credential.username] = Entry(
                credential: credential,
                authType: authConfig.clientPasswordAuthType,
                keys: deriveKeys(credential),
                iamRequired: authConfig.iamAuth == .required)
        }
        self.entries = entries
        self.usernamesByAuthIndex = names
        self.mockSeed = previous?.mockSeed ?? SymmetricKey(size: .bits256)
    }

    public func username(forAuthIndex index: Int) -> String? {
        index < usernamesByAuthIndex.count ? usernamesByAuthIndex[index] : nil
    }

    public func entry(for user: String) -> Entry? { entries[user] }

    public var usernames: [String] { entries.keys.sorted() }

    /// 32 bytes that are the same for the same unknown user name for the life of the proxy, and
    /// unpredictable: what an engine's mock exchange takes its salt from.
    public func mockSalt(for user: String) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(user.utf8), using: mockSeed))
    }
}
