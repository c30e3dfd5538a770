import ConciergeAuth
import ConciergeConfig
import ConciergeRuntime
import ConnectionPool
import Logging
import MySQLProxy
import MySQLWire
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import ProxyCore
import SQLClassifier

/// The runtime of a MySQL proxy.
typealias MySQLRuntime = ProxyRuntime<MySQLEngine>

/// What the server (the composition root) needs of this module: a MySQL proxy to run.
public enum MySQLEngineFactory {
    public static func makeProxy(
        configuration: ProxyConfiguration, credentials: [DatabaseCredential], group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry, logger: Logger
    ) throws -> any ServedProxy {
        try MySQLRuntime(configuration: configuration, credentials: credentials, group: group, registry: registry, logger: logger)
    }
}

/// What a MySQL client's password is checked against: the proxy holds the clear password (from
/// its secret), and keeps it to verify both plugins' scrambles and the clear text of
/// caching_sha2's full authentication.
struct MySQLPasswordKeys: Sendable {
    let password: String
}

/// The MySQL/MariaDB engine: backends are `MySQLBackendConnection`s, a target's role is
/// `@@global.read_only` (and `@@innodb_read_only`), errors are classified by MySQL error code,
/// and a client connection is served by a `MySQLClientSession`.
final class MySQLEngine: ServedEngine {
    typealias Connection = MySQLBackendConnection
    typealias ProbeConnection = MySQLBackendConnection
    typealias ClientHandler = MySQLClientSession
    typealias Runtime = MySQLRuntime
    typealias UserKeys = MySQLPasswordKeys

    /// The server sends its handshake first: listeners must not defer accepts.
    static let clientSpeaksFirst = false

    static func userKeys(for credential: DatabaseCredential) -> MySQLPasswordKeys {
        MySQLPasswordKeys(password: credential.password)
    }

    init() {}

    var pinReasonNames: [String] { MySQLPinReasons.all.names }

    /// The server version clients are shown: the database's own once a backend or a health
    /// check saw it (clients adapt to it, e.g. MariaDB's connectors to "-MariaDB").
    private let learned = NIOLockedValueBox(Learned())

    struct Learned {
        var serverVersion = "8.0.0-Concierge"
        var excludeVariableSets = false
    }

    var serverVersion: String { learned.withLockedValue { $0.serverVersion } }

    var classifierOptions: MySQLClassifierOptions {
        var options = MySQLClassifierOptions()
        options.excludeVariableSets = learned.withLockedValue { $0.excludeVariableSets }
        return options
    }

    /// Login schemas found on the database, per user ("user NUL schema"): a login naming one of
    /// them is answered at once; any other is checked with a lease first
    /// (`MySQLSessionMachine.verifyLoginSchema`). Bounded: past 10,000 entries it starts again.
    /// A schema dropped later fails its client's first command instead (the lease's COM_INIT_DB).
    private let verifiedSchemas = NIOLockedValueBox(Set<String>())

    func schemaVerified(user: String, schema: String) -> Bool {
        verifiedSchemas.withLockedValue { $0.contains(user + "\u{0}" + schema) }
    }

    func noteSchemaVerified(user: String, schema: String) {
        verifiedSchemas.withLockedValue { known in
            if known.count >= 10_000 { known.removeAll() }
            known.insert(user + "\u{0}" + schema)
        }
    }

    /// The proxy's RSA key pair, for caching_sha2 clients that ask for a public key without TLS.
    /// Made once, on first use (2048-bit generation takes tens of milliseconds).
    private let rsa = NIOLockedValueBox<MySQLRSAKeyPair?>(nil)

    var rsaKeyPair: MySQLRSAKeyPair? {
        rsa.withLockedValue { pair in
            if pair == nil { pair = try? MySQLRSAKeyPair.generate() }
            return pair
        }
    }

    func openBackend(
        id: ConnectionID, key: PoolKey, login: BackendLogin, on eventLoop: any EventLoop, pool: MySQLBackendPool
    ) -> EventLoopFuture<MySQLBackendConnection> {
        let profile = MySQLClientProfile(variant: key.variant) ?? Self.defaultProfile
        var login = login
        // The shared pool of clients that log in with a schema: its backends log in with none.
        if login.database == Self.anySchema { login.database = "" }
        return MySQLBackendConnection.connect(
            id: id, key: key, on: eventLoop, settings: MySQLBackendSettings(login: login, profile: profile), pool: pool)
    }

    /// The pool key's database for clients that logged in with a schema (all of them share
    /// backends; the schema is restored per lease). Not a valid schema name on purpose.
    static let anySchema = "*"

    /// Health checks and the backends of no particular client: utf8mb4, no format options.
    static let defaultProfile = MySQLClientProfile(negotiated: [], characterSet: 45)

    func openProbe(login: BackendLogin, on eventLoop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<MySQLBackendConnection> {
        var login = login
        login.initQuery = ""
        return MySQLBackendConnection.connect(
            id: ConnectionID(-1), key: PoolKey(user: login.username, database: login.database), on: eventLoop,
            settings: MySQLBackendSettings(login: login, profile: Self.defaultProfile), pool: nil, connectTimeout: timeout)
    }

    /// The writer is the target with `read_only` and `innodb_read_only` off; `max_connections`
    /// was read at setup.
    func probe(_ connection: MySQLBackendConnection) -> EventLoopFuture<ProbedTarget> {
        learnVersion(connection.serverVersion)
        return connection.check("SELECT @@global.read_only, @@global.innodb_read_only, @@max_connections").flatMapThrowing { rows in
            guard let row = rows.first, row.count == 3 else {
                throw MySQLBackendError.protocolViolation("unexpected answer to the health check")
            }
            let readOnly = row[0] != "0" || row[1] != "0"
            return ProbedTarget(role: readOnly ? .reader : .writer, maxConnections: row[2].flatMap { Int($0) })
        }
    }

    func closeProbe(_ connection: MySQLBackendConnection) {
        connection.close()
    }

    func targetHealth(after error: any Error) -> TargetHealth? {
        guard let error = error as? MySQLBackendError else {
            return TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: "\(error)")
        }
        switch error {
        case .server(let packet) where packet.code == 1045 || packet.code == 1698 || packet.code == 1251:
            return TargetHealth(
                state: .unavailable, reason: "AUTH_FAILURE", description: "The database refused the proxy's credentials: \(packet.message)")
        case .server(let packet) where Self.refusingLogins.contains(packet.code):
            return TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: packet.message)
        case .server:
            return nil
        case .connection(let message), .protocolViolation(let message):
            return TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: message)
        }
    }

    /// Server errors that mean "not now": too many connections (1040), host blocked (1129),
    /// user over its connection limit (1203), shutting down (1053), starting up (1927 in
    /// MariaDB: connection killed; 2013 lost).
    static let refusingLogins: Set<UInt16> = [1040, 1053, 1129, 1203, 1927]

    func openFailure(_ error: any Error) -> BackendOpenFailure {
        switch error as? MySQLBackendError {
        case .connection?: return .connectionFailed
        case .server(let packet)? where Self.refusingLogins.contains(packet.code): return .refusingLoginsForNow
        case .server?, .protocolViolation?, nil: return .final
        }
    }

    func connectionError(_ reason: String) -> any Error {
        MySQLBackendError.connection(reason)
    }

    func unknownUserError(user: String) -> any Error {
        MySQLBackendError.server(MySQLClientErrors.accessDenied(user: user))
    }

    func backendOpened(_ connection: MySQLBackendConnection) -> Int? {
        learnVersion(connection.serverVersion)
        return connection.maxConnections
    }

    private func learnVersion(_ version: String) {
        guard !version.isEmpty else { return }
        learned.withLockedValue { $0.serverVersion = version }
    }

    func sessionPinningFiltersChanged(excludeVariableSets: Bool) {
        learned.withLockedValue { $0.excludeVariableSets = excludeVariableSets }
    }

    func makeClientHandler(runtime: MySQLRuntime, client: AcceptedClient) -> MySQLClientSession {
        let loopSessions = runtime.loopSessions[ObjectIdentifier(client.eventLoop)] ?? LoopSessions(eventLoop: client.eventLoop)
        return MySQLClientSession(
            runtime: runtime, loopSessions: loopSessions, endpoint: client.endpoint, cancelKey: client.cancelKey)
    }
}

extension MySQLClientSession: EngineClientSession, SweptClientSession {}
