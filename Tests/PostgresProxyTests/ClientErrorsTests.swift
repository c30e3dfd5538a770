import ConnectionPool
import PostgresProxy
import PostgresWire
import ProxyCore
import Testing

/// The engine-neutral `ProxyError`s as PostgreSQL clients see them: SQLSTATE, severity and
/// wording exactly as before the errors moved to the core (drivers and people match on them).
@Suite struct ClientErrorsTests {
    @Test(arguments: [
        (ProxyError.borrowTimeout, "ERROR", "53300", "Timed-out waiting to acquire database connection"),
        (.tooManyClients, "FATAL", "53300", "The maximum number of client connections to the proxy exceeded"),
        (.tlsRequired, "FATAL", "28000", "This proxy requires TLS connections."),
        (.iamRequiresTLS, "FATAL", "28000", "IAM authentication is allowed only with SSL connections."),
        (.iamAuthenticationFailed(user: "app"), "FATAL", "28P01",
         "IAM authentication failed for user app. Check the IAM token for this user and try again."),
        (.noReader, "ERROR", "08001", "No reader is available for this read-only endpoint"),
        (.idleTimeout, "FATAL", "57P05", "terminating connection due to idle-session timeout"),
        (.shuttingDown, "FATAL", "57P01", "terminating connection due to administrator command"),
        (.authenticationTimeout, "FATAL", "08P01", "canceling authentication due to timeout"),
        (.transactionLost, "ERROR", "08006",
         "the database connection serving this transaction was lost; the transaction was rolled back"),
        (.backendLost, "FATAL", "08006",
         "the database connection serving this session was lost; the open transaction was rolled back"),
        (.backendUnavailable(reason: "connection failed: refused"), "ERROR", "08006",
         "could not connect to the database: connection failed: refused"),
        (.queryCanceled, "ERROR", "57014", "canceling statement due to user request"),
    ])
    func renderedAsPostgreSQLErrorResponse(error: ProxyError, severity: String, code: String, message: String) {
        let fields = ClientErrors.rendered(error)
        #expect(fields.severity == severity)
        #expect(fields.code == code)
        #expect(fields.message == message)
        #expect(fields.detail == nil)
    }

    @Test func onlyTheNoReaderErrorCarriesAHint() {
        #expect(ClientErrors.noReader.hint == "Add a healthy standby to the target group, or use the read/write endpoint.")
        #expect(ClientErrors.borrowTimeout.hint == nil)
    }

    @Test func aRefusedLoginKeepsTheDatabasesCodeAndAFailedConnectNamesWhy() {
        let refused = ClientErrors.connectionFailed(ConnectionFailure(code: "28P01", message: "password authentication failed"))
        #expect(refused.code == "28P01" && refused.severity == "ERROR" && refused.message == "password authentication failed")
        let unreachable = ClientErrors.connectionFailed(ConnectionFailure(message: "connection refused"))
        #expect(unreachable.code == "08006")
        #expect(unreachable.message == "could not connect to the database: connection failed: connection refused")
    }
}
