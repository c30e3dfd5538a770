import NIOCore
import PostgresWire
import SQLClassifier

// What the session does with each message from the client, once it passed the gate
// (`messageArrived`): classified for pins and resets, answered by the proxy when no backend is
// needed for it (statement bookkeeping), or routed to a backend (`route`).
extension ClientSessionMachine {
    public enum FrontendAction {
        /// To a backend: `route` it (now, or once one is ready).
        case route(HeldMessage)
        /// Answered by the proxy; nothing reaches a backend.
        case reply(LocalReply)
        /// A Flush with nothing in flight: flush what the proxy wrote.
        case flushClient
        /// Terminate.
        case close
        /// Not a valid frontend message: the client is closed with a protocol violation.
        case protocolViolation(String)
    }

    public enum LocalReply: Equatable {
        /// A named Parse acknowledged; the statement is prepared on first use.
        case parseComplete
        /// A named statement's Close.
        case closeComplete
        /// The Sync after messages the proxy answered.
        case readyForQuery
        /// `DEALLOCATE name` of a protocol-level statement: CommandComplete (or, in a failed
        /// transaction, its error) and ReadyForQuery with `status`.
        case deallocate(failedTransaction: Bool, status: PGTransactionStatus)
    }

    /// A message's action, and the pin reasons its SQL added (for the log and the metrics).
    public struct Frontend {
        public var action: FrontendAction
        public var newPins: PinReasons = []
        /// The session was not pinned before (`newPins` pins it).
        public var firstPin = false
    }

    /// A message from the client that passed the gate. Throws what parsing a Query throws.
    public mutating func frontendMessage(_ frame: PGFrame) throws -> Frontend {
        var result = Frontend(action: .route(HeldMessage(frame)))
        let type = frame.type
        switch type {
        case PGMessageType.Frontend.query:
            // A Query ends the extended messages before it as a Sync does (PostgreSQL commits
            // their implicit transaction with it), unless an error there makes it skip the Query.
            if !skippingUntilSync { pendingUnsynced = false }
            let classification = classify(
                try PGFrontend.Query(frame.body).sql, loneSetAllowed: isBetweenTransactions && link == .none, into: &result)
            if !classification.resets.isEmpty {
                if let name = classification.deallocatedName, catalogue[name] != nil, mayAnswerDeallocateLocally {
                    // A protocol-level statement no backend knows by that name: answered as
                    // PostgreSQL would (the statement is not transactional), and forgotten.
                    // Otherwise `send` renames it.
                    catalogue.simpleQueryAnsweredLocally()
                    let failed = transactionStatus == .failed
                    if !failed { catalogue.remove(name) }
                    result.action = .reply(.deallocate(failedTransaction: failed, status: transactionStatus))
                    return result
                }
                var resets = Resets(classification)
                resets.pinClock = pins.clock
                result.action = .route(HeldMessage(frame, resets: resets))
            } else if resetWindow != nil, !classification.setCommands.isEmpty {
                // A SET after a reset whose window is still open (see `ResetWindow.setAfter`).
                result.action = .route(HeldMessage(frame, resets: Resets(classification)))
            }
        case PGMessageType.Frontend.parse:
            let startsBatch = isBetweenTransactions && link == .none
            pendingUnsynced = true
            // Checked whole here, as PostgreSQL checks it: the proxy may keep the definition and
            // send it again later, elsewhere, under another name.
            guard let parse = try? PGFrontend.Parse(frame.body) else {
                result.action = .protocolViolation("invalid Parse message")
                return result
            }
            let name = parse.name
            // Named statements do not pin: the proxy prepares them on whichever backend serves.
            // A lone tracked SET may, as the unnamed statement of a new batch (JDBC's way).
            var resets = Resets(classify(parse.query, loneSetAllowed: startsBatch && name.readableBytes == 0, into: &result))
            resets.pinClock = pins.clock
            if name.readableBytes > 0, answersLocally, catalogue[String(buffer: name)] == nil {
                // No backend serves this client: acknowledge now, prepare on first use. A client
                // that prepares on one connection while its others hold backends in open
                // transactions (pgbench -M prepared) cannot then deadlock the pool.
                let refersTo = resets.executed.flatMap { catalogue[$0.name]?.key }
                catalogue.define(
                    String(buffer: name),
                    ClientStatement(
                        definition: parse.definition, analysed: false, resets: resets, refersTo: refersTo,
                        searchPath: parameters.current["search_path"]))
                result.action = .reply(.parseComplete)
            } else if !resets.isEmpty || !resets.pins.isEmpty {
                // What it resets, or pins: a statement that pins pins again when bound later
                // (`repin`).
                result.action = .route(HeldMessage(frame, resets: resets))
            }
        case PGMessageType.Frontend.sync:
            pendingUnsynced = false
            // Everything since the last Sync was answered by the proxy.
            if answersLocally { result.action = .reply(.readyForQuery) }
        case PGMessageType.Frontend.functionCall:
            if !skippingUntilSync { pendingUnsynced = false }
        case PGMessageType.Frontend.close:
            pendingUnsynced = true
            if answersLocally, let close = try? PGFrontend.close(frame.body), close.kind == .statement, close.name.readableBytes > 0 {
                catalogue.remove(String(buffer: close.name))
                result.action = .reply(.closeComplete)
            }
        case PGMessageType.Frontend.flush:
            // A Flush opens nothing: alone after a Sync or Query it does not keep a backend.
            if answersLocally { result.action = .flushClient }
        case PGMessageType.Frontend.bind, PGMessageType.Frontend.execute, PGMessageType.Frontend.describe:
            pendingUnsynced = true
        case PGMessageType.Frontend.copyData, PGMessageType.Frontend.copyDone, PGMessageType.Frontend.copyFail:
            break
        case PGMessageType.Frontend.terminate:
            result.action = .close
        default:
            result.action = .protocolViolation("invalid frontend message type \(type)")
        }
        return result
    }

    /// Pins the session when the SQL changes session state. Reads the bytes in place.
    private mutating func classify(_ sql: ByteBuffer, loneSetAllowed: Bool, into result: inout Frontend) -> Classification {
        let options = classifierOptions
        let classification = sql.withUnsafeReadableBytes { SQLClassifier.classify($0, options: options) }
        let reasons = classification.pinReasons
        guard !reasons.isEmpty else { return classification }
        if loneSetAllowed, reasons == .setVariable, !pins.isPinned, let setting = SQLTrackedSettings.setting(of: classification) {
            // A lone `SET extra_float_digits = 3` outside a transaction (what JDBC sends after
            // login): recorded when it succeeds, carried to every backend like a tracked one.
            parameters.pendingSetting = SessionParameters.PendingSetting(name: setting.name, value: setting.value, executed: false)
            return classification
        }
        result.firstPin = !pins.isPinned
        result.newPins.formUnion(pins.pin(reasons))
        return classification
    }
}
