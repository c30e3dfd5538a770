import ConciergeConfig
import ConnectionPool
import NIOCore
import NIOEmbedded
import PostgresProxy
import PostgresWire
import ProxyCore
import SQLClassifier
import Testing

@testable import ConciergeRuntime
@testable import ConciergeServer
@testable import PostgresServer

// The PostgreSQL engine as the runtime sees it through `DatabaseEngine`: its error classification
// (SQLSTATE classes), its pin reasons, and the client handler it makes for an accepted connection.

@Suite struct PostgresEngineTests {
    private let engine = PostgresEngine()

    private func server(_ code: String, _ message: String = "msg") -> BackendError {
        .server(PGErrorFields(severity: "FATAL", code: code, message: message))
    }

    @Test func classifiesTargetHealthBySQLSTATE() {
        #expect(engine.targetHealth(after: server("28P01", "password authentication failed")) == TargetHealth(
            state: .unavailable, reason: "AUTH_FAILURE",
            description: "The database refused the proxy's credentials: password authentication failed"))
        #expect(engine.targetHealth(after: server("57P01", "terminating connection")) == TargetHealth(
            state: .unavailable, reason: "CONNECTION_FAILURE", description: "terminating connection"))
        #expect(engine.targetHealth(after: server("3D000")) == nil)
        #expect(engine.targetHealth(after: BackendError.connection("refused")) == TargetHealth(
            state: .unavailable, reason: "CONNECTION_FAILURE", description: "refused"))
        // An error of no engine (a socket error before any PostgreSQL message): the connection failed.
        struct Other: Error, CustomStringConvertible { var description: String { "reset" } }
        #expect(engine.targetHealth(after: Other()) == TargetHealth(
            state: .unavailable, reason: "CONNECTION_FAILURE", description: "reset"))
    }

    @Test func classifiesOpenFailuresForRetry() {
        #expect(engine.openFailure(BackendError.connection("refused")) == .connectionFailed)
        #expect(engine.openFailure(server("57P03")) == .refusingLoginsForNow)
        #expect(engine.openFailure(server("28P01")) == .final)
        #expect(engine.openFailure(BackendError.protocolViolation("x")) == .final)
    }

    @Test func rendersTheRuntimesErrorsAsPostgreSQLWould() {
        // A backend open that never reached a database fails as a broken connection does: retried
        // during a failover, shown to the client as a connection failure.
        let noWriter = engine.connectionError("no target is the writer")
        #expect(noWriter as? BackendError == .connection("no target is the writer"))
        #expect(engine.openFailure(noWriter) == .connectionFailed)
        // A user without credentials gets PostgreSQL's wrong-password error (28P01).
        guard case .server(let fields)? = engine.unknownUserError(user: "ghost") as? BackendError else {
            Issue.record("not a server error"); return
        }
        #expect(fields.code == "28P01")
        #expect(fields.message == "password authentication failed for user \"ghost\"")
    }

    @Test func sessionPinningFiltersReachEveryClassifierOption() {
        let engine = PostgresEngine()
        #expect(!engine.classifierOptions.excludeVariableSets)
        engine.sessionPinningFiltersChanged(excludeVariableSets: true)
        #expect(engine.classifierOptions.excludeVariableSets)
        #expect(engine.loginState(for: PoolKey(user: "app", database: "app")).classifierOptions.excludeVariableSets)
        #expect(engine.loginState(for: PoolKey(user: "app", database: "app")).template == nil)
    }

    @Test func namesItsPinReasonsForMetrics() {
        #expect(engine.pinReasonNames == PinReasons.all.names)
        #expect(!engine.pinReasonNames.isEmpty)
    }

    @Test func theClientHandlerCarriesTheCancelKeyAsBackendKeyData() throws {
        let proxy = ProxyConfiguration(
            name: "unit", listen: HostPort(host: "127.0.0.1", port: 1),
            auth: [AuthConfiguration(secretARN: "env:X", secret: .env(name: "X"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "127.0.0.1", port: 2))]))
        let loop = EmbeddedEventLoop()
        let runtime = try PostgresRuntime(
            configuration: proxy, credentials: [DatabaseCredential(username: "app", password: "secret")],
            group: loop, logger: .init(label: "test"))
        let key = CancelKey(id: 0x7fff_fffe, secret: 0xdead_beef)
        let session = runtime.engine.makeClientHandler(
            runtime: runtime, client: AcceptedClient(endpoint: 0, eventLoop: loop, cancelKey: key))
        #expect(session.processID == 0x7fff_fffe)
        #expect(session.secretKey == Int32(bitPattern: 0xdead_beef))
        #expect(session.endpoint == 0)
    }

    @Test func healthChecksNameThemselves() {
        #expect(PostgresEngine.healthCheckApplicationName == "concierge_health_check")
    }
}
