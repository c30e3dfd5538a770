import ConciergeRuntime
import PostgresWire
import ProxyCore

/// What PostgreSQL's errors mean for the target group: the engine's side of the questions the
/// core asks in neutral terms (what a failed backend says about its target's health; whether a
/// failed open is worth trying again). The SQLSTATE classes live here, not in the core.
enum PostgresTargetErrors {
    /// What a failed backend connection says about its target; nil when it says nothing (e.g.
    /// a database that does not exist: the server answered after checking the password).
    static func targetHealth(after error: any Error) -> TargetHealth? {
        guard let error = error as? BackendError else {
            return TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: "\(error)")
        }
        switch error {
        case .server(let fields) where fields.code.hasPrefix("28"):
            return TargetHealth(
                state: .unavailable, reason: "AUTH_FAILURE",
                description: "The database refused the proxy's credentials: \(fields.message)")
        case .server(let fields) where fields.code == "53300" || fields.code.hasPrefix("57P"):
            return TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: fields.message)
        case .server:
            return nil
        case .connection(let message), .protocolViolation(let message):
            return TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: message)
        }
    }

    /// How a backend open failed, for `BackendOpenRetry`: a broken connection (the writer may be
    /// gone), the database refusing logins for now (class 57P, e.g. 57P03: starting up, shutting
    /// down, recovering from a crash), or anything else, which is final.
    static func openFailure(_ error: any Error) -> BackendOpenFailure {
        switch error as? BackendError {
        case .connection?: return .connectionFailed
        case .server(let fields)? where fields.code.hasPrefix("57P"): return .refusingLoginsForNow
        case .server?, .protocolViolation?, nil: return .final
        }
    }
}
