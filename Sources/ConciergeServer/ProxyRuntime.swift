import ConciergeAuth
import ConciergeConfig
import ConnectionPool
import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOPosix
import NIOSSL
import PostgresProxy
import PostgresWire
import ProxyCore
import Prometheus
import ProxyCore
import SQLClassifier
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One configured proxy at run time: its listeners, its users, its pool and its client sessions.
final class ProxyRuntime: @unchecked Sendable {
    let name: String
    let logger: Logger
    private(set) var pool: BackendPool!
    let metrics: ProxyMetrics
    /// Each endpoint's role (index 0: the default READ_WRITE endpoint).
    let endpointRoles: [TargetRole]
    /// A stable id like `prx-0123456789abcdef0`, derived from the proxy's name.
    let resourceID: String
    let createdDate: Date
    private let group: any EventLoopGroup
    let eventLoops: [any EventLoop]
    /// Per event loop: its client sessions, swept for timeouts.
    let loopSessions: [ObjectIdentifier: LoopSessions]
    private let scramCache = SCRAMSaltedPasswordCache()
    /// The health checks' own (keys differ per target only by salt).
    let scramCacheForChecks = SCRAMSaltedPasswordCache()

    private let clientCount = Synchronization.Atomic<Int>(0)
    let state: NIOLockedValueBox<MutableState>

    // Settings the admin API or a reload may change, read on hot paths without a lock.
    let idleClientTimeoutSeconds: Synchronization.Atomic<Int>
    let debugLoggingEnabled: Synchronization.Atomic<Bool>
    let maxClientConnectionsValue: Synchronization.Atomic<Int>
    let maxMessageSizeValue: Synchronization.Atomic<Int>
    let requireTLSValue: Synchronization.Atomic<Bool>

    struct MutableState {
        var configuration: ProxyConfiguration
        var users: UserDirectory
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
        var monitors: [HostPort: TargetMonitor] = [:]
        var monitoring = false
        var targetAddresses: [HostPort: SocketAddress] = [:]
        /// The promises of backend opens the target group keeps waiting: for a writer (failover),
        /// and for an open slot (bounded pace).
        var writerWaiters: [OpenWaiterID: EventLoopPromise<Void>] = [:]
        var openSlotWaiters: [OpenWaiterID: EventLoopPromise<Void>] = [:]
        /// Pools of READ_ONLY endpoints, one per reader target (kept once made: backends hold
        /// their pool weakly); `targetGroup.activeReaders` are those transactions may go to now.
        var readerPools: [HostPort: BackendPool] = [:]
        var classifierOptions: ClassifierOptions
        var updatedDate: Date
        var targetGroupUpdatedDate: Date
        var listeners: [any Channel] = []
        var canonicalValues: [CanonicalValueKey: String] = [:]
        var sessions = SessionRegistry<ClientSession>()
        var templates: [PoolKey: LoginTemplate] = [:]
        /// Per user and database: the classifier options with the server's tracked parameters.
        var loginClassifierOptions: [PoolKey: ClassifierOptions] = [:]
        var draining = false
        var drainedPromise: EventLoopPromise<Void>?
        var reportedQueryRequests = 0
    }

    var configuration: ProxyConfiguration { state.withLockedValue { $0.configuration } }
    var users: UserDirectory { state.withLockedValue { $0.users } }
    var classifierOptions: ClassifierOptions { state.withLockedValue { $0.classifierOptions } }
    var maxMessageSize: Int { maxMessageSizeValue.load(ordering: .relaxed) }
    var idleClientTimeout: Int { idleClientTimeoutSeconds.load(ordering: .relaxed) }
    var debugLogging: Bool { debugLoggingEnabled.load(ordering: .relaxed) }
    var requireTLS: Bool { requireTLSValue.load(ordering: .relaxed) }
    /// The TLS context for a client's SSLRequest, nil when the proxy has no certificate.
    var serverTLSContext: NIOSSLContext? { state.withLockedValue { $0.serverTLS }?.current }

    /// True when this connection (already counted) is beyond `max_client_connections`.
    var clientLimitExceeded: Bool {
        clientCount.load(ordering: .relaxed) > maxClientConnectionsValue.load(ordering: .relaxed)
    }

    init(
        configuration: ProxyConfiguration, credentials: [DatabaseCredential], group: any EventLoopGroup,
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), logger: Logger
    ) throws {
        self.name = configuration.name
        self.group = group
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
            targetGroup: configuration.targetGroup.name, pinReasonNames: PinReasons.all.names)
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
            users: UserDirectory(credentials: credentials, auth: configuration.auth),
            credentials: Dictionary(credentials.map { ($0.username, $0) }, uniquingKeysWith: { first, _ in first }),
            targetGroup: TargetGroupStateMachine(
                targets: configuration.targetGroup.targets.map(\.endpoint),
                failoverWindow: .seconds(Int64(configuration.targetGroup.connectionPoolConfig.connectionBorrowTimeout)),
                tracksReaders: configuration.endpoints.contains { $0.targetRole == .readOnly }),
            writerAddress: address,
            classifierOptions: ClassifierOptions(
                excludeVariableSets: configuration.targetGroup.connectionPoolConfig.excludesVariableSets,
                trackedParameters: TrackedParameters.names),
            updatedDate: now, targetGroupUpdatedDate: now))
        state.withLockedValue {
            $0.serverTLS = serverTLS
            $0.backendTLS = backendTLS
        }
        // The cap is unknown until a backend reads max_connections: start with one connection.
        self.pool = BackendPool(limits: Self.limits(for: configuration, maxConnections: nil), eventLoops: eventLoops) {
            [unowned self] id, key, eventLoop, pool in
            self.openBackend(id: id, key: key, on: eventLoop, pool: pool)
        }
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
        id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, pool: BackendPool, reader: HostPort? = nil
    ) -> EventLoopFuture<BackendConnection> {
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
            return eventLoop.makeFailedFuture(BackendError.connection("no database target is registered"))
        }
        guard let credential else {
            metrics.databaseConnectionsSetupFailed.increment()
            return eventLoop.makeFailedFuture(
                BackendError.server(ClientErrors.authenticationFailed(user: key.user)))
        }
        var backendLogger = logger
        backendLogger[metadataKey: "concierge.backend"] = "\(id)"
        let settings = BackendSettings(
            address: address, username: credential.username, password: credential.password,
            database: key.database, initQuery: initQuery,
            readMaxConnections: needsMaxConnections, scramCache: scramCache, logger: backendLogger,
            generation: pool.generation, tls: tls, serverHostname: BackendTLS.serverHostname(writer.host),
            tlsMode: tlsMode.rawValue)
        return BackendConnection.connect(id: id, key: key, on: eventLoop, settings: settings, pool: pool)
            .map { connection in
                self.backendOpened(connection)
                return connection
            }
            .flatMapErrorThrowing { error in
                if let health = PostgresTargetErrors.targetHealth(after: error) {
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
    var onBackendAuthFailure: (@Sendable () -> Void)? {
        get { state.withLockedValue { $0.onBackendAuthFailure } }
        set { state.withLockedValue { $0.onBackendAuthFailure = newValue } }
    }

    var iam: IAMAuthenticator? {
        get { state.withLockedValue { $0.iam } }
        set { state.withLockedValue { $0.iam = newValue } }
    }

    /// Checks a client's IAM token for `user`, connected to endpoint `endpoint`.
    func authenticateIAM(token: String, user: String, endpoint: Int) -> IAMAuthenticator.Outcome {
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
    func updateCredentials(_ credentials: [DatabaseCredential]) {
        let auth = configuration.auth
        let users = UserDirectory(credentials: credentials, auth: auth, reusing: self.users)
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

    func backendOpened(_ connection: BackendConnection) {
        let template = connection.loginParameters
        let newLimits: PoolLimits? = state.withLockedValue { state in
            if state.templates[connection.key] == nil {
                state.templates[connection.key] = LoginTemplate(template)
                var options = state.classifierOptions
                options.trackedParameters = TrackedParameters.names(reportedAtLogin: template)
                state.loginClassifierOptions[connection.key] = options
            }
            if let value = connection.maxConnections, state.targetGroup.writerMaxConnectionsRead(value) {
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

    /// PostgreSQL's spelling of a tracked parameter's value as a client wrote it, once a
    /// backend reported it (lowercased name). Per user and database: a partial value completes
    /// from their defaults (`DateStyle=SQL` after `ALTER ROLE ... SET DateStyle = German`).
    func canonicalValue(of name: String, as value: String, for key: PoolKey) -> String? {
        state.withLockedValue { $0.canonicalValues[CanonicalValueKey(key: key, name: name, value: value)] }
    }

    func learnCanonicalValue(of name: String, as value: String, _ canonical: String, for key: PoolKey) {
        state.withLockedValue { state in
            // Bounded: distinct spellings are few; a client inventing many only costs backends.
            if state.canonicalValues.count >= 10_000 { state.canonicalValues.removeAll() }
            state.canonicalValues[CanonicalValueKey(key: key, name: name, value: value)] = canonical
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

    /// What a login of `key` needs, under one lock: the ParameterStatus values PostgreSQL reports
    /// at login for this user and database (once known), and the classifier options for its
    /// clients (specific once a backend told which parameters it reports).
    func loginState(for key: PoolKey) -> (template: LoginTemplate?, classifierOptions: ClassifierOptions) {
        state.withLockedValue { ($0.templates[key], $0.loginClassifierOptions[key] ?? $0.classifierOptions) }
    }

    // MARK: Listening

    /// Binds every endpoint of the proxy. Throws (having bound nothing) if any address fails.
    ///
    /// On Linux each event loop gets its own listening socket on the same address
    /// (SO_REUSEPORT): the kernel spreads new connections over the loops and each connection is
    /// accepted and served by one thread, with no hand-off to register it elsewhere. In a
    /// connection storm that hand-off cost about 50 µs of CPU per connection.
    func start() async throws {
        let configuration = self.configuration
        var addresses = [configuration.listen]
        for endpoint in configuration.endpoints { addresses.append(endpoint.listen) }
        var bound: [any Channel] = []
        do {
            for (endpointIndex, address) in addresses.enumerated() {
                let loops = Self.acceptingLoops(eventLoops)
                if loops.count > 1 {
                    // SO_REUSEPORT would also join a socket that another process of this user
                    // (a second Concierge by mistake) listens on, silently splitting its clients.
                    // A plain bind fails on any listener there: fail as a single socket would.
                    try Self.probeBind(address)
                }
                for eventLoop in loops {
                    let channel = try await makeBootstrap(on: eventLoop, endpoint: endpointIndex).bind(host: address.host, port: address.port).get()
                    bound.append(channel)
                }
                logger.info("listening", metadata: ["concierge.listen": "\(address)"])
            }
        } catch {
            for channel in bound { try? await channel.close() }
            throw error
        }
        state.withLockedValue { $0.listeners = bound }
        startCertificateChecks()
        startMonitors()
    }

    /// Every few seconds: a renewed certificate or key file is loaded for new TLS clients.
    private func startCertificateChecks() {
        let logger = self.logger
        let task = eventLoops[0].scheduleRepeatedTask(initialDelay: .seconds(2), delay: .seconds(2)) { [weak self] _ in
            guard let self, let source = self.state.withLockedValue({ $0.serverTLS }) else { return }
            source.reloadIfChanged(logger: logger)
        }
        state.withLockedValue { $0.certificateCheck = task }
    }

    /// The loops that accept connections: all of them where SO_REUSEPORT balances connections
    /// (Linux); elsewhere one listener whose connections are spread over every loop.
    private static func acceptingLoops(_ eventLoops: [any EventLoop]) -> [(any EventLoop)?] {
        #if os(Linux)
        return eventLoops.map { $0 }
        #else
        return [nil]
        #endif
    }

    /// Binds a plain socket to `address` and closes it, without listening: a socket that
    /// listened, even for a moment, would accept clients that then went unserved (a client that
    /// connected as the proxy started got no answer at all; the differential fuzzer found it).
    private static func probeBind(_ address: HostPort) throws {
        #if os(Linux)
        let resolved = try SocketAddress.makeAddressResolvingHost(address.host, port: address.port)
        let fd = Glibc.socket(resolved.protocol.rawValue, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        defer { _ = Glibc.close(fd) }
        var one: Int32 = 1
        _ = Glibc.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = resolved.withSockAddr { pointer, size in Glibc.bind(fd, pointer, socklen_t(size)) }
        guard result == 0 else { throw IOError(errnoCode: errno, reason: "bind(\(address))") }
        #endif
    }

    private static let reusePort = NIOBSDSocket.Option(rawValue: SO_REUSEPORT)

    #if os(Linux)
    /// TCP_DEFER_ACCEPT (Linux): the kernel hands over a new connection only once its first bytes
    /// (the SSLRequest or startup packet: a PostgreSQL client speaks first) have arrived, so the
    /// accept and the first read happen in one wake-up instead of two. PgBouncer sets it too
    /// (`tcp_defer_accept`, on by default on Linux). The value is how long, in seconds, the kernel
    /// waits for those bytes before handing the connection over anyway.
    private static let deferAccept = ChannelOptions.Types.SocketOption(
        level: NIOBSDSocket.OptionLevel(rawValue: CInt(IPPROTO_TCP)),
        name: NIOBSDSocket.Option(rawValue: TCP_DEFER_ACCEPT))
    #endif

    private func makeBootstrap(on eventLoop: (any EventLoop)?, endpoint: Int) -> ServerBootstrap {
        let bootstrap: ServerBootstrap
        if let eventLoop {
            bootstrap = ServerBootstrap(group: eventLoop)
                .serverChannelOption(ChannelOptions.socketOption(Self.reusePort), value: 1)
        } else {
            bootstrap = ServerBootstrap(group: group)
        }
        #if os(Linux)
        let deferring = bootstrap.serverChannelOption(Self.deferAccept, value: 45)
        #else
        let deferring = bootstrap
        #endif
        return deferring
            .serverChannelOption(ChannelOptions.backlog, value: 4096)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            // Accepted sockets inherit SO_KEEPALIVE from the listener: no setsockopt per
            // connection. (TCP_NODELAY is NIO's default.)
            .serverChannelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .serverChannelInitializer { [logger] channel in
                channel.pipeline.addHandler(ListenerBackoff.handler(listener: "client", logger: logger))
            }
            .childChannelInitializer { [unowned self] channel in
                guard ListenerBackoff.admitClient(channel, logger: self.logger) else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    // Set synchronously here rather than as child options, which NIO applies
                    // one future at a time for every accepted connection.
                    if let options = channel.syncOptions {
                        try options.setOption(ChannelOptions.maxMessagesPerRead, value: 16)
                        // Idle clients dominate memory: start each with a small receive buffer;
                        // it grows (up to 64 KiB) for clients that send more.
                        try options.setOption(
                            ChannelOptions.recvAllocator,
                            value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65_536))
                    }
                    let session = self.makeSession(on: channel.eventLoop, endpoint: endpoint)
                    try channel.pipeline.syncOperations.addHandler(session)
                }
            }
    }

    func makeSession(on eventLoop: any EventLoop, endpoint: Int = 0) -> ClientSession {
        clientCount.add(1, ordering: .relaxed)
        metrics.clientConnectionsReceived[endpoint].increment()
        return state.withLockedValue { state in
            let loopSessions = self.loopSessions[ObjectIdentifier(eventLoop)] ?? LoopSessions(eventLoop: eventLoop)
            // The cancel key is the client's BackendKeyData (process id and secret key).
            let session = state.sessions.register(random: SecureRandom.uint64) { key in
                ClientSession(
                    runtime: self, loopSessions: loopSessions, endpoint: endpoint, processID: Int32(bitPattern: key.id),
                    secretKey: Int32(bitPattern: key.secret), logger: logger)
            }
            if state.draining { session.beginDrain() }
            return session
        }
    }

    func sessionClosed(_ session: ClientSession) {
        clientCount.subtract(1, ordering: .relaxed)
        metrics.clientConnectionsClosed[session.endpoint].increment()
        let promise = state.withLockedValue { state -> EventLoopPromise<Void>? in
            state.sessions.remove(id: UInt32(bitPattern: session.processID))
            if state.draining, state.sessions.isEmpty {
                defer { state.drainedPromise = nil }
                return state.drainedPromise
            }
            return nil
        }
        promise?.succeed(())
    }

    /// A CancelRequest: forwarded to the backend serving the session with that key, if any.
    /// Unknown or wrong keys cancel nothing (and say nothing, as PostgreSQL does).
    /// Cancels what the session with this key runs. The future completes once the database has
    /// the cancel request (it closed the proxy's cancel connection), or at once when there is
    /// nothing to cancel: only then may the client's own cancel connection close, as PostgreSQL
    /// closes it only after signalling the backend (drivers wait for that close before they
    /// send their next statement, which a late cancel would otherwise hit).
    func cancel(processID: Int32, secretKey: Int32, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let key = CancelKey(id: UInt32(bitPattern: processID), secret: UInt32(bitPattern: secretKey))
        guard let session = state.withLockedValue({ $0.sessions.session(for: key) }) else {
            logger.debug("ignoring a cancel request with an unknown key")
            return eventLoop.makeSucceededVoidFuture()
        }
        return session.cancelCurrentQuery().hop(to: eventLoop)
    }

    var clientConnections: Int { clientCount.load(ordering: .relaxed) }

    // MARK: Shutdown

    /// Stops accepting new clients.
    func stopAccepting() async {
        let listeners = state.withLockedValue { state -> [any Channel] in
            defer { state.listeners = [] }
            return state.listeners
        }
        for channel in listeners { try? await channel.close() }
    }

    /// Closes idle clients now and the others as their transactions end, waiting at most
    /// `timeout`; then closes whatever is left and every backend.
    func drain(timeout: TimeAmount) async {
        let eventLoop = eventLoops[0]
        let promise = eventLoop.makePromise(of: Void.self)
        let sessions = state.withLockedValue { state -> [ClientSession] in
            state.draining = true
            if state.sessions.isEmpty {
                promise.succeed(())
            } else {
                state.drainedPromise = promise
            }
            return state.sessions.all
        }
        logger.info("draining", metadata: ["concierge.clients": "\(sessions.count)"])
        for session in sessions { session.beginDrain() }
        let timeoutTask = eventLoop.scheduleTask(in: timeout) {
            promise.fail(DrainTimeout())
        }
        do {
            try await promise.futureResult.get()
            timeoutTask.cancel()
        } catch {
            let remaining = state.withLockedValue { $0.sessions.all }
            logger.warning("drain timeout reached; closing remaining clients", metadata: ["concierge.clients": "\(remaining.count)"])
            for session in remaining { session.forceClose() }
        }
        let counters = pool.leaseCounters
        logger.info("backend leases", metadata: [
            "concierge.leases": "\(counters.total)", "concierge.leases_across_event_loops": "\(counters.acrossEventLoops)",
        ])
        for sessions in loopSessions.values { sessions.stop() }
        state.withLockedValue { $0.certificateCheck?.cancel() }
        stopMonitors()
        let pools = allPools
        let drained = EventLoopFuture.andAllComplete(pools.map { $0.shutdown(on: eventLoop) }, on: eventLoop)
        let closeTask = eventLoop.scheduleTask(in: .seconds(2)) { for pool in pools { pool.closeAll() } }
        // A backend still logging in (to a database that stopped answering) is not waited for
        // beyond that: the process exits, which closes it.
        let finished = eventLoop.makePromise(of: Void.self)
        let settled = NIOLockedValueBox(false)
        let complete = {
            if settled.withLockedValue({ done in defer { done = true }; return !done }) { finished.succeed(()) }
        }
        drained.whenComplete { _ in complete() }
        let giveUp = eventLoop.scheduleTask(in: .seconds(3)) {
            self.logger.warning("backends still opening at shutdown are abandoned")
            complete()
        }
        try? await finished.futureResult.get()
        closeTask.cancel()
        giveUp.cancel()
    }

    private struct DrainTimeout: Error {}
}

/// A tracked parameter's value as a client wrote it, for a user and database.
struct CanonicalValueKey: Hashable {
    let key: PoolKey
    let name: String
    let value: String
}
