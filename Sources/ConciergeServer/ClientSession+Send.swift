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

// Sending to the backend: named statements renamed and prepared where the backend lacks them
// (`StatementCatalogue` decides), `responses` told what the backend owes.
extension ClientSession {
    /// Sends one client message to the leased backend: named statements are renamed (and
    /// prepared on this backend first when it lacks them), Parse and Close of named statements
    /// may be answered by the proxy, and `responses` records what the backend owes.
    func send(_ message: HeldMessage, to backend: BackendConnection) {
        let frame = message.frame
        let type = frame.type
        if syncInsteadOfQuery, type == PGMessageType.Frontend.query {
            // See `syncInsteadOfQuery`: the error the client got answers its Query.
            syncInsteadOfQuery = false
            skippingUntilSync = false
            if responses.syncPointSent() { queryStarted = .now() }
            sentUnsynced = false
            // The Query ended the client's extended messages before it (messages after it may
            // have started new ones).
            pendingUnsynced = held.contains(where: { !Self.isSyncPoint($0.frame.type) })
            backend.write(StatementMessages.sync)
            appendPending(.query)
            return
        }
        if skippingUntilSync {
            guard type == PGMessageType.Frontend.sync else { return }  // PostgreSQL would skip it
            skippingUntilSync = false
        }
        if copyInActive {
            switch type {
            case PGMessageType.Frontend.sync, PGMessageType.Frontend.flush:
                backend.write(frame.bytes)  // ignored by PostgreSQL in copy-in mode: nothing owed
                return
            case PGMessageType.Frontend.copyDone, PGMessageType.Frontend.copyFail:
                copyInActive = false
                backend.write(frame.bytes)
                return
            default:
                break
            }
        }
        if Self.isSyncPoint(type) {
            if responses.syncPointSent() { queryStarted = .now() }
            sentUnsynced = false
        } else {
            sentUnsynced = true
        }
        switch type {
        case PGMessageType.Frontend.query, PGMessageType.Frontend.functionCall:
            var unnamedBefore: UnnamedBefore?
            if type == PGMessageType.Frontend.query {
                pendingSetting?.executed = true
                // A simple Query destroys the unnamed statement (unless PostgreSQL skips it).
                unnamedBefore = catalogue.simpleQuerySent(tracking: responses.isTracking)
            }
            if !message.resets.sets.isEmpty, resetWindow != nil, message.resets.isEmpty {
                resetWindow!.setAfter.formUnion(message.resets.sets)
            }
            if !message.resets.isEmpty || unnamedBefore != nil {
                sendResetQuery(message, unnamedBefore: unnamedBefore, to: backend)
            } else {
                backend.write(frame.bytes)
                appendPending(.query)
            }
        case PGMessageType.Frontend.sync:
            backend.write(frame.bytes)
            appendPending(.sync)
        case PGMessageType.Frontend.parse:
            sendParse(frame, resets: message.resets, to: backend)
        case PGMessageType.Frontend.bind:
            sendBind(frame, to: backend)
        case PGMessageType.Frontend.describe:
            // A malformed Describe goes as it came: PostgreSQL answers it with its error.
            let describe = try? PGFrontend.describe(frame.body)
            if let describe, describe.kind == .statement, describe.name.readableBytes > 0,
               let statement = catalogue[String(buffer: describe.name)]
            {
                let serverName = prepare(statement, client: String(buffer: describe.name), on: backend)
                if catalogue.resultTypeChanged(statement, cache: backend.statementCache) {
                    backend.write(StatementMessages.describeStatement(StatementMessages.missingName, allocator: backend.allocator))
                    appendPending(.changedResultType)
                } else {
                    backend.write(StatementMessages.describeStatement(serverName, allocator: backend.allocator))
                    appendPending(.describeStatement)
                }
            } else {
                if describe?.isUnnamedStatement == true { ensureUnnamedStatement(on: backend) }
                backend.write(frame.bytes)
                appendPending(describe?.kind == .statement ? .describeStatement : .describePortal)
            }
        case PGMessageType.Frontend.execute:
            pendingSetting?.executed = true
            // A malformed Execute (PostgreSQL answers it with its error) runs no portal.
            let portal = (try? PGFrontend.Execute(frame.body))?.portal ?? ByteBuffer()
            var reset: ResetWatch?
            if let resets = catalogue.resets(ofPortal: portal) {
                // A reset through the extended protocol.
                reset = beginReset(resets, on: backend)
            }
            backend.write(frame.bytes)
            appendPending(.execute(serverName: catalogue.serverName(ofPortal: portal), reset: reset))
        case PGMessageType.Frontend.close:
            // A malformed Close goes as it came: PostgreSQL answers it with its error.
            let close = try? PGFrontend.close(frame.body)
            if let close, close.kind == .statement, close.name.readableBytes > 0 {
                // The backend keeps the statement for whoever prepares the same query next.
                let client = String(buffer: close.name)
                appendPending(.localCloseComplete(client: client, removed: catalogue.remove(client)))
            } else {
                var unnamedBefore: UnnamedBefore?
                if close?.isUnnamedStatement == true {
                    // Close of the unnamed statement: the client has none from now on.
                    unnamedBefore = catalogue.unnamedClosed()
                }
                backend.write(frame.bytes)
                appendPending(.close(unnamedBefore: unnamedBefore))
            }
        case PGMessageType.Frontend.copyDone, PGMessageType.Frontend.copyFail:
            backend.write(frame.bytes)
            if responses.isTracking { appendPending(.copyEnd) }
        default:
            // Flush, CopyData: no response of their own.
            backend.write(frame.bytes)
        }
        emitLocalResponses()
    }

    func sendParse(_ frame: PGFrame, resets: Resets, to backend: BackendConnection) {
        // Valid: `handleDataMessage` refused the client a malformed Parse.
        let parse = try? PGFrontend.Parse(frame.body)
        let body = parse?.definition ?? frame.body
        guard let name = parse?.name, name.readableBytes > 0 else {
            if let definition = executeRewritten(body, resets: resets, on: backend) {
                backend.write(StatementMessages.parse(name: "", definition: definition, allocator: backend.allocator))
            } else {
                backend.write(frame.bytes)
            }
            appendPending(.unnamedParse(catalogue.unnamedParsed(body, resets: resets)))
            return
        }
        let clientName = String(buffer: name)
        let statement: ClientStatement, serverName: String
        switch catalogue.parse(
            client: clientName, definition: body, resets: resets, searchPath: desiredParameters["search_path"],
            cache: &backend.statementCache)
        {
        case .duplicate(let placeholder):
            // The name is in use: refused on the placeholder (`StatementCatalogue.NamedParse`).
            closeBeforeParse(placeholder, on: backend)
            backend.write(StatementMessages.parse(
                name: placeholder, definition: StatementMessages.placeholderDefinition, allocator: backend.allocator))
            appendPending(.injectedPlaceholder)
            backend.write(StatementMessages.parse(name: placeholder, definition: body, allocator: backend.allocator))
            appendPending(.duplicateParse(serverName: placeholder, client: clientName))
            return
        case .define(let defined, let name):
            statement = defined
            serverName = name
        }
        // The Close before the Parse replaces the backend's copy for every client that uses it.
        let definition = executeRewritten(statement.definition, resets: resets, on: backend) ?? statement.definition
        closeBeforeParse(serverName, on: backend)
        backend.write(StatementMessages.parse(name: serverName, definition: definition, allocator: backend.allocator))
        appendPending(.parse(client: clientName, key: statement.key, serverName: serverName))
        describeShape(key: statement.key, serverName: serverName, parsedAt: statement.parsedAt, for: (clientName, statement.parsedAt), on: backend)
    }

    func sendBind(_ frame: PGFrame, to backend: BackendConnection) {
        guard let bind = try? PGFrontend.Bind(frame.body) else {
            backend.write(frame.bytes)  // malformed: the backend answers with the error
            appendPending(.bind(serverName: nil))
            return
        }
        let portal = bind.portal, name = bind.statement, body = bind.parametersAndFormats
        guard name.readableBytes > 0, let statement = catalogue[String(buffer: name)] else {
            // The unnamed statement, or a name the client never prepared: PostgreSQL answers
            // (`prepared statement "..." does not exist` names the client's statement).
            if name.readableBytes == 0 {
                ensureUnnamedStatement(on: backend)
                // A lone SET is followed (`pendingSetting`) in the batch that parses it; bound
                // again in a later batch, it pins as any SET would.
                if pendingSetting == nil { repin(catalogue.unnamedResets) }
            }
            backend.write(frame.bytes)
            catalogue.boundWithoutStatement(portal: portal, unnamed: name.readableBytes == 0)
            appendPending(.bind(serverName: nil))
            return
        }
        catalogue.notePortalResets(statement.resets, portal: portal)
        repin(statement.resets)
        let clientName = String(buffer: name)
        let serverName = prepare(statement, client: clientName, on: backend)
        if catalogue.resultTypeChanged(statement, cache: backend.statementCache) {
            backend.write(StatementMessages.bind(portal: portal, statement: StatementMessages.missingName, rest: body, allocator: backend.allocator))
            catalogue.bound(portal: portal, serverName: nil)
            appendPending(.changedResultType)
            return
        }
        backend.write(StatementMessages.bind(portal: portal, statement: serverName, rest: body, allocator: backend.allocator))
        catalogue.bound(portal: portal, serverName: serverName)
        appendPending(.bind(serverName: serverName, client: clientName))
    }

    /// Before a Bind or Describe of one of the client's named statements whose row type is
    /// known (or a Query that executes one): whether the proxy must first parse it on this
    /// backend with a Describe (`StatementCatalogue.statementToCheckFirst`); if so it does, and
    /// the message (and everything after it) waits for that answer.
    func mustCheckResultTypeFirst(_ message: HeldMessage, on backend: BackendConnection) -> Bool {
        guard !skippingUntilSync, !copyInActive, !catalogue.statements.isEmpty,
              let (statement, client) = catalogue.statementToCheckFirst(
                frameType: message.frame.type, body: message.frame.body, resets: message.resets, cache: &backend.statementCache)
        else { return false }
        prepareAndWait(statement, client: client, on: backend)
        // SQL `EXECUTE name`: a failed Parse of the statement would make PostgreSQL skip the
        // Query, which must still be answered (`syncInsteadOfQuery`).
        preparingForQuery = message.frame.type == PGMessageType.Frontend.query
        return true
    }

    /// Parses `statement` on the backend with a Describe, and makes the client's messages wait
    /// for the answer (`StatementCatalogue.awaitingShape`).
    func prepareAndWait(_ statement: ClientStatement, client: String, on backend: BackendConnection) {
        let parsedAt = injectParse(statement, client: client, waiting: true, on: backend).parsedAt
        // PostgreSQL answers only at a Sync or Flush, and the client's may be among the
        // messages that now wait.
        backend.write(StatementMessages.flush)
        backend.flush()
        catalogue.awaitShape(key: statement.key, parsedAt: parsedAt)
    }

    /// The Describe after a Parse of a named statement (see `PendingResponse.shapeDescribe`).
    func describeShape(
        key: String, serverName: String, parsedAt: UInt64, for client: (name: String, parsedAt: UInt64)? = nil,
        waiting: Bool = false, on backend: BackendConnection
    ) {
        backend.write(StatementMessages.describeStatement(serverName, allocator: backend.allocator))
        appendPending(.shapeDescribe(
            key: key, serverName: serverName, parsedAt: parsedAt, client: client?.name, clientParsedAt: client?.parsedAt ?? 0,
            waiting: waiting))
    }

    /// A statement that pinned when parsed pins again when bound: a reset since its Parse released
    /// that pin, and running it puts the session state back (`SET work_mem` prepared, `RESET
    /// ALL`, then executed).
    func repin(_ resets: Resets) {
        guard !resets.pins.isEmpty else { return }
        pin(resets.pins, statement: ByteBuffer(string: "(a prepared statement)"))
    }

    /// An unnamed statement whose text is `EXECUTE name` of one of the client's protocol-level
    /// statements (asyncpg's `fetchval('EXECUTE foobar')`): its definition with the backend's name
    /// for it, prepared there first if needed; nil when there is nothing to rewrite.
    func executeRewritten(_ definition: ByteBuffer, resets: Resets, on backend: BackendConnection) -> ByteBuffer? {
        guard let (name, range) = resets.executed, let statement = catalogue[name] else { return nil }
        guard let parse = try? PGFrontend.Parse(definition: definition), range.upperBound <= parse.query.readableBytes else { return nil }
        let serverName = prepare(statement, client: name, on: backend)
        guard var out = StatementMessages.executeText(parse.query, naming: range, as: serverName) else { return nil }
        out.writeInteger(UInt8(0))
        out.writeInteger(UInt16(parse.parameterTypes.count))
        out.writeImmutableBuffer(parse.parameterTypes.oids)
        return out
    }

    /// Before a Bind or Describe of the unnamed statement on a backend that may hold another
    /// client's: the client's own is prepared there (its ParseComplete dropped), or, if the
    /// client has none, the backend's is closed, so PostgreSQL answers as it would directly.
    func ensureUnnamedStatement(on backend: BackendConnection) {
        switch catalogue.ensureUnnamed() {
        case .ready:
            return
        case .parse(let definition):
            let definition = executeRewritten(definition, resets: catalogue.unnamedResets, on: backend) ?? definition
            backend.write(StatementMessages.parse(name: "", definition: definition, allocator: backend.allocator))
            appendPending(.injectedParse(client: nil, key: "", serverName: ""))
        case .close:
            var close = backend.allocator.buffer(capacity: 7)
            StatementMessages.closeStatement("", into: &close)
            backend.write(close)
            appendPending(.injectedClose(unnamed: true))
        }
    }

    /// The server-side name of `statement` on `backend`, preparing it there first if needed
    /// (its ParseComplete will be dropped).
    func prepare(_ statement: ClientStatement, client: String, on backend: BackendConnection) -> String {
        if let serverName = catalogue.useCopy(of: statement, client: client, cache: &backend.statementCache) {
            return serverName
        }
        return injectParse(statement, client: client, waiting: false, on: backend).serverName
    }

    /// Parses the client's `statement` on the backend under the proxy's name (a Close first, its
    /// ParseComplete dropped), with the Describe that records its row type (`waiting`: the
    /// client's messages wait for that answer). A statement the proxy acknowledged without a
    /// backend gets its row type from its first Parse on one: what the client sees first.
    func injectParse(
        _ statement: ClientStatement, client: String, waiting: Bool, on backend: BackendConnection
    ) -> (serverName: String, parsedAt: UInt64) {
        let definition = executeRewritten(statement.definition, resets: statement.resets, on: backend) ?? statement.definition
        let (serverName, parsedAt) = catalogue.injectParse(of: statement, client: client, cache: &backend.statementCache)
        closeBeforeParse(serverName, on: backend)
        backend.write(StatementMessages.parse(name: serverName, definition: definition, allocator: backend.allocator))
        appendPending(.injectedParse(client: client, key: statement.key, serverName: serverName, quiet: statement.analysed))
        describeShape(
            key: statement.key, serverName: serverName, parsedAt: parsedAt,
            for: statement.shape == nil ? (client, statement.parsedAt) : nil, waiting: waiting, on: backend)
        return (serverName, parsedAt)
    }

    /// A Close of `serverName` ahead of its Parse (see `PendingResponse.injectedClose`): one
    /// small message per statement and backend, the first time the backend needs it.
    func closeBeforeParse(_ serverName: String, on backend: BackendConnection) {
        var close = backend.allocator.buffer(capacity: 8 + serverName.utf8.count)
        StatementMessages.closeStatement(serverName, into: &close)
        backend.write(close)
        appendPending(.injectedClose())
    }

    func appendPending(_ entry: PendingResponse) {
        responses.sent(entry)
    }

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
