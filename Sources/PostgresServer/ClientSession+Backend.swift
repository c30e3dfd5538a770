import ConciergeRuntime
import ConciergeAuth
import ConciergeConfig
import ConnectionPool
import Logging
import NIOCore
import NIOSSL
import PostgresProxy
import PostgresWire
import ProxyCore
import SQLClassifier

// The leased backend's events (`BackendOwner`): prepared, read, closed; held messages released
// as earlier batches are answered; the backend given back.
extension ClientSession {
    // MARK: BackendOwner

    func backendDidPrepare(_ result: Result<[String: String], BackendError>) {
        guard let backend else { return }
        switch result {
        case .success(let reported):
            switch machine.backendPrepared() {
            case .none:
                break
            case .completeLogin(let release):
                // The login probe: learn the parameters, give the backend back (unless the client
                // pipelined messages meanwhile: they go to it), finish login.
                learnCanonicalValues(from: reported)
                let known = runtime.engine.loginState(for: poolKey)
                let template = known.template ?? LoginTemplate([])
                if release { releaseBackend() }
                completeLogin(template: template, classifierOptions: known.classifierOptions)
                if !release { sendHeld(to: backend) }
            case .sendHeld(let thenCancel):
                sendHeld(to: backend)
                if thenCancel {
                    // A cancel came while the backend was prepared: the statement is on its way,
                    // the cancel follows it (over its own connection, so it cannot overtake it).
                    backend.flush()
                    trackCancel(backend.sendCancelRequest())
                }
            }
        case .failure(let error):
            self.backend = nil
            let serverError: PGErrorFields?
            if case .server(let fields) = error { serverError = fields } else { serverError = nil }
            switch machine.backendPrepareFailed(serverError: serverError != nil, now: .now()) {
            case .fail:
                if let fields = serverError {
                    fail(with: PGErrorFields(severity: "FATAL", code: fields.code, message: fields.message, detail: fields.detail, hint: fields.hint))
                } else {
                    fail(with: ClientErrors.backendLost)
                }
            case .borrowAgain:
                runtime.backendConnectionLost()
                log(.info, "the database connection leased to this client was closed before use: borrowing another")
                borrowBackend()
            case .unavailable:
                runtime.backendConnectionLost()
                borrowFailed(with: ClientErrors.backendUnavailable("\(error)"))
            }
        }
    }

    /// After each answer: the messages held behind an earlier batch go out once nothing they
    /// depend on is pending (see `mustWaitForEarlierBatches`).
    func releaseHeldBehindEarlierBatches(to backend: BackendConnection) {
        guard machine.waitingForEarlierBatches, machine.isBackendReady else { return }
        var sent = false
        var sentSinceForced = false
        loop: while true {
            // The write only writes to the backend's channel (see `send`).
            switch machine.popSendable(
                sentSinceForced: sentSinceForced, cache: &backend.statementCache, allocator: backend.allocator,
                write: { backend.write($0) })
            {
            case .send(let message, let forced):
                if !forced { sentSinceForced = true }
                send(message, to: backend)
                sent = true
            case .wait(let flush):
                if flush { sent = true }
                break loop
            case .empty:
                break loop
            }
        }
        if sent { backend.flush() }
        if machine.heldDrained() { resumeReadsIfNeeded() }
    }

    func sendHeld(to backend: BackendConnection) {
        guard !machine.held.isEmpty else { return }
        // What waited for a backend goes out now, up to a message that must wait for the answer
        // to an earlier batch among them (see `mustWaitForEarlierBatches`).
        machine.waitingForEarlierBatches = true
        releaseHeldBehindEarlierBatches(to: backend)
    }

    func backendDidRead(
        _ bytes: ByteBuffer, readyForQueryCount: Int, firstStatus: PGTransactionStatus, lastStatus: PGTransactionStatus,
        sawError: Bool, reports: Bool
    ) {
        guard let context, let backend else { return }
        let bytes = reports ? filterReports(bytes) : bytes
        switch parameters.backendAnswered(readyForQueryCount: readyForQueryCount, firstStatus: firstStatus, sawError: sawError) {
        case .none:
            break
        case .applied(let name, let value):
            backend.noteApplied(name: name, value: value)
        case .pin(let name):
            pin(.setVariable, statement: ByteBuffer(string: name))
        }
        needsFlushToClient = true  // by the release below, or at the backend's read-complete
        if !responses.isTracking, resetWindow == nil {
            context.write(wrapOutboundOut(bytes), promise: nil)
            // Only Query and Sync entries: one ReadyForQuery each.
            responses.forwardedUntracked(readyForQueryCount: readyForQueryCount)
        } else {
            relayTracked(bytes, from: backend, context: context)
        }
        switch machine.readyForQueryForwarded(count: readyForQueryCount, status: lastStatus) {
        case .none:
            // An error may have ended the batch that held messages back (its reset skipped).
            break
        case .release(let thenClose):
            // The transaction is over: the client gets its answer now, because the backend may
            // move to another client (and its read-complete) before this call returns. The
            // bookkeeping comes after the answer is on its way.
            needsFlushToClient = false
            context.flush()
            recordQueryLatency()
            releaseBackend()
            // Shutting down: this was the client's last transaction. (Not left to the backend's
            // read-complete, which no longer reaches a session that gave the backend back.)
            if thenClose { fail(with: ClientErrors.shuttingDown) }
            return
        case .keep:
            recordQueryLatency()
        case .reapply:
            // The session keeps this backend (a transaction, a pin, messages that waited behind
            // the reset) after RESET ALL, RESET name or DISCARD ALL: its next messages wait until
            // the backend has its values again (then `sendHeld`).
            recordQueryLatency()
            backend.reapply(to: self, parameters: desiredParameters)
            return
        }
        if machine.waitingForEarlierBatches { releaseHeldBehindEarlierBatches(to: backend) }
    }

    /// The database's response time for what the client sent, up to its last ReadyForQuery.
    func recordQueryLatency() {
        loopSessions.queryLatency.record(nanoseconds: (NIODeadline.now() - queryStarted).nanoseconds)
    }

    func backendDidReadComplete() {
        // Only what is unflushed: under load the backend's read-complete usually comes after
        // the transaction's release has flushed, and reaches the session it was lent to next,
        // which has written nothing yet (an empty flush costs SwiftNIO about 550 instructions).
        // Every write to the client sets `needsFlushToClient`.
        if needsFlushToClient {
            needsFlushToClient = false
            context?.flush()
        }
        if machine.draining, machine.isBetweenTransactions {
            fail(with: ClientErrors.shuttingDown)
        }
    }

    /// See `SessionParameters.filterReports`.
    func filterReports(_ bytes: ByteBuffer) -> ByteBuffer {
        parameters.filterReports(bytes) { loginTemplateValue(of: $0) }
    }

    /// What the client was told at login of a parameter it did not set (lowercased name).
    func loginTemplateValue(of name: String) -> String? {
        guard let template = runtime.engine.loginState(for: poolKey).template,
              let index = template.indexByLowercasedName[name] else { return nil }
        return template.parameters[index].value
    }

    func backendDidClose() {
        guard backend != nil else { return }
        backend = nil
        runtime.backendConnectionLost()
        let lost = machine.backendClosed(now: .now())
        guard case .answer(let syncPoints, let unsyncedError, let borrow) = lost, let context else {
            // A pinned session's state lived on that backend: it cannot go on.
            log(.warning, "database connection lost while serving this client")
            fail(with: ClientErrors.backendLost)
            return
        }
        log(.warning, "database connection lost mid-transaction: the client gets an error and keeps its connection")
        catalogue.backendDetached()
        resetWindow = nil
        pendingSetting = nil
        var out = context.channel.allocator.buffer(capacity: 256)
        for _ in 0..<syncPoints {
            PGEncode.errorResponse(ClientErrors.transactionLost, into: &out)
            PGEncode.readyForQuery(.idle, into: &out)
        }
        // PostgreSQL's rule after an error: extended messages are discarded until Sync.
        if unsyncedError { PGEncode.errorResponse(ClientErrors.transactionLost, into: &out) }
        if out.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(out), promise: nil) }
        // Messages that arrived meanwhile are served by a new backend.
        if borrow { borrowBackend() }
        resumeReadsIfNeeded()
    }

    func releaseBackend() {
        guard let backend else { return }
        catalogue.backendDetached()
        machine.backendReleased(now: .now())
        self.backend = nil
        backend.release(reusable: true)
    }
}
