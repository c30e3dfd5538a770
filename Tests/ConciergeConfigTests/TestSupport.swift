import Foundation
import Testing
@testable import ConciergeConfig

/// A temporary directory removed when the value is released.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.path + "/concierge-config-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    @discardableResult
    func write(_ relativePath: String, _ contents: String) throws -> String {
        let full = path + "/" + relativePath
        let directory = (full as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try contents.write(toFile: full, atomically: true, encoding: .utf8)
        return full
    }
}

let appSecretJSON = #"{"username": "app", "password": "s3cr3t-app-pw", "host": "db", "port": 5432, "engine": "postgres"}"#
let reportingSecretJSON = #"{"username": "reporting", "password": "s3cr3t-reporting-pw"}"#

/// A valid minimal configuration using an env secret.
let minimalYAML = """
    proxies:
      - name: app
        engine_family: POSTGRESQL
        listen: "0.0.0.0:5432"
        auth:
          - secret_arn: "env:APP_SECRET"
        target_group:
          targets:
            - endpoint: "10.0.0.11:5432"
    """

let minimalEnvironment = ["APP_SECRET": appSecretJSON]

/// Parses `yaml` expecting failure; returns the error.
func expectFailure(
    _ yaml: String, baseDirectory: String = "/nonexistent", environment: [String: String] = minimalEnvironment,
    sourceLocation: SourceLocation = #_sourceLocation
) -> ConfigurationError {
    do {
        let loaded = try ConfigurationLoader.parse(yaml: yaml, baseDirectory: baseDirectory, environment: environment)
        Issue.record("expected a configuration error, got \(loaded.configuration)", sourceLocation: sourceLocation)
        return ConfigurationError(issues: [])
    } catch {
        return error
    }
}

/// Asserts the error has an issue whose description is exactly `line`.
func expectIssue(_ error: ConfigurationError, _ line: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(error.issues.contains { $0.description == line },
            "missing issue: \(line)\nactual:\n\(error.description)", sourceLocation: sourceLocation)
}

/// Replaces `old` with `new` in the minimal YAML (which must contain `old`).
func minimal(replacing old: String, with new: String) -> String {
    precondition(minimalYAML.contains(old), "minimal YAML lacks \(old)")
    return minimalYAML.replacingOccurrences(of: old, with: new)
}
