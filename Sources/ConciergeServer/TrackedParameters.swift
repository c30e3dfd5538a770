/// Session parameters the proxy carries from backend to backend, so that setting them does not
/// pin: the ones PostgreSQL reports to the client with ParameterStatus whenever they change
/// (GUC_REPORT) and that a session may set.
///
/// A client's value comes from its startup packet, then from every ParameterStatus the database
/// sends while serving it: after `SET TimeZone ...` (or RESET, or the end of a transaction that
/// ran `SET LOCAL`), PostgreSQL reports the new value, already in its canonical spelling. The
/// next backend that serves the client is brought to those values before the client's first
/// message (BackendConnection.parameterSyncSQL).
enum TrackedParameters {
    /// Lowercased names. Every supported PostgreSQL version reports these. Also reported, but
    /// not carried: `is_superuser`, `server_version`, `server_encoding`, `integer_datetimes`,
    /// `in_hot_standby` (read-only), `session_authorization` (pins), and the ones only recent
    /// versions report (`default_transaction_read_only` from 14, `scram_iterations` from 16,
    /// `search_path` from 18): on an older server a SET of them would go unreported and leak,
    /// so they keep pinning.
    static let names: Set<String> = [
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "standard_conforming_strings",
        "timezone",
    ]

    /// Whether a reported parameter is carried to the next backend.
    static func isTracked(_ lowercasedName: String) -> Bool {
        names.contains(lowercasedName)
    }
}
