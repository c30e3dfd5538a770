import ConnectionPool
import PostgresWire
import ProxyCore

/// Every error the proxy itself (not the database) shows a PostgreSQL client, with its SQLSTATE
/// and wording: the engine-neutral `ProxyError`s rendered for PostgreSQL, and the errors only this
/// engine has (its startup packet, its protocol).
///
/// Wording follows the reference documents (RDS Proxy's messages) where they define one, and
/// PostgreSQL's own messages otherwise, so drivers and humans recognise them.
public enum ClientErrors {
    /// A `ProxyError` as an ErrorResponse: PostgreSQL's SQLSTATE for the same condition, FATAL
    /// when the proxy closes the connection after it.
    public static func rendered(_ error: ProxyError) -> PGErrorFields {
        let code: String
        switch error {
        case .borrowTimeout, .tooManyClients: code = "53300"  // too_many_connections
        case .tlsRequired, .iamRequiresTLS: code = "28000"  // invalid_authorization_specification
        case .iamAuthenticationFailed: code = "28P01"  // invalid_password
        case .noReader: code = "08001"  // sqlclient_unable_to_establish_sqlconnection
        case .idleTimeout: code = "57P05"  // idle_session_timeout
        case .shuttingDown: code = "57P01"  // admin_shutdown
        case .authenticationTimeout: code = "08P01"  // protocol_violation, as PostgreSQL's own timeout
        case .transactionLost, .backendLost, .backendUnavailable: code = "08006"  // connection_failure
        case .queryCanceled: code = "57014"  // query_canceled
        }
        return PGErrorFields(
            severity: error.closesConnection ? "FATAL" : "ERROR", code: code, message: error.message, detail: nil,
            hint: error.hint)
    }

    /// Wrong password or unknown user: PostgreSQL's exact message, with no hint of which it was.
    public static func authenticationFailed(user: String) -> PGErrorFields {
        .fatal(code: "28P01", message: "password authentication failed for user \"\(user)\"")
    }

    /// `require_tls: true` and a plaintext client (RDS Proxy's wording).
    public static let tlsRequired = rendered(.tlsRequired)

    /// An auth entry with `iam_auth: REQUIRED` and a plaintext client (RDS Proxy's wording).
    public static let iamRequiresTLS = rendered(.iamRequiresTLS)

    /// Any IAM token failure, whatever the cause (RDS Proxy's wording): the cause is logged only.
    public static func iamAuthenticationFailed(user: String) -> PGErrorFields {
        rendered(.iamAuthenticationFailed(user: user))
    }

    /// A READ_ONLY endpoint with no available reader (its targets show INVALID_REPLICATION_STATE).
    public static let noReader = rendered(.noReader)

    public static let borrowTimeout = rendered(.borrowTimeout)

    public static let tooManyClients = rendered(.tooManyClients)

    public static let idleTimeout = rendered(.idleTimeout)

    public static let shuttingDown = rendered(.shuttingDown)

    public static let authenticationTimeout = rendered(.authenticationTimeout)

    public static let noUser = PGErrorFields.fatal(
        code: "28000", message: "no PostgreSQL user name specified in startup packet")

    public static let replicationUnsupported = PGErrorFields.fatal(
        code: "0A000", message: "replication connections are not supported by the proxy")

    public static func unsupportedProtocol(_ version: UInt32) -> PGErrorFields {
        .fatal(
            code: "0A000",
            message: "unsupported frontend protocol \(version >> 16).\(version & 0xFFFF): server supports 3.0 to 3.0")
    }

    /// A message the proxy could not read (framing or body), as the client is told before the
    /// connection closes.
    public static func protocolError(_ error: PGWireError) -> PGErrorFields {
        switch error {
        case .unsupportedProtocolVersion(let version):
            return unsupportedProtocol(version)
        case .invalidMessageLength(let length):
            return protocolViolation("invalid message length \(length)")
        case .messageTooLarge(let length, let limit):
            return protocolViolation("message of \(length) bytes exceeds the proxy's limit of \(limit) bytes")
        case .malformedMessage(let type, let reason):
            return protocolViolation("invalid message of type \(type): \(reason)")
        case .invalidStartupPacket(let reason):
            return protocolViolation("invalid startup packet layout: \(reason)")
        }
    }

    public static func protocolViolation(_ message: String) -> PGErrorFields {
        .fatal(code: "08P01", message: message)
    }

    public static func unsupportedStartupOption(_ option: String) -> PGErrorFields {
        .fatal(code: "08P01", message: "unsupported startup option: \(option)")
    }

    /// The backend of a client's transaction died (e.g. a failover); the client's connection stays.
    /// PostgreSQL's error for a cancelled statement.
    public static let queryCanceled = rendered(.queryCanceled)
    /// PostgreSQL's answer to a statement in a failed transaction block.
    public static let inFailedTransaction = PGErrorFields.error(
        code: "25P02", message: "current transaction is aborted, commands ignored until end of transaction block")
    public static let transactionLost = rendered(.transactionLost)

    public static let backendLost = rendered(.backendLost)

    /// Opening a backend for the client failed: the database's own error when it refused the
    /// login (its SQLSTATE and message), else why the connection could not be made.
    public static func connectionFailed(_ failure: ConnectionFailure) -> PGErrorFields {
        if let code = failure.code { return .error(code: code, message: failure.message) }
        return backendUnavailable("\(BackendError.connection(failure.message))")
    }

    public static func backendUnavailable(_ reason: String) -> PGErrorFields {
        rendered(.backendUnavailable(reason: reason))
    }

    public static let internalError = PGErrorFields.fatal(code: "XX000", message: "internal proxy error")
}

extension PGErrorFields {
    /// The fields of an ErrorResponse the database sent, for relaying to a client.
    public init(diagnostics: PGDiagnosticFields) {
        self.init(
            severity: diagnostics.severity ?? "ERROR", code: diagnostics.code ?? "XX000",
            message: diagnostics.message ?? "unknown error", detail: diagnostics.detail, hint: diagnostics.hint)
    }
}
