import NIOCore
import PostgresWire
import SQLClassifier

// Sending a client message to the attached backend: named statements renamed and prepared where
// the backend lacks them (`StatementCatalogue` decides), Parse and Close of named statements
// answered by the proxy, and `responses` told what the backend owes. The handler gives the
// backend's statement cache (`inout`), its allocator and a write that only writes to it; the
// machine writes what goes, in order, and says what the handler does next (`Sent`).
extension ClientSessionMachine {
    /// Writes one message to the backend (`BackendConnection.write`). It must not touch the
    /// session machine: it runs while one of the machine's mutating methods does.
    public typealias BackendWrite = (ByteBuffer) -> Void

    /// What the handler does once a message went to the backend.
    public struct Sent: Equatable {
        /// The first of the outstanding sync points went out: the response time starts now
        /// (QueryDatabaseResponseLatency).
        public var startsResponseTime = false
        /// Answer the proxy's entries now due at the head of `responses` (`popLocalAnswer`).
        public var answerLocally = false
        /// Pin reasons a Bind of a statement that pins added (see `repin`), for the log and the
        /// metrics; the statement is logged as "(a prepared statement)".
        public var newPins: PinReasons = []
        /// The session was not pinned before (`newPins` pins it).
        public var firstPin = false

        public init() {}
    }

    /// Sends one client message to the attached backend (`cache`: its statement cache): named
    /// statements are renamed (and prepared on this backend first when it lacks them), Parse and
    /// Close of named statements may be answered by the proxy, and `responses` records what the
    /// backend owes. The original bytes go unchanged unless a rewrite is needed.
    public mutating func send(
        _ message: HeldMessage, cache: inout BackendStatementCache, allocator: ByteBufferAllocator,
        write: BackendWrite
    ) -> Sent {
        var sent = Sent()
        let frame = message.frame
        let type = frame.type
        if syncInsteadOfQuery, type == PGMessageType.Frontend.query {
            // See `syncInsteadOfQuery`: the error the client got answers its Query.
            syncInsteadOfQuery = false
            skippingUntilSync = false
            sent.startsResponseTime = responses.syncPointSent()
            sentUnsynced = false
            // The Query ended the client's extended messages before it (messages after it may
            // have started new ones).
            pendingUnsynced = held.contains(where: { !Self.isSyncPoint($0.frame.type) })
            write(StatementMessages.sync)
            responses.sent(.query)
            return sent
        }
        if skippingUntilSync {
            guard type == PGMessageType.Frontend.sync else { return sent }  // PostgreSQL would skip it
            skippingUntilSync = false
        }
        if copyInActive {
            switch type {
            case PGMessageType.Frontend.sync, PGMessageType.Frontend.flush:
                write(frame.bytes)  // ignored by PostgreSQL in copy-in mode: nothing owed
                return sent
            case PGMessageType.Frontend.copyDone, PGMessageType.Frontend.copyFail:
                copyInActive = false
                write(frame.bytes)
                return sent
            default:
                break
            }
        }
        if Self.isSyncPoint(type) {
            sent.startsResponseTime = responses.syncPointSent()
            sentUnsynced = false
        } else {
            sentUnsynced = true
        }
        sent.answerLocally = true
        switch type {
        case PGMessageType.Frontend.query, PGMessageType.Frontend.functionCall:
            var unnamedBefore: UnnamedBefore?
            if type == PGMessageType.Frontend.query {
                parameters.pendingSetting?.executed = true
                // A simple Query destroys the unnamed statement (unless PostgreSQL skips it).
                unnamedBefore = catalogue.simpleQuerySent(tracking: responses.isTracking)
            }
            if !message.resets.sets.isEmpty, resetWindow != nil, message.resets.isEmpty {
                resetWindow!.setAfter.formUnion(message.resets.sets)
            }
            if !message.resets.isEmpty || unnamedBefore != nil {
                sendResetQuery(message, unnamedBefore: unnamedBefore, cache: &cache, allocator: allocator, write: write)
            } else {
                write(frame.bytes)
                responses.sent(.query)
            }
        case PGMessageType.Frontend.sync:
            write(frame.bytes)
            responses.sent(.sync)
        case PGMessageType.Frontend.parse:
            sendParse(frame, resets: message.resets, cache: &cache, allocator: allocator, write: write)
        case PGMessageType.Frontend.bind:
            sendBind(frame, into: &sent, cache: &cache, allocator: allocator, write: write)
        case PGMessageType.Frontend.describe:
            // A malformed Describe goes as it came: PostgreSQL answers it with its error.
            let describe = try? PGFrontend.describe(frame.body)
            if let describe, describe.kind == .statement, describe.name.readableBytes > 0,
               let statement = catalogue[String(buffer: describe.name)]
            {
                let serverName = prepare(
                    statement, client: String(buffer: describe.name), cache: &cache, allocator: allocator, write: write)
                if catalogue.resultTypeChanged(statement, cache: cache) {
                    write(StatementMessages.describeStatement(StatementMessages.missingName, allocator: allocator))
                    responses.sent(.changedResultType)
                } else {
                    write(StatementMessages.describeStatement(serverName, allocator: allocator))
                    responses.sent(.describeStatement)
                }
            } else {
                if describe?.isUnnamedStatement == true {
                    ensureUnnamedStatement(cache: &cache, allocator: allocator, write: write)
                }
                write(frame.bytes)
                responses.sent(describe?.kind == .statement ? .describeStatement : .describePortal)
            }
        case PGMessageType.Frontend.execute:
            parameters.pendingSetting?.executed = true
            // A malformed Execute (PostgreSQL answers it with its error) runs no portal.
            let portal = (try? PGFrontend.Execute(frame.body))?.portal ?? ByteBuffer()
            var reset: ResetWatch?
            if let resets = catalogue.resets(ofPortal: portal) {
                // A reset through the extended protocol.
                reset = beginReset(resets, cache: &cache)
            }
            write(frame.bytes)
            responses.sent(.execute(serverName: catalogue.serverName(ofPortal: portal), reset: reset))
        case PGMessageType.Frontend.close:
            // A malformed Close goes as it came: PostgreSQL answers it with its error.
            let close = try? PGFrontend.close(frame.body)
            if let close, close.kind == .statement, close.name.readableBytes > 0 {
                // The backend keeps the statement for whoever prepares the same query next.
                let client = String(buffer: close.name)
                responses.sent(.localCloseComplete(client: client, removed: catalogue.remove(client)))
            } else {
                var unnamedBefore: UnnamedBefore?
                if close?.isUnnamedStatement == true {
                    // Close of the unnamed statement: the client has none from now on.
                    unnamedBefore = catalogue.unnamedClosed()
                }
                write(frame.bytes)
                responses.sent(.close(unnamedBefore: unnamedBefore))
            }
        case PGMessageType.Frontend.copyDone, PGMessageType.Frontend.copyFail:
            write(frame.bytes)
            if responses.isTracking { responses.sent(.copyEnd) }
        default:
            // Flush, CopyData: no response of their own.
            write(frame.bytes)
        }
        return sent
    }

    mutating func sendParse(
        _ frame: PGFrame, resets: Resets, cache: inout BackendStatementCache, allocator: ByteBufferAllocator,
        write: BackendWrite
    ) {
        // Valid: `frontendMessage` refused the client a malformed Parse.
        let parse = try? PGFrontend.Parse(frame.body)
        let body = parse?.definition ?? frame.body
        guard let name = parse?.name, name.readableBytes > 0 else {
            if let definition = executeRewritten(body, resets: resets, cache: &cache, allocator: allocator, write: write) {
                write(StatementMessages.parse(name: "", definition: definition, allocator: allocator))
            } else {
                write(frame.bytes)
            }
            responses.sent(.unnamedParse(catalogue.unnamedParsed(body, resets: resets)))
            return
        }
        let clientName = String(buffer: name)
        let statement: ClientStatement, serverName: String
        switch catalogue.parse(
            client: clientName, definition: body, resets: resets, searchPath: parameters.current["search_path"],
            cache: &cache)
        {
        case .duplicate(let placeholder):
            // The name is in use: refused on the placeholder (`StatementCatalogue.NamedParse`).
            closeBeforeParse(placeholder, allocator: allocator, write: write)
            write(StatementMessages.parse(
                name: placeholder, definition: StatementMessages.placeholderDefinition, allocator: allocator))
            responses.sent(.injectedPlaceholder)
            write(StatementMessages.parse(name: placeholder, definition: body, allocator: allocator))
            responses.sent(.duplicateParse(serverName: placeholder, client: clientName))
            return
        case .define(let defined, let name):
            statement = defined
            serverName = name
        }
        // The Close before the Parse replaces the backend's copy for every client that uses it.
        let definition = executeRewritten(
            statement.definition, resets: resets, cache: &cache, allocator: allocator, write: write) ?? statement.definition
        closeBeforeParse(serverName, allocator: allocator, write: write)
        write(StatementMessages.parse(name: serverName, definition: definition, allocator: allocator))
        responses.sent(.parse(client: clientName, key: statement.key, serverName: serverName))
        describeShape(
            key: statement.key, serverName: serverName, parsedAt: statement.parsedAt, for: (clientName, statement.parsedAt),
            allocator: allocator, write: write)
    }

    mutating func sendBind(
        _ frame: PGFrame, into sent: inout Sent, cache: inout BackendStatementCache, allocator: ByteBufferAllocator,
        write: BackendWrite
    ) {
        guard let bind = try? PGFrontend.Bind(frame.body) else {
            write(frame.bytes)  // malformed: the backend answers with the error
            responses.sent(.bind(serverName: nil))
            return
        }
        let portal = bind.portal, name = bind.statement, body = bind.parametersAndFormats
        guard name.readableBytes > 0, let statement = catalogue[String(buffer: name)] else {
            // The unnamed statement, or a name the client never prepared: PostgreSQL answers
            // (`prepared statement "..." does not exist` names the client's statement).
            if name.readableBytes == 0 {
                ensureUnnamedStatement(cache: &cache, allocator: allocator, write: write)
                // A lone SET is followed (`pendingSetting`) in the batch that parses it; bound
                // again in a later batch, it pins as any SET would.
                if parameters.pendingSetting == nil { repin(catalogue.unnamedResets, into: &sent) }
            }
            write(frame.bytes)
            catalogue.boundWithoutStatement(portal: portal, unnamed: name.readableBytes == 0)
            responses.sent(.bind(serverName: nil))
            return
        }
        catalogue.notePortalResets(statement.resets, portal: portal)
        repin(statement.resets, into: &sent)
        let clientName = String(buffer: name)
        let serverName = prepare(statement, client: clientName, cache: &cache, allocator: allocator, write: write)
        if catalogue.resultTypeChanged(statement, cache: cache) {
            write(StatementMessages.bind(portal: portal, statement: StatementMessages.missingName, rest: body, allocator: allocator))
            catalogue.bound(portal: portal, serverName: nil)
            responses.sent(.changedResultType)
            return
        }
        write(StatementMessages.bind(portal: portal, statement: serverName, rest: body, allocator: allocator))
        catalogue.bound(portal: portal, serverName: serverName)
        responses.sent(.bind(serverName: serverName, client: clientName))
    }

    /// A statement that pinned when parsed pins again when bound: a reset since its Parse released
    /// that pin, and running it puts the session state back (`SET work_mem` prepared, `RESET
    /// ALL`, then executed).
    mutating func repin(_ resets: Resets, into sent: inout Sent) {
        guard !resets.pins.isEmpty else { return }
        let first = !pins.isPinned
        let new = pins.pin(resets.pins)
        guard !new.isEmpty else { return }
        sent.newPins = new
        sent.firstPin = first
    }

    // MARK: Statements the backend must have first

    /// Before a Bind or Describe of one of the client's named statements whose row type is
    /// known (or a Query that executes one): whether the proxy must first parse it on this
    /// backend with a Describe (`StatementCatalogue.statementToCheckFirst`); if so it writes that
    /// (ending with a Flush, which the handler must flush now), and the message (and everything
    /// after it) waits for that answer.
    public mutating func mustCheckResultTypeFirst(
        _ message: HeldMessage, cache: inout BackendStatementCache, allocator: ByteBufferAllocator, write: BackendWrite
    ) -> Bool {
        guard !skippingUntilSync, !copyInActive, !catalogue.statements.isEmpty,
              let (statement, client) = catalogue.statementToCheckFirst(
                frameType: message.frame.type, body: message.frame.body, resets: message.resets, cache: &cache)
        else { return false }
        prepareAndWait(statement, client: client, cache: &cache, allocator: allocator, write: write)
        // SQL `EXECUTE name`: a failed Parse of the statement would make PostgreSQL skip the
        // Query, which must still be answered (`syncInsteadOfQuery`).
        preparingForQuery = message.frame.type == PGMessageType.Frontend.query
        return true
    }

    /// Parses `statement` on the backend with a Describe, and makes the client's messages wait
    /// for the answer (`StatementCatalogue.awaitingShape`).
    mutating func prepareAndWait(
        _ statement: ClientStatement, client: String, cache: inout BackendStatementCache, allocator: ByteBufferAllocator,
        write: BackendWrite
    ) {
        let parsedAt = injectParse(statement, client: client, waiting: true, cache: &cache, allocator: allocator, write: write)
            .parsedAt
        // PostgreSQL answers only at a Sync or Flush, and the client's may be among the
        // messages that now wait.
        write(StatementMessages.flush)
        catalogue.awaitShape(key: statement.key, parsedAt: parsedAt)
    }

    /// The Describe after a Parse of a named statement (see `PendingResponse.shapeDescribe`).
    mutating func describeShape(
        key: String, serverName: String, parsedAt: UInt64, for client: (name: String, parsedAt: UInt64)? = nil,
        waiting: Bool = false, allocator: ByteBufferAllocator, write: BackendWrite
    ) {
        write(StatementMessages.describeStatement(serverName, allocator: allocator))
        responses.sent(.shapeDescribe(
            key: key, serverName: serverName, parsedAt: parsedAt, client: client?.name, clientParsedAt: client?.parsedAt ?? 0,
            waiting: waiting))
    }

    /// An unnamed statement whose text is `EXECUTE name` of one of the client's protocol-level
    /// statements (asyncpg's `fetchval('EXECUTE foobar')`): its definition with the backend's name
    /// for it, prepared there first if needed; nil when there is nothing to rewrite.
    mutating func executeRewritten(
        _ definition: ByteBuffer, resets: Resets, cache: inout BackendStatementCache, allocator: ByteBufferAllocator,
        write: BackendWrite
    ) -> ByteBuffer? {
        guard let (name, range) = resets.executed, let statement = catalogue[name] else { return nil }
        guard let parse = try? PGFrontend.Parse(definition: definition), range.upperBound <= parse.query.readableBytes else { return nil }
        let serverName = prepare(statement, client: name, cache: &cache, allocator: allocator, write: write)
        guard var out = StatementMessages.executeText(parse.query, naming: range, as: serverName) else { return nil }
        out.writeInteger(UInt8(0))
        out.writeInteger(UInt16(parse.parameterTypes.count))
        out.writeImmutableBuffer(parse.parameterTypes.oids)
        return out
    }

    /// Before a Bind or Describe of the unnamed statement on a backend that may hold another
    /// client's: the client's own is prepared there (its ParseComplete dropped), or, if the
    /// client has none, the backend's is closed, so PostgreSQL answers as it would directly.
    mutating func ensureUnnamedStatement(
        cache: inout BackendStatementCache, allocator: ByteBufferAllocator, write: BackendWrite
    ) {
        switch catalogue.ensureUnnamed() {
        case .ready:
            return
        case .parse(let definition):
            let definition = executeRewritten(
                definition, resets: catalogue.unnamedResets, cache: &cache, allocator: allocator, write: write) ?? definition
            write(StatementMessages.parse(name: "", definition: definition, allocator: allocator))
            responses.sent(.injectedParse(client: nil, key: "", serverName: ""))
        case .close:
            var close = allocator.buffer(capacity: 7)
            StatementMessages.closeStatement("", into: &close)
            write(close)
            responses.sent(.injectedClose(unnamed: true))
        }
    }

    /// The server-side name of `statement` on the backend, preparing it there first if needed
    /// (its ParseComplete will be dropped).
    mutating func prepare(
        _ statement: ClientStatement, client: String, cache: inout BackendStatementCache, allocator: ByteBufferAllocator,
        write: BackendWrite
    ) -> String {
        if let serverName = catalogue.useCopy(of: statement, client: client, cache: &cache) {
            return serverName
        }
        return injectParse(statement, client: client, waiting: false, cache: &cache, allocator: allocator, write: write)
            .serverName
    }

    /// Parses the client's `statement` on the backend under the proxy's name (a Close first, its
    /// ParseComplete dropped), with the Describe that records its row type (`waiting`: the
    /// client's messages wait for that answer). A statement the proxy acknowledged without a
    /// backend gets its row type from its first Parse on one: what the client sees first.
    mutating func injectParse(
        _ statement: ClientStatement, client: String, waiting: Bool, cache: inout BackendStatementCache,
        allocator: ByteBufferAllocator, write: BackendWrite
    ) -> (serverName: String, parsedAt: UInt64) {
        let definition = executeRewritten(
            statement.definition, resets: statement.resets, cache: &cache, allocator: allocator, write: write)
            ?? statement.definition
        let (serverName, parsedAt) = catalogue.injectParse(of: statement, client: client, cache: &cache)
        closeBeforeParse(serverName, allocator: allocator, write: write)
        write(StatementMessages.parse(name: serverName, definition: definition, allocator: allocator))
        responses.sent(.injectedParse(client: client, key: statement.key, serverName: serverName, quiet: statement.analysed))
        describeShape(
            key: statement.key, serverName: serverName, parsedAt: parsedAt,
            for: statement.shape == nil ? (client, statement.parsedAt) : nil, waiting: waiting, allocator: allocator,
            write: write)
        return (serverName, parsedAt)
    }

    /// A Close of `serverName` ahead of its Parse (see `PendingResponse.injectedClose`): one
    /// small message per statement and backend, the first time the backend needs it.
    mutating func closeBeforeParse(_ serverName: String, allocator: ByteBufferAllocator, write: BackendWrite) {
        var close = allocator.buffer(capacity: 8 + serverName.utf8.count)
        StatementMessages.closeStatement(serverName, into: &close)
        write(close)
        responses.sent(.injectedClose())
    }

    // MARK: Waiting for earlier batches

    /// Whether `message` touches the client's statements while an earlier batch (before a
    /// Sync, or a simple Query) that may still change them is unanswered. PostgreSQL decides
    /// that earlier batch's fate (an error skips the rest of it); within one batch the proxy's
    /// bookkeeping follows skips, but a message of a later batch sent before the answer would be
    /// sent according to a guess.
    public func mustWaitForEarlierBatches(_ message: HeldMessage) -> Bool {
        // Nothing unanswered: nothing can change any more (and never wait on a stale entry).
        if catalogue.awaitingShape { return true }
        guard responses.isTracking, responses.outstandingSyncs > 0 else { return false }
        if resetWindow != nil {
            // One parameter reset at a time: its ParameterStatus messages are told apart by the
            // ReadyForQuery that ends it (`ResetWindow`).
            if !message.resets.kinds.isDisjoint(with: [.resetAll, .discardAll, .resetParameter]) { return true }
            if message.frame.type == PGMessageType.Frontend.execute, !catalogue.portalResets.isEmpty { return true }
            // A later batch runs once the reset is answered and the backend has the client's
            // values again (a resync inside that batch's transaction would roll back with it).
            if responses.syncPointsPending > 0 {
                return true
            }
        }
        switch message.frame.type {
        case PGMessageType.Frontend.parse, PGMessageType.Frontend.bind, PGMessageType.Frontend.describe,
            PGMessageType.Frontend.close:
            break
        case PGMessageType.Frontend.query, PGMessageType.Frontend.execute:
            guard !message.resets.isEmpty || !catalogue.portalResets.isEmpty else { return false }
        default:
            return false
        }
        // An uncertain entry in a batch that has ended.
        return responses.uncertainBatchPending
    }
}

// MARK: Taking messages for the attached backend
//
// Why these are `mutating` and do the whole decision at once: the handler keeps the machine as a
// stored property of a class, and a non-mutating method of another module called on it gets a
// copy of the whole machine (every array and dictionary in it retained and released) so that
// the callee sees a stable value. Measured at about 1.5% of the proxy's CPU in extended-protocol
// select-only (two copies per message). A mutating call works in place.
extension ClientSessionMachine {
    /// What `popSendable` found at the head of `held`.
    public enum HeldTake {
        /// Send this now (popped). `forced`: it had to wait for an earlier batch, but nothing in
        /// flight could free it, so it goes anyway (a client is never stalled on a guess).
        case send(HeldMessage, forced: Bool)
        /// The head waits for an earlier batch's answer, or for a row-type check. `flush`: the
        /// machine wrote that check (a Parse and Describe ending in a Flush), to flush now.
        case wait(flush: Bool)
        /// Nothing held, or no backend attached.
        case empty
    }

    /// Whether a message the client just sent may go straight to the attached backend
    /// (`mayTakeNow`, not waiting for an earlier batch, no row-type check first). A row-type
    /// check it needs is written (see `mustCheckResultTypeFirst`): the handler flushes then.
    /// Checked in this order: the check writes a Parse of its own.
    public mutating func takesNow(
        _ message: HeldMessage, cache: inout BackendStatementCache, allocator: ByteBufferAllocator, write: BackendWrite
    ) -> (takes: Bool, flush: Bool) {
        guard mayTakeNow, !mustWaitForEarlierBatches(message) else { return (false, false) }
        if mustCheckResultTypeFirst(message, cache: &cache, allocator: allocator, write: write) { return (false, true) }
        return (true, false)
    }

    /// The next held message that may go to the attached backend now, popped.
    /// `sentSinceForced`: a message went in this release without being forced; after that, a
    /// head that must wait does wait (what was sent may free it).
    public mutating func popSendable(
        sentSinceForced: Bool, cache: inout BackendStatementCache, allocator: ByteBufferAllocator, write: BackendWrite
    ) -> HeldTake {
        // Popped before it is looked at, and put back if it must wait: `held.first` would be a
        // copy (its buffer retained and released again), once per message sent.
        guard let message = popHeld() else { return .empty }
        var forced = false
        if mustWaitForEarlierBatches(message) {
            guard !sentSinceForced, responses.outstandingSyncs == 0, !catalogue.awaitingShape else {
                unpopHeld(message)
                return .wait(flush: false)
            }
            // Nothing in flight to wait for (cannot happen; never stall a client on it).
            forced = true
        } else if mustCheckResultTypeFirst(message, cache: &cache, allocator: allocator, write: write) {
            // A check just written is in flight: wait for it.
            unpopHeld(message)
            return .wait(flush: true)
        }
        return .send(message, forced: forced)
    }
}
