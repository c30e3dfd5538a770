@testable import ConciergeRuntime
@testable import ConciergeServer
@testable import PostgresServer
import PostgresWire
import ProxyCore
import Testing

// The PostgreSQL side of the target group's neutral questions: what a failed backend says about
// its target, and whether a failed open tries again.

@Suite struct PostgresTargetErrorsTests {
    private func server(_ code: String, _ message: String = "msg") -> BackendError {
        .server(PGErrorFields(severity: "FATAL", code: code, message: message))
    }

    @Test func openFailures() {
        #expect(PostgresTargetErrors.openFailure(BackendError.connection("refused")) == .connectionFailed)
        #expect(PostgresTargetErrors.openFailure(server("57P03")) == .refusingLoginsForNow)
        #expect(PostgresTargetErrors.openFailure(server("57P01")) == .refusingLoginsForNow)
        #expect(PostgresTargetErrors.openFailure(server("28P01")) == .final)
        #expect(PostgresTargetErrors.openFailure(server("3D000")) == .final)
        #expect(PostgresTargetErrors.openFailure(BackendError.protocolViolation("x")) == .final)
        struct Other: Error {}
        #expect(PostgresTargetErrors.openFailure(Other()) == .final)
    }

    @Test func targetHealthAfterAFailedBackend() {
        #expect(PostgresTargetErrors.targetHealth(after: server("28P01", "password authentication failed")) == TargetHealth(
            state: .unavailable, reason: "AUTH_FAILURE",
            description: "The database refused the proxy's credentials: password authentication failed"))
        #expect(PostgresTargetErrors.targetHealth(after: server("57P03", "the database system is starting up")) == TargetHealth(
            state: .unavailable, reason: "CONNECTION_FAILURE", description: "the database system is starting up"))
        #expect(PostgresTargetErrors.targetHealth(after: server("53300", "too many clients")) == TargetHealth(
            state: .unavailable, reason: "CONNECTION_FAILURE", description: "too many clients"))
        // The server answered after checking the password: nothing about the target.
        #expect(PostgresTargetErrors.targetHealth(after: server("3D000")) == nil)
        #expect(PostgresTargetErrors.targetHealth(after: BackendError.connection("connection refused")) == TargetHealth(
            state: .unavailable, reason: "CONNECTION_FAILURE", description: "connection refused"))
    }
}
