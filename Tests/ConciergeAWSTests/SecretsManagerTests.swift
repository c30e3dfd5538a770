import Foundation
import NIOCore
import NIOSSL
import Testing

@testable import ConciergeAWS

let smCredentials = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", sessionToken: "session/token+=")
let secretARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"
let okBody = #"{"ARN":"arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf","Name":"prod/db","VersionId":"v1","SecretString":"{\"username\":\"app\",\"password\":\"hunter2\"}","VersionStages":["AWSCURRENT"],"CreatedDate":1.523477145713E9}"#

/// A client of the test server, signing at the suite's time.
func client(_ server: TestHTTPServer, region: String? = nil, timeout: TimeAmount = .seconds(5)) throws(SecretsManagerError) -> SecretsManagerClient {
    try SecretsManagerClient(credentials: smCredentials, region: region, endpoint: server.url, timeout: timeout, clock: { suiteDate })
}

func smError(_ body: () async throws(SecretsManagerError) -> String) async -> SecretsManagerError? {
    do {
        _ = try await body()
        return nil
    } catch {
        return error
    }
}

/// Checks the request's Authorization against a signature recomputed from what was received.
func verifySignature(_ request: ReceivedRequest, region: String) -> Bool {
    guard let authorization = request.header("Authorization"),
          let signedList = authorization.components(separatedBy: "SignedHeaders=").last?.components(separatedBy: ",").first
    else { return false }
    let signed = Set(signedList.split(separator: ";").map(String.init))
    let headers = request.headers.filter { signed.contains($0.name.lowercased()) }
    let signer = SigV4Signer(credentials: smCredentials, region: region, service: "secretsmanager")
    let recomputed = signer.sign(SigV4Request(method: "POST", path: "/", headers: headers.filter {
        !["x-amz-date", "x-amz-security-token"].contains($0.name.lowercased())
    }, body: request.body), date: suiteDate)
    return recomputed.header("Authorization") == authorization
}

@Suite("Secrets Manager client")
struct SecretsManagerTests {
    @Test("the signed request matches botocore's for the same call")
    func botocoreVector() throws {
        // botocore 1.43.11, SigV4Auth("secretsmanager", "us-east-1") of POST https://secretsmanager.us-east-1.amazonaws.com/
        // with X-Amz-Target, Content-Type and the body {"SecretId": "prod/db"}, token "session/token+=", 20150830T123600Z.
        let c = try SecretsManagerClient(credentials: smCredentials, region: "us-east-1", clock: { suiteDate })
        let body = SecretsManagerClient.getSecretValueBody(secretID: "prod/db")
        #expect(String(decoding: body, as: UTF8.self) == #"{"SecretId": "prod/db"}"#)
        let (endpoint, request) = c.signedRequest(target: "secretsmanager.GetSecretValue", body: body, region: "us-east-1", date: suiteDate)
        #expect(endpoint == AWSEndpoint(useTLS: true, host: "secretsmanager.us-east-1.amazonaws.com", port: 443))
        #expect(request.header("Host") == "secretsmanager.us-east-1.amazonaws.com")
        #expect(request.header("X-Amz-Security-Token") == "session/token+=")
        #expect(request.header("Authorization") == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/secretsmanager/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=63b614154baffdd210f297a329125fbef352ec4d9f4bac0de8c7389c1bcf281d")
        #expect(String(decoding: SecretsManagerClient.getSecretValueBody(secretID: "é\"x"), as: UTF8.self) == #"{"SecretId": "\u00e9\"x"}"#)
    }

    @Test("regions and endpoints")
    func regionsAndEndpoints() throws {
        #expect(SecretsManagerClient.region(fromARN: secretARN) == "eu-west-1")
        #expect(SecretsManagerClient.region(fromARN: "arn:aws-cn:secretsmanager:cn-north-1:1:secret:a:b") == "cn-north-1")
        #expect(SecretsManagerClient.region(fromARN: "prod/db") == nil)
        #expect(SecretsManagerClient.region(fromARN: "arn:aws:s3:eu-west-1:1:secret:x") == nil)
        #expect(SecretsManagerClient.region(fromARN: "arn:aws:secretsmanager::1:secret:x") == nil)
        #expect(SecretsManagerClient.defaultEndpoint(region: "cn-north-1").host == "secretsmanager.cn-north-1.amazonaws.com.cn")
        #expect(AWSEndpoint(url: "http://127.0.0.1:4566") == AWSEndpoint(useTLS: false, host: "127.0.0.1", port: 4566))
        #expect(AWSEndpoint(url: "HTTPS://Example.com/") == AWSEndpoint(useTLS: true, host: "Example.com", port: 443))
        #expect(AWSEndpoint(url: "http://[::1]:8080")?.hostHeader == "[::1]:8080")
        #expect(AWSEndpoint(url: "http://h:80")?.hostHeader == "h")
        #expect(AWSEndpoint(url: "https://h:8443")?.hostHeader == "h:8443")
        for bad in ["", "ftp://h", "h:80", "http://", "http://h/path", "http://h:0", "http://h:x", "http://u@h", "http://h?x", "http://[::1"] {
            #expect(AWSEndpoint(url: bad) == nil, "\(bad)")
        }
        #expect(throws: SecretsManagerError.invalidEndpoint("http://h/path")) {
            try SecretsManagerClient(credentials: smCredentials, endpoint: "http://h/path")
        }
    }

    @Test("GetSecretValue over http: the request on the wire, the secret returned")
    func success() async throws {
        let server = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, okBody, headers: ["Content-Type: application/x-amz-json-1.1"])) }
        defer { Task { await server.shutdown() } }
        let secret = try await client(server).getSecretValue(secretID: secretARN)
        #expect(secret == #"{"username":"app","password":"hunter2"}"#)
        let request = try #require(server.requests.first)
        #expect(request.requestLine == "POST / HTTP/1.1")
        #expect(request.header("Host") == "127.0.0.1:\(server.port)")
        #expect(request.header("X-Amz-Target") == "secretsmanager.GetSecretValue")
        #expect(request.header("Content-Type") == "application/x-amz-json-1.1")
        #expect(request.header("Connection") == "close")
        #expect(request.header("X-Amz-Date") == "20150830T123600Z")
        #expect(request.header("X-Amz-Security-Token") == "session/token+=")
        #expect(request.header("Content-Length") == String(request.body.count))
        #expect(String(decoding: request.body, as: UTF8.self) == "{\"SecretId\": \"\(secretARN)\"}")
        // The region comes from the ARN.
        #expect(request.header("Authorization")?.contains("Credential=AKIDEXAMPLE/20150830/eu-west-1/secretsmanager/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=") == true)
        #expect(verifySignature(request, region: "eu-west-1"))
    }

    @Test("the configured region overrides the ARN's; a name needs a region")
    func regionOverride() async throws {
        let server = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, okBody)) }
        defer { Task { await server.shutdown() } }
        _ = try await client(server, region: "us-west-2").getSecretValue(secretID: secretARN)
        _ = try await client(server, region: "us-west-2").getSecretValue(secretID: "prod/db")
        #expect(server.requests.count == 2)
        #expect(server.requests.allSatisfy { $0.header("Authorization")?.contains("/us-west-2/secretsmanager/") == true })
        #expect(verifySignature(server.requests[1], region: "us-west-2"))
        let noRegion = await smError { () async throws(SecretsManagerError) in try await client(server).getSecretValue(secretID: "prod/db") }
        guard case .invalidSecretID = noRegion else {
            Issue.record("got \(String(describing: noRegion))")
            return
        }
        #expect(await smError { () async throws(SecretsManagerError) in try await client(server).getSecretValue(secretID: "") } == .invalidSecretID("empty"))
        #expect(server.requests.count == 2)
    }

    @Test("chunked bodies and bodies ended by closing")
    func bodyFramings() async throws {
        let chunked = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, okBody, chunked: true)) }
        defer { Task { await chunked.shutdown() } }
        #expect(try await client(chunked).getSecretValue(secretID: secretARN) == #"{"username":"app","password":"hunter2"}"#)

        let untilClose = try await TestHTTPServer.start { _ in .bytes(Array("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n\(okBody)".utf8)) }
        defer { Task { await untilClose.shutdown() } }
        #expect(try await client(untilClose).getSecretValue(secretID: secretARN) == #"{"username":"app","password":"hunter2"}"#)
    }

    @Test("AWS errors keep their code and message", arguments: [
        (httpResponse(400, #"{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#),
         SecretsManagerError.service(status: 400, type: "ResourceNotFoundException", message: "Secrets Manager can't find the specified secret.")),
        (httpResponse(400, #"{"__type":"com.amazonaws.secretsmanager#AccessDeniedException","Message":"not authorized"}"#),
         .service(status: 400, type: "AccessDeniedException", message: "not authorized")),
        (httpResponse(403, "", headers: ["X-Amzn-ErrorType: UnrecognizedClientException:http://internal.amazon.com/coral/"]),
         .service(status: 403, type: "UnrecognizedClientException", message: "")),
        (httpResponse(403, "<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error></Errors></ErrorResponse>"),
         .service(status: 403, type: "SignatureDoesNotMatch", message: "The request signature we calculated does not match")),
        (httpResponse(500, "<html>oops</html>"), .service(status: 500, type: "Internal Server Error", message: "")),
        (httpResponse(503, "", chunked: true), .service(status: 503, type: "Service Unavailable", message: "")),
    ])
    func serviceErrors(_ response: [UInt8], _ expected: SecretsManagerError) async throws {
        let server = try await TestHTTPServer.start { _ in .bytes(response) }
        defer { Task { await server.shutdown() } }
        let error = await smError { () async throws(SecretsManagerError) in try await client(server).getSecretValue(secretID: secretARN) }
        #expect(error == expected)
    }

    @Test("unusable 200 responses")
    func malformedResponses() async throws {
        let cases: [(String, (SecretsManagerError?) -> Bool)] = [
            (#"{"ARN":"x","SecretBinary":"AAEC"}"#, { $0 == .binarySecretUnsupported(secretID: secretARN) }),
            (#"{"ARN":"x"}"#, { $0 == .malformedResponse("no SecretString in the response") }),
            (#"{"SecretString": 5}"#, { $0 == .malformedResponse("SecretString is a number, not a string") }),
            (#"["SecretString"]"#, { $0 == .malformedResponse("the body is an array, not a JSON object") }),
            (#"{"SecretString": "hunter2-top-secret", "#, { if case .malformedResponse = $0 { return true } else { return false } }),
            ("", { if case .malformedResponse = $0 { return true } else { return false } }),
        ]
        for (body, check) in cases {
            let server = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, body)) }
            let error = await smError { () async throws(SecretsManagerError) in try await client(server).getSecretValue(secretID: secretARN) }
            #expect(check(error), "\(body): \(String(describing: error))")
            // Never the secret in the description.
            #expect(error?.description.contains("hunter2") != true)
            await server.shutdown()
        }
    }

    @Test("responses over 1 MiB are refused")
    func tooLarge() async throws {
        let big = "{\"SecretString\": \"" + String(repeating: "x", count: SecretsManagerClient.maximumResponseSize) + "\"}"
        for chunked in [false, true] {
            let server = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, big, chunked: chunked)) }
            let error = await smError { () async throws(SecretsManagerError) in try await client(server).getSecretValue(secretID: secretARN) }
            #expect(error == .responseTooLarge(limit: 1_048_576))
            await server.shutdown()
        }
        // Refused on the announced length alone.
        let announced = try await TestHTTPServer.start { _ in .bytesThenHang(Array("HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n".utf8)) }
        defer { Task { await announced.shutdown() } }
        #expect(await smError { () async throws(SecretsManagerError) in try await client(announced).getSecretValue(secretID: secretARN) } == .responseTooLarge(limit: 1_048_576))
        // Just under the limit is fine.
        let fits = "{\"SecretString\": \"" + String(repeating: "y", count: SecretsManagerClient.maximumResponseSize - 100) + "\"}"
        let ok = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, fits)) }
        defer { Task { await ok.shutdown() } }
        #expect(try await client(ok).getSecretValue(secretID: secretARN).count == SecretsManagerClient.maximumResponseSize - 100)
    }

    @Test("timeouts: no answer, or a body that never ends")
    func timeouts() async throws {
        for reply in [TestHTTPServer.Reply.hang, .bytesThenHang(Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{".utf8))] {
            let server = try await TestHTTPServer.start { _ in reply }
            let start = ContinuousClock.now
            let error = await smError { () async throws(SecretsManagerError) in
                try await client(server, timeout: .milliseconds(300)).getSecretValue(secretID: secretARN)
            }
            #expect(error == .timeout(endpoint: "http://127.0.0.1:\(server.port)", seconds: 0.3))
            #expect(ContinuousClock.now - start < .seconds(5))
            await server.shutdown()
        }
        #expect(SecretsManagerClient.defaultTimeout == .seconds(10))
    }

    @Test("connection failures: refused, closed without an answer, closed mid-body")
    func connectionFailures() async throws {
        // A port nobody listens on (a server started and stopped).
        let gone = try await TestHTTPServer.start { _ in .close }
        let port = gone.port
        await gone.shutdown()
        let refused = await smError { () async throws(SecretsManagerError) in
            try await SecretsManagerClient(credentials: smCredentials, endpoint: "http://127.0.0.1:\(port)").getSecretValue(secretID: secretARN)
        }
        guard case .connectionFailed(let endpoint, _) = refused else {
            Issue.record("refused: \(String(describing: refused))")
            return
        }
        #expect(endpoint == "http://127.0.0.1:\(port)")

        for reply in [TestHTTPServer.Reply.close, .bytes(Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Secret".utf8)),
                      .bytes(Array("garbage\r\n\r\n".utf8))] {
            let server = try await TestHTTPServer.start { _ in reply }
            let error = await smError { () async throws(SecretsManagerError) in try await client(server).getSecretValue(secretID: secretARN) }
            guard case .connectionFailed = error else {
                Issue.record("\(reply): \(String(describing: error))")
                await server.shutdown()
                continue
            }
            await server.shutdown()
        }
    }

    @Test("https: the server's certificate is checked against the trust roots and the host name")
    func https() async throws {
        let certificate = try NIOSSLCertificate(bytes: Array(testCertificatePEM.utf8), format: .pem)
        let key = try NIOSSLPrivateKey(bytes: Array(testKeyPEM.utf8), format: .pem)
        let serverContext = try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: [.certificate(certificate)], privateKey: .privateKey(key)))
        let server = try await TestHTTPServer.start(tls: serverContext) { _ in .bytes(httpResponse(200, okBody)) }
        defer { Task { await server.shutdown() } }
        var trusting = TLSConfiguration.makeClientConfiguration()
        trusting.trustRoots = .certificates([certificate])

        // Trusted certificate, matching name.
        let good = try SecretsManagerClient(credentials: smCredentials, endpoint: "https://localhost:\(server.port)", tlsConfiguration: trusting, clock: { suiteDate })
        #expect(try await good.getSecretValue(secretID: secretARN) == #"{"username":"app","password":"hunter2"}"#)
        #expect(server.requests.last?.header("Host") == "localhost:\(server.port)")

        // Trusted certificate, but it is not for 127.0.0.1.
        let wrongName = try SecretsManagerClient(credentials: smCredentials, endpoint: "https://127.0.0.1:\(server.port)", tlsConfiguration: trusting)
        let nameError = await smError { () async throws(SecretsManagerError) in try await wrongName.getSecretValue(secretID: secretARN) }
        guard case .connectionFailed = nameError else {
            Issue.record("wrong name: \(String(describing: nameError))")
            return
        }
        // The system trust roots do not know the test certificate.
        let system = try SecretsManagerClient(credentials: smCredentials, endpoint: "https://localhost:\(server.port)")
        let systemError = await smError { () async throws(SecretsManagerError) in try await system.getSecretValue(secretID: secretARN) }
        guard case .connectionFailed = systemError else {
            Issue.record("system roots: \(String(describing: systemError))")
            return
        }
        #expect(server.requests.count == 1)

        // https to a plain http server fails cleanly (this test server waits for a request it never
        // gets, so the client times out; a real server would answer 400 and close).
        let plain = try await TestHTTPServer.start { _ in .bytes(httpResponse(200, okBody)) }
        defer { Task { await plain.shutdown() } }
        let mismatch = try SecretsManagerClient(credentials: smCredentials, endpoint: "https://localhost:\(plain.port)", timeout: .seconds(1), tlsConfiguration: trusting)
        let mismatchError = await smError { () async throws(SecretsManagerError) in try await mismatch.getSecretValue(secretID: secretARN) }
        switch mismatchError {
        case .connectionFailed?, .timeout?: break
        default: Issue.record("https to http: \(String(describing: mismatchError))")
        }
    }

    @Test("error descriptions carry no secret")
    func descriptions() {
        let errors: [SecretsManagerError] = [
            .service(status: 400, type: "ResourceNotFoundException", message: "Secrets Manager can't find the specified secret."),
            .timeout(endpoint: "https://secretsmanager.us-east-1.amazonaws.com", seconds: 10),
            .binarySecretUnsupported(secretID: "prod/db"),
        ]
        #expect(errors.map(\.description) == [
            "Secrets Manager answered 400 ResourceNotFoundException: Secrets Manager can't find the specified secret.",
            "no answer from Secrets Manager at https://secretsmanager.us-east-1.amazonaws.com within 10.0 s",
            "the secret 'prod/db' has a SecretBinary and no SecretString (not supported)",
        ])
    }
}

/// A self-signed certificate for DNS:localhost only (valid until 2126), and its key.
let testCertificatePEM = """
    -----BEGIN CERTIFICATE-----
    MIIBljCCATugAwIBAgIUIfxAD4O19EY1vrEpx4tEvVaFIQQwCgYIKoZIzj0EAwIw
    FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyMzA1MDUxMFoYDzIxMjYxMDMw
    MDUwNTEwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
    PQMBBwNCAATTAOg/BlImXVz00kvzxHOO2sIyYySFq5fGmD7Jzt4PVch7+aATk6cS
    DXbUE6sgWNOGh7tEAK8bF2m91M+rU5aIo2kwZzAdBgNVHQ4EFgQUnO8JJkYsjgy3
    rXjxa891WVgEwzEwHwYDVR0jBBgwFoAUnO8JJkYsjgy3rXjxa891WVgEwzEwFAYD
    VR0RBA0wC4IJbG9jYWxob3N0MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
    SQAwRgIhANlqkfDxkaUqla26EF4Z+XkmLGmqJtKzdX1gnVpPCxnAAiEA0dNb/HnX
    WZ2PSnLh7WcuvKpd6iaQgYcxRoyHFARAn24=
    -----END CERTIFICATE-----
    """

let testKeyPEM = """
    -----BEGIN PRIVATE KEY-----
    MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgu+5hntPf9WvG5N+R
    MKd32axTznUmyTqRxNiijMF7phehRANCAATTAOg/BlImXVz00kvzxHOO2sIyYySF
    q5fGmD7Jzt4PVch7+aATk6cSDXbUE6sgWNOGh7tEAK8bF2m91M+rU5aI
    -----END PRIVATE KEY-----
    """
