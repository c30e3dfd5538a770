import Crypto
import Foundation
import Testing

@testable import ConciergeAWS

/// The credentials of AWS's SigV4 test suite (service "service", us-east-1, 2015-08-30 12:36:00 UTC).
let suiteCredentials = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)
let suiteSigner = SigV4Signer(credentials: suiteCredentials, region: "us-east-1", service: "service")

func hex(_ key: SymmetricKey) -> String {
    key.withUnsafeBytes { hexString($0) }
}

/// The Signature= part of an Authorization header.
func signatureOf(_ request: SigV4Request) -> String? {
    request.header("Authorization")?.components(separatedBy: "Signature=").last
}

@Suite("SigV4")
struct SigV4Tests {
    @Test("the signing key of AWS's documented example (iam, 20120215)")
    func documentedSigningKey() {
        let key = SigV4Signer.signingKey(
            secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", dateStamp: "20120215", region: "us-east-1", service: "iam")
        #expect(hex(key) == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d")
    }

    @Test("get-vanilla: canonical request, string to sign, signature, Authorization")
    func getVanilla() {
        let request = SigV4Request(method: "GET", path: "/", headers: [("Host", "example.amazonaws.com")])
        let signed = suiteSigner.sign(request, date: suiteDate)
        #expect(signed.header("X-Amz-Date") == "20150830T123600Z")
        #expect(signed.header("X-Amz-Security-Token") == nil)
        #expect(signed.header("X-Amz-Content-SHA256") == nil)
        let canonical = suiteSigner.canonicalRequest(signed.withoutAuthorization)
        #expect(canonical == """
            GET
            /

            host:example.amazonaws.com
            x-amz-date:20150830T123600Z

            host;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        #expect(suiteSigner.stringToSign(canonicalRequest: canonical, amzDate: "20150830T123600Z") == """
            AWS4-HMAC-SHA256
            20150830T123600Z
            20150830/us-east-1/service/aws4_request
            bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63
            """)
        #expect(signed.header("Authorization") == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    struct Vector: Sendable, CustomTestStringConvertible {
        var name: String
        var method: String
        var path: String
        var query: [(name: String, value: String)] = []
        var signature: String
        var testDescription: String { name }
    }

    /// The AWS test suite's vectors, and botocore's (1.43.11) signatures of further requests
    /// (botocore.auth.SigV4Auth with its clock frozen at the suite's time).
    static let vectors: [Vector] = [
        Vector(name: "get-vanilla", method: "GET", path: "/", signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        Vector(name: "get-vanilla-query-order-key-case", method: "GET", path: "/", query: [("Param2", "value2"), ("Param1", "value1")],
               signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        Vector(name: "post-vanilla", method: "POST", path: "/", signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        Vector(name: "get-unreserved", method: "GET", path: "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
               signature: "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
        // botocore: the path as sent (percent-encoded) is encoded once more (%E1 → %25E1).
        Vector(name: "utf8 path (botocore)", method: "GET", path: "/%E1%88%B4",
               signature: "697b34846207a3f72246f99d74ae1ee4fe54f44bb06730c58a0d339eb079596d"),
        Vector(name: "space in path (botocore)", method: "GET", path: "/example%20space/",
               signature: "446b817944c553435b35e813c261ff4e161fff982d1bacdef1c87f6785dd1662"),
        // Dot segments and repeated slashes are removed: signed as get-vanilla.
        Vector(name: "dot segments", method: "GET", path: "/a/./..//", signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ]

    @Test("header signing matches the AWS test suite and botocore", arguments: vectors)
    func suiteVectors(_ vector: Vector) {
        let request = SigV4Request(method: vector.method, path: vector.path, query: vector.query, headers: [("Host", "example.amazonaws.com")])
        #expect(signatureOf(suiteSigner.sign(request, date: suiteDate)) == vector.signature)
    }

    @Test("path normalization (not for S3)")
    func pathNormalization() {
        #expect(suiteSigner.canonicalPath("") == "/")
        #expect(suiteSigner.canonicalPath("/a/./b/../c//d/") == "/a/c/d/")
        #expect(suiteSigner.canonicalPath("/../..") == "/")
        #expect(suiteSigner.canonicalPath("/a b/%41") == "/a%20b/%2541")
        let s3 = SigV4Signer(credentials: suiteCredentials, region: "us-east-1", service: "s3")
        #expect(s3.canonicalPath("/a/./b//c%20d") == "/a/./b//c%20d")
    }

    @Test("a session token is sent and signed as X-Amz-Security-Token (post-sts-header-before)")
    func sessionTokenHeader() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
        var credentials = suiteCredentials
        credentials.sessionToken = token
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "service")
        let signed = signer.sign(SigV4Request(method: "POST", headers: [("Host", "example.amazonaws.com")]), date: suiteDate)
        #expect(signed.header("X-Amz-Security-Token") == token)
        #expect(signed.header("Authorization") == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead")
    }

    @Test("header values are trimmed and inner white space collapsed; User-Agent is not signed")
    func headerTrimming() {
        let request = SigV4Request(method: "GET", headers: [
            ("Host", "example.amazonaws.com"), ("My-Header1", "  value1  "), ("My-Header2", " \"a   b   c\" "),
            ("User-Agent", "concierge"),
        ])
        let signed = suiteSigner.sign(request, date: suiteDate)
        // botocore: SignedHeaders=host;my-header1;my-header2;x-amz-date
        #expect(signed.header("Authorization") == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736")
        #expect(SigV4Signer.canonicalHeaders([("B", "x"), ("a", " 1 "), ("b", "y\t z")]).canonical == "a:1\nb:x,y z\n")
    }

    @Test("S3's documented GET Object: x-amz-content-sha256 signed, the path not encoded again")
    func s3GetObject() {
        let credentials = AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "s3")
        #expect(!signer.normalizesPath)
        let request = SigV4Request(
            method: "GET", path: "/test.txt", headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9")])
        let signed = signer.sign(request, date: Date(timeIntervalSince1970: 1_369_353_600), contentSHA256Header: true)
        #expect(signed.header("x-amz-content-sha256") == SigV4Signer.emptyPayloadHash)
        #expect(signed.header("Authorization") == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test("S3's documented presigned GET (query-string authentication)")
    func s3Presigned() {
        let credentials = AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "s3")
        let request = SigV4Request(
            method: "GET", path: "/test.txt", headers: [("host", "examplebucket.s3.amazonaws.com")], payloadHash: "UNSIGNED-PAYLOAD")
        let query = signer.presign(request, date: Date(timeIntervalSince1970: 1_369_353_600), expires: 86400)
        #expect(SigV4Signer.queryString(query) == "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    }

    @Test("presigning with a session token and query parameters, as botocore's SigV4QueryAuth")
    func presignWithToken() {
        var credentials = suiteCredentials
        credentials.sessionToken = "tok/en+="
        let signer = SigV4Signer(credentials: credentials, region: "us-east-1", service: "service")
        let request = SigV4Request(
            method: "GET", path: "/path/to", query: [("z", "1"), ("A", "/"), ("a", "x y")], headers: [("host", "example.amazonaws.com")])
        let query = signer.presign(request, date: suiteDate, expires: 300)
        #expect(SigV4Signer.queryString(query) == "z=1&A=%2F&a=x%20y&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok%2Fen%2B%3D&X-Amz-Signature=f1a778d669c161bba186291e130ef6b2f9d6996d787b9d555f4c0f978d417976")

        let plain = suiteSigner.presign(SigV4Request(method: "GET", headers: [("host", "example.amazonaws.com")]), date: suiteDate, expires: 60)
        #expect(plain.last?.value == "ff4f668def1029a233d80421e3457840cfcd816fcbefa7af042f2ca8f117547c")
        #expect(!plain.contains { $0.name == "X-Amz-Security-Token" })
    }

    @Test("the canonical query sorts by encoded name, then by value")
    func canonicalQuery() {
        let q = SigV4Signer.canonicalQueryString([("b", "2"), ("a b", "x"), ("B", "1"), ("a", "z"), ("a", "y"), ("~", ""), ("é", "/")])
        // "B" < "a" < "a%20b" < "b" < "%C3%A9" sorts first ('%' is 0x25)
        #expect(q == "%C3%A9=%2F&B=1&a=y&a=z&a%20b=x&b=2&~=")
    }

    @Test("signing replaces earlier signature headers instead of adding a second set")
    func resigning() {
        let request = SigV4Request(method: "GET", headers: [("Host", "example.amazonaws.com")])
        let once = suiteSigner.sign(request, date: suiteDate.addingTimeInterval(-3600))
        let twice = suiteSigner.sign(once, date: suiteDate)
        #expect(twice.headers.filter { $0.name.lowercased() == "x-amz-date" }.count == 1)
        #expect(signatureOf(twice) == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    @Test("credentials never print their secret or token")
    func redaction() {
        let credentials = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "SECRET-KEY", sessionToken: "SESSION-TOKEN")
        for text in [credentials.description, String(describing: credentials), String(reflecting: credentials), "\(credentials)"] {
            #expect(text.contains("AKIDEXAMPLE"))
            #expect(!text.contains("SECRET-KEY"))
            #expect(!text.contains("SESSION-TOKEN"))
        }
    }

    @Test("credentials from the environment")
    func environmentCredentials() {
        #expect(AWSCredentials.fromEnvironment([:]) == nil)
        #expect(AWSCredentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "AKID"]) == nil)
        #expect(AWSCredentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": ""]) == nil)
        #expect(AWSCredentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": ""])
            == AWSCredentials(accessKeyID: "AKID", secretAccessKey: "s"))
        #expect(AWSCredentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"])
            == AWSCredentials(accessKeyID: "AKID", secretAccessKey: "s", sessionToken: "t"))
    }
}

@Suite("URI encoding and timestamps")
struct EncodingTests {
    @Test func uriEncoding() {
        #expect(AWSURIEncoding.encode("a b/c~d+e$é") == "a%20b%2Fc~d%2Be%24%C3%A9")
        #expect(AWSURIEncoding.encode("a b/c", keepSlash: true) == "a%20b/c")
        #expect(AWSURIEncoding.encode("-._~AZaz09") == "-._~AZaz09")
        #expect(AWSURIEncoding.encode("=&?#%*!'()") == "%3D%26%3F%23%25%2A%21%27%28%29")
        #expect(AWSURIEncoding.encode("\u{1F600}") == "%F0%9F%98%80")
    }

    @Test func uriDecoding() {
        #expect(AWSURIEncoding.decode("a%20b%2fc+d%C3%A9") == "a b/c+dé")
        #expect(AWSURIEncoding.decode("%") == nil)
        #expect(AWSURIEncoding.decode("%2") == nil)
        #expect(AWSURIEncoding.decode("%zz") == nil)
        #expect(AWSURIEncoding.decode("%FF") == nil, "not UTF-8")
        for text in ["", "plain", "a b/c~d+e$é", "%41", "\u{1F600}"] {
            #expect(AWSURIEncoding.decode(AWSURIEncoding.encode(text)) == text)
        }
    }

    @Test func timestamps() {
        #expect(AWSTimestamp.format(suiteDate) == "20150830T123600Z")
        #expect(AWSTimestamp.format(Date(timeIntervalSince1970: 0)) == "19700101T000000Z")
        #expect(AWSTimestamp.format(Date(timeIntervalSince1970: 951_782_400.9)) == "20000229T000000Z")
        #expect(AWSTimestamp.format(Date(timeIntervalSince1970: -1)) == "19691231T235959Z")
        #expect(AWSTimestamp.dateStamp(suiteDate) == "20150830")
        #expect(AWSTimestamp.parse("20150830T123600Z") == suiteDate)
        #expect(AWSTimestamp.parse("20000229T000000Z") == Date(timeIntervalSince1970: 951_782_400))
        for bad in ["", "20150830T123600", "20150830 123600Z", "2015083OT123600Z", "20230229T000000Z", "19000229T000000Z",
                    "20231301T000000Z", "20230001T000000Z", "20231232T000000Z", "20231231T240000Z", "20231231T236000Z",
                    "20231231T235960Z", "+0150830T123600Z"] {
            #expect(AWSTimestamp.parse(bad) == nil, "\(bad)")
        }
        // Every day over several years survives the round trip.
        var t: TimeInterval = 946_684_800 - 86_400 * 400
        while t < 946_684_800 + 86_400 * 1200 {
            let date = Date(timeIntervalSince1970: t + 45_296)
            #expect(AWSTimestamp.parse(AWSTimestamp.format(date)) == date)
            t += 86_400
        }
    }

    @Test func constantTimeComparison() {
        #expect(constantTimeEquals("abc", "abc"))
        #expect(!constantTimeEquals("abc", "abd"))
        #expect(!constantTimeEquals("abc", "abcd"))
        #expect(constantTimeEquals("", ""))
    }
}

extension SigV4Request {
    var withoutAuthorization: SigV4Request {
        var copy = self
        copy.headers.removeAll { $0.name.lowercased() == "authorization" }
        return copy
    }
}
