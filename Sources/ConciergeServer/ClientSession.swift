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

/// One client connection: startup, authentication, then transaction-level multiplexing.
///
/// The NIO side of a client session. Its life (logging in, waiting for a backend, attached,
/// pinned, draining, closed) is `ClientSessionMachine` (PostgresProxy), which decides when to
/// borrow, lease, release, answer locally and close; this class runs those decisions, classifies
/// the few messages it must (Query and Parse text, for pinning), forwards the original bytes, and
/// keeps the backend object. All state is confined to the client's event loop.
final class ClientSession: ChannelDuplexHandler, BackendOwner, BackendRequester, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Never
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let eventLoop: any EventLoop
    /// The endpoint the client connected to (0: the proxy's default endpoint).
    let endpoint: Int
    let processID: Int32
    let secretKey: Int32
    private let runtime: ProxyRuntime
    /// The proxy's logger; per-client metadata is added at each call (see `log`), so an idle
    /// client does not carry its own copy of the logger's metadata.
    private let logger: Logger
    /// The logger's level, read once: `Logger.logLevel` asks the handler through an existential
    /// (a copy of it) on every call, and `log` is on the per-transaction path.
    private let logLevel: Logger.Level
    private var context: ChannelHandlerContext?
    /// The session's life and the client's batch state (see `ClientSessionMachine`).
    private var machine = ClientSessionMachine(now: .now())
    /// The login's machine; its user, database and parameters are copied here once known.
    private var login = ClientLogin()
    private var cumulation: ByteBuffer?
    /// This connection carried a CancelRequest: it closes once the request is delivered.
    private var cancelPending = false

    // Login
    private var user = ""
    private var database = ""
    /// Session parameters the client asked for in its startup packet (lowercased name → value),
    /// applied to whichever backend serves it.
    private var desiredParameters: [String: String] {
        _read { yield parameters.current }
        _modify { yield &parameters.current }
    }
    /// The client's session parameters (see `SessionParameters`).
    private var parameters = SessionParameters()
    private var poolKey = PoolKey(user: "", database: "")
    /// The proxy's, with the parameters this server reports (set at login).
    private lazy var classifierOptions = runtime.classifierOptions

    // Data path
    /// The leased backend (`machine.link` says how it stands).
    private var backend: BackendConnection?
    /// The pool of the current borrow (the writer's, or a reader's for a READ_ONLY endpoint).
    private var borrowPool: BackendPool?
    /// When the first of the outstanding sync points (`responses`) went to the database (QueryDatabaseResponseLatency).
    private var queryStarted = NIODeadline.uptimeNanoseconds(0)
    private var readPending = false
    private var needsFlushToBackend = false
    private var needsFlushToClient = false

    // Prepared statements (see PreparedStatements.swift)
    /// The client's named and unnamed statements and its portals (`StatementCatalogue`).
    private var catalogue = StatementCatalogue()

    // Session resets (RESET ALL, DISCARD ALL, ...; see `applyReset`)
    /// The parameters the client logged in with: what RESET ALL and DISCARD ALL return it to.
    private var startupParameters: [String: String] { parameters.startup }
    /// A RESET ALL or DISCARD ALL is on its way: ParameterStatus messages are held back until
    /// its ReadyForQuery, when the client gets what PostgreSQL would have reported to it.
    private var resetWindow: ResetWindow?
    /// The reset query at the head of `responses` failed (some statement in it did).
    private var resetQueryFailed = false
    /// The reset at the head of `responses` removed statements (its command tag arrived).
    private var statementResetConfirmed = false

    /// A `SET` sent alone outside a transaction (see `SQLTrackedSettings`): the client's value
    /// once its ReadyForQuery arrives without an error.
    private var pendingSetting: SessionParameters.PendingSetting? {
        _read { yield parameters.pendingSetting }
        _modify { yield &parameters.pendingSetting }
    }

    var pinReasons: PinReasons { machine.pins.reasons }

    // The machine's parts that statement handling (below, and `send`/`relayTracked`) uses, in
    // place: `_modify` yields the stored value, so no copy is made.
    private var responses: ResponseTracker {
        _read { yield machine.responses }
        _modify { yield &machine.responses }
    }
    private var pins: PinState {
        _read { yield machine.pins }
        _modify { yield &machine.pins }
    }
    private var held: [HeldMessage] { machine.held }
    private var pendingUnsynced: Bool {
        get { machine.pendingUnsynced }
        set { machine.pendingUnsynced = newValue }
    }
    private var sentUnsynced: Bool {
        get { machine.sentUnsynced }
        set { machine.sentUnsynced = newValue }
    }
    private var skippingUntilSync: Bool {
        get { machine.skippingUntilSync }
        set { machine.skippingUntilSync = newValue }
    }
    private var copyInActive: Bool {
        get { machine.copyInActive }
        set { machine.copyInActive = newValue }
    }
    private var syncInsteadOfQuery: Bool {
        get { machine.syncInsteadOfQuery }
        set { machine.syncInsteadOfQuery = newValue }
    }
    private var preparingForQuery: Bool {
        get { machine.preparingForQuery }
        set { machine.preparingForQuery = newValue }
    }
    private var transactionStatus: PGTransactionStatus {
        get { machine.transactionStatus }
        set { machine.transactionStatus = newValue }
    }
    private var needsParameterResync: Bool {
        get { machine.needsParameterResync }
        set { machine.needsParameterResync = newValue }
    }

    private let loopSessions: LoopSessions
    /// This session's index in `loopSessions` (-1: not there).
    var loopSlot = -1

    init(
        runtime: ProxyRuntime, loopSessions: LoopSessions, endpoint: Int = 0, processID: Int32, secretKey: Int32,
        logger: Logger
    ) {
        self.runtime = runtime
        self.endpoint = endpoint
        self.loopSessions = loopSessions
        self.eventLoop = loopSessions.eventLoop
        self.processID = processID
        self.secretKey = secretKey
        self.logger = logger
        self.logLevel = logger.logLevel
    }

    /// Logs with this client's id, user and database; the metadata is built only when the
    /// level is enabled.
    private func log(
        _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message, _ extra: @autoclosure () -> Logger.Metadata = [:]
    ) {
        guard logLevel <= level else { return }
        var metadata = extra()
        metadata["concierge.client_id"] = "\(processID)"
        if !user.isEmpty {
            metadata["concierge.user"] = "\(user)"
            metadata["concierge.database"] = "\(database)"
        }
        logger.log(level: level, message(), metadata: metadata)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        machine.connected(now: .now())
        if !machine.isClosed { loopSessions.add(self) }
        context.fireChannelActive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // A client that reads slowly makes us stop reading its backend's results.
        backend?.setReadingPaused(!context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func backendWritabilityChanged(isWritable: Bool) {
        machine.backendBlocked = !isWritable
        resumeReadsIfNeeded()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        teardown()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        log(.debug, "client connection error", ["concierge.error": "\(error)"])
        if login.isTLS, case .authenticating = machine.state,
            error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError
        {
            // A failed handshake: ClientConnectionsSetupFailedAuth counts TLS misconfiguration.
            runtime.metrics.clientConnectionsSetupFailedAuth[endpoint].increment()
            log(.info, "client TLS handshake failed", ["concierge.error": "\(error)"])
        }
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if machine.readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    private func resumeReadsIfNeeded() {
        guard readPending, !machine.readsPaused, let context else { return }
        readPending = false
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var pending = cumulation {
            cumulation = nil
            pending.writeBuffer(&incoming)
            incoming = pending
        }
        machine.clientActivity(now: .now())
        do {
            try process(&incoming, context: context)
        } catch let error as PGWireError {
            fail(with: ClientErrors.protocolError(error))
            return
        } catch {
            fail(with: ClientErrors.protocolViolation("invalid message: \(error)"))
            return
        }
        if incoming.readableBytes > 0, !machine.isClosed {
            // Keep only the partial message; a slice avoids moving (or copying, when forwarded
            // messages still share the storage) the bytes already handled.
            cumulation = incoming.slice()
        }
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

    // MARK: Incoming bytes by state

    private func process(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) throws {
        if cancelPending {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return
        }
        while true {
            switch machine.state {
            case .closed:
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                return
            case .authenticating:
                let action: ClientLogin.Action
                if case .awaitingStartup = login.state {
                    guard let packet = try PGFraming.nextStartupPacket(from: &buffer) else { return }
                    let runtime = self.runtime
                    action = login.packetReceived(
                        packet, trailingBytes: buffer.readableBytes, tlsAvailable: runtime.serverTLSContext != nil,
                        environment: ClientLogin.Environment(
                            policy: AuthPolicy(requireTLS: runtime.requireTLS), clientLimitExceeded: runtime.clientLimitExceeded,
                            users: runtime.users, md5Salt: { SecureRandom.bytes(4) }))
                    user = login.user
                    database = login.database
                } else {
                    guard let frame = try PGFraming.nextFrame(from: &buffer, maxMessageSize: 65_536) else { return }
                    action = login.messageReceived(frame)
                }
                run(action, context: context)
            case .loggingIn, .ready:
                // While logging in, the client must wait for ReadyForQuery: what it sends is held.
                guard let frame = try PGFraming.nextFrame(from: &buffer, maxMessageSize: runtime.maxMessageSize) else { return }
                try handleDataMessage(frame)
            }
        }
    }

    /// Carries out what the login machine decided.
    private func run(_ action: ClientLogin.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .answerEncryptionRequest(let acceptTLS):
            var out = context.channel.allocator.buffer(capacity: 1)
            out.writeInteger(UInt8(ascii: acceptTLS ? "S" : "N"))
            // The answer goes out in plaintext; everything after it through TLS.
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            guard acceptTLS, let tls = runtime.serverTLSContext else { return }
            do {
                try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls), position: .first)
            } catch {
                log(.error, "could not start TLS", ["concierge.error": "\(error)"])
                login.tlsFailed()
                context.close(promise: nil)
            }
        case .cancel(let processID, let secretKey):
            // Nothing else may come on this connection; it closes once the cancel is delivered.
            cancelPending = true
            runtime.cancel(processID: processID, secretKey: secretKey, on: context.eventLoop).whenComplete { [weak self] _ in
                self?.closeGracefully()
            }
        case .write(let bytes):
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .checkIAMToken(let token):
            let outcome = runtime.authenticateIAM(token: token, user: user, endpoint: endpoint)
            switch outcome {
            case .allowed(let principal):
                log(.debug, "IAM authentication succeeded", ["concierge.principal": "\(principal)"])
                run(login.iamTokenChecked(allowed: true, reason: ""), context: context)
            case .refused(let reason):
                run(login.iamTokenChecked(allowed: false, reason: reason), context: context)
            }
        case .authenticated(let bytes):
            context.write(wrapOutboundOut(bytes), promise: nil)
            desiredParameters = login.parameters
            poolKey = PoolKey(user: user, database: database)
            beginLogin()
        case .fail(let fields, let failedAuthentication):
            if let failedAuthentication {
                runtime.metrics.clientConnectionsSetupFailedAuth[endpoint].increment()
                switch failedAuthentication {
                case .tlsRequired: break
                case .iamWithoutTLS: log(.info, "IAM authentication refused: the client did not use TLS")
                case .wrongPassword: log(.info, "client authentication failed")
                case .iamTokenRefused(let reason): log(.info, "IAM authentication failed", ["concierge.reason": "\(reason)"])
                }
            }
            fail(with: fields)
        }
    }

    // Login

    private func beginLogin() {
        let known = runtime.loginState(for: poolKey)
        var template: LoginTemplate?
        if let known = known.template, knowsCanonicalValues(template: known) { template = known }
        switch machine.authenticated(knowsParameters: template != nil, now: .now()) {
        case .completeLogin:
            completeLogin(template: template ?? LoginTemplate([]), classifierOptions: known.classifierOptions)
        case .borrowProbe:
            // First client of this user/database: a backend tells us what PostgreSQL reports (and
            // whether the database exists at all). It is returned right away. The same for a
            // client whose startup parameters PostgreSQL would report in a spelling not seen yet.
            borrowBackend()
        }
    }

    /// See `SessionParameters.knowsCanonicalValues`.
    private func knowsCanonicalValues(template: LoginTemplate) -> Bool {
        let (runtime, poolKey) = (self.runtime, self.poolKey)
        return parameters.knowsCanonicalValues(template: template) { runtime.canonicalValue(of: $0, as: $1, for: poolKey) }
    }

    /// See `SessionParameters.learnCanonicalValues`.
    private func learnCanonicalValues(from reported: [String: String]) {
        let (runtime, poolKey) = (self.runtime, self.poolKey)
        parameters.learnCanonicalValues(from: reported) { runtime.learnCanonicalValue(of: $0, as: $1, $2, for: poolKey) }
    }

    private func completeLogin(template: LoginTemplate, classifierOptions: ClassifierOptions) {
        guard let context else { return }
        var out = context.channel.allocator.buffer(capacity: 512)
        // The client's own values replace the template's: usually one or two (application_name),
        // so they are looked up in the template rather than the template in them.
        var overrides: [(index: Int, value: String)] = []
        for (name, value) in desiredParameters {
            if let index = template.indexByLowercasedName[name], template.parameters[index].value != value {
                overrides.append((index, value))
            }
        }
        for index in template.parameters.indices {
            if !overrides.isEmpty, let override = overrides.first(where: { $0.index == index }) {
                PGEncode.parameterStatus(name: template.parameters[index].name, value: override.value, into: &out)
            } else {
                out.writeImmutableBuffer(template.encoded[index])
            }
        }
        PGEncode.backendKeyData(processID: processID, secretKey: secretKey, into: &out)
        PGEncode.readyForQuery(.idle, into: &out)
        self.classifierOptions = classifierOptions
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        parameters.loggedIn(with: runtime.interned(desiredParameters))
        login.forgetCredentials()
        runtime.metrics.clientConnectionsSetupSucceeded[endpoint].increment()
        log(.debug, "client logged in")
        // Messages the client pipelined during login are served now.
        if machine.loginCompleted(now: .now()) {
            requestBackend()
        }
        resumeReadsIfNeeded()
    }

    // MARK: Data path

    private func handleDataMessage(_ frame: PGFrame) throws {
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
    private func answerDeallocateLocally(_ name: String) -> Bool {
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
    private var answersLocally: Bool { machine.answersLocally }

    /// See `ClientSessionMachine.isBetweenTransactions`.
    private var isBetweenTransactions: Bool { machine.isBetweenTransactions }

    private func writeToClient(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
        needsFlushToClient = true
    }

    private static func isSyncPoint(_ type: UInt8) -> Bool {
        ClientSessionMachine.isSyncPoint(type)
    }

    private func route(_ message: HeldMessage) {
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
    private func classify(_ sql: ByteBuffer, loneSetAllowed: Bool = false) -> Classification {
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

    private func pin(_ reasons: PinReasons, statement: ByteBuffer) {
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
    private func borrowBackend() {
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
    private func requestBackend() {
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

    private func borrowFailed(_ error: BorrowError) {
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

    private func borrowFailed(with fields: PGErrorFields) {
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

    private func replyReadyLocally() {
        guard let context else { return }
        var out = context.channel.allocator.buffer(capacity: 6)
        PGEncode.readyForQuery(.idle, into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    // MARK: BackendOwner

    func backendDidPrepare(_ result: Result<[String: String], BackendError>) {
        guard let backend else { return }
        switch result {
        case .success(let reported):
            switch machine.backendPrepared() {
            case .none:
                break
            case .completeLogin(let release):
                // The login probe: learn the parameters, give the backend back (unless the client
                // pipelined messages meanwhile: they go to it), finish login.
                learnCanonicalValues(from: reported)
                let known = runtime.loginState(for: poolKey)
                let template = known.template ?? LoginTemplate([])
                if release { releaseBackend() }
                completeLogin(template: template, classifierOptions: known.classifierOptions)
                if !release { sendHeld(to: backend) }
            case .sendHeld(let thenCancel):
                sendHeld(to: backend)
                if thenCancel {
                    // A cancel came while the backend was prepared: the statement is on its way,
                    // the cancel follows it (over its own connection, so it cannot overtake it).
                    backend.flush()
                    trackCancel(backend.sendCancelRequest())
                }
            }
        case .failure(let error):
            self.backend = nil
            let serverError: PGErrorFields?
            if case .server(let fields) = error { serverError = fields } else { serverError = nil }
            switch machine.backendPrepareFailed(serverError: serverError != nil, now: .now()) {
            case .fail:
                if let fields = serverError {
                    fail(with: PGErrorFields(severity: "FATAL", code: fields.code, message: fields.message, detail: fields.detail, hint: fields.hint))
                } else {
                    fail(with: ClientErrors.backendLost)
                }
            case .borrowAgain:
                runtime.backendConnectionLost()
                log(.info, "the database connection leased to this client was closed before use: borrowing another")
                borrowBackend()
            case .unavailable:
                runtime.backendConnectionLost()
                borrowFailed(with: ClientErrors.backendUnavailable("\(error)"))
            }
        }
    }

    /// Whether `message` touches the client's statements while an earlier batch (before a
    /// Sync, or a simple Query) that may still change them is unanswered. PostgreSQL decides
    /// that earlier batch's fate (an error skips the rest of it); within one batch the proxy's
    /// bookkeeping follows skips, but a message of a later batch sent before the answer would be
    /// sent according to a guess.
    private func mustWaitForEarlierBatches(_ message: HeldMessage) -> Bool {
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


    /// After each answer: the messages held behind an earlier batch go out once nothing they
    /// depend on is pending (see `mustWaitForEarlierBatches`).
    private func releaseHeldBehindEarlierBatches(to backend: BackendConnection) {
        guard machine.waitingForEarlierBatches, machine.isBackendReady else { return }
        var sent = false
        var sentSinceForced = false
        while let first = machine.held.first {
            if !mustWaitForEarlierBatches(first), !mustCheckResultTypeFirst(first, on: backend) {
                sentSinceForced = true
            } else if !sentSinceForced, responses.outstandingSyncs == 0, !catalogue.awaitingShape {
                // Nothing in flight to wait for (cannot happen; never stall a client on it).
            } else {
                break
            }
            guard let message = machine.popHeld() else { break }
            send(message, to: backend)
            sent = true
        }
        if sent { backend.flush() }
        if machine.heldDrained() { resumeReadsIfNeeded() }
    }

    private func sendHeld(to backend: BackendConnection) {
        guard !held.isEmpty else { return }
        // What waited for a backend goes out now, up to a message that must wait for the answer
        // to an earlier batch among them (see `mustWaitForEarlierBatches`).
        machine.waitingForEarlierBatches = true
        releaseHeldBehindEarlierBatches(to: backend)
    }

    func backendDidRead(
        _ bytes: ByteBuffer, readyForQueryCount: Int, firstStatus: PGTransactionStatus, lastStatus: PGTransactionStatus,
        sawError: Bool, reports: Bool
    ) {
        guard let context, let backend else { return }
        let bytes = reports ? filterReports(bytes) : bytes
        switch parameters.backendAnswered(readyForQueryCount: readyForQueryCount, firstStatus: firstStatus, sawError: sawError) {
        case .none:
            break
        case .applied(let name, let value):
            backend.noteApplied(name: name, value: value)
        case .pin(let name):
            pin(.setVariable, statement: ByteBuffer(string: name))
        }
        if !responses.isTracking, resetWindow == nil {
            context.write(wrapOutboundOut(bytes), promise: nil)
            // Only Query and Sync entries: one ReadyForQuery each.
            responses.forwardedUntracked(readyForQueryCount: readyForQueryCount)
        } else {
            relayTracked(bytes, from: backend, context: context)
        }
        switch machine.readyForQueryForwarded(count: readyForQueryCount, status: lastStatus) {
        case .none:
            // An error may have ended the batch that held messages back (its reset skipped).
            break
        case .release(let thenClose):
            // The transaction is over: the client gets its answer now, because the backend may
            // move to another client (and its read-complete) before this call returns. The
            // bookkeeping comes after the answer is on its way.
            context.flush()
            recordQueryLatency()
            releaseBackend()
            // Shutting down: this was the client's last transaction. (Not left to the backend's
            // read-complete, which no longer reaches a session that gave the backend back.)
            if thenClose { fail(with: ClientErrors.shuttingDown) }
            return
        case .keep:
            recordQueryLatency()
        case .reapply:
            // The session keeps this backend (a transaction, a pin, messages that waited behind
            // the reset) after RESET ALL, RESET name or DISCARD ALL: its next messages wait until
            // the backend has its values again (then `sendHeld`).
            recordQueryLatency()
            backend.reapply(to: self, parameters: desiredParameters)
            return
        }
        if machine.waitingForEarlierBatches { releaseHeldBehindEarlierBatches(to: backend) }
    }

    /// The database's response time for what the client sent, up to its last ReadyForQuery.
    private func recordQueryLatency() {
        runtime.metrics.queryDatabaseResponseLatency.record(.nanoseconds((NIODeadline.now() - queryStarted).nanoseconds))
    }

    func backendDidReadComplete() {
        context?.flush()
        if machine.draining, machine.isBetweenTransactions {
            fail(with: ClientErrors.shuttingDown)
        }
    }

    /// See `SessionParameters.filterReports`.
    private func filterReports(_ bytes: ByteBuffer) -> ByteBuffer {
        parameters.filterReports(bytes) { loginTemplateValue(of: $0) }
    }

    /// What the client was told at login of a parameter it did not set (lowercased name).
    private func loginTemplateValue(of name: String) -> String? {
        guard let template = runtime.loginState(for: poolKey).template,
              let index = template.indexByLowercasedName[name] else { return nil }
        return template.parameters[index].value
    }

    func backendDidClose() {
        guard backend != nil else { return }
        backend = nil
        runtime.backendConnectionLost()
        let lost = machine.backendClosed(now: .now())
        guard case .answer(let syncPoints, let unsyncedError, let borrow) = lost, let context else {
            // A pinned session's state lived on that backend: it cannot go on.
            log(.warning, "database connection lost while serving this client")
            fail(with: ClientErrors.backendLost)
            return
        }
        log(.warning, "database connection lost mid-transaction: the client gets an error and keeps its connection")
        catalogue.backendDetached()
        resetWindow = nil
        pendingSetting = nil
        var out = context.channel.allocator.buffer(capacity: 256)
        for _ in 0..<syncPoints {
            PGEncode.errorResponse(ClientErrors.transactionLost, into: &out)
            PGEncode.readyForQuery(.idle, into: &out)
        }
        // PostgreSQL's rule after an error: extended messages are discarded until Sync.
        if unsyncedError { PGEncode.errorResponse(ClientErrors.transactionLost, into: &out) }
        if out.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(out), promise: nil) }
        // Messages that arrived meanwhile are served by a new backend.
        if borrow { borrowBackend() }
        resumeReadsIfNeeded()
    }

    private func releaseBackend() {
        guard let backend else { return }
        catalogue.backendDetached()
        machine.backendReleased(now: .now())
        self.backend = nil
        backend.release(reusable: true)
    }

    // MARK: Idle timeout

    /// Called by `loopSessions` about once a second.
    func checkTimeouts(now: NIODeadline) {
        switch machine.tick(now: now, idleTimeout: .seconds(Int64(runtime.idleClientTimeout))) {
        case .none:
            break
        case .authentication:
            fail(with: ClientErrors.authenticationTimeout)
        case .idle:
            log(.info, "closing idle client")
            fail(with: ClientErrors.idleTimeout)
        }
    }

    // MARK: Metrics

    /// This session's part of the gauges (called on its loop, at scrape time).
    func addMetrics(to sample: inout LoopMetricsSample) {
        sample.clientsPerEndpoint[endpoint] += 1
        guard backend != nil else { return }
        if machine.countsAsPinned { sample.pinned += 1 }
        if machine.countsInTransaction { sample.inTransaction += 1 }
    }

    // MARK: Control from the runtime (any thread)

    /// Graceful shutdown: close now if idle, else after the current transaction.
    func beginDrain() {
        eventLoop.execute { [self] in
            if self.machine.drain() { self.fail(with: ClientErrors.shuttingDown) }
        }
    }

    /// The drain deadline passed: close regardless.
    func forceClose() {
        eventLoop.execute { [self] in self.fail(with: ClientErrors.shuttingDown) }
    }

    /// A CancelRequest carrying this session's key: cancel what its backend is running. The
    /// future completes when the database has the request (or at once if nothing runs).
    func cancelCurrentQuery() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in
            switch self.machine.cancelRequested() {
            case .none:
                break
            case .cancelWait(let request):
                // Still waiting for a backend: the statement is cancelled before it starts.
                if let request { (self.borrowPool ?? self.runtime.pool).cancel(request) }
                self.log(.info, "cancelling a statement that waits for a database connection at the client's request")
                self.borrowFailed(with: ClientErrors.queryCanceled)
            case .afterSend:
                self.log(.info, "cancelling a statement that waits for its database connection to be prepared")
            case .sendCancel:
                guard let backend = self.backend else { break }
                self.log(.info, "cancelling the running query at the client's request")
                let sent = backend.sendCancelRequest()
                self.trackCancel(sent)
                return sent
            }
            return self.eventLoop.makeSucceededVoidFuture()
        }
    }

    /// Until the database has the cancel, the backend stays with this client (see
    /// `ClientSessionMachine.cancelsInFlight`).
    private func trackCancel(_ sent: EventLoopFuture<Void>) {
        machine.cancelSent()
        sent.hop(to: eventLoop).whenComplete { [self] _ in
            guard case .release(let thenClose) = machine.cancelDelivered() else { return }
            // The transaction ended while the cancel was on its way: the backend goes back now.
            releaseBackend()
            if thenClose { fail(with: ClientErrors.shuttingDown) }
        }
    }

    // MARK: Closing

    private func fail(with fields: PGErrorFields) {
        guard let context, !machine.isClosed else { return }
        var out = context.channel.allocator.buffer(capacity: 128)
        PGEncode.errorResponse(fields, into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        closeGracefully()
    }

    private func closeGracefully() {
        guard let context, !machine.isClosed else { return }
        teardown()
        context.close(promise: nil)
    }

    /// Gives back or disposes of the backend so no state leaks to the next client.
    private func teardown() {
        guard let teardown = machine.closed() else { return }
        loopSessions.remove(self)
        if let request = teardown.cancelBorrow {
            (borrowPool ?? runtime.pool).cancel(request)
        }
        if let backend {
            self.backend = nil
            switch teardown.backend {
            case .none, .release: backend.release(reusable: true)
            case .discard: backend.release(reusable: false)
            case .cancelAndClose: backend.cancelAndClose()
            case .rollbackAndRelease: backend.rollbackAndRelease()
            }
        }
        runtime.sessionClosed(self)
    }
}

extension ByteBuffer {
    /// Reads a NUL-terminated string as a slice without the NUL (no copy), or nil without a NUL.
    mutating func readNullTerminatedSlice() -> ByteBuffer? {
        guard let length = readableBytesView.firstIndex(of: 0).map({ $0 - readerIndex }),
            let slice = readSlice(length: length)
        else { return nil }
        moveReaderIndex(forwardBy: 1)
        return slice
    }
}

// MARK: - Sending to the backend, prepared statements

extension ClientSession {
    /// Sends one client message to the leased backend: named statements are renamed (and
    /// prepared on this backend first when it lacks them), Parse and Close of named statements
    /// may be answered by the proxy, and `responses` records what the backend owes.
    fileprivate func send(_ message: HeldMessage, to backend: BackendConnection) {
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

    /// A simple Query with a statement that resets session state: the statement cache is made
    /// safe before it runs, and its outcome is watched (`applyReset`).
    private func sendResetQuery(
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
    private func beginReset(_ resets: Resets, on backend: BackendConnection) -> ResetWatch {
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
    private func openResetWindow(parameters: Set<String>?, resets: Resets) {
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

    private func sendParse(_ frame: PGFrame, resets: Resets, to backend: BackendConnection) {
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

    private func sendBind(_ frame: PGFrame, to backend: BackendConnection) {
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
    private func mustCheckResultTypeFirst(_ message: HeldMessage, on backend: BackendConnection) -> Bool {
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
    private func prepareAndWait(_ statement: ClientStatement, client: String, on backend: BackendConnection) {
        let parsedAt = injectParse(statement, client: client, waiting: true, on: backend).parsedAt
        // PostgreSQL answers only at a Sync or Flush, and the client's may be among the
        // messages that now wait.
        backend.write(StatementMessages.flush)
        backend.flush()
        catalogue.awaitShape(key: statement.key, parsedAt: parsedAt)
    }

    /// The Describe after a Parse of a named statement (see `PendingResponse.shapeDescribe`).
    private func describeShape(
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
    private func repin(_ resets: Resets) {
        guard !resets.pins.isEmpty else { return }
        pin(resets.pins, statement: ByteBuffer(string: "(a prepared statement)"))
    }

    /// An unnamed statement whose text is `EXECUTE name` of one of the client's protocol-level
    /// statements (asyncpg's `fetchval('EXECUTE foobar')`): its definition with the backend's name
    /// for it, prepared there first if needed; nil when there is nothing to rewrite.
    private func executeRewritten(_ definition: ByteBuffer, resets: Resets, on backend: BackendConnection) -> ByteBuffer? {
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
    private func ensureUnnamedStatement(on backend: BackendConnection) {
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
    private func prepare(_ statement: ClientStatement, client: String, on backend: BackendConnection) -> String {
        if let serverName = catalogue.useCopy(of: statement, client: client, cache: &backend.statementCache) {
            return serverName
        }
        return injectParse(statement, client: client, waiting: false, on: backend).serverName
    }

    /// Parses the client's `statement` on the backend under the proxy's name (a Close first, its
    /// ParseComplete dropped), with the Describe that records its row type (`waiting`: the
    /// client's messages wait for that answer). A statement the proxy acknowledged without a
    /// backend gets its row type from its first Parse on one: what the client sees first.
    private func injectParse(
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
    private func closeBeforeParse(_ serverName: String, on backend: BackendConnection) {
        var close = backend.allocator.buffer(capacity: 8 + serverName.utf8.count)
        StatementMessages.closeStatement(serverName, into: &close)
        backend.write(close)
        appendPending(.injectedClose())
    }

    private func appendPending(_ entry: PendingResponse) {
        responses.sent(entry)
    }

    /// Answers the proxy-answered entries at the head of `responses`: everything before them has
    /// been forwarded, so this is where PostgreSQL would have answered them.
    private func emitLocalResponses() {
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

    /// Forwards backend responses while the tracker holds extended-protocol entries (or a reset
    /// is watched): the tracker decides which message answers which entry, which are the
    /// answers to the proxy's own messages (dropped) and where the proxy's answers go; the
    /// session does its own work for each answered entry. Forwarded runs stay slices of `bytes`
    /// (no copy).
    fileprivate func relayTracked(_ bytes: ByteBuffer, from backend: BackendConnection, context: ChannelHandlerContext) {
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
                    applyResetAtReady(watch, status: status, backend: backend)
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
                    applyResetAtCompletion(watch, tag: bytes.getSlice(at: frameStart + 5, length: size - 5) ?? ByteBuffer(), backend: backend)
                case .execute(_, let watch?):
                    applyResetAtCompletion(watch, tag: bytes.getSlice(at: frameStart + 5, length: size - 5) ?? ByteBuffer(), backend: backend)
                    // An Execute's CommandComplete is its success: nothing to confirm later.
                    statementResetConfirmed = false
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
    private func errorWithoutInternalNames(
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
    private func backendReportedError(
        _ outcome: ResponseTracker.ErrorOutcome, body: ByteBuffer, backend: BackendConnection
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

    // MARK: Session resets

    /// A CommandComplete of a statement that resets session state: what PostgreSQL has now done
    /// is applied to the client's state as the proxy models it. Prepared statements and cursors
    /// are not transactional, so this happens at once.
    private func applyResetAtCompletion(_ watch: ResetWatch, tag: ByteBuffer, backend: BackendConnection) {
        var tag = tag
        guard let text = tag.readNullTerminatedSlice() else { return }
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
    private func applyResetAtReady(_ watch: ResetWatch, status: PGTransactionStatus, backend: BackendConnection) {
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
    private func closeResetWindow(status: PGTransactionStatus, context: ChannelHandlerContext, backend: BackendConnection) {
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

    /// Releases `reasons` that `watch`'s reset undid: not those its own statement pins, nor
    /// those pinned after it was classified (a LISTEN after an UNLISTEN * in the same write).
    private func unpin(_ reasons: PinReasons, for resets: Resets) {
        let removed = pins.unpin(reasons, except: resets.pins, pinnedAfter: resets.pinClock)
        guard !removed.isEmpty else { return }
        log(.info, pinReasons.isEmpty ? "session unpinned" : "session pin reason removed", [
            "concierge.pin_reason": "\(removed.names.joined(separator: ","))"
        ])
    }

    /// A message that `failed` (or was skipped after a failure) did not create its statement
    /// (`StatementCatalogue.forget`). If the messages waiting for a row type go on because the
    /// Parse they waited for failed, and that Parse prepared a statement for a simple Query,
    /// the Query is answered by a Sync (`syncInsteadOfQuery`).
    private func forgetStatement(of entry: PendingResponse, failed: Bool, backend: BackendConnection) {
        let waitingReleased = catalogue.forget(
            entry, failed: failed, transactionFailed: transactionStatus == .failed, cache: &backend.statementCache)
        if waitingReleased, preparingForQuery {
            preparingForQuery = false
            syncInsteadOfQuery = true
        }
    }
}
