import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ConciergeJSON

/// Why `GetSecretValue` failed. Descriptions carry the secret id, the endpoint and AWS's error
/// code and message, never a secret value, a signature or a key.
public enum SecretsManagerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The secret id is empty, or is not an ARN and no region was given.
    case invalidSecretID(String)
    /// The endpoint is not `http(s)://HOST[:PORT]`.
    case invalidEndpoint(String)
    /// The TLS configuration could not be loaded (e.g. no readable trust roots).
    case tlsConfiguration(String)
    /// AWS answered with an error: the HTTP status, the error code (`__type` without its
    /// namespace, e.g. `ResourceNotFoundException`, `AccessDeniedException`) and the message.
    case service(status: Int, type: String, message: String)
    /// No connection, or it failed before a complete response.
    case connectionFailed(endpoint: String, reason: String)
    /// No complete response within the timeout.
    case timeout(endpoint: String, seconds: Double)
    /// The response is larger than the limit (1 MiB).
    case responseTooLarge(limit: Int)
    /// A 2xx response that is not the expected JSON.
    case malformedResponse(String)
    /// The secret has only a `SecretBinary`, which is not supported.
    case binarySecretUnsupported(secretID: String)

    public var description: String {
        switch self {
        case .invalidSecretID(let reason): return "invalid secret id: \(reason)"
        case .invalidEndpoint(let endpoint): return "invalid Secrets Manager endpoint '\(endpoint)' (expected http(s)://HOST[:PORT])"
        case .tlsConfiguration(let reason): return "cannot set up TLS for Secrets Manager: \(reason)"
        case .service(let status, let type, let message):
            return "Secrets Manager answered \(status) \(type)\(message.isEmpty ? "" : ": \(message)")"
        case .connectionFailed(let endpoint, let reason): return "cannot reach Secrets Manager at \(endpoint): \(reason)"
        case .timeout(let endpoint, let seconds): return "no answer from Secrets Manager at \(endpoint) within \(seconds) s"
        case .responseTooLarge(let limit): return "the Secrets Manager response is larger than \(limit) bytes"
        case .malformedResponse(let reason): return "unexpected Secrets Manager response: \(reason)"
        case .binarySecretUnsupported(let id): return "the secret '\(id)' has a SecretBinary and no SecretString (not supported)"
        }
    }
}

/// A minimal AWS Secrets Manager client: `GetSecretValue`, SigV4-signed, one request per
/// connection, over `https` (system trust roots, host name verified) or `http`.
///
/// The region is the one given to `init`, else the one in the secret's ARN
/// (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`); a secret given by name needs a
/// region. The endpoint is `https://secretsmanager.REGION.amazonaws.com` (`.amazonaws.com.cn`
/// for `cn-` regions) unless given (e.g. `http://127.0.0.1:4566` for a local emulator).
public struct SecretsManagerClient: Sendable {
    public static let defaultTimeout: TimeAmount = .seconds(10)
    /// The largest response read: 1 MiB.
    public static let maximumResponseSize = 1 << 20

    public var credentials: AWSCredentials
    public let region: String?
    public let endpoint: AWSEndpoint?
    public let timeout: TimeAmount
    let http: AWSHTTPClient
    let clock: @Sendable () -> Date

    /// - Parameters:
    ///   - region: overrides the region of secret ARNs; required for secrets given by name.
    ///   - endpoint: `http(s)://HOST[:PORT]`, else AWS's endpoint for the region.
    ///   - tlsConfiguration: for `https`; default: system trust roots, full verification.
    ///   - clock: the signing time (for tests).
    /// - Throws: `.invalidEndpoint`, `.tlsConfiguration`.
    public init(
        credentials: AWSCredentials, region: String? = nil, endpoint: String? = nil,
        timeout: TimeAmount = SecretsManagerClient.defaultTimeout, tlsConfiguration: TLSConfiguration? = nil,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) throws(SecretsManagerError) {
        var parsedEndpoint: AWSEndpoint?
        if let endpoint {
            guard let e = AWSEndpoint(url: endpoint) else { throw .invalidEndpoint(endpoint) }
            parsedEndpoint = e
        }
        var sslContext: NIOSSLContext?
        if parsedEndpoint?.useTLS ?? true {
            do {
                sslContext = try NIOSSLContext(configuration: tlsConfiguration ?? .makeClientConfiguration())
            } catch {
                throw .tlsConfiguration(String(describing: error))
            }
        }
        self.credentials = credentials
        self.region = region
        self.endpoint = parsedEndpoint
        self.timeout = timeout
        self.clock = clock
        self.http = AWSHTTPClient(
            group: eventLoopGroup, sslContext: sslContext, timeout: timeout, maximumBodySize: Self.maximumResponseSize)
    }

    /// The `SecretString` of the secret's current version (`AWSCURRENT`).
    ///
    /// - Parameter secretID: the secret's ARN or name.
    public func getSecretValue(secretID: String) async throws(SecretsManagerError) -> String {
        guard !secretID.isEmpty else { throw .invalidSecretID("empty") }
        guard let region = self.region ?? Self.region(fromARN: secretID) else {
            throw .invalidSecretID("'\(secretID)' is not an ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME) and no region is configured")
        }
        let response = try await call(target: "secretsmanager.GetSecretValue", body: Self.getSecretValueBody(secretID: secretID), region: region)
        return try Self.secretString(from: response, secretID: secretID)
    }

    /// `{"SecretId": "..."}`, as botocore writes it (non-ASCII characters as `\uXXXX`).
    static func getSecretValueBody(secretID: String) -> [UInt8] {
        Array("{\"SecretId\": \(JSON.quote(secretID, asciiOnly: true))}".utf8)
    }

    /// Sends one JSON 1.1 operation (`X-Amz-Target: TARGET`) and returns the response, whatever
    /// its status.
    func call(target: String, body: [UInt8], region: String) async throws(SecretsManagerError) -> AWSHTTPResponse {
        let (endpoint, request) = signedRequest(target: target, body: body, region: region, date: clock())
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: request.path)
        for (name, value) in request.headers {
            head.headers.add(name: name, value: value)
        }
        head.headers.add(name: "Content-Length", value: String(request.body.count))
        head.headers.add(name: "Connection", value: "close")
        head.headers.add(name: "User-Agent", value: "concierge")
        do {
            return try await http.send(endpoint: endpoint, head: head, body: request.body)
        } catch {
            switch error {
            case .timeout:
                throw .timeout(endpoint: endpoint.description, seconds: Double(timeout.nanoseconds) / 1e9)
            case .tooLarge(let limit):
                throw .responseTooLarge(limit: limit)
            case .connect(let reason), .io(let reason):
                throw .connectionFailed(endpoint: endpoint.description, reason: reason)
            }
        }
    }

    /// The region of `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`, else nil.
    public static func region(fromARN arn: String) -> String? {
        let parts = arn.split(separator: ":", maxSplits: 6, omittingEmptySubsequences: false)
        guard parts.count == 7, parts[0] == "arn", parts[2] == "secretsmanager", !parts[3].isEmpty, parts[5] == "secret" else {
            return nil
        }
        return String(parts[3])
    }

    /// AWS's endpoint for a region.
    public static func defaultEndpoint(region: String) -> AWSEndpoint {
        AWSEndpoint(useTLS: true, host: "secretsmanager.\(region).amazonaws.com\(region.hasPrefix("cn-") ? ".cn" : "")", port: 443)
    }

    /// The signed request (headers `Host`, `X-Amz-Target`, `Content-Type`, `X-Amz-Date`,
    /// `X-Amz-Security-Token`, `Authorization`; the JSON body) and where it goes.
    func signedRequest(target: String, body: [UInt8], region: String, date: Date) -> (AWSEndpoint, SigV4Request) {
        let endpoint = self.endpoint ?? Self.defaultEndpoint(region: region)
        let request = SigV4Request(
            method: "POST", path: "/",
            headers: [
                ("Host", endpoint.hostHeader),
                ("X-Amz-Target", target),
                ("Content-Type", "application/x-amz-json-1.1"),
            ],
            body: body)
        let signer = SigV4Signer(credentials: credentials, region: region, service: "secretsmanager")
        return (endpoint, signer.sign(request, date: date))
    }

    static func secretString(from response: AWSHTTPResponse, secretID: String) throws(SecretsManagerError) -> String {
        guard (200..<300).contains(response.status) else {
            try serviceError(response, json: try? JSON.parse(response.body))
        }
        let json: JSON
        do {
            json = try JSON.parse(response.body)
        } catch {
            // The position only: the body of a successful response holds the secret.
            throw .malformedResponse("the body is not valid JSON (line \(error.line), column \(error.column))")
        }
        guard case .object = json else { throw .malformedResponse("the body is \(json.typeName), not a JSON object") }
        if let value = json["SecretString"] {
            guard case .string(let secret) = value else { throw .malformedResponse("SecretString is \(value.typeName), not a string") }
            return secret
        }
        if json["SecretBinary"] != nil { throw .binarySecretUnsupported(secretID: secretID) }
        throw .malformedResponse("no SecretString in the response")
    }

    static func serviceError(_ response: AWSHTTPResponse, json: JSON?) throws(SecretsManagerError) -> Never {
        // `__type` is `Code` or `namespace#Code`; else the X-Amzn-ErrorType header (`Code:...`).
        var type = json?["__type"]?.stringValue ?? json?["code"]?.stringValue ?? json?["Code"]?.stringValue
        if type == nil, let header = response.headers.first(name: "x-amzn-errortype") {
            type = header.split(separator: ":", maxSplits: 1).first.map(String.init)
        }
        if let t = type, let hash = t.lastIndex(of: "#") { type = String(t[t.index(after: hash)...]) }
        var message = json?["message"]?.stringValue ?? json?["Message"]?.stringValue ?? ""
        if json == nil {
            // An XML error (`<Error><Code>...</Code><Message>...</Message>`), as some emulators send.
            let text = String(decoding: response.body.prefix(4096), as: UTF8.self)
            type = type ?? xmlElement("Code", in: text)
            if message.isEmpty { message = xmlElement("Message", in: text) ?? "" }
        }
        let code = type.flatMap { $0.isEmpty ? nil : $0 } ?? HTTPResponseStatus(statusCode: response.status).reasonPhrase
        throw .service(status: response.status, type: code, message: String(message.prefix(1000)))
    }

    static func xmlElement(_ name: String, in text: String) -> String? {
        guard let open = text.range(of: "<\(name)>"), let close = text.range(of: "</\(name)>", range: open.upperBound..<text.endIndex) else {
            return nil
        }
        let value = text[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
        return value.isEmpty || value.contains("<") ? nil : value
    }
}
