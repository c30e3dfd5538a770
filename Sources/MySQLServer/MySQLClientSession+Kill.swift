import Logging
import MySQLProxy
import MySQLWire
import NIOCore
import SQLClassifier

// Statements and commands the proxy answers itself because they name the client's connection to
// the proxy, not a backend's: `KILL` and COM_PROCESS_KILL of a proxy connection id (the id each
// client's handshake gave, the session registry's key), and `SELECT ROW_COUNT()`,
// `FOUND_ROWS()`, `CONNECTION_ID()` (MySQLSessionFunctions). The decisions are the machine's
// and MySQLProxyAnswerable's; this is the plumbing between sessions.
extension MySQLClientSession {
    /// What a KILL aimed at a session found there.
    enum KillOutcome: Sendable {
        case done
        /// Another user's connection, or one still logging in: MySQL's 1095.
        case notOwner
    }

    /// A COM_QUERY the proxy may answer itself (its classification says KILL or a session
    /// function). Returns false when it goes to a backend after all; `classification` then
    /// loses the `row_count_found_rows` pin where the backend that runs it is the one that ran
    /// the client's previous command (the client holds it, or its commands wait for one
    /// together): only a client without a backend would read another's value.
    func answerItself(
        _ bytes: ByteBuffer, payloadLength: Int, classification: inout MySQLClassification, context: ChannelHandlerContext
    ) -> Bool {
        guard machine != nil else { return false }
        guard payloadLength < 0xFF_FFFF else {
            // 16 MB of text: not a KILL or a SELECT of the functions the proxy answers.
            if classification.kind == .kill {
                answer(notSupported("KILL with other statements in one query through the proxy"), context: context)
                return true
            }
            return false
        }
        let options = classifierOptions
        let parsed = bytes.withUnsafeReadableBytes { raw in
            MySQLProxyAnswerable.parse(UnsafeRawBufferPointer(rebasing: raw[5...]), options: options)
        }
        if case .select? = parsed {} else if !machine!.canAnswerWithoutBackend {
            // A KILL pipelined behind a command still running: answered in its turn, after that
            // command's response (`answerDeferredCommand`); what the client sends meanwhile waits.
            deferredCommand = (bytes, payloadLength)
            awaitingProxyAnswer = true
            return true
        }
        switch parsed {
        case .select(let columns)?:
            if let values = machine!.answerSessionSelect(columns, connectionID: cancelKey.id) {
                var out = context.channel.allocator.buffer(capacity: 64 + 48 * columns.count)
                MySQLSessionFunctions.resultSet(
                    columns: columns, values: values, status: machine!.status.intersection([.autocommit, .inTransaction]),
                    capabilities: machine!.capabilities, into: &out)
                context.writeAndFlush(wrapOutboundOut(out), promise: nil)
                lastActivity = .now()
                return true
            }
        case .kill(let id, let query)?:
            kill(id: id, query: query, context: context)
            return true
        case .killSelf(let query)?:
            kill(id: UInt64(cancelKey.id), query: query, context: context)
            return true
        case .killQueryID(let id)?:
            answer(MySQLErrPacket(code: 1957, sqlState: "HY000", message: "Unknown query id: \(id)"), context: context)
            return true
        case .killUnsupported?:
            // Sent on, it would kill whatever the backend's database user runs: other clients'.
            answer(notSupported("KILL USER and KILL of a computed id through the proxy"), context: context)
            return true
        case nil:
            if classification.kind == .kill {
                // `SELECT 1; KILL 5`: a KILL the proxy cannot answer alone.
                answer(notSupported("KILL with other statements in one query through the proxy"), context: context)
                return true
            }
        }
        if machine!.state != .idle { classification.pinReasons.remove(.sessionFunction) }
        return false
    }

    /// MySQL's ER_NOT_SUPPORTED_YET, worded for the server the client was shown.
    func notSupported(_ what: String) -> MySQLErrPacket {
        let product = runtime.engine.serverVersion.contains("MariaDB") ? "MariaDB" : "MySQL"
        return MySQLErrPacket(code: 1235, sqlState: "42000", message: "This version of \(product) doesn't yet support '\(what)'")
    }

    /// A response ended (or the backend went): a KILL that waited behind it is answered now,
    /// then the commands that came after it are read.
    func answerDeferredCommand(context: ChannelHandlerContext) {
        guard let deferred = deferredCommand, !closed, machine?.canAnswerWithoutBackend == true else { return }
        deferredCommand = nil
        awaitingProxyAnswer = false
        let code = deferred.bytes.getInteger(at: deferred.bytes.readerIndex + 4, as: UInt8.self) ?? 0
        handleCommand((code: code, bytes: deferred.bytes, payloadLength: deferred.payloadLength), context: context)
        resumeReading(context: context)
    }

    /// Reads what the client sent while a proxy answer was pending, unless another is pending now.
    func resumeReading(context: ChannelHandlerContext) {
        guard !awaitingProxyAnswer, !closed, var pending = cumulation else { return }
        cumulation = nil
        processIncoming(&pending, context: context)
        if needsFlushToBackend {
            needsFlushToBackend = false
            backend?.flush()
        }
    }

    /// COM_PROCESS_KILL: a 4-byte connection id; the server treats it as `KILL CONNECTION id`.
    func processKill(_ bytes: ByteBuffer, payloadLength: Int, context: ChannelHandlerContext) {
        guard machine?.canAnswerWithoutBackend == true else {
            deferredCommand = (bytes, payloadLength)
            awaitingProxyAnswer = true
            return
        }
        guard payloadLength >= 5, let id = bytes.getInteger(at: bytes.readerIndex + 5, endianness: .little, as: UInt32.self) else {
            answer(MySQLClientErrors.malformed("COM_PROCESS_KILL without a connection id"), context: context)
            return
        }
        kill(id: UInt64(id), query: false, context: context)
    }

    /// `KILL [QUERY] id` from this client: the session with that proxy id stops its statement or
    /// closes, if it is this user's. The client's further commands wait for the answer (they are
    /// read after it), as the server answers a KILL before reading on.
    func kill(id: UInt64, query: Bool, context: ChannelHandlerContext) {
        if id == UInt64(cancelKey.id) {
            // The server interrupts the KILL itself: its own statement is the one running.
            if query {
                answer(MySQLSessionMachine.queryInterrupted, context: context)
            } else {
                log(.info, "client killed its own connection")
                fail(with: MySQLErrPacket(code: 1927, sqlState: "70100", message: "Connection was killed"))
            }
            return
        }
        guard id <= UInt64(UInt32.max), let target = runtime.session(id: UInt32(id)) else {
            answer(MySQLErrPacket(code: 1094, sqlState: "HY000", message: "Unknown thread id: \(id)"), context: context)
            return
        }
        awaitingProxyAnswer = true
        target.killRequested(query: query, by: user).hop(to: eventLoop).whenComplete { [self] result in
            awaitingProxyAnswer = false
            guard let context = self.context, !closed else { return }
            switch result {
            case .success(.done):
                log(.info, query ? "client killed another client's statement" : "client killed another client's connection",
                    ["concierge.target_client_id": "\(id)"])
                answerOK(context: context)
            case .success(.notOwner):
                answer(MySQLErrPacket(code: 1095, sqlState: "HY000", message: "You are not owner of thread \(id)"), context: context)
            case .failure:
                answer(MySQLErrPacket(code: 1094, sqlState: "HY000", message: "Unknown thread id: \(id)"), context: context)
            }
            // The commands the client sent meanwhile.
            resumeReading(context: context)
        }
    }

    /// A KILL from another session aimed at this one (any thread): checked and done on this
    /// session's loop. Completes once the database has the KILL QUERY, if one was needed.
    func killRequested(query: Bool, by requester: String) -> EventLoopFuture<KillOutcome> {
        eventLoop.flatSubmit { [self] in
            guard !closed else { return eventLoop.makeSucceededFuture(.done) }
            guard machine != nil, pendingLogin == nil, user == requester else { return eventLoop.makeSucceededFuture(.notOwner) }
            if query { return killQuery().map { .done } }
            killConnection()
            return eventLoop.makeSucceededFuture(.done)
        }
    }

    /// Stops the statement this client runs, wherever it is in its way (`killQueryRequested`).
    func killQuery() -> EventLoopFuture<Void> {
        guard machine != nil else { return eventLoop.makeSucceededVoidFuture() }
        switch machine!.killQueryRequested() {
        case .nothingRunning:
            return eventLoop.makeSucceededVoidFuture()
        case .cancelWait:
            if let request = borrowRequest {
                borrowRequest = nil
                (borrowPool ?? runtime.pool).cancel(request)
            }
            log(.info, "statement killed while it waited for a database connection")
            borrowFailed(with: MySQLSessionMachine.queryInterrupted)
            return eventLoop.makeSucceededVoidFuture()
        case .afterSend:
            killAfterSend = true
            return eventLoop.makeSucceededVoidFuture()
        case .killOnBackend:
            guard let backend else {
                _ = machine!.killDelivered()
                return eventLoop.makeSucceededVoidFuture()
            }
            log(.info, "killing the running statement on its database connection", ["concierge.backend": "\(backend.id)"])
            let delivered = backend.killOnServer(query: true).hop(to: eventLoop)
            delivered.whenComplete { [self] _ in
                guard machine != nil, let context = self.context else { return }
                let action = machine!.killDelivered()
                run(action, context: context)
            }
            return delivered
        }
    }

    /// The held commands just went to the backend after a KILL QUERY that came while it was
    /// being prepared: the kill goes now.
    func killIfRequestedDuringRestore() {
        guard killAfterSend else { return }
        killAfterSend = false
        _ = killQuery()
    }

    /// `KILL [CONNECTION]` of this client: it is closed, as the server closes a killed session
    /// (without a word to the client). A backend in the middle of its statement is not reused
    /// (the session's teardown decides that) and is killed on the server too: closing the
    /// proxy's socket alone would leave the statement running there until it next writes.
    func killConnection() {
        log(.info, "connection killed by another client of the same user")
        let busy = machine.map { $0.holdsBackend && !$0.canAnswerWithoutBackend } ?? false
        let victim = busy ? backend : nil
        closeGracefully()
        if let victim { _ = victim.killOnServer(query: false) }
    }
}
