import Foundation
import Testing

@testable import ConciergeAWS
import ConciergeJSON

/// Against a moto server (`moto_server -p PORT`), when `CONCIERGE_MOTO_URL` is set, e.g.
/// `http://127.0.0.1:5000`. Optional:
/// - `CONCIERGE_MOTO_ACCESS_KEY_ID` / `CONCIERGE_MOTO_SECRET_ACCESS_KEY` (default `testing`): with
///   moto's authentication on (`INITIAL_NO_AUTH_ACTION_COUNT`), the key of an IAM user made in moto;
/// - `CONCIERGE_MOTO_AUTH=1`: moto checks signatures, so a wrong secret must be refused;
/// - `CONCIERGE_MOTO_SECRET_ID` / `CONCIERGE_MOTO_SECRET_VALUE`: a secret made with boto3, read back;
/// - `CONCIERGE_MOTO_REGION` (default `us-east-1`).
enum Moto {
    static let environment = ProcessInfo.processInfo.environment
    static let url = environment["CONCIERGE_MOTO_URL"].flatMap { $0.isEmpty ? nil : $0 }
    static let enabled = url != nil
    static let region = environment["CONCIERGE_MOTO_REGION"] ?? "us-east-1"
    static let credentials = AWSCredentials(
        accessKeyID: environment["CONCIERGE_MOTO_ACCESS_KEY_ID"] ?? "testing",
        secretAccessKey: environment["CONCIERGE_MOTO_SECRET_ACCESS_KEY"] ?? "testing")

    static func client(credentials: AWSCredentials = credentials, region: String? = Moto.region) throws(SecretsManagerError) -> SecretsManagerClient {
        try SecretsManagerClient(credentials: credentials, region: region, endpoint: url!)
    }

    /// CreateSecret (not part of the client's API); returns the ARN.
    static func createSecret(name: String, field: String, value: String) async throws -> String {
        let body = "{\"Name\": \(JSON.quote(name)), \(JSON.quote(field)): \(JSON.quote(value))}"
        let response = try await client().call(target: "secretsmanager.CreateSecret", body: Array(body.utf8), region: region)
        let json = try JSON.parse(response.body)
        guard response.status == 200, let arn = json["ARN"]?.stringValue else {
            throw SecretsManagerError.malformedResponse("CreateSecret answered \(response.status)")
        }
        return arn
    }

    static func uniqueName(_ prefix: String) -> String {
        "concierge-test/\(prefix)-\(UInt64.random(in: 0...UInt64.max))"
    }
}

@Suite("Secrets Manager against moto", .enabled(if: Moto.enabled, "set CONCIERGE_MOTO_URL to run"))
struct MotoIntegrationTests {
    @Test("a secret made with CreateSecret reads back by ARN and by name")
    func createAndGet() async throws {
        let name = Moto.uniqueName("string")
        let value = #"{"username":"app","password":"p@ss wörd \"quoted\" \\ 🔑"}"#
        let arn = try await Moto.createSecret(name: name, field: "SecretString", value: value)
        #expect(SecretsManagerClient.region(fromARN: arn) == Moto.region)
        // By ARN, the region taken from it.
        #expect(try await Moto.client(region: nil).getSecretValue(secretID: arn) == value)
        // By name, with the region configured.
        #expect(try await Moto.client().getSecretValue(secretID: name) == value)
        print("moto: read \(arn) back (\(value.utf8.count) bytes)")
    }

    @Test("a missing secret is ResourceNotFoundException")
    func notFound() async throws {
        let name = Moto.uniqueName("missing")
        do {
            _ = try await Moto.client().getSecretValue(secretID: name)
            Issue.record("a missing secret was found")
        } catch {
            guard case .service(let status, let type, let message) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(type == "ResourceNotFoundException")
            #expect((400..<500).contains(status))
            print("moto: \(error.description) (status \(status), message \(message))")
        }
    }

    @Test("a binary secret is refused as unsupported")
    func binary() async throws {
        let name = Moto.uniqueName("binary")
        let arn = try await Moto.createSecret(name: name, field: "SecretBinary", value: "AAECAwQ=")
        do {
            _ = try await Moto.client().getSecretValue(secretID: arn)
            Issue.record("a binary secret was returned")
        } catch {
            #expect(error == .binarySecretUnsupported(secretID: arn))
        }
    }

    @Test("a secret made with boto3 reads back", .enabled(if: Moto.environment["CONCIERGE_MOTO_SECRET_ID"] != nil))
    func boto3Secret() async throws {
        let id = Moto.environment["CONCIERGE_MOTO_SECRET_ID"]!
        #expect(try await Moto.client().getSecretValue(secretID: id) == Moto.environment["CONCIERGE_MOTO_SECRET_VALUE"])
    }

    @Test("with moto checking signatures, a wrong secret key is refused", .enabled(if: Moto.environment["CONCIERGE_MOTO_AUTH"] == "1"))
    func wrongSecretKey() async throws {
        var wrong = Moto.credentials
        wrong.secretAccessKey = "not-the-secret"
        do {
            _ = try await Moto.client(credentials: wrong).getSecretValue(secretID: Moto.uniqueName("any"))
            Issue.record("a wrong signature was accepted")
        } catch {
            guard case .service(let status, let type, _) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(status == 403)
            #expect(type == "SignatureDoesNotMatch")
            #expect(!error.description.contains("not-the-secret"))
            print("moto: \(error.description)")
        }
    }
}
