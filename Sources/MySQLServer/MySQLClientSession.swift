import ConciergeAuth
import ConciergeConfig
import ConciergeRuntime
import ConnectionPool
import Logging
import MySQLProxy
import MySQLWire
import NIOCore
import NIOSSL
import ProxyCore
import SQLClassifier

/// One MySQL client connection: the proxy's handshake and the client's authentication
/// (`MySQLClientLogin`), then command-level multiplexing (`MySQLSessionMachine`). This handler
/// frames packets, classifies COM_QUERY text for pinning, runs the machines' actions and holds
/// the backend object. All state is confined to the client's event loop.
final class MySQLClientSession: ChannelDuplexHandler, MySQLBackendOwner, PoolRequester, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Never
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Connection = MySQLBackendConnection

    // Every idle client holds one of these objects: what can be found elsewhere (the loop, the
    // logger) is read from there rather than stored per client.
    var eventLoop: any EventLoop { loopSessions.eventLoop }
    let endpoint: Int
    let cancelKey: CancelKey
    let runtime: MySQLRuntime
    var logger: Logger { runtime.logger }
    /// The logger's level, read once (`Logger.logLevel` asks its handler through an existential).
    let logLevel: Logger.Level
    let loopSessions: LoopSessions<MySQLClientSession>
    var loopSlot = -1
    var context: ChannelHandlerContext?
    var cumulation: ByteBuffer?

    var login: MySQLClientLogin
    /// Nil until login completes.
    var machine: MySQLSessionMachine?
    /// The login OK held while the login schema is checked on the database
    /// (`MySQLSessionMachine.verifyLoginSchema`), with the sequence id its answer takes.
    var pendingLogin: (ok: ByteBuffer, sequenceID: UInt8)?
    /// The last login's (or COM_CHANGE_USER's) outcome: what a COM_CHANGE_USER keeps of the
    /// connection (its TLS, capabilities, maximum packet size).
    var lastLogin: MySQLClientLogin.LoginResult?
    /// A COM_CHANGE_USER's authentication exchange is under way (`login` runs it): the client's
    /// packets go to it, not to the session machine.
    var changingUser = false
    /// The login under way (or whose OK is held) is a COM_CHANGE_USER's: not a new connection's
    /// setup in the metrics.
    var loginIsChangeUser = false
    var changeUserStarted = NIODeadline.now()
    /// A COM_CHANGE_USER the client pipelined after commands still under way: answered once their
    /// responses are over (`resumeDeferredChangeUser`); the client's later packets wait with it.
    var deferredChangeUser: ByteBuffer?
    /// The proxy's classifier options when this client logged in (`classifierOptions`).
    var loginClassifierOptions = MySQLClassifierOptions()
    /// `classifierOptions` for the client's sql_mode `classifierOptionsMode` (nil: the server's).
    var classifierOptionsCache = MySQLClassifierOptions()
    var classifierOptionsMode: String?
    var user = ""
    var poolKey = PoolKey(user: "", database: "")
    var backend: MySQLBackendConnection?
    var borrowPool: MySQLBackendPool?
    var borrowRequest: RequestID?
    var closed = false
    var draining = false
    var queryStarted = NIODeadline.uptimeNanoseconds(0)
    var lastActivity = NIODeadline.now()
    let connectedAt = NIODeadline.now()
    var needsFlushToClient = false
    var needsFlushToBackend = false
    /// The previous packet from the backend was 0xFFFFFF bytes long: the next continues its
    /// payload (a row or value of 16 MB and more), and is forwarded without a look.
    var serverPacketContinues = false
    /// A KILL of this client's waits for the target session: the client's next commands are
    /// read after its answer (MySQLClientSession+Kill.swift).
    var awaitingProxyAnswer = false
    /// A KILL QUERY came while the backend was being prepared for this client's commands: it
    /// goes once they are sent.
    var killAfterSend = false
    /// A KILL (or COM_PROCESS_KILL) that came while an earlier command of the client's still ran:
    /// answered after that command's response.
    var deferredCommand: (bytes: ByteBuffer, payloadLength: Int)?

    init(runtime: MySQLRuntime, loopSessions: LoopSessions<MySQLClientSession>, endpoint: Int, cancelKey: CancelKey) {
        self.runtime = runtime
        self.loopSessions = loopSessions
        self.endpoint = endpoint
        self.cancelKey = cancelKey
        self.logLevel = runtime.logger.logLevel
        // Configured in channelActive: this runs under the runtime's lock (see
        // `DatabaseEngine.makeClientHandler`), where the runtime must not be called back.
        self.login = MySQLClientLogin(configuration: .init(passwordMethod: .nativePassword, tlsAvailable: false))
    }

    /// The plugin the handshake announces: the proxy's auth entries' `client_password_auth_type`
    /// (caching_sha2 when any entry asks for it: a client that answers with the other plugin is
    /// switched to it with an AuthSwitchRequest).
    static func passwordMethod(_ auth: [AuthConfiguration]) -> MySQLClientLogin.PasswordMethod {
        auth.contains { $0.clientPasswordAuthType == .mysqlNativePassword } && !auth.contains { $0.clientPasswordAuthType == .mysqlCachingSHA2Password }
            ? .nativePassword : .cachingSHA2Password
    }

    func log(_ level: Logger.Level, _ message: @autoclosure () -> Logger.Message, _ extra: @autoclosure () -> Logger.Metadata = [:]) {
        guard logLevel <= level else { return }
        var metadata = extra()
        metadata["concierge.client_id"] = "\(cancelKey.id)"
        if !user.isEmpty { metadata["concierge.user"] = "\(user)" }
        logger.log(level: level, message(), metadata: metadata)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        // Normally a no-op (`channelInactive` came first); see ClientSession.handlerRemoved.
        teardown()
    }

    func channelActive(context: ChannelHandlerContext) {
        loopSessions.add(self)
        login = MySQLClientLogin(configuration: .init(
            passwordMethod: Self.passwordMethod(runtime.configuration.auth), tlsAvailable: runtime.serverTLSContext != nil,
            rsaKeyPair: runtime.engine.rsaKeyPair, allocator: context.channel.allocator))
        // The server speaks first: the handshake, with the connection id the registry gave this
        // client (the one it sees as CONNECTION_ID() is its backend's; see README).
        run(login.start(
            connectionID: cancelKey.id, nonce: MySQLNonce.make(), serverVersion: runtime.engine.serverVersion,
            capabilities: MySQLClientProfile.offeredToClients), context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        teardown()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        log(.debug, "client connection error", ["concierge.error": "\(error)"])
        if machine == nil, error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            runtime.metrics.clientConnectionsSetupFailedAuth[endpoint].increment()
            log(.info, "client TLS handshake failed", ["concierge.error": "\(error)"])
        }
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        backend?.setReadingPaused(!context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        let isReceiveBuffer = cumulation == nil
        if var pending = cumulation {
            cumulation = nil
            pending.writeBuffer(&incoming)
            incoming = pending
        }
        lastActivity = .now()
        processIncoming(&incoming, context: context)
        // A partial packet left in SwiftNIO's receive buffer is copied (as in the PostgreSQL
        // session's `channelRead`): a slice would keep SwiftNIO from reusing that buffer, and
        // it would allocate another and an array of 16 buffer slots for the connection's life.
        if isReceiveBuffer, let partial = cumulation {
            var kept = context.channel.allocator.buffer(capacity: partial.readableBytes)
            kept.writeImmutableBuffer(partial)
            cumulation = kept
        }
    }

    /// Processes what the client sent (`channelRead`, and the bytes kept while a login waited
    /// for its schema check); what is left of an incomplete packet is kept.
    func processIncoming(_ incoming: inout ByteBuffer, context: ChannelHandlerContext) {
        do {
            try process(&incoming, context: context)
        } catch let error as MySQLWireError {
            fail(with: MySQLClientErrors.malformed("\(error)"))
            return
        } catch {
            fail(with: MySQLClientErrors.malformed("\(error)"))
            return
        }
        if incoming.readableBytes > 0, !closed { cumulation = incoming.slice() }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlushToBackend {
            needsFlushToBackend = false
            backend?.flush()
        }
        if needsFlushToClient {
            needsFlushToClient = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    // MARK: Incoming packets

    func process(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) throws {
        while !closed {
            // A client's commands before its login OK (sent once the login schema is checked)
            // wait: they are read after it.
            guard pendingLogin == nil, deferredChangeUser == nil, !awaitingProxyAnswer else { return }
            guard let header = buffer.peekMySQLPacketHeader() else { return }
            if machine == nil || changingUser {
                // Login packets are small: an oversized one is an attack or garbage.
                guard header.length <= 65_536 else { throw MySQLWireError.payloadTooLarge(header.length, max: 65_536) }
                guard buffer.readableBytes >= 4 + header.length else { return }
                buffer.moveReaderIndex(forwardBy: 4)
                let payload = buffer.readSlice(length: header.length)!
                // A MySQL client starts TLS right after its SSLRequest, without an answer: its
                // ClientHello may arrive in the same read. Bytes that begin a TLS handshake
                // record go to the TLS handler; anything else after an SSLRequest is plaintext
                // where encrypted bytes must be, and is refused.
                let startsTLS = MySQLSSLRequest.isSSLRequest(payload: payload) && Self.beginsTLSHandshake(buffer)
                let action = login.packetReceived(
                    MySQLPacket(sequenceID: header.sequenceID, payload: payload),
                    trailingBytes: startsTLS ? 0 : buffer.readableBytes, environment: loginEnvironment())
                run(action, context: context)
                if startsTLS, case .startTLS = action, !closed {
                    let handshake = buffer.readSlice(length: buffer.readableBytes)!
                    // From the pipeline's head: through the TLS handler just added first.
                    context.pipeline.syncOperations.fireChannelRead(NIOAny(handshake))
                    return
                }
                continue
            }
            guard let command = try nextCommand(&buffer) else { return }
            if command.code == MySQLCommand.query.rawValue || command.code == MySQLCommand.stmtExecute.rawValue {
                loopSessions.queryRequests &+= 1
            }
            handleCommand(command, context: context)
        }
    }

    /// The next complete command: one packet, or several when a payload of 16 MB or more is
    /// split (each 0xFFFFFF-byte packet is followed by the next part). Sliced from the read
    /// buffer, not copied.
    func nextCommand(_ buffer: inout ByteBuffer) throws -> (code: UInt8, bytes: ByteBuffer, payloadLength: Int)? {
        var offset = buffer.readerIndex
        var total = 0
        let limit = runtime.maxMessageSize
        while true {
            guard let header = buffer.getMySQLPacketHeader(at: offset) else { return nil }
            guard buffer.writerIndex - offset >= 4 + header.length else {
                if total + header.length > limit { throw MySQLWireError.payloadTooLarge(total + header.length, max: limit) }
                return nil
            }
            total += header.length
            offset += 4 + header.length
            if header.length < 0xFF_FFFF { break }
        }
        if total > limit { throw MySQLWireError.payloadTooLarge(total, max: limit) }
        let code = total > 0 ? buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self)! : 0
        let bytes = buffer.readSlice(length: offset - buffer.readerIndex)!
        return (code, bytes, total)
    }

    func handleCommand(_ command: (code: UInt8, bytes: ByteBuffer, payloadLength: Int), context: ChannelHandlerContext) {
        // The machine is changed in place (`machine!`), never copied out and written back: a
        // copy alive while it changes would make its arrays and dictionaries copy themselves.
        guard machine != nil else { return }
        if machine!.sendingInfile {
            // LOCAL INFILE content: straight to the backend; the empty packet ends it.
            machine!.infileDataReceived(isLast: command.payloadLength == 0)
            backend?.write(command.bytes)
            needsFlushToBackend = true
            return
        }
        var classification: MySQLClassification?
        switch command.code {
        case MySQLCommand.query.rawValue:
            classification = classify(command.bytes, payloadLength: command.payloadLength)
            if classification!.kind == .kill || classification!.mentionsSessionFunction,
               answerItself(command.bytes, payloadLength: command.payloadLength, classification: &classification!, context: context)
            {
                return
            }
        case MySQLCommand.resetConnection.rawValue:
            resetConnection(context: context)
            return
        case MySQLCommand.changeUser.rawValue:
            changeUser(command.bytes, context: context)
            return
        case MySQLCommand.processKill.rawValue:
            processKill(command.bytes, payloadLength: command.payloadLength, context: context)
            return
        case MySQLCommand.binlogDump.rawValue, MySQLCommand.binlogDumpGTID.rawValue, MySQLCommand.registerSlave.rawValue:
            // Replication streams are not served through the proxy: refused like a server that
            // does not know them.
            answer(MySQLClientErrors.unsupportedCommand(command.code), context: context)
            return
        default:
            break
        }
        dropStaleDiagnosticsHold()
        let pinsBefore = machine!.pins
        let action = machine!.commandReceived(.init(code: command.code, bytes: command.bytes), classification: classification)
        machine!.noteCommandForFunctions(code: command.code, classification: classification, after: action)
        let newPins = machine!.pins.subtracting(pinsBefore)
        if !newPins.isEmpty { pinned(newPins, statement: classification != nil ? command.bytes : nil) }
        run(action, context: context)
        resumeHeldCommands(context: context)
    }

    /// Runs what the machine can do now with the commands it held (`needsResume`): statement
    /// commands after a prepare's answer, the proxy's own answers after the responses before
    /// them, the release that follows.
    func resumeHeldCommands(context: ChannelHandlerContext) {
        while !closed, machine?.needsResume == true {
            let action = machine!.resume()
            run(action, context: context)
        }
    }

    /// Classifies a COM_QUERY's text (joined first when it spans packets: rare, 16 MB and more).
    func classify(_ bytes: ByteBuffer, payloadLength: Int) -> MySQLClassification {
        let options = classifierOptions
        if payloadLength < 0xFF_FFFF {
            return bytes.withUnsafeReadableBytes { raw in
                MySQLClassifier.classify(UnsafeRawBufferPointer(rebasing: raw[5...]), options: options)
            }
        }
        var joined: [UInt8] = []
        joined.reserveCapacity(payloadLength)
        var buffer = bytes
        while let header = buffer.peekMySQLPacketHeader() {
            buffer.moveReaderIndex(forwardBy: 4)
            joined.append(contentsOf: buffer.readBytes(length: header.length) ?? [])
        }
        return MySQLClassifier.classify(joined.dropFirst(), options: options)
    }

    /// The classifier's options for this client: the proxy's (taken at login, as PostgreSQL
    /// sessions take theirs) with what the client's sql_mode changes in the SQL it writes. Worked
    /// out again only when that sql_mode changes, not per statement: the proxy's options sit
    /// behind the engine's lock.
    var classifierOptions: MySQLClassifierOptions {
        let mode = machine?.client.variables["sql_mode"]
        if mode != classifierOptionsMode {
            var options = loginClassifierOptions
            if let mode {
                let upper = mode.uppercased()
                options.noBackslashEscapes = upper.contains("NO_BACKSLASH_ESCAPES")
                options.ansiQuotes = upper.contains("ANSI_QUOTES") || upper.contains("ANSI")
            }
            classifierOptionsCache = options
            classifierOptionsMode = mode
        }
        return classifierOptionsCache
    }

    func pinned(_ reasons: MySQLPinReasons, statement: ByteBuffer?) {
        runtime.metrics.recordPins(bits: UInt64(reasons.rawValue))
        log(.info, "client session pinned to its database connection", ["concierge.pin_reasons": "\(reasons.names.joined(separator: ","))"])
    }

    // MARK: Running the session machine's actions

    func run(_ action: MySQLSessionMachine.Action, context: ChannelHandlerContext) {
        log(.trace, "session action", ["concierge.action": "\(action)"])
        switch action {
        case .none:
            break
        case .borrow:
            borrowBackend()
        case .sendToBackend(let commands):
            guard let backend else { return }
            queryStarted = .now()
            for command in commands { backend.write(command) }
            backend.flush()
            killIfRequestedDuringRestore()
        case .forwardToBackend(let bytes):
            guard let backend else { return }
            queryStarted = .now()
            backend.write(bytes)
            needsFlushToBackend = true
        case .sendRestoreQuery(let text):
            backend?.writeAndFlush(MySQLBackendConnection.query(text, allocator: context.channel.allocator))
        case .sendInitDB(let schema):
            var out = context.channel.allocator.buffer(capacity: schema.utf8.count + 5)
            out.writeMySQLPacket(sequenceID: 0) { payload in
                payload.writeInteger(MySQLCommand.initDB.rawValue)
                payload.writeString(schema)
            }
            backend?.writeAndFlush(out)
        case .forwardToClient, .forwardToClientAndRelease, .forwardToClientAndDiscard, .forwardToClientRewritingStatementID:
            // Handled per packet in `backendDidRead`.
            break
        case .answerClient(let error):
            answer(error, context: context)
        case .answerPing, .answerOK:
            answerOK(context: context)
        case .release(let reusable):
            releaseBackend(reusable: reusable)
        case .close(let error):
            if let pendingLogin {
                // The login schema was refused (1049 Unknown database, 1044): the login's answer.
                fail(with: error ?? MySQLClientErrors.backendLost, sequenceID: pendingLogin.sequenceID)
            } else if let error {
                fail(with: error)
            } else {
                closeGracefully()
            }
        case .quit:
            releaseBackend(reusable: true)
            closeGracefully()
        case .loginStands(let schemaChecked):
            if backend != nil { releaseBackend(reusable: true) }
            if let pendingLogin {
                if schemaChecked, let schema = machine?.loginSchema {
                    runtime.engine.noteSchemaVerified(user: user, schema: schema)
                }
                completeLogin(pendingLogin.ok, context: context)
            }
        }
    }

    func answer(_ error: MySQLErrPacket, sequenceID: UInt8 = 1, context: ChannelHandlerContext) {
        var out = context.channel.allocator.buffer(capacity: error.message.utf8.count + 16)
        out.writeMySQLPacket(sequenceID: sequenceID) { error.encode(into: &$0, capabilities: self.clientCapabilities) }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    func answerOK(context: ChannelHandlerContext) {
        let status: MySQLServerStatus = machine?.status.intersection([.autocommit, .inTransaction]) ?? [.autocommit]
        let ok = MySQLOKPacket(affectedRows: 0, lastInsertID: 0, status: status, warnings: 0, info: "", sessionStateChanges: [])
        var out = context.channel.allocator.buffer(capacity: 16)
        out.writeMySQLPacket(sequenceID: 1) { ok.encode(into: &$0, capabilities: self.clientCapabilities) }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    var clientCapabilities: MySQLCapabilities { machine?.capabilities ?? login.negotiatedCapabilities }

    func resetConnection(context: ChannelHandlerContext) {
        guard machine != nil else { return }
        let action = machine!.resetConnection()
        if case .release(let reusable) = action { releaseBackend(reusable: reusable) }
        answerOK(context: context)
    }

    // MARK: Borrowing

    func borrowBackend() {
        guard let pool = runtime.borrowPool(forEndpoint: endpoint) else {
            // Only a READ_ONLY endpoint has no pool: none of its readers is available.
            log(.info, "no reader for the read-only endpoint")
            borrowFailed(with: MySQLClientErrors.noReader)
            return
        }
        borrowPool = pool
        queryStarted = .now()
        borrowRequest = pool.borrow(key: poolKey, for: self)
    }

    func borrowCompleted(_ result: Result<MySQLBackendConnection, BorrowError>) {
        borrowRequest = nil
        switch result {
        case .success(let connection):
            log(.trace, "backend borrowed", ["concierge.backend": "\(connection.id)"])
            loopSessions.borrowLatency.record(nanoseconds: (NIODeadline.now() - queryStarted).nanoseconds)
            guard !closed else {
                borrowPool?.release(connection, reusable: true)
                return
            }
            backend = connection
            connection.lease(to: self)
        case .failure(let error):
            if case .timeout = error { runtime.metrics.borrowTimeouts.increment() }
            log(.info, "no database connection for the client", ["concierge.error": "\(error)"])
            borrowFailed(with: MySQLClientErrors.borrowFailed(error, user: user))
        }
    }

    /// The backend `borrowCompleted` leased is ready (or closed meanwhile: nil).
    func backendLeased(_ connection: MySQLBackendConnection, info: MySQLLeaseInfo?) {
        guard let info else {
            // Closed between the pool and the lease: ask again.
            backend = nil
            if !closed { borrowBackend() }
            return
        }
        guard machine != nil, let context else {
            connection.release(reusable: true, state: info.state)
            backend = nil
            return
        }
        // In place (`machine!`): a copy taken out and written back made every array and
        // dictionary in the machine copy itself on its first change (five allocations per
        // transaction).
        let action = machine!.borrowed(
            backendState: info.state, baseline: info.baseline, noBackslashEscapes: info.noBackslashEscapes,
            statements: info.statements)
        run(action, context: context)
        resumeHeldCommands(context: context)
    }

    /// No backend for the client's commands: the machine answers them with `error` (or lets a
    /// login waiting for its schema check stand), and a drain may end the session now.
    func borrowFailed(with error: MySQLErrPacket) {
        guard machine != nil, let context else { return }
        let action = machine!.borrowFailed(error)
        run(action, context: context)
        closeIfDrained()
        if deferredChangeUser != nil { resumeDeferredChangeUser() }
        if deferredCommand != nil { answerDeferredCommand(context: context) }
    }

    func releaseBackend(reusable: Bool) {
        guard let backend else { return }
        self.backend = nil
        let state = machine?.backend ?? MySQLSessionState()
        // A backend of a pool without a schema cannot be given "no schema" again once a USE
        // selected one (MySQL has no way back): it is not reused.
        let schemaStays = poolKey.database.isEmpty && state.schema != nil
        log(.trace, "backend released", [
            "concierge.backend": "\(backend.id)", "concierge.reusable": "\(reusable && !schemaStays)",
        ])
        backend.release(reusable: reusable && !schemaStays, state: state)
        closeIfDrained()
    }

    // MARK: Timeouts, metrics, drain

    func checkTimeouts(now: NIODeadline) {
        if changingUser, now - changeUserStarted > .seconds(30) {
            // A COM_CHANGE_USER's exchange has the login's time limit.
            fail(with: MySQLClientErrors.authenticationTimeout, sequenceID: login.replySequenceID)
            return
        }
        guard let machine else {
            if now - connectedAt > .seconds(30) {
                fail(with: MySQLClientErrors.authenticationTimeout, sequenceID: login.replySequenceID)
            }
            return
        }
        guard machine.isBetweenTransactions else {
            // A transaction, a statement running or a wait for a backend is not idleness: the
            // idle period starts when it ends. (A pinned client between commands is idle.)
            lastActivity = now
            return
        }
        let timeout = runtime.idleClientTimeout
        if timeout > 0, now - lastActivity > .seconds(Int64(timeout)) {
            log(.info, "closing idle client")
            fail(with: MySQLClientErrors.idleTimeout, sequenceID: 0)
        }
    }

    func addMetrics(to sample: inout LoopMetricsSample) {
        sample.clientsPerEndpoint[endpoint] += 1
        guard backend != nil, let machine else { return }
        if !machine.pins.isEmpty { sample.pinned += 1 }
        if machine.inTransaction { sample.inTransaction += 1 }
    }

    /// Graceful shutdown: close now if the client is between transactions (pinned or not) or
    /// not logged in, else after its current transaction (`closeIfDrained`).
    func beginDrain() {
        eventLoop.execute { [self] in
            draining = true
            if machine?.isBetweenTransactions ?? true { fail(with: MySQLClientErrors.shuttingDown, sequenceID: 0) }
        }
    }

    /// Shutting down and the client's transaction just ended: this was its last.
    func closeIfDrained() {
        if draining, machine?.isBetweenTransactions == true { fail(with: MySQLClientErrors.shuttingDown) }
    }

    func forceClose() {
        eventLoop.execute { [self] in fail(with: MySQLClientErrors.shuttingDown, sequenceID: 0) }
    }

    /// The runtime's cancel (a KILL QUERY of this client, MySQLClientSession+Kill.swift).
    func cancelCurrentQuery() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in killQuery() }
    }

    // MARK: Closing

    func fail(with error: MySQLErrPacket, sequenceID: UInt8 = 1) {
        guard let context, !closed else { return }
        answer(error, sequenceID: sequenceID, context: context)
        closeGracefully()
    }

    func closeGracefully() {
        guard let context, !closed else { return }
        teardown()
        context.close(promise: nil)
    }

    func teardown() {
        guard !closed else { return }
        closed = true
        loopSessions.remove(self)
        if let request = borrowRequest {
            borrowRequest = nil
            (borrowPool ?? runtime.pool).cancel(request)
        }
        if let backend, var machine {
            self.backend = nil
            let action = machine.clientClosed()
            self.machine = machine
            if case .release(let reusable) = action {
                backend.release(reusable: reusable, state: machine.backend)
            } else {
                backend.release(reusable: false, state: machine.backend)
            }
        }
        runtime.sessionClosed(self)
    }
}

extension MySQLSessionMachine.Action {
    /// The server packet just read goes to the client.
    var forwardsToClient: Bool {
        switch self {
        case .forwardToClient, .forwardToClientAndRelease, .forwardToClientAndDiscard: return true
        default: return false
        }
    }
}
