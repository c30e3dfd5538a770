import Foundation

/// Where a database user's secret lives (the resolved form of `secret_arn`).
public enum SecretReference: Sendable, Hashable, CustomStringConvertible {
    /// A JSON file; the path is absolute after resolving against the configuration file's directory.
    case file(path: String)
    /// An environment variable holding the JSON.
    case env(name: String)
    /// An AWS Secrets Manager secret (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`), fetched
    /// by the server (GetSecretValue), not by the configuration loader.
    case secretsManager(arn: String)

    /// The region of a Secrets Manager ARN.
    public var region: String? {
        guard case .secretsManager(let arn) = self else { return nil }
        let parts = arn.split(separator: ":", omittingEmptySubsequences: false)
        return parts.count > 3 ? String(parts[3]) : nil
    }

    /// `file:/abs/path` or `env:NAME`.
    public var description: String {
        switch self {
        case .file(let path): return "file:\(path)"
        case .env(let name): return "env:\(name)"
        case .secretsManager(let arn): return arn
        }
    }

    /// Why a `secret_arn` could not be understood.
    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    static let expectation = "file:PATH, env:NAME or arn:aws:secretsmanager:..."

    /// Parses `file:PATH` (relative paths resolved against `baseDirectory`), `env:NAME`, or refuses
    /// `arn:aws:secretsmanager:...` (not supported yet).
    public static func parse(_ text: String, baseDirectory: String) -> Result<SecretReference, ParseError> {
        func fail(_ reason: String) -> Result<SecretReference, ParseError> { .failure(ParseError(reason: reason)) }
        if text.hasPrefix("file:") {
            let path = String(text.dropFirst("file:".count))
            if path.isEmpty { return fail("missing path after file:") }
            if path.contains("\0") { return fail("the path contains a NUL character") }
            return .success(.file(path: resolvePath(path, against: baseDirectory)))
        }
        if text.hasPrefix("env:") {
            let name = String(text.dropFirst("env:".count))
            if name.isEmpty { return fail("missing variable name after env:") }
            let valid = name.unicodeScalars.first.map { $0.isASCIILetter || $0 == "_" } == true
                && name.unicodeScalars.allSatisfy { $0.isASCIILetter || ("0"..."9").contains($0) || $0 == "_" }
            if !valid { return fail("\(renderText(name)) is not a valid environment variable name (expected letters, digits and _, not starting with a digit)") }
            return .success(.env(name: name))
        }
        if text.hasPrefix("arn:") {
            let parts = text.split(separator: ":", maxSplits: 5, omittingEmptySubsequences: false)
            if parts.count >= 3, parts[2] == "secretsmanager" {
                // arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME
                let all = text.split(separator: ":", omittingEmptySubsequences: false)
                guard all.count >= 7, !all[3].isEmpty, all[4].count == 12,
                      all[4].allSatisfy({ $0.isNumber }), all[5] == "secret", !all[6].isEmpty
                else {
                    return fail("not a Secrets Manager secret ARN (expected arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)")
                }
                return .success(.secretsManager(arn: text))
            }
            return fail("not a Secrets Manager ARN (expected \(expectation))")
        }
        return fail("not a secret reference (expected \(expectation))")
    }

    /// Makes `path` absolute against `baseDirectory` and removes `.` and `..` segments lexically.
    static func resolvePath(_ path: String, against baseDirectory: String) -> String {
        let joined: String
        if path.hasPrefix("/") {
            joined = path
        } else {
            var base = baseDirectory.isEmpty ? FileManager.default.currentDirectoryPath : baseDirectory
            if !base.hasPrefix("/") { base = FileManager.default.currentDirectoryPath + "/" + base }
            joined = base + "/" + path
        }
        var parts: [Substring] = []
        for segment in joined.split(separator: "/", omittingEmptySubsequences: true) {
            if segment == "." { continue }
            if segment == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(segment)
        }
        return "/" + parts.joined(separator: "/")
    }
}

/// A database user's credentials. Its description, debug description and mirror never show the password.
public struct DatabaseCredential: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// `DatabaseCredential(username: app, password: <redacted>)`.
    public var description: String { "DatabaseCredential(username: \(username), password: <redacted>)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror {
        Mirror(self, children: ["username": username, "password": "<redacted>"], displayStyle: .struct)
    }
}

/// Why a secret could not be loaded. Never includes the secret's content.
public enum SecretError: Error, Sendable, Hashable, CustomStringConvertible {
    case fileNotFound(path: String)
    case fileUnreadable(path: String, reason: String)
    case environmentVariableUnset(name: String)
    case notJSON
    case notAnObject
    case missingUsername
    case missingPassword
    /// `key` is `username` or `password`; `found` is the JSON type found (never the value).
    case wrongType(key: String, found: String)
    case emptyValue(key: String)
    /// A Secrets Manager secret: fetched by the server, not by `SecretLoader`.
    case remoteSecret

    public var description: String {
        switch self {
        case .fileNotFound(let path): return "secret file not found: \(path)"
        case .fileUnreadable(let path, let reason): return "secret file \(path) is unreadable: \(reason)"
        case .environmentVariableUnset(let name): return "environment variable \(name) is not set"
        case .notJSON: return "the secret is not valid JSON (expected an object with string keys username and password)"
        case .notAnObject: return "the secret is not a JSON object (expected an object with string keys username and password)"
        case .missingUsername: return "the secret has no username key"
        case .missingPassword: return "the secret has no password key"
        case .wrongType(let key, let found): return "the secret's \(key) is \(found), expected a string"
        case .emptyValue(let key): return "the secret's \(key) is empty"
        case .remoteSecret: return "a Secrets Manager secret is fetched by the server"
        }
    }
}

/// Reads secrets (the Secrets Manager `SecretString` JSON shape: `username`, `password`, other keys ignored).
public enum SecretLoader {
    /// Secrets larger than this are refused.
    public static let maximumSize = 1 << 20

    public static func load(_ reference: SecretReference, environment: [String: String]) throws(SecretError)
        -> DatabaseCredential
    {
        switch reference {
        case .env(let name):
            guard let value = environment[name] else { throw .environmentVariableUnset(name: name) }
            return try parse(json: Data(value.utf8))
        case .file(let path):
            return try parse(json: readFile(path))
        case .secretsManager:
            throw .remoteSecret
        }
    }

    /// Parses the JSON of a secret.
    public static func parse(json data: Data) throws(SecretError) -> DatabaseCredential {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw .notJSON  // the underlying error may quote the content: never surface it
        }
        guard let dictionary = object as? [String: Any] else { throw .notAnObject }
        let username = try string(dictionary, "username", missing: .missingUsername)
        let password = try string(dictionary, "password", missing: .missingPassword)
        return DatabaseCredential(username: username, password: password)
    }

    private static func string(_ dictionary: [String: Any], _ key: String, missing: SecretError) throws(SecretError)
        -> String
    {
        guard let raw = dictionary[key] else { throw missing }
        guard let value = raw as? String else { throw .wrongType(key: key, found: jsonTypeName(raw)) }
        if value.isEmpty { throw .emptyValue(key: key) }
        return value
    }

    private static func jsonTypeName(_ value: Any) -> String {
        switch value {
        case is NSNull: return "null"
        case is [Any]: return "an array"
        case is [String: Any]: return "an object"
        case let number as NSNumber:
            // Booleans decode as NSNumber too; tell them apart by their type encoding.
            let type = String(cString: number.objCType)
            return type == "c" || type == "B" ? "a boolean" : "a number"
        default: return "not a string"
        }
    }

    private static func readFile(_ path: String) throws(SecretError) -> Data {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw .fileNotFound(path: path)
        }
        if isDirectory.boolValue { throw .fileUnreadable(path: path, reason: "it is a directory") }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw .fileUnreadable(path: path, reason: "permission denied")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .fileUnreadable(path: path, reason: "cannot open the file")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: maximumSize + 1) ?? Data()
        } catch {
            throw .fileUnreadable(path: path, reason: "read error")
        }
        if data.count > maximumSize { throw .fileUnreadable(path: path, reason: "larger than 1 MiB") }
        return data
    }
}
