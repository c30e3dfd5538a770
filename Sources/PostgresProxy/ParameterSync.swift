import PostgresWire

/// Why a backend connection could not be opened or used.
public enum BackendError: Error, CustomStringConvertible, Sendable, Hashable {
    /// The database refused us with an ErrorResponse (wrong database, role, password, ...).
    case server(PGErrorFields)
    /// The connection failed or broke.
    case connection(String)
    /// The database spoke in a way we do not support.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .server(let fields): return "\(fields.severity) \(fields.code): \(fields.message)"
        case .connection(let reason): return "connection failed: \(reason)"
        case .protocolViolation(let reason): return "protocol violation: \(reason)"
        }
    }
}

/// The SQL that brings a backend's session parameters from one client's values to another's.
/// Pure string building, shared by the backend machine (at lease time and on reapply) and the
/// client session (which quotes statement names with `quoteIdentifier`).
public enum ParameterSync {
    /// A value no client can ask for (startup values cannot hold a NUL): "not the baseline".
    public static let lostBaseline = "\u{0}"

    /// The statement and portal name of the proxy's own parameter resync while leased.
    public static let resyncName = "concierge_resync"

    /// (Each `set_config` is wrapped in `IS NULL`: its result row would carry the value, which
    /// the backend converts to the previous client's encoding before this batch's own
    /// `client_encoding` takes effect, and which that encoding may not be able to represent.)

    /// As `parameterSyncSQL`, as one statement (for the extended protocol): a parameter to reset
    /// takes its reset value from `pg_settings`.
    public static func parameterSyncStatement(
        from current: [String: String], to desired: [String: String], baseline: [String: String] = [:]
    ) -> String? {
        var calls: [String] = []
        for (name, value) in desired.sorted(by: { $0.key < $1.key }) where current[name] != value {
            calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
        }
        for name in current.keys.sorted() where desired[name] == nil {
            if let value = baseline[name] {
                calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
            } else {
                calls.append(
                    "pg_catalog.set_config(\(quoteLiteral(name)), (SELECT reset_val FROM pg_catalog.pg_settings WHERE name = \(quoteLiteral(name))), false) IS NULL")
            }
        }
        return calls.isEmpty ? nil : "SELECT " + calls.joined(separator: ", ")
    }

    /// SQL that takes a backend from one set of session parameters to another, or nil when
    /// nothing differs. Values go through set_config so list-valued settings parse as they do
    /// in a startup packet; names and values are quoted, never spliced raw. A parameter the new
    /// client does not set goes back to its `baseline` value (set by init_query) or is RESET.
    ///
    /// With `fromDefaults`, each parameter that changes first goes back to its default (baseline
    /// or RESET), as a startup packet's value would apply to it.
    public static func parameterSyncSQL(
        from current: [String: String], to desired: [String: String], baseline: [String: String] = [:],
        fromDefaults: Bool = false
    ) -> String? {
        var calls: [String] = []
        var defaults: [String] = []
        for (name, value) in desired.sorted(by: { $0.key < $1.key }) where current[name] != value {
            if fromDefaults {
                if let baselineValue = baseline[name] {
                    defaults.append(
                        "SELECT pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(baselineValue)), false) IS NULL")
                } else {
                    defaults.append("RESET \(quoteIdentifier(name))")
                }
            }
            calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
        }
        var resets: [String] = []
        for name in current.keys.sorted() where desired[name] == nil {
            if let value = baseline[name] {
                calls.append("pg_catalog.set_config(\(quoteLiteral(name)), \(quoteLiteral(value)), false) IS NULL")
            } else {
                resets.append("RESET \(quoteIdentifier(name))")
            }
        }
        if calls.isEmpty && resets.isEmpty { return nil }
        var statements = defaults
        if !calls.isEmpty { statements.append("SELECT " + calls.joined(separator: ", ")) }
        statements.append(contentsOf: resets)
        return statements.joined(separator: "; ")
    }

    /// A string literal in ASCII only: the backend reads the proxy's SQL in whatever
    /// `client_encoding` its previous client left (LATIN1, SJIS, GBK...), where UTF-8 bytes would
    /// mean other characters (`schéma` read as `schÃ©ma`) or, in SJIS or GBK, swallow the
    /// backslash that escapes a quote (SQL injection). Other characters are `\u` / `\U` escapes,
    /// which an `E''` literal reads in any encoding and with any `standard_conforming_strings`.
    public static func quoteLiteral(_ value: String) -> String {
        var out = "E'"
        for scalar in value.unicodeScalars {
            switch scalar {
            case "'": out += "''"
            case "\\": out += "\\\\"
            case _ where scalar.isASCII: out.unicodeScalars.append(scalar)
            case _ where scalar.value <= 0xFFFF: out += "\\u" + hex(scalar.value, digits: 4)
            default: out += "\\U" + hex(scalar.value, digits: 8)
            }
        }
        return out + "'"
    }

    /// An identifier in ASCII only (see `quoteLiteral`): other characters as `U&"\XXXX"` escapes.
    public static func quoteIdentifier(_ name: String) -> String {
        guard !name.unicodeScalars.allSatisfy(\.isASCII) else {
            var out = "\""
            for character in name {
                if character == "\"" { out += "\"\"" } else { out.append(character) }
            }
            return out + "\""
        }
        var out = "U&\""
        for scalar in name.unicodeScalars {
            switch scalar {
            case "\"": out += "\"\""
            case "\\": out += "\\\\"
            case _ where scalar.isASCII: out.unicodeScalars.append(scalar)
            case _ where scalar.value <= 0xFFFF: out += "\\" + hex(scalar.value, digits: 4)
            default: out += "\\+" + hex(scalar.value, digits: 6)
            }
        }
        return out + "\""
    }

    private static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
