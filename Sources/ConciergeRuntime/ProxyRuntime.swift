import ConciergeAuth
import ConciergeConfig
import ConnectionPool
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Prometheus
import ProxyCore
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One configured proxy at run time: its listeners, its users, its pool and its client sessions.
///
/// It opens backends, probes targets and makes client handlers only through its `engine`
/// (`DatabaseEngine`); target health, writer election, failover waits, paced opens and reader
/// pools are the engine-neutral `TargetGroupStateMachine`'s.
public final class ProxyRuntime<Engine: ServedEngine>: @unchecked Sendable {
    /// Generic over its engine rather than holding an existential: the pool's connections and
    /// the sessions stay concrete types, with no boxing on the per-transaction and per-message
    /// paths. This module does not know the engines, so its own code runs unspecialised; what an
    /// engine's session calls per borrow or per connection (`borrowPool`, `users`,
    /// `sessionClosed`, the settings, `LoopSessions.add`/`remove`) is `@inlinable`, and
    /// specialised in the engine's module. The runtime opens backends, probes targets, classifies
    /// failed opens and makes, drains and cancels client sessions only through `ServedEngine`'s
    /// requirements; it names no engine.
    public typealias Pool = PoolDriver<Engine.Connection>
    public typealias Users = UserDirectory<Engine.UserKeys>

    public let name: String
    public let logger: Logger
    public private(set) var pool: Pool!
    public let metrics: ProxyMetrics
    /// Each endpoint's role (index 0: the default READ_WRITE endpoint).
    @usableFromInline let endpointRoles: [TargetRole]
    /// A stable id like `prx-0123456789abcdef0`, derived from the proxy's name.
    let resourceID: String
    let createdDate: Date
    let group: any EventLoopGroup
    let eventLoops: [any EventLoop]
    /// Per event loop: its client sessions, swept for timeouts.
    public let loopSessions: [ObjectIdentifier: LoopSessions<Engine.ClientHandler>]
    /// The engine: what differs per database family (opening backends, probing targets, error
    /// classification, the client handler). See `Engine` for why it is a concrete type here.
    public let engine: Engine
    /// The pool keys client sessions use: one shared key per user, database and variant.
    public let poolKeys = PoolKeyTable()

    @usableFromInline let clientCount = Synchronization.Atomic<Int>(0)
    @usableFromInline let state: NIOLockedValueBox<MutableState>

    // Settings the admin API or a reload may change, read on hot paths without a lock.
    @usableFromInline let idleClientTimeoutSeconds: Synchronization.Atomic<Int>
    @usableFromInline let debugLoggingEnabled: Synchronization.Atomic<Bool>
    @usableFromInline let maxClientConnectionsValue: Synchronization.Atomic<Int>
    @usableFromInline let maxMessageSizeValue: Synchronization.Atomic<Int>
    @usableFromInline let requireTLSValue: Synchronization.Atomic<Bool>

    @usableFromInline
    struct MutableState {
        var configuration: ProxyConfiguration
        @usableFromInline var users: Users
        var credentials: [String: DatabaseCredential]
        /// The target group: health, roles, the writer, opens waiting for one, paced opens, readers.
        var targetGroup: TargetGroupStateMachine<HostPort>
        /// The writer's resolved address (kept in step with `targetGroup.writer`).
        var writerAddress: SocketAddress?
        /// The certificate clients are served (nil: SSLRequest is answered `N`).
        var serverTLS: ServerTLSContextSource?
        /// TLS to the database (nil: plaintext).
        var backendTLS: NIOSSLContext?
        var certificateCheck: RepeatedTask?
        var onBackendAuthFailure: (@Sendable () -> Void)?
        /// Checks IAM tokens (nil: no `iam` section).
        var iam: IAMAuthenticator?
        /// Health checkers, one per target (while `monitoring`: between start and drain).
        var monitors: [HostPort: TargetMonitor<Engine, HostPort>] = [:]
        var monitoring = false
        var targetAddresses: [HostPort: SocketAddress] = [:]
        /// The promises of backend opens the target group keeps waiting: for a writer (failover),
        /// and for an open slot (bounded pace).
        var writerWaiters: [OpenWaiterID: EventLoopPromise<Void>] = [:]
        var openSlotWaiters: [OpenWaiterID: EventLoopPromise<Void>] = [:]
        /// Pools of READ_ONLY endpoints, one per reader target (kept once made: backends hold
        /// their pool weakly); `targetGroup.activeReaders` are those transactions may go to now.
        var readerPools: [HostPort: Pool] = [:]
        var updatedDate: Date
        var targetGroupUpdatedDate: Date
        var listeners: [any Channel] = []
        @usableFromInline var sessions = SessionRegistry<Engine.ClientHandler>()
        @usableFromInline var draining = false
        @usableFromInline var drainedPromise: EventLoopPromise<Void>?
        var reportedQueryRequests = 0
    }

    public var configuration: ProxyConfiguration { state.withLockedValue { $0.configuration } }
    /// Inlinable, like `sessionClosed`: read by the engine's session at every login, specialised
    /// in the engine's module (this module's generic code would copy it through metadata).
    @inlinable public var users: Users { state.withLockedValue { $0.users } }
    @inlinable public var maxMessageSize: Int { maxMessageSizeValue.load(ordering: .relaxed) }
    @inlinable public var idleClientTimeout: Int { idleClientTimeoutSeconds.load(ordering: .relaxed) }
    @inlinable public var debugLogging: Bool { debugLoggingEnabled.load(ordering: .relaxed) }
    @inlinable public var requireTLS: Bool { requireTLSValue.load(ordering: .relaxed) }
    /// The TLS context for a client's SSLRequest, nil when the proxy has no certificate.
    public var serverTLSContext: NIOSSLContext? { state.withLockedValue { $0.serverTLS }?.current }

    /// True when this connection (already counted) is beyond `max_client_connections`.
    @inlinable public var clientLimitExceeded: Bool {
        clientCount.load(ordering: .relaxed) > maxClientConnectionsValue.load(ordering: .relaxed)
    }

    public init(
        configuration: ProxyConfiguration, credentials: [DatabaseCredential], group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), logger: Logger
    ) throws {
        self.name = configuration.name
        self.group = group
        let engine = Engine()
        self.engine = engine
        self.eventLoops = Array(group.makeIterator())
        self.loopSessions = Dictionary(uniqueKeysWithValues: eventLoops.map {
            (ObjectIdentifier($0), LoopSessions(eventLoop: $0))
        })
        var logger = logger
        logger[metadataKey: "concierge.proxy"] = "\(configuration.name)"
        self.logger = logger
        self.resourceID = configuration.effectiveResourceID
        self.createdDate = Date()
        self.metrics = ProxyMetrics(
            registry: registry, proxy: configuration.name,
            endpointNames: ["default"] + configuration.endpoints.map(\.name),
            targetGroup: configuration.targetGroup.name, pinReasonNames: engine.pinReasonNames)
        self.endpointRoles = [.readWrite] + configuration.endpoints.map(\.targetRole)
        self.idleClientTimeoutSeconds = Atomic(configuration.idleClientTimeout)
        self.debugLoggingEnabled = Atomic(configuration.debugLogging)
        self.maxClientConnectionsValue = Atomic(configuration.maxClientConnections)
        self.maxMessageSizeValue = Atomic(configuration.maxMessageSize)
        self.requireTLSValue = Atomic(configuration.requireTLS)
        let serverTLS = try configuration.tls.map { try ServerTLSContextSource($0) }
        let backendTLS = try BackendTLS.makeContext(configuration.targetGroup.tls)
        // The first target is the writer until health checks elect one.
        let target = configuration.targetGroup.targets[0].endpoint
        let address = try SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
        let now = Date()
        self.state = NIOLockedValueBox(MutableState(
            configuration: configuration,
            users: Self.userDirectory(credentials: credentials, auth: configuration.auth),
            credentials: Dictionary(credentials.map { ($0.username, $0) }, uniquingKeysWith: { first, _ in first }),
            targetGroup: TargetGroupStateMachine(
                targets: configuration.targetGroup.targets.map(\.endpoint),
                failoverWindow: .seconds(Int64(configuration.targetGroup.connectionPoolConfig.connectionBorrowTimeout)),
                tracksReaders: configuration.endpoints.contains { $0.targetRole == .readOnly }),
            writerAddress: address,
            updatedDate: now, targetGroupUpdatedDate: now))
        state.withLockedValue {
            $0.serverTLS = serverTLS
            $0.backendTLS = backendTLS
        }
        engine.sessionPinningFiltersChanged(
            excludeVariableSets: configuration.targetGroup.connectionPoolConfig.excludesVariableSets)
        // The cap is unknown until a backend reads max_connections: start with one connection.
        self.pool = Pool(limits: Self.limits(for: configuration, maxConnections: nil), eventLoops: eventLoops) {
            [unowned self] id, key, eventLoop, pool in
            self.openBackend(id: id, key: key, on: eventLoop, pool: pool)
        }
    }

    /// The users' directory with the engine's password keys (derived once per secret; kept for
    /// secrets that did not change when `previous` is given).
    static func userDirectory(
        credentials: [DatabaseCredential], auth: [AuthConfiguration], reusing previous: Users? = nil
    ) -> Users {
        Users(credentials: credentials, auth: auth, reusing: previous, deriveKeys: Engine.userKeys(for:))
    }

    /// The pool limits for a database whose `max_connections` is `maxConnections` (nil: unknown).
    static func limits(for configuration: ProxyConfiguration, maxConnections: Int?) -> PoolLimits {
        let pool = configuration.targetGroup.connectionPoolConfig
        let cap: Int
        let idle: Int
        if let maxConnections {
            cap = max(1, pool.maxConnectionsPercent * maxConnections / 100)
            idle = min(cap, pool.maxIdleConnectionsPercent * maxConnections / 100)
        } else {
            cap = 1
            idle = 1
        }
        return PoolLimits(
            maxConnections: cap, maxIdleConnections: idle,
            borrowTimeout: .seconds(pool.connectionBorrowTimeout),
            idleTimeout: .seconds(pool.backendIdleTimeout))
    }

    // MARK: Backends

    /// One attempt to open a backend to the current writer (see `openBackend`).
    func connectToWriter(
        id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, pool: Pool, reader: HostPort? = nil
    ) -> EventLoopFuture<Engine.Connection> {
        var (credential, needsMaxConnections, writer, address, initQuery, tls, tlsMode) = state.withLockedValue {
            ($0.credentials[key.user], $0.targetGroup.writerMaxConnections == nil, $0.targetGroup.writer, $0.writerAddress,
             $0.configuration.targetGroup.connectionPoolConfig.initQuery, $0.backendTLS,
             $0.configuration.targetGroup.tls.mode)
        }
        if let reader {
            // A READ_ONLY endpoint's backend: to that reader (the cap was read by its health check).
            writer = reader
            address = state.withLockedValue { $0.targetAddresses[reader] }
            needsMaxConnections = false
        }
        guard let writer, let address else {
            metrics.databaseConnectionsSetupFailed.increment()
            return eventLoop.makeFailedFuture(engine.connectionError("no database target is registered"))
        }
        guard let credential else {
            metrics.databaseConnectionsSetupFailed.increment()
            return eventLoop.makeFailedFuture(engine.unknownUserError(user: key.user))
        }
        var backendLogger = logger
        backendLogger[metadataKey: "concierge.backend"] = "\(id)"
        let login = BackendLogin(
            address: address, username: credential.username, password: credential.password,
            database: key.database, initQuery: initQuery, readMaxConnections: needsMaxConnections,
            logger: backendLogger, generation: pool.generation, tls: tls,
            serverHostname: BackendTLS.serverHostname(writer.host), tlsMode: tlsMode.rawValue)
        return engine.openBackend(id: id, key: key, login: login, on: eventLoop, pool: pool)
            .map { connection in
                self.backendOpened(connection)
                return connection
            }
            .flatMapErrorThrowing { error in
                if let health = self.engine.targetHealth(after: error) {
                    if health.reason == "AUTH_FAILURE" {
                        self.noteTargetHealth(writer, health)
                        // Name the secret, never its value; a rotated secret may be the cause.
                        self.logger.error("the database refused the credentials of a secret", metadata: [
                            "concierge.secret": "\(self.secretName(forUser: key.user))", "concierge.user": "\(key.user)",
                            "concierge.target": "\(writer)",
                        ])
                        self.onBackendAuthFailure?()
                    } else {
                        // The writer may be gone (failover): new opens wait for a health check.
                        self.writerSuspect(writer)
                    }
                }
                throw error
            }
    }

    /// Called when the database refuses a secret's credentials (the server re-reads secrets).
    public var onBackendAuthFailure: (@Sendable () -> Void)? {
        get { state.withLockedValue { $0.onBackendAuthFailure } }
        set { state.withLockedValue { $0.onBackendAuthFailure = newValue } }
    }

    public var iam: IAMAuthenticator? {
        get { state.withLockedValue { $0.iam } }
        set { state.withLockedValue { $0.iam = newValue } }
    }

    /// Checks a client's IAM token for `user`, connected to endpoint `endpoint`.
    public func authenticateIAM(token: String, user: String, endpoint: Int) -> IAMAuthenticator.Outcome {
        let (iam, configuration) = state.withLockedValue { ($0.iam, $0.configuration) }
        guard let iam else { return .refused("no iam section is configured") }
        var hosts = Set(configuration.hostnames)
        let listens = [configuration.listen] + configuration.endpoints.map(\.listen)
        for listen in listens where !listen.isWildcard { hosts.insert(listen.host.lowercased()) }
        let port = endpoint < listens.count ? listens[endpoint].port : configuration.listen.port
        return iam.authenticate(token: token, user: user, hosts: hosts, port: port, resourceID: resourceID)
    }

    /// The `secret_arn` of the auth entry whose secret holds `user`.
    func secretName(forUser user: String) -> String {
        state.withLockedValue { state in
            for (index, auth) in state.configuration.auth.enumerated() where state.users.username(forAuthIndex: index) == user {
                return auth.secretARN.isEmpty ? auth.secret.description : auth.secretARN
            }
            return "(no secret for this user)"
        }
    }

    /// Rotated secrets: the credentials of every auth entry, in order. New backends log in with
    /// them and new clients are checked against them; nobody is disconnected.
    public func updateCredentials(_ credentials: [DatabaseCredential]) {
        let auth = configuration.auth
        let users = Self.userDirectory(credentials: credentials, auth: auth, reusing: self.users)
        let changed = state.withLockedValue { state -> [String] in
            var changed: [String] = []
            for credential in credentials where state.credentials[credential.username] != credential {
                changed.append(credential.username)
            }
            state.users = users
            state.credentials = Dictionary(credentials.map { ($0.username, $0) }, uniquingKeysWith: { first, _ in first })
            if !changed.isEmpty { state.updatedDate = Date() }
            return changed
        }
        for user in changed {
            logger.info("secret rotated: new backends use the new credentials", metadata: [
                "concierge.secret": "\(secretName(forUser: user))", "concierge.user": "\(user)",
            ])
        }
    }

    func noteTargetHealth(_ target: HostPort, _ health: TargetHealth) {
        state.withLockedValue { $0.targetGroup.healthObserved(target, health) }
    }

    func backendOpened(_ connection: Engine.Connection) {
        let maxConnections = engine.backendOpened(connection)
        let newLimits: PoolLimits? = state.withLockedValue { state in
            if let value = maxConnections, state.targetGroup.writerMaxConnectionsRead(value) {
                return Self.limits(for: state.configuration, maxConnections: value)
            }
            return nil
        }
        logger.debug("database connection opened", metadata: ["concierge.backend": "\(connection.id)"])
        if let newLimits {
            logger.info(
                "pool sized from the database's max_connections",
                metadata: [
                    "concierge.max_connections": "\(newLimits.maxConnections)",
                    "concierge.max_idle_connections": "\(newLimits.maxIdleConnections)",
                ])
            pool.updateLimits(newLimits)
        }
    }
}
