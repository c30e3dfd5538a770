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

// Session resets (RESET ALL, DISCARD ALL, DEALLOCATE, CLOSE ALL, ...): the reset query sent,
// its window of ParameterStatus messages, and what it unpins.
extension ClientSession {
    /// A simple Query with a statement that resets session state: the statement cache is made
    /// safe before it runs, and its outcome is watched (`applyReset`).
    func sendResetQuery(
        _ message: HeldMessage, unnamedBefore: UnnamedBefore? = nil, to backend: BackendConnection
    ) {
        let resets = message.resets
        var bytes = message.frame.bytes
        var watch = beginReset(resets, on: backend)
        watch.unnamedBefore = unnamedBefore
        if resets.kinds.contains(.deallocate), let name = resets.deallocated {
            if let statement = catalogue[name] {
                // The client's statement is known to the backend by the proxy's name: deallocate
                // that one. A backend without it deallocates the proxy's placeholder instead
                // (prepared first: a Parse that cannot fail, where one of the client's text
                // could, and would make PostgreSQL skip this Query). Either way the outcome is
                // PostgreSQL's: success, or the error of an aborted transaction.
                let serverName: String
                let placeholder = !catalogue.backendHasCopy(of: statement, cache: backend.statementCache)
                if !placeholder {
                    serverName = prepare(statement, client: name, on: backend)
                } else {
                    serverName = StatementMessages.placeholderName
                    closeBeforeParse(serverName, on: backend)
                    backend.write(StatementMessages.parse(
                        name: serverName, definition: StatementMessages.placeholderDefinition, allocator: backend.allocator))
                    appendPending(.injectedPlaceholder)
                }
                bytes = ByteBuffer()
                PGEncode.query("DEALLOCATE " + BackendConnection.quoteIdentifier(serverName), into: &bytes)
                watch.deallocated = name
                watch.removed[name] = catalogue.deallocate(
                    name, serverName: serverName, placeholder: placeholder, cache: &backend.statementCache)
            } else {
                catalogue.deallocateOther(name, cache: &backend.statementCache)
            }
        }
        if let (name, range) = resets.executed, let statement = catalogue[name] {
            // SQL EXECUTE of a statement the client prepared with the protocol: the backend
            // knows it by the proxy's name (prepared there first if it lacks it).
            var serverName = prepare(statement, client: name, on: backend)
            if catalogue.resultTypeChanged(statement, cache: backend.statementCache) {
                serverName = StatementMessages.missingName
                watch.changedResultType = true
            }
            if let query = try? PGFrontend.Query(message.frame.body),
               let rewritten = StatementMessages.executeText(query.sql, naming: range, as: serverName)
            {
                bytes = ByteBuffer()
                bytes.writeInteger(PGMessageType.Frontend.query)
                bytes.writeInteger(Int32(4 + rewritten.readableBytes + 1))
                bytes.writeImmutableBuffer(rewritten)
                bytes.writeInteger(UInt8(0))
                watch.executed = name
            }
        }
        backend.write(bytes)
        appendPending(.resetQuery(watch))
    }

    /// What every reset does as it is sent: the statement cache is made safe before it runs,
    /// the statements it removes leave the client's (see `ResetWatch.removed`), and the
    /// parameters it resets are watched (`ResetWindow`).
    func beginReset(_ resets: Resets, on backend: BackendConnection) -> ResetWatch {
        var watch = ResetWatch(resets: resets)
        if !resets.kinds.isDisjoint(with: [.discardAll, .deallocateAll]) {
            watch.removed = catalogue.removeAll(cache: &backend.statementCache)
        }
        if !resets.kinds.isDisjoint(with: [.resetAll, .discardAll]) {
            openResetWindow(parameters: nil, resets: resets)
        } else if resets.kinds.contains(.resetParameter) {
            openResetWindow(parameters: Set(resets.parameters), resets: resets)
        }
        return watch
    }

    /// Called just before the reset's message is recorded in `responses`.
    func openResetWindow(parameters: Set<String>?, resets: Resets) {
        if resetWindow != nil {
            // Two resets in one batch: the window covers both.
            if let more = parameters, let current = resetWindow!.parameters {
                resetWindow!.parameters = current.union(more)
            } else {
                resetWindow!.parameters = nil
            }
            return
        }
        resetWindow = ResetWindow(parameters: parameters, before: desiredParameters, syncsBefore: responses.syncPointsPending, resets: resets)
    }


    // MARK: Session resets

    /// A CommandComplete of a statement that resets session state: what PostgreSQL has now done
    /// is applied to the client's state as the proxy models it. Prepared statements and cursors
    /// are not transactional, so this happens at once.
    func applyResetAtCompletion(_ watch: ResetWatch, tag: ByteBuffer, backend: BackendConnection) {
        var tag = tag
        guard let text = tag.pgReadCStringSlice() else { return }
        switch String(buffer: text) {
        case "DEALLOCATE ALL":
            statementResetConfirmed = true
            unpin(.sqlPrepare, for: watch.resets)
        case "DISCARD ALL":
            // Everything of the session is gone but a loaded library (DISCARD ALL is CLOSE ALL,
            // SET SESSION AUTHORIZATION DEFAULT, RESET ALL, DEALLOCATE ALL, UNLISTEN *,
            // pg_advisory_unlock_all(), DISCARD PLANS, TEMP and SEQUENCES).
            statementResetConfirmed = true
            resetWindow?.discarded = true
            unpin(PinReasons.all.subtracting(.load), for: watch.resets)
        case "DEALLOCATE":
            if watch.deallocated != nil { statementResetConfirmed = true }
        case "CLOSE CURSOR ALL":
            unpin(.cursorWithHold, for: watch.resets)
        case "DISCARD TEMP":
            unpin(.temporaryObject, for: watch.resets)
        case "DISCARD SEQUENCES":
            unpin(.sequenceFunction, for: watch.resets)
        default:
            break
        }
    }

    /// The ReadyForQuery that ends a simple Query with resets: those that take effect with the
    /// whole query (or at commit) are applied if nothing in it failed.
    func applyResetAtReady(_ watch: ResetWatch, status: PGTransactionStatus, backend: BackendConnection) {
        let failed = resetQueryFailed
        resetQueryFailed = false
        if !statementResetConfirmed { catalogue.restoreStatements(of: watch) }
        statementResetConfirmed = false
        guard !failed else { return }
        // UNLISTEN takes effect at commit.
        if watch.resets.kinds.contains(.unlistenAll), status == .idle { unpin(.listen, for: watch.resets) }
        if watch.resets.kinds.contains(.advisoryUnlockAll) { unpin(.advisoryLock, for: watch.resets) }
    }

    /// At the ReadyForQuery after a RESET ALL or DISCARD ALL (`SessionParameters.closeResetWindow`
    /// decides): the client gets the ParameterStatus messages a direct session would have sent,
    /// the backend is brought to the client's values before its next message (or at its next
    /// lease), and the parameters the reset removed stop pinning.
    func closeResetWindow(status: PGTransactionStatus, context: ChannelHandlerContext, backend: BackendConnection) {
        guard let window = resetWindow else { return }
        resetWindow = nil
        let closed = parameters.closeResetWindow(window, status: status, template: runtime.loginState(for: poolKey).template)
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
        if closed.reports.readableBytes > 0 { context.write(wrapOutboundOut(closed.reports), promise: nil) }
    }
}
