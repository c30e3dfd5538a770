import ConciergeRuntime
import ConnectionPool
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOConcurrencyHelpers
import PostgresProxy
import PostgresWire
import Synchronization

/// One connection from the proxy to the database: the channel handler that runs its
/// `BackendStateMachine` (login, setup, pool phases, health checks; PostgresProxy) and forwards
/// what the database sends to the leasing session.
///
/// All mutable state is confined to `eventLoop`; other threads talk to it through methods that
/// hop there. While leased it forwards what the database sends to its owner, parsing only the
/// message headers (and ReadyForQuery's status) and never re-encoding.
final class BackendConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Action = BackendStateMachine.Action

    let id: ConnectionID
    let key: PoolKey
    let eventLoop: any EventLoop
    let address: SocketAddress
    private let settings: BackendSettings
    var generation: Int { settings.generation }
    private var machine: BackendStateMachine
    /// Set once in channelActive, before the backend is handed to anyone, and never cleared.
    private var channel: (any Channel)?
    /// This handler's context (set in channelActive, cleared when the handler is removed): the
    /// client session's writes on this loop go through it (`write`). Used on `eventLoop` only.
    private var context: ChannelHandlerContext?
    private var cumulation: ByteBuffer?
    /// Login and setup under way (nil once answered).
    private var setupPromise: EventLoopPromise<BackendConnection>?
    /// The health check under way (the machine is `checking`).
    private var checkPromise: EventLoopPromise<Bool>?
    /// The session the backend is leased to, or being prepared for (the machine is `leased` or
    /// `preparing`); nil otherwise.
    private var owner: (any BackendOwner)?
    private var readingPaused = false
    /// Strong, and let go when the channel goes inactive (the pool heard of the close by then):
    /// a weak reference would give the pool a side table, and make every retain and release of
    /// it take the runtime's slow path.
    private var pool: BackendPool?

    /// The named statements this backend holds (PostgresProxy/PreparedStatements.swift). Used by the
    /// session it is leased to, on the session's event loop, and here at lease time only
    /// (`takeStale`, on this backend's loop): never by both at once, since the session reaches it
    /// only between `backendDidPrepare` and its `release`, each a hop through the other's event
    /// loop, which orders the accesses. Debug builds check that every access comes from one of
    /// those two loops (`mayUseStatementCache`); the accessors yield the storage in place, so the
    /// cache is never copied.
    var statementCache: BackendStatementCache {
        _read {
            assert(mayUseStatementCache, "statement cache used off its backend's and its session's event loops")
            yield statementCacheStorage
        }
        _modify {
            assert(mayUseStatementCache, "statement cache used off its backend's and its session's event loops")
            yield &statementCacheStorage
        }
    }
    private var statementCacheStorage = BackendStatementCache()
    #if DEBUG
    /// The event loop of the session this backend was last handed to (for the check above).
    private let statementCacheUser = NIOLockedValueBox<(any EventLoop)?>(nil)
    #endif

    private var mayUseStatementCache: Bool {
        #if DEBUG
        return eventLoop.inEventLoop || statementCacheUser.withLockedValue { $0?.inEventLoop ?? false }
        #else
        return true
        #endif
    }

    /// ParameterStatus values the server reported (at login and since).
    var serverParameters: [String: String] { machine.serverParameters }
    /// What the server reported at login (name-sorted), fixed once setup completes. Copied out
    /// of the machine then, as the values below, for readers on other threads.
    private(set) var loginParameters: [StartupParameter] = []
    /// The value of `max_connections` read during setup, when asked for.
    private(set) var maxConnections: Int?
    private(set) var backendProcessID: Int32 = 0
    private(set) var backendSecretKey: Int32 = 0
    /// The process id (BackendKeyData) of the client this backend was last leased to: a
    /// NOTIFY runs at the commit of that client's transaction, so a listener shown this backend's
    /// pid in a NotificationResponse is shown that client's instead, as PostgreSQL shows the
    /// sender's pid. Written at each lease, read from other loops.
    private let lastLessee = Atomic<Int32>(0)

    /// The client process id to show for a notification sent by backend `processID` of this
    /// target: the last client that backend served; nil if unknown.
    private func notifyingClient(_ processID: Int32) -> Int32? {
        guard let backend = BackendRegistry.backend(at: address, processID: processID) else { return nil }
        let lessee = backend.lastLessee.load(ordering: .relaxed)
        return lessee == 0 ? nil : lessee
    }

    private init(id: ConnectionID, key: PoolKey, eventLoop: any EventLoop, settings: BackendSettings, pool: BackendPool?) {
        self.id = id
        self.key = key
        self.eventLoop = eventLoop
        self.address = settings.address
        self.settings = settings
        self.pool = pool
        self.machine = BackendStateMachine(
            configuration: .init(
                username: settings.username, password: settings.password, database: settings.database,
                applicationName: settings.applicationName, initQuery: settings.initQuery,
                readMaxConnections: settings.readMaxConnections, requestTLS: settings.tls != nil,
                tlsMode: settings.tlsMode, scramCache: settings.scramCache, isTracked: TrackedParameters.isTracked))
    }

    /// Opens, logs in and sets up a backend; the future completes once it can serve a client.
    static func connect(
        id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, settings: BackendSettings, pool: BackendPool?,
        connectTimeout: TimeAmount = .seconds(10)
    ) -> EventLoopFuture<BackendConnection> {
        let connection = BackendConnection(id: id, key: key, eventLoop: eventLoop, settings: settings, pool: pool)
        let promise = eventLoop.makePromise(of: BackendConnection.self)
        connection.setupPromise = promise
        ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(connection)
                }
            }
            .connect(to: settings.address)
            .whenFailure { error in
                connection.run(connection.machine.connectFailed("\(settings.address): \(error)"))
            }
        // The login as a whole (TLS, authentication, setup queries) has the same bound as the TCP
        // connect: a server, or a path, that accepts and then never answers must not hold a
        // borrow, a health check or a shutdown for ever.
        let deadline = eventLoop.scheduleTask(in: connectTimeout) {
            connection.run(connection.machine.loginTimedOut(
                "\(settings.address): no answer to the login within \(connectTimeout.nanoseconds / 1_000_000) ms"))
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        return promise.futureResult
    }

    // MARK: Running the machine's actions

    /// Does what the machine decided. `requester`: the session that asked for a lease or a
    /// reapply (told of the outcome even when it does not become the owner).
    private func run(_ action: Action, requester: (any BackendOwner)? = nil) {
        switch action {
        case .none:
            break
        case .write(let bytes):
            if let context { writePending(context) }
            channel?.writeAndFlush(bytes, promise: nil)
        case .startTLS:
            startTLS()
        case .registerProcessID(let processID, let secretKey):
            backendProcessID = processID
            backendSecretKey = secretKey
            BackendRegistry.register(self, processID: processID)
        case .succeedSetup:
            loginParameters = machine.loginParameters
            maxConnections = machine.maxConnections
            let promise = setupPromise
            setupPromise = nil
            promise?.succeed(self)
        case .failSetup(let error):
            failSetup(error)
        case .failSetupAndClose(let error):
            failSetup(error)
            channel?.close(promise: nil)
        case .ownerReady:
            if let target = requester ?? owner { notifyPrepared(target, .success(())) }
        case .ownerFailed(let error):
            if let target = requester ?? owner { notifyPrepared(target, .failure(error)) }
        case .ownerFailedReleasing(let error):
            if let target = requester ?? owner { notifyPrepared(target, .failure(error)) }
            pool?.release(self, reusable: false)
        case .ownerFailedClosing(let error):
            let target = owner
            owner = nil
            if let target { notifyPrepared(target, .failure(error)) }
            pool?.release(self, reusable: false)
            channel?.close(promise: nil)
        case .returnToPool:
            owner = nil
            pool?.release(self, reusable: true)
        case .discard:
            owner = nil
            pool?.release(self, reusable: false)
            channel?.close(promise: nil)
        case .completeCheck(let result):
            let promise = checkPromise
            checkPromise = nil
            switch result {
            case .success(let inRecovery): promise?.succeed(inRecovery)
            case .failure(let error): promise?.fail(error)
            }
        case .ownerAndPoolLost:
            if let owner {
                self.owner = nil
                owner.eventLoop.execute { owner.backendDidClose() }
            }
            pool?.connectionClosed(self)
        case .poolLost:
            pool?.connectionClosed(self)
        case .unsolicitedError(let fields, let close):
            settings.logger.info(
                "database reported an error on an idle connection",
                metadata: ["concierge.sqlstate": "\(fields.code)", "concierge.message": "\(fields.message)"])
            if close { channel?.close(promise: nil) }
        case .terminate(let bytes):
            owner = nil
            guard let channel else { return }
            if let context { writePending(context) }
            // Closed once Terminate is on its way, or after a second: a peer that stopped
            // reading (a full send buffer) must not keep the connection open.
            let fallback = channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
            channel.writeAndFlush(bytes).whenComplete { _ in
                fallback.cancel()
                channel.close(promise: nil)
            }
        case .close:
            channel?.close(promise: nil)
        }
    }

    private func startTLS() {
        guard let tls = settings.tls, let channel else { return }
        do {
            let handler = try NIOSSLClientHandler(context: tls, serverHostname: settings.serverHostname)
            try channel.pipeline.syncOperations.addHandler(handler, position: .first)
        } catch {
            run(machine.tlsHandlerFailed("\(error)"))
            return
        }
        run(machine.tlsHandlerAdded())
    }

    private func failSetup(_ error: BackendError) {
        let promise = setupPromise
        setupPromise = nil
        promise?.fail(error)
    }

    /// Tells the owner its backend is ready (or not), directly when both share an event loop.
    private func notifyPrepared(_ owner: any BackendOwner, _ outcome: Result<Void, BackendError>) {
        let result = outcome.map { machine.serverParameters }
        if owner.eventLoop.inEventLoop {
            owner.backendDidPrepare(result)
        } else {
            owner.eventLoop.execute { owner.backendDidPrepare(result) }
        }
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        channel = context.channel
        self.context = context
        allocator = context.channel.allocator
        run(machine.connected())
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        pending = nil
        gatherBuffer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        if backendProcessID != 0 {
            BackendRegistry.unregister(self, processID: backendProcessID)
        }
        // `channel` stays set: other threads may still write to it (harmlessly, it is closed).
        run(machine.channelInactive())
        pool = nil
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard machine.isLeased, let owner else { return }
        let writable = context.channel.isWritable
        owner.eventLoop.execute { owner.backendWritabilityChanged(isWritable: writable) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        settings.logger.debug("backend connection error", metadata: ["concierge.backend_error": "\(error)"])
        let isTLS = error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError
        run(machine.errorCaught(tlsFailure: isTLS ? "\(error)" : nil))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var pending = cumulation {
            cumulation = nil
            pending.writeBuffer(&incoming)
            incoming = pending
        }
        if case .negotiatingTLS = machine.state {
            guard let answer = incoming.readInteger(as: UInt8.self) else { return }
            run(machine.tlsAnswer(answer, trailingBytes: incoming.readableBytes))
            return
        }
        do {
            if machine.isLeased, let owner {
                try forward(&incoming, to: owner)
            } else {
                while machine.acceptsOwnMessages, let frame = try PGFraming.nextFrame(from: &incoming, maxMessageSize: 1 << 30) {
                    run(try machine.messageReceived(frame))
                    if machine.isLeased, let owner {
                        // A message that completed preparation may be followed by the client's.
                        try forward(&incoming, to: owner)
                        break
                    }
                }
            }
        } catch {
            settings.logger.warning("database sent a malformed message", metadata: ["concierge.backend_error": "\(error)"])
            context.close(promise: nil)
            return
        }
        if incoming.readableBytes > 0 {
            cumulation = incoming.slice()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if machine.isLeased, let owner {
            if owner.eventLoop.inEventLoop {
                owner.backendDidReadComplete()
            } else {
                owner.eventLoop.execute { owner.backendDidReadComplete() }
            }
        }
    }

    /// Forwards every complete message to the owner in one slice, noting ReadyForQuery.
    private func forward(_ buffer: inout ByteBuffer, to owner: any BackendOwner) throws {
        // A view that still starts at the first message (get* reads only readable bytes).
        let unread = buffer
        var readyCount = 0
        var lastStatus = PGTransactionStatus.idle
        var firstStatus = PGTransactionStatus.idle
        var sawError = false
        /// NotificationResponse pids to replace (offset, client pid): a backend's pid names no
        /// client; the client whose transaction sent the NOTIFY is named instead (the listener's
        /// own pid when it notified itself), as PostgreSQL names the sending session.
        var notificationPids: [(Int, Int32)] = []
        var reports = false
        // Headers are peeked, not sliced: a result is mostly DataRows that need no look.
        while let (type, size) = try PGFraming.peekFrame(in: buffer, maxMessageSize: 1 << 30) {
            switch type {
            case PGMessageType.Backend.readyForQuery:
                readyCount += 1
                guard size == 6, let raw = buffer.getInteger(at: buffer.readerIndex + 5, as: UInt8.self),
                      let status = PGTransactionStatus(rawValue: raw)
                else {
                    throw PGWireError.malformedMessage(type: type, reason: "invalid ReadyForQuery")
                }
                lastStatus = status
                if readyCount == 1 { firstStatus = status }
            case PGMessageType.Backend.errorResponse:
                if let body = buffer.getSlice(at: buffer.readerIndex + 5, length: size - 5), Self.endsSession(body) {
                    // FATAL (or PANIC): the database ends this backend (pg_terminate_backend, a
                    // shutdown, a timeout) and closes it. That is not the client's to see: its
                    // session goes on, and the proxy answers what was in flight with 08006 when
                    // the connection closes. Relayed too, it would be a second error for one query.
                    let fields = try? PGParse.errorResponse(body)
                    settings.logger.warning("the database ended a backend connection", metadata: [
                        "concierge.backend": "\(id)",
                        "concierge.sqlstate": "\(fields?.code ?? "")",
                        "concierge.database_message": "\(fields?.message ?? "")",
                    ])
                    let end = buffer.readerIndex
                    buffer.moveReaderIndex(to: buffer.writerIndex)  // nothing after it is relayed
                    forwardPrefix(unread, upTo: end, readyCount, firstStatus, lastStatus, sawError, notificationPids, reports, to: owner)
                    return
                }
                // Only an error before the first ReadyForQuery answers the oldest query.
                if readyCount == 0 { sawError = true }
            case PGMessageType.Backend.notificationResponse:
                let offset = buffer.readerIndex + 5
                if size >= 9, let sender = buffer.getInteger(at: offset, as: Int32.self) {
                    if sender == backendProcessID {
                        notificationPids.append((offset - unread.readerIndex, owner.processID))
                    } else if let client = notifyingClient(sender) {
                        notificationPids.append((offset - unread.readerIndex, client))
                    }
                }
            case PGMessageType.Backend.parameterStatus:
                if let body = buffer.getSlice(at: buffer.readerIndex + 5, length: size - 5) {
                    let parameter = try PGParse.parameterStatus(body)
                    // A tracked one: this backend now runs with the value, and so does its client.
                    if machine.parameterReportedWhileLeased(name: parameter.name, value: parameter.value) {
                        reports = true
                    }
                }
            default:
                break
            }
            buffer.moveReaderIndex(forwardBy: size)
        }
        forwardPrefix(unread, upTo: buffer.readerIndex, readyCount, firstStatus, lastStatus, sawError, notificationPids, reports, to: owner)
    }

    /// Hands the messages of `unread` up to `end` to the owner (see `forward`).
    private func forwardPrefix(
        _ unread: ByteBuffer, upTo end: Int, _ readyCount: Int, _ firstStatus: PGTransactionStatus,
        _ lastStatus: PGTransactionStatus, _ sawError: Bool, _ notificationPids: [(Int, Int32)], _ reports: Bool,
        to owner: any BackendOwner
    ) {
        let length = end - unread.readerIndex
        guard length > 0, var patched = unread.getSlice(at: unread.readerIndex, length: length) else { return }
        for (offset, processID) in notificationPids {
            patched.setInteger(processID, at: patched.readerIndex + offset)
        }
        let slice = patched
        if owner.eventLoop.inEventLoop {
            owner.backendDidRead(
                slice, readyForQueryCount: readyCount, firstStatus: firstStatus, lastStatus: lastStatus, sawError: sawError,
                reports: reports)
        } else {
            owner.eventLoop.execute { [readyCount, firstStatus, lastStatus, sawError, reports] in
                owner.backendDidRead(
                    slice, readyForQueryCount: readyCount, firstStatus: firstStatus, lastStatus: lastStatus, sawError: sawError,
                    reports: reports)
            }
        }
    }

    // MARK: Health checks

    /// Runs `SELECT pg_is_in_recovery()` (true: a standby). Only for the health checker's own
    /// connections, which are never pooled; fails if the connection is busy or closes.
    func checkRecovery() -> EventLoopFuture<Bool> {
        let promise = eventLoop.makePromise(of: Bool.self)
        eventLoop.execute {
            switch self.machine.checkRequested() {
            case .completeCheck(let refusal):
                // Not idle: this request is refused; a check under way keeps its own promise.
                promise.completeWith(refusal.mapError { $0 as any Error })
            case let action:
                self.checkPromise = promise
                self.run(action)
            }
        }
        return promise.futureResult
    }

    // MARK: Commands from the pool and the owner (any thread)

    /// Hands the backend to a client session: brings its session parameters to `parameters`
    /// (lowercased name → value) and then calls `owner.backendDidPrepare`.
    ///
    /// `fromDefaults`: the values are as a client wrote them in its startup packet (see
    /// `BackendStateMachine.lease`).
    func lease(to owner: any BackendOwner, parameters: [String: String], fromDefaults: Bool = false) {
        if eventLoop.inEventLoop {
            leaseOnLoop(to: owner, parameters: parameters, fromDefaults: fromDefaults)
        } else {
            eventLoop.execute { self.leaseOnLoop(to: owner, parameters: parameters, fromDefaults: fromDefaults) }
        }
    }

    private func leaseOnLoop(to owner: any BackendOwner, parameters: [String: String], fromDefaults: Bool) {
        lastLessee.store(owner.processID, ordering: .relaxed)
        let action = machine.lease(parameters: parameters, fromDefaults: fromDefaults) { statementCacheStorage.takeStale() }
        adopt(owner, for: action)
        run(action, requester: owner)
    }

    /// The requester becomes the owner when the machine leased the backend to it or is
    /// preparing it for it; set before the action runs, since the owner may release the
    /// backend from inside `backendDidPrepare`.
    private func adopt(_ requester: any BackendOwner, for action: Action) {
        switch action {
        case .ownerReady, .write:
            owner = requester
            #if DEBUG
            statementCacheUser.withLockedValue { $0 = requester.eventLoop }
            #endif
        default:
            break
        }
    }

    /// While leased, between two of its owner's transactions or statements: brings the session
    /// parameters to `parameters` again (after a RESET ALL the owner keeps the backend), then
    /// calls `owner.backendDidPrepare` as `lease` does.
    func reapply(to owner: any BackendOwner, parameters: [String: String]) {
        let run: @Sendable () -> Void = {
            let action = self.machine.reapply(parameters: parameters)
            self.adopt(owner, for: action)
            self.run(action, requester: owner)
        }
        if eventLoop.inEventLoop { run() } else { eventLoop.execute(run) }
    }

    /// The leasing session ran `RESET ALL`, `DISCARD ALL` or `RESET name`: the backend now runs
    /// with its login defaults there, without what init_query set.
    /// `names`: the parameters reset (`RESET name`); nil: all of them.
    func noteParametersReset(_ names: Set<String>?) {
        if eventLoop.inEventLoop {
            machine.noteParametersReset(names)
        } else {
            eventLoop.execute { self.machine.noteParametersReset(names) }
        }
    }

    /// The leasing session set `name` (lowercased) on this backend with SQL; nil: RESET.
    func noteApplied(name: String, value: String?) {
        if eventLoop.inEventLoop {
            machine.noteApplied(name: name, value: value)
        } else {
            eventLoop.execute { self.machine.noteApplied(name: name, value: value) }
        }
    }

    /// For messages the proxy builds on the client's behalf: the channel's, once connected. Kept
    /// here (not read through the channel) as the session passes it with every message it sends.
    private(set) var allocator = ByteBufferAllocator()
    /// The client's bytes of the batch under way (`write`), given to the channel at `flush()`.
    private var pending: ByteBuffer?
    /// `pending` is `gatherBuffer`'s memory (several writes copied), not a caller's buffer.
    private var pendingIsGathered = false
    /// Memory kept for gathering batches of several writes.
    private var gatherBuffer: ByteBuffer?

    /// Writes client bytes to the database (any thread; flushes at `flush()`).
    /// On this backend's loop (a client served by a backend of its own loop, nearly always)
    /// the writes of one batch are gathered and given to the channel as one buffer at `flush()`,
    /// through the handler's context (straight to the socket's end of the pipeline; a write
    /// through the channel enters at its tail and walks the pipeline to the same place).
    ///
    /// Why gathered: every write a channel takes costs SwiftNIO about 1,300 instructions (the
    /// generic channel class's metadata looked up, the message cast to `IOData`, a pending-write
    /// record, an iovec), where copying an extended-protocol message costs a few dozen. pgbench's
    /// extended protocol sends Parse, Bind, Describe, Execute and Sync: five writes per
    /// transaction, now one. A batch of one write is passed on as it is (no copy).
    func write(_ bytes: ByteBuffer) {
        guard context != nil, eventLoop.inEventLoop else {
            channel?.write(bytes, promise: nil)
            return
        }
        guard var batch = pending else {
            pending = bytes
            return
        }
        pending = nil  // `batch` is then the only reference: appended in place
        if !pendingIsGathered {
            // The first write was the caller's buffer: copied into the kept one, then the rest.
            var gathered = gatherBuffer ?? allocator.buffer(capacity: 512)
            gatherBuffer = nil
            gathered.clear()
            gathered.writeImmutableBuffer(batch)
            batch = gathered
            pendingIsGathered = true
        }
        batch.writeImmutableBuffer(bytes)
        pending = batch
    }

    func flush() {
        guard let context, eventLoop.inEventLoop else {
            channel?.flush()
            return
        }
        writePending(context)
        context.flush()
    }

    /// Gives the gathered batch to the channel (unflushed). Also before any write of the
    /// backend's own, so that the client's bytes keep their place before it.
    private func writePending(_ context: ChannelHandlerContext) {
        guard let batch = pending else { return }
        pending = nil
        context.write(wrapOutboundOut(batch), promise: nil)
        if pendingIsGathered {
            pendingIsGathered = false
            // Kept for the next batch: once the channel has written it (at the flush, unless the
            // socket is full) it is ours alone again and `clear()` reuses its memory; if the
            // channel still holds it then, `clear()` gets a new one. A large one is let go.
            if batch.capacity <= 16_384 { gatherBuffer = batch }
        }
    }

    /// Stops (or resumes) reading from the database while the client cannot keep up.
    func setReadingPaused(_ paused: Bool) {
        if eventLoop.inEventLoop {
            setReadingPausedOnLoop(paused)
        } else {
            eventLoop.execute { self.setReadingPausedOnLoop(paused) }
        }
    }

    private func setReadingPausedOnLoop(_ paused: Bool) {
        guard readingPaused != paused, let channel else { return }
        readingPaused = paused
        try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: !paused)
        if !paused { channel.read() }
    }

    /// Whether the database connection accepts more bytes without queueing them in memory.
    var isWritable: Bool { channel?.isWritable ?? true }

    /// The owner is done with the backend: back to the pool if `reusable`, else closed.
    func release(reusable: Bool) {
        if eventLoop.inEventLoop {
            releaseOnLoop(reusable: reusable)
        } else {
            eventLoop.execute { self.releaseOnLoop(reusable: reusable) }
        }
    }

    private func releaseOnLoop(reusable: Bool) {
        // A slow client may have paused reading; the next one starts fresh.
        if readingPaused { setReadingPausedOnLoop(false) }
        run(machine.released(reusable: reusable))
    }

    /// The client left inside a transaction: roll it back, then return the backend to the pool
    /// (or close it if that fails).
    func rollbackAndRelease() {
        eventLoop.execute {
            guard self.machine.isLeased, self.channel != nil else { return }
            // Reading resumes before the ROLLBACK goes out: its answer must be read.
            if self.readingPaused { self.setReadingPausedOnLoop(false) }
            self.owner = nil
            self.run(self.machine.rollbackRequested())
        }
    }

    /// Cancels whatever the database is running for this connection, then closes it: the only
    /// safe end for a backend whose client vanished mid-statement.
    func cancelAndClose() {
        sendCancelRequest()
        release(reusable: false)
    }

    /// Closes the connection at once, without Terminate (the database stopped answering):
    /// whoever holds it is told as when the database closes it (its client gets 08006), and so
    /// is the pool.
    func abort() {
        eventLoop.execute { self.channel?.close(promise: nil) }
    }

    /// Closes the connection politely (Terminate, then close).
    func close() {
        eventLoop.execute {
            guard self.channel != nil else { return }
            self.run(self.machine.closeRequested())
        }
    }
}
