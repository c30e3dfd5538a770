import ConciergeConfig
import NIOCore
import ConciergeAdmin
import ConciergeAuth
import ProxyCore

/// An engine the runtime can serve: `DatabaseEngine` (ProxyCore's, which names no configuration
/// or NIO runtime type) with what `ProxyRuntime` needs on top, written once for every engine
/// family: how to make the engine, the keys its password exchanges check a client against, and
/// the sweep its client sessions take part in.
public protocol ServedEngine: DatabaseEngine where Runtime == ProxyRuntime<Self>, ClientHandler: SweptClientSession {
    /// What this engine's client authentication checks a password against (PostgreSQL: a SCRAM
    /// verifier and an md5 hash), derived once per secret.
    associatedtype UserKeys: Sendable

    /// One engine per proxy, made by its runtime.
    init()

    /// Whether a client speaks first on a new connection (PostgreSQL: its SSLRequest or startup
    /// packet; MySQL: no, the server sends its handshake). Only then do listeners defer the
    /// accept until the first bytes arrive (TCP_DEFER_ACCEPT): for a server-speaks-first protocol
    /// the kernel would hold every connection until its timeout.
    static var clientSpeaksFirst: Bool { get }

    /// The keys of one secret's credentials.
    static func userKeys(for credential: DatabaseCredential) -> UserKeys
}

/// A client session as its event loop's `LoopSessions` sees it: a slot in the loop's list, and
/// the once-a-second sweep (timeouts, gauges).
public protocol SweptClientSession: AnyObject, Sendable {
    /// Where `LoopSessions` keeps it (-1: not kept).
    var loopSlot: Int { get set }
    /// The sweep: close the session if its authentication or idle timeout passed.
    func checkTimeouts(now: NIODeadline)
    /// Adds this session's share of the gauges (clients, pins, transactions).
    func addMetrics(to sample: inout LoopMetricsSample)
}

/// One proxy as the server runs it, whatever its engine (`ProxyRuntime<Engine>`): started,
/// reloaded, given rotated secrets, drained; and managed by the admin API.
public protocol ServedProxy: AdminManagedProxy {
    /// Binds its listeners and starts its health checks.
    func start() async throws
    /// Closes its listeners (clients already connected stay).
    func stopAccepting() async
    /// Waits for its clients to finish their transactions, then closes them; at `timeout`, closes
    /// the rest.
    func drain(timeout: TimeAmount) async
    /// Rotated secrets (see `ProxyRuntime.updateCredentials`).
    func updateCredentials(_ credentials: [DatabaseCredential])
    /// A reloaded configuration of this proxy.
    func reload(_ new: ProxyConfiguration, credentials: [DatabaseCredential]) throws(AdminError)
    var iam: IAMAuthenticator? { get set }
    var onBackendAuthFailure: (@Sendable () -> Void)? { get set }
}

extension ProxyRuntime: ServedProxy {}
