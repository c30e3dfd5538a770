import NIOCore
import PostgresWire
import SQLClassifier

// The backend's answers on their way to the client, message by message: which are forwarded,
// dropped (the answers to the proxy's own messages) or replaced (errors that name the proxy's
// statements), and what each does to the session (statements, resets, row types, skipping after
// an error). The handler keeps the framing and the zero-copy slicing of the burst: it asks
// `relay` (or `relayError`, for an ErrorResponse) about each message and writes runs of the
// original bytes, cut where the answer says.
extension ClientSessionMachine {
    /// What the handler does with one backend message.
    public enum RelayAction: Equatable {
        /// Leave it in the forwarded run.
        case forward
        /// Cut it out of the run: it answers one of the proxy's own messages, or it is a
        /// ParameterStatus held back until a reset's ReadyForQuery (`ResetWindow.reports`).
        case drop
        /// Cut it out and write this instead (an error with the client's names, or PostgreSQL's
        /// error for a statement whose row type changed).
        case replace(ByteBuffer)
        /// A ReadyForQuery that ends a reset's window: close the window (`closeResetWindow`, the
        /// handler's: it needs the login template and the backend) before it, then forward it.
        case closeResetWindowBefore(PGTransactionStatus)
    }

    /// The answer to a Describe the proxy sent after a Parse (`PendingResponse.shapeDescribe`),
    /// for `recordShape` with the backend's statement cache.
    public struct ShapeAnswer: Equatable {
        public var shape: Int?
        public var key: String
        public var serverName: String
        public var parsedAt: UInt64
        public var client: String?
        public var clientParsedAt: UInt64
        public var waiting: Bool
    }

    final class ShapeBox: Equatable {
        let value: ShapeAnswer
        init(_ value: ShapeAnswer) { self.value = value }
        static func == (a: ShapeBox, b: ShapeBox) -> Bool { a.value == b.value }
    }

    /// What to do with one backend message, and what to log.
    public struct Relayed: Equatable {
        public var action = RelayAction.forward
        /// Pin reasons a reset released (for the log), then, at the ReadyForQuery of a reset
        /// query, the advisory locks' released after them (`ReadyUnpins`).
        public var unpinned: PinReasons = []
        public var unpinnedThen: PinReasons = []
        /// A row type to record (`recordShape`).
        public var shape: ShapeAnswer? {
            get { shapeBox?.value }
            set { shapeBox = newValue.map(ShapeBox.init) }
        }
        /// Boxed: a shape is rare (a Describe the proxy sent), and inline its strings made every
        /// relayed message's answer about 100 bytes that were copied and destroyed each time.
        private var shapeBox: ShapeBox?
        /// The error named one of the proxy's statements as missing: its view of the backend was
        /// wrong, and every statement there is prepared afresh from now on (a warning).
        public var statementsInvalidated = false
        /// A Parse of a statement name in use was accepted by the database (a bug: the
        /// placeholder was not there; a warning).
        public var duplicateParseAccepted = false

        public init() {}
    }

    /// One message of the backend's burst (`bytes`, the message at `start`, `size` bytes with its
    /// header), other than ErrorResponse (`relayError`), while `responses.isTracking` or a reset
    /// window is open. The handler answers the proxy's due entries (`responses.popLocalAnswer`)
    /// before each message.
    public mutating func relay(_ type: UInt8, in bytes: ByteBuffer, at start: Int, size: Int) -> Relayed {
        var relayed = Relayed()
        // The session's work that reads the entry this message answers, before it is popped.
        switch type {
        case PGMessageType.Backend.parameterStatus:
            // Asynchronous: answers nothing (the tracker forwards it).
            guard resetWindow != nil, var frame = bytes.getSlice(at: start, length: size) else { return relayed }
            if resetWindow!.syncsBefore == 0 {
                // Held back until the reset's ReadyForQuery (see `closeResetWindow`).
                resetWindow!.reports.writeBuffer(&frame)
                relayed.action = .drop
            } else if let parameter = try? PGParse.parameterStatus(frame.getSlice(at: frame.readerIndex + 5, length: size - 5) ?? ByteBuffer()) {
                // An earlier statement's report, which the client sees: the reset starts from it.
                resetWindow!.before[parameter.name.lowercased()] = parameter.value
            }
            return relayed
        case PGMessageType.Backend.readyForQuery:
            let status = bytes.getInteger(at: start + 5, as: UInt8.self).flatMap(PGTransactionStatus.init(rawValue:)) ?? .idle
            // As of this point in the stream: what follows in the same read (an error that
            // decides whether a statement survives) is judged by it.
            transactionStatus = status
            if case .readyForQuery(answered: .resetQuery(let watch)?) = responses.received(type) {
                let released = applyResetAtReady(watch, status: status)
                relayed.unpinned = released.listen
                relayed.unpinnedThen = released.advisoryLock
            }
            if resetWindow != nil {
                if resetWindow!.syncsBefore > 0 {
                    resetWindow!.syncsBefore -= 1
                } else {
                    relayed.action = .closeResetWindowBefore(status)
                }
            }
            return relayed
        case PGMessageType.Backend.copyInResponse:
            if case .copyIn(awaitingCopyEnd: true) = responses.received(type) { copyInActive = true }
            return relayed
        case PGMessageType.Backend.commandComplete:
            // Most often no entry watches a reset: the head is not copied to find out.
            guard responses.watched > 0 else { break }
            switch responses.head {
            case .resetQuery(let watch):
                relayed.unpinned = applyResetAtCompletion(watch, tag: bytes.getSlice(at: start + 5, length: size - 5) ?? ByteBuffer())
            case .execute(_, let watch?):
                relayed.unpinned = applyResetAtExecuteCompletion(
                    watch, tag: bytes.getSlice(at: start + 5, length: size - 5) ?? ByteBuffer())
            default:
                break
            }
        default:
            break
        }
        switch responses.received(type) {
        case .forward(answered: .duplicateParse?):
            // The placeholder was not there (its Parse cannot fail): a bug, with no harm beyond
            // this answer (the client's statement is unchanged).
            relayed.duplicateParseAccepted = true
        case .forward, .readyForQuery, .error, .copyIn:
            break
        case .drop(let answered):
            relayed.action = .drop  // the proxy's own
            if case .shapeDescribe(let key, let serverName, let parsedAt, let client, let clientParsedAt, let waiting)? = answered {
                relayed.shape = ShapeAnswer(
                    shape: type == PGMessageType.Backend.noData
                        ? ResultShape.noRows
                        : bytes.getSlice(at: start + 5, length: size - 5).flatMap(ResultShape.of(rowDescription:)),
                    key: key, serverName: serverName, parsedAt: parsedAt, client: client, clientParsedAt: clientParsedAt,
                    waiting: waiting)
                if waiting { preparingForQuery = false }
            }
        }
        return relayed
    }

    /// The row type a Describe of the proxy's learnt (`Relayed.shape`), recorded for the
    /// backend's copy (`cache`) and the client's statement.
    public mutating func recordShape(_ answer: ShapeAnswer, cache: inout BackendStatementCache) {
        catalogue.recordShape(
            answer.shape, key: answer.key, serverName: answer.serverName, parsedAt: answer.parsedAt, client: answer.client,
            clientParsedAt: answer.clientParsedAt, waiting: answer.waiting, cache: &cache)
    }

    /// An ErrorResponse of the backend's burst (see `relay`): the proxy's statement names give way
    /// to the client's, and the messages PostgreSQL now skips did not do what they would have.
    public mutating func relayError(in bytes: ByteBuffer, at start: Int, size: Int, cache: inout BackendStatementCache) -> Relayed {
        var relayed = Relayed()
        let body = bytes.getSlice(at: start + 5, length: size - 5) ?? ByteBuffer()
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
        if replacement == nil,
           let (error, invalidated) = catalogue.errorWithoutInternalNames(body, expected: expected, hint: hint, cache: &cache)
        {
            // It names one of the proxy's statements (`concierge_...`).
            replacement = error
            relayed.statementsInvalidated = invalidated
        }
        if let replacement { relayed.action = .replace(replacement) }
        if case .error(let outcome) = responses.received(PGMessageType.Backend.errorResponse) {
            backendReportedError(outcome, body: body, cache: &cache)
        }
        return relayed
    }

    /// An ErrorResponse: in the extended protocol it answers the head entry, and PostgreSQL then
    /// skips every message up to Sync, so their entries went too (`ResponseTracker`): statements
    /// they would have created do not exist.
    mutating func backendReportedError(
        _ outcome: ResponseTracker.ErrorOutcome, body: ByteBuffer, cache: inout BackendStatementCache
    ) {
        switch outcome {
        case .query:
            return  // a simple query's error: ReadyForQuery follows
        case .resetQuery:
            resetQueryFailed = true
            return
        case .failed(let failed, let skipped, let syncFollows):
            switch failed {
            case .bind(let serverName?, _), .execute(let serverName?, _):
                if let fields = try? PGParse.errorResponse(body), fields.code == "0A000",
                   fields.message?.contains("cached plan must not change result type") == true
                {
                    // The statement's result type changed (DDL): prepare it afresh next time.
                    cache.invalidate(serverName: serverName)
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
                forgetStatement(of: entry, failed: false, cache: &cache)
            }
            forgetStatement(of: failed, failed: true, cache: &cache)
        }
    }

    /// A message that `failed` (or was skipped after a failure) did not create its statement
    /// (`StatementCatalogue.forget`). If the messages waiting for a row type go on because the
    /// Parse they waited for failed, and that Parse prepared a statement for a simple Query,
    /// the Query is answered by a Sync (`syncInsteadOfQuery`).
    mutating func forgetStatement(of entry: PendingResponse, failed: Bool, cache: inout BackendStatementCache) {
        let waitingReleased = catalogue.forget(entry, failed: failed, transactionFailed: transactionStatus == .failed, cache: &cache)
        if waitingReleased, preparingForQuery {
            preparingForQuery = false
            syncInsteadOfQuery = true
        }
    }
}
