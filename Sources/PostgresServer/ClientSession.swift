import ConciergeRandom
import ConciergeRuntime
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

    // Every idle client holds one of these objects: what it stores is memory per client (see
    // README "Performance", memory per idle client). What can be found elsewhere is read from
    // there (the loop and logger), and what only the login needs goes with it.
    /// The client's event loop (its `LoopSessions`' loop).
    var eventLoop: any EventLoop { loopSessions.eventLoop }
    /// The endpoint the client connected to (0: the proxy's default endpoint).
    let endpoint: Int
    let processID: Int32
    let secretKey: Int32
    let runtime: PostgresRuntime
    /// The proxy's logger; per-client metadata is added at each call (see `log`).
    var logger: Logger { runtime.logger }
    /// The logger's level, read once: `Logger.logLevel` asks the handler through an existential
    /// (a copy of it) on every call, and `log` is on the per-transaction path.
    let logLevel: Logger.Level
    var context: ChannelHandlerContext?
    /// The session's life and the client's batch state (see `ClientSessionMachine`).
    var machine = ClientSessionMachine(now: .now())
    /// The login's machine, boxed: it holds the SCRAM or md5 exchange, the user's credentials
    /// entry and the startup packet's values, which a logged-in client has no use for, so the
    /// box is dropped once the client is logged in (`completeLogin`). Its user and database are
    /// copied to `poolKey` once known.
    private var loginBox: LoginBox? = LoginBox()
    /// The login's machine; only while the client logs in (see `loginBox`).
    var login: ClientLogin {
        _read { yield loginBox!.login }
        _modify { yield &loginBox!.login }
    }
    var cumulation: ByteBuffer?
    /// This connection carried a CancelRequest: it closes once the request is delivered.
    var cancelPending = false

    // Login
    /// From the startup packet (`poolKey` holds them, once known).
    var user: String { poolKey.user }
    var database: String { poolKey.database }
    /// Session parameters the client asked for in its startup packet (lowercased name → value),
    /// applied to whichever backend serves it.
    var desiredParameters: [String: String] {
        _read { yield parameters.current }
        _modify { yield &parameters.current }
    }
    /// The client's session parameters (`machine.parameters`).
    var parameters: SessionParameters {
        _read { yield machine.parameters }
        _modify { yield &machine.parameters }
    }
    /// The client's user and database, from its startup packet (empty before).
    var poolKey = ClientSession.noKey
    private static let noKey = PoolKey(user: "", database: "")

    // Data path
    /// The leased backend (`machine.link` says how it stands).
    var backend: BackendConnection?
    /// The pool of the current borrow (the writer's, or a reader's for a READ_ONLY endpoint).
    var borrowPool: BackendPool?
    /// When the first of the outstanding sync points (`responses`) went to the database (QueryDatabaseResponseLatency).
    var queryStarted = NIODeadline.uptimeNanoseconds(0)
    var readPending = false
    var needsFlushToBackend = false
    /// Bytes written to the client and not flushed yet: set by every write that is not flushed
    /// at once, cleared by every flush. The client's and the backend's read-complete flush only
    /// when it is set.
    var needsFlushToClient = false

    // Prepared statements (see PreparedStatements.swift)
    /// The client's named and unnamed statements and its portals (`StatementCatalogue`).
    var catalogue: StatementCatalogue {
        _read { yield machine.catalogue }
        _modify { yield &machine.catalogue }
    }

    // Session resets (RESET ALL, DISCARD ALL, ...; see ClientSessionMachine+Resets.swift)
    /// A RESET ALL or DISCARD ALL is on its way: ParameterStatus messages are held back until
    /// its ReadyForQuery, when the client gets what PostgreSQL would have reported to it.
    var resetWindow: ResetWindow? {
        // Not `_read`/`_modify`: the machine's value is computed (see `OutOfLine`).
        get { machine.resetWindow }
        set { machine.resetWindow = newValue }
    }

    /// A `SET` sent alone outside a transaction (see `SQLTrackedSettings`): the client's value
    /// once its ReadyForQuery arrives without an error.
    var pendingSetting: SessionParameters.PendingSetting? {
        // Not `_read`/`_modify`: the value is computed (see `OutOfLine`).
        get { parameters.pendingSetting }
        set { parameters.pendingSetting = newValue }
    }

    var pinReasons: PinReasons { machine.pins.reasons }

    // The machine's parts that statement handling (below, and `send`/`relayTracked`) uses, in
    // place: `_modify` yields the stored value, so no copy is made.
    var responses: ResponseTracker {
        _read { yield machine.responses }
        _modify { yield &machine.responses }
    }
    var pins: PinState {
        _read { yield machine.pins }
        _modify { yield &machine.pins }
    }
    var needsParameterResync: Bool {
        get { machine.needsParameterResync }
        set { machine.needsParameterResync = newValue }
    }

    let loopSessions: LoopSessions<ClientSession>
    /// This session's index in `loopSessions` (-1: not there).
    var loopSlot = -1

    init(runtime: PostgresRuntime, loopSessions: LoopSessions<ClientSession>, endpoint: Int = 0, processID: Int32, secretKey: Int32) {
        self.runtime = runtime
        self.endpoint = endpoint
        self.loopSessions = loopSessions
        self.processID = processID
        self.secretKey = secretKey
        self.logLevel = runtime.logger.logLevel
    }

    /// Logs with this client's id, user and database; the metadata is built only when the
    /// level is enabled.
    func log(
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
        // Normally a no-op: `channelInactive` tore the session down already. A channel closed
        // before it was ever active (its registration failed, as when its event loop is shutting
        // down while a client is accepted) gets no `channelInactive`, only this: without it the
        // session would stay registered, counted among the clients, and hold up a drain.
        teardown()
    }

    func channelInactive(context: ChannelHandlerContext) {
        teardown()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        log(.debug, "client connection error", ["concierge.error": "\(error)"])
        if case .authenticating = machine.state, login.isTLS,
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

    func resumeReadsIfNeeded() {
        guard readPending, !machine.readsPaused, let context else { return }
        readPending = false
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        // Whether `incoming` is SwiftNIO's receive buffer (rather than our own cumulation).
        let isReceiveBuffer = cumulation == nil
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
            // Keep only the partial message. Out of SwiftNIO's receive buffer it is copied: a
            // slice would share that buffer, which SwiftNIO then could not reuse for its next
            // read; it would allocate another, and an array of 16 buffer slots, and keep both
            // for the connection's life (about 600 bytes for a client whose startup packet
            // took two reads). The slice cost the same copy at the next read anyway (appending
            // to a buffer that shares its storage copies it). Our own cumulation is sliced: no
            // copy (a slice avoids moving the bytes already handled).
            if isReceiveBuffer {
                var kept = context.channel.allocator.buffer(capacity: incoming.readableBytes)
                kept.writeBuffer(&incoming)
                cumulation = kept
            } else {
                cumulation = incoming.slice()
            }
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

    func process(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) throws {
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
                    if poolKey.user != login.user || poolKey.database != login.database {
                        poolKey = PoolKey(user: login.user, database: login.database)
                    }
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
    func run(_ action: ClientLogin.Action, context: ChannelHandlerContext) {
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
            let key = CancelKey(id: UInt32(bitPattern: processID), secret: UInt32(bitPattern: secretKey))
            runtime.cancel(key: key, on: context.eventLoop).whenComplete { [weak self] _ in
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

    func beginLogin() {
        // Authenticated: the key the pool shares for this user and database replaces the
        // session's own (see `PoolKeyTable`).
        poolKey = runtime.poolKeys.shared(poolKey)
        // Messages pipelined during login are classified with the proxy's options until the
        // server's are known.
        machine.classifierOptions = runtime.engine.classifierOptions
        let known = runtime.engine.loginState(for: poolKey)
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
    func knowsCanonicalValues(template: LoginTemplate) -> Bool {
        let (runtime, poolKey) = (self.runtime, self.poolKey)
        return parameters.knowsCanonicalValues(template: template) { runtime.engine.canonicalValue(of: $0, as: $1, for: poolKey) }
    }

    /// See `SessionParameters.learnCanonicalValues`.
    func learnCanonicalValues(from reported: [String: String]) {
        let (runtime, poolKey) = (self.runtime, self.poolKey)
        parameters.learnCanonicalValues(from: reported) { runtime.engine.learnCanonicalValue(of: $0, as: $1, $2, for: poolKey) }
    }

    func completeLogin(template: LoginTemplate, classifierOptions: ClassifierOptions) {
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
        if overrides.isEmpty {
            out.writeImmutableBuffer(template.encodedAll)
        } else {
            // The template's messages in runs, the client's own values between them.
            overrides.sort { $0.index < $1.index }
            var runStart = 0
            for override in overrides {
                if override.index > runStart { out.writeImmutableBuffer(template.encoded(runStart..<override.index)) }
                PGEncode.parameterStatus(name: template.parameters[override.index].name, value: override.value, into: &out)
                runStart = override.index + 1
            }
            if runStart < template.parameters.count {
                out.writeImmutableBuffer(template.encoded(runStart..<template.parameters.count))
            }
        }
        PGEncode.backendKeyData(processID: processID, secretKey: secretKey, into: &out)
        PGEncode.readyForQuery(.idle, into: &out)
        machine.classifierOptions = classifierOptions
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        parameters.loggedIn(with: runtime.engine.interned(desiredParameters))
        loginBox = nil
        runtime.metrics.clientConnectionsSetupSucceeded[endpoint].increment()
        log(.debug, "client logged in")
        // Messages the client pipelined during login are served now.
        if machine.loginCompleted(now: .now()) {
            borrowBackend()
        }
        resumeReadsIfNeeded()
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
    func trackCancel(_ sent: EventLoopFuture<Void>) {
        machine.cancelSent()
        sent.hop(to: eventLoop).whenComplete { [self] _ in
            guard case .release(let thenClose) = machine.cancelDelivered() else { return }
            // The transaction ended while the cancel was on its way: the backend goes back now.
            releaseBackend()
            if thenClose { fail(with: ClientErrors.shuttingDown) }
        }
    }

    // MARK: Closing

    func fail(with fields: PGErrorFields) {
        guard let context, !machine.isClosed else { return }
        var out = context.channel.allocator.buffer(capacity: 128)
        PGEncode.errorResponse(fields, into: &out)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        closeGracefully()
    }

    func closeGracefully() {
        guard let context, !machine.isClosed else { return }
        teardown()
        context.close(promise: nil)
    }

    /// Gives back or disposes of the backend so no state leaks to the next client.
    func teardown() {
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

/// A client's `ClientLogin` while it logs in (see `ClientSession.loginBox`).
private final class LoginBox {
    var login = ClientLogin()
}
