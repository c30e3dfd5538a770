import ConciergeConfig
import ConciergeJSON
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Prometheus
import ProxyCore

/// A proxy as the admin API manages it (RDS's DBProxy, its target group and targets). The
/// runtime of every engine conforms; the admin API names no engine.
public protocol AdminManagedProxy: AnyObject, Sendable {
    var name: String { get }
    var configuration: ProxyConfiguration { get }
    func describeProxy() -> JSON
    func modifyProxy(idleClientTimeout: Int?, requireTLS: Bool?, debugLogging: Bool?) throws(AdminError)
    func describeTargetGroup() -> JSON
    func modifyTargetGroup(_ pool: ConnectionPoolConfiguration) throws(AdminError)
    func describeTargets() -> [JSON]
    func registerTargets(_ targets: [HostPort]) throws(AdminError) -> [JSON]
    func deregisterTargets(_ targets: [HostPort]) throws(AdminError)
    /// Samples the live state into the metrics registry; completes once it holds this moment's
    /// numbers (before `/metrics` renders them).
    func collectMetrics() -> EventLoopFuture<Void>
    /// Histograms kept outside the registry (per event loop), rendered after it.
    var latencyHistograms: [LatencyHistogram] { get }
}

/// A rejected admin request: the HTTP status, the RDS-style error code and the field at fault.
public struct AdminError: Error, Sendable {
    public var status: Int
    public var code: String
    public var field: String?
    public var message: String

    public init(status: Int, code: String, field: String?, message: String) {
        self.status = status
        self.code = code
        self.field = field
        self.message = message
    }

    public static func invalid(_ field: String, _ message: String) -> AdminError {
        AdminError(status: 400, code: "InvalidParameterValue", field: field, message: "\(field): \(message)")
    }
}

/// A response of the admin API.
public struct AdminResponse: Sendable {
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
public struct AdminRequest: Sendable {
    var method: HTTPMethod
    var path: String
    var query: [String: String]
    var authorization: String?
    var body: [UInt8]
}

/// The admin API's routes (docs/admin-api.md): RDS-shaped JSON over the live proxies, and
/// `/metrics` from the Prometheus registry.
public final class AdminRouter: Sendable {
    private let proxies: @Sendable () -> [any AdminManagedProxy]
    private let token: NIOLockedValueBox<String?>
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger

    public init(
        proxies: @escaping @Sendable () -> [any AdminManagedProxy], token: String?, registry: PrometheusCollectorRegistry,
        logger: Logger
    ) {
        self.proxies = proxies
        self.token = NIOLockedValueBox(token)
        self.registry = registry
        self.logger = logger
    }

    public func setToken(_ token: String?) { self.token.withLockedValue { $0 = token } }

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
            let proxies = proxies()
            let collections = proxies.map { $0.collectMetrics() }
            let registry = self.registry
            return EventLoopFuture.andAllComplete(collections, on: eventLoop).map {
                let histograms = LatencyHistogram.render(proxies.flatMap(\.latencyHistograms))
                return AdminResponse(
                    status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                    body: registry.emitToString() + histograms)
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

    private func proxy(named name: String) throws(AdminError) -> any AdminManagedProxy {
        guard let proxy = proxies().first(where: { $0.name == name }) else {
            throw AdminError(
                status: 404, code: "DBProxyNotFoundFault", field: "DBProxyName", message: "DBProxyName: no proxy named \(name)")
        }
        return proxy
    }

    private static func checkTargetGroup(_ name: String, of proxy: any AdminManagedProxy) throws(AdminError) {
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

    private static func targets(_ body: [UInt8], of proxy: any AdminManagedProxy) throws(AdminError) -> [HostPort] {
        let object = try object(body)
        try allowOnly(["DBInstanceIdentifiers", "DBProxyName", "TargetGroupName"], in: object, at: nil)
        if case .string(let group)? = object["TargetGroupName"] { try checkTargetGroup(group, of: proxy) }
        let field = "DBInstanceIdentifiers"
        guard let list = object[field] else { throw AdminError.invalid(field, "is required (a list of host:port endpoints)") }
        guard case .array(let elements) = list, !elements.isEmpty else {
            throw AdminError.invalid(field, "expected a non-empty array of host:port strings")
        }
        var targets: [HostPort] = []
        // An endpoint without a port gets its engine's (5432, 3306), as in the configuration file.
        let defaultPort = ConfigurationDefaults.targetPort(for: proxy.configuration.engineFamily)
        for element in elements {
            guard case .string(let text) = element,
                  let target = HostPort(parsing: text, defaultPort: defaultPort)
            else {
                throw AdminError.invalid(field, "\(element.rendered(indent: 0)) is not a host:port endpoint")
            }
            targets.append(target)
        }
        return targets
    }
}
