/// Why a MySQL/MariaDB client session is pinned to its backend connection.
///
/// Each reason has a stable snake_case name (see `names`) used in logs and metrics labels.
/// Bits are never renumbered or reused.
public struct MySQLPinReasons: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16

    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// A user variable anywhere outside literals and comments: `SET @x = 1`, `SELECT @x := 1`,
    /// `SELECT ... INTO @x`, and reading one (`SELECT @x`: its value lives on one backend).
    /// `@@sysvar` and the host of an account (`'app'@'%'`) are not user variables. Never
    /// exempted by `excludeVariableSets`.
    public static let userVariable = MySQLPinReasons(rawValue: 1 << 0)
    /// `CREATE [OR REPLACE] TEMPORARY TABLE` (and MariaDB's `TEMPORARY SEQUENCE`).
    /// `DROP TEMPORARY TABLE` does not unpin.
    public static let temporaryTable = MySQLPinReasons(rawValue: 1 << 1)
    /// `LOCK TABLES` / `LOCK TABLE`. `UNLOCK TABLES` is reported as
    /// `MySQLClassification.unlocksTables`; the session decides whether that unpins.
    public static let lockTables = MySQLPinReasons(rawValue: 1 << 2)
    /// `FLUSH TABLES [t, ...] WITH READ LOCK` and `FLUSH TABLES t FOR EXPORT` (released by
    /// `UNLOCK TABLES`).
    public static let globalReadLock = MySQLPinReasons(rawValue: 1 << 3)
    /// A call of the built-in `GET_LOCK(...)` (a session-level named lock).
    public static let namedLock = MySQLPinReasons(rawValue: 1 << 4)
    /// SQL-level `PREPARE name FROM ...` (`EXECUTE` and `DEALLOCATE PREPARE` do not pin by
    /// themselves), and MariaDB's `EXECUTE IMMEDIATE` of a text that cannot be read here.
    public static let sqlPrepare = MySQLPinReasons(rawValue: 1 << 5)
    /// `SQL_CALC_FOUND_ROWS` (a later `FOUND_ROWS()` reads it on the same connection).
    public static let foundRows = MySQLPinReasons(rawValue: 1 << 6)
    /// `HANDLER t OPEN | READ | CLOSE`.
    public static let handler = MySQLPinReasons(rawValue: 1 << 7)
    /// `XA START` / `XA BEGIN`.
    public static let xa = MySQLPinReasons(rawValue: 1 << 8)
    /// A `SET` of a session variable that the proxy does not track, `SET RESOURCE GROUP`, and
    /// malformed `SET`s (conservatively). Exempted by `excludeVariableSets`.
    public static let setVariable = MySQLPinReasons(rawValue: 1 << 9)
    /// The server reported a session-state change the proxy cannot restore. Never set by
    /// `classify`: the session sets it.
    public static let sessionStateChange = MySQLPinReasons(rawValue: 1 << 10)
    /// `SET ROLE ...` (MySQL 8 and MariaDB): the session's active roles, hence its privileges.
    /// A separate reason because it is never exempted by `excludeVariableSets`: a role left on
    /// a shared backend would lend its privileges to the next client.
    public static let setRole = MySQLPinReasons(rawValue: 1 << 11)
    /// A backup lock held by the session: MySQL's `LOCK INSTANCE FOR BACKUP`, MariaDB's
    /// `BACKUP STAGE ...` and `BACKUP LOCK t`.
    public static let backupLock = MySQLPinReasons(rawValue: 1 << 12)
    /// `ROW_COUNT()` or `FOUND_ROWS()` in a statement the proxy cannot answer itself (the
    /// values are the previous statement's, on the connection that ran it): only `SELECT`s of
    /// the bare functions (with aliases) are answered from the values the proxy tracked.
    public static let sessionFunction = MySQLPinReasons(rawValue: 1 << 13)

    /// Every reason, in the order used by `names`.
    public static let all: MySQLPinReasons = [
        .userVariable, .temporaryTable, .lockTables, .globalReadLock, .namedLock, .sqlPrepare, .foundRows,
        .handler, .xa, .setVariable, .sessionStateChange, .setRole, .backupLock, .sessionFunction,
    ]

    /// Stable names, in bit order: the metrics' counters are indexed by bit (`recordPins`), so
    /// the bits have no gaps (binary_prepared_statement went when prepared statements stopped
    /// pinning; the bits after it moved down, the names stayed).
    private static let nameTable: [String] = [
        "user_variable", "temporary_table", "lock_tables", "flush_tables_with_read_lock", "get_lock",
        "sql_prepare", "sql_calc_found_rows", "handler", "xa_transaction", "set_variable",
        "session_state_change", "set_role", "backup_lock", "row_count_found_rows",
    ]

    /// Stable snake_case names of the reasons in this set (bit order), e.g. `["user_variable", "lock_tables"]`.
    public var names: [String] {
        var result: [String] = []
        for bit in 0..<MySQLPinReasons.nameTable.count where rawValue & (1 << UInt16(bit)) != 0 {
            result.append(MySQLPinReasons.nameTable[bit])
        }
        return result
    }

    /// The reason with the given stable name, if any.
    public init?(name: String) {
        guard let index = MySQLPinReasons.nameTable.firstIndex(of: name) else { return nil }
        self.init(rawValue: 1 << UInt16(index))
    }

    public var description: String { "[" + names.joined(separator: ", ") + "]" }
}

/// Options for the MySQL classifier: the session's lexing modes and the proxy's pinning policy.
public struct MySQLClassifierOptions: Sendable, Hashable {
    /// The `EXCLUDE_VARIABLE_SETS` session pinning filter: SETs of untracked session variables
    /// do not pin (`setVariable`). User variables and `SET ROLE` still pin.
    public var excludeVariableSets: Bool
    /// `sql_mode` has `NO_BACKSLASH_ESCAPES`: a backslash is an ordinary character in strings.
    public var noBackslashEscapes: Bool
    /// `sql_mode` has `ANSI_QUOTES`: `"..."` is an identifier, not a string.
    public var ansiQuotes: Bool
    /// Lower-case names of the session variables the proxy tracks and restores: a session
    /// `SET` of one of these does not pin (it is still reported in `MySQLClassification.sets`).
    public var trackedVariables: Set<String>

    /// The variables RDS Proxy tracks for MySQL (character set and collation, time zone,
    /// autocommit, SQL mode, transaction isolation and access mode, ...), under both their
    /// current and deprecated names (`tx_isolation`, `tx_read_only`: MariaDB before 11.1).
    public static let defaultTrackedVariables: Set<String> = [
        "autocommit",
        "character_set_client", "character_set_connection", "character_set_results", "collation_connection",
        "time_zone", "sql_mode",
        "transaction_isolation", "tx_isolation", "transaction_read_only", "tx_read_only",
        "auto_increment_increment", "auto_increment_offset",
        "wait_timeout", "interactive_timeout", "net_write_timeout", "net_read_timeout",
    ]

    public init(
        excludeVariableSets: Bool = false,
        noBackslashEscapes: Bool = false,
        ansiQuotes: Bool = false,
        trackedVariables: Set<String> = MySQLClassifierOptions.defaultTrackedVariables
    ) {
        self.excludeVariableSets = excludeVariableSets
        self.noBackslashEscapes = noBackslashEscapes
        self.ansiQuotes = ansiQuotes
        self.trackedVariables = trackedVariables
    }

    /// Sets `noBackslashEscapes` and `ansiQuotes` from a value of `sql_mode` as the server
    /// reports it (comma-separated, any case; the `ANSI` combination mode implies `ANSI_QUOTES`).
    public mutating func update(fromSQLMode sqlMode: String) {
        var noBackslashEscapes = false
        var ansiQuotes = false
        for mode in sqlMode.split(separator: ",") {
            let name = String(mode.filter { $0 != " " && $0 != "'" }).uppercased()
            switch name {
            case "NO_BACKSLASH_ESCAPES": noBackslashEscapes = true
            case "ANSI_QUOTES", "ANSI": ansiQuotes = true
            default: break
            }
        }
        self.noBackslashEscapes = noBackslashEscapes
        self.ansiQuotes = ansiQuotes
    }
}

/// One assignment of a `SET` statement, as the client wrote it.
public struct MySQLSetAssignment: Sendable, Hashable, CustomStringConvertible {
    public enum Scope: Sendable, Hashable {
        /// `SET x`, `SET SESSION x`, `SET LOCAL x`, `SET @@x`, `SET @@session.x`, `SET @@local.x`,
        /// `SET SESSION TRANSACTION ...`.
        case session
        /// `SET GLOBAL x`, `SET @@global.x`, `SET GLOBAL TRANSACTION ...`: no session state.
        case global
        /// `SET PERSIST x`, `SET @@persist.x` (MySQL 8): global, and written to mysqld-auto.cnf.
        case persist
        /// `SET PERSIST_ONLY x`, `SET @@persist_only.x` (MySQL 8): only written to mysqld-auto.cnf.
        case persistOnly
        /// `SET TRANSACTION ...` without a scope: the characteristics of the session's next
        /// transaction only (no pin; the session may hold the backend until that transaction).
        case nextTransaction
        /// A user variable, `SET @x = ...` (pins `userVariable`).
        case user
    }

    /// The variable's name, ASCII-lowercased, without sigils or quotes; dotted names (component
    /// and structured variables) joined with `.`. The keyword forms of `SET [scope] TRANSACTION`
    /// are reported as `transaction_isolation` and `transaction_read_only`.
    public var name: String
    public var scope: Scope
    /// The source text of the value expression (first to last token, comments between them
    /// included), e.g. `'+00:00'`, `DEFAULT`, `CONCAT(@@sql_mode, ',ANSI')`; empty when missing.
    /// For the keyword forms of `SET TRANSACTION`: `'READ-COMMITTED'` (the variable's value as
    /// a literal), `ON` / `OFF`.
    public var value: String

    public init(name: String, scope: Scope = .session, value: String) {
        self.name = name
        self.scope = scope
        self.value = value
    }

    public var description: String { "MySQLSetAssignment(\(name)=\(value), \(scope))" }
}

/// The first statement's kind, for what the proxy answers or tracks itself.
public enum MySQLStatementKind: Sendable, Hashable {
    /// `SELECT`, `WITH`, `VALUES`, `TABLE`, or a parenthesised query.
    case select
    /// `SHOW ...` other than `showDiagnostics`.
    case show
    /// `SHOW WARNINGS`, `SHOW ERRORS`, `SHOW COUNT(*) ...` (these do not change `FOUND_ROWS()`).
    case showDiagnostics
    /// `DESC` / `DESCRIBE` of a table (`DESC SELECT ...` is `explainOrHelp`).
    case describe
    /// `EXPLAIN`, `ANALYZE SELECT`, `HELP` (result sets that do not change `FOUND_ROWS()`).
    case explainOrHelp
    /// `CALL`: the procedure's statements may change anything.
    case call
    /// `KILL ...`: answered by the proxy (`MySQLProxyAnswerable.kill`).
    case kill
    case other
}

/// The result of classifying one `COM_QUERY` text (all its statements).
public struct MySQLClassification: Sendable, Hashable {
    /// Union of the pin reasons of all statements.
    public var pinReasons: MySQLPinReasons
    /// Number of non-empty statements (`;`-separated; a stored program's body or a MariaDB
    /// compound statement is one statement). Informational: the wire's
    /// `SERVER_MORE_RESULTS_EXISTS` is what frames the results.
    public var statementCount: Int
    /// `UNLOCK TABLES` / `UNLOCK TABLE`: releases `LOCK TABLES` and `FLUSH TABLES ... WITH READ
    /// LOCK` (the session decides whether that unpins).
    public var unlocksTables: Bool
    /// `BEGIN [WORK]` or `START TRANSACTION ...` (informational; not `XA START`, not MariaDB's
    /// `BEGIN NOT ATOMIC` compound statement).
    public var startsTransaction: Bool
    /// `SET NAMES ...`, `SET CHARACTER SET ...`, `SET CHARSET ...` (tracked: the server reports
    /// the variables they change). Not reported in `sets`.
    public var setsNames: Bool
    /// `USE db` (tracked through `session_track_schema`).
    public var changesSchema: Bool
    /// The variable assignments of `SET` statements, in order (empty, without allocation, when
    /// there are none). `SET PASSWORD`, `SET ROLE`, `SET DEFAULT ROLE`, `SET NAMES` and MariaDB's
    /// per-statement `SET STATEMENT ... FOR` are not reported.
    public var sets: [MySQLSetAssignment]
    /// What the first statement is, as far as the proxy answers or tracks it (`KILL`, and how
    /// the statement changes what `FOUND_ROWS()` answers next).
    public var kind: MySQLStatementKind = .other
    /// A `SELECT` keyword after the first word (a subquery, `INSERT ... SELECT`, `CREATE ...
    /// SELECT`): such a statement may change `FOUND_ROWS()` in ways the proxy does not follow.
    public var containsSelect = false
    /// `ROW_COUNT(`, `FOUND_ROWS(`, `CONNECTION_ID(` or `LAST_INSERT_ID(` appear (built-ins, unqualified): the
    /// session checks whether it can answer the statement itself (`MySQLProxyAnswerable`).
    public var mentionsSessionFunction = false

    public init(
        pinReasons: MySQLPinReasons = [], statementCount: Int = 0, unlocksTables: Bool = false,
        startsTransaction: Bool = false, setsNames: Bool = false, changesSchema: Bool = false,
        sets: [MySQLSetAssignment] = []
    ) {
        self.pinReasons = pinReasons
        self.statementCount = statementCount
        self.unlocksTables = unlocksTables
        self.startsTransaction = startsTransaction
        self.setsNames = setsNames
        self.changesSchema = changesSchema
        self.sets = sets
    }

    /// True when at least one statement pins the session.
    public var pins: Bool { !pinReasons.isEmpty }
}
