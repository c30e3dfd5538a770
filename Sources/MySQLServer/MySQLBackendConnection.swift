import ConciergeRuntime
import ConnectionPool
import Logging
import MySQLProxy
import MySQLWire
import NIOCore
import NIOPosix
import NIOSSL
import ProxyCore

/// Why a MySQL backend open or check failed: the server's ERR (its code classifies it), a
/// broken connection, or a protocol error.
enum MySQLBackendError: Error, CustomStringConvertible, Sendable {
    case server(MySQLErrPacket)
    case connection(String)
    case protocolViolation(String)

    var description: String {
        switch self {
        case .server(let error): return "ERROR \(error.code) (\(error.sqlState)): \(error.message)"
        case .connection(let message): return "connection failed: \(message)"
        case .protocolViolation(let message): return "protocol violation: \(message)"
        }
    }
}

/// What the session leasing a MySQL backend hears from it, on the session's event loop.
protocol MySQLBackendOwner: AnyObject, Sendable {
    var eventLoop: any EventLoop { get }
    /// Complete packets from the database (one or more, headers included).
    func backendDidRead(_ packets: ByteBuffer)
    func backendDidReadComplete()
    func backendDidClose()
    /// The answer to `lease(to:)`: what the session needs of the backend, or nil when it closed
    /// between the pool and the lease.
    func backendLeased(_ connection: MySQLBackendConnection, info: MySQLLeaseInfo?)
}

/// Everything a backend needs to open: where, as whom, how.
struct MySQLBackendSettings: Sendable {
    var login: BackendLogin
    /// The wire-format capabilities its clients negotiated (the pool key's profile).
    var profile: MySQLClientProfile
}

/// One connection from the proxy to a MySQL/MariaDB server: the channel handler that runs its
/// login (`MySQLBackendLogin`) and then its `MySQLBackendMachine` (setup, pool phases, health
/// checks), and forwards what the database sends to the leasing session as whole packets,
/// without parsing or re-encoding them. State is confined to `eventLoop`.
final class MySQLBackendConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let id: ConnectionID
    let key: PoolKey
    let eventLoop: any EventLoop
    let settings: MySQLBackendSettings
    var generation: Int { settings.login.generation }
    private var login: MySQLBackendLogin
    private(set) var machine: MySQLBackendMachine
    private var channel: (any Channel)?
    /// Set in handlerAdded; used on `eventLoop` only.
    private var context: ChannelHandlerContext?
    private var cumulation: ByteBuffer?
    private var setupPromise: EventLoopPromise<MySQLBackendConnection>?
    private var checkPromise: EventLoopPromise<[[String?]]>?
    private var owner: (any MySQLBackendOwner)?
    /// Strong, and let go when the channel goes inactive (after telling the pool): a weak
    /// reference would give the pool a side table, and make every retain and release of it take
    /// the runtime's slow path.
    private var pool: MySQLBackendPool?
    private var readingPaused = false
    /// The capabilities negotiated at login (the session's tracker reads responses with them).
    private(set) var capabilities: MySQLCapabilities = []
    /// The server's version string, from its handshake.
    private(set) var serverVersion = ""
    /// The server's id for this connection (its handshake's connection id): what `KILL` names.
    private(set) var threadID: UInt32 = 0
    /// Values the leasing session reads at lease time (fixed after setup).
    private(set) var baseline: [String: String] = [:]
    private(set) var maxConnections: Int?
    /// The clients' binary-protocol statements prepared on this connection (see
    /// `MySQLBackendStatementCache`): lent with each lease.
    private(set) var statements = MySQLBackendStatementCache(maxPreparedStatements: nil, maxConnections: nil)
    private(set) var noBackslashEscapes = false

    private init(id: ConnectionID, key: PoolKey, eventLoop: any EventLoop, settings: MySQLBackendSettings, pool: MySQLBackendPool?) {
        self.id = id
        self.key = key
        self.eventLoop = eventLoop
        self.settings = settings
        self.pool = pool
        self.login = MySQLBackendLogin(configuration: .init(
            username: settings.login.username, password: settings.login.password,
            database: settings.login.database.isEmpty ? nil : settings.login.database,
            useTLS: settings.login.tls != nil, tlsMode: settings.login.tlsMode,
            capabilities: settings.profile.backendCapabilities, characterSet: settings.profile.characterSet))
        self.machine = MySQLBackendMachine(initQuery: settings.login.initQuery)
    }

    static func connect(
        id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, settings: MySQLBackendSettings, pool: MySQLBackendPool?,
        connectTimeout: TimeAmount = .seconds(10)
    ) -> EventLoopFuture<MySQLBackendConnection> {
        let connection = MySQLBackendConnection(id: id, key: key, eventLoop: eventLoop, settings: settings, pool: pool)
        let promise = eventLoop.makePromise(of: MySQLBackendConnection.self)
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
            .connect(to: settings.login.address)
            .whenFailure { error in
                connection.failSetup(.connection("\(settings.login.address): \(error)"))
            }
        // The whole login (TLS, authentication, setup) is bounded like the TCP connect: a server
        // that accepts and never answers must not hold a borrow or a health check for ever.
        let deadline = eventLoop.scheduleTask(in: connectTimeout) {
            guard connection.setupPromise != nil else { return }
            connection.failSetup(.connection(
                "\(settings.login.address): no answer to the login within \(connectTimeout.nanoseconds / 1_000_000) ms"))
            connection.channel?.close(promise: nil)
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        return promise.futureResult
    }

    private func failSetup(_ error: MySQLBackendError) {
        let promise = setupPromise
        setupPromise = nil
        promise?.fail(error)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        channel = context.channel
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasOpen = setupPromise == nil
        failSetup(.connection("\(settings.login.address): the database closed the connection during login"))
        if let promise = checkPromise {
            checkPromise = nil
            promise.fail(MySQLBackendError.connection("the database closed the connection"))
        }
        machine.connectionClosed()
        if let owner {
            self.owner = nil
            owner.eventLoop.execute { owner.backendDidClose() }
        }
        if wasOpen { pool?.connectionClosed(self) }
        pool = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        settings.login.logger.debug("backend connection error", metadata: ["concierge.backend_error": "\(error)"])
        failSetup(.connection("\(settings.login.address): \(error)"))
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var pending = cumulation {
            cumulation = nil
            pending.writeBuffer(&incoming)
            incoming = pending
        }
        do {
            if machine.isLeased, let owner {
                forward(&incoming, to: owner)
            } else {
                while let packet = try Self.nextPacket(&incoming) {
                    handleOwnPacket(packet, context: context)
                    if machine.isLeased, let owner {
                        forward(&incoming, to: owner)
                        break
                    }
                    if case .closing = machine.state { break }
                }
            }
        } catch {
            settings.login.logger.warning("database sent a malformed packet", metadata: ["concierge.backend_error": "\(error)"])
            failSetup(.protocolViolation("\(error)"))
            context.close(promise: nil)
            return
        }
        if incoming.readableBytes > 0 { cumulation = incoming.slice() }
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

    /// One whole packet (logical payloads of 16 MB and more arrive as several: the proxy's own
    /// queries never get such answers).
    static func nextPacket(_ buffer: inout ByteBuffer) throws -> MySQLPacket? {
        guard let header = buffer.peekMySQLPacketHeader(), buffer.readableBytes >= 4 + header.length else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let payload = buffer.readSlice(length: header.length)!
        return MySQLPacket(sequenceID: header.sequenceID, payload: payload)
    }

    /// Forwards every complete packet to the owner in one slice.
    private func forward(_ buffer: inout ByteBuffer, to owner: any MySQLBackendOwner) {
        let start = buffer.readerIndex
        var end = start
        while let header = buffer.getMySQLPacketHeader(at: end), buffer.writerIndex - end >= 4 + header.length {
            end += 4 + header.length
        }
        guard end > start, let slice = buffer.readSlice(length: end - start) else { return }
        if owner.eventLoop.inEventLoop {
            owner.backendDidRead(slice)
        } else {
            owner.eventLoop.execute { owner.backendDidRead(slice) }
        }
    }

    // MARK: Login, setup and checks

    private func handleOwnPacket(_ packet: MySQLPacket, context: ChannelHandlerContext) {
        if case .loggingIn = machine.state {
            run(login.packetReceived(packet), context: context)
        } else {
            run(machine.packetReceived(packet.payload), context: context)
        }
    }

    private func run(_ action: MySQLBackendLogin.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .write(let bytes):
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .sendSSLRequestAndStartTLS(let sslRequest):
            context.writeAndFlush(wrapOutboundOut(sslRequest), promise: nil)
            guard let tls = settings.login.tls else {
                run(login.tlsFailed("no TLS configuration"), context: context)
                return
            }
            do {
                let handler = try NIOSSLClientHandler(context: tls, serverHostname: settings.login.serverHostname)
                try context.pipeline.syncOperations.addHandler(handler, position: .first)
            } catch {
                run(login.tlsFailed("\(error)"), context: context)
                return
            }
            run(login.tlsHandlerAdded(), context: context)
        case .authenticated(let result):
            capabilities = result.capabilities
            serverVersion = result.serverVersion
            threadID = result.connectionID
            run(machine.loggedIn(capabilities: result.capabilities), context: context)
        case .failed(let failure):
            switch failure {
            case .server(let packet): failSetup(.server(packet))
            case .protocolViolation(let message): failSetup(.protocolViolation(message))
            case .unsupported(let message): failSetup(.protocolViolation(message))
            }
            context.close(promise: nil)
        }
    }

    private func run(_ action: MySQLBackendMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .sendQuery(let query):
            context.writeAndFlush(wrapOutboundOut(Self.query(query, allocator: context.channel.allocator)), promise: nil)
        case .setupSucceeded:
            baseline = machine.baseline
            maxConnections = machine.maxConnections
            noBackslashEscapes = machine.noBackslashEscapes
            statements = MySQLBackendStatementCache(
                maxPreparedStatements: machine.maxPreparedStatements, maxConnections: machine.maxConnections)
            let promise = setupPromise
            setupPromise = nil
            promise?.succeed(self)
        case .setupFailed(let error):
            failSetup(.server(error))
            context.close(promise: nil)
        case .checkCompleted(let result):
            let promise = checkPromise
            checkPromise = nil
            switch result {
            case .success(let rows): promise?.succeed(rows)
            case .failure(let error): promise?.fail(MySQLBackendError.server(error))
            }
        case .quitAndClose:
            var out = context.channel.allocator.buffer(capacity: 5)
            out.writeMySQLPacket(sequenceID: 0) { $0.writeInteger(MySQLCommand.quit.rawValue) }
            let channel = context.channel
            let fallback = channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
            channel.writeAndFlush(out).whenComplete { _ in
                fallback.cancel()
                channel.close(promise: nil)
            }
        case .close:
            owner = nil
            context.close(promise: nil)
        case .discard:
            // Not reusable: the pool keeps its slot until the close is reported
            // (channelInactive → connectionClosed).
            owner = nil
            pool?.release(self, reusable: false)
            context.close(promise: nil)
        case .returnToPool:
            owner = nil
            pool?.release(self, reusable: true)
        }
    }

    /// A COM_QUERY packet.
    static func query(_ text: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: text.utf8.count + 5)
        out.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(MySQLCommand.query.rawValue)
            payload.writeString(text)
        }
        return out
    }

    /// Runs a health check's query (probe connections only); fails if busy or closed.
    func check(_ query: String) -> EventLoopFuture<[[String?]]> {
        let promise = eventLoop.makePromise(of: [[String?]].self)
        eventLoop.execute {
            guard let context = self.context, let action = self.machine.checkRequested(query) else {
                promise.fail(MySQLBackendError.connection("the health check connection is busy or closed"))
                return
            }
            self.checkPromise = promise
            self.run(action, context: context)
        }
        return promise.futureResult
    }

    // MARK: Commands from the pool and the owner (any thread)

    /// Hands the backend to a session: `owner.backendLeased` follows on the session's loop with
    /// the state the session must restore from, or nil if the backend closed meanwhile.
    func lease(to owner: any MySQLBackendOwner) {
        // At once on this backend's loop (the client's too, nearly always), as PostgreSQL's
        // backends do: a task on the loop cost an allocation and a pass through its queue per
        // transaction.
        if eventLoop.inEventLoop {
            leaseOnLoop(to: owner)
        } else {
            eventLoop.execute { self.leaseOnLoop(to: owner) }
        }
    }

    private func leaseOnLoop(to owner: any MySQLBackendOwner) {
        let info: MySQLLeaseInfo?
        if machine.lease() {
            self.owner = owner
            info = MySQLLeaseInfo(
                state: machine.sessionState, baseline: baseline, noBackslashEscapes: noBackslashEscapes,
                statements: statements)
        } else {
            info = nil
        }
        if owner.eventLoop.inEventLoop {
            owner.backendLeased(self, info: info)
        } else {
            owner.eventLoop.execute { owner.backendLeased(self, info: info) }
        }
    }

    // On this backend's loop (nearly always) through the handler's context, straight to the
    // socket's end of the pipeline: a write through the channel enters at its tail and walks
    // the pipeline to the same place.
    func write(_ bytes: ByteBuffer) {
        if let context, eventLoop.inEventLoop {
            context.write(wrapOutboundOut(bytes), promise: nil)
        } else {
            channel?.write(bytes, promise: nil)
        }
    }

    func writeAndFlush(_ bytes: ByteBuffer) {
        if let context, eventLoop.inEventLoop {
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        } else {
            channel?.writeAndFlush(bytes, promise: nil)
        }
    }

    func flush() {
        if let context, eventLoop.inEventLoop {
            context.flush()
        } else {
            channel?.flush()
        }
    }

    /// Stops (or resumes) reading from the database while the client cannot keep up.
    func setReadingPaused(_ paused: Bool) {
        eventLoop.execute {
            guard self.readingPaused != paused, let channel = self.channel else { return }
            self.readingPaused = paused
            try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: !paused)
            if !paused { channel.read() }
        }
    }

    /// The session is done with the backend, leaving `state` on it.
    func release(reusable: Bool, state: MySQLSessionState) {
        // At once on this backend's loop, as PostgreSQL's backends do (a task on the loop cost an
        // allocation per transaction). The session releases from inside `backendDidRead`, after
        // the response's last packet: whatever this read holds after it is the session's to
        // judge, and the next owner sees only later reads.
        if eventLoop.inEventLoop {
            releaseOnLoop(reusable: reusable, state: state)
        } else {
            eventLoop.execute { self.releaseOnLoop(reusable: reusable, state: state) }
        }
    }

    private func releaseOnLoop(reusable: Bool, state: MySQLSessionState) {
        if readingPaused { setReadingPaused(false) }
        guard let context else { return }
        run(machine.released(reusable: reusable, sessionState: state), context: context)
    }

    func close() {
        eventLoop.execute {
            guard let context = self.context else { return }
            self.run(self.machine.closeRequested(), context: context)
        }
    }

    /// Runs `KILL [QUERY] <this connection's thread id>` on a connection of its own to the same
    /// server, as the same database user (so the server lets it), as a client's `KILL` would from
    /// another session: the connection itself is busy with the statement to stop. The future
    /// completes once the server answered (or the attempt failed: the statement ran to its end,
    /// or the connection is gone, and then there is nothing left to stop).
    func killOnServer(query: Bool) -> EventLoopFuture<Void> {
        var login = settings.login
        login.initQuery = ""
        login.readMaxConnections = false
        let statement = (query ? "KILL QUERY " : "KILL CONNECTION ") + String(threadID)
        let logger = settings.login.logger
        return MySQLBackendConnection.connect(
            id: ConnectionID(-1), key: key, on: eventLoop,
            settings: MySQLBackendSettings(login: login, profile: MySQLEngine.defaultProfile), pool: nil
        ).flatMap { killer in
            killer.check(statement).always { _ in killer.close() }.map { _ in () }
        }.flatMapErrorWithEventLoop { error, eventLoop in
            logger.debug("the proxy's KILL did not reach the database", metadata: ["concierge.backend_error": "\(error)"])
            return eventLoop.makeSucceededVoidFuture()
        }
    }

    func abort() {
        eventLoop.execute { self.channel?.close(promise: nil) }
    }
}

/// What a session needs from the backend it leased, read on the backend's loop at lease time.
struct MySQLLeaseInfo: Sendable {
    var state: MySQLSessionState
    var baseline: [String: String]
    var noBackslashEscapes: Bool
    var statements: MySQLBackendStatementCache
}

typealias MySQLBackendPool = PoolDriver<MySQLBackendConnection>

extension MySQLBackendConnection: PooledConnection {
    static func poolFailure(_ error: any Error) -> ConnectionFailure {
        switch (error as? MySQLBackendError) ?? .connection("\(error)") {
        case .server(let packet): return ConnectionFailure(code: "\(packet.code)", message: packet.message)
        case .connection(let message), .protocolViolation(let message): return ConnectionFailure(message: message)
        }
    }
}
