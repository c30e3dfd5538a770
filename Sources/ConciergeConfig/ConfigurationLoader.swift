import Foundation
import Yams

/// A validated configuration and the credentials of every auth entry.
public struct LoadedConfiguration: Sendable, Hashable {
    public var configuration: ConciergeConfiguration
    /// By proxy name, in `auth` order.
    public var credentials: [String: [DatabaseCredential]]
    /// The admin API's bearer token, read from its reference (`env:NAME`, `file:PATH`) if it is one.
    public var adminToken: String?

    public init(
        configuration: ConciergeConfiguration, credentials: [String: [DatabaseCredential]], adminToken: String? = nil
    ) {
        self.configuration = configuration
        self.credentials = credentials
        self.adminToken = adminToken
    }
}

/// Loads the YAML configuration: parse, validate, read every secret. Any problem fails the whole load.
public enum ConfigurationLoader {
    /// Loads the file at `path`; relative `file:` secrets are resolved against the file's directory.
    public static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigurationError) -> LoadedConfiguration {
        let absolute = SecretReference.resolvePath(path, against: FileManager.default.currentDirectoryPath)
        let text = try readConfigurationFile(absolute)
        let baseDirectory = (absolute as NSString).deletingLastPathComponent
        return try parse(yaml: text, baseDirectory: baseDirectory, environment: environment)
    }

    /// Parses and validates YAML text and reads every secret.
    public static func parse(
        yaml: String, baseDirectory: String, environment: [String: String]
    ) throws(ConfigurationError) -> LoadedConfiguration {
        let (configuration, parseIssues) = decodeAndValidate(yaml: yaml, baseDirectory: baseDirectory)
        var issues = parseIssues
        let credentials = readCredentials(
            configuration, environment: environment,
            skipping: { keyPath in isCovered(keyPath, by: parseIssues) }, issues: &issues)
        var adminToken: String?
        if let token = configuration.admin?.token, !isCovered("admin.token", by: parseIssues) {
            adminToken = readAdminToken(token, baseDirectory: baseDirectory, environment: environment, issues: &issues)
        }
        if !issues.isEmpty { throw ConfigurationError(issues: issues) }
        return LoadedConfiguration(configuration: configuration, credentials: credentials, adminToken: adminToken)
    }

    /// Parses and validates YAML text without reading any secret (e.g. to check a file on another host).
    public static func parseConfiguration(yaml: String, baseDirectory: String) throws(ConfigurationError)
        -> ConciergeConfiguration
    {
        let (configuration, issues) = decodeAndValidate(yaml: yaml, baseDirectory: baseDirectory)
        if !issues.isEmpty { throw ConfigurationError(issues: issues) }
        return configuration
    }

    /// Reads the secret of every auth entry of a validated configuration (also used to re-read rotated
    /// secrets). Refuses two entries of one proxy with the same username.
    public static func loadCredentials(
        for configuration: ConciergeConfiguration, environment: [String: String]
    ) throws(ConfigurationError) -> [String: [DatabaseCredential]] {
        var issues: [ConfigurationIssue] = []
        let credentials = readCredentials(configuration, environment: environment, skipping: { _ in false },
                                          issues: &issues)
        if !issues.isEmpty { throw ConfigurationError(issues: issues) }
        return credentials
    }

    // MARK: - Implementation

    static func decodeAndValidate(yaml: String, baseDirectory: String) -> (ConciergeConfiguration, [ConfigurationIssue]) {
        let empty = ConciergeConfiguration(proxies: [])
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            return (empty, [malformed(error, yaml: yaml)])
        } catch {
            return (empty, [ConfigurationIssue(
                keyPath: "", value: nil, expectation: "valid YAML", message: "malformed YAML: \(error)")])
        }
        guard let root, !ConfigurationDecoder.isNull(root) else {
            return (empty, [ConfigurationIssue(
                keyPath: "", value: nil, expectation: "a mapping with at least the key proxies",
                message: "the configuration is empty (expected: a mapping with at least the key proxies)")])
        }
        var decoder = ConfigurationDecoder(baseDirectory: baseDirectory)
        let configuration = decoder.decodeRoot(root)
        var issues = decoder.issues
        // A value that failed to decode was replaced by a placeholder: don't report it a second time.
        let parseIssues = issues
        for issue in ConfigurationValidator.validate(configuration) where !isCovered(issue.keyPath, by: parseIssues) {
            issues.append(issue)
        }
        return (configuration, issues)
    }

    /// Whether `keyPath` is at or under the key path of one of `issues`.
    static func isCovered(_ keyPath: String, by issues: [ConfigurationIssue]) -> Bool {
        issues.contains { issue in
            let p = issue.keyPath
            if p.isEmpty { return false }
            return keyPath == p || keyPath.hasPrefix(p + ".") || keyPath.hasPrefix(p + "[")
        }
    }

    static func readCredentials(
        _ configuration: ConciergeConfiguration, environment: [String: String],
        skipping skip: (String) -> Bool, issues: inout [ConfigurationIssue]
    ) -> [String: [DatabaseCredential]] {
        var result: [String: [DatabaseCredential]] = [:]
        for (p, proxy) in configuration.proxies.enumerated() {
            var credentials: [DatabaseCredential] = []
            var usernames: [String: String] = [:]
            for (a, auth) in proxy.auth.enumerated() {
                let keyPath = "proxies[\(p)].auth[\(a)].secret_arn"
                if skip(keyPath) { continue }
                let written = auth.secretARN.isEmpty ? auth.secret.description : auth.secretARN
                do {
                    let credential = try SecretLoader.load(auth.secret, environment: environment)
                    if let first = usernames[credential.username] {
                        issues.append(ConfigurationIssue(
                            keyPath: keyPath, value: written, expectation: "a different database user per auth entry",
                            message: "\(renderText(written)): username \(renderText(credential.username, forceQuotes: true)) "
                                + "is already used by \(first)"))
                        continue
                    }
                    usernames[credential.username] = "proxies[\(p)].auth[\(a)]"
                    credentials.append(credential)
                } catch {
                    issues.append(ConfigurationIssue(
                        keyPath: keyPath, value: written,
                        expectation: "a readable JSON secret with string keys username and password",
                        message: "\(renderText(written)): \(error.description)"))
                }
            }
            result[proxy.name] = credentials
        }
        return result
    }

    /// `env:NAME` and `file:PATH` are read (the file's content, without surrounding whitespace);
    /// anything else is the token itself. The token is never echoed in an issue.
    static func readAdminToken(
        _ token: String, baseDirectory: String, environment: [String: String], issues: inout [ConfigurationIssue]
    ) -> String? {
        func problem(_ message: String) -> String? {
            issues.append(ConfigurationIssue(
                keyPath: "admin.token", value: nil, expectation: "a non-empty token, env:NAME or file:PATH",
                message: message))
            return nil
        }
        let value: String
        if token.hasPrefix("env:") {
            let name = String(token.dropFirst(4))
            guard let found = environment[name] else {
                return problem("env:\(name): the environment variable is not set")
            }
            value = found
        } else if token.hasPrefix("file:") {
            let path = SecretReference.resolvePath(String(token.dropFirst(5)), against: baseDirectory)
            guard let data = FileManager.default.contents(atPath: path), data.count <= SecretLoader.maximumSize,
                  let text = String(data: data, encoding: .utf8)
            else {
                return problem("file:\(path): the file cannot be read (or is over 1 MiB, or not UTF-8)")
            }
            value = text
        } else {
            value = token
        }
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty { return problem("the token is empty") }
        return trimmed
    }

    static func readConfigurationFile(_ path: String) throws(ConfigurationError) -> String {
        func fail(_ reason: String) -> ConfigurationError {
            ConfigurationError(issues: [ConfigurationIssue(
                keyPath: "", value: path, expectation: "a readable YAML file",
                message: "cannot read the configuration file \(path): \(reason)")])
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw fail("file not found") }
        if isDirectory.boolValue { throw fail("it is a directory") }
        guard let data = FileManager.default.contents(atPath: path) else { throw fail("permission denied or read error") }
        guard let text = String(data: data, encoding: .utf8) else { throw fail("not valid UTF-8 text") }
        return text
    }

    static func malformed(_ error: YamlError, yaml: String) -> ConfigurationIssue {
        func issue(_ problem: String, _ context: YamlError.Context?, line: Int?, column: Int?) -> ConfigurationIssue {
            var message = "malformed YAML"
            if let line, let column { message += " at line \(line), column \(column)" }
            message += ": \(problem)"
            if let context {
                message += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
            }
            return ConfigurationIssue(keyPath: "", value: nil, expectation: "valid YAML", message: message,
                                      line: line, column: column)
        }
        switch error {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _),
            let .composer(context, problem, mark, _):
            return issue(problem, context, line: mark.line, column: mark.column)
        case let .reader(problem, offset, _, _):
            if let offset {
                let prefix = yaml.prefix(offset)
                let line = prefix.filter { $0 == "\n" }.count + 1
                let column = prefix.count - (prefix.lastIndex(of: "\n").map { prefix.distance(from: prefix.startIndex, to: $0) + 1 } ?? 0) + 1
                return issue(problem, nil, line: line, column: column)
            }
            return issue(problem, nil, line: nil, column: nil)
        default:
            return issue(error.description, nil, line: nil, column: nil)
        }
    }
}
