import Foundation
import Testing

@testable import ConciergeAWS

let exampleCredentials = AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
/// 2026-11-23 14:05:09 UTC, the time botocore's clock was frozen at to make the vectors.
let botoDate = Date(timeIntervalSince1970: 1_795_442_709)
let proxyHost = "prx-demo.proxy-abcdefghijkl.us-east-1.rds.amazonaws.com"

/// Tokens made by boto3 1.43.11 (`rds.generate_db_auth_token`) with `botocore.auth.get_current_datetime`
/// patched to return 2026-11-23 14:05:09, for `exampleCredentials` (plus a session token in one).
struct BotoVector: Sendable, CustomTestStringConvertible {
    var host: String
    var port: Int
    var user: String
    var region: String
    var sessionToken: String?
    var token: String
    var testDescription: String { "\(host):\(port) \(user)" }
}

let botoVectors: [BotoVector] = [
    BotoVector(
        host: proxyHost, port: 5432, user: "app", region: "us-east-1",
        token: "prx-demo.proxy-abcdefghijkl.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261123%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20261123T140509Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=ff1bb3b7fea83ae012df6eb09beb03ef206503869b76d46f801eba64c16ecfb4"),
    BotoVector(
        host: proxyHost, port: 5432, user: "app", region: "us-east-1", sessionToken: "IQoJb3JpZ2luX2VjEXAMPLE/+token==",
        token: "prx-demo.proxy-abcdefghijkl.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261123%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20261123T140509Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2F%2Btoken%3D%3D&X-Amz-Signature=0456291874c69a3d3e4c076e4772b4a3ab958feb4c6ac2cbe411eaed01ee92cd"),
    // Port 443 (botocore signs the host without it), an uppercase host (signed lowercased), a user
    // name that needs encoding.
    BotoVector(
        host: "MyDB.Cluster-XYZ.eu-west-1.rds.amazonaws.com", port: 443, user: "user name+ü@x/y", region: "eu-west-1",
        token: "MyDB.Cluster-XYZ.eu-west-1.rds.amazonaws.com:443/?Action=connect&DBUser=user%20name%2B%C3%BC%40x%2Fy&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261123%2Feu-west-1%2Frds-db%2Faws4_request&X-Amz-Date=20261123T140509Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=5ea3b47677fa04cc3675e7c0ffca3f1e746a4ace5f1e02bd638e33ae30c76ef4"),
    BotoVector(
        host: "db.example.com", port: 3306, user: "Admin_User-1.~", region: "ap-southeast-2",
        token: "db.example.com:3306/?Action=connect&DBUser=Admin_User-1.~&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261123%2Fap-southeast-2%2Frds-db%2Faws4_request&X-Amz-Date=20261123T140509Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=9f9dd84af4f3d1a3c8ad832b7eac61212366a8dea24cc556918e91c456bd2463"),
]

/// `AWS_ACCESS_KEY_ID=AKID AWS_SECRET_ACCESS_KEY=x aws rds generate-db-auth-token --hostname h --port 5432
/// --username u --region us-east-1` (aws-cli 1.45.11), run at 2026-11-23 04:55:21 UTC.
let awsCLIToken = "h:5432/?Action=connect&DBUser=u&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261123%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20261123T045521Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=42eb825ba1673440b195537a6b8340d6c7709741e277a58d3da66acbc7483d99"

func exampleSecret(_ id: String) -> String? {
    id == exampleCredentials.accessKeyID ? exampleCredentials.secretAccessKey : nil
}

/// Verifies `token` against the first boto3 vector's expectations, with overrides.
func verifyExample(
    _ token: String, hosts: Set<String> = [proxyHost], port: Int = 5432, user: String = "app", region: String = "us-east-1",
    now: Date = botoDate.addingTimeInterval(60), secretKey: (String) -> String? = exampleSecret
) throws(RDSAuthTokenError) -> RDSAuthIdentity {
    try RDSAuthToken.verify(
        token: token, expectedHosts: hosts, expectedPort: port, expectedUser: user, region: region, now: now, secretKey: secretKey)
}

func verifyError(_ body: () throws(RDSAuthTokenError) -> RDSAuthIdentity) -> RDSAuthTokenError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error
    }
}

/// A token signed by hand: any parameters, host header, service.
func handMadeToken(
    authority: String = "\(proxyHost):5432", query: [(name: String, value: String)] = [("Action", "connect"), ("DBUser", "app")],
    signedHost: String = "\(proxyHost):5432", credentials: AWSCredentials = exampleCredentials, region: String = "us-east-1",
    service: String = "rds-db", expires: Int = 900, date: Date = botoDate
) -> String {
    let signer = SigV4Signer(credentials: credentials, region: region, service: service)
    let parameters = signer.presign(SigV4Request(method: "GET", query: query, headers: [("host", signedHost)]), date: date, expires: expires)
    return "\(authority)/?\(SigV4Signer.queryString(parameters))"
}

/// Replaces the value of one parameter in a token's text (values given encoded).
func replacing(_ token: String, _ name: String, with value: String) -> String {
    let (base, query) = (token.components(separatedBy: "/?")[0], token.components(separatedBy: "/?")[1])
    let pairs = query.split(separator: "&").map { pair -> String in
        pair.hasPrefix("\(name)=") ? "\(name)=\(value)" : String(pair)
    }
    return base + "/?" + pairs.joined(separator: "&")
}

@Suite("RDS IAM authentication tokens")
struct RDSAuthTokenTests {
    @Test("generate reproduces boto3's tokens byte for byte, and verify accepts them", arguments: botoVectors)
    func boto3Vectors(_ v: BotoVector) throws {
        var credentials = exampleCredentials
        credentials.sessionToken = v.sessionToken
        let generated = try RDSAuthToken.generate(
            hostname: v.host, port: v.port, username: v.user, region: v.region, credentials: credentials, date: botoDate)
        #expect(generated == v.token)
        let identity = try RDSAuthToken.verify(
            token: v.token, expectedHosts: [v.host.lowercased()], expectedPort: v.port, expectedUser: v.user, region: v.region,
            now: botoDate.addingTimeInterval(600), secretKey: exampleSecret)
        #expect(identity.accessKeyID == "AKIAIOSFODNN7EXAMPLE")
        #expect(identity.user == v.user)
        #expect(identity.signedAt == botoDate)
        #expect(identity.expiresAt == botoDate.addingTimeInterval(900))
        #expect(identity.sessionToken == v.sessionToken)
        if let token = v.sessionToken { #expect(!identity.description.contains(token)) }
    }

    @Test("generate reproduces the aws CLI's token, and verify accepts it")
    func awsCLIVector() throws {
        let credentials = AWSCredentials(accessKeyID: "AKID", secretAccessKey: "x")
        let date = Date(timeIntervalSince1970: 1_795_409_721)
        #expect(try RDSAuthToken.generate(hostname: "h", port: 5432, username: "u", region: "us-east-1", credentials: credentials, date: date) == awsCLIToken)
        let identity = try RDSAuthToken.verify(
            token: awsCLIToken, expectedHosts: ["h"], expectedPort: 5432, expectedUser: "u", region: "us-east-1", now: date,
            secretKey: { $0 == "AKID" ? "x" : nil })
        #expect(identity.accessKeyID == "AKID")
    }

    @Test("parse reads every field")
    func parseFields() throws {
        let token = try RDSAuthToken.parse(botoVectors[1].token)
        #expect(token.hostname == proxyHost)
        #expect(token.port == 5432)
        #expect(token.action == "connect")
        #expect(token.user == "app")
        #expect(token.algorithm == "AWS4-HMAC-SHA256")
        #expect(token.accessKeyID == "AKIAIOSFODNN7EXAMPLE")
        #expect(token.region == "us-east-1")
        #expect(token.service == "rds-db")
        #expect(token.amzDate == "20261123T140509Z")
        #expect(token.signedAt == botoDate)
        #expect(token.expires == 900)
        #expect(token.expiresAt == botoDate.addingTimeInterval(900))
        #expect(token.signedHeaders == "host")
        #expect(token.sessionToken == "IQoJb3JpZ2luX2VjEXAMPLE/+token==")
        #expect(token.signature == "0456291874c69a3d3e4c076e4772b4a3ab958feb4c6ac2cbe411eaed01ee92cd")
        #expect(token.signedParameters.map(\.name) == [
            "Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
            "X-Amz-Security-Token",
        ])
        #expect(try RDSAuthToken.parse(botoVectors[2].token).user == "user name+ü@x/y")
    }

    @Test("tampering with any signed part fails the signature")
    func tampering() throws {
        let token = botoVectors[0].token
        let withSession = botoVectors[1].token
        let sessionSecret: (String) -> String? = exampleSecret
        // Each altered token keeps its claims acceptable, so only the signature can refuse it.
        let cases: [(String, () throws(RDSAuthTokenError) -> RDSAuthIdentity)] = [
            ("user", { () throws(RDSAuthTokenError) in try verifyExample(replacing(token, "DBUser", with: "admin"), user: "admin") }),
            ("host", { () throws(RDSAuthTokenError) in
                try verifyExample(token.replacingOccurrences(of: "prx-demo.", with: "prx-other."), hosts: [proxyHost.replacingOccurrences(of: "prx-demo.", with: "prx-other.")])
            }),
            ("port", { () throws(RDSAuthTokenError) in try verifyExample(token.replacingOccurrences(of: ":5432/", with: ":5433/"), port: 5433) }),
            ("date", { () throws(RDSAuthTokenError) in try verifyExample(replacing(token, "X-Amz-Date", with: "20261123T140510Z")) }),
            ("expires", { () throws(RDSAuthTokenError) in try verifyExample(replacing(token, "X-Amz-Expires", with: "899")) }),
            ("region", { () throws(RDSAuthTokenError) in
                try verifyExample(token.replacingOccurrences(of: "%2Fus-east-1%2F", with: "%2Fus-east-2%2F"), region: "us-east-2")
            }),
            ("access key", { () throws(RDSAuthTokenError) in
                try verifyExample(token.replacingOccurrences(of: "AKIAIOSFODNN7EXAMPLE", with: "AKIAIOSFODNN7EXAMPLF"), secretKey: { _ in exampleCredentials.secretAccessKey })
            }),
            ("secret key", { () throws(RDSAuthTokenError) in try verifyExample(token, secretKey: { _ in "another secret" }) }),
            ("signature", { () throws(RDSAuthTokenError) in
                try verifyExample(replacing(token, "X-Amz-Signature", with: "ff1bb3b7fea83ae012df6eb09beb03ef206503869b76d46f801eba64c16ecfb5"))
            }),
            ("session token changed", { () throws(RDSAuthTokenError) in
                try verifyExample(replacing(withSession, "X-Amz-Security-Token", with: "IQoJb3JpZ2luX2VjEXAMPLE%2F%2Btoken%3D"), secretKey: sessionSecret)
            }),
            ("session token removed", { () throws(RDSAuthTokenError) in
                try verifyExample(withSession.replacingOccurrences(of: "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2F%2Btoken%3D%3D", with: ""))
            }),
            ("session token added", { () throws(RDSAuthTokenError) in
                try verifyExample(token.replacingOccurrences(of: "&X-Amz-Signature", with: "&X-Amz-Security-Token=abc&X-Amz-Signature"))
            }),
            ("parameter added", { () throws(RDSAuthTokenError) in
                try verifyExample(token.replacingOccurrences(of: "&X-Amz-Signature", with: "&Extra=1&X-Amz-Signature"))
            }),
        ]
        for (name, body) in cases {
            #expect(verifyError(body) == .badSignature, "\(name)")
        }
        // The untouched tokens pass.
        #expect(throws: Never.self) { try verifyExample(token) }
        #expect(throws: Never.self) { try verifyExample(withSession) }
    }

    @Test("parameters may come in any order and escapes may differ: the signature covers the decoded values")
    func reorderedParameters() throws {
        let token = botoVectors[0].token
        let query = token.components(separatedBy: "/?")[1].split(separator: "&").map(String.init)
        let reordered = "\(proxyHost):5432/?" + query.reversed().joined(separator: "&")
        #expect(try verifyExample(reordered).user == "app")
        #expect(try verifyExample(replacing(token, "DBUser", with: "%61pp")).user == "app")
    }

    @Test("the claims: user exact, host case-insensitive, port, region, service, action")
    func claims() throws {
        let token = botoVectors[0].token
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, user: "App") } == .wrongUser(expected: "App", got: "app"))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, user: "app ") } == .wrongUser(expected: "app ", got: "app"))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, hosts: ["other.example.com"]) } == .wrongHost(proxyHost))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, hosts: []) } == .wrongHost(proxyHost))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, port: 6432) } == .wrongPort(expected: 6432, got: 5432))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, region: "eu-west-1") } == .wrongRegion(expected: "eu-west-1", got: "us-east-1"))
        // Host names compare case-insensitively, on both sides; several names may be expected.
        #expect(try verifyExample(token, hosts: [proxyHost.uppercased(), "other"]).accessKeyID == "AKIAIOSFODNN7EXAMPLE")
        let upper = try RDSAuthToken.generate(
            hostname: proxyHost.uppercased(), port: 5432, username: "app", region: "us-east-1", credentials: exampleCredentials, date: botoDate)
        #expect(upper.hasPrefix(proxyHost.uppercased() + ":5432/?"))
        #expect(try verifyExample(upper).user == "app")

        let rdsService = handMadeToken(service: "rds")
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(rdsService) } == .wrongService("rds"))
        let login = handMadeToken(query: [("Action", "login"), ("DBUser", "app")])
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(login) } == .wrongAction("login"))
        let unknown = handMadeToken(credentials: AWSCredentials(accessKeyID: "AKIAUNKNOWN", secretAccessKey: "s"))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(unknown) } == .unknownAccessKey("AKIAUNKNOWN"))
        let tooLong = handMadeToken(expires: 901)
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(tooLong) } == .expiresTooLong(901))
        #expect(throws: Never.self) { try verifyExample(handMadeToken(expires: 60)) }
        let algorithm = replacing(token, "X-Amz-Algorithm", with: "AWS4-HMAC-SHA512")
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(algorithm) } == .unsupportedAlgorithm("AWS4-HMAC-SHA512"))
        let headers = replacing(token, "X-Amz-SignedHeaders", with: "host%3Bx-amz-date")
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(headers) } == .unsupportedSignedHeaders("host;x-amz-date"))
    }

    @Test("other SDKs' host headers: as written, and with :443")
    func hostHeaderVariants() throws {
        // Signed with the host as written (not lowercased).
        let mixed = "PRX.Example.com"
        let asWritten = handMadeToken(authority: "\(mixed):5432", signedHost: "\(mixed):5432")
        #expect(try verifyExample(asWritten, hosts: ["prx.example.com"]).user == "app")
        // Port 443 signed with the port.
        let with443 = handMadeToken(authority: "prx.example.com:443", signedHost: "prx.example.com:443")
        #expect(try verifyExample(with443, hosts: ["prx.example.com"], port: 443).user == "app")
        let without443 = handMadeToken(authority: "prx.example.com:443", signedHost: "prx.example.com")
        #expect(try verifyExample(without443, hosts: ["prx.example.com"], port: 443).user == "app")
        // But not another host or port in the signature.
        let otherPort = handMadeToken(authority: "prx.example.com:5432", signedHost: "prx.example.com:5433")
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(otherPort, hosts: ["prx.example.com"]) } == .badSignature)
        let noPort = handMadeToken(authority: "prx.example.com:5432", signedHost: "prx.example.com")
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(noPort, hosts: ["prx.example.com"]) } == .badSignature)
    }

    @Test("the validity period: signedAt - skew ... signedAt + expires + skew")
    func validity() throws {
        let token = botoVectors[0].token
        let expiresAt = botoDate.addingTimeInterval(900)
        #expect(throws: Never.self) { try verifyExample(token, now: botoDate) }
        #expect(throws: Never.self) { try verifyExample(token, now: expiresAt) }
        #expect(throws: Never.self) { try verifyExample(token, now: expiresAt.addingTimeInterval(300)) }
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, now: expiresAt.addingTimeInterval(301)) } == .expired(expiredAt: expiresAt))
        #expect(throws: Never.self) { try verifyExample(token, now: botoDate.addingTimeInterval(-300)) }
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, now: botoDate.addingTimeInterval(-301)) } == .notYetValid(signedAt: botoDate))
        // A different skew.
        let strict = verifyError { () throws(RDSAuthTokenError) in
            try RDSAuthToken.verify(
                token: token, expectedHosts: [proxyHost], expectedPort: 5432, expectedUser: "app", region: "us-east-1",
                now: expiresAt.addingTimeInterval(1), allowedSkew: 0, secretKey: exampleSecret)
        }
        #expect(strict == .expired(expiredAt: expiresAt))
        // An expired forgery is reported as a bad signature, not as expired.
        let forged = replacing(token, "X-Amz-Signature", with: String(repeating: "0", count: 64))
        #expect(verifyError { () throws(RDSAuthTokenError) in try verifyExample(forged, now: expiresAt.addingTimeInterval(3600)) } == .badSignature)
    }

    static let malformedTokens: [String] = {
        let good = botoVectors[0].token
        let query = good.components(separatedBy: "/?")[1]
        var tokens = [
            "", "password", "\(proxyHost)", "\(proxyHost):5432", "\(proxyHost):5432/", "\(proxyHost):5432/x?\(query)",
            "\(proxyHost):5432/?", "https://\(proxyHost):5432/?\(query)", "\(proxyHost)/?\(query)", ":5432/?\(query)",
            "\(proxyHost):/?\(query)", "\(proxyHost):abc/?\(query)", "\(proxyHost):0/?\(query)", "\(proxyHost):65536/?\(query)",
            "\(proxyHost):+5432/?\(query)", "user@\(proxyHost):5432/?\(query)", "[::1/?\(query)", "[::1]5432/?\(query)",
            "\(proxyHost):5432/?\(query)&", "\(proxyHost):5432/?&\(query)", "\(proxyHost):5432/?\(query)&Action=connect",
            "\(proxyHost):5432/?\(query)&novalue", "\(proxyHost):5432/?\(query)&=x",
            replacing(good, "DBUser", with: "a%2"), replacing(good, "DBUser", with: "%FF"), replacing(good, "DBUser", with: ""),
            replacing(good, "X-Amz-Signature", with: "FF1BB3B7FEA83AE012DF6EB09BEB03EF206503869B76D46F801EBA64C16ECFB4"),
            replacing(good, "X-Amz-Signature", with: "ff1bb3b7"),
            replacing(good, "X-Amz-Signature", with: "zz1bb3b7fea83ae012df6eb09beb03ef206503869b76d46f801eba64c16ecfb4"),
            replacing(good, "X-Amz-Credential", with: "AKIAIOSFODNN7EXAMPLE%2F20261123%2Fus-east-1%2Frds-db"),
            replacing(good, "X-Amz-Credential", with: "AKIAIOSFODNN7EXAMPLE%2F20261123%2Fus-east-1%2Frds-db%2Faws4_requests"),
            replacing(good, "X-Amz-Credential", with: "%2F20261123%2Fus-east-1%2Frds-db%2Faws4_request"),
            replacing(good, "X-Amz-Credential", with: "AKIAIOSFODNN7EXAMPLE%2F20261124%2Fus-east-1%2Frds-db%2Faws4_request"),
            replacing(good, "X-Amz-Credential", with: "AKIAIOSFODNN7EXAMPLE%2F20261123%2F%2Frds-db%2Faws4_request"),
            replacing(good, "X-Amz-Date", with: "20261123T140509"), replacing(good, "X-Amz-Date", with: "20261123T250509Z"),
            replacing(good, "X-Amz-Expires", with: "abc"), replacing(good, "X-Amz-Expires", with: "0"),
            replacing(good, "X-Amz-Expires", with: "-5"), replacing(good, "X-Amz-Expires", with: "99999999999999999999"),
            good + "&Padding=" + String(repeating: "x", count: 16384),
        ]
        for name in ["Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"] {
            let pairs = query.split(separator: "&").filter { !$0.hasPrefix("\(name)=") }
            tokens.append("\(proxyHost):5432/?" + pairs.joined(separator: "&"))
        }
        return tokens
    }()

    @Test("malformed tokens are refused by parse and by verify", arguments: malformedTokens)
    func malformed(_ token: String) {
        var parseError: RDSAuthTokenError?
        do { _ = try RDSAuthToken.parse(token) } catch { parseError = error }
        guard case .malformed = parseError else {
            Issue.record("parse: \(String(describing: parseError)) for \(token)")
            return
        }
        guard case .malformed = verifyError({ () throws(RDSAuthTokenError) in try verifyExample(token) }) else {
            Issue.record("verify did not refuse \(token) as malformed")
            return
        }
    }

    @Test("IPv6 addresses are written in brackets")
    func ipv6() throws {
        let token = try RDSAuthToken.generate(hostname: "fd00::5", port: 5432, username: "app", region: "us-east-1", credentials: exampleCredentials, date: botoDate)
        #expect(token.hasPrefix("[fd00::5]:5432/?Action=connect&DBUser=app&"))
        #expect(try RDSAuthToken.parse(token).hostname == "[fd00::5]")
        #expect(try verifyExample(token, hosts: ["fd00::5"]).user == "app")
        #expect(try verifyExample(token, hosts: ["[fd00::5]"]).user == "app")
    }

    @Test("generate refuses unusable arguments")
    func generateArguments() {
        func generateError(host: String = "h", port: Int = 5432, user: String = "u", region: String = "us-east-1",
                           credentials: AWSCredentials = exampleCredentials, expiresIn: Int = 900) -> RDSAuthTokenError? {
            do {
                _ = try RDSAuthToken.generate(hostname: host, port: port, username: user, region: region, credentials: credentials, expiresIn: expiresIn)
                return nil
            } catch {
                return error
            }
        }
        for error in [
            generateError(host: ""), generateError(host: "a/b"), generateError(host: "a b"), generateError(host: "u@h"),
            generateError(port: 0), generateError(port: 65536), generateError(user: ""), generateError(region: ""),
            generateError(expiresIn: 0), generateError(expiresIn: 901),
            generateError(credentials: AWSCredentials(accessKeyID: "", secretAccessKey: "s")),
            generateError(credentials: AWSCredentials(accessKeyID: "A", secretAccessKey: "")),
        ] {
            guard case .invalidArgument = error else {
                Issue.record("expected invalidArgument, got \(String(describing: error))")
                continue
            }
        }
        #expect(generateError(expiresIn: 1) == nil)
    }

    @Test("error descriptions carry no signature, secret or session token")
    func noSecretsInErrors() {
        let signature = "0456291874c69a3d3e4c076e4772b4a3ab958feb4c6ac2cbe411eaed01ee92cd"
        let sessionToken = "IQoJb3JpZ2luX2VjEXAMPLE"
        let token = botoVectors[1].token
        var errors: [RDSAuthTokenError?] = [
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, secretKey: { _ in "wrong" }) },
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, now: botoDate.addingTimeInterval(99999)) },
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(token, user: "x") },
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(token + "&X-Amz-Signature=\(signature)") },
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(replacing(token, "X-Amz-Signature", with: signature.uppercased())) },
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(replacing(token, "X-Amz-Expires", with: sessionToken)) },
            verifyError { () throws(RDSAuthTokenError) in try verifyExample(replacing(token, "X-Amz-Date", with: sessionToken)) },
        ]
        errors += Self.malformedTokens.map { t in verifyError { () throws(RDSAuthTokenError) in try verifyExample(t) } }
        for case let error? in errors {
            let text = error.description.lowercased()
            #expect(!text.contains(signature.prefix(16)), "\(text)")
            #expect(!text.contains("ff1bb3b7"), "\(text)")
            #expect(!text.contains(sessionToken.lowercased()), "\(text)")
            #expect(!text.contains(exampleCredentials.secretAccessKey.lowercased()), "\(text)")
        }
    }
}

@Test("client-supplied values in error descriptions are escaped and shortened")
func printableErrorValues() {
    #expect(RDSAuthTokenError.wrongUser(expected: "app", got: "a\nb\\c\u{2028}ü").description
        == "the token is for database user 'a\\u{a}b\\\\c\\u{2028}ü', not 'app'")
    let long = String(repeating: "x", count: 500)
    #expect(RDSAuthTokenError.wrongHost(long).description.count < 200)
}

@Test("a parsed token and a signed request print no signature or session token")
func redactedDescriptions() throws {
    let token = try RDSAuthToken.parse(botoVectors[1].token)
    for text in [token.description, String(describing: token), String(reflecting: token), "\(token)"] {
        #expect(text.contains("user: app"))
        #expect(!text.contains("0456291874c69a3d"))
        #expect(!text.contains("IQoJb3JpZ2luX2VjEXAMPLE"))
    }
    var credentials = exampleCredentials
    credentials.sessionToken = "SESSION-TOKEN"
    let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "secretsmanager")
    let signed = signer.sign(SigV4Request(method: "POST", headers: [("Host", "h")], body: Array("secret body".utf8)), date: botoDate)
    let presigned = SigV4Request(method: "GET", query: signer.presign(SigV4Request(method: "GET", headers: [("host", "h")]), date: botoDate, expires: 60))
    for request in [signed, presigned] {
        for text in [request.description, String(describing: request), String(reflecting: request)] {
            #expect(!text.contains("SESSION-TOKEN"))
            #expect(!text.contains("secret body"))
            #expect(!text.contains("Signature="))
            #expect(!text.contains(exampleCredentials.accessKeyID + "/"))
        }
    }
}
