import ConnectionPool
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOConcurrencyHelpers
import PostgresProxy
import PostgresWire
import Synchronization

/// The client session that currently has a backend leased. The backend calls it on the owner's
/// event loop (hopping there when the two live on different loops).
protocol BackendOwner: AnyObject, Sendable {
    var eventLoop: any EventLoop { get }
    /// The process id the client was given (its BackendKeyData): a NotificationResponse from
    /// this backend's own session carries it instead of the backend's pid.
    var processID: Int32 { get }
    /// Complete messages from the database, in order, as one slice of the bytes read (to be
    /// forwarded as they are). `readyForQueryCount` ReadyForQuery messages are among them; the
    /// last one carried `lastStatus`, the first `firstStatus`. `sawError`: an ErrorResponse came
    /// before the first of them.
    /// `reports`: the bytes hold ParameterStatus messages of tracked parameters (the owner
    /// decides which the client sees: `ClientSession.filterReports`).
    func backendDidRead(
        _ bytes: ByteBuffer, readyForQueryCount: Int, firstStatus: PGTransactionStatus, lastStatus: PGTransactionStatus,
        sawError: Bool, reports: Bool)
    /// The end of one read burst from the database: time to flush to the client.
    func backendDidReadComplete()
    /// The backend's parameters were brought to what the session asked for (or that failed).
    /// Success carries the parameter values the server has reported, by their reported names.
    func backendDidPrepare(_ result: Result<[String: String], BackendError>)
    /// While leased, the database reported a new value of a tracked session parameter (after a
    /// SET, RESET or the end of a transaction): the client's value from now on. Lowercased name.
    /// The backend died while leased.
    func backendDidClose()
    /// The database connection's writability changed (the client should pause or resume).
    func backendWritabilityChanged(isWritable: Bool)
}

/// Why a backend connection could not be opened or used.
enum BackendError: Error, CustomStringConvertible, Sendable {
    /// The database refused us with an ErrorResponse (wrong database, role, password, ...).
    case server(PGErrorFields)
    /// The connection failed or broke.
    case connection(String)
    /// The database spoke in a way we do not support.
    case protocolViolation(String)

    var description: String {
        switch self {
        case .server(let fields): return "\(fields.severity) \(fields.code): \(fields.message)"
        case .connection(let reason): return "connection failed: \(reason)"
        case .protocolViolation(let reason): return "protocol violation: \(reason)"
        }
    }
}

/// What a new backend needs to log in and get ready.
struct BackendSettings: Sendable {
    var address: SocketAddress
    var username: String
    var password: String
    var database: String
    /// Statements run once after login, before the backend serves anyone.
    var initQuery: String
    /// Whether to read `max_connections` during setup (the proxy's cap derives from it).
    var readMaxConnections: Bool
    var scramCache: SCRAMSaltedPasswordCache
    var logger: Logger
    /// The pool's generation when this backend was opened (see `BackendPool.retire`).
    var generation: Int = 0
    /// TLS to the database (`target_group.tls`); nil: plaintext.
    var tls: NIOSSLContext?
    /// The target's host name for SNI and certificate checks (nil for an IP address).
    var serverHostname: String?
    /// Only to name the mode in errors.
    var tlsMode: String = "disable"
    /// Sent at login (health checks name themselves; pool backends take the client's).
    var applicationName: String?
}

/// One connection from the proxy to the database, and the channel handler that drives it.
///
/// All mutable state is confined to `eventLoop`; other threads talk to it through methods that
/// hop there. While leased it forwards what the database sends to its owner, parsing only the
/// message headers (and ReadyForQuery's status) and never re-encoding.
final class BackendConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    fileprivate enum Phase {
        case connecting
        /// SSLRequest sent; waiting for the one-byte answer.
        case negotiatingTLS
        case authenticating(SCRAMClientSession?)
        case startingUp
        /// Running `setupQueries[step]` (one simple Query each, answered by one ReadyForQuery).
        case setup(step: Int, failure: PGErrorFields?)
        case idle
        case leased(any BackendOwner)
        case preparing(any BackendOwner, failure: PGErrorFields?)
        case resetting
        /// A health check's `SELECT pg_is_in_recovery()` (connections of the health checker only).
        case checking(EventLoopPromise<Bool>, inRecovery: Bool?, failure: PGErrorFields?)
        case closed
    }

    let id: ConnectionID
    let key: PoolKey
    let eventLoop: any EventLoop
    let address: SocketAddress
    private let settings: BackendSettings
    var generation: Int { settings.generation }
    private var phase: Phase = .connecting
    /// Set once in channelActive, before the backend is handed to anyone, and never cleared.
    private var channel: (any Channel)?
    private var cumulation: ByteBuffer?
    private var setupPromise: EventLoopPromise<BackendConnection>?
    private var readingPaused = false
    private var setupQueries: [SetupQuery] = []
    /// Settings the init query changed (lowercased name → value): what a client's parameter
    /// goes back to when the next client does not ask for it (RESET would lose them).
    private var baselineParameters: [String: String] = [:]

    private enum SetupQuery {
        case maxConnections
        case initQuery
        case baseline

        var sql: String {
            switch self {
            case .maxConnections: return "SHOW max_connections"
            case .initQuery: return ""
            case .baseline:
                return "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'"
            }
        }
    }
    private var maxConnectionsValue: Int?
    /// Why TLS with the database failed, for the setup error.
    private var tlsFailure: String?
    private weak var pool: BackendPool?

    /// The named statements this backend holds (see PreparedStatements.swift). Used by the
    /// session it is leased to, and here at lease time only.
    var statementCache = BackendStatementCache()

    /// ParameterStatus values the server reported (at login and since).
    private(set) var serverParameters: [String: String] = [:]
    /// Session parameters the proxy set on this backend for its current or last client, by
    /// lowercased name. Empty means the backend runs with its login defaults.
    private var appliedParameters: [String: String] = [:]
    /// The lease under way set a startup packet's values (`lease(fromDefaults:)`).
    private var preparingFromDefaults = false
    /// What the server reported at login (name-sorted), fixed once setup completes.
    private(set) var loginParameters: [StartupParameter] = []
    private(set) var backendProcessID: Int32 = 0
    private(set) var backendSecretKey: Int32 = 0
    /// The process id (BackendKeyData) of the client this backend was last leased to: a
    /// NOTIFY runs at the commit of that client's transaction, so a listener shown this backend's
    /// pid in a NotificationResponse is shown that client's instead, as PostgreSQL shows the
    /// sender's pid. Written at each lease, read from other loops.
    private let lastLessee = Atomic<Int32>(0)

    /// Every open backend of this process by target and pid (see `lastLessee`).
    private static let byProcessID = NIOLockedValueBox<[BackendIdentity: WeakBackend]>([:])

    private struct BackendIdentity: Hashable {
        var address: SocketAddress
        var processID: Int32
    }

    private final class WeakBackend: @unchecked Sendable {
        weak var backend: BackendConnection?
        init(_ backend: BackendConnection) { self.backend = backend }
    }

    /// The client process id to show for a notification sent by backend `processID` of this
    /// target: the last client that backend served; nil if unknown.
    private func notifyingClient(_ processID: Int32) -> Int32? {
        let identity = BackendIdentity(address: address, processID: processID)
        guard let backend = Self.byProcessID.withLockedValue({ $0[identity]?.backend }) else { return nil }
        let lessee = backend.lastLessee.load(ordering: .relaxed)
        return lessee == 0 ? nil : lessee
    }

    /// The value of `max_connections` read during setup, when asked for.
    var maxConnections: Int? { maxConnectionsValue }

    private init(id: ConnectionID, key: PoolKey, eventLoop: any EventLoop, settings: BackendSettings, pool: BackendPool?) {
        self.id = id
        self.key = key
        self.eventLoop = eventLoop
        self.address = settings.address
        self.settings = settings
        self.pool = pool
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
                connection.failSetup(.connection("\(settings.address): \(error)"))
            }
        // The login as a whole (TLS, authentication, setup queries) has the same bound as the TCP
        // connect: a server, or a path, that accepts and then never answers must not hold a
        // borrow, a health check or a shutdown for ever.
        let deadline = eventLoop.scheduleTask(in: connectTimeout) {
            guard connection.setupPromise != nil else { return }
            connection.failSetup(.connection("\(settings.address): no answer to the login within \(connectTimeout.nanoseconds / 1_000_000) ms"))
            connection.channel?.close(promise: nil)
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        return promise.futureResult
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        channel = context.channel
        if settings.tls != nil {
            var request = context.channel.allocator.buffer(capacity: 8)
            PGEncode.sslRequest(into: &request)
            phase = .negotiatingTLS
            context.writeAndFlush(wrapOutboundOut(request), promise: nil)
            return
        }
        sendStartup(context: context)
    }

    private func sendStartup(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        var parameters = [
            StartupParameter(name: "user", value: settings.username),
            StartupParameter(name: "database", value: settings.database),
        ]
        if let name = settings.applicationName { parameters.append(StartupParameter(name: "application_name", value: name)) }
        PGEncode.startupMessage(parameters: parameters, into: &buffer)
        phase = .authenticating(nil)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let previous = phase
        phase = .closed
        if backendProcessID != 0 {
            let identity = BackendIdentity(address: address, processID: backendProcessID)
            Self.byProcessID.withLockedValue { table in
                if table[identity]?.backend === self { table[identity] = nil }
            }
        }
        // `channel` stays set: other threads may still write to it (harmlessly, it is closed).
        switch previous {
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup:
            failSetup(.connection(tlsFailure ?? "the database closed the connection during login"))
        case .leased(let owner), .preparing(let owner, _):
            owner.eventLoop.execute { owner.backendDidClose() }
            pool?.connectionClosed(self)
        case .idle, .resetting:
            pool?.connectionClosed(self)
        case .checking(let promise, _, _):
            promise.fail(BackendError.connection("the database closed the health-check connection"))
        case .closed:
            break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard case .leased(let owner) = phase else { return }
        let writable = context.channel.isWritable
        owner.eventLoop.execute { owner.backendWritabilityChanged(isWritable: writable) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        settings.logger.debug("backend connection error", metadata: ["concierge.backend_error": "\(error)"])
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            tlsFailure = "TLS with the database failed (target_group.tls.mode \(settings.tlsMode)): \(error)"
        }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var pending = cumulation {
            cumulation = nil
            pending.writeBuffer(&incoming)
            incoming = pending
        }
        if case .negotiatingTLS = phase {
            guard let answer = incoming.readInteger(as: UInt8.self) else { return }
            guard answer == UInt8(ascii: "S"), let tls = settings.tls else {
                failSetup(.connection("the database does not accept TLS (target_group.tls.mode is \(settings.tlsMode))"))
                context.close(promise: nil)
                return
            }
            // Anything after the answer would have been sent unencrypted (CVE-2021-23222).
            guard incoming.readableBytes == 0 else {
                failSetup(.protocolViolation("the database sent unencrypted data after its TLS answer"))
                context.close(promise: nil)
                return
            }
            do {
                let handler = try NIOSSLClientHandler(context: tls, serverHostname: settings.serverHostname)
                try context.pipeline.syncOperations.addHandler(handler, position: .first)
            } catch {
                failSetup(.connection("TLS with the database could not start: \(error)"))
                context.close(promise: nil)
                return
            }
            sendStartup(context: context)
            return
        }
        do {
            if case .leased(let owner) = phase {
                try forward(&incoming, to: owner)
            } else {
                while case .some = phase.acceptsOwnMessages, let frame = try PGFraming.nextFrame(from: &incoming, maxMessageSize: 1 << 30) {
                    try handleOwnMessage(frame, context: context)
                    if case .leased(let owner) = phase {
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
        if case .leased(let owner) = phase {
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
                    serverParameters[parameter.name] = parameter.value
                    let name = parameter.name.lowercased()
                    if TrackedParameters.isTracked(name) {
                        // This backend now runs with the value, and so does its client.
                        appliedParameters[name] = parameter.value
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

    /// Whether an ErrorResponse body has severity FATAL or PANIC (`V`, else `S`).
    static func endsSession(_ body: ByteBuffer) -> Bool {
        var body = body
        var severity: ByteBuffer?
        while let field = body.readInteger(as: UInt8.self), field != 0 {
            guard let value = body.readNullTerminatedSlice() else { return false }
            if field == UInt8(ascii: "V") { severity = value; break }
            if field == UInt8(ascii: "S") { severity = value }
        }
        guard let severity else { return false }
        return severity.readableBytesView.elementsEqual("FATAL".utf8) || severity.readableBytesView.elementsEqual("PANIC".utf8)
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

    /// Messages the proxy itself consumes: login, setup, parameter changes and resets.
    private func handleOwnMessage(_ frame: PGFrame, context: ChannelHandlerContext) throws {
        switch frame.type {
        case PGMessageType.Backend.authentication:
            try handleAuthentication(PGParse.authentication(frame.body), context: context)
        case PGMessageType.Backend.parameterStatus:
            let parameter = try PGParse.parameterStatus(frame.body)
            serverParameters[parameter.name] = parameter.value
            if case .resetting = phase {
                // The ROLLBACK of a client that left inside a transaction undid a tracked SET
                // the backend had reported (and recorded as applied): it runs with this again.
                let name = parameter.name.lowercased()
                if TrackedParameters.isTracked(name), appliedParameters[name] != nil {
                    appliedParameters[name] = parameter.value
                }
            }
        case PGMessageType.Backend.backendKeyData:
            let keyData = try PGParse.backendKeyData(frame.body)
            backendProcessID = keyData.processID
            backendSecretKey = keyData.secretKey
            let identity = BackendIdentity(address: address, processID: keyData.processID)
            let entry = WeakBackend(self)
            Self.byProcessID.withLockedValue { $0[identity] = entry }
        case PGMessageType.Backend.errorResponse:
            let fields = try PGErrorFields(diagnostics: PGParse.errorResponse(frame.body))
            switch phase {
            case .connecting, .negotiatingTLS, .authenticating, .startingUp:
                failSetup(.server(fields))
                context.close(promise: nil)
            case .setup(let step, let failure):
                phase = .setup(step: step, failure: failure ?? fields)
            case .preparing(let owner, _):
                phase = .preparing(owner, failure: fields)
            case .checking(let promise, let value, _):
                phase = .checking(promise, inRecovery: value, failure: fields)
            case .idle, .resetting, .closed, .leased:
                settings.logger.info(
                    "database reported an error on an idle connection",
                    metadata: ["concierge.sqlstate": "\(fields.code)", "concierge.message": "\(fields.message)"])
                if fields.severity == "FATAL" || fields.severity == "PANIC" {
                    context.close(promise: nil)
                }
            }
        case PGMessageType.Backend.readyForQuery:
            try handleReadyForQuery(PGParse.readyForQuery(frame.body), context: context)
        case PGMessageType.Backend.dataRow:
            if case .checking(let promise, _, let failure) = phase {
                let values = try PGParse.dataRowStrings(frame.body)
                phase = .checking(promise, inRecovery: values.first.flatMap { $0 }.map { $0 == "t" }, failure: failure)
                break
            }
            guard case .setup(let step, _) = phase else { break }
            let values = try PGParse.dataRowStrings(frame.body)
            switch setupQueries[step] {
            case .maxConnections:
                maxConnectionsValue = values.first.flatMap { $0 }.flatMap { Int($0) }
            case .baseline:
                if values.count == 2, let name = values[0], let value = values[1] {
                    baselineParameters[name.lowercased()] = value
                }
            case .initQuery:
                break
            }
        case PGMessageType.Backend.noticeResponse, PGMessageType.Backend.notificationResponse,
            PGMessageType.Backend.rowDescription, PGMessageType.Backend.commandComplete, PGMessageType.Backend.closeComplete,
            PGMessageType.Backend.parseComplete, PGMessageType.Backend.bindComplete,
            PGMessageType.Backend.emptyQueryResponse, PGMessageType.Backend.negotiateProtocolVersion:
            break
        default:
            throw BackendError.protocolViolation("unexpected message type \(frame.type) outside a client's transaction")
        }
    }

    private func handleAuthentication(_ request: AuthenticationRequest, context: ChannelHandlerContext) throws {
        var out = context.channel.allocator.buffer(capacity: 128)
        switch request {
        case .ok:
            phase = .startingUp
            return
        case .cleartextPassword:
            PGEncode.passwordMessage(settings.password, into: &out)
        case .md5Password(let salt):
            PGEncode.passwordMessage(
                PGMD5.hashedPassword(user: settings.username, password: settings.password, salt: salt), into: &out)
        case .sasl(let mechanisms):
            guard mechanisms.contains("SCRAM-SHA-256") else {
                throw BackendError.protocolViolation("the database offers no supported SASL mechanism (\(mechanisms))")
            }
            var session = SCRAMClientSession(password: settings.password, saltedPasswordCache: settings.scramCache)
            PGEncode.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: session.clientFirstMessage(), into: &out)
            phase = .authenticating(session)
        case .saslContinue(let data):
            guard case .authenticating(var session?) = phase else {
                throw BackendError.protocolViolation("unexpected SASL continue")
            }
            let final = try session.receiveServerFirst(data)
            PGEncode.saslResponse(data: final, into: &out)
            phase = .authenticating(session)
        case .saslFinal(let data):
            guard case .authenticating(let session?) = phase else {
                throw BackendError.protocolViolation("unexpected SASL final")
            }
            try session.verifyServerFinal(data)
            return
        default:
            failSetup(.protocolViolation("the database asks for an authentication method the proxy does not support (\(request))"))
            context.close(promise: nil)
            return
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    private func handleReadyForQuery(_ status: PGTransactionStatus, context: ChannelHandlerContext) throws {
        if case .checking(let promise, let inRecovery, let failure) = phase {
            phase = .idle
            if let inRecovery, failure == nil {
                promise.succeed(inRecovery)
            } else {
                promise.fail(failure.map { BackendError.server($0) } ?? BackendError.protocolViolation("no answer to the health check"))
            }
            return
        }
        switch phase {
        case .startingUp:
            if settings.readMaxConnections { setupQueries.append(.maxConnections) }
            if !settings.initQuery.isEmpty { setupQueries += [.initQuery, .baseline] }
            if setupQueries.isEmpty {
                finishSetup()
            } else {
                phase = .setup(step: 0, failure: nil)
                var out = context.channel.allocator.buffer(capacity: 128)
                for query in setupQueries {
                    PGEncode.query(query == .initQuery ? settings.initQuery : query.sql, into: &out)
                }
                context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            }
        case .setup(let step, let failure):
            if step + 1 < setupQueries.count {
                phase = .setup(step: step + 1, failure: failure)
            } else if let failure {
                failSetup(.server(failure))
                context.close(promise: nil)
            } else if status != .idle {
                failSetup(.protocolViolation("init_query left a transaction open"))
                context.close(promise: nil)
            } else {
                finishSetup()
            }
        case .preparing(let owner, let failure):
            if let failure {
                phase = .closed
                notifyPrepared(owner, .failure(.server(failure)))
                pool?.release(self, reusable: false)
                context.close(promise: nil)
            } else {
                if preparingFromDefaults {
                    preparingFromDefaults = false
                    // A value the database did not change is not reported again: the backend
                    // runs with its last report, not with the client's spelling of it.
                    for (name, value) in serverParameters {
                        let lowercased = name.lowercased()
                        if appliedParameters[lowercased] != nil { appliedParameters[lowercased] = value }
                    }
                }
                phase = .leased(owner)
                notifyPrepared(owner, .success(()))
            }
        case .resetting:
            if status == .idle {
                phase = .idle
                pool?.release(self, reusable: true)
            } else {
                pool?.release(self, reusable: false)
                phase = .closed
                context.close(promise: nil)
            }
        case .connecting, .negotiatingTLS, .authenticating, .idle, .leased, .checking, .closed:
            throw BackendError.protocolViolation("unexpected ReadyForQuery")
        }
    }

    /// Tells the owner its backend is ready (or not), directly when both share an event loop.
    private func notifyPrepared(_ owner: any BackendOwner, _ outcome: Result<Void, BackendError>) {
        let result = outcome.map { serverParameters }
        if owner.eventLoop.inEventLoop {
            owner.backendDidPrepare(result)
        } else {
            owner.eventLoop.execute { owner.backendDidPrepare(result) }
        }
    }

    private func finishSetup() {
        phase = .idle
        loginParameters = serverParameters.sorted { $0.key < $1.key }.map { StartupParameter(name: $0.key, value: $0.value) }
        let promise = setupPromise
        setupPromise = nil
        promise?.succeed(self)
    }

    private func failSetup(_ error: BackendError) {
        let promise = setupPromise
        setupPromise = nil
        promise?.fail(error)
    }

    // MARK: Health checks

    /// Runs `SELECT pg_is_in_recovery()` (true: a standby). Only for the health checker's own
    /// connections, which are never pooled; fails if the connection is busy or closes.
    func checkRecovery() -> EventLoopFuture<Bool> {
        let promise = eventLoop.makePromise(of: Bool.self)
        eventLoop.execute {
            guard case .idle = self.phase, let channel = self.channel else {
                promise.fail(BackendError.connection("the health-check connection is not ready"))
                return
            }
            self.phase = .checking(promise, inRecovery: nil, failure: nil)
            var out = channel.allocator.buffer(capacity: 40)
            PGEncode.query("SELECT pg_catalog.pg_is_in_recovery()", into: &out)
            channel.writeAndFlush(out, promise: nil)
        }
        return promise.futureResult
    }

    // MARK: Commands from the pool and the owner (any thread)

    /// Hands the backend to a client session: brings its session parameters to `parameters`
    /// (lowercased name → value) and then calls `owner.backendDidPrepare`.
    ///
    /// `fromDefaults`: the values are as a client wrote them in its startup packet, not yet in
    /// PostgreSQL's spelling (the login probe). Some are partial (`DateStyle=SQL` keeps the
    /// current day/month order), and PostgreSQL applies a startup packet's values to the
    /// session's defaults, not to whatever the previous client left: so each goes back to its
    /// default first.
    func lease(to owner: any BackendOwner, parameters: [String: String], fromDefaults: Bool = false) {
        if eventLoop.inEventLoop {
            leaseOnLoop(to: owner, parameters: parameters, fromDefaults: fromDefaults)
        } else {
            eventLoop.execute { self.leaseOnLoop(to: owner, parameters: parameters, fromDefaults: fromDefaults) }
        }
    }

    private func leaseOnLoop(to owner: any BackendOwner, parameters: [String: String], fromDefaults: Bool) {
        lastLessee.store(owner.processID, ordering: .relaxed)
        guard case .idle = phase, let channel else {
            notifyPrepared(owner, .failure(.connection("the database connection closed")))
            if case .closed = phase {} else { pool?.release(self, reusable: false) }
            return
        }
        // Usually the parameters already match (most clients send the same startup packet).
        let sql = appliedParameters == parameters
            ? nil
            : Self.parameterSyncSQL(
                from: appliedParameters, to: parameters, baseline: baselineParameters, fromDefaults: fromDefaults)
        appliedParameters = parameters
        let stale = statementCache.takeStale()
        guard sql != nil || !stale.isEmpty else {
            phase = .leased(owner)
            notifyPrepared(owner, .success(()))
            return
        }
        preparingFromDefaults = fromDefaults
        startPreparing(owner, sql: sql, closing: stale, channel: channel)
    }

    /// Sends what brings the backend to its owner's state, answered by one ReadyForQuery: Close
    /// of statements no longer wanted (a Close of a name the server no longer has is not an
    /// error, where DEALLOCATE would be), then the parameter SQL (or a Sync).
    private func startPreparing(_ owner: any BackendOwner, sql: String?, closing stale: [String], channel: any Channel) {
        phase = .preparing(owner, failure: nil)
        var out = channel.allocator.buffer(capacity: (sql?.utf8.count ?? 0) + 8 + stale.count * 40)
        for name in stale { StatementMessages.closeStatement(name, into: &out) }
        if let sql {
            PGEncode.query(sql, into: &out)
        } else {
            PGEncode.sync(into: &out)
        }
        channel.writeAndFlush(out, promise: nil)
    }

    /// The leasing session ran `RESET ALL`, `DISCARD ALL` or `RESET name`: the backend now runs
    /// with its login defaults there, without what init_query set.
    /// `names`: the parameters reset (`RESET name`); nil: all of them.
    func noteParametersReset(_ names: Set<String>?) {
        if eventLoop.inEventLoop {
            noteParametersResetOnLoop(names)
        } else {
            eventLoop.execute { self.noteParametersResetOnLoop(names) }
        }
    }

    /// A value no client can ask for (startup values cannot hold a NUL): "not the baseline".
    static let lostBaseline = "\u{0}"

    private func noteParametersResetOnLoop(_ names: Set<String>?) {
        guard let names else {
            appliedParameters = [:]
            for name in baselineParameters.keys { appliedParameters[name] = Self.lostBaseline }
            return
        }
        for name in names {
            // Back to the login default: what "not applied" means, unless init_query set it.
            appliedParameters[name] = baselineParameters[name] != nil ? Self.lostBaseline : nil
        }
    }

    /// While leased, between two of its owner's transactions or statements: brings the session
    /// parameters to `parameters` again (after a RESET ALL the owner keeps the backend), then
    /// calls `owner.backendDidPrepare` as `lease` does.
    func reapply(to owner: any BackendOwner, parameters: [String: String]) {
        let run: @Sendable () -> Void = {
            guard case .leased = self.phase, let channel = self.channel else {
                self.notifyPrepared(owner, .failure(.connection("the database connection closed")))
                return
            }
            let sql = self.appliedParameters == parameters
                ? nil
                : Self.parameterSyncStatement(from: self.appliedParameters, to: parameters, baseline: self.baselineParameters)
            self.appliedParameters = parameters
            guard let sql else {
                self.notifyPrepared(owner, .success(()))
                return
            }
            // Through the extended protocol, under names of the proxy's own: a simple Query would
            // destroy the client's unnamed statement and portal (it may be inside a transaction).
            self.phase = .preparing(owner, failure: nil)
            var out = channel.allocator.buffer(capacity: sql.utf8.count + 128)
            PGEncode.parse(statementName: Self.resyncName, query: sql, into: &out)
            PGEncode.bind(portalName: Self.resyncName, statementName: Self.resyncName, parameters: [], into: &out)
            PGEncode.execute(portalName: Self.resyncName, into: &out)
            PGEncode.close(.portal, name: Self.resyncName, into: &out)
            PGEncode.close(.statement, name: Self.resyncName, into: &out)
            PGEncode.sync(into: &out)
            channel.writeAndFlush(out, promise: nil)
        }
        if eventLoop.inEventLoop { run() } else { eventLoop.execute(run) }
    }

    static let resyncName = "concierge_resync"

    /// (Each `set_config` is wrapped in `IS NULL`: its result row would carry the value, which
    /// the backend converts to the previous client's encoding before this batch's own
    /// `client_encoding` takes effect, and which that encoding may not be able to represent.)

    /// As `parameterSyncSQL`, as one statement (for the extended protocol): a parameter to reset
    /// takes its reset value from `pg_settings`.
    static func parameterSyncStatement(
        from current: [String: String], to desired: [String: String], baseline: [String: String] = [:]
    ) -> String? {
        var calls: [String] = []
        for (name, value) in desired.sorted(by: { $0.key < $1.key }) where current[name] != value {
            calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
        }
        for name in current.keys.sorted() where desired[name] == nil {
            if let value = baseline[name] {
                calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
            } else {
                calls.append(
                    "pg_catalog.set_config(\(quoteLiteral(name)), (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = \(quoteLiteral(name))), false) IS NULL")
            }
        }
        return calls.isEmpty ? nil : "SELECT " + calls.joined(separator: ", ")
    }

    /// SQL that takes a backend from one set of session parameters to another, or nil when
    /// nothing differs. Values go through set_config so list-valued settings parse as they do
    /// in a startup packet; names and values are quoted, never spliced raw. A parameter the new
    /// client does not set goes back to its `baseline` value (set by init_query) or is RESET.
    ///
    /// With `fromDefaults`, each parameter that changes first goes back to its default (baseline
    /// or RESET), as a startup packet's value would apply to it.
    static func parameterSyncSQL(
        from current: [String: String], to desired: [String: String], baseline: [String: String] = [:],
        fromDefaults: Bool = false
    ) -> String? {
        var calls: [String] = []
        var defaults: [String] = []
        for (name, value) in desired.sorted(by: { $0.key < $1.key }) where current[name] != value {
            if fromDefaults {
                if let baselineValue = baseline[name] {
                    defaults.append(
                        "SELECT pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(baselineValue)), false) IS NULL")
                } else {
                    defaults.append("RESET \(quoteIdentifier(name))")
                }
            }
            calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
        }
        var resets: [String] = []
        for name in current.keys.sorted() where desired[name] == nil {
            if let value = baseline[name] {
                calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
            } else {
                resets.append("RESET \(quoteIdentifier(name))")
            }
        }
        if calls.isEmpty && resets.isEmpty { return nil }
        var statements = defaults
        if !calls.isEmpty { statements.append("SELECT " + calls.joined(separator: ", ")) }
        statements.append(contentsOf: resets)
        return statements.joined(separator: "; ")
    }

    /// A string literal in ASCII only: the backend reads the proxy's SQL in whatever
    /// `client_encoding` its previous client left (LATIN1, SJIS, GBK...), where UTF-8 bytes would
    /// mean other characters (`schéma` read as `schÃ©ma`) or, in SJIS or GBK, swallow the
    /// backslash that escapes a quote (SQL injection). Other characters are `\u` / `\U` escapes,
    /// which an `E''` literal reads in any encoding and with any `standard_conforming_strings`.
    static func quoteLiteral(_ value: String) -> String {
        var out = "E'"
        for scalar in value.unicodeScalars {
            switch scalar {
            case "'": out += "''"
            case "\\": out += "\\\\"
            case _ where scalar.isASCII: out.unicodeScalars.append(scalar)
            case _ where scalar.value <= 0xFFFF: out += "\\u" + hex(scalar.value, digits: 4)
            default: out += "\\U" + hex(scalar.value, digits: 8)
            }
        }
        return out + "'"
    }

    /// An identifier in ASCII only (see `quoteLiteral`): other characters as `U&"\XXXX"` escapes.
    static func quoteIdentifier(_ name: String) -> String {
        guard !name.unicodeScalars.allSatisfy(\.isASCII) else {
            return "\"" + name.replacingAll("\"", with: "\"\"") + "\""
        }
        var out = "U&\""
        for scalar in name.unicodeScalars {
            switch scalar {
            case "\"": out += "\"\""
            case "\\": out += "\\\\"
            case _ where scalar.isASCII: out.unicodeScalars.append(scalar)
            case _ where scalar.value <= 0xFFFF: out += "\\" + hex(scalar.value, digits: 4)
            default: out += "\\+" + hex(scalar.value, digits: 6)
            }
        }
        return out + "\""
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }

    /// The leasing session set `name` (lowercased) on this backend with SQL; nil: RESET.
    func noteApplied(name: String, value: String?) {
        if eventLoop.inEventLoop {
            appliedParameters[name] = value
        } else {
            eventLoop.execute { self.appliedParameters[name] = value }
        }
    }

    /// For messages the proxy builds on the client's behalf.
    var allocator: ByteBufferAllocator { channel?.allocator ?? ByteBufferAllocator() }

    /// Writes client bytes to the database (any thread; flushes at `flush()`).
    func write(_ bytes: ByteBuffer) {
        channel?.write(bytes, promise: nil)
    }

    func flush() {
        channel?.flush()
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
        switch phase {
        case .leased, .preparing:
            if reusable {
                phase = .idle
                pool?.release(self, reusable: true)
            } else {
                phase = .closed
                pool?.release(self, reusable: false)
                channel?.close(promise: nil)
            }
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup, .idle, .resetting, .checking, .closed:
            break
        }
    }

    /// The client left inside a transaction: roll it back, then return the backend to the pool
    /// (or close it if that fails).
    func rollbackAndRelease() {
        eventLoop.execute {
            guard case .leased = self.phase, let channel = self.channel else { return }
            if self.readingPaused { self.setReadingPausedOnLoop(false) }
            self.phase = .resetting
            var out = channel.allocator.buffer(capacity: 16)
            PGEncode.query("ROLLBACK", into: &out)
            channel.writeAndFlush(out, promise: nil)
        }
    }

    /// Cancels whatever the database is running for this connection, then closes it: the only
    /// safe end for a backend whose client vanished mid-statement.
    func cancelAndClose() {
        sendCancelRequest()
        release(reusable: false)
    }

    /// Sends a CancelRequest for this backend over a new connection to the database. The future
    /// completes when the database closed that connection (it has signalled the backend by then),
    /// or after 5 s, or when the connection failed.
    @discardableResult
    func sendCancelRequest() -> EventLoopFuture<Void> {
        let processID = backendProcessID
        let secretKey = backendSecretKey
        guard processID != 0 else { return eventLoop.makeSucceededVoidFuture() }
        let eventLoop = self.eventLoop
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(.seconds(5))
            .connect(to: address)
            .flatMap { channel in
                var buffer = channel.allocator.buffer(capacity: 16)
                PGEncode.cancelRequest(processID: processID, secretKey: secretKey, into: &buffer)
                channel.writeAndFlush(buffer, promise: nil)
                let closed = channel.closeFuture
                let timeout = eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
                closed.whenComplete { _ in timeout.cancel() }
                return closed
            }
            .recover { _ in }
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
            guard let channel = self.channel else { return }
            if case .closed = self.phase {} else { self.phase = .closed }
            var out = channel.allocator.buffer(capacity: 5)
            PGEncode.terminate(into: &out)
            // Closed once Terminate is on its way, or after a second: a peer that stopped
            // reading (a full send buffer) must not keep the connection open.
            let fallback = channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
            channel.writeAndFlush(out).whenComplete { _ in
                fallback.cancel()
                channel.close(promise: nil)
            }
        }
    }
}

extension BackendConnection.Phase {
    /// Non-nil while the proxy itself reads the database's messages (not forwarding them).
    var acceptsOwnMessages: Void? {
        switch self {
        case .leased, .closed: return nil
        case .connecting, .negotiatingTLS, .authenticating, .startingUp, .setup, .idle, .preparing, .resetting, .checking: return ()
        }
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for character in self {
            if character == target { out += replacement } else { out.append(character) }
        }
        return out
    }
}
