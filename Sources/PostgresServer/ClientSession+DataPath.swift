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

// The client's messages: the gate and route of `ClientSessionMachine`, classification (pins),
// statement bookkeeping the proxy answers itself, and borrowing a backend.
extension ClientSession {
    // MARK: Data path

    func handleDataMessage(_ frame: PGFrame) throws {
        let type = frame.type
        switch machine.messageArrived(type) {
        case .proceed:
            break
        case .drop:
            return
        case .replyReadyForQuery:
            replyReadyLocally()
            return
        case .transactionLost(let thenReady):
            var out = ByteBuffer()
            PGEncode.errorResponse(ClientErrors.transactionLost, into: &out)
            if thenReady { PGEncode.readyForQuery(.idle, into: &out) }
            writeToClient(out)
            return
        case .close:
            closeGracefully()
            return
        }
        if type == PGMessageType.Frontend.query || type == PGMessageType.Frontend.execute { loopSessions.queryRequests &+= 1 }
        let decision = try machine.frontendMessage(frame)
        if !decision.newPins.isEmpty { logPins(decision.newPins, first: decision.firstPin, frame: frame) }
        switch decision.action {
        case .route(let message):
            route(message)
        case .reply(let reply):
            switch reply {
            case .parseComplete:
                writeToClient(StatementMessages.parseComplete)
            case .closeComplete:
                writeToClient(StatementMessages.closeComplete)
            case .readyForQuery:
                var out = ByteBuffer()
                PGEncode.readyForQuery(.idle, into: &out)
                writeToClient(out)
            case .deallocate(let failedTransaction, let status):
                var out = ByteBuffer()
                if failedTransaction {
                    PGEncode.errorResponse(ClientErrors.inFailedTransaction, into: &out)
                } else {
                    PGEncode.commandComplete(tag: "DEALLOCATE", into: &out)
                }
                PGEncode.readyForQuery(status, into: &out)
                writeToClient(out)
            }
        case .flushClient:
            needsFlushToClient = true
        case .close:
            closeGracefully()
        case .protocolViolation(let message):
            fail(with: ClientErrors.protocolViolation(message))
        }
    }

    func writeToClient(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
        needsFlushToClient = true
    }

    static func isSyncPoint(_ type: UInt8) -> Bool {
        ClientSessionMachine.isSyncPoint(type)
    }

    func route(_ message: HeldMessage) {
        var sendable = false
        // Only an attached backend's statement cache may be touched (a backend still being
        // prepared may belong to another event loop): `mayTakeNow` first.
        if machine.mayTakeNow, let backend {
            let now = machine.takesNow(
                message, cache: &backend.statementCache, allocator: backend.allocator, write: { backend.write($0) })
            sendable = now.takes
            if now.flush { backend.flush() }
        }
        switch machine.route(message, now: .now(), sendable: sendable) {
        case .send:
            send(message, to: backend!)
            needsFlushToBackend = true
        case .held:
            break
        case .borrow:
            borrowBackend()
        }
    }

    /// Logs and counts pins the machine added for a message's SQL (its text only with
    /// debug_logging, redacted).
    func logPins(_ new: PinReasons, first: Bool, frame: PGFrame) {
        runtime.metrics.recordPins(bits: UInt64(new.rawValue))
        var metadata: Logger.Metadata = ["concierge.pin_reason": "\(new.names.joined(separator: ","))"]
        if runtime.debugLogging {
            let sql: ByteBuffer?
            if frame.type == PGMessageType.Frontend.query {
                sql = try? PGFrontend.Query(frame.body).sql
            } else {
                sql = (try? PGFrontend.Parse(frame.body))?.query
            }
            if let sql { metadata["concierge.statement"] = "\(Self.loggableStatement(sql))" }
        }
        log(.info, first ? "session pinned" : "session pin reason added", metadata)
    }

    func pin(_ reasons: PinReasons, statement: ByteBuffer) {
        let first = !pins.isPinned
        let new = pins.pin(reasons)
        guard !new.isEmpty else { return }
        logPins(new, first: first, statement: statement)
    }

    /// Logs and counts pins added for `statement` (its text only with debug_logging, redacted).
    func logPins(_ new: PinReasons, first: Bool, statement: ByteBuffer) {
        runtime.metrics.recordPins(bits: UInt64(new.rawValue))
        var metadata: Logger.Metadata = ["concierge.pin_reason": "\(new.names.joined(separator: ","))"]
        // SQL text is logged only with debug_logging: it may contain data.
        if runtime.debugLogging { metadata["concierge.statement"] = "\(Self.loggableStatement(statement))" }
        log(.info, first ? "session pinned" : "session pin reason added", metadata)
    }

    /// SQL text for a debug log line: literals and comments redacted (`SQLRedaction`).
    static func redactedStatement(_ sql: String) -> String {
        SQLRedaction.redacted(sql)
    }

    /// A statement's bytes for a debug log line: redacted, and not shown at all unless they are
    /// valid UTF-8. Decoding replaces invalid bytes with U+FFFD, so two dollar-quote tags that
    /// differ only in such bytes (a client in LATIN1) would read alike and end a quote early,
    /// exposing what PostgreSQL reads as a literal (found by the fuzz harness's redact target).
    static func loggableStatement(_ statement: ByteBuffer) -> String {
        guard let sql = String(validating: statement.readableBytesView, as: UTF8.self) else {
            return "(not shown: not valid UTF-8)"
        }
        return redactedStatement(sql)
    }

    /// Asks the pool for a backend (the machine's link is `borrowing`).
    func borrowBackend() {
        guard let pool = runtime.borrowPool(forEndpoint: endpoint) else {
            borrowFailed(with: ClientErrors.noReader)
            return
        }
        borrowPool = pool
        let request = pool.borrow(key: poolKey, for: self)
        // The pool may answer before `borrow` returns (an idle backend on our loop): the machine
        // then no longer waits, and keeps no request.
        machine.borrowRequested(request)
    }

    /// Called on our loop with the pool's answer.
    func borrowCompleted(_ result: Result<BackendConnection, BorrowError>) {
        switch result {
        case .success(let connection):
            switch machine.borrowSucceeded(now: .now()) {
            case .returnUnused:
                (borrowPool ?? runtime.pool).returnUnused(connection)
            case .lease(let probing, let waited):
                log(.trace, "backend borrowed", [
                    "concierge.backend": "\(connection.id)",
                    "concierge.borrow_ms": "\(waited.nanoseconds / 1_000_000)",
                ])
                backend = connection
                catalogue.backendLeased()
                // (Usually sends the client's query right away.)
                // The login probe sets the startup packet's values as the client wrote them.
                connection.lease(to: self, parameters: desiredParameters, fromDefaults: probing)
                loopSessions.borrowLatency.record(nanoseconds: waited.nanoseconds)
            }
        case .failure(let error):
            borrowFailed(error)
        }
    }

    func borrowFailed(_ error: BorrowError) {
        switch error {
        case .timeout:
            guard !machine.isClosed else { return }
            runtime.metrics.borrowTimeouts.increment()
            borrowFailed(with: ClientErrors.borrowTimeout)
        case .shuttingDown:
            borrowFailed(with: ClientErrors.shuttingDown)
        case .connectionFailed(let failure):
            borrowFailed(with: ClientErrors.connectionFailed(failure))
        }
    }

    func borrowFailed(with fields: PGErrorFields) {
        guard !machine.isClosed else { return }
        log(.info, "could not borrow a database connection", ["concierge.reason": "\(fields.message)"])
        let closes = fields.severity == "FATAL" && fields.code == ClientErrors.shuttingDown.code
        switch machine.borrowFailed(closesSession: closes) {
        case .none:
            break
        case .fail:
            fail(with: PGErrorFields(severity: "FATAL", code: fields.code, message: fields.message, detail: fields.detail, hint: fields.hint))
        case .answer(let syncPoints, let unsyncedError):
            // PostgreSQL's own semantics for a failed statement: an ErrorResponse, then a
            // ReadyForQuery for each sync point; extended messages after the last sync point are
            // discarded until the client's next Sync. The connection stays usable.
            guard let context else { return }
            var out = context.channel.allocator.buffer(capacity: 128)
            let errorFields = PGErrorFields(severity: "ERROR", code: fields.code, message: fields.message, detail: fields.detail, hint: fields.hint)
            for _ in 0..<syncPoints {
                PGEncode.errorResponse(errorFields, into: &out)
                PGEncode.readyForQuery(.idle, into: &out)
            }
            if unsyncedError { PGEncode.errorResponse(errorFields, into: &out) }
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            resumeReadsIfNeeded()
        }
    }

    func replyReadyLocally() {
        guard let context else { return }
        var out = context.channel.allocator.buffer(capacity: 6)
        PGEncode.readyForQuery(.idle, into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }
}
