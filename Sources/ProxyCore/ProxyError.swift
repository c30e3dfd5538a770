/// An error the proxy itself (not the database) shows a client, whatever the engine.
///
/// The case is the stable identity; `message` is the wording, which follows RDS Proxy's where it
/// defines one (the same text for every engine). Each engine renders a `ProxyError` in its own
/// format and codes: PostgreSQL an ErrorResponse with a SQLSTATE (`ClientErrors`), MySQL an ERR
/// packet with an error number (`ERROR 9501 (HY000): Timed-out waiting to acquire database
/// connection`). Messages never contain secrets.
public enum ProxyError: Hashable, Sendable {
    /// `connection_borrow_timeout` passed; the client's connection stays usable.
    case borrowTimeout
    /// Beyond `max_client_connections`.
    case tooManyClients
    /// `require_tls: true` and a plaintext client.
    case tlsRequired
    /// An auth entry with `iam_auth: REQUIRED` and a plaintext client.
    case iamRequiresTLS
    /// Any IAM token failure, whatever the cause (which is logged only).
    case iamAuthenticationFailed(user: String)
    /// A READ_ONLY endpoint with no available reader.
    case noReader
    /// `idle_client_timeout` passed.
    case idleTimeout
    /// The proxy is shutting down (or draining) and closes the client.
    case shuttingDown
    /// The client did not finish logging in in time.
    case authenticationTimeout
    /// The backend of a client's transaction died (e.g. a failover); the client's connection stays.
    case transactionLost
    /// The backend of a pinned session died: the client's connection is closed.
    case backendLost
    /// No backend could be opened for the client (the reason, without secrets).
    case backendUnavailable(reason: String)
    /// The client cancelled a statement the proxy had not sent yet.
    case queryCanceled

    public var message: String {
        switch self {
        case .borrowTimeout: return "Timed-out waiting to acquire database connection"
        case .tooManyClients: return "The maximum number of client connections to the proxy exceeded"
        case .tlsRequired: return "This proxy requires TLS connections."
        case .iamRequiresTLS: return "IAM authentication is allowed only with SSL connections."
        case .iamAuthenticationFailed(let user):
            return "IAM authentication failed for user \(user). Check the IAM token for this user and try again."
        case .noReader: return "No reader is available for this read-only endpoint"
        case .idleTimeout: return "terminating connection due to idle-session timeout"
        case .shuttingDown: return "terminating connection due to administrator command"
        case .authenticationTimeout: return "canceling authentication due to timeout"
        case .transactionLost:
            return "the database connection serving this transaction was lost; the transaction was rolled back"
        case .backendLost:
            return "the database connection serving this session was lost; the open transaction was rolled back"
        case .backendUnavailable(let reason): return "could not connect to the database: \(reason)"
        case .queryCanceled: return "canceling statement due to user request"
        }
    }

    /// A hint for the operator, where there is a useful one.
    public var hint: String? {
        switch self {
        case .noReader: return "Add a healthy standby to the target group, or use the read/write endpoint."
        case .borrowTimeout, .tooManyClients, .tlsRequired, .iamRequiresTLS, .iamAuthenticationFailed, .idleTimeout,
             .shuttingDown, .authenticationTimeout, .transactionLost, .backendLost, .backendUnavailable, .queryCanceled:
            return nil
        }
    }

    /// Whether the proxy closes the client's connection after it (else the connection stays
    /// usable, as after a failed statement).
    public var closesConnection: Bool {
        switch self {
        case .tooManyClients, .tlsRequired, .iamRequiresTLS, .iamAuthenticationFailed, .idleTimeout, .shuttingDown,
             .authenticationTimeout, .backendLost:
            return true
        case .borrowTimeout, .noReader, .transactionLost, .backendUnavailable, .queryCanceled:
            return false
        }
    }
}
