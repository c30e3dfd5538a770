import ConciergeRuntime
import ConnectionPool
import NIOCore
import ProxyCore

/// The PostgreSQL engine's pool: the engine-neutral `PoolDriver` over its backends.
typealias BackendPool = PoolDriver<BackendConnection>
typealias BackendRequester = PoolRequester<BackendConnection>

extension BackendConnection: PooledConnection {
    /// A failed open as the pool records it: the database's SQLSTATE and message when it refused
    /// the login (what the waiting client is shown), else why the connection failed.
    static func poolFailure(_ error: any Error) -> ConnectionFailure {
        switch (error as? BackendError) ?? .connection("\(error)") {
        case .server(let fields): return ConnectionFailure(code: fields.code, message: fields.message)
        case .connection(let message), .protocolViolation(let message): return ConnectionFailure(message: message)
        }
    }
}
