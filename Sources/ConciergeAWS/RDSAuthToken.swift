import Crypto
import Foundation

/// Why an RDS IAM authentication token was refused (or could not be generated).
///
/// Descriptions name the problem and public values only (host, user, access key id, dates),
/// never the signature, the session token or a secret key.
public enum RDSAuthTokenError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Not `HOST:PORT/?QUERY` with the parameters of a presigned `connect` URL.
    case malformed(String)
    /// `Action` is not `connect`.
    case wrongAction(String)
    /// `DBUser` is not the user the client logs in as (compared exactly, case-sensitively).
    case wrongUser(expected: String, got: String)
    /// The token's host is not one of the expected names (compared case-insensitively).
    case wrongHost(String)
    /// The token's port is not the expected one.
    case wrongPort(expected: Int, got: Int)
    /// The credential scope's region is not the expected region.
    case wrongRegion(expected: String, got: String)
    /// The credential scope's service is not `rds-db`.
    case wrongService(String)
    /// `X-Amz-Algorithm` is not `AWS4-HMAC-SHA256`.
    case unsupportedAlgorithm(String)
    /// `X-Amz-SignedHeaders` is not `host`.
    case unsupportedSignedHeaders(String)
    /// No secret is known for the access key id.
    case unknownAccessKey(String)
    /// The signature does not match the token's contents.
    case badSignature
    /// The token's validity ended at `expiredAt` (before the allowed clock skew).
    case expired(expiredAt: Date)
    /// The token was signed at `signedAt`, later than now plus the allowed clock skew.
    case notYetValid(signedAt: Date)
    /// `X-Amz-Expires` is more than 900 seconds (the limit of RDS IAM tokens).
    case expiresTooLong(Int)
    /// An argument of `generate` is not usable (e.g. an empty host name or a port out of range).
    case invalidArgument(String)

    public var description: String {
        // Values from the token are shown escaped and shortened: they come from the client.
        let p = Self.printable
        switch self {
        case .malformed(let reason): return "malformed IAM authentication token: \(reason)"
        case .wrongAction(let action): return "the token's Action is '\(p(action))', not 'connect'"
        case .wrongUser(let expected, let got): return "the token is for database user '\(p(got))', not '\(p(expected))'"
        case .wrongHost(let host): return "the token is for host '\(p(host))', not this endpoint"
        case .wrongPort(let expected, let got): return "the token is for port \(got), not \(expected)"
        case .wrongRegion(let expected, let got): return "the token is signed for region '\(p(got))', not '\(p(expected))'"
        case .wrongService(let service): return "the token is signed for service '\(p(service))', not 'rds-db'"
        case .unsupportedAlgorithm(let algorithm): return "the token's X-Amz-Algorithm is '\(p(algorithm))', not 'AWS4-HMAC-SHA256'"
        case .unsupportedSignedHeaders(let headers): return "the token signs the headers '\(p(headers))', expected only 'host'"
        case .unknownAccessKey(let id): return "unknown access key id '\(p(id))'"
        case .badSignature: return "the token's signature does not match"
        case .expired(let at): return "the token expired at \(AWSTimestamp.format(at))"
        case .notYetValid(let at): return "the token is signed at \(AWSTimestamp.format(at)), in the future"
        case .expiresTooLong(let seconds): return "the token's X-Amz-Expires is \(seconds) s, more than 900 s"
        case .invalidArgument(let reason): return "cannot generate an IAM authentication token: \(reason)"
        }
    }

    /// At most 128 characters, with control characters, line separators and `\` escaped.
    static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(128) {
            let v = scalar.value
            if v >= 0x20, !(0x7F...0x9F).contains(v), v != 0x2028, v != 0x2029, scalar != "\\" {
                out.unicodeScalars.append(scalar)
            } else {
                out += scalar == "\\" ? "\\\\" : "\\u{\(String(scalar.value, radix: 16))}"
            }
        }
        return text.unicodeScalars.count > 128 ? out + "..." : out
    }
}

/// What `RDSAuthToken.verify` vouches for.
public struct RDSAuthIdentity: Sendable, Equatable, CustomStringConvertible {
    /// The access key id that signed the token.
    public var accessKeyID: String
    /// The database user (`DBUser`).
    public var user: String
    /// When the token was signed (`X-Amz-Date`).
    public var signedAt: Date
    /// `signedAt` plus `X-Amz-Expires`.
    public var expiresAt: Date
    /// The signed `X-Amz-Security-Token` of temporary credentials, else nil. Not in `description`.
    public var sessionToken: String?

    public var description: String {
        "RDSAuthIdentity(accessKeyID: \(accessKeyID), user: \(user), signedAt: \(AWSTimestamp.format(signedAt)), expiresAt: \(AWSTimestamp.format(expiresAt))\(sessionToken == nil ? "" : ", sessionToken: <redacted>"))"
    }
}

/// An RDS IAM database authentication token: the presigned URL, without its `https://`, of
/// `GET https://HOST:PORT/?Action=connect&DBUser=USER` signed with SigV4 for the `rds-db`
/// service (what `aws rds generate-db-auth-token` prints and clients send as their password).
///
/// `generate` makes one byte for byte as botocore does; `parse` reads one; `verify` checks
/// one as RDS Proxy would (signature, host, port, user, region, validity period).
public struct RDSAuthToken: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public static let service = "rds-db"
    /// The longest validity RDS accepts, and what the AWS tools use: 15 minutes.
    public static let maximumExpires = 900
    /// The longest token `parse` reads (a token with a session token is 1 to 3 KB).
    public static let maximumTokenLength = 16384

    /// The host name as written in the token (case kept).
    public var hostname: String
    public var port: Int
    /// `Action` (`connect` in a valid token).
    public var action: String
    /// `DBUser`, decoded.
    public var user: String
    /// `X-Amz-Algorithm`.
    public var algorithm: String
    /// From `X-Amz-Credential`: `ACCESS_KEY_ID/DATE/REGION/SERVICE/aws4_request`.
    public var accessKeyID: String
    public var region: String
    public var service: String
    /// `X-Amz-Date`, as text and as a date.
    public var amzDate: String
    public var signedAt: Date
    /// `X-Amz-Expires`, in seconds.
    public var expires: Int
    /// `X-Amz-SignedHeaders`.
    public var signedHeaders: String
    /// `X-Amz-Security-Token`, if any.
    public var sessionToken: String?
    /// `X-Amz-Signature` (64 lowercase hex digits).
    public var signature: String
    /// Every query parameter except `X-Amz-Signature`, decoded, as they came.
    public var signedParameters: [(name: String, value: String)]

    public static func == (a: RDSAuthToken, b: RDSAuthToken) -> Bool {
        a.hostname == b.hostname && a.port == b.port && a.action == b.action && a.user == b.user
            && a.algorithm == b.algorithm && a.accessKeyID == b.accessKeyID && a.region == b.region
            && a.service == b.service && a.amzDate == b.amzDate && a.expires == b.expires
            && a.signedHeaders == b.signedHeaders && a.sessionToken == b.sessionToken && a.signature == b.signature
            && a.signedParameters.elementsEqual(b.signedParameters, by: { $0 == $1 })
    }

    /// The token's claims; the signature and the session token are left out.
    public var description: String {
        "RDSAuthToken(\(RDSAuthTokenError.printable(hostname)):\(port), user: \(RDSAuthTokenError.printable(user)), accessKeyID: \(RDSAuthTokenError.printable(accessKeyID)), region: \(RDSAuthTokenError.printable(region)), service: \(RDSAuthTokenError.printable(service)), signedAt: \(amzDate), expires: \(expires)\(sessionToken == nil ? "" : ", sessionToken: <redacted>"), signature: <redacted>)"
    }

    public var debugDescription: String { description }

    /// When the validity ends (`signedAt` + `expires`).
    public var expiresAt: Date { signedAt.addingTimeInterval(TimeInterval(expires)) }

    // MARK: Generating

    /// A token as `aws rds generate-db-auth-token --hostname H --port P --username U --region R`
    /// (botocore's `generate_db_auth_token`) prints it, for the moment `date`:
    /// `H:P/?Action=connect&DBUser=U&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=...&X-Amz-Date=...&X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]&X-Amz-Signature=...`.
    ///
    /// The signed `host` header is the host name lowercased with `:PORT` (without the port when
    /// it is 443), as botocore signs it. Throws `.invalidArgument` for an empty or unusable host
    /// name, a port outside 1...65535, an empty user or region, or `expiresIn` outside 1...900.
    public static func generate(
        hostname: String, port: Int, username: String, region: String, credentials: AWSCredentials,
        date: Date = Date(), expiresIn: Int = 900
    ) throws(RDSAuthTokenError) -> String {
        guard !hostname.isEmpty, !hostname.contains(where: { "/?#@ \t\r\n".contains($0) }) else {
            throw .invalidArgument("the host name '\(hostname)' is empty or contains '/', '?', '#', '@' or white space")
        }
        guard (1...65535).contains(port) else { throw .invalidArgument("the port \(port) is not in 1...65535") }
        guard !username.isEmpty else { throw .invalidArgument("the user name is empty") }
        guard !region.isEmpty, !region.contains("/") else { throw .invalidArgument("the region '\(region)' is empty or contains '/'") }
        guard (1...maximumExpires).contains(expiresIn) else {
            throw .invalidArgument("expiresIn \(expiresIn) is not in 1...\(maximumExpires) seconds")
        }
        guard !credentials.accessKeyID.isEmpty, !credentials.accessKeyID.contains("/"),
              !credentials.secretAccessKey.isEmpty
        else { throw .invalidArgument("the access key id is empty or contains '/', or the secret access key is empty") }
        // An IPv6 address is written in brackets, as in a URL.
        let host = hostname.contains(":") && !hostname.hasPrefix("[") ? "[\(hostname)]" : hostname
        let signer = SigV4Signer(credentials: credentials, region: region, service: service)
        let request = SigV4Request(
            method: "GET", path: "/", query: [("Action", "connect"), ("DBUser", username)],
            headers: [("host", signedHost(host, port: port))])
        let parameters = signer.presign(request, date: date, expires: expiresIn)
        return "\(host):\(port)/?\(SigV4Signer.queryString(parameters))"
    }

    /// The `host` header botocore signs: lowercased, with the port unless it is 443.
    static func signedHost(_ host: String, port: Int) -> String {
        port == 443 ? host.lowercased() : "\(host.lowercased()):\(port)"
    }

    // MARK: Parsing

    /// Reads `HOST:PORT/?QUERY`. Checks the form only (every required parameter present
    /// once, credential scope, dates, numbers, a 64-hex-digit signature), not the signature or
    /// the claims: see `verify`.
    public static func parse(_ token: String) throws(RDSAuthTokenError) -> RDSAuthToken {
        guard token.utf8.count <= maximumTokenLength else { throw .malformed("longer than \(maximumTokenLength) bytes") }
        guard let slash = token.firstIndex(of: "/") else { throw .malformed("no '/?' after HOST:PORT") }
        let authority = token[..<slash]
        let rest = token[slash...]
        guard rest.hasPrefix("/?") else { throw .malformed("the path is not '/' followed by a query string") }
        let queryText = rest.dropFirst(2)

        // HOST:PORT, with an IPv6 address in brackets.
        let hostname: String
        let portText: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]"), authority[authority.index(after: close)...].hasPrefix(":") else {
                throw .malformed("a bracketed host is not followed by ':PORT'")
            }
            hostname = String(authority[...close])
            portText = authority[authority.index(close, offsetBy: 2)...]
        } else {
            guard let colon = authority.lastIndex(of: ":") else { throw .malformed("no ':PORT' after the host name") }
            hostname = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        }
        guard !hostname.isEmpty, !hostname.contains(where: { "@?# ".contains($0) }) else {
            throw .malformed("the host name is empty or contains '@', '?', '#' or a space")
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portText), (1...65535).contains(port)
        else { throw .malformed("the port is not a number in 1...65535") }

        // The query: every parameter once, decoded.
        var parameters: [(name: String, value: String)] = []
        var seen: Set<String> = []
        var signature: String?
        for pair in queryText.split(separator: "&", omittingEmptySubsequences: false) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let name = AWSURIEncoding.decode(String(parts[0])), !name.isEmpty,
                  let value = AWSURIEncoding.decode(String(parts[1]))
            else { throw .malformed("a query parameter is not NAME=VALUE with valid %-escapes") }
            guard seen.insert(name).inserted else { throw .malformed("the parameter \(name) appears more than once") }
            if name == "X-Amz-Signature" {
                signature = value
            } else {
                parameters.append((name, value))
            }
        }
        func required(_ name: String) throws(RDSAuthTokenError) -> String {
            guard let value = parameters.first(where: { $0.name == name })?.value else {
                throw .malformed("no \(name) parameter")
            }
            return value
        }
        let action = try required("Action")
        let user = try required("DBUser")
        let algorithm = try required("X-Amz-Algorithm")
        let credential = try required("X-Amz-Credential")
        let amzDate = try required("X-Amz-Date")
        let expiresText = try required("X-Amz-Expires")
        let signedHeaders = try required("X-Amz-SignedHeaders")
        let sessionToken = parameters.first(where: { $0.name == "X-Amz-Security-Token" })?.value
        guard let signature else { throw .malformed("no X-Amz-Signature parameter") }
        guard signature.utf8.count == 64, signature.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
            throw .malformed("X-Amz-Signature is not 64 lowercase hexadecimal digits")
        }
        guard !user.isEmpty else { throw .malformed("DBUser is empty") }

        // ACCESS_KEY_ID/DATE/REGION/SERVICE/aws4_request
        let scope = credential.split(separator: "/", omittingEmptySubsequences: false)
        guard scope.count == 5, !scope[0].isEmpty, !scope[2].isEmpty, !scope[3].isEmpty, scope[4] == "aws4_request" else {
            throw .malformed("X-Amz-Credential is not ACCESS_KEY_ID/DATE/REGION/SERVICE/aws4_request")
        }
        guard let signedAt = AWSTimestamp.parse(amzDate) else {
            throw .malformed("X-Amz-Date is not yyyyMMddTHHmmssZ")
        }
        guard scope[1] == amzDate.prefix(8) else {
            throw .malformed("the date of X-Amz-Credential is not the date of X-Amz-Date")
        }
        guard !expiresText.isEmpty, expiresText.count <= 7, expiresText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let expires = Int(expiresText), expires >= 1
        else { throw .malformed("X-Amz-Expires is not a positive number of seconds") }

        return RDSAuthToken(
            hostname: hostname, port: port, action: action, user: user, algorithm: algorithm,
            accessKeyID: String(scope[0]), region: String(scope[2]), service: String(scope[3]), amzDate: amzDate,
            signedAt: signedAt, expires: expires, signedHeaders: signedHeaders, sessionToken: sessionToken,
            signature: signature, signedParameters: parameters)
    }

    // MARK: Verifying

    /// Verifies a token a client sent as its password, and returns who signed it.
    ///
    /// Checks, in this order (the first failure is thrown): the form (`parse`); the algorithm;
    /// `Action=connect`; the service `rds-db`; the region; the host (case-insensitively, one of
    /// `expectedHosts`); the port; the user (exactly); `X-Amz-Expires` ≤ 900; the access key
    /// (`secretKey` returns its secret, nil when unknown); the signature (compared in constant
    /// time); last the validity period, `signedAt - allowedSkew ... signedAt + expires +
    /// allowedSkew` around `now`. So `expired` and `notYetValid` are only reported for
    /// authentic tokens, pointing at a clock problem rather than a forgery.
    ///
    /// The signed `host` is taken as botocore signs it (lowercased, `:PORT` unless 443); as
    /// written in the token and, for port 443, with `:443` are accepted too, for other SDKs.
    public static func verify(
        token: String, expectedHosts: Set<String>, expectedPort: Int, expectedUser: String, region: String,
        now: Date = Date(), allowedSkew: TimeInterval = 300, secretKey: (String) -> String?
    ) throws(RDSAuthTokenError) -> RDSAuthIdentity {
        let parsed = try parse(token)
        guard parsed.algorithm == SigV4Signer.algorithm else { throw .unsupportedAlgorithm(parsed.algorithm) }
        guard parsed.action == "connect" else { throw .wrongAction(parsed.action) }
        guard parsed.service == service else { throw .wrongService(parsed.service) }
        guard parsed.region == region else { throw .wrongRegion(expected: region, got: parsed.region) }
        let hosts = Set(expectedHosts.map { $0.lowercased() })
        let unbracketed = parsed.hostname.hasPrefix("[") ? String(parsed.hostname.dropFirst().dropLast()) : parsed.hostname
        guard hosts.contains(parsed.hostname.lowercased()) || hosts.contains(unbracketed.lowercased()) else {
            throw .wrongHost(parsed.hostname)
        }
        guard parsed.port == expectedPort else { throw .wrongPort(expected: expectedPort, got: parsed.port) }
        guard parsed.user == expectedUser else { throw .wrongUser(expected: expectedUser, got: parsed.user) }
        guard parsed.signedHeaders == "host" else { throw .unsupportedSignedHeaders(parsed.signedHeaders) }
        guard parsed.expires <= maximumExpires else { throw .expiresTooLong(parsed.expires) }
        guard let secret = secretKey(parsed.accessKeyID) else { throw .unknownAccessKey(parsed.accessKeyID) }

        let signer = SigV4Signer(
            credentials: AWSCredentials(accessKeyID: parsed.accessKeyID, secretAccessKey: secret),
            region: parsed.region, service: parsed.service)
        let key = SigV4Signer.signingKey(
            secretAccessKey: secret, dateStamp: String(parsed.amzDate.prefix(8)), region: parsed.region,
            service: parsed.service)
        var candidates = [signedHost(parsed.hostname, port: parsed.port), "\(parsed.hostname):\(parsed.port)"]
        if parsed.port == 443 {
            candidates += ["\(parsed.hostname.lowercased()):443", parsed.hostname]
        }
        var seen: Set<String> = []
        var matched = false
        for host in candidates where seen.insert(host).inserted {
            let request = SigV4Request(method: "GET", path: "/", query: parsed.signedParameters, headers: [("host", host)])
            let expected = SigV4Signer.signature(
                signingKey: key,
                stringToSign: signer.stringToSign(canonicalRequest: signer.canonicalRequest(request), amzDate: parsed.amzDate))
            // Every candidate is computed and compared: the time taken does not depend on which matched.
            matched = constantTimeEquals(expected, parsed.signature) || matched
        }
        guard matched else { throw .badSignature }

        if now < parsed.signedAt.addingTimeInterval(-allowedSkew) { throw .notYetValid(signedAt: parsed.signedAt) }
        if now > parsed.expiresAt.addingTimeInterval(allowedSkew) { throw .expired(expiredAt: parsed.expiresAt) }
        return RDSAuthIdentity(
            accessKeyID: parsed.accessKeyID, user: parsed.user, signedAt: parsed.signedAt, expiresAt: parsed.expiresAt,
            sessionToken: parsed.sessionToken)
    }
}
