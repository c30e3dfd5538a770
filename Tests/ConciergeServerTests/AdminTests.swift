import ConciergeConfig
import NIOCore
import NIOEmbedded
import NIOHTTP1
import ProxyCore
import Testing

import ConciergeJSON

@testable import ConciergeAdmin
@testable import ConciergeRuntime
@testable import ConciergeServer
@testable import PostgresServer

@Suite struct LogFormatTests {
    @Test func logfmtQuotesOnlyWhatNeedsIt() {
        let line = StructuredLogHandler.logfmt([("msg", "two words"), ("proxy", "app"), ("sql", "a=\"b\"\nc"), ("empty", "")])
        #expect(line == #"msg="two words" proxy=app sql="a=\"b\"\nc" empty="""#)
    }

    @Test func jsonEscapesControlCharacters() {
        #expect(StructuredLogHandler.json([("msg", "x\u{01}\t\"")]) == #"{"msg":"x\u0001\t\""}"#)
        // Backspace, form feed and DEL as lowercase \u escapes; C1 controls and U+2028 as they are.
        #expect(StructuredLogHandler.escaped("\u{08}\u{0C}\u{7F}\u{85}\u{2028}é\r")
            == "\\u0008\\u000c\\u007f\u{85}\u{2028}é\\r")
    }

    @Test func timestampIsUTCWithMilliseconds() {
        let ts = StructuredLogHandler.timestamp()
        #expect(ts.count == 24 && ts.hasSuffix("Z") && ts.contains("T"))
    }
}

@Suite struct RedactionTests {
    @Test(arguments: [
        ("SET search_path = 'x'", "SET search_path = '***'"),
        ("ALTER ROLE a PASSWORD 'se''cret'", "ALTER ROLE a PASSWORD '***'"),
        ("set my.password = $$p$$", "set my.password = '***'"),
        ("set my.password = $tag$p$$x$tag$ , $1", "set my.password = '***' , $1"),
        ("SELECT dblink_connect('password=s3')", "SELECT dblink_connect('***')"),
        ("CREATE ROLE \"o'neil\" PASSWORD 'secret'", "CREATE ROLE \"o'neil\" PASSWORD '***'"),
        ("select 1 -- a comment\n", "select 1 '***'\n"),
    ])
    func literalsAndCommentsAreRedacted(_ input: String, _ expected: String) {
        #expect(ClientSession.redactedStatement(input) == expected)
    }

    /// The statements of issue 16: each leaked its secret with the hand-written quoting.
    @Test(arguments: [
        "SET search_path=public; ALTER ROLE victim PASSWORD E'ab\\'secret'",
        "SET search_path=public; ALTER ROLE victim PASSWORD /* don't log it */ 'secret'",
        "-- set victim's password\nALTER ROLE victim PASSWORD 'secret'",
        "CREATE ROLE \"o'neil\" LOGIN PASSWORD 'secret'",
        "ALTER ROLE victim PASSWORD 'xy\\'secret'",  // standard_conforming_strings = off
        "ALTER ROLE victim PASSWORD U&'secret' UESCAPE '!'",
        "ALTER ROLE victim PASSWORD $q$secret$q$",
        "ALTER ROLE victim PASSWORD 'unterminated secret",
        "ALTER ROLE victim PASSWORD /* unterminated 'secret",
    ])
    func noSecretSurvives(_ input: String) {
        let out = ClientSession.redactedStatement(input)
        #expect(!out.contains("secret"), "\(out)")
    }

    /// A property, over random statements built from every kind of token: no byte of a
    /// literal's content survives, whatever quotes, backslashes and comment markers it holds.
    @Test func noLiteralSurvivesRandomStatements() {
        var rng = SplitMix64(seed: 16)
        let alphabet = Array("ab'\\\"$-/*\n ;")
        func noise(_ n: Int) -> String {
            String((0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] })
        }
        for _ in 0..<3000 {
            var sql = ""
            var secrets = 0
            for _ in 0..<Int(rng.next() % 6 + 1) {
                let marker = "SECRET"
                switch rng.next() % 9 {
                case 0: sql += " ident "
                case 1: sql += " \"q''\\\"\"x\" "
                case 2: sql += " '" + noise(3).replacingOccurrences(of: "'", with: "''").replacingOccurrences(of: "\\", with: "") + marker + "' "; secrets += 1
                case 3: sql += " E'" + noise(2).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + marker + "\\'x' "; secrets += 1
                case 4: sql += " $z$" + noise(4).replacingOccurrences(of: "$", with: "") + marker + "$z$ "; secrets += 1
                case 5: sql += " /* " + noise(3).replacingOccurrences(of: "*/", with: "").replacingOccurrences(of: "/*", with: "") + " */ "
                case 6: sql += " -- " + noise(3).replacingOccurrences(of: "\n", with: "") + marker + "\n"; secrets += 1
                case 7: sql += " 42 ; "
                default: sql += " U&'" + marker + "' "; secrets += 1
                }
            }
            let out = ClientSession.redactedStatement(sql)
            #expect(!out.contains("SECRET"), "\(sql) -> \(out)")
        }
    }
}

struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct AdminRouterTests {
    let runtime: PostgresRuntime
    let loop = EmbeddedEventLoop()

    init() throws {
        let proxy = ProxyConfiguration(
            name: "unit", listen: HostPort(host: "127.0.0.1", port: 1),
            auth: [AuthConfiguration(secretARN: "env:X", secret: .env(name: "X"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "127.0.0.1", port: 2))]))
        runtime = try PostgresRuntime(
            configuration: proxy, credentials: [DatabaseCredential(username: "app", password: "secret")],
            group: loop, logger: .init(label: "test"))
    }

    func call(_ method: HTTPMethod, _ uri: String, _ body: String = "", token: String? = nil, header: String? = nil) throws
        -> (Int, JSON)
    {
        let runtime = self.runtime
        let router = AdminRouter(proxies: { [runtime] }, token: token, registry: .init(), logger: .init(label: "test"))
        let (path, query) = AdminHTTPHandler.split(uri)
        let request = AdminRequest(method: method, path: path, query: query, authorization: header, body: Array(body.utf8))
        let future = router.handle(request, on: loop)
        loop.run()
        let response = try future.wait()
        return (Int(response.status.code), try JSON.parse(Array(response.body.utf8)))
    }

    @Test func describesTheProxyLikeRDS() throws {
        let (status, body) = try call(.GET, "/v1/db-proxies?DBProxyName=unit")
        #expect(status == 200)
        guard case .array(let proxies)? = body["DBProxies"], let proxy = proxies.first else {
            Issue.record("no DBProxies")
            return
        }
        #expect(proxy["DBProxyName"] == .string("unit"))
        #expect(proxy["EngineFamily"] == .string("POSTGRESQL"))
        #expect(proxy["IdleClientTimeout"] == .int(1800))
        #expect(proxy["RequireTLS"] == .bool(false))
        guard case .array(let auth)? = proxy["Auth"] else { Issue.record("no Auth"); return }
        #expect(auth.first?["UserName"] == .string("app"))
        #expect(auth.first?["SecretArn"] == .string("env:X"))
    }

    @Test func modifiesThePoolAndNamesTheFieldOfABadValue() throws {
        var (status, body) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/default",
                                      #"{"ConnectionPoolConfig": {"MaxConnectionsPercent": 50, "MaxIdleConnectionsPercent": 20}}"#)
        #expect(status == 200)
        #expect(body["DBProxyTargetGroup"]?["ConnectionPoolConfig"]?["MaxConnectionsPercent"] == .int(50))
        #expect(runtime.configuration.targetGroup.connectionPoolConfig.maxIdleConnectionsPercent == 20)

        (status, body) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/default", #"{"ConnectionPoolConfig": {"MaxConnectionsPercent": 0}}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Field"] == .string("ConnectionPoolConfig.MaxConnectionsPercent"))
        #expect(body["Error"]?["Code"] == .string("InvalidParameterValue"))

        (status, body) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/default", #"{"ConnectionPoolConfig": {"MaxIdleConnectionsPercent": 60}}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Code"] == .string("InvalidParameterCombination"))

        (status, body) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/default", #"{"ConnectionPoolConfig": {"MaxConnections": 5}}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Field"] == .string("ConnectionPoolConfig.MaxConnections"))

        (status, body) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/default", #"{"ConnectionPoolConfig": {"ConnectionBorrowTimeout": "5"}}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Field"] == .string("ConnectionPoolConfig.ConnectionBorrowTimeout"))

        (status, _) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/other", #"{"ConnectionPoolConfig": {}}"#)
        #expect(status == 404)
        (status, body) = try call(.PATCH, "/v1/db-proxies/unit/target-groups/default", "not json")
        #expect(status == 400)
        #expect(body["Error"]?["Code"] == .string("MalformedRequest"))
    }

    @Test func modifiesTheProxy() throws {
        var (status, body) = try call(.PATCH, "/v1/db-proxies/unit", #"{"IdleClientTimeout": 60, "DebugLogging": true}"#)
        #expect(status == 200)
        #expect(body["DBProxy"]?["IdleClientTimeout"] == .int(60))
        #expect(runtime.idleClientTimeout == 60 && runtime.debugLogging)
        (status, body) = try call(.PATCH, "/v1/db-proxies/unit", #"{"IdleClientTimeout": 0}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Field"] == .string("IdleClientTimeout"))
        (status, body) = try call(.PATCH, "/v1/db-proxies/unit", #"{"RequireTLS": true}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Field"] == .string("RequireTLS"))
        (status, _) = try call(.PATCH, "/v1/db-proxies/nope", #"{}"#)
        #expect(status == 404)
    }

    @Test func registersAndDeregistersTargets() throws {
        var (status, body) = try call(.POST, "/v1/db-proxies/unit/targets", #"{"DBInstanceIdentifiers": ["127.0.0.1:3"]}"#)
        #expect(status == 200)
        #expect(body["DBProxyTargets"] == .array([PostgresRuntime.targetJSON(
            HostPort(host: "127.0.0.1", port: 3), role: "UNKNOWN", health: TargetHealth(state: .registering),
            resourceID: runtime.resourceID)]))
        (status, body) = try call(.POST, "/v1/db-proxies/unit/targets", #"{"DBInstanceIdentifiers": ["127.0.0.1:3"]}"#)
        #expect(status == 409)
        // Roles come from health checks: :2 is a primary, :3 a standby.
        runtime.targetChecked(HostPort(host: "127.0.0.1", port: 2), .up(.writer, maxConnections: 100))
        runtime.targetChecked(HostPort(host: "127.0.0.1", port: 3), .up(.reader, maxConnections: 100))
        (status, body) = try call(.GET, "/v1/db-proxies/unit/targets")
        guard case .array(let targets)? = body["Targets"] else { Issue.record("no Targets"); return }
        #expect(targets.map { $0["RdsResourceId"] } == [.string("127.0.0.1:2"), .string("127.0.0.1:3")])
        #expect(targets.map { $0["Role"] } == [.string("READ_WRITE"), .string("READ_ONLY")])
        #expect(targets.map { $0["TargetHealth"]?["State"] } == [.string("AVAILABLE"), .string("AVAILABLE")])
        (status, _) = try call(.DELETE, "/v1/db-proxies/unit/targets", #"{"DBInstanceIdentifiers": ["127.0.0.1:2"]}"#)
        #expect(status == 200)
        // The standby is promoted: the next check finds it writable and it becomes the writer.
        runtime.targetChecked(HostPort(host: "127.0.0.1", port: 3), .up(.writer, maxConnections: 100))
        (status, body) = try call(.GET, "/v1/db-proxies/unit/targets")
        guard case .array(let left)? = body["Targets"] else { Issue.record("no Targets"); return }
        #expect(left.map { $0["Role"] } == [.string("READ_WRITE")])
        (status, _) = try call(.DELETE, "/v1/db-proxies/unit/targets", #"{"DBInstanceIdentifiers": ["127.0.0.1:2"]}"#)
        #expect(status == 404)
        (status, body) = try call(.POST, "/v1/db-proxies/unit/targets", #"{"DBInstanceIdentifiers": ["not a host:x"]}"#)
        #expect(status == 400)
        #expect(body["Error"]?["Field"] == .string("DBInstanceIdentifiers"))
    }

    @Test func bearerTokenAndRoutes() throws {
        var (status, _) = try call(.GET, "/v1/db-proxies", token: "t0k")
        #expect(status == 401)
        (status, _) = try call(.GET, "/v1/db-proxies", token: "t0k", header: "Bearer wrong")
        #expect(status == 401)
        (status, _) = try call(.GET, "/v1/db-proxies", token: "t0k", header: "Bearer t0k")
        #expect(status == 200)
        (status, _) = try call(.GET, "/healthz", token: "t0k")
        #expect(status == 200)
        (status, _) = try call(.GET, "/nope")
        #expect(status == 404)
        (status, _) = try call(.DELETE, "/v1/db-proxies")
        #expect(status == 405)
    }
}
