import ConnectionPool
import PostgresWire

/// Every error the proxy itself (not the database) shows a client, with its SQLSTATE and wording.
///
/// Wording follows the reference documents (RDS Proxy's messages) where they define one, and
/// PostgreSQL's own messages otherwise, so drivers and humans recognise them.
enum ClientErrors {
    /// Wrong password or unknown user: PostgreSQL's exact message, with no hint of which it was.
    static func authenticationFailed(user: String) -> PGErrorFields {
        .fatal(code: "28P01", message: "password authentication failed for user \"\(user)\"")
    }

    /// `require_tls: true` and a plaintext client (RDS Proxy's wording).
    static let tlsRequired = PGErrorFields.fatal(code: "28000", message: "This proxy requires TLS connections.")

    /// An auth entry with `iam_auth: REQUIRED` and a plaintext client (RDS Proxy's wording).
    static let iamRequiresTLS = PGErrorFields.fatal(
        code: "28000", message: "IAM authentication is allowed only with SSL connections.")

    /// Any IAM token failure, whatever the cause (RDS Proxy's wording): the cause is logged only.
    static func iamAuthenticationFailed(user: String) -> PGErrorFields {
        .fatal(code: "28P01", message: "IAM authentication failed for user \(user). Check the IAM token for this user and try again.")
    }

    /// A READ_ONLY endpoint with no available reader (its targets show INVALID_REPLICATION_STATE).
    static let noReader = PGErrorFields.error(
        code: "08001", message: "No reader is available for this read-only endpoint",
        detail: nil, hint: "Add a healthy standby to the target group, or use the read/write endpoint.")

    static let borrowTimeout = PGErrorFields.error(
        code: "53300", message: "Timed-out waiting to acquire database connection")

    static let tooManyClients = PGErrorFields.fatal(
        code: "53300", message: "The maximum number of client connections to the proxy exceeded")

    static let idleTimeout = PGErrorFields.fatal(
        code: "57P05", message: "terminating connection due to idle-session timeout")

    static let shuttingDown = PGErrorFields.fatal(
        code: "57P01", message: "terminating connection due to administrator command")

    static let authenticationTimeout = PGErrorFields.fatal(
        code: "08P01", message: "canceling authentication due to timeout")

    static let noUser = PGErrorFields.fatal(
        code: "28000", message: "no PostgreSQL user name specified in startup packet")

    static let replicationUnsupported = PGErrorFields.fatal(
        code: "0A000", message: "replication connections are not supported by the proxy")

    static func unsupportedProtocol(_ version: UInt32) -> PGErrorFields {
        .fatal(
            code: "0A000",
            message: "unsupported frontend protocol \(version >> 16).\(version & 0xFFFF): server supports 3.0 to 3.0")
    }

    static func protocolViolation(_ message: String) -> PGErrorFields {
        .fatal(code: "08P01", message: message)
    }

    static func unsupportedStartupOption(_ option: String) -> PGErrorFields {
        .fatal(code: "08P01", message: "unsupported startup option: \(option)")
    }

    /// The backend of a client's transaction died (e.g. a failover); the client's connection stays.
    /// PostgreSQL's error for a cancelled statement.
    static let queryCanceled = PGErrorFields.error(code: "57014", message: "canceling statement due to user request")
    /// PostgreSQL's answer to a statement in a failed transaction block.
    static let inFailedTransaction = PGErrorFields.error(
        code: "25P02", message: "current transaction is aborted, commands ignored until end of transaction block")
    static let transactionLost = PGErrorFields.error(
        code: "08006",
        message: "the database connection serving this transaction was lost; the transaction was rolled back")

    static let backendLost = PGErrorFields.fatal(
        code: "08006",
        message: "the database connection serving this session was lost; the open transaction was rolled back")

    /// Opening a backend for the client failed: the database's own error when it refused the
    /// login (its SQLSTATE and message), else why the connection could not be made.
    static func connectionFailed(_ failure: ConnectionFailure) -> PGErrorFields {
        if let code = failure.code { return .error(code: code, message: failure.message) }
        return backendUnavailable("\(BackendError.connection(failure.message))")
    }

    static func backendUnavailable(_ reason: String) -> PGErrorFields {
        .error(code: "08006", message: "could not connect to the database: \(reason)")
    }

    static let internalError = PGErrorFields.fatal(code: "XX000", message: "internal proxy error")
}

extension PGErrorFields {
    /// The fields of an ErrorResponse the database sent, for relaying to a client.
    init(diagnostics: PGDiagnosticFields) {
        self.init(
            severity: diagnostics.severity ?? "ERROR", code: diagnostics.code ?? "XX000",
            message: diagnostics.message ?? "unknown error", detail: diagnostics.detail, hint: diagnostics.hint)
    }
}
