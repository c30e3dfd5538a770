import NIOCore

/// A target's health as the admin API shows it (RDS's `TargetHealth`): its state, and when it is
/// not available, why (`reason` is RDS's code, `description` the words an operator reads).
public struct TargetHealth: Sendable, Hashable {
    public enum State: String, Sendable {
        case registering = "REGISTERING"
        case available = "AVAILABLE"
        case unavailable = "UNAVAILABLE"
    }

    public var state: State
    public var reason: String?
    public var description: String?

    public init(state: State, reason: String? = nil, description: String? = nil) {
        self.state = state
        self.reason = reason
        self.description = description
    }
}

/// A target's role, as its health checks found it.
public enum TargetRoleState: Sendable, Hashable {
    case writer
    case reader
    case unknown
}

/// The role a probe found a target in (each engine asks its database in its own way, e.g. whether
/// it is a standby or read-only).
public enum ProbedRole: Sendable, Hashable {
    case writer
    case reader
}

/// What one health check (an engine's probe of a target) found: the neutral value every engine
/// reports to the target group.
public enum TargetProbeResult: Sendable, Hashable {
    /// The target answered with its role. `maxConnections` is the database's connection limit when
    /// the probe read it (once per probe connection).
    case up(ProbedRole, maxConnections: Int?)
    /// The target answered but the probe could not tell its role (e.g. the probe's database does not
    /// exist): it is up, role unknown, and `why` says what went wrong.
    case upUnknownRole(why: String)
    /// The target is down. `unresponsive`: the probe got no answer within its timeout (a path or a
    /// server that stopped answering without closing anything): the backends open to it are no
    /// better, and are aborted.
    case down(TargetHealth, unresponsive: Bool)
}

/// What kind of failure a backend open met, as the engine classifies its own errors; the core
/// decides from it whether the open tries again (`BackendOpenRetry`).
public enum BackendOpenFailure: Sendable, Hashable {
    /// The connection failed or broke: the target may be gone (a failover). The writer becomes
    /// suspect, and the open waits for a health check.
    case connectionFailed
    /// The database refuses logins for now (starting up, shutting down, recovering from a crash):
    /// as for a failover, the open waits for it, asking again at a gentle pace.
    case refusingLoginsForNow
    /// Anything else (credentials refused, no such database, a protocol error): final.
    case final
}

/// Whether a failed backend open tries again: before its deadline, connection failures at once
/// (the writer is then suspect, so the next attempt waits for a health check and cannot spin), and
/// a database refusing logins for now after a pause (its health-check session may still answer).
public enum BackendOpenRetry: Sendable, Hashable {
    case retryNow
    case retryAfter(TimeAmount)
    case giveUp

    /// The pause between attempts while the database refuses logins for now.
    public static let refusalPause = TimeAmount.milliseconds(100)

    public static func decide(after failure: BackendOpenFailure, now: NIODeadline, deadline: NIODeadline) -> BackendOpenRetry {
        switch failure {
        case .connectionFailed:
            return now < deadline ? .retryNow : .giveUp
        case .refusingLoginsForNow:
            return now + refusalPause < deadline ? .retryAfter(refusalPause) : .giveUp
        case .final:
            return .giveUp
        }
    }
}
