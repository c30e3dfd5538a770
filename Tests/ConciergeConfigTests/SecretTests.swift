import Foundation
import Testing
@testable import ConciergeConfig

@Suite("Secrets")
struct SecretTests {
    @Test func loadsFromEnvironment() throws {
        let credential = try SecretLoader.load(.env(name: "S"), environment: ["S": appSecretJSON])
        #expect(credential == DatabaseCredential(username: "app", password: "s3cr3t-app-pw"))
    }

    @Test func loadsFromFile() throws {
        let dir = try TemporaryDirectory()
        let path = try dir.write("s.json", reportingSecretJSON)
        #expect(try SecretLoader.load(.file(path: path), environment: [:]).username == "reporting")
    }

    @Test func parsesReferences() throws {
        #expect(try SecretReference.parse("file:a/b.json", baseDirectory: "/etc/c").get() == .file(path: "/etc/c/a/b.json"))
        #expect(try SecretReference.parse("file:/abs/b.json", baseDirectory: "/etc/c").get() == .file(path: "/abs/b.json"))
        #expect(try SecretReference.parse("file:../x//./y.json", baseDirectory: "/etc/c/").get() == .file(path: "/etc/x/y.json"))
        #expect(try SecretReference.parse("env:DB_SECRET_1", baseDirectory: "/").get() == .env(name: "DB_SECRET_1"))
        #expect(SecretReference.file(path: "/a").description == "file:/a")
        func reason(_ text: String) -> String? {
            if case .failure(let error) = SecretReference.parse(text, baseDirectory: "/") { return error.reason }
            return nil
        }
        #expect(reason("file:") == "missing path after file:")
        #expect(reason("env:") == "missing variable name after env:")
        #expect(reason("env:1BAD")?.contains("not a valid environment variable name") == true)
        #expect(reason("arn:aws:secretsmanager:us-east-1:1:secret:x")?.hasPrefix("not a Secrets Manager secret ARN") == true)
        #expect(reason("arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbC") == nil)
        #expect(reason("arn:aws:s3:::bucket")?.hasPrefix("not a Secrets Manager ARN") == true)
        #expect(reason("secrets/app.json")?.hasPrefix("not a secret reference") == true)
    }

    static let cases: [(json: String, error: SecretError)] = [
        ("not json at all s3cr3t", .notJSON),
        (#"["s3cr3t"]"#, .notAnObject),
        (#"{"password": "s3cr3t"}"#, .missingUsername),
        (#"{"username": "app", "pass": "s3cr3t"}"#, .missingPassword),
        (#"{"username": 42, "password": "s3cr3t"}"#, .wrongType(key: "username", found: "a number")),
        (#"{"username": "app", "password": true}"#, .wrongType(key: "password", found: "a boolean")),
        (#"{"username": "app", "password": null}"#, .wrongType(key: "password", found: "null")),
        (#"{"username": "", "password": "s3cr3t"}"#, .emptyValue(key: "username")),
    ]

    @Test(arguments: 0..<cases.count)
    func malformedSecrets(index: Int) {
        let (json, expected) = Self.cases[index]
        #expect(throws: expected) { try SecretLoader.load(.env(name: "S"), environment: ["S": json]) }
        #expect(!expected.description.contains("s3cr3t"))
    }

    @Test func secretErrorsInConfigurationNameTheKeyPathAndReference() throws {
        let dir = try TemporaryDirectory()
        try dir.write("bad.json", #"{"username": "app", "password": 12345678}"#)
        try dir.write("notjson.json", "password=hunter2-very-secret")
        try dir.write("dup.json", #"{"username": "app", "password": "other-pw"}"#)
        try FileManager.default.createDirectory(atPath: dir.path + "/adir", withIntermediateDirectories: true)
        let yaml = minimal(replacing: "      - secret_arn: \"env:APP_SECRET\"\n", with: """
                  - secret_arn: "env:APP_SECRET"
                  - secret_arn: "file:missing.json"
                  - secret_arn: "file:bad.json"
                  - secret_arn: "file:notjson.json"
                  - secret_arn: "env:NOPE"
                  - secret_arn: "file:dup.json"
                  - secret_arn: "file:adir"

            """)
        let error = expectFailure(yaml, baseDirectory: dir.path)
        expectIssue(error, "proxies[0].auth[1].secret_arn: file:missing.json: secret file not found: \(dir.path)/missing.json")
        expectIssue(error, "proxies[0].auth[2].secret_arn: file:bad.json: the secret's password is a number, expected a string")
        expectIssue(error, "proxies[0].auth[3].secret_arn: file:notjson.json: the secret is not valid JSON (expected an object with string keys username and password)")
        expectIssue(error, "proxies[0].auth[4].secret_arn: env:NOPE: environment variable NOPE is not set")
        expectIssue(error, #"proxies[0].auth[5].secret_arn: file:dup.json: username "app" is already used by proxies[0].auth[0]"#)
        expectIssue(error, "proxies[0].auth[6].secret_arn: file:adir: secret file \(dir.path)/adir is unreadable: it is a directory")
        #expect(error.issues.count == 6, "\(error)")
        #expect(error.issues(at: "proxies[0].auth[1].secret_arn")[0].value == "file:missing.json")
        for secret in ["s3cr3t", "12345678", "hunter2", "other-pw"] {
            #expect(!error.description.contains(secret))
            #expect(!String(reflecting: error).contains(secret))
        }
    }

    @Test func unreadableSecretFile() throws {
        guard getuid() != 0 else { return }  // root reads anything
        let dir = try TemporaryDirectory()
        let path = try dir.write("locked.json", appSecretJSON)
        try FileManager.default.setAttributes([.posixPermissions: 0o000], ofItemAtPath: path)
        #expect(throws: SecretError.fileUnreadable(path: path, reason: "permission denied")) {
            try SecretLoader.load(.file(path: path), environment: [:])
        }
    }

    @Test func credentialNeverShowsThePassword() {
        let credential = DatabaseCredential(username: "app", password: "hunter2-secret")
        #expect(credential.description == "DatabaseCredential(username: app, password: <redacted>)")
        #expect(credential.debugDescription == credential.description)
        #expect(!"\(credential)".contains("hunter2"))
        #expect(!String(reflecting: credential).contains("hunter2"))
        #expect(!String(describing: [credential]).contains("hunter2"))
        var dumped = ""
        dump(credential, to: &dumped)
        #expect(!dumped.contains("hunter2"))
        #expect(dumped.contains("<redacted>"))
        #expect(Mirror(reflecting: credential).children.allSatisfy { !"\($0.value)".contains("hunter2") })
        let loaded = LoadedConfiguration(configuration: ConciergeConfiguration(proxies: []), credentials: ["app": [credential]])
        #expect(!String(describing: loaded).contains("hunter2"))
        #expect(!String(reflecting: loaded).contains("hunter2"))
        var dumpedLoaded = ""
        dump(loaded, to: &dumpedLoaded)
        #expect(!dumpedLoaded.contains("hunter2"))
        #expect(credential.password == "hunter2-secret")
    }

    @Test func loadCredentialsForAModel() throws {
        let config = try ConfigurationLoader.parseConfiguration(yaml: minimalYAML, baseDirectory: "/x")
        #expect(try ConfigurationLoader.loadCredentials(for: config, environment: minimalEnvironment)
            == ["app": [DatabaseCredential(username: "app", password: "s3cr3t-app-pw")]])
        #expect(throws: ConfigurationError.self) {
            try ConfigurationLoader.loadCredentials(for: config, environment: [:])
        }
    }
}
