import ConnectionPool
import NIOConcurrencyHelpers

/// One shared `PoolKey` per user, database and variant, for the clients of one proxy.
///
/// Why: a client session used to make its own key at login. Each key is a heap object (its
/// strings and their hash, about 70 bytes with the allocator's overhead) held for the life of
/// the connection, and the pool compares the session's key with the keys it stores on every
/// borrow and release: keys from different logins compared their hashes and then their
/// strings, where one shared key compares by identity. Most clients of a proxy log in as a few
/// users to a few databases.
///
/// Bounded: past `limit` distinct keys a key is returned unshared (correct, only not shared).
/// Keys are never removed: a key is a few dozen bytes, and `limit` bounds them. Sessions ask for
/// their shared key only once the client has authenticated, so that clients who cannot log in
/// (random user or database names) cannot fill the table.
public final class PoolKeyTable: Sendable {
    public static let limit = 4096
    private let keys = NIOLockedValueBox<Set<PoolKey>>([])

    public init() {}

    /// The shared key equal to `PoolKey(user:database:variant:)`.
    public func key(user: String, database: String, variant: String = "") -> PoolKey {
        shared(PoolKey(user: user, database: database, variant: variant))
    }

    /// The shared key equal to `key` (its hash is computed once, when it was made).
    public func shared(_ key: PoolKey) -> PoolKey {
        keys.withLockedValue { keys in
            if let shared = keys.firstIndex(of: key).map({ keys[$0] }) { return shared }
            if keys.count < Self.limit { keys.insert(key) }
            return key
        }
    }

    /// How many distinct keys are shared (for tests).
    public var count: Int { keys.withLockedValue { $0.count } }
}
