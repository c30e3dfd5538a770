import ConciergeJSON
import Foundation

/// One problem found in a configuration.
public struct ConfigurationIssue: Sendable, Hashable, CustomStringConvertible {
    /// Where: `proxies[0].target_group.connection_pool_config.max_connections_percent`; "" for the whole document.
    public var keyPath: String
    /// The offending value rendered as text (`nil` when the key is missing or the problem is not about one value).
    /// Never a secret's content.
    public var value: String?
    /// What was expected, e.g. `an integer in 1...100`.
    public var expectation: String
    /// The full message after the key path, e.g. `150 is out of range (allowed: 1...100)`.
    public var message: String
    /// Position in the YAML text (1-based), when known.
    public var line: Int?
    public var column: Int?

    public init(
        keyPath: String, value: String?, expectation: String, message: String,
        line: Int? = nil, column: Int? = nil
    ) {
        self.keyPath = keyPath
        self.value = value
        self.expectation = expectation
        self.message = message
        self.line = line
        self.column = column
    }

    /// `keyPath: message` (just the message for document-level problems).
    public var description: String {
        keyPath.isEmpty ? message : "\(keyPath): \(message)"
    }
}

/// Every problem found while loading a configuration; nothing starts half-configured.
public struct ConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    public var issues: [ConfigurationIssue]

    public init(issues: [ConfigurationIssue]) {
        self.issues = issues
    }

    /// One line per issue.
    public var description: String {
        issues.map(\.description).joined(separator: "\n")
    }

    /// The issues at exactly this key path.
    public func issues(at keyPath: String) -> [ConfigurationIssue] {
        issues.filter { $0.keyPath == keyPath }
    }
}

// MARK: - Issue constructors (shared by decoding and validation)

extension ConfigurationIssue {
    static func outOfRange(_ keyPath: String, _ value: Int, _ range: ClosedRange<Int>) -> ConfigurationIssue {
        outOfRange(keyPath, String(value), range)
    }

    static func outOfRange(_ keyPath: String, _ value: String, _ range: ClosedRange<Int>) -> ConfigurationIssue {
        ConfigurationIssue(
            keyPath: keyPath, value: value, expectation: "an integer in \(range.rendered)",
            message: "\(value) is out of range (allowed: \(range.rendered))")
    }

    static func invalidEnum(_ keyPath: String, _ value: String, allowed: [String]) -> ConfigurationIssue {
        let list = allowed.joined(separator: ", ")
        return ConfigurationIssue(
            keyPath: keyPath, value: value, expectation: "one of \(list)",
            message: "\(renderText(value)) is not a valid value (allowed: \(list))")
    }
}

extension ClosedRange where Bound == Int {
    var rendered: String { "\(lowerBound)...\(upperBound)" }
}

/// Renders a string value for a message: as is when it is plain, JSON-quoted when empty, padded,
/// or containing control characters or quotes; truncated when long.
func renderText(_ text: String, forceQuotes: Bool = false) -> String {
    var text = text
    if text.count > 80 { text = String(text.prefix(77)) + "..." }
    let needsQuotes = forceQuotes || text.isEmpty || text.first == " " || text.last == " "
        || text.unicodeScalars.contains { $0.value < 0x20 || $0 == "\"" || $0 == "\\" || $0.value == 0x7F }
    return needsQuotes ? quoted(text) : text
}

/// A double-quoted string valid in both JSON and YAML: YAML also wants DEL, the C1 controls,
/// the line and paragraph separators and the byte-order mark escaped.
func quoted(_ text: String) -> String {
    var out = "\""
    JSON.appendEscaped(text, to: &out, yamlSafe)
    return out + "\""
}

private let yamlSafe = JSON.Escaping(shortBackspaceAndFormFeed: false, uppercaseHex: true) { scalar in
    scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value)
        || scalar.value == 0x2028 || scalar.value == 0x2029 || scalar.value == 0xFEFF
}

extension ConfigurationError: LocalizedError {
    public var errorDescription: String? { description }
}

extension SecretError: LocalizedError {
    public var errorDescription: String? { description }
}
