import Foundation
import Yams

/// A validated configuration and the credentials of every auth entry.
public struct LoadedConfiguration: Sendable, Hashable {
    public var configuration: ConciergeConfiguration
    /// By proxy name, in `auth` order.
    public var credentials: [String: [DatabaseCredential]]
    /// The admin API's bearer token, read from its reference (`env:NAME`, `file:PATH`) if it is one.
    public var adminToken: String?
    /// Secrets Manager secrets still to fetch (the server does, then calls `completing`).
    public var pendingSecrets: [PendingSecret] = []
    /// `iam.identities`: access key id → secret access key (read from their references).
    public var iamSecretKeys: [String: String] = [:]
    /// Credentials for Secrets Manager: from `secrets_manager`, else the AWS_* environment.
    public var secretsManagerCredentials: AWSKeyPair?

    /// An auth entry whose secret lives in Secrets Manager.
    public struct PendingSecret: Sendable, Hashable {
        public var proxy: String
        public var authIndex: Int
        public var keyPath: String
        public var arn: String
    }

    /// An AWS access key (the secret part never printed).
    public struct AWSKeyPair: Sendable, Hashable, CustomStringConvertible {
        public var accessKeyID: String
        public var secretAccessKey: String
        public var sessionToken: String?
        public var description: String { "AWSKeyPair(\(accessKeyID), secret redacted)" }

        public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
            self.accessKeyID = accessKeyID
            self.secretAccessKey = secretAccessKey
            self.sessionToken = sessionToken
        }
    }

    /// With the fetched Secrets Manager secrets filled in, in auth-entry order; refuses two auth
    /// entries of a proxy with the same username, as for other secrets.
    public func completing(with fetched: [PendingSecret: DatabaseCredential]) throws(ConfigurationError) -> LoadedConfiguration {
        var result = self
        var issues: [ConfigurationIssue] = []
        for pending in pendingSecrets.sorted(by: { ($0.proxy, $0.authIndex) < ($1.proxy, $1.authIndex) }) {
            guard let credential = fetched[pending] else {
                issues.append(ConfigurationIssue(
                    keyPath: pending.keyPath, value: pending.arn, expectation: "a secret Secrets Manager returns",
                    message: "\(pending.arn): not fetched"))
                continue
            }
            var list = result.credentials[pending.proxy] ?? []
            if list.contains(where: { $0.username == credential.username }) {
                issues.append(ConfigurationIssue(
                    keyPath: pending.keyPath, value: pending.arn, expectation: "a different database user per auth entry",
                    message: "\(pending.arn): username \(renderText(credential.username, forceQuotes: true)) is already used by another auth entry"))
                continue
            }
            list.insert(credential, at: min(pending.authIndex, list.count))
            result.credentials[pending.proxy] = list
        }
        if !issues.isEmpty { throw ConfigurationError(issues: issues) }
        result.pendingSecrets = []
        return result
    }

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
        var loaded = LoadedConfiguration(configuration: configuration, credentials: credentials, adminToken: adminToken)
        for (p, proxy) in configuration.proxies.enumerated() {
            for (a, auth) in proxy.auth.enumerated() {
                if case .secretsManager(let arn) = auth.secret {
                    loaded.pendingSecrets.append(LoadedConfiguration.PendingSecret(
                        proxy: proxy.name, authIndex: a, keyPath: "proxies[\(p)].auth[\(a)].secret_arn", arn: arn))
                }
            }
            if let tls = proxy.tls {
                checkPEM(tls.certificateFile, kind: "CERTIFICATE", keyPath: "proxies[\(p)].tls.certificate_file", issues: &issues)
                checkPEM(tls.privateKeyFile, kind: "PRIVATE KEY", keyPath: "proxies[\(p)].tls.private_key_file", issues: &issues)
            }
            if let ca = proxy.targetGroup.tls.caFile {
                checkPEM(ca, kind: "CERTIFICATE", keyPath: "proxies[\(p)].target_group.tls.ca_file", issues: &issues)
            }
        }
        if let iam = configuration.iam {
            for (i, identity) in iam.identities.enumerated() where !isCovered("iam.identities[\(i)]", by: issues) {
                let keyPath = "iam.identities[\(i)].secret_access_key"
                if let secret = readReference(identity.secretAccessKeyReference, keyPath: keyPath, baseDirectory: baseDirectory,
                                              environment: environment, issues: &issues) {
                    loaded.iamSecretKeys[identity.accessKeyID] = secret
                }
                if (try? JSONSerialization.jsonObject(with: Data(identity.policy.utf8))) as? [String: Any] == nil {
                    issues.append(ConfigurationIssue(
                        keyPath: "iam.identities[\(i)].policy", value: nil, expectation: "an IAM policy document (a JSON object)",
                        message: "the policy is not a JSON object (expected: an IAM policy document, as JSON text or a YAML mapping)"))
                }
            }
        }
        if !loaded.pendingSecrets.isEmpty {
            let sm = configuration.secretsManager
            let accessKey = sm?.accessKeyID ?? environment["AWS_ACCESS_KEY_ID"]
            var secretKey: String?
            if let reference = sm?.secretAccessKeyReference {
                secretKey = readReference(reference, keyPath: "secrets_manager.secret_access_key", baseDirectory: baseDirectory,
                                          environment: environment, issues: &issues)
            } else {
                secretKey = environment["AWS_SECRET_ACCESS_KEY"]
            }
            if let accessKey, let secretKey, !accessKey.isEmpty, !secretKey.isEmpty {
                loaded.secretsManagerCredentials = LoadedConfiguration.AWSKeyPair(
                    accessKeyID: accessKey, secretAccessKey: secretKey,
                    sessionToken: sm?.accessKeyID == nil ? environment["AWS_SESSION_TOKEN"] : nil)
            } else if !isCovered("secrets_manager", by: issues) {
                issues.append(ConfigurationIssue(
                    keyPath: "secrets_manager", value: nil, expectation: "AWS credentials",
                    message: "Secrets Manager secrets need credentials: secrets_manager.access_key_id and secret_access_key, "
                        + "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"))
            }
        }
        if !issues.isEmpty { throw ConfigurationError(issues: issues) }
        return loaded
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
        if let excess = NestingGuard.firstExcess(in: yaml) {
            // Refused before the parser recurses into it (see NestingGuard).
            return (empty, [ConfigurationIssue(
                keyPath: "", value: nil, expectation: "YAML nested at most \(NestingGuard.maximumDepth) levels deep",
                message: "malformed YAML at line \(excess.line), column \(excess.column): collections nested more than "
                    + "\(NestingGuard.maximumDepth) levels deep (allowed: at most \(NestingGuard.maximumDepth))",
                line: excess.line, column: excess.column)])
        }
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
        let budget = ExpansionGuard.nodeBudget(forTextOfLength: yaml.utf8.count)
        if ExpansionGuard.exceeds(root, budget: budget) {
            return (empty, [ConfigurationIssue(
                keyPath: "", value: nil, expectation: "YAML whose aliases expand to at most \(budget) nodes",
                message: "malformed YAML: its aliases expand to more than \(budget) nodes (allowed: at most ten per byte of the file, "
                    + "plus 1000)")])
        }
        var decoder = ConfigurationDecoder(baseDirectory: baseDirectory)
        let configuration = decoder.decodeRoot(root)
        var issues = decoder.issues
        // A value that failed to decode was replaced by a placeholder: don't report it a second time.
        let parseIssues = issues
        let unknownEngines = Set(configuration.proxies.indices.filter { index in
            parseIssues.contains { $0.keyPath == "proxies[\(index)].engine_family" }
        })
        for issue in ConfigurationValidator.validate(configuration, proxiesWithUnknownEngine: unknownEngines)
        where !isCovered(issue.keyPath, by: parseIssues) {
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
                if case .secretsManager = auth.secret { continue }  // fetched by the server
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

    /// A file that must exist and hold PEM data of `kind` (its content never echoed).
    static func checkPEM(_ path: String, kind: String, keyPath: String, issues: inout [ConfigurationIssue]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            issues.append(ConfigurationIssue(
                keyPath: keyPath, value: path, expectation: "a readable PEM file",
                message: "\(path): the file does not exist or cannot be read"))
            return
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.contains("-----BEGIN"), text.contains(kind) else {
            issues.append(ConfigurationIssue(
                keyPath: keyPath, value: path, expectation: "a PEM file with a \(kind)",
                message: "\(path): no PEM \(kind) in the file"))
            return
        }
    }

    /// A raw secret value (not JSON) from `env:NAME` or `file:PATH`, trimmed; nil (with an issue)
    /// when it cannot be read. The value is never echoed.
    static func readReference(
        _ reference: String, keyPath: String, baseDirectory: String, environment: [String: String],
        issues: inout [ConfigurationIssue]
    ) -> String? {
        var value: String?
        if reference.hasPrefix("env:") {
            value = environment[String(reference.dropFirst(4))]
            if value == nil {
                issues.append(ConfigurationIssue(
                    keyPath: keyPath, value: reference, expectation: "a set environment variable",
                    message: "\(reference): the environment variable is not set"))
                return nil
            }
        } else if reference.hasPrefix("file:") {
            let path = SecretReference.resolvePath(String(reference.dropFirst(5)), against: baseDirectory)
            guard let data = FileManager.default.contents(atPath: path), data.count <= SecretLoader.maximumSize else {
                issues.append(ConfigurationIssue(
                    keyPath: keyPath, value: reference, expectation: "a readable file",
                    message: "file:\(path): the file cannot be read (or is over 1 MiB)"))
                return nil
            }
            value = String(decoding: data, as: UTF8.self)
        } else {
            return nil  // reported by validation
        }
        let trimmed = value!.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty {
            issues.append(ConfigurationIssue(
                keyPath: keyPath, value: reference, expectation: "a non-empty value", message: "\(reference): the value is empty"))
            return nil
        }
        return trimmed
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
