import NIOCore
import PostgresWire
import SQLClassifier

/// Session parameters the proxy carries from backend to backend, so that setting them does not
/// pin: the ones PostgreSQL reports to the client with ParameterStatus whenever they change
/// (GUC_REPORT) and that a session may set.
///
/// A client's value comes from its startup packet, then from every ParameterStatus the database
/// sends while serving it: after `SET TimeZone ...` (or RESET, or the end of a transaction that
/// ran `SET LOCAL`), PostgreSQL reports the new value, already in its canonical spelling. The
/// next backend that serves the client is brought to those values before the client's first
/// message (BackendConnection.parameterSyncSQL).
public enum TrackedParameters {
    /// Lowercased names every supported PostgreSQL version reports: used until the server's own
    /// list is known (the first login of a user and database). After that, any parameter the
    /// server reports at login and a session can set counts (`names(reportedAtLogin:)`); one it
    /// does not report keeps pinning, since its changes would go unseen.
    public static let names: Set<String> = [
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "standard_conforming_strings",
        "timezone",
    ]

    /// Reported parameters a session cannot set (read-only), or whose change pins anyway.
    public static let notCarried: Set<String> = [
        "is_superuser", "server_version", "server_encoding", "integer_datetimes", "in_hot_standby",
        "session_authorization",
    ]

    /// Whether a parameter the server reported is carried to the next backend: any it reports
    /// that a session can set.
    public static func isTracked(_ lowercasedName: String) -> Bool {
        !notCarried.contains(lowercasedName)
    }

    /// The parameters whose SET does not pin on a server that reports `reported` at login (so
    /// `default_transaction_read_only` from PostgreSQL 14 on, `scram_iterations` from 16).
    public static func names(reportedAtLogin reported: [StartupParameter]) -> Set<String> {
        var names = Self.names
        for parameter in reported {
            let name = parameter.name.lowercased()
            if isTracked(name) { names.insert(name) }
        }
        return names
    }
}

/// Parameters PostgreSQL does not report but that drivers set right after login: a lone `SET` of
/// one, outside a transaction, does not pin. The proxy reads the value from the statement and
/// keeps it once the database accepted it (no ErrorResponse before ReadyForQuery); a lone
/// statement outside a transaction block commits by itself, so it cannot be rolled back later.
/// Anywhere else (in a transaction, with other statements) such a SET still pins.
public enum SQLTrackedSettings {
    public static let names: Set<String> = [
        "extra_float_digits",  // the PostgreSQL JDBC driver
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "bytea_output",
    ]

    /// The (lowercased name, value) a classification's only statement sets, nil value for a
    /// RESET; nil when it is anything else or the value is not a single plain token.
    public static func setting(of classification: Classification) -> (name: String, value: String?)? {
        guard classification.statementCount == 1, classification.setCommands.count == 1 else { return nil }
        let command = classification.setCommands[0]
        guard command.scope == .session, names.contains(command.name) else { return nil }
        if command.isReset { return (command.name, nil) }
        guard let raw = command.value, let value = plainValue(raw) else { return nil }
        return (command.name, value)
    }

    /// `3`, `-1`, `'5s'`, `hex`: one number, word or simple quoted string, unquoted.
    public static func plainValue(_ raw: String) -> String? {
        let bytes = Array(raw.utf8)
        guard !bytes.isEmpty, bytes.count <= 64 else { return nil }
        if bytes.first == UInt8(ascii: "'") {
            guard bytes.count >= 2, bytes.last == UInt8(ascii: "'") else { return nil }
            let inner = bytes[1..<(bytes.count - 1)]
            guard !inner.contains(UInt8(ascii: "'")), !inner.contains(UInt8(ascii: "\\")) else { return nil }
            return String(decoding: inner, as: UTF8.self)
        }
        let allowed = { (b: UInt8) -> Bool in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                || b == UInt8(ascii: "_") || b == UInt8(ascii: "-") || b == UInt8(ascii: ".")
        }
        return bytes.allSatisfy(allowed) ? raw : nil
    }
}

/// What PostgreSQL reports at login for a user and database, prepared once for every login:
/// lowercased names, and each ParameterStatus message already encoded.
public final class LoginTemplate: Sendable {
    public let parameters: [StartupParameter]
    public let lowercasedNames: [String]
    /// Where each (lowercased) name is in `parameters`.
    public let indexByLowercasedName: [String: Int]

    public init(_ parameters: [StartupParameter]) {
        self.parameters = parameters
        self.lowercasedNames = parameters.map { $0.name.lowercased() }
        self.indexByLowercasedName = Dictionary(
            lowercasedNames.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        var all = ByteBuffer()
        var offsets = [0]
        for parameter in parameters {
            PGEncode.parameterStatus(name: parameter.name, value: parameter.value, into: &all)
            offsets.append(all.writerIndex)
        }
        self.encodedAll = all
        self.encodedOffsets = offsets
    }

    /// Every ParameterStatus of `parameters`, in order, in one buffer: a login writes them with
    /// one copy (or one per run between the client's own values) rather than one per parameter.
    public let encodedAll: ByteBuffer
    /// Where each parameter's message starts in `encodedAll`, and its end last.
    private let encodedOffsets: [Int]

    /// The ParameterStatus messages of `parameters[range]`, as one slice of `encodedAll`.
    public func encoded(_ range: Range<Int>) -> ByteBuffer {
        let start = encodedOffsets[range.lowerBound]
        return encodedAll.getSlice(at: start, length: encodedOffsets[range.upperBound] - start)!
    }
}
