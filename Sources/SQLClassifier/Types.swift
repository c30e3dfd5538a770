/// Why a statement pins a client session to its backend connection.
///
/// Each reason has a stable snake_case name (see `names`) used in logs and metrics.
public struct PinReasons: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16

    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `SET name ...`, `SET SESSION name ...`, `RESET name`, `RESET ALL`,
    /// `SET SESSION CHARACTERISTICS ...`, non-local `set_config(...)`.
    /// Exempted by the `EXCLUDE_VARIABLE_SETS` filter.
    public static let setVariable = PinReasons(rawValue: 1 << 0)
    /// `SET [SESSION] ROLE`, `SET [SESSION] SESSION AUTHORIZATION`, `RESET ROLE`, ...
    /// Never exempted by the filter.
    public static let setRole = PinReasons(rawValue: 1 << 1)
    /// SQL-level `PREPARE name` (not `PREPARE TRANSACTION`; `DEALLOCATE` is a `SessionResets`).
    public static let sqlPrepare = PinReasons(rawValue: 1 << 2)
    /// Temporary tables, sequences and views (and objects created in `pg_temp`).
    public static let temporaryObject = PinReasons(rawValue: 1 << 3)
    /// `DECLARE ... CURSOR WITH HOLD`.
    public static let cursorWithHold = PinReasons(rawValue: 1 << 4)
    /// No longer set: `DISCARD` is a `SessionResets`, applied by the session. Kept so the
    /// metric and log names of the other reasons stay stable.
    public static let discard = PinReasons(rawValue: 1 << 5)
    /// `LISTEN channel`.
    public static let listen = PinReasons(rawValue: 1 << 6)
    /// `LOAD 'library'`.
    public static let load = PinReasons(rawValue: 1 << 7)
    /// Session-level advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock`, `_shared` forms).
    public static let advisoryLock = PinReasons(rawValue: 1 << 8)
    /// Sequence session functions (`nextval`, `setval`, `currval`, `lastval`).
    public static let sequenceFunction = PinReasons(rawValue: 1 << 9)
    /// A named protocol-level prepared statement (Parse with a name). Set by the proxy from the
    /// extended protocol, never by `classify`.
    public static let protocolPreparedStatement = PinReasons(rawValue: 1 << 10)

    /// Every reason, in the order used by `names`.
    public static let all: PinReasons = [
        .setVariable, .setRole, .sqlPrepare, .temporaryObject, .cursorWithHold,
        .discard, .listen, .load, .advisoryLock, .sequenceFunction, .protocolPreparedStatement,
    ]

    /// Stable names, in bit order.
    private static let nameTable: [String] = [
        "set_variable", "set_role", "sql_prepare", "temporary_object", "cursor_with_hold",
        "discard", "listen", "load", "advisory_lock", "sequence_function", "protocol_prepared_statement",
    ]

    /// Stable snake_case names of the reasons in this set (bit order), e.g. `["set_variable", "listen"]`.
    public var names: [String] {
        var result: [String] = []
        for bit in 0..<PinReasons.nameTable.count where rawValue & (1 << UInt16(bit)) != 0 {
            result.append(PinReasons.nameTable[bit])
        }
        return result
    }

    /// The reason with the given stable name, if any.
    public init?(name: String) {
        guard let index = PinReasons.nameTable.firstIndex(of: name) else { return nil }
        self.init(rawValue: 1 << UInt16(index))
    }

    public var description: String { "[" + names.joined(separator: ", ") + "]" }
}

/// Options for the classifier.
public struct ClassifierOptions: Sendable, Hashable {
    /// The `EXCLUDE_VARIABLE_SETS` session pinning filter: SETs of variables (and
    /// non-local `set_config`) do not pin. Role changes still pin.
    public var excludeVariableSets: Bool
    /// Lexing mode for plain `'...'` literals. With `false` (the server's
    /// `standard_conforming_strings = off`), backslash escapes apply in them as in `E'...'`.
    public var standardConformingStrings: Bool
    /// Lowercased names of parameters the proxy tracks itself (server-reported parameters).
    /// A session-scope `SET`/`RESET` of one of these does not pin; the command is still
    /// reported in `Classification.setCommands`. Empty by default.
    public var trackedParameters: Set<String>

    public init(
        excludeVariableSets: Bool = false,
        standardConformingStrings: Bool = true,
        trackedParameters: Set<String> = []
    ) {
        self.excludeVariableSets = excludeVariableSets
        self.standardConformingStrings = standardConformingStrings
        self.trackedParameters = trackedParameters
    }
}

/// A `SET` or `RESET` statement, as written by the client.
public struct SetCommand: Sendable, Hashable, CustomStringConvertible {
    public enum Scope: Sendable, Hashable {
        /// `SET`, `SET SESSION`, `RESET`.
        case session
        /// `SET LOCAL` (transaction-scoped).
        case local
    }

    /// Parameter name: lowercased unless quoted; dotted names joined with `.`.
    /// Keyword forms are normalized: `TIME ZONE` → `timezone`, `NAMES` → `client_encoding`,
    /// `SCHEMA` → `search_path`, `XML OPTION` → `xmloption`, `ROLE` → `role`,
    /// `SESSION AUTHORIZATION` → `session_authorization`, `RESET ALL` → `all`.
    public var name: String
    /// Raw source text of the value (first to last value token), `nil` for
    /// `RESET` / `TO DEFAULT` (and `TIME ZONE LOCAL`).
    public var value: String?
    public var scope: Scope
    /// True for `RESET ...` and `SET ... TO DEFAULT`.
    public var isReset: Bool

    public init(name: String, value: String?, scope: Scope = .session, isReset: Bool = false) {
        self.name = name
        self.value = value
        self.scope = scope
        self.isReset = isReset
    }

    public var description: String {
        let v = value.map { "'\($0)'" } ?? "nil"
        return "SetCommand(\(name)=\(v), \(scope)\(isReset ? ", reset" : ""))"
    }
}

/// Statements that return session state to its defaults. They do not pin: the session applies
/// their meaning to what the proxy models of the client (its parameters, prepared statements and
/// pins) once the database has run them.
public struct SessionResets: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16

    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `RESET ALL`: every parameter back to its session default (not role or session authorization).
    public static let resetAll = SessionResets(rawValue: 1 << 0)
    /// No longer set: `DISCARD` is a `SessionResets`, applied by the session. Kept so the
    /// metric and log names of the other reasons stay stable. everything below, plus `SET SESSION AUTHORIZATION DEFAULT`.
    public static let discardAll = SessionResets(rawValue: 1 << 1)
    /// `DISCARD TEMP` / `DISCARD TEMPORARY`: the session's temporary tables are dropped.
    public static let discardTemp = SessionResets(rawValue: 1 << 2)
    /// `DISCARD SEQUENCES`: `currval`/`lastval` state is forgotten.
    public static let discardSequences = SessionResets(rawValue: 1 << 3)
    /// `DISCARD PLANS`: cached plans are dropped (no state the proxy models).
    public static let discardPlans = SessionResets(rawValue: 1 << 4)
    /// `DEALLOCATE [PREPARE] ALL`: every prepared statement, SQL-level and protocol-level.
    public static let deallocateAll = SessionResets(rawValue: 1 << 5)
    /// `UNLISTEN *`.
    public static let unlistenAll = SessionResets(rawValue: 1 << 6)
    /// `CLOSE ALL`: every cursor, `WITH HOLD` ones included.
    public static let closeAll = SessionResets(rawValue: 1 << 7)
    /// `pg_advisory_unlock_all()`: every session-level advisory lock.
    public static let advisoryUnlockAll = SessionResets(rawValue: 1 << 8)
    /// `DEALLOCATE [PREPARE] name`: see `Classification.deallocatedName`.
    public static let deallocate = SessionResets(rawValue: 1 << 9)
    /// `RESET name`, `SET name TO DEFAULT`: back to the session default, which for a parameter of
    /// the startup packet is its value there (the `SetCommand`s name them).
    public static let resetParameter = SessionResets(rawValue: 1 << 10)
    /// Not a reset: `EXECUTE name [(...)]`, SQL naming a prepared statement that may be one the
    /// proxy renamed (see `Classification.executedName`).
    public static let executeStatement = SessionResets(rawValue: 1 << 11)

    /// Resets whose effect on statements, settings or locks cannot be undone by a rollback.
    public static let statementResets: SessionResets = [.discardAll, .deallocateAll, .deallocate]

    private static let nameTable = [
        "reset_all", "discard_all", "discard_temp", "discard_sequences", "discard_plans", "deallocate_all",
        "unlisten_all", "close_all", "advisory_unlock_all", "deallocate", "reset_parameter", "execute",
    ]

    public var description: String {
        var names: [String] = []
        for bit in 0..<Self.nameTable.count where rawValue & (1 << UInt16(bit)) != 0 { names.append(Self.nameTable[bit]) }
        return "[" + names.joined(separator: ", ") + "]"
    }
}

/// The result of classifying one Query (or Parse) string.
public struct Classification: Sendable, Hashable {
    /// Union of the pin reasons of all statements.
    public var pinReasons: PinReasons
    /// Union of the session resets of all statements (see `SessionResets`).
    public var resets: SessionResets = []
    /// The name of a `DEALLOCATE [PREPARE] name` (as the server folds it), when that is the only
    /// statement; nil otherwise.
    public var deallocatedName: String?
    /// The name of an `EXECUTE name [(...)]`, when that is the only statement, and where its name
    /// token is (byte offsets in the string), so the proxy can put another name there.
    public var executedName: String?
    public var executedNameRange: Range<Int>?
    /// `SET`/`RESET` statements in order of appearance (empty, without allocation, when none).
    public var setCommands: [SetCommand]
    /// Number of non-empty statements (`;`-separated).
    public var statementCount: Int

    public init(pinReasons: PinReasons = [], setCommands: [SetCommand] = [], statementCount: Int = 0) {
        self.pinReasons = pinReasons
        self.setCommands = setCommands
        self.statementCount = statementCount
    }

    /// True when at least one statement pins the session.
    public var pins: Bool { !pinReasons.isEmpty }
}
