import MySQLWire

/// `KILL QUERY` aimed at a client of the proxy (by the id its handshake gave): what must happen
/// to stop what the client runs now, wherever that is.
extension MySQLSessionMachine {
    public enum KillQueryDecision: Sendable, Hashable {
        /// Nothing runs (the client is between commands): a no-op, as on the server.
        case nothingRunning
        /// The client's commands wait for a backend: they fail with
        /// `MySQLSessionMachine.queryInterrupted` without running (the handler cancels the
        /// borrow and calls `borrowFailed`).
        case cancelWait
        /// A backend is being prepared for the client's commands: the kill goes once they are
        /// sent (the handler asks again then); killing now would stop the proxy's own restore.
        case afterSend
        /// A command runs on the backend: the handler runs `KILL QUERY <thread id>` on another
        /// connection to that server and calls `killDelivered` when it is done. Until then the
        /// backend stays with this client, even if its statement ends meanwhile: back in the
        /// pool it could be running another client's statement when the kill arrives.
        case killOnBackend
    }

    public mutating func killQueryRequested() -> KillQueryDecision {
        switch state {
        case .idle, .closed:
            return .nothingRunning
        case .borrowing:
            return verifyingLoginSchema ? .nothingRunning : .cancelWait
        case .restoring:
            return verifyingLoginSchema ? .nothingRunning : .afterSend
        case .attached:
            guard inFlight || sendingInfile else { return .nothingRunning }
            killsInFlight += 1
            return .killOnBackend
        }
    }

    /// The server has the kill (or it could not be delivered): the backend may go back to the
    /// pool if nothing else keeps it.
    public mutating func killDelivered() -> Action {
        guard killsInFlight > 0 else { return .none }
        killsInFlight -= 1
        guard case .attached = state, killsInFlight == 0 else { return .none }
        return releaseIfPossible()
    }

    /// Whether a kill of the proxy's is on its way to the backend (the backend is not reusable
    /// if the client leaves now).
    public var killPending: Bool { killsInFlight > 0 }

    /// MySQL's answer to a statement stopped by KILL QUERY (ER_QUERY_INTERRUPTED).
    public static let queryInterrupted = MySQLErrPacket(code: 1317, sqlState: "70100", message: "Query execution was interrupted")
}
