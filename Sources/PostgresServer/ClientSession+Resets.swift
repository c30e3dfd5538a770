import ConciergeRuntime
import Logging
import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier

// Session resets (RESET ALL, DISCARD ALL, DEALLOCATE, CLOSE ALL, ...): the machine sends them and
// applies their outcome (ClientSessionMachine+Resets.swift); the handler logs what they unpin and
// closes their window of ParameterStatus messages.
extension ClientSession {
    /// Releases `reasons` that a reset (`resets`) undid (see `ClientSessionMachine.unpin`), and
    /// logs it.
    func unpin(_ reasons: PinReasons, for resets: Resets) {
        logUnpinned(machine.unpin(reasons, for: resets))
    }

    /// Logs pin reasons a reset released; `remaining`: the reasons the session still had right
    /// after (by default, those it has now).
    func logUnpinned(_ removed: PinReasons, remaining: PinReasons? = nil) {
        guard !removed.isEmpty else { return }
        log(.info, (remaining ?? pinReasons).isEmpty ? "session unpinned" : "session pin reason removed", [
            "concierge.pin_reason": "\(removed.names.joined(separator: ","))"
        ])
    }

    /// At the ReadyForQuery after a RESET ALL or DISCARD ALL (`SessionParameters.closeResetWindow`
    /// decides): the client gets the ParameterStatus messages a direct session would have sent,
    /// the backend is brought to the client's values before its next message (or at its next
    /// lease), and the parameters the reset removed stop pinning.
    func closeResetWindow(status: PGTransactionStatus, context: ChannelHandlerContext, backend: BackendConnection) {
        guard let window = resetWindow else { return }
        resetWindow = nil
        let closed = parameters.closeResetWindow(window, status: status, template: runtime.engine.loginState(for: poolKey).template)
        if closed.reset {
            backend.noteParametersReset(closed.backendDefaults)
            for (name, value) in closed.backendApplied { backend.noteApplied(name: name, value: value) }
            switch closed.setVariable {
            case .unchanged: break
            case .unpin: unpin(.setVariable, for: window.resets)
            case .pin:
                // Inside a transaction block: a rollback would restore what RESET ALL reset,
                // settings the proxy does not see among them. The session keeps this backend.
                pin(.setVariable, statement: ByteBuffer(string: "RESET ALL"))
            }
            needsParameterResync = true
        }
        if closed.reports.readableBytes > 0 {
            context.write(wrapOutboundOut(closed.reports), promise: nil)
            needsFlushToClient = true
        }
    }
}
