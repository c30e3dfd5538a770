/// The fields of an ErrorResponse or NoticeResponse the proxy generates.
///
/// Encoded as fields `S` and `V` (both ``severity``), `C`, `M`, and `D`/`H` when present.
public struct PGErrorFields: Sendable, Hashable {
    /// The severity: `ERROR`, `FATAL` or `PANIC` for errors; `WARNING`, `NOTICE`, `DEBUG`, `INFO`
    /// or `LOG` for notices.
    public var severity: String
    /// The SQLSTATE code (five characters, see ``PGSQLState``).
    public var code: String
    /// The primary human-readable message.
    public var message: String
    /// An optional secondary message with more detail.
    public var detail: String?
    /// An optional suggestion what to do about the problem.
    public var hint: String?
    /// Where in PostgreSQL's source the error is raised (`F`, `L`, `R`): set only when the proxy
    /// gives an error on the database's behalf, since drivers recognise some errors by them.
    public var source: (file: String, line: String, routine: String)?

    /// Creates a value.
    public init(
        severity: String, code: String, message: String, detail: String? = nil, hint: String? = nil,
        source: (file: String, line: String, routine: String)? = nil
    ) {
        self.severity = severity
        self.code = code
        self.message = message
        self.detail = detail
        self.hint = hint
        self.source = source
    }

    public static func == (lhs: PGErrorFields, rhs: PGErrorFields) -> Bool {
        lhs.severity == rhs.severity && lhs.code == rhs.code && lhs.message == rhs.message && lhs.detail == rhs.detail
            && lhs.hint == rhs.hint && lhs.source?.file == rhs.source?.file && lhs.source?.line == rhs.source?.line
            && lhs.source?.routine == rhs.source?.routine
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(severity)
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(detail)
        hasher.combine(hint)
        hasher.combine(source?.file)
        hasher.combine(source?.line)
        hasher.combine(source?.routine)
    }

    /// A `FATAL` error: the server closes the connection after sending it.
    public static func fatal(code: String, message: String, detail: String? = nil, hint: String? = nil) -> PGErrorFields {
        PGErrorFields(severity: "FATAL", code: code, message: message, detail: detail, hint: hint)
    }

    /// An `ERROR`: the current statement or transaction fails, the connection stays usable.
    public static func error(code: String, message: String, detail: String? = nil, hint: String? = nil) -> PGErrorFields {
        PGErrorFields(severity: "ERROR", code: code, message: message, detail: detail, hint: hint)
    }

    /// A `NOTICE`, to be sent as a NoticeResponse.
    public static func notice(code: String = PGSQLState.successfulCompletion, message: String, detail: String? = nil, hint: String? = nil) -> PGErrorFields {
        PGErrorFields(severity: "NOTICE", code: code, message: message, detail: detail, hint: hint)
    }

    /// A `WARNING`, to be sent as a NoticeResponse.
    public static func warning(code: String = PGSQLState.warning, message: String, detail: String? = nil, hint: String? = nil) -> PGErrorFields {
        PGErrorFields(severity: "WARNING", code: code, message: message, detail: detail, hint: hint)
    }
}

/// The fields of a received ErrorResponse or NoticeResponse, keyed by their field type byte.
///
/// Unknown field types are kept, as the protocol asks frontends to ignore rather than reject them.
public struct PGDiagnosticFields: Sendable, Hashable {
    /// Field type bytes defined by PostgreSQL.
    public enum Code {
        /// `S`: severity, possibly localized.
        public static let severity = UInt8(ascii: "S")
        /// `V`: severity, never localized (PostgreSQL 9.6+).
        public static let severityNonLocalized = UInt8(ascii: "V")
        /// `C`: SQLSTATE code.
        public static let sqlState = UInt8(ascii: "C")
        /// `M`: primary message.
        public static let message = UInt8(ascii: "M")
        /// `D`: detail.
        public static let detail = UInt8(ascii: "D")
        /// `H`: hint.
        public static let hint = UInt8(ascii: "H")
        /// `P`: cursor position in the query string.
        public static let position = UInt8(ascii: "P")
        /// `p`: position in an internally generated command.
        public static let internalPosition = UInt8(ascii: "p")
        /// `q`: the internally generated command.
        public static let internalQuery = UInt8(ascii: "q")
        /// `W`: context (call stack).
        public static let context = UInt8(ascii: "W")
        /// `s`: schema name.
        public static let schemaName = UInt8(ascii: "s")
        /// `t`: table name.
        public static let tableName = UInt8(ascii: "t")
        /// `c`: column name.
        public static let columnName = UInt8(ascii: "c")
        /// `d`: data type name.
        public static let dataTypeName = UInt8(ascii: "d")
        /// `n`: constraint name.
        public static let constraintName = UInt8(ascii: "n")
        /// `F`: source file.
        public static let file = UInt8(ascii: "F")
        /// `L`: source line.
        public static let line = UInt8(ascii: "L")
        /// `R`: source routine.
        public static let routine = UInt8(ascii: "R")
    }

    /// All fields by type byte.
    public var fields: [UInt8: String]

    /// Creates a value.
    public init(fields: [UInt8: String]) {
        self.fields = fields
    }

    /// The field of type `code`, if present.
    public subscript(code: UInt8) -> String? {
        self.fields[code]
    }

    /// The non-localized severity (`V`), or the possibly localized one (`S`) from older servers.
    public var severity: String? { self.fields[Code.severityNonLocalized] ?? self.fields[Code.severity] }
    /// The SQLSTATE code (`C`).
    public var code: String? { self.fields[Code.sqlState] }
    /// The primary message (`M`).
    public var message: String? { self.fields[Code.message] }
    /// The detail (`D`).
    public var detail: String? { self.fields[Code.detail] }
    /// The hint (`H`).
    public var hint: String? { self.fields[Code.hint] }

    /// Whether the severity ends the session (`FATAL` or `PANIC`).
    public var isFatal: Bool {
        switch self.severity {
        case "FATAL", "PANIC": return true
        default: return false
        }
    }

    /// The fields a proxy re-sends (severity, code, message, detail, hint); missing ones become
    /// `ERROR`, `XX000` (internal_error) and an empty message.
    public var errorFields: PGErrorFields {
        PGErrorFields(
            severity: self.severity ?? "ERROR",
            code: self.code ?? PGSQLState.internalError,
            message: self.message ?? "",
            detail: self.detail,
            hint: self.hint
        )
    }
}

/// SQLSTATE codes a proxy commonly reports (see PostgreSQL's `errcodes.txt`).
public enum PGSQLState {
    /// `00000` successful_completion.
    public static let successfulCompletion = "00000"
    /// `01000` warning.
    public static let warning = "01000"
    /// `08000` connection_exception.
    public static let connectionException = "08000"
    /// `08001` sqlclient_unable_to_establish_sqlconnection.
    public static let sqlclientUnableToEstablishSQLConnection = "08001"
    /// `08004` sqlserver_rejected_establishment_of_sqlconnection.
    public static let sqlserverRejectedEstablishmentOfSQLConnection = "08004"
    /// `08006` connection_failure.
    public static let connectionFailure = "08006"
    /// `08P01` protocol_violation.
    public static let protocolViolation = "08P01"
    /// `0A000` feature_not_supported.
    public static let featureNotSupported = "0A000"
    /// `28000` invalid_authorization_specification.
    public static let invalidAuthorizationSpecification = "28000"
    /// `28P01` invalid_password.
    public static let invalidPassword = "28P01"
    /// `3D000` invalid_catalog_name.
    public static let invalidCatalogName = "3D000"
    /// `53300` too_many_connections.
    public static let tooManyConnections = "53300"
    /// `53400` configuration_limit_exceeded.
    public static let configurationLimitExceeded = "53400"
    /// `54000` program_limit_exceeded.
    public static let programLimitExceeded = "54000"
    /// `57014` query_canceled.
    public static let queryCanceled = "57014"
    /// `57P01` admin_shutdown.
    public static let adminShutdown = "57P01"
    /// `57P03` cannot_connect_now.
    public static let cannotConnectNow = "57P03"
    /// `57P05` idle_session_timeout.
    public static let idleSessionTimeout = "57P05"
    /// `XX000` internal_error.
    public static let internalError = "XX000"
}
