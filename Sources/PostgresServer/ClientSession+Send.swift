import ConciergeRuntime
import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier

// Sending to the backend: `ClientSessionMachine.send` decides (statements renamed and prepared
// where the backend lacks them, answers the proxy gives, what the backend owes) and writes to the
// backend; the handler carries out the rest (response time, pin log, local answers).
extension ClientSession {
    /// Sends one client message to the leased backend (see `ClientSessionMachine.send`).
    func send(_ message: HeldMessage, to backend: BackendConnection) {
        // The write only writes to the backend's channel: it never touches `machine`, which is
        // being modified while it runs.
        let sent = machine.send(message, cache: &backend.statementCache, allocator: backend.allocator) { backend.write($0) }
        if sent.startsResponseTime { queryStarted = .now() }
        if !sent.newPins.isEmpty { logPins(sent.newPins, first: sent.firstPin, statement: Self.preparedStatementText) }
        if sent.answerLocally { emitLocalResponses() }
    }

    /// How a Bind that pins again names its statement in the log (see `ClientSessionMachine.repin`).
    static let preparedStatementText = ByteBuffer(string: "(a prepared statement)")

    /// Answers the proxy-answered entries at the head of `responses`: everything before them has
    /// been forwarded, so this is where PostgreSQL would have answered them.
    func emitLocalResponses() {
        guard let context else { return }
        while let answer = responses.popLocalAnswer() {
            switch answer {
            case .parseComplete:
                context.write(wrapOutboundOut(StatementMessages.parseComplete), promise: nil)
            case .closeComplete:
                context.write(wrapOutboundOut(StatementMessages.closeComplete), promise: nil)
            case .none:
                break
            }
            needsFlushToClient = true
        }
    }
}
