import ConnectionPool
import Logging
import NIOCore
import NIOSSL

/// What one database family (PostgreSQL today, MySQL/MariaDB next) provides to the proxy: the
/// runtime opens backends, probes targets and accepts clients only through it, and everything
/// else (the pool, the target group and its health checks, failover, metrics, the admin API, the
/// session registry) stays engine-neutral and is written once.
///
/// Only what the runtime actually calls is here. An engine is an object made once per proxy: it
/// may keep per-proxy state of its own (PostgreSQL keeps its SCRAM key caches).
///
/// None of it is on the per-message path: the runtime calls an engine when a client connects, a
/// backend opens, a health check runs or a backend open fails, never per message.
public protocol DatabaseEngine: AnyObject, Sendable {
    /// A backend connection of this engine, as the pool keeps and leases it.
    associatedtype Connection: PooledConnection
    /// The connection a health check keeps open to its target between checks (a login per check
    /// would cost the database a new session each time). It is never pooled.
    associatedtype ProbeConnection: AnyObject, Sendable
    /// The channel handler serving one accepted client connection (for PostgreSQL, the client
    /// session); the runtime puts it in the accepted channel's pipeline and keeps it in its
    /// session registry, where cancels and drains find it.
    associatedtype ClientHandler: ChannelHandler & EngineClientSession
    /// The runtime a client handler calls back (to borrow backends, read settings, count metrics).
    /// An associated type because the runtime lives above the core, in the NIO module.
    associatedtype Runtime

    /// The names of the reasons a session gets pinned to its backend, in the order of the
    /// engine's pin-reason bits: the metrics create one counter per name once, up front (bounded
    /// labels), and the admin API shows them.
    var pinReasonNames: [String] { get }

    /// Opens, logs in and sets up one backend for the pool of `pool`, for the user and database of
    /// `key`, with `login`. The future completes once the backend can serve a client, on
    /// `eventLoop` (the loop of the client that asked for it, so forwarding never hops threads).
    /// Its failure is what `targetHealth(after:)` and `openFailure(_:)` classify.
    func openBackend(
        id: ConnectionID, key: PoolKey, login: BackendLogin, on eventLoop: any EventLoop, pool: PoolDriver<Connection>
    ) -> EventLoopFuture<Connection>

    /// Opens a health check's connection to a target with `login`, giving up after `timeout` (a
    /// path that drops packets must not hold a check for ever).
    func openProbe(login: BackendLogin, on eventLoop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<ProbeConnection>

    /// Asks the target, over a probe connection, which role it has now (each engine asks its
    /// database in its own way: PostgreSQL's `pg_is_in_recovery()`, MySQL's `read_only`), and its
    /// connection limit if the connection read it at login (the pool's cap derives from it).
    /// A failure is classified by `targetHealth(after:)`.
    func probe(_ connection: ProbeConnection) -> EventLoopFuture<ProbedTarget>

    /// Closes a probe connection (a check failed or timed out, or the monitor stopped).
    func closeProbe(_ connection: ProbeConnection)

    /// What a failed backend open or probe says about its target's health, in the target group's
    /// neutral terms (RDS's reasons: `AUTH_FAILURE`, `CONNECTION_FAILURE`); nil when it says
    /// nothing about the target (the server answered, e.g. that the database does not exist).
    func targetHealth(after error: any Error) -> TargetHealth?

    /// How a backend open failed, for `BackendOpenRetry`: whether the open waits for the target
    /// (a broken connection during a failover, a database refusing logins for now) or gives up.
    func openFailure(_ error: any Error) -> BackendOpenFailure

    /// The error a backend open fails with when it never reached a database (no target is
    /// registered; no writer was elected in time): the engine's own connection error, so that it
    /// is classified (`openFailure`) and shown to the client like any failed connection.
    func connectionError(_ reason: String) -> any Error

    /// The error a backend open fails with for a user the proxy holds no database credentials for
    /// (its secret was removed after the client logged in): what the database answers a wrong
    /// password, in the engine's terms.
    func unknownUserError(user: String) -> any Error

    /// A backend just opened and logged in: the engine keeps what its login taught (PostgreSQL:
    /// the parameter values sessions of its user and database start from). Returns the
    /// database's connection limit when this backend read it (the pool's cap derives from it).
    func backendOpened(_ connection: Connection) -> Int?

    /// `session_pinning_filters` changed (at start, a reload or the admin API):
    /// `EXCLUDE_VARIABLE_SETS` is on or off for the clients that log in from now on.
    func sessionPinningFiltersChanged(excludeVariableSets: Bool)

    /// Makes the handler of a client connection just accepted on one of `runtime`'s listeners.
    /// Called under the runtime's lock while the session registry hands out the client's
    /// `cancelKey` (so it must not call back into the runtime synchronously).
    func makeClientHandler(runtime: Runtime, client: AcceptedClient) -> ClientHandler
}

/// A client handler as the runtime sees it, through its session registry: what draining,
/// cancelling and counting clients ask of any engine's session.
public protocol EngineClientSession: AnyObject, Sendable {
    /// The endpoint it was accepted on (its metrics are per endpoint).
    var endpoint: Int { get }
    /// The key the session registry gave it (it is removed by this key when it closes).
    var cancelKey: CancelKey { get }
    /// The proxy is shutting down: close now if idle, otherwise once the transaction ends.
    func beginDrain()
    /// The drain timed out: close now.
    func forceClose()
    /// Cancels what the session runs now, if anything (the engine's cancel, sent to the backend
    /// serving it). Completes once the database has the request, or at once with nothing to cancel.
    func cancelCurrentQuery() -> EventLoopFuture<Void>
}

/// What the runtime hands an engine to open a connection to one target: where, as whom, and how.
/// Engine-neutral: every engine logs in with a user, a password and a database, over TCP with
/// optional TLS.
public struct BackendLogin: Sendable {
    public var address: SocketAddress
    public var username: String
    public var password: String
    public var database: String
    /// Statements run once after login, before the backend serves anyone (empty: none).
    public var initQuery: String
    /// Whether to read the database's connection limit during setup (the proxy's cap derives
    /// from it).
    public var readMaxConnections: Bool
    public var logger: Logger
    /// The pool's generation when this backend was opened (see `PoolDriver.retire`).
    public var generation: Int
    /// TLS to the database; nil: plaintext.
    public var tls: NIOSSLContext?
    /// The target's host name for SNI and certificate checks (nil for an IP address).
    public var serverHostname: String?
    /// The configured TLS mode, only to name it in errors.
    public var tlsMode: String

    public init(
        address: SocketAddress, username: String, password: String, database: String, initQuery: String,
        readMaxConnections: Bool, logger: Logger, generation: Int, tls: NIOSSLContext?, serverHostname: String?,
        tlsMode: String
    ) {
        self.address = address
        self.username = username
        self.password = password
        self.database = database
        self.initQuery = initQuery
        self.readMaxConnections = readMaxConnections
        self.logger = logger
        self.generation = generation
        self.tls = tls
        self.serverHostname = serverHostname
        self.tlsMode = tlsMode
    }
}

/// What a probe found: the target's role, and its connection limit when the probe connection
/// read it.
public struct ProbedTarget: Sendable, Hashable {
    public var role: ProbedRole
    public var maxConnections: Int?

    public init(role: ProbedRole, maxConnections: Int?) {
        self.role = role
        self.maxConnections = maxConnections
    }
}

/// A client connection just accepted: which endpoint it came in on, the loop that serves it, and
/// the cancel key the session registry gave it.
public struct AcceptedClient: Sendable {
    /// The endpoint's index (0: the proxy's default READ_WRITE endpoint).
    public var endpoint: Int
    public var eventLoop: any EventLoop
    public var cancelKey: CancelKey

    /// (No logger: a session logs through its runtime's, rather than keep a copy per client.)
    public init(endpoint: Int, eventLoop: any EventLoop, cancelKey: CancelKey) {
        self.endpoint = endpoint
        self.eventLoop = eventLoop
        self.cancelKey = cancelKey
    }
}
