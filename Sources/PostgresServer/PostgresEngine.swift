import ConciergeRuntime
import ConciergeConfig
import ConnectionPool
import NIOConcurrencyHelpers
import SQLClassifier
import NIOCore
import PostgresProxy
import PostgresWire
import Prometheus
import ProxyCore
import Logging

/// The runtime of a PostgreSQL proxy.
typealias PostgresRuntime = ProxyRuntime<PostgresEngine>

/// What the server (the composition root) needs of this module: a PostgreSQL proxy to run. The
/// engine and its handlers stay internal to the module.
public enum PostgresEngineFactory {
    public static func makeProxy(
        configuration: ProxyConfiguration, credentials: [DatabaseCredential], group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry, logger: Logger
    ) throws -> any ServedProxy {
        try PostgresRuntime(
            configuration: configuration, credentials: credentials, group: group, registry: registry, logger: logger)
    }
}

/// The PostgreSQL engine: backends are `BackendConnection`s, a target's role is
/// `pg_is_in_recovery()`, errors are classified by SQLSTATE (`PostgresTargetErrors`), and a client
/// connection is served by a `ClientSession`.
///
/// One per proxy: it keeps the SCRAM key caches its logins share (a backend's and a health
/// check's keys differ only by salt, so each kind has its own cache).
final class PostgresEngine: ServedEngine {
    typealias Connection = BackendConnection
    typealias ProbeConnection = BackendConnection
    typealias ClientHandler = ClientSession
    typealias Runtime = PostgresRuntime
    typealias UserKeys = PostgresPasswordKeys

    /// A PostgreSQL client sends its SSLRequest or startup packet first.
    static let clientSpeaksFirst = true

    static func userKeys(for credential: DatabaseCredential) -> PostgresPasswordKeys {
        PostgresPasswordKeys(credential)
    }

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
    func makeClientHandler(runtime: PostgresRuntime, client: AcceptedClient) -> ClientSession {
        let loopSessions = runtime.loopSessions[ObjectIdentifier(client.eventLoop)] ?? LoopSessions(eventLoop: client.eventLoop)
        return ClientSession(
            runtime: runtime, loopSessions: loopSessions, endpoint: client.endpoint,
            processID: Int32(bitPattern: client.cancelKey.id), secretKey: Int32(bitPattern: client.cancelKey.secret))
    }

    /// PostgreSQL's own connection error (what a broken connection fails with).
    func connectionError(_ reason: String) -> any Error {
        BackendError.connection(reason)
    }

    /// PostgreSQL's answer to a wrong password (28P01), the same for a user the proxy does not
    /// know.
    func unknownUserError(user: String) -> any Error {
        BackendError.server(ClientErrors.authenticationFailed(user: user))
    }

    // MARK: What logins taught
    //
    // Per proxy, shared by its sessions: what PostgreSQL reported at login for each user and
    // database, and the classifier options that follow from it. The SQL dialect is the engine's
    // (the runtime only says when `session_pinning_filters` change).

    struct LoginKnowledge {
        /// The classifier options before any backend reported its parameters.
        var classifierOptions = ClassifierOptions(trackedParameters: TrackedParameters.names)
        /// Per user and database: the ParameterStatus values PostgreSQL reports at login.
        var templates: [PoolKey: LoginTemplate] = [:]
        /// Per user and database: the classifier options with the server's tracked parameters.
        var loginClassifierOptions: [PoolKey: ClassifierOptions] = [:]
        /// PostgreSQL's spellings of tracked parameters' values as clients wrote them.
        var canonicalValues: [CanonicalValueKey: String] = [:]
    }

    let knowledge = NIOLockedValueBox(LoginKnowledge())

    /// Records the first login template of the backend's user and database; returns the
    /// `max_connections` it read, if it did.
    func backendOpened(_ connection: BackendConnection) -> Int? {
        let template = connection.loginParameters
        knowledge.withLockedValue { known in
            guard known.templates[connection.key] == nil else { return }
            known.templates[connection.key] = LoginTemplate(template)
            var options = known.classifierOptions
            options.trackedParameters = TrackedParameters.names(reportedAtLogin: template)
            known.loginClassifierOptions[connection.key] = options
        }
        return connection.maxConnections
    }

    func sessionPinningFiltersChanged(excludeVariableSets: Bool) {
        knowledge.withLockedValue { known in
            known.classifierOptions.excludeVariableSets = excludeVariableSets
            for key in Array(known.loginClassifierOptions.keys) {
                known.loginClassifierOptions[key]?.excludeVariableSets = excludeVariableSets
            }
        }
    }

    /// The classifier options for a client before its login is known.
    var classifierOptions: ClassifierOptions { knowledge.withLockedValue { $0.classifierOptions } }

    /// What a login of `key` needs, under one lock: the ParameterStatus values PostgreSQL reports
    /// at login for this user and database (once known), and the classifier options for its
    /// clients (specific once a backend told which parameters it reports).
    func loginState(for key: PoolKey) -> (template: LoginTemplate?, classifierOptions: ClassifierOptions) {
        knowledge.withLockedValue { ($0.templates[key], $0.loginClassifierOptions[key] ?? $0.classifierOptions) }
    }

    /// PostgreSQL's spelling of a tracked parameter's value as a client wrote it, once a
    /// backend reported it (lowercased name). Per user and database: a partial value completes
    /// from their defaults (`DateStyle=SQL` after `ALTER ROLE ... SET DateStyle = German`).
    func canonicalValue(of name: String, as value: String, for key: PoolKey) -> String? {
        knowledge.withLockedValue { $0.canonicalValues[CanonicalValueKey(key: key, name: name, value: value)] }
    }

    func learnCanonicalValue(of name: String, as value: String, _ canonical: String, for key: PoolKey) {
        knowledge.withLockedValue { known in
            // Bounded: distinct spellings are few; a client inventing many only costs backends.
            if known.canonicalValues.count >= 10_000 { known.canonicalValues.removeAll() }
            known.canonicalValues[CanonicalValueKey(key: key, name: name, value: value)] = canonical
        }
    }

    /// One shared instance per distinct set of startup parameters. A backend remembers the
    /// parameters it was last set up for, and every lease compares them with the new client's:
    /// most clients send the same startup packet, and two dictionaries sharing storage compare
    /// equal at once instead of key by key. Bounded: past the limit a set is simply not shared.
    func interned(_ parameters: [String: String]) -> [String: String] {
        internedParameters.withLockedValue { table in
            if let shared = table[parameters] { return shared }
            if table.count < Self.maxInternedParameterSets { table[parameters] = parameters }
            return parameters
        }
    }

    static let maxInternedParameterSets = 1024
    private let internedParameters = NIOLockedValueBox<[[String: String]: [String: String]]>([:])

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
extension ClientSession: EngineClientSession, SweptClientSession {
    var cancelKey: CancelKey {
        CancelKey(id: UInt32(bitPattern: processID), secret: UInt32(bitPattern: secretKey))
    }
}

/// A tracked parameter's value as a client wrote it, for a user and database.
struct CanonicalValueKey: Hashable {
    let key: PoolKey
    let name: String
    let value: String
}
