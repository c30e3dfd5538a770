/// Decides which MySQL/MariaDB statements pin a client session to its backend, and why.
///
/// Runs on every `COM_QUERY`. Works on UTF-8 bytes with a MySQL tokenizer (`#`, `-- ` and
/// `/* */` comments, executable comments `/*! */` and `/*M! */` read as code, quoted strings
/// with or without backslash escapes, backticked and ANSI-quoted identifiers, user and system
/// variables), so text inside literals and comments never triggers a rule. Ordinary statements
/// are classified without heap allocation; only `SET` statements allocate (to report
/// `MySQLSetAssignment`s).
///
/// Decisions beyond the obvious rules:
/// - Any mention of a user variable pins (`SELECT @x` reads a value set on one backend), but an
///   `@` that directly follows an account name (`'app'@'%'`, `` `root`@`localhost` ``,
///   `app@localhost` in `GRANT`, `CREATE USER`, `DEFINER=`) is an account's host.
/// - `GET_LOCK(` pins as the built-in only: unqualified (`db.get_lock(...)` is a stored
///   function), written plainly or backticked, with or without space before `(`.
/// - `SET ROLE` pins as `setRole`, which `excludeVariableSets` never lifts.
/// - The bodies of stored programs (`CREATE PROCEDURE | FUNCTION | TRIGGER | EVENT`) do not run
///   when defined: nothing in them pins, and the `;` inside their `BEGIN ... END` do not end the
///   statement. MariaDB's compound statements outside programs (`BEGIN NOT ATOMIC ... END`,
///   `IF ... END IF`, loops) do run: their statements are classified, conservatively (a `SET`
///   of a declared local variable pins as an untracked variable).
/// - MariaDB's `EXECUTE IMMEDIATE 'text'` is classified by its text; any other operand pins
///   as `sqlPrepare` (a user variable operand pins as `userVariable` already).
/// - `DELIMITER` is a client command and never reaches a server: it is an ordinary statement.
public enum MySQLClassifier {
    /// Classifies a `COM_QUERY` text given as UTF-8 bytes.
    public static func classify(_ sql: UnsafeRawBufferPointer, options: MySQLClassifierOptions = MySQLClassifierOptions()) -> MySQLClassification {
        if isPlainSelect(sql) {
            var result = MySQLClassification(statementCount: 1)
            result.kind = .select
            return result
        }
        return classifyByTokens(sql, options: options)
    }

    /// Whether `sql` is one SELECT that no rule can pin or mark, decided from its bytes alone
    /// (`scanPlainSelect`, shared with PostgreSQL's shortcut): it starts with the word SELECT and
    /// nowhere (not even inside literals or comments) holds an opening parenthesis (every
    /// function rule needs one), a second statement, an `@` (user variables pin), a `:` (a
    /// label: `select: BEGIN ... END` is a compound statement), the word SELECT again
    /// (`containsSelect`: `UNION SELECT`) or the letters `sql_` (`SQL_CALC_FOUND_ROWS` pins).
    /// Nothing else pins or is noted in a statement that starts so: `INTO`, `FOR UPDATE` and
    /// `LOCK IN SHARE MODE` do not. sysbench's point select is classified this way; any other
    /// text goes through the lexer. A unit test compares the two on generated statements.
    static func isPlainSelect(_ sql: UnsafeRawBufferPointer) -> Bool {
        // Folded with 0x20: `@` (0x40) becomes a backtick (0x60), `S` becomes `s` (0x73), and
        // `:` (0x3A) stays itself; the other bytes that fold to these only stop the fast scan.
        scanPlainSelect(sql, stops: {
            plainBytes($0, equalTo: 0x60) | plainBytes($0, equalTo: UInt8(ascii: "s")) | plainBytes($0, equalTo: mysqlColon)
        }) { c, i in
            switch c {
            case UInt8(ascii: "@"), mysqlColon:
                return false
            case UInt8(ascii: "s"), UInt8(ascii: "S"):
                if plainWordFollows(sql, at: i, "select") || plainWordFollows(sql, at: i, "sql_") { return false }
                return nil
            default:
                return nil
            }
        }
    }

    /// The classification by the lexer and every rule (`classify` without its shortcut).
    static func classifyByTokens(_ sql: UnsafeRawBufferPointer, options: MySQLClassifierOptions) -> MySQLClassification {
        var result = MySQLClassification()
        guard sql.count > 0 else { return result }
        var lexer = MySQLLexer(sql, backslashEscapes: !options.noBackslashEscapes, ansiQuotes: options.ansiQuotes)
        while true {
            let first = lexer.next()
            if first.kind == .end { break }
            if lexer.isPunctuation(first, semicolon) { continue }
            result.statementCount += 1
            if result.statementCount == 1 {
                result.kind = statementKind(first, lexer)
            } else if lexer.isKeyword(first, "kill") {
                // A KILL anywhere in the text names a proxy connection id: the session refuses
                // what it cannot answer rather than let a backend kill by that number.
                result.kind = .kill
            }
            var startLexer = lexer
            let mode = classifyStatementStart(first, &startLexer, options, &result, nested: false)
            scanStatement(first, &lexer, mode, options, &result)
        }
        return result
    }

    /// Classifies a `COM_QUERY` text.
    public static func classify(_ sql: String, options: MySQLClassifierOptions = MySQLClassifierOptions()) -> MySQLClassification {
        var sql = sql
        return sql.withUTF8 { classify(UnsafeRawBufferPointer($0), options: options) }
    }

    /// Classifies UTF-8 bytes from any collection (contiguous storage is used in place).
    public static func classify<Bytes: Collection>(_ bytes: Bytes, options: MySQLClassifierOptions = MySQLClassifierOptions()) -> MySQLClassification
        where Bytes.Element == UInt8
    {
        if let result = bytes.withContiguousStorageIfAvailable({ classify(UnsafeRawBufferPointer($0), options: options) }) {
            return result
        }
        return Array(bytes).withUnsafeBytes { classify($0, options: options) }
    }
}

/// How the whole-statement scan reads a statement.
enum MySQLStatementMode {
    /// Rules apply; the first `;` ends the statement.
    case normal
    /// The definition of a stored program: no rules apply (the body does not run now), and the
    /// `;` inside its blocks do not end the statement.
    case routine
    /// A MariaDB compound statement outside a stored program (`BEGIN NOT ATOMIC ... END`,
    /// `IF ... END IF`, a labelled or plain loop): it runs now, so rules apply, the statement
    /// rules to each statement inside; its inner `;` do not end it.
    case compound
}

let mysqlColon = UInt8(ascii: ":")

// MARK: - Statement-start rules

extension MySQLClassifier {
    /// Rules that apply to the first keyword(s) of a statement. `lx` is positioned after
    /// `first` (a copy the caller discards). `nested`: a statement inside a compound statement,
    /// where `BEGIN` opens a block and compound statements cannot start.
    static func classifyStatementStart(
        _ first: MySQLToken, _ lx: inout MySQLLexer, _ options: MySQLClassifierOptions,
        _ result: inout MySQLClassification, nested: Bool
    ) -> MySQLStatementMode {
        guard first.kind == .identifier else { return .normal }
        if !nested, lx.isPunctuation(peekToken(lx), mysqlColon) { return .compound }  // `label: BEGIN | LOOP ...`
        let t = first
        switch t.end - t.start {
        case 2:
            if lx.isKeyword(t, "xa") {
                let u = lx.next()
                if lx.isKeyword(u, "start") || lx.isKeyword(u, "begin") { result.pinReasons.insert(.xa) }
            } else if lx.isKeyword(t, "if"), !nested {
                return .compound
            }
        case 3:
            if lx.isKeyword(t, "set") {
                classifySet(&lx, options, &result)
            } else if lx.isKeyword(t, "use") {
                result.changesSchema = true
            }
        case 4:
            if lx.isKeyword(t, "lock") {
                let u = lx.next()
                if lx.isKeyword(u, "tables") || lx.isKeyword(u, "table") {
                    result.pinReasons.insert(.lockTables)
                } else if lx.isKeyword(u, "instance") {
                    result.pinReasons.insert(.backupLock)  // LOCK INSTANCE FOR BACKUP
                }
            } else if !nested, lx.isKeyword(t, "case") || lx.isKeyword(t, "loop") {
                return .compound
            }
        case 5:
            if lx.isKeyword(t, "begin") {
                if nested { break }
                var peek = lx
                if lx.isKeyword(peek.next(), "not"), lx.isKeyword(peek.next(), "atomic") { return .compound }
                result.startsTransaction = true
            } else if lx.isKeyword(t, "start") {
                if lx.isKeyword(lx.next(), "transaction") { result.startsTransaction = true }
            } else if lx.isKeyword(t, "flush") {
                classifyFlush(&lx, &result)
            } else if lx.isKeyword(t, "alter") {
                return classifyDefinition(&lx, &result, isCreate: false)
            } else if !nested, lx.isKeyword(t, "while") {
                return .compound
            }
        case 6:
            if lx.isKeyword(t, "create") {
                return classifyDefinition(&lx, &result, isCreate: true)
            } else if lx.isKeyword(t, "unlock") {
                let u = lx.next()
                if lx.isKeyword(u, "tables") || lx.isKeyword(u, "table") { result.unlocksTables = true }
            } else if lx.isKeyword(t, "backup") {
                let u = lx.next()
                if lx.isKeyword(u, "stage") || lx.isKeyword(u, "lock") { result.pinReasons.insert(.backupLock) }
            } else if !nested, lx.isKeyword(t, "repeat") {
                return .compound
            }
        case 7:
            if lx.isKeyword(t, "prepare") {
                let name = lx.next()
                if name.kind == .identifier || name.kind == .quotedIdentifier { result.pinReasons.insert(.sqlPrepare) }
            } else if lx.isKeyword(t, "handler") {
                result.pinReasons.insert(.handler)
            } else if lx.isKeyword(t, "execute") {
                classifyExecuteImmediate(&lx, options, &result)
            }
        default:
            break
        }
        return .normal
    }

    /// The kind of a statement from its first word(s); `lx` is positioned after `first`.
    static func statementKind(_ first: MySQLToken, _ lx: MySQLLexer) -> MySQLStatementKind {
        if lx.isPunctuation(first, openParen) { return .select }
        guard first.kind == .identifier else { return .other }
        var peek = lx
        switch first.end - first.start {
        case 4:
            if lx.isKeyword(first, "kill") { return .kill }
            if lx.isKeyword(first, "show") {
                let u = peek.next()
                if lx.isKeyword(u, "warnings") || lx.isKeyword(u, "errors") || lx.isKeyword(u, "count") { return .showDiagnostics }
                return .show
            }
            if lx.isKeyword(first, "desc") { return describeKind(&peek) }
            if lx.isKeyword(first, "with") { return .select }
            if lx.isKeyword(first, "call") { return .call }
            if lx.isKeyword(first, "help") { return .explainOrHelp }
        case 5:
            if lx.isKeyword(first, "table") { return .select }
        case 6:
            if lx.isKeyword(first, "select") || lx.isKeyword(first, "values") { return .select }
        case 7:
            if lx.isKeyword(first, "explain") || lx.isKeyword(first, "analyze") { return .explainOrHelp }
        case 8:
            if lx.isKeyword(first, "describe") { return describeKind(&peek) }
        default:
            break
        }
        return .other
    }

    /// `DESC t` describes a table (a result set that sets `FOUND_ROWS()`); `DESC SELECT ...`,
    /// `DESC FORMAT=...`, `DESC EXTENDED ...` explain a statement.
    private static func describeKind(_ lx: inout MySQLLexer) -> MySQLStatementKind {
        let u = lx.next()
        if lx.isKeyword(u, "select") || lx.isKeyword(u, "insert") || lx.isKeyword(u, "update") || lx.isKeyword(u, "delete")
            || lx.isKeyword(u, "replace") || lx.isKeyword(u, "format") || lx.isKeyword(u, "extended")
            || lx.isKeyword(u, "partitions") || lx.isKeyword(u, "with") || lx.isPunctuation(u, openParen)
        {
            return .explainOrHelp
        }
        return .describe
    }

    static func peekToken(_ lx: MySQLLexer) -> MySQLToken {
        var copy = lx
        return copy.next()
    }

    /// After `CREATE` or `ALTER`: `[OR REPLACE] [ALGORITHM = x] [DEFINER = user] [SQL SECURITY x]
    /// [AGGREGATE]`, then `TEMPORARY` (a temporary table or sequence: pins) or the kind of a
    /// stored program (its body is read in `.routine` mode).
    private static func classifyDefinition(
        _ lx: inout MySQLLexer, _ result: inout MySQLClassification, isCreate: Bool
    ) -> MySQLStatementMode {
        var t = lx.next()
        if lx.isKeyword(t, "or") {
            _ = lx.next()  // REPLACE
            t = lx.next()
        }
        while true {
            if lx.isKeyword(t, "algorithm") {
                if lx.isOperator(peekToken(lx), equals) { _ = lx.next() }
                _ = lx.next()
            } else if lx.isKeyword(t, "definer") {
                if lx.isOperator(peekToken(lx), equals) { _ = lx.next() }
                skipAccount(&lx)
            } else if lx.isKeyword(t, "sql"), lx.isKeyword(peekToken(lx), "security") {
                _ = lx.next()
                _ = lx.next()
            } else if !lx.isKeyword(t, "aggregate") {
                break
            }
            t = lx.next()
        }
        if isCreate, lx.isKeyword(t, "temporary") {
            result.pinReasons.insert(.temporaryTable)
            return .normal
        }
        if lx.isKeyword(t, "procedure") || lx.isKeyword(t, "function") || lx.isKeyword(t, "trigger")
            || lx.isKeyword(t, "event") || lx.isKeyword(t, "package")
        {
            return .routine
        }
        return .normal
    }

    /// An account: `name`, `'name'`, `` `name` `` with an optional `@host`, or `CURRENT_USER[()]`.
    private static func skipAccount(_ lx: inout MySQLLexer) {
        let user = lx.next()
        var peek = lx
        let u = peek.next()
        if u.kind == .userVariable, u.start == user.end {
            lx = peek
        } else if lx.isPunctuation(u, openParen), lx.isKeyword(user, "current_user") {
            lx = peek
            if lx.isPunctuation(peekToken(lx), closeParen) { _ = lx.next() }
        }
    }

    /// `FLUSH [NO_WRITE_TO_BINLOG | LOCAL] {TABLES | TABLE} [t, ...] {WITH READ LOCK | FOR EXPORT}`.
    private static func classifyFlush(_ lx: inout MySQLLexer, _ result: inout MySQLClassification) {
        var t = lx.next()
        if lx.isKeyword(t, "no_write_to_binlog") || lx.isKeyword(t, "local") { t = lx.next() }
        guard lx.isKeyword(t, "tables") || lx.isKeyword(t, "table") else { return }
        var prev1 = MySQLToken.none, prev2 = MySQLToken.none
        while true {
            t = lx.next()
            if t.kind == .end || lx.isPunctuation(t, semicolon) { return }
            let readLock = lx.isKeyword(t, "lock") && lx.isKeyword(prev1, "read") && lx.isKeyword(prev2, "with")
            if readLock || (lx.isKeyword(t, "export") && lx.isKeyword(prev1, "for")) {
                result.pinReasons.insert(.globalReadLock)
                return
            }
            prev2 = prev1
            prev1 = t
        }
    }

    /// MariaDB's `EXECUTE IMMEDIATE expr [USING ...]`: a plain string literal is classified as
    /// the SQL it holds; a user variable pins already; anything else is unknown SQL and pins.
    private static func classifyExecuteImmediate(
        _ lx: inout MySQLLexer, _ options: MySQLClassifierOptions, _ result: inout MySQLClassification
    ) {
        guard lx.isKeyword(lx.next(), "immediate") else { return }  // EXECUTE stmt [USING ...]: no pin
        let operand = lx.next()
        let after = peekToken(lx)
        let endsHere = after.kind == .end || lx.isPunctuation(after, semicolon) || lx.isKeyword(after, "using")
        if operand.kind == .userVariable, endsHere { return }
        let delimiter = operand.kind == .string ? lx.buf[operand.start] : 0
        guard endsHere, !operand.unterminated, delimiter == UInt8(ascii: "'") || delimiter == UInt8(ascii: "\"") else {
            result.pinReasons.insert(.sqlPrepare)
            return
        }
        let inner: MySQLClassification
        if operand.hasEscapes {
            var bytes: [UInt8] = []
            var i = operand.contentStart
            while i < operand.contentEnd {
                let c = lx.buf[i]
                if c == delimiter {
                    i += 1  // the first of a doubled quote
                } else if c == UInt8(ascii: "\\"), lx.backslashEscapes, i + 1 < operand.contentEnd {
                    let escaped = lx.buf[i + 1]
                    if escaped == UInt8(ascii: "%") || escaped == UInt8(ascii: "_") { bytes.append(c) }
                    bytes.append(MySQLLexer.unescaped(escaped))
                    i += 2
                    continue
                }
                bytes.append(lx.buf[i])
                i += 1
            }
            inner = bytes.withUnsafeBytes { classify($0, options: options) }
        } else {
            inner = classify(UnsafeRawBufferPointer(rebasing: lx.buf[operand.contentStart..<operand.contentEnd]), options: options)
        }
        result.pinReasons.formUnion(inner.pinReasons)
        result.unlocksTables = result.unlocksTables || inner.unlocksTables
        result.startsTransaction = result.startsTransaction || inner.startsTransaction
        result.setsNames = result.setsNames || inner.setsNames
        result.changesSchema = result.changesSchema || inner.changesSchema
        if !inner.sets.isEmpty { result.sets.append(contentsOf: inner.sets) }
    }
}

// MARK: - Whole-statement scan

extension MySQLClassifier {
    /// Scans one statement from `first` to its terminating `;` (or the end), applying the rules
    /// that hold anywhere in a statement and, in a compound statement, the statement-start rules
    /// to each statement inside it. Leaves `lx` after the terminator.
    fileprivate static func scanStatement(
        _ first: MySQLToken, _ lx: inout MySQLLexer, _ mode: MySQLStatementMode,
        _ options: MySQLClassifierOptions, _ result: inout MySQLClassification
    ) {
        let rules = mode != .routine
        var blocks = BlockTracker(enabled: mode != .normal)
        var t = first
        var prev = MySQLToken.none
        var atStart = true
        while true {
            var nextAtStart = false
            switch t.kind {
            case .end:
                return
            case .punctuation:
                let c = lx.buf[t.start]
                if c == semicolon {
                    if blocks.depth == 0 { return }
                    nextAtStart = true
                } else if c == mysqlColon {
                    nextAtStart = blocks.enabled  // after a label
                }
            case .identifier:
                if blocks.enabled {
                    nextAtStart = blocks.word(t, prev: prev, atStart: atStart, &lx)
                    if mode == .compound, atStart, t.start != first.start {
                        var copy = lx
                        _ = classifyStatementStart(t, &copy, options, &result, nested: true)
                    }
                }
                if rules { checkWord(t, prev, lx, &result) }
            case .quotedIdentifier:
                if rules { checkWord(t, prev, lx, &result) }
            case .userVariable:
                if rules, !isAccountHost(t, after: prev, lx) { result.pinReasons.insert(.userVariable) }
            default:
                break
            }
            atStart = nextAtStart
            prev = t
            t = lx.next()
        }
    }

    /// Words that pin wherever they are: `GET_LOCK(` and `SQL_CALC_FOUND_ROWS`; `ROW_COUNT(`
    /// and `FOUND_ROWS(` (the session lifts the pin when it answers the statement itself), and
    /// `CONNECTION_ID(` and `LAST_INSERT_ID(`, noted; a `SELECT` after the first word, noted.
    @inline(__always)
    private static func checkWord(_ t: MySQLToken, _ prev: MySQLToken, _ lx: MySQLLexer, _ result: inout MySQLClassification) {
        switch t.contentEnd - t.contentStart {
        case 6:
            if prev.kind != .end, lx.isKeyword(t, "select") { result.containsSelect = true }
        case 9, 10, 13, 14:
            guard lx.isName(t, "row_count") || lx.isName(t, "found_rows") || lx.isName(t, "connection_id")
                || lx.isName(t, "last_insert_id")
            else { return }
            if lx.isPunctuation(prev, dot) || lx.isKeyword(prev, "function") || lx.isKeyword(prev, "procedure") { return }
            guard lx.isPunctuation(peekToken(lx), openParen) else { return }
            result.mentionsSessionFunction = true
            if lx.isName(t, "row_count") || lx.isName(t, "found_rows") { result.pinReasons.insert(.sessionFunction) }
        case 8:
            guard lx.isName(t, "get_lock") else { return }
            // `db.get_lock(` is a stored function; `CREATE FUNCTION get_lock(...)` names one.
            if lx.isPunctuation(prev, dot) || lx.isKeyword(prev, "function") || lx.isKeyword(prev, "procedure") { return }
            if lx.isPunctuation(peekToken(lx), openParen) { result.pinReasons.insert(.namedLock) }
        case 19:
            if lx.isKeyword(t, "sql_calc_found_rows") { result.pinReasons.insert(.foundRows) }
        default:
            break
        }
    }

    /// An `@name` written right after an account name (`'app'@'%'`, `` `root`@`localhost` ``,
    /// `app@localhost`) is the account's host, not a user variable. A word that precedes
    /// expressions (`SELECT@x`, `AND@x`) is no account name.
    private static func isAccountHost(_ t: MySQLToken, after prev: MySQLToken, _ lx: MySQLLexer) -> Bool {
        guard prev.kind != .end, prev.end == t.start else { return false }
        switch prev.kind {
        case .string, .quotedIdentifier, .number:
            return true
        case .identifier:
            return !isExpressionKeyword(prev, lx)
        default:
            return false
        }
    }

    private static func isExpressionKeyword(_ t: MySQLToken, _ lx: MySQLLexer) -> Bool {
        switch t.end - t.start {
        case 2:
            return lx.isKeyword(t, "or") || lx.isKeyword(t, "by") || lx.isKeyword(t, "do") || lx.isKeyword(t, "if")
                || lx.isKeyword(t, "on") || lx.isKeyword(t, "in") || lx.isKeyword(t, "is") || lx.isKeyword(t, "as")
        case 3:
            return lx.isKeyword(t, "set") || lx.isKeyword(t, "and") || lx.isKeyword(t, "not") || lx.isKeyword(t, "xor")
                || lx.isKeyword(t, "div") || lx.isKeyword(t, "mod") || lx.isKeyword(t, "all") || lx.isKeyword(t, "any")
                || lx.isKeyword(t, "row")
        case 4:
            return lx.isKeyword(t, "into") || lx.isKeyword(t, "then") || lx.isKeyword(t, "else") || lx.isKeyword(t, "when")
                || lx.isKeyword(t, "case") || lx.isKeyword(t, "like") || lx.isKeyword(t, "some") || lx.isKeyword(t, "from")
                || lx.isKeyword(t, "with") || lx.isKeyword(t, "call")
        case 5:
            return lx.isKeyword(t, "where") || lx.isKeyword(t, "using") || lx.isKeyword(t, "value") || lx.isKeyword(t, "limit")
                || lx.isKeyword(t, "until") || lx.isKeyword(t, "while") || lx.isKeyword(t, "rlike") || lx.isKeyword(t, "union")
        case 6:
            return lx.isKeyword(t, "select") || lx.isKeyword(t, "values") || lx.isKeyword(t, "return") || lx.isKeyword(t, "having")
                || lx.isKeyword(t, "offset") || lx.isKeyword(t, "elseif") || lx.isKeyword(t, "exists") || lx.isKeyword(t, "regexp")
                || lx.isKeyword(t, "binary") || lx.isKeyword(t, "escape")
        case 7:
            return lx.isKeyword(t, "between") || lx.isKeyword(t, "execute")
        case 8:
            return lx.isKeyword(t, "distinct") || lx.isKeyword(t, "interval")
        default:
            return false
        }
    }
}

// MARK: - Blocks of stored programs and compound statements

/// Follows the nesting of `BEGIN ... END`, `IF ... END IF`, `CASE ... END [CASE]`,
/// `LOOP | WHILE | REPEAT | FOR ... END LOOP | WHILE | REPEAT | FOR`, so that the `;` inside
/// them do not end the statement, and tells where the statements inside them start (where `IF`,
/// `CASE` and the loops are statements; elsewhere `IF(` and `REPEAT(` are functions and `CASE`
/// an expression). Errors lean to closing early: an `END` without an opener is ignored.
struct BlockTracker {
    let enabled: Bool
    private(set) var depth = 0
    /// Bit `d`: the block at depth `d + 1` is a `CASE` expression (its `THEN`/`ELSE` start no statement).
    private var caseExpressions: UInt64 = 0

    init(enabled: Bool) { self.enabled = enabled }

    private mutating func push(caseExpression: Bool) {
        if depth < 64, caseExpression { caseExpressions |= 1 << UInt64(depth) }
        depth += 1
    }

    private mutating func pop() {
        guard depth > 0 else { return }
        depth -= 1
        if depth < 64 { caseExpressions &= ~(1 << UInt64(depth)) }
    }

    private var inCaseExpression: Bool {
        depth > 0 && depth <= 64 && caseExpressions & (1 << UInt64(depth - 1)) != 0
    }

    /// Applies the word `t` (an unquoted identifier); returns whether a statement starts after
    /// it. An `END` consumes the `IF`/`CASE`/loop keyword that follows it from `lx`.
    mutating func word(_ t: MySQLToken, prev: MySQLToken, atStart: Bool, _ lx: inout MySQLLexer) -> Bool {
        switch t.end - t.start {
        case 2:
            if lx.isKeyword(t, "if") {
                if atStart { push(caseExpression: false) }
            } else if lx.isKeyword(t, "do") {
                return !atStart  // WHILE ... DO, FOR ... DO, CREATE EVENT ... DO (not the DO statement)
            }
        case 3:
            if lx.isKeyword(t, "end") {
                pop()
                var peek = lx
                let u = peek.next()
                if lx.isKeyword(u, "if") || lx.isKeyword(u, "case") || lx.isKeyword(u, "loop") || lx.isKeyword(u, "while")
                    || lx.isKeyword(u, "repeat") || lx.isKeyword(u, "for")
                {
                    lx = peek
                }
            } else if lx.isKeyword(t, "for") {
                if atStart { push(caseExpression: false) }
            } else if lx.isKeyword(t, "not") {
                return atStart && lx.isKeyword(prev, "begin")  // BEGIN NOT ATOMIC
            } else if lx.isKeyword(t, "row") {
                return lx.isKeyword(prev, "each")  // CREATE TRIGGER ... FOR EACH ROW body
            }
        case 4:
            if lx.isKeyword(t, "case") {
                push(caseExpression: !atStart)
            } else if lx.isKeyword(t, "then") || lx.isKeyword(t, "else") {
                return depth > 0 && !inCaseExpression
            } else if lx.isKeyword(t, "loop") {
                if atStart {
                    push(caseExpression: false)
                    return true
                }
            }
        case 5:
            if lx.isKeyword(t, "begin") {
                push(caseExpression: false)
                return true
            } else if lx.isKeyword(t, "while") {
                if atStart { push(caseExpression: false) }
            }
        case 6:
            if lx.isKeyword(t, "repeat") {
                if atStart {
                    push(caseExpression: false)
                    return true
                }
            } else if lx.isKeyword(t, "atomic") {
                return atStart && lx.isKeyword(prev, "not")
            }
        default:
            break
        }
        return false
    }
}
