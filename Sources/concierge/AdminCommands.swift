import ArgumentParser
import ConciergeJSON
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The `aws rds` verbs for RDS Proxy, against Concierge's admin API (docs/admin-api.md): same
// verb and flag names, same JSON and table output, same exit statuses as the aws CLI (252 for a
// bad argument, 254 for an error the API returned, 255 when it could not be reached).

enum AdminExit {
    /// A bad command-line argument (the aws CLI's "usage error").
    static let usage: Int32 = 252
    /// The API answered with an error.
    static let apiError: Int32 = 254
    /// The API could not be reached, or its answer was not a complete HTTP response.
    static let unreachable: Int32 = 255
}

/// Prints `concierge: error: argument FLAG: MESSAGE` and returns the exit for a usage error.
func usageError(_ flag: String, _ message: String) -> ExitCode {
    printError("concierge: error: argument \(flag): \(message)")
    return ExitCode(AdminExit.usage)
}

/// The options every admin verb has.
struct AdminOptions: ParsableArguments {
    @Option(name: .customLong("endpoint-url"), help: ArgumentHelp(
        "The admin API's URL (default: $CONCIERGE_ENDPOINT_URL, else \(AdminEndpoint.defaultURL)).",
        valueName: "url"))
    var endpointURL: String?

    @Option(name: .long, help: ArgumentHelp("The output format: json or table.", valueName: "json|table"))
    var output: String = "json"

    @Option(name: .customLong("admin-token"), help: ArgumentHelp(
        "The admin API's bearer token (default: $CONCIERGE_ADMIN_TOKEN).", valueName: "token"))
    var adminToken: String?

    enum Format { case json, table }

    func client() throws -> (AdminHTTPClient, Format) {
        let format: Format
        switch output.lowercased() {
        case "json": format = .json
        case "table": format = .table
        default: throw usageError("--output", "invalid choice: '\(output)' (choose from 'json', 'table')")
        }
        let url: String
        let flag: String
        if let endpointURL {
            (url, flag) = (endpointURL, "--endpoint-url")
        } else if let env = environment("CONCIERGE_ENDPOINT_URL"), !env.isEmpty {
            (url, flag) = (env, "--endpoint-url (from CONCIERGE_ENDPOINT_URL)")
        } else {
            (url, flag) = (AdminEndpoint.defaultURL, "--endpoint-url")
        }
        let endpoint: AdminEndpoint
        do {
            endpoint = try AdminEndpoint(url: url)
        } catch {
            throw usageError(flag, error.description)
        }
        var token = adminToken
        if token == nil, let env = environment("CONCIERGE_ADMIN_TOKEN"), !env.isEmpty {
            token = env
        }
        if let t = token, t.isEmpty || t.contains(where: { $0.isNewline }) {
            throw usageError("--admin-token", "the token must be non-empty and on one line")
        }
        return (AdminHTTPClient(endpoint: endpoint, token: token), format)
    }
}

func environment(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

/// One admin operation: sends the request, prints the response, or the error with the aws CLI's
/// wording and exit status.
struct AdminCall {
    var operation: String
    var method: HTTPMethod
    var path: String
    var body: JSON?

    func run(_ options: AdminOptions) async throws {
        let (client, format) = try options.client()
        let response: AdminHTTPResponse
        do {
            response = try await client.send(method, path, body: body.map { Array($0.rendered(indent: 0).utf8) })
        } catch {
            switch error {
            case .connect(let reason):
                printError("concierge: could not connect to the admin API at \(client.endpoint.url): \(reason)")
            case .timeout(let seconds):
                printError("concierge: no response from the admin API at \(client.endpoint.url) within \(seconds) s (\(operation))")
            case .io(let reason):
                printError("concierge: the admin API at \(client.endpoint.url) failed to answer \(operation): \(reason)")
            }
            throw ExitCode(AdminExit.unreachable)
        }
        let parsed = try? JSON.parse(response.body, maximumDepth: 512)
        guard (200..<300).contains(response.status.code) else {
            printError(Self.errorMessage(operation: operation, status: response.status, body: response.body, parsed: parsed))
            throw ExitCode(AdminExit.apiError)
        }
        guard let value = parsed else {
            // Not JSON (should not happen): shown as it came.
            let text = String(decoding: response.body, as: UTF8.self)
            if !text.isEmpty { print(text, terminator: text.hasSuffix("\n") ? "" : "\n") }
            return
        }
        switch format {
        case .json:
            // Like the aws CLI, an empty response ({}) prints nothing.
            if value != .object([]) { print(value.rendered(), terminator: "") }
        case .table:
            print(TableOutput().render(title: operation, value), terminator: "")
        }
    }

    /// `An error occurred (Code) when calling the Operation operation: Message`.
    static func errorMessage(operation: String, status: HTTPResponseStatus, body: [UInt8], parsed: JSON?) -> String {
        var code = String(status.code)
        var message = status.reasonPhrase
        if let error = parsed?["Error"] {
            if let c = error["Code"]?.stringValue, !c.isEmpty { code = c }
            if let m = error["Message"]?.stringValue { message = m }
        } else {
            var text = String(decoding: body, as: UTF8.self).trimmingSpaces
            if text.count > 500 { text = String(text.prefix(500)) + "..." }
            if !text.isEmpty { message = text }
        }
        return "\nAn error occurred (\(code)) when calling the \(operation) operation: \(message)"
    }
}

extension String {
    var trimmingSpaces: String {
        String(self.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

/// A path segment percent-encoded (RFC 3986 unreserved characters stay as they are).
func pathSegment(_ s: String) -> String {
    var out = ""
    for byte in s.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = String(byte, radix: 16, uppercase: true)
            out += "%" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return out
}

func proxyPath(_ name: String) -> String { "/v1/db-proxies/" + pathSegment(name) }

/// `?TargetGroupName=NAME` when a target group was named, else "".
func targetGroupQuery(_ name: String?) -> String {
    name.map { "?TargetGroupName=" + pathSegment($0) } ?? ""
}

// MARK: - describe

struct DescribeDBProxies: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "describe-db-proxies",
        abstract: "Describe the proxies (GET /v1/db-proxies), or one of them.")

    @Option(name: .customLong("db-proxy-name"), help: "Only this proxy.")
    var dbProxyName: String?

    @OptionGroup var options: AdminOptions

    func run() async throws {
        let path = dbProxyName.map(proxyPath) ?? "/v1/db-proxies"
        try await AdminCall(operation: "DescribeDBProxies", method: .GET, path: path).run(options)
    }
}

struct DescribeDBProxyTargetGroups: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "describe-db-proxy-target-groups",
        abstract: "Describe a proxy's target group and its connection pool settings.")

    @Option(name: .customLong("db-proxy-name"), help: "The proxy.")
    var dbProxyName: String

    @Option(name: .customLong("target-group-name"), help: "Only this target group (there is one: default).")
    var targetGroupName: String?

    @OptionGroup var options: AdminOptions

    func run() async throws {
        let path = proxyPath(dbProxyName) + "/target-groups" + targetGroupQuery(targetGroupName)
        try await AdminCall(operation: "DescribeDBProxyTargetGroups", method: .GET, path: path).run(options)
    }
}

struct DescribeDBProxyTargets: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "describe-db-proxy-targets",
        abstract: "Describe a proxy's targets (its databases) and their health.")

    @Option(name: .customLong("db-proxy-name"), help: "The proxy.")
    var dbProxyName: String

    @Option(name: .customLong("target-group-name"), help: "The target group (there is one: default).")
    var targetGroupName: String?

    @OptionGroup var options: AdminOptions

    func run() async throws {
        let path = proxyPath(dbProxyName) + "/targets" + targetGroupQuery(targetGroupName)
        try await AdminCall(operation: "DescribeDBProxyTargets", method: .GET, path: path).run(options)
    }
}

// MARK: - modify

struct ModifyDBProxyTargetGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "modify-db-proxy-target-group",
        abstract: "Change a target group's connection pool settings, live.",
        discussion: """
            --connection-pool-config takes JSON, e.g. '{"MaxConnectionsPercent": 50}', or the aws \
            shorthand, e.g. MaxConnectionsPercent=50,ConnectionBorrowTimeout=30,\
            SessionPinningFilters=EXCLUDE_VARIABLE_SETS, or file://PATH to read either from a file. \
            Keys: \(ConnectionPoolConfigArgument.keys.map(\.name).joined(separator: ", ")).
            """)

    @Option(name: .customLong("db-proxy-name"), help: "The proxy.")
    var dbProxyName: String

    @Option(name: .customLong("target-group-name"), help: "The target group: default.")
    var targetGroupName: String

    @Option(name: .customLong("connection-pool-config"), help: ArgumentHelp(
        "The settings to change (JSON or shorthand; see above).", valueName: "config"))
    var connectionPoolConfig: String?

    @OptionGroup var options: AdminOptions

    func run() async throws {
        var members: [JSON.Member] = []
        if let connectionPoolConfig {
            let config = try ConnectionPoolConfigArgument.parse(connectionPoolConfig, flag: "--connection-pool-config")
            members.append((key: "ConnectionPoolConfig", value: config))
        }
        let path = proxyPath(dbProxyName) + "/target-groups/" + pathSegment(targetGroupName)
        try await AdminCall(operation: "ModifyDBProxyTargetGroup", method: .PATCH, path: path,
                            body: .object(members)).run(options)
    }
}

struct ModifyDBProxy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "modify-db-proxy",
        abstract: "Change a proxy's settings, live.")

    @Option(name: .customLong("db-proxy-name"), help: "The proxy.")
    var dbProxyName: String

    @Option(name: .customLong("idle-client-timeout"), help: ArgumentHelp(
        "Seconds a client may stay idle before the proxy closes it (1 to 28800).", valueName: "seconds"))
    var idleClientTimeout: String?

    @Flag(name: .customLong("require-tls"), inversion: .prefixedNo, help: "Whether clients must use TLS.")
    var requireTLS: Bool?

    @Flag(name: .customLong("debug-logging"), inversion: .prefixedNo, help: "Whether to log in detail.")
    var debugLogging: Bool?

    @OptionGroup var options: AdminOptions

    func run() async throws {
        var members: [JSON.Member] = []
        if let idleClientTimeout {
            let text = idleClientTimeout.trimmingSpaces
            guard let seconds = Int(text) else {
                throw usageError("--idle-client-timeout", "expected an integer number of seconds, got '\(idleClientTimeout)'")
            }
            members.append((key: "IdleClientTimeout", value: .int(seconds)))
        }
        if let requireTLS { members.append((key: "RequireTLS", value: .bool(requireTLS))) }
        if let debugLogging { members.append((key: "DebugLogging", value: .bool(debugLogging))) }
        try await AdminCall(operation: "ModifyDBProxy", method: .PATCH, path: proxyPath(dbProxyName),
                            body: .object(members)).run(options)
    }
}

// MARK: - targets

struct TargetOptions: ParsableArguments {
    @Option(name: .customLong("db-proxy-name"), help: "The proxy.")
    var dbProxyName: String

    @Option(name: .customLong("target-group-name"), help: "The target group (there is one: default).")
    var targetGroupName: String?

    @Option(name: .customLong("db-instance-identifiers"), parsing: .upToNextOption, help: ArgumentHelp(
        "The targets, as host:port endpoints.", valueName: "host:port"))
    var dbInstanceIdentifiers: [String] = []

    func call(_ operation: String, _ method: HTTPMethod) throws -> AdminCall {
        guard !dbInstanceIdentifiers.isEmpty else {
            throw usageError("--db-instance-identifiers", "expected one or more targets (host:port)")
        }
        if let empty = dbInstanceIdentifiers.first(where: { $0.trimmingSpaces.isEmpty }) {
            throw usageError("--db-instance-identifiers", "an empty identifier ('\(empty)')")
        }
        let body = JSON.object([
            (key: "DBInstanceIdentifiers", value: .array(dbInstanceIdentifiers.map(JSON.string))),
        ])
        let path = proxyPath(dbProxyName) + "/targets" + targetGroupQuery(targetGroupName)
        return AdminCall(operation: operation, method: method, path: path, body: body)
    }
}

struct RegisterDBProxyTargets: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register-db-proxy-targets",
        abstract: "Add databases (host:port) to a proxy's target group.")

    @OptionGroup var targets: TargetOptions
    @OptionGroup var options: AdminOptions

    func run() async throws {
        try await targets.call("RegisterDBProxyTargets", .POST).run(options)
    }
}

struct DeregisterDBProxyTargets: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deregister-db-proxy-targets",
        abstract: "Remove databases (host:port) from a proxy's target group.")

    @OptionGroup var targets: TargetOptions
    @OptionGroup var options: AdminOptions

    func run() async throws {
        try await targets.call("DeregisterDBProxyTargets", .DELETE).run(options)
    }
}
