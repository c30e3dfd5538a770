/// The session state of a MySQL connection that the proxy restores on each lease: the system
/// variables a client changed (as the server reported them, through its session trackers) and
/// the current schema.
///
/// Both sides keep one: a client its wanted state, a backend what it has now. Each is a change
/// set over the backend's **baseline** (what a backend of that pool key has after its setup: the
/// server's login defaults for the user and character set, plus the init query's effects), so a
/// client that changed nothing and a fresh backend both hold an empty set, and a lease compares
/// two empty dictionaries (no work on the common path).
public struct MySQLSessionState: Sendable, Hashable {
    /// Lower-cased variable name → the value the server reported (its own spelling).
    public var variables: [String: String]
    /// The current schema; nil: the login's (no `USE` since).
    public var schema: String?
    /// What `LAST_INSERT_ID()` answers on this connection: the last AUTO_INCREMENT value an
    /// OK packet reported (a statement that generates none leaves it). Per connection in MySQL,
    /// so a lease sets it (`last_insert_id` is a session variable) when it differs.
    public var lastInsertID: UInt64
    /// The connection's diagnostics area may hold conditions (warnings, an error) of a statement
    /// that SHOW WARNINGS, SHOW ERRORS and GET DIAGNOSTICS would show: MariaDB keeps them until a
    /// statement that uses a table. Set on a backend by a response that left some; a lease to
    /// another client clears them first. Always false for a client's wanted state.
    public var mayHoldConditions: Bool

    public init(variables: [String: String] = [:], schema: String? = nil, lastInsertID: UInt64 = 0,
                mayHoldConditions: Bool = false) {
        self.variables = variables
        self.schema = schema
        self.lastInsertID = lastInsertID
        self.mayHoldConditions = mayHoldConditions
    }

    /// Applies what the server reported in an OK packet's session-state information (but not a
    /// variable of `reportedReadOnly`).
    public mutating func apply(variable name: String, value: String) {
        let name = name.lowercased()
        guard !Self.reportedReadOnly.contains(name) else { return }
        variables[name] = value
    }

    /// Read-only variables the server reports as changed by a statement: MariaDB's `last_gtid`
    /// (with a binary log on, every commit reports its GTID, for causal reads). Information
    /// about that statement, not state a lease could restore: `SET SESSION last_gtid` is refused
    /// (error 1238), and the client's next command failed with it on another backend (found by
    /// test_mysql_failover.py, the first MySQL test with a binary log on).
    public static let reportedReadOnly: Set<String> = ["last_gtid"]
}

/// The statements that make a backend's session state the client's: one `SET SESSION` for every
/// variable that differs, and the schema (sent as COM_INIT_DB by the session); before them, a
/// statement that clears another client's conditions from the diagnostics area.
public struct MySQLRestorePlan: Sendable, Hashable {
    /// `SET SESSION a = ..., b = ...`, or nil when every variable already matches.
    public var setStatement: String?
    /// The schema to select, or nil when it already matches.
    public var schema: String?
    /// The backend's diagnostics area must be cleared (`clearDiagnosticsStatement`) first.
    public var clearDiagnostics = false

    public var isEmpty: Bool { setStatement == nil && schema == nil && !clearDiagnostics }

    /// A statement that empties the diagnostics area and adds nothing to the session: MariaDB
    /// clears the area only for a statement that uses a table (MySQL for any statement that is
    /// not a diagnostic one); every user may read information_schema.COLLATIONS.
    public static let clearDiagnosticsStatement = "DO (SELECT 1 FROM information_schema.COLLATIONS LIMIT 0)"

    /// The empty plan.
    public init() {}

    /// The plan that turns `backend` into `client`. `baseline` is what the backend's pool key
    /// starts from: a variable the backend changed and the client did not goes back to its
    /// baseline value, or to `DEFAULT` (the global value, which is also the login value of
    /// every variable not set by the handshake or the init query) when the baseline does not
    /// name it. `loginSchema` is the schema the client logged in with (its `schema` nil).
    /// `noBackslashEscapes`: the backend's current sql_mode has NO_BACKSLASH_ESCAPES, so a
    /// backslash in a value is written as it is (otherwise doubled).
    public init(
        client: MySQLSessionState, backend: MySQLSessionState, baseline: [String: String], loginSchema: String?,
        noBackslashEscapes: Bool
    ) {
        var assignments: [String] = []
        if client.variables != backend.variables {
            // Sorted: the statement is the same for the same difference (easier to read in logs
            // and tests), and sql_mode goes where the sort puts it; the statement's escaping was
            // decided by the mode before it, which `noBackslashEscapes` gives.
            let names = Set(client.variables.keys).union(backend.variables.keys).sorted()
            for name in names {
                let wanted = client.variables[name] ?? baseline[name]
                let current = backend.variables[name] ?? baseline[name]
                if wanted == current, wanted != nil { continue }
                assignments.append(
                    "\(name) = " + (wanted.map { Self.literal(name: name, value: $0, noBackslashEscapes: noBackslashEscapes) } ?? "DEFAULT"))
            }
        }
        if client.lastInsertID != backend.lastInsertID {
            assignments.append("last_insert_id = \(client.lastInsertID)")
        }
        setStatement = assignments.isEmpty ? nil : "SET SESSION " + assignments.joined(separator: ", ")
        let wantedSchema = client.schema ?? loginSchema
        let currentSchema = backend.schema ?? loginSchema
        schema = wantedSchema != currentSchema ? wantedSchema : nil
        clearDiagnostics = backend.mayHoldConditions && !client.mayHoldConditions
    }

    /// A value as the server reported it, written so that `SET` gives it back: integers bare
    /// (a quoted number is refused by integer variables, error 1232), an empty reported value of
    /// a variable that may be NULL as NULL, everything else a string literal (enum, set and
    /// boolean variables take their names as strings).
    static func literal(name: String, value: String, noBackslashEscapes: Bool) -> String {
        if !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) || (value.first == "-" && value.utf8.count > 1 && value.utf8.dropFirst().allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })) {
            return value
        }
        if value.isEmpty, nullableVariables.contains(name) { return "NULL" }
        var out = "'"
        for c in value.unicodeScalars {
            switch c {
            case "'": out += "''"
            case "\\": out += noBackslashEscapes ? "\\" : "\\\\"
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "'"
    }

    /// Variables whose session value may be NULL (reported as an empty value).
    static let nullableVariables: Set<String> = ["character_set_results"]
}
