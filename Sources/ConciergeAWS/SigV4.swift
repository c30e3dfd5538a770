import Crypto
import Foundation

/// An AWS access key: the key id, its secret, and the session token of temporary credentials.
///
/// `description` shows only the access key id; the secret and the token are never printed.
public struct AWSCredentials: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// The session token of temporary (STS) credentials, else nil.
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// The credentials of `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the optional
    /// `AWS_SESSION_TOKEN` (empty values count as absent); nil unless both the key id and the
    /// secret are set.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> AWSCredentials? {
        func value(_ name: String) -> String? {
            guard let v = environment[name], !v.isEmpty else { return nil }
            return v
        }
        guard let id = value("AWS_ACCESS_KEY_ID"), let secret = value("AWS_SECRET_ACCESS_KEY") else { return nil }
        return AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN"))
    }

    public var description: String {
        "AWSCredentials(accessKeyID: \(accessKeyID), secretAccessKey: <redacted>\(sessionToken == nil ? "" : ", sessionToken: <redacted>"))"
    }

    public var debugDescription: String { description }
}

/// An HTTP request as SigV4 sees it.
public struct SigV4Request: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// `GET`, `POST`, ... (uppercased when signing).
    public var method: String
    /// The path as it is sent on the wire, already percent-encoded (e.g. `/` or `/a%20b`).
    public var path: String
    /// The query parameters, not encoded, in the order they are to be sent.
    public var query: [(name: String, value: String)]
    /// The headers, with their original names; all of them are signed (except `User-Agent`,
    /// `Expect`, `X-Amzn-Trace-Id` and `Authorization`, as botocore does). Include `Host`.
    public var headers: [(name: String, value: String)]
    /// The body (its SHA-256 is the payload hash unless `payloadHash` is set).
    public var body: [UInt8]
    /// Overrides the payload hash, e.g. `UNSIGNED-PAYLOAD` for S3.
    public var payloadHash: String?

    public init(
        method: String, path: String = "/", query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)] = [], body: [UInt8] = [], payloadHash: String? = nil
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.payloadHash = payloadHash
    }

    /// Method, path, parameter and header names; values of `Authorization`,
    /// `X-Amz-Security-Token`, `X-Amz-Signature` and `X-Amz-Credential` redacted, body left out.
    public var description: String {
        let hidden: Set<String> = ["authorization", "x-amz-security-token", "x-amz-signature", "x-amz-credential"]
        func show(_ pair: (name: String, value: String)) -> String {
            "\(pair.name): \(hidden.contains(pair.name.lowercased()) ? "<redacted>" : pair.value)"
        }
        return "SigV4Request(\(method) \(path), query: [\(query.map(show).joined(separator: ", "))], headers: [\(headers.map(show).joined(separator: ", "))], body: \(body.count) bytes)"
    }

    public var debugDescription: String { description }

    /// The value of the first header named `name` (case-insensitive).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name.lowercased() == lower }?.value
    }
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for one credential, region and service.
///
/// Two ways to sign: `sign(_:date:)` adds `X-Amz-Date`, `X-Amz-Security-Token` (with a session
/// token), optionally `X-Amz-Content-SHA256`, and `Authorization` to the request's headers;
/// `presign(_:date:expires:)` returns the query parameters of a presigned URL
/// (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
/// `X-Amz-SignedHeaders`, `X-Amz-Security-Token`, `X-Amz-Signature`) in botocore's order.
/// The pieces (canonical request, string to sign, signing key) are public for verification.
public struct SigV4Signer: Sendable {
    public static let algorithm = "AWS4-HMAC-SHA256"
    /// SHA-256 of the empty string.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    /// Headers never signed (botocore's list), and the Authorization header itself.
    static let unsignedHeaders: Set<String> = ["user-agent", "expect", "x-amzn-trace-id", "authorization"]

    public var credentials: AWSCredentials
    public var region: String
    public var service: String
    /// True for every service but S3: the path is normalized (`.`/`..` segments and repeated
    /// slashes removed) and URI-encoded once more (so `%20` is signed as `%2520`). False for S3,
    /// which signs the path as sent.
    public var normalizesPath: Bool

    public init(credentials: AWSCredentials, region: String, service: String) {
        self.credentials = credentials
        self.region = region
        self.service = service
        self.normalizesPath = service != "s3"
    }

    // MARK: Signing

    /// Adds `X-Amz-Date`, `X-Amz-Security-Token` (when the credentials have a session token),
    /// `X-Amz-Content-SHA256` (when `contentSHA256Header`) and `Authorization`; the first
    /// three are signed. Existing headers of these names are replaced.
    public func sign(_ request: SigV4Request, date: Date, contentSHA256Header: Bool = false) -> SigV4Request {
        var signed = request
        let amzDate = AWSTimestamp.format(date)
        let replaced: Set<String> = ["x-amz-date", "authorization", "x-amz-security-token", "x-amz-content-sha256"]
        signed.headers.removeAll { replaced.contains($0.name.lowercased()) }
        signed.headers.append((name: "X-Amz-Date", value: amzDate))
        if let token = credentials.sessionToken {
            signed.headers.append((name: "X-Amz-Security-Token", value: token))
        }
        if contentSHA256Header {
            signed.headers.append((name: "X-Amz-Content-SHA256", value: payloadHash(of: request)))
        }
        let (canonical, signedHeaders) = canonicalRequestAndSignedHeaders(signed)
        let signature = signature(canonicalRequest: canonical, amzDate: amzDate)
        let authorization = "\(Self.algorithm) Credential=\(credentials.accessKeyID)/\(credentialScope(dateStamp: String(amzDate.prefix(8)))), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        signed.headers.append((name: "Authorization", value: authorization))
        return signed
    }

    /// The query parameters of a presigned URL: the request's own parameters, then
    /// `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
    /// `X-Amz-SignedHeaders`, `X-Amz-Security-Token` (with a session token) and last
    /// `X-Amz-Signature` (botocore's order). The signed headers are the request's headers
    /// (normally only `Host`). `expires` is in seconds. Encode with `SigV4Signer.queryString`.
    public func presign(_ request: SigV4Request, date: Date, expires: Int) -> [(name: String, value: String)] {
        let amzDate = AWSTimestamp.format(date)
        let headers = Self.signableHeaders(request.headers)
        var authParameters: [(name: String, value: String)] = [
            ("X-Amz-Algorithm", Self.algorithm),
            ("X-Amz-Credential", "\(credentials.accessKeyID)/\(credentialScope(dateStamp: String(amzDate.prefix(8))))"),
            ("X-Amz-Date", amzDate),
            ("X-Amz-Expires", String(expires)),
            ("X-Amz-SignedHeaders", Self.canonicalHeaders(headers).signedHeaders),
        ]
        if let token = credentials.sessionToken {
            authParameters.append(("X-Amz-Security-Token", token))
        }
        var withAuth = request
        withAuth.query = request.query + authParameters
        let (canonical, _) = canonicalRequestAndSignedHeaders(withAuth)
        let signature = signature(canonicalRequest: canonical, amzDate: amzDate)
        return withAuth.query + [("X-Amz-Signature", signature)]
    }

    /// `name=value&...` in the given order, both URI-encoded.
    public static func queryString(_ parameters: [(name: String, value: String)]) -> String {
        parameters.map { AWSURIEncoding.encode($0.name) + "=" + AWSURIEncoding.encode($0.value) }.joined(separator: "&")
    }

    // MARK: The pieces

    /// `AWS4-HMAC-SHA256 \n amzDate \n scope \n hex(SHA-256(canonical request))`.
    public func stringToSign(canonicalRequest: String, amzDate: String) -> String {
        let hash = hexString(SHA256.hash(data: Array(canonicalRequest.utf8)))
        return [Self.algorithm, amzDate, credentialScope(dateStamp: String(amzDate.prefix(8))), hash].joined(separator: "\n")
    }

    /// `dateStamp/region/service/aws4_request`.
    public func credentialScope(dateStamp: String) -> String {
        "\(dateStamp)/\(region)/\(service)/aws4_request"
    }

    /// The hex signature of a canonical request signed at `amzDate` (`yyyyMMdd'T'HHmmss'Z'`).
    public func signature(canonicalRequest: String, amzDate: String) -> String {
        let key = Self.signingKey(
            secretAccessKey: credentials.secretAccessKey, dateStamp: String(amzDate.prefix(8)), region: region,
            service: service)
        return Self.signature(signingKey: key, stringToSign: stringToSign(canonicalRequest: canonicalRequest, amzDate: amzDate))
    }

    /// HMAC chain `AWS4`+secret → date → region → service → `aws4_request`.
    public static func signingKey(secretAccessKey: String, dateStamp: String, region: String, service: String) -> SymmetricKey {
        var key = SymmetricKey(data: Array(("AWS4" + secretAccessKey).utf8))
        for part in [dateStamp, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        return key
    }

    /// Hex HMAC-SHA256 of the string to sign.
    public static func signature(signingKey: SymmetricKey, stringToSign: String) -> String {
        hexString(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: signingKey))
    }

    /// The canonical request: method, canonical path, canonical query, canonical headers,
    /// signed headers, payload hash, one per line.
    public func canonicalRequest(_ request: SigV4Request) -> String {
        canonicalRequestAndSignedHeaders(request).canonical
    }

    /// The path as signed (see `normalizesPath`).
    public func canonicalPath(_ path: String) -> String {
        guard normalizesPath else { return path.isEmpty ? "/" : path }
        return AWSURIEncoding.encode(Self.removeDotSegments(path.isEmpty ? "/" : path), keepSlash: true)
    }

    /// Parameters URI-encoded, sorted by encoded name then encoded value, joined by `&`.
    public static func canonicalQueryString(_ parameters: [(name: String, value: String)]) -> String {
        parameters
            .map { (AWSURIEncoding.encode($0.name), AWSURIEncoding.encode($0.value)) }
            .sorted { $0.0 != $1.0 ? $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) : $0.1.utf8.lexicographicallyPrecedes($1.1.utf8) }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }

    /// `name:value\n` lines (names lowercased and sorted, values trimmed with inner runs of
    /// whitespace collapsed, repeated headers joined by `,`) and the `;`-separated names.
    public static func canonicalHeaders(_ headers: [(name: String, value: String)]) -> (canonical: String, signedHeaders: String) {
        var byName: [String: [String]] = [:]
        for (name, value) in headers {
            let trimmed = value.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }).joined(separator: " ")
            byName[name.lowercased(), default: []].append(trimmed)
        }
        let names = byName.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        let canonical = names.map { "\($0):\(byName[$0]!.joined(separator: ","))\n" }.joined()
        return (canonical, names.joined(separator: ";"))
    }

    static func signableHeaders(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        headers.filter { !unsignedHeaders.contains($0.name.lowercased()) }
    }

    func payloadHash(of request: SigV4Request) -> String {
        request.payloadHash ?? hexString(SHA256.hash(data: request.body))
    }

    func canonicalRequestAndSignedHeaders(_ request: SigV4Request) -> (canonical: String, signedHeaders: String) {
        let headers = Self.canonicalHeaders(Self.signableHeaders(request.headers))
        let canonical = [
            request.method.uppercased(),
            canonicalPath(request.path),
            Self.canonicalQueryString(request.query),
            headers.canonical,
            headers.signedHeaders,
            payloadHash(of: request),
        ].joined(separator: "\n")
        return (canonical, headers.signedHeaders)
    }

    /// RFC 3986 dot-segment removal, also dropping empty segments (as botocore does).
    static func removeDotSegments(_ path: String) -> String {
        var output: [Substring] = []
        for segment in path.split(separator: "/", omittingEmptySubsequences: true) {
            if segment == "." { continue }
            if segment == ".." {
                if !output.isEmpty { output.removeLast() }
                continue
            }
            output.append(segment)
        }
        let first = path.hasPrefix("/") ? "/" : ""
        let last = path.hasSuffix("/") && !output.isEmpty ? "/" : ""
        return first + output.joined(separator: "/") + last
    }
}
