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

// The backend's answers relayed to the client: `ResponseTracker` decides what is forwarded,
// dropped or answered by the proxy; errors lose the proxy's internal statement names.
extension ClientSession {
    /// Forwards backend responses while the tracker holds extended-protocol entries (or a reset
    /// is watched): the tracker decides which message answers which entry, which are the
    /// answers to the proxy's own messages (dropped) and where the proxy's answers go; the
    /// session does its own work for each answered entry. Forwarded runs stay slices of `bytes`
    /// (no copy).
    func relayTracked(_ bytes: ByteBuffer, from backend: BackendConnection, context: ChannelHandlerContext) {
        var view = bytes
        var runStart = view.readerIndex
        func writeRun(upTo end: Int) {
            if end > runStart, let run = bytes.getSlice(at: runStart, length: end - runStart) {
                context.write(wrapOutboundOut(run), promise: nil)
            }
            runStart = end
        }
        while true {
            if responses.headIsLocal {
                writeRun(upTo: view.readerIndex)
                emitLocalResponses()
            }
            // The backend connection framed these bytes already; a failure cannot happen here.
            guard let (type, size) = try? PGFraming.peekFrame(in: view, maxMessageSize: Int(Int32.max)) else { break }
            let frameStart = view.readerIndex
            view.moveReaderIndex(forwardBy: size)
            // The session's work that reads the entry this message answers, before it is popped.
            switch type {
            case PGMessageType.Backend.parameterStatus:
                // Asynchronous: answers nothing (the tracker forwards it).
                guard let window = resetWindow, let frame = bytes.getSlice(at: frameStart, length: size) else { continue }
                if window.syncsBefore == 0 {
                    // Held back until the reset's ReadyForQuery (see `closeResetWindow`).
                    writeRun(upTo: frameStart)
                    runStart = view.readerIndex
                    var frame = frame
                    resetWindow!.reports.writeBuffer(&frame)
                } else if let parameter = try? PGParse.parameterStatus(frame.getSlice(at: frame.readerIndex + 5, length: size - 5) ?? ByteBuffer()) {
                    // An earlier statement's report, which the client sees: the reset starts from it.
                    resetWindow!.before[parameter.name.lowercased()] = parameter.value
                }
                continue
            case PGMessageType.Backend.errorResponse:
                let body = bytes.getSlice(at: frameStart + 5, length: size - 5) ?? ByteBuffer()
                if resetWindow?.syncsBefore == 0 { resetWindow!.failed = true }
                var expected = false
                var hint: String?
                var replacement: ByteBuffer?
                switch responses.head {
                case .duplicateParse(_, let client):
                    expected = true
                    hint = client
                case .resetQuery(let watch) where watch.changedResultType:
                    replacement = StatementMessages.changedResultTypeError
                case .resetQuery(let watch) where watch.executed != nil:
                    expected = true
                    hint = watch.executed
                case .bind(_, let client), .injectedParse(let client, _, _, _): hint = client
                case .changedResultType:
                    // The Bind or Describe the proxy failed on purpose: PostgreSQL's error for it.
                    replacement = StatementMessages.changedResultTypeError
                default: break
                }
                if replacement == nil {
                    replacement = errorWithoutInternalNames(body, backend: backend, expected: expected, hint: hint)
                }
                if let replacement {
                    writeRun(upTo: frameStart)
                    runStart = view.readerIndex
                    context.write(wrapOutboundOut(replacement), promise: nil)
                }
                if case .error(let outcome) = responses.received(type) {
                    backendReportedError(outcome, body: body, backend: backend)
                }
                continue
            case PGMessageType.Backend.readyForQuery:
                let status = bytes.getInteger(at: frameStart + 5, as: UInt8.self).flatMap(PGTransactionStatus.init(rawValue:)) ?? .idle
                // As of this point in the stream: what follows in the same read (an error that
                // decides whether a statement survives) is judged by it.
                transactionStatus = status
                if case .readyForQuery(answered: .resetQuery(let watch)?) = responses.received(type) {
                    applyResetAtReady(watch, status: status)
                }
                if let window = resetWindow {
                    if window.syncsBefore > 0 {
                        resetWindow!.syncsBefore -= 1
                    } else {
                        writeRun(upTo: frameStart)
                        closeResetWindow(status: status, context: context, backend: backend)
                    }
                }
                continue
            case PGMessageType.Backend.copyInResponse:
                if case .copyIn(awaitingCopyEnd: true) = responses.received(type) { copyInActive = true }
                continue
            case PGMessageType.Backend.commandComplete:
                switch responses.head {
                case .resetQuery(let watch):
                    applyResetAtCompletion(watch, tag: bytes.getSlice(at: frameStart + 5, length: size - 5) ?? ByteBuffer())
                case .execute(_, let watch?):
                    // An Execute's CommandComplete is its success: nothing to confirm later.
                    applyResetAtCompletion(watch, tag: bytes.getSlice(at: frameStart + 5, length: size - 5) ?? ByteBuffer(), execute: true)
                default:
                    break
                }
            default:
                break
            }
            switch responses.received(type) {
            case .forward(answered: .duplicateParse?):
                // The placeholder was not there (its Parse cannot fail): a bug, with no harm
                // beyond this answer (the client's statement is unchanged).
                log(.warning, "a Parse of a statement name in use was accepted by the database")
            case .forward, .readyForQuery, .error, .copyIn:
                break
            case .drop(let answered):
                writeRun(upTo: frameStart)
                runStart = view.readerIndex  // the proxy's own: dropped
                if case .shapeDescribe(let key, let serverName, let parsedAt, let client, let clientParsedAt, let waiting)? = answered {
                    catalogue.recordShape(
                        type == PGMessageType.Backend.noData
                            ? ResultShape.noRows
                            : bytes.getSlice(at: frameStart + 5, length: size - 5).flatMap(ResultShape.of(rowDescription:)),
                        key: key, serverName: serverName, parsedAt: parsedAt, client: client, clientParsedAt: clientParsedAt,
                        waiting: waiting, cache: &backend.statementCache)
                    if waiting { preparingForQuery = false }
                }
            }
        }
        writeRun(upTo: view.readerIndex)
        emitLocalResponses()
    }

    /// An error that names one of the proxy's statements (`concierge_...`), with the client's
    /// names instead (`StatementCatalogue.errorWithoutInternalNames`); nil (the usual case): the
    /// error is forwarded as it is.
    func errorWithoutInternalNames(
        _ body: ByteBuffer, backend: BackendConnection, expected: Bool = false, hint: String? = nil
    ) -> ByteBuffer? {
        guard let (error, invalidated) = catalogue.errorWithoutInternalNames(
            body, expected: expected, hint: hint, cache: &backend.statementCache)
        else { return nil }
        if invalidated {
            log(.warning, "the database reported an error about one of the proxy's statements; its statements on this backend will be prepared again", [
                "concierge.backend": "\(backend.id)"
            ])
        }
        return error
    }

    /// An ErrorResponse: in the extended protocol it answers the head entry, and PostgreSQL then
    /// skips every message up to Sync, so their entries went too (`ResponseTracker`): statements
    /// they would have created do not exist.
    func backendReportedError(
        _ outcome: ResponseTracker.ErrorOutcome, body: ByteBuffer, backend: BackendConnection
    ) {
        switch outcome {
        case .query:
            return  // a simple query's error: ReadyForQuery follows
        case .resetQuery:
            machine.resetQueryFailed = true
            return
        case .failed(let failed, let skipped, let syncFollows):
            switch failed {
            case .bind(let serverName?, _), .execute(let serverName?, _):
                if let fields = try? PGParse.errorResponse(body), fields.code == "0A000",
                   fields.message?.contains("cached plan must not change result type") == true
                {
                    // The statement's result type changed (DDL): prepare it afresh next time.
                    backend.statementCache.invalidate(serverName: serverName)
                }
            default:
                break
            }
            // What the client sends from now on up to its Sync is skipped too (see `send`).
            skippingUntilSync = !syncFollows
            // A Query the client sent after the failed message is skipped too: a Sync is still due
            // (unless the client's Sync is among the messages held back).
            if skippingUntilSync {
                sentUnsynced = true
                if !held.contains(where: { $0.frame.type == PGMessageType.Frontend.sync }) { pendingUnsynced = true }
            }
            // Undone last first, then the failed message: each skipped message restores what the
            // one before it left (a Close then a Parse of the same name, two unnamed Parses).
            for entry in skipped.reversed() {
                forgetStatement(of: entry, failed: false, backend: backend)
            }
            forgetStatement(of: failed, failed: true, backend: backend)
        }
    }

    /// A message that `failed` (or was skipped after a failure) did not create its statement
    /// (`StatementCatalogue.forget`). If the messages waiting for a row type go on because the
    /// Parse they waited for failed, and that Parse prepared a statement for a simple Query,
    /// the Query is answered by a Sync (`syncInsteadOfQuery`).
    func forgetStatement(of entry: PendingResponse, failed: Bool, backend: BackendConnection) {
        let waitingReleased = catalogue.forget(
            entry, failed: failed, transactionFailed: transactionStatus == .failed, cache: &backend.statementCache)
        if waitingReleased, preparingForQuery {
            preparingForQuery = false
            syncInsteadOfQuery = true
        }
    }
}
