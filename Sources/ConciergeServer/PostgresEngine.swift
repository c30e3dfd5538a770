import ConnectionPool
import SQLClassifier
import NIOCore
import PostgresProxy
import PostgresWire
import ProxyCore

/// The PostgreSQL engine: backends are `BackendConnection`s, a target's role is
/// `pg_is_in_recovery()`, errors are classified by SQLSTATE (`PostgresTargetErrors`), and a client
/// connection is served by a `ClientSession`.
///
/// One per proxy: it keeps the SCRAM key caches its logins share (a backend's and a health
/// check's keys differ only by salt, so each kind has its own cache).
final class PostgresEngine: DatabaseEngine {
    typealias Connection = BackendConnection
    typealias ProbeConnection = BackendConnection
    typealias ClientHandler = ClientSession
    typealias Runtime = ProxyRuntime

    /// How health-check connections show in `pg_stat_activity` (they are outside the pool's cap).
    static let healthCheckApplicationName = "concierge_health_check"

    let scramCache = SCRAMSaltedPasswordCache()
    /// The health checks' own.
    let scramCacheForChecks = SCRAMSaltedPasswordCache()

    var pinReasonNames: [String] { PinReasons.all.names }

    func openBackend(
        id: ConnectionID, key: PoolKey, login: BackendLogin, on eventLoop: any EventLoop, pool: BackendPool
    ) -> EventLoopFuture<BackendConnection> {
        BackendConnection.connect(
            id: id, key: key, on: eventLoop, settings: settings(login, scramCache: scramCache), pool: pool)
    }

    func openProbe(login: BackendLogin, on eventLoop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<BackendConnection> {
        var settings = settings(login, scramCache: scramCacheForChecks)
        settings.applicationName = Self.healthCheckApplicationName
        return BackendConnection.connect(
            id: ConnectionID(-1), key: PoolKey(user: login.username, database: login.database),
            on: eventLoop, settings: settings, pool: nil, connectTimeout: timeout)
    }

    /// `SELECT pg_is_in_recovery()`: a standby is a reader. `max_connections` was read at login.
    func probe(_ connection: BackendConnection) -> EventLoopFuture<ProbedTarget> {
        connection.checkRecovery().map { inRecovery in
            ProbedTarget(role: inRecovery ? .reader : .writer, maxConnections: connection.maxConnections)
        }
    }

    func closeProbe(_ connection: BackendConnection) {
        connection.close()
    }

    func targetHealth(after error: any Error) -> TargetHealth? {
        PostgresTargetErrors.targetHealth(after: error)
    }

    func openFailure(_ error: any Error) -> BackendOpenFailure {
        PostgresTargetErrors.openFailure(error)
    }

    /// A `ClientSession`, with the client's BackendKeyData made of its cancel key (process id and
    /// secret key), served by the session list of its event loop.
    func makeClientHandler(runtime: ProxyRuntime, client: AcceptedClient) -> ClientSession {
        let loopSessions = runtime.loopSessions[ObjectIdentifier(client.eventLoop)] ?? LoopSessions(eventLoop: client.eventLoop)
        return ClientSession(
            runtime: runtime, loopSessions: loopSessions, endpoint: client.endpoint,
            processID: Int32(bitPattern: client.cancelKey.id), secretKey: Int32(bitPattern: client.cancelKey.secret),
            logger: client.logger)
    }

    private func settings(_ login: BackendLogin, scramCache: SCRAMSaltedPasswordCache) -> BackendSettings {
        BackendSettings(
            address: login.address, username: login.username, password: login.password, database: login.database,
            initQuery: login.initQuery, readMaxConnections: login.readMaxConnections, scramCache: scramCache,
            logger: login.logger, generation: login.generation, tls: login.tls, serverHostname: login.serverHostname,
            tlsMode: login.tlsMode)
    }
}

/// The PostgreSQL client session as the runtime's registry sees it: its cancel key is the
/// BackendKeyData the client was given.
extension ClientSession: EngineClientSession {
    var cancelKey: CancelKey {
        CancelKey(id: UInt32(bitPattern: processID), secret: UInt32(bitPattern: secretKey))
    }
}
