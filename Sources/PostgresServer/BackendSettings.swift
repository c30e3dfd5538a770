import ConciergeRuntime
import Logging
import NIOCore
import NIOSSL
import PostgresProxy
import PostgresWire

/// The client session that currently has a backend leased. The backend calls it on the owner's
/// event loop (hopping there when the two live on different loops).
protocol BackendOwner: AnyObject, Sendable {
    var eventLoop: any EventLoop { get }
    /// The process id the client was given (its BackendKeyData): a NotificationResponse from
    /// this backend's own session carries it instead of the backend's pid.
    var processID: Int32 { get }
    /// Complete messages from the database, in order, as one slice of the bytes read (to be
    /// forwarded as they are). `readyForQueryCount` ReadyForQuery messages are among them; the
    /// last one carried `lastStatus`, the first `firstStatus`. `sawError`: an ErrorResponse came
    /// before the first of them.
    /// `reports`: the bytes hold ParameterStatus messages of tracked parameters (the owner
    /// decides which the client sees: `ClientSession.filterReports`).
    func backendDidRead(
        _ bytes: ByteBuffer, readyForQueryCount: Int, firstStatus: PGTransactionStatus, lastStatus: PGTransactionStatus,
        sawError: Bool, reports: Bool)
    /// The end of one read burst from the database: time to flush to the client.
    func backendDidReadComplete()
    /// The backend's parameters were brought to what the session asked for (or that failed).
    /// Success carries the parameter values the server has reported, by their reported names.
    func backendDidPrepare(_ result: Result<[String: String], BackendError>)
    /// While leased, the database reported a new value of a tracked session parameter (after a
    /// SET, RESET or the end of a transaction): the client's value from now on. Lowercased name.
    /// The backend died while leased.
    func backendDidClose()
    /// The database connection's writability changed (the client should pause or resume).
    func backendWritabilityChanged(isWritable: Bool)
}

/// Why a backend connection could not be opened or used (defined with the machine that
/// produces it; named here for the pool, the runtime and the client session).
typealias BackendError = PostgresProxy.BackendError

/// What a new backend needs to log in and get ready.
struct BackendSettings: Sendable {
    var address: SocketAddress
    var username: String
    var password: String
    var database: String
    /// Statements run once after login, before the backend serves anyone.
    var initQuery: String
    /// Whether to read `max_connections` during setup (the proxy's cap derives from it).
    var readMaxConnections: Bool
    var scramCache: SCRAMSaltedPasswordCache
    var logger: Logger
    /// The pool's generation when this backend was opened (see `BackendPool.retire`).
    var generation: Int = 0
    /// TLS to the database (`target_group.tls`); nil: plaintext.
    var tls: NIOSSLContext?
    /// The target's host name for SNI and certificate checks (nil for an IP address).
    var serverHostname: String?
    /// Only to name the mode in errors.
    var tlsMode: String = "disable"
    /// Sent at login (health checks name themselves; pool backends take the client's).
    var applicationName: String?
}
