import NIOCore
import PostgresWire
import SQLClassifier

// Session resets (RESET ALL, DISCARD ALL, DEALLOCATE, CLOSE ALL, ...): the reset query sent, its
// window of ParameterStatus messages opened, and what its outcome does to the client's
// statements and pins. (The window's close, which needs the login template and the backend's
// record of its parameters, is the handler's: `SessionParameters.closeResetWindow` decides.)
extension ClientSessionMachine {
    /// A simple Query with a statement that resets session state: the statement cache is made
    /// safe before it runs, and its outcome is watched (`applyResetAtCompletion`,
    /// `applyResetAtReady`).
    mutating func sendResetQuery(
        _ message: HeldMessage, unnamedBefore: UnnamedBefore? = nil, cache: inout BackendStatementCache,
        allocator: ByteBufferAllocator, write: BackendWrite
    ) {
        let resets = message.resets
        var bytes = message.frame.bytes
        var watch = beginReset(resets, cache: &cache)
        watch.unnamedBefore = unnamedBefore
        if resets.kinds.contains(.deallocate), let name = resets.deallocated {
            if let statement = catalogue[name] {
                // The client's statement is known to the backend by the proxy's name: deallocate
                // that one. A backend without it deallocates the proxy's placeholder instead
                // (prepared first: a Parse that cannot fail, where one of the client's text
                // could, and would make PostgreSQL skip this Query). Either way the outcome is
                // PostgreSQL's: success, or the error of an aborted transaction.
                let serverName: String
                let placeholder = !catalogue.backendHasCopy(of: statement, cache: cache)
                if !placeholder {
                    serverName = prepare(statement, client: name, cache: &cache, allocator: allocator, write: write)
                } else {
                    serverName = StatementMessages.placeholderName
                    closeBeforeParse(serverName, allocator: allocator, write: write)
                    write(StatementMessages.parse(
                        name: serverName, definition: StatementMessages.placeholderDefinition, allocator: allocator))
                    responses.sent(.injectedPlaceholder)
                }
                bytes = ByteBuffer()
                PGEncode.query("DEALLOCATE " + ParameterSync.quoteIdentifier(serverName), into: &bytes)
                watch.deallocated = name
                watch.removed[name] = catalogue.deallocate(name, serverName: serverName, placeholder: placeholder, cache: &cache)
            } else {
                catalogue.deallocateOther(name, cache: &cache)
            }
        }
        if let (name, range) = resets.executed, let statement = catalogue[name] {
            // SQL EXECUTE of a statement the client prepared with the protocol: the backend
            // knows it by the proxy's name (prepared there first if it lacks it).
            var serverName = prepare(statement, client: name, cache: &cache, allocator: allocator, write: write)
            if catalogue.resultTypeChanged(statement, cache: cache) {
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
        write(bytes)
        responses.sent(.resetQuery(watch))
    }

    /// What every reset does as it is sent: the statement cache is made safe before it runs,
    /// the statements it removes leave the client's (see `ResetWatch.removed`), and the
    /// parameters it resets are watched (`ResetWindow`).
    mutating func beginReset(_ resets: Resets, cache: inout BackendStatementCache) -> ResetWatch {
        var watch = ResetWatch(resets: resets)
        if !resets.kinds.isDisjoint(with: [.discardAll, .deallocateAll]) {
            watch.removed = catalogue.removeAll(cache: &cache)
        }
        if !resets.kinds.isDisjoint(with: [.resetAll, .discardAll]) {
            openResetWindow(parameters: nil, resets: resets)
        } else if resets.kinds.contains(.resetParameter) {
            openResetWindow(parameters: Set(resets.parameters), resets: resets)
        }
        return watch
    }

    /// Called just before the reset's message is recorded in `responses`.
    mutating func openResetWindow(parameters names: Set<String>?, resets: Resets) {
        if resetWindow != nil {
            // Two resets in one batch: the window covers both.
            if let more = names, let current = resetWindow!.parameters {
                resetWindow!.parameters = current.union(more)
            } else {
                resetWindow!.parameters = nil
            }
            return
        }
        resetWindow = ResetWindow(
            parameters: names, before: parameters.current, syncsBefore: responses.syncPointsPending, resets: resets)
    }

    // MARK: The outcome

    /// A CommandComplete (its `tag`) of a statement that resets session state: what PostgreSQL
    /// has now done is applied to the client's state as the proxy models it. Prepared statements
    /// and cursors are not transactional, so this happens at once. Returns the pin reasons
    /// released (for the log).
    public mutating func applyResetAtCompletion(_ watch: ResetWatch, tag: ByteBuffer) -> PinReasons {
        var tag = tag
        guard let text = tag.pgReadCStringSlice() else { return [] }
        switch String(buffer: text) {
        case "DEALLOCATE ALL":
            statementResetConfirmed = true
            return unpin(.sqlPrepare, for: watch.resets)
        case "DISCARD ALL":
            // Everything of the session is gone but a loaded library (DISCARD ALL is CLOSE ALL,
            // SET SESSION AUTHORIZATION DEFAULT, RESET ALL, DEALLOCATE ALL, UNLISTEN *,
            // pg_advisory_unlock_all(), DISCARD PLANS, TEMP and SEQUENCES).
            statementResetConfirmed = true
            resetWindow?.discarded = true
            return unpin(PinReasons.all.subtracting(.load), for: watch.resets)
        case "DEALLOCATE":
            if watch.deallocated != nil { statementResetConfirmed = true }
        case "CLOSE CURSOR ALL":
            return unpin(.cursorWithHold, for: watch.resets)
        case "DISCARD TEMP":
            return unpin(.temporaryObject, for: watch.resets)
        case "DISCARD SEQUENCES":
            return unpin(.sequenceFunction, for: watch.resets)
        default:
            break
        }
        return []
    }

    /// An Execute's CommandComplete of a portal that resets: as `applyResetAtCompletion`, and
    /// nothing is left to confirm at ReadyForQuery (the Execute succeeded).
    public mutating func applyResetAtExecuteCompletion(_ watch: ResetWatch, tag: ByteBuffer) -> PinReasons {
        let released = applyResetAtCompletion(watch, tag: tag)
        statementResetConfirmed = false
        return released
    }

    /// What `applyResetAtReady` released: UNLISTEN's pin, then the advisory locks' (each is
    /// logged as it was released).
    public struct ReadyUnpins: Equatable {
        public var listen: PinReasons = []
        public var advisoryLock: PinReasons = []

        public init(listen: PinReasons = [], advisoryLock: PinReasons = []) {
            self.listen = listen
            self.advisoryLock = advisoryLock
        }
    }

    /// The ReadyForQuery that ends a simple Query with resets: those that take effect with the
    /// whole query (or at commit) are applied if nothing in it failed.
    public mutating func applyResetAtReady(_ watch: ResetWatch, status: PGTransactionStatus) -> ReadyUnpins {
        var released = ReadyUnpins()
        let failed = resetQueryFailed
        resetQueryFailed = false
        if !statementResetConfirmed { catalogue.restoreStatements(of: watch) }
        statementResetConfirmed = false
        guard !failed else { return released }
        // UNLISTEN takes effect at commit.
        if watch.resets.kinds.contains(.unlistenAll), status == .idle { released.listen = unpin(.listen, for: watch.resets) }
        if watch.resets.kinds.contains(.advisoryUnlockAll) { released.advisoryLock = unpin(.advisoryLock, for: watch.resets) }
        return released
    }

    /// Releases `reasons` that a reset (`resets`) undid: not those its own statement pins, nor
    /// those pinned after it was classified (a LISTEN after an UNLISTEN * in the same write).
    /// Returns the reasons released.
    public mutating func unpin(_ reasons: PinReasons, for resets: Resets) -> PinReasons {
        pins.unpin(reasons, except: resets.pins, pinnedAfter: resets.pinClock)
    }
}
