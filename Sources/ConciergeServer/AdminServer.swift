import ConciergeConfig
import ConciergeJSON
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A response of the admin API.
struct AdminResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: String

    static func json(_ value: JSON, status: HTTPResponseStatus = .ok) -> AdminResponse {
        AdminResponse(status: status, contentType: "application/json", body: value.rendered(indent: 4))
    }

    static func error(_ error: AdminError) -> AdminResponse {
        var members: [JSON.Member] = [("Code", .string(error.code))]
        if let field = error.field { members.append(("Field", .string(field))) }
        members.append(("Message", .string(error.message)))
        return .json(.object([("Error", .object(members))]), status: HTTPResponseStatus(statusCode: error.status))
    }
}

/// One admin request, as the router sees it.
struct AdminRequest: Sendable {
    var method: HTTPMethod
    var path: String
    var query: [String: String]
    var authorization: String?
    var body: [UInt8]
}

/// The admin API's routes (docs/admin-api.md): RDS-shaped JSON over the live proxies, and
/// `/metrics` from the Prometheus registry.
final class AdminRouter: Sendable {
    private let proxies: @Sendable () -> [ProxyRuntime]
    private let token: NIOLockedValueBox<String?>
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger

    init(
        proxies: @escaping @Sendable () -> [ProxyRuntime], token: String?, registry: PrometheusCollectorRegistry,
        logger: Logger
    ) {
        self.proxies = proxies
        self.token = NIOLockedValueBox(token)
        self.registry = registry
        self.logger = logger
    }

    func setToken(_ token: String?) { self.token.withLockedValue { $0 = token } }

    func handle(_ request: AdminRequest, on eventLoop: any EventLoop) -> EventLoopFuture<AdminResponse> {
        if request.path == "/healthz" {
            guard request.method == .GET || request.method == .HEAD else {
                return eventLoop.makeSucceededFuture(.error(Self.methodNotAllowed(request)))
            }
            return eventLoop.makeSucceededFuture(.json(.object([("Status", .string("ok"))])))
        }
        if let expected = token.withLockedValue({ $0 }) {
            guard let given = request.authorization, Self.constantTimeEquals(given, "Bearer " + expected) else {
                return eventLoop.makeSucceededFuture(.error(AdminError(
                    status: 401, code: "Unauthorized", field: "Authorization",
                    message: "a valid bearer token is required (Authorization: Bearer TOKEN)")))
            }
        }
        if request.path == "/metrics" {
            guard request.method == .GET else { return eventLoop.makeSucceededFuture(.error(Self.methodNotAllowed(request))) }
            let collections = proxies().map { $0.collectMetrics() }
            let registry = self.registry
            return EventLoopFuture.andAllComplete(collections, on: eventLoop).map {
                AdminResponse(
                    status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: registry.emitToString())
            }
        }
        do {
            return eventLoop.makeSucceededFuture(try route(request))
        } catch {
            return eventLoop.makeSucceededFuture(.error(error))
        }
    }

    private static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var difference = UInt8(x.count == y.count ? 0 : 1)
        for index in 0..<max(x.count, y.count) {
            difference |= (index < x.count ? x[index] : 0) ^ (index < y.count ? y[index] : 0)
        }
        return difference == 0
    }

    private static func methodNotAllowed(_ request: AdminRequest) -> AdminError {
        AdminError(status: 405, code: "MethodNotAllowed", field: nil, message: "\(request.method) is not allowed on \(request.path)")
    }

    private func route(_ request: AdminRequest) throws(AdminError) -> AdminResponse {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard parts.count >= 2, parts[0] == "v1", parts[1] == "db-proxies" else {
            throw AdminError(status: 404, code: "NotFound", field: nil, message: "no such route: \(request.path)")
        }
        let method = request.method
        switch parts.count {
        case 2:
            guard method == .GET else { throw Self.methodNotAllowed(request) }
            if let name = request.query["DBProxyName"] {
                return .json(.object([("DBProxies", .array([try proxy(named: name).describeProxy()]))]))
            }
            return .json(.object([("DBProxies", .array(proxies().map { $0.describeProxy() }))]))
        case 3:
            let proxy = try proxy(named: parts[2])
            switch method {
            case .GET:
                return .json(.object([("DBProxies", .array([proxy.describeProxy()]))]))
            case .PATCH, .PUT, .POST:
                let body = try Self.object(request.body)
                try Self.allowOnly(["IdleClientTimeout", "RequireTLS", "DebugLogging", "DBProxyName"], in: body, at: nil)
                try proxy.modifyProxy(
                    idleClientTimeout: try Self.int(body, "IdleClientTimeout"),
                    requireTLS: try Self.bool(body, "RequireTLS"),
                    debugLogging: try Self.bool(body, "DebugLogging"))
                return .json(.object([("DBProxy", proxy.describeProxy())]))
            default:
                throw Self.methodNotAllowed(request)
            }
        case 4 where parts[3] == "target-groups":
            let proxy = try proxy(named: parts[2])
            guard method == .GET else { throw Self.methodNotAllowed(request) }
            if let group = request.query["TargetGroupName"] { try Self.checkTargetGroup(group, of: proxy) }
            return .json(.object([("TargetGroups", .array([proxy.describeTargetGroup()]))]))
        case 5 where parts[3] == "target-groups":
            let proxy = try proxy(named: parts[2])
            try Self.checkTargetGroup(parts[4], of: proxy)
            switch method {
            case .GET:
                return .json(.object([("TargetGroups", .array([proxy.describeTargetGroup()]))]))
            case .PATCH, .PUT, .POST:
                let body = try Self.object(request.body)
                try Self.allowOnly(["ConnectionPoolConfig", "DBProxyName", "TargetGroupName"], in: body, at: nil)
                guard let config = body["ConnectionPoolConfig"] else {
                    throw AdminError.invalid("ConnectionPoolConfig", "is required")
                }
                try proxy.modifyTargetGroup(try Self.poolConfiguration(config, base: proxy.configuration.targetGroup.connectionPoolConfig))
                return .json(.object([("DBProxyTargetGroup", proxy.describeTargetGroup())]))
            default:
                throw Self.methodNotAllowed(request)
            }
        case 4 where parts[3] == "targets":
            let proxy = try proxy(named: parts[2])
            if let group = request.query["TargetGroupName"] { try Self.checkTargetGroup(group, of: proxy) }
            switch method {
            case .GET:
                return .json(.object([("Targets", .array(proxy.describeTargets()))]))
            case .POST:
                let targets = try Self.targets(request.body, of: proxy)
                return .json(.object([("DBProxyTargets", .array(try proxy.registerTargets(targets)))]))
            case .DELETE:
                try proxy.deregisterTargets(try Self.targets(request.body, of: proxy))
                return .json(.object([]))
            default:
                throw Self.methodNotAllowed(request)
            }
        default:
            throw AdminError(status: 404, code: "NotFound", field: nil, message: "no such route: \(request.path)")
        }
    }

    private func proxy(named name: String) throws(AdminError) -> ProxyRuntime {
        guard let proxy = proxies().first(where: { $0.name == name }) else {
            throw AdminError(
                status: 404, code: "DBProxyNotFoundFault", field: "DBProxyName", message: "DBProxyName: no proxy named \(name)")
        }
        return proxy
    }

    private static func checkTargetGroup(_ name: String, of proxy: ProxyRuntime) throws(AdminError) {
        guard name == proxy.configuration.targetGroup.name else {
            throw AdminError(
                status: 404, code: "DBProxyTargetGroupNotFoundFault", field: "TargetGroupName",
                message: "TargetGroupName: \(proxy.name) has no target group named \(name) (only \(proxy.configuration.targetGroup.name))")
        }
    }

    // MARK: Request bodies

    private static func object(_ body: [UInt8]) throws(AdminError) -> JSON {
        let value: JSON
        do {
            value = try JSON.parse(body, rejectingDuplicateKeys: true)
        } catch {
            throw AdminError(
                status: 400, code: "MalformedRequest", field: nil,
                message: "the body is not valid JSON: \(error.reason) at byte \(error.offset)")
        }
        guard case .object = value else {
            throw AdminError(status: 400, code: "MalformedRequest", field: nil, message: "the body must be a JSON object, not \(value.typeName)")
        }
        return value
    }

    private static func allowOnly(_ keys: Set<String>, in object: JSON, at prefix: String?) throws(AdminError) {
        guard case .object(let members) = object else { return }
        for (key, _) in members where !keys.contains(key) {
            let field = prefix.map { "\($0).\(key)" } ?? key
            throw AdminError(
                status: 400, code: "MalformedRequest", field: field,
                message: "\(field): unknown field (allowed: \(keys.sorted().joined(separator: ", ")))")
        }
    }

    private static func int(_ object: JSON, _ key: String, at prefix: String? = nil) throws(AdminError) -> Int? {
        guard let value = object[key] else { return nil }
        let field = prefix.map { "\($0).\(key)" } ?? key
        guard let number = value.intValue else { throw AdminError.invalid(field, "expected an integer, found \(value.typeName)") }
        return number
    }

    private static func bool(_ object: JSON, _ key: String) throws(AdminError) -> Bool? {
        guard let value = object[key] else { return nil }
        guard case .bool(let flag) = value else { throw AdminError.invalid(key, "expected true or false, found \(value.typeName)") }
        return flag
    }

    private static func poolConfiguration(_ json: JSON, base: ConnectionPoolConfiguration) throws(AdminError)
        -> ConnectionPoolConfiguration
    {
        let prefix = "ConnectionPoolConfig"
        guard case .object = json else { throw AdminError.invalid(prefix, "expected an object, found \(json.typeName)") }
        try allowOnly(
            ["MaxConnectionsPercent", "MaxIdleConnectionsPercent", "ConnectionBorrowTimeout", "SessionPinningFilters", "InitQuery"],
            in: json, at: prefix)
        var pool = base
        if let value = try int(json, "MaxConnectionsPercent", at: prefix) { pool.maxConnectionsPercent = value }
        if let value = try int(json, "MaxIdleConnectionsPercent", at: prefix) {
            pool.maxIdleConnectionsPercent = value
        } else if pool.maxIdleConnectionsPercent > pool.maxConnectionsPercent, base.maxIdleConnectionsPercent
            == ConfigurationDefaults.maxIdleConnectionsPercent(forMaxConnectionsPercent: base.maxConnectionsPercent)
        {
            // Unchanged, unless it is at RDS Proxy's default (half of MaxConnectionsPercent) and
            // above the new MaxConnectionsPercent: then half of that (not an error about a value
            // nobody set).
            pool.maxIdleConnectionsPercent = ConfigurationDefaults.maxIdleConnectionsPercent(
                forMaxConnectionsPercent: pool.maxConnectionsPercent)
        }
        if let value = try int(json, "ConnectionBorrowTimeout", at: prefix) { pool.connectionBorrowTimeout = value }
        if let value = json["InitQuery"] {
            guard case .string(let text) = value else {
                throw AdminError.invalid("\(prefix).InitQuery", "expected a string, found \(value.typeName)")
            }
            pool.initQuery = text  // a NUL in it is refused by the validator (as in a file)
        }
        if let value = json["SessionPinningFilters"] {
            let field = "\(prefix).SessionPinningFilters"
            guard case .array(let elements) = value else { throw AdminError.invalid(field, "expected an array, found \(value.typeName)") }
            var filters: [SessionPinningFilter] = []
            for element in elements {
                guard case .string(let text) = element, let filter = SessionPinningFilter(rawValue: text) else {
                    throw AdminError.invalid(
                        field, "\(element.rendered(indent: 0)) is not a filter (allowed: \(SessionPinningFilter.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                if !filters.contains(filter) { filters.append(filter) }
            }
            pool.sessionPinningFilters = filters
        }
        // Out-of-range values are reported by the configuration validator, with its ranges.
        return pool
    }

    private static func targets(_ body: [UInt8], of proxy: ProxyRuntime) throws(AdminError) -> [HostPort] {
        let object = try object(body)
        try allowOnly(["DBInstanceIdentifiers", "DBProxyName", "TargetGroupName"], in: object, at: nil)
        if case .string(let group)? = object["TargetGroupName"] { try checkTargetGroup(group, of: proxy) }
        let field = "DBInstanceIdentifiers"
        guard let list = object[field] else { throw AdminError.invalid(field, "is required (a list of host:port endpoints)") }
        guard case .array(let elements) = list, !elements.isEmpty else {
            throw AdminError.invalid(field, "expected a non-empty array of host:port strings")
        }
        var targets: [HostPort] = []
        for element in elements {
            guard case .string(let text) = element,
                  let target = HostPort(parsing: text, defaultPort: ConfigurationDefaults.targetPort)
            else {
                throw AdminError.invalid(field, "\(element.rendered(indent: 0)) is not a host:port endpoint")
            }
            targets.append(target)
        }
        return targets
    }
}

/// The admin listener: HTTP/1.1 with keep-alive, bodies up to 1 MiB.
///
/// It must never take the data path down: at most `AdminListener.maxConnections` connections
/// are open at once (more are closed as they are accepted); a connection has
/// `requestTimeout` to deliver each complete request (counted from its accept, then from the
/// end of the previous response: slow senders and idle keep-alive connections are closed); a
/// framing error is answered 400 and the connection closed.
final class AdminHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let maxBodySize = 1 << 20
    static let requestTimeout = TimeAmount.seconds(15)

    private let router: AdminRouter
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    private var deadline: Scheduled<Void>?

    init(router: AdminRouter) {
        self.router = router
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    /// The next complete request must arrive within `requestTimeout`.
    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: Self.requestTimeout) {
            channel.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A framing error (answered 400 by NIO's protocol error handler before us) or an I/O
        // error: nothing more is read from this connection.
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.removeAll()
            tooLarge = false
        case .body(var chunk):
            guard !tooLarge else { return }
            if body.count + chunk.readableBytes > Self.maxBodySize {
                tooLarge = true
                body.removeAll()
                return
            }
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            guard let head else { return }
            self.head = nil
            // Being answered: no deadline until the response is out.
            deadline?.cancel()
            deadline = nil
            let keepAlive = head.isKeepAlive && !tooLarge
            if tooLarge {
                respond(.error(AdminError(status: 413, code: "RequestTooLarge", field: nil, message: "the body is larger than 1 MiB")),
                        version: head.version, keepAlive: false, context: context)
                return
            }
            let (path, query) = Self.split(head.uri)
            let request = AdminRequest(
                method: head.method, path: path, query: query,
                authorization: head.headers.first(name: "authorization"), body: body)
            body = []
            let version = head.version
            let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            router.handle(request, on: context.eventLoop).whenComplete { result in
                let context = boundContext.value
                let response: AdminResponse
                switch result {
                case .success(let value): response = value
                case .failure(let error):
                    response = .error(AdminError(status: 500, code: "InternalFailure", field: nil, message: "\(error)"))
                }
                self.respond(response, version: version, keepAlive: keepAlive, context: context)
            }
        }
    }

    private func respond(_ response: AdminResponse, version: HTTPVersion, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: response.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: response.body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        } else if context.channel.isActive {
            armDeadline(context: context)
        }
    }

    /// Path (percent-decoded) and query parameters of a request target.
    static func split(_ uri: String) -> (String, [String: String]) {
        let pieces = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = percentDecoded(String(pieces[0]))
        var query: [String: String] = [:]
        if pieces.count > 1 {
            for pair in pieces[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = percentDecoded(String(kv[0]))
                query[key] = kv.count > 1 ? percentDecoded(String(kv[1].map { $0 == "+" ? " " : $0 })) : ""
            }
        }
        return (path, query)
    }

    static func percentDecoded(_ text: String) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
               let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Starts the admin listener.
enum AdminListener {
    /// Admin connections open at once; beyond it, new ones are closed as they are accepted.
    static let maxConnections = 64

    static func bind(_ address: HostPort, router: AdminRouter, group: any EventLoopGroup, logger: Logger) async throws
        -> any Channel
    {
        let open = NIOLockedValueBox(0)
        return try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.pipeline.addHandler(ListenerBackoff.handler(listener: "admin", logger: logger))
            }
            .childChannelInitializer { channel in
                let admitted = open.withLockedValue { count -> Bool in
                    guard count < maxConnections else { return false }
                    count += 1
                    return true
                }
                guard admitted else {
                    // Refused before anything is read: an attacker's idle connections cannot
                    // hold more than maxConnections descriptors.
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                return channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(AdminHTTPHandler(router: router))
                }
            }
            .bind(host: address.host, port: address.port).get()
    }
}

/// The process's file descriptors, shared by every listener.
///
/// Out of descriptors, `accept` fails at once while connections wait, and SwiftNIO's listener
/// retries as long as the socket is readable: it spins (both event loops at 100%). So the proxy
/// never lets its clients take the last descriptors: beyond `clientLimit` open client sockets
/// (the open-file limit less a reserve for backends, the admin port, logs and listeners), a
/// new client is closed as it is accepted, which costs a descriptor only for that moment. Should
/// accept fail anyway, the listener's `AcceptBackoffHandler` pauses reads (SwiftNIO's own remedy)
/// and the log says so at most once a second.
enum ListenerBackoff {
    static let pause = TimeAmount.milliseconds(250)
    private static let lastWarning = Synchronization.Atomic<Int64>(0)
    private static let openClients = Synchronization.Atomic<Int>(0)
    private static let lastRefusal = Synchronization.Atomic<Int64>(0)

    /// Client sockets the process may hold open at once.
    static let clientLimit: Int = {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int32.max) else {
            return Int.max
        }
        let nofile = Int(clamping: limit.rlim_cur)
        return max(16, nofile - max(128, nofile / 8))
    }()

    static func handler(listener: String, logger: Logger) -> AcceptBackoffHandler {
        AcceptBackoffHandler(shouldForwardIOErrorCaught: false) { error in
            if once(per: 1, last: lastWarning) {
                logger.warning("could not accept a connection: accepting paused", metadata: [
                    "concierge.listener": "\(listener)",
                    "concierge.error": "\(error)",
                    "concierge.pause_ms": "\(pause.nanoseconds / 1_000_000)",
                ])
            }
            return pause
        }
    }

    /// A client socket was accepted: false (and the socket is to be closed) beyond `clientLimit`.
    /// Otherwise it counts until it closes.
    static func admitClient(_ channel: any Channel, logger: Logger) -> Bool {
        guard openClients.add(1, ordering: .relaxed).newValue <= clientLimit else {
            openClients.subtract(1, ordering: .relaxed)
            if once(per: 1, last: lastRefusal) {
                logger.warning("client connection refused: the process is at its open-file limit", metadata: [
                    "concierge.client_limit": "\(clientLimit)"
                ])
            }
            return false
        }
        channel.closeFuture.whenComplete { _ in openClients.subtract(1, ordering: .relaxed) }
        return true
    }

    private static func once(per seconds: Int64, last: borrowing Synchronization.Atomic<Int64>) -> Bool {
        let now = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        let previous = last.load(ordering: .relaxed)
        guard now - previous >= seconds || previous == 0 else { return false }
        return last.compareExchange(expected: previous, desired: max(now, 1), ordering: .relaxed).exchanged
    }
}
