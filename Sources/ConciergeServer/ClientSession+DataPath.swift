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
        switch type {
        case PGMessageType.Frontend.query:
            loopSessions.queryRequests &+= 1
            // A Query ends the extended messages before it as a Sync does (PostgreSQL commits
            // their implicit transaction with it), unless an error there makes it skip the Query.
            if !skippingUntilSync { pendingUnsynced = false }
            let classification = classify(try PGFrontend.Query(frame.body).sql, loneSetAllowed: isBetweenTransactions && backend == nil)
            if !classification.resets.isEmpty {
                if let name = classification.deallocatedName, catalogue[name] != nil, answerDeallocateLocally(name) { return }
                var resets = Resets(classification)
                resets.pinClock = pins.clock
                route(HeldMessage(frame, resets: resets))
                return
            }
            if resetWindow != nil, !classification.setCommands.isEmpty {
                // A SET after a reset whose window is still open (see `ResetWindow.setAfter`).
                route(HeldMessage(frame, resets: Resets(classification)))
                return
            }
        case PGMessageType.Frontend.parse:
            let startsBatch = isBetweenTransactions && backend == nil
            pendingUnsynced = true
            // Checked whole here, as PostgreSQL checks it: the proxy may keep the definition and
            // send it again later, elsewhere, under another name.
            guard let parse = try? PGFrontend.Parse(frame.body) else {
                fail(with: ClientErrors.protocolViolation("invalid Parse message"))
                return
            }
            let name = parse.name
            // Named statements do not pin: the proxy prepares them on whichever backend serves.
            // A lone tracked SET may, as the unnamed statement of a new batch (JDBC's way).
            var resets = Resets(classify(parse.query, loneSetAllowed: startsBatch && name.readableBytes == 0))
            resets.pinClock = pins.clock
            if name.readableBytes > 0, answersLocally, catalogue[String(buffer: name)] == nil {
                // No backend serves this client: acknowledge now, prepare on first use. A client
                // that prepares on one connection while its others hold backends in open
                // transactions (pgbench -M prepared) cannot then deadlock the pool.
                catalogue.define(String(buffer: name), ClientStatement(
                    definition: parse.definition, analysed: false, resets: resets,
                    refersTo: resets.executed.flatMap { catalogue[$0.name]?.key }, searchPath: desiredParameters["search_path"]))
                writeToClient(StatementMessages.parseComplete)
                return
            }
            if !resets.isEmpty || !resets.pins.isEmpty {
                // What it resets, or pins: a statement that pins pins again when bound later
                // (`repin`).
                route(HeldMessage(frame, resets: resets))
                return
            }
        case PGMessageType.Frontend.sync:
            if answersLocally {
                // Everything since the last Sync was answered by the proxy.
                pendingUnsynced = false
                var out = ByteBuffer()
                PGEncode.readyForQuery(.idle, into: &out)
                writeToClient(out)
                return
            }
            pendingUnsynced = false
        case PGMessageType.Frontend.functionCall:
            if !skippingUntilSync { pendingUnsynced = false }
        case PGMessageType.Frontend.close:
            pendingUnsynced = true
            if answersLocally, let close = try? PGFrontend.close(frame.body), close.kind == .statement, close.name.readableBytes > 0 {
                catalogue.remove(String(buffer: close.name))
                writeToClient(StatementMessages.closeComplete)
                return
            }
        case PGMessageType.Frontend.flush:
            // A Flush opens nothing: alone after a Sync or Query it does not keep a backend.
            if answersLocally {
                needsFlushToClient = true
                return
            }
        case PGMessageType.Frontend.bind, PGMessageType.Frontend.execute, PGMessageType.Frontend.describe:
            if type == PGMessageType.Frontend.execute { loopSessions.queryRequests &+= 1 }
            pendingUnsynced = true
        case PGMessageType.Frontend.copyData, PGMessageType.Frontend.copyDone, PGMessageType.Frontend.copyFail:
            break
        case PGMessageType.Frontend.terminate:
            closeGracefully()
            return
        default:
            fail(with: ClientErrors.protocolViolation("invalid frontend message type \(type)"))
            return
        }
        route(HeldMessage(frame))
    }

    /// `DEALLOCATE name` of one of the client's protocol-level statements, which no backend
    /// knows by that name: when nothing is in flight, the proxy answers as PostgreSQL would (the
    /// statement is not transactional) and forgets it. Otherwise `send` renames it.
    func answerDeallocateLocally(_ name: String) -> Bool {
        guard machine.mayAnswerDeallocateLocally else { return false }
        // A simple Query destroys the unnamed statement, whatever it runs.
        catalogue.simpleQueryAnsweredLocally()
        var out = ByteBuffer()
        if transactionStatus == .failed {
            PGEncode.errorResponse(ClientErrors.inFailedTransaction, into: &out)
        } else {
            catalogue.remove(name)
            PGEncode.commandComplete(tag: "DEALLOCATE", into: &out)
        }
        PGEncode.readyForQuery(transactionStatus, into: &out)
        writeToClient(out)
        return true
    }

    /// No backend serves this client and nothing waits for one (`ClientSessionMachine.answersLocally`).
    var answersLocally: Bool { machine.answersLocally }

    /// See `ClientSessionMachine.isBetweenTransactions`.
    var isBetweenTransactions: Bool { machine.isBetweenTransactions }

    func writeToClient(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
        needsFlushToClient = true
    }

    static func isSyncPoint(_ type: UInt8) -> Bool {
        ClientSessionMachine.isSyncPoint(type)
    }

    func route(_ message: HeldMessage) {
        // (Checked in this order: `mustCheckResultTypeFirst` may send a Parse of its own.)
        let sendable = machine.mayTakeNow && backend.map { !mustWaitForEarlierBatches(message) && !mustCheckResultTypeFirst(message, on: $0) } ?? false
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

    /// Pins the session when the SQL changes session state. Reads the bytes in place: no
    /// String is built unless a pin is logged.
    @discardableResult
    func classify(_ sql: ByteBuffer, loneSetAllowed: Bool = false) -> Classification {
        let classification = sql.withUnsafeReadableBytes {
            SQLClassifier.classify($0, options: classifierOptions)
        }
        let reasons = classification.pinReasons
        guard !reasons.isEmpty else { return classification }
        if loneSetAllowed, reasons == .setVariable, pinReasons.isEmpty,
           let setting = SQLTrackedSettings.setting(of: classification)
        {
            // A lone `SET extra_float_digits = 3` outside a transaction (what JDBC sends after
            // login): recorded when it succeeds, carried to every backend like a tracked one.
            pendingSetting = SessionParameters.PendingSetting(name: setting.name, value: setting.value, executed: false)
            return classification
        }
        pin(reasons, statement: sql)
        return classification
    }

    func pin(_ reasons: PinReasons, statement: ByteBuffer) {
        let first = !pins.isPinned
        let new = pins.pin(reasons)
        guard !new.isEmpty else { return }
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

    /// A borrow the machine did not start itself (after login).
    func requestBackend() {
        borrowBackend()
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
                runtime.metrics.borrowLatency.record(.nanoseconds(waited.nanoseconds))
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
