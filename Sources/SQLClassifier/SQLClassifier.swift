/// Decides which SQL statements pin a client session to its backend, and why.
///
/// Runs on every simple-protocol Query and every Parse. Works on UTF-8 bytes with a real
/// PostgreSQL tokenizer (comments, all string forms, dollar quotes, quoted identifiers), so text
/// inside literals and comments never triggers a rule. Ordinary statements are classified
/// without heap allocation; only `SET`/`RESET` statements allocate (to report `SetCommand`s).
public enum SQLClassifier {
    /// Classifies a Query/Parse string given as UTF-8 bytes (without the trailing NUL).
    public static func classify(_ sql: UnsafeRawBufferPointer, options: ClassifierOptions = ClassifierOptions()) -> Classification {
        if isPlainSelect(sql) {
            var result = Classification()
            result.statementCount = 1
            return result
        }
        return classifyByTokens(sql, options: options)
    }

    /// Whether `sql` is one SELECT that no rule can pin or reset, decided from its bytes alone
    /// (eight at a time, where the lexer and the rules take about 50 instructions a byte): it
    /// starts with the word SELECT, and nowhere (not even inside literals or comments) holds an opening
    /// parenthesis (every function rule needs one), the letters `into` in any case (SELECT ...
    /// INTO creates a table), or a semicolon other than trailing ones followed by whitespace
    /// (a second statement). A SELECT such as pgbench's is classified this way; any other text
    /// goes through the lexer. A unit test compares the two on generated statements.
    static func isPlainSelect(_ sql: UnsafeRawBufferPointer) -> Bool {
        // `i` (0x69) stays itself when folded with 0x20, and `I` becomes it.
        scanPlainSelect(sql, stops: { plainBytes($0, equalTo: UInt8(ascii: "i")) }) { c, i in
            if c | 0x20 == UInt8(ascii: "i"), plainWordFollows(sql, at: i, "into") { return false }
            return nil
        }
    }

    /// The classification by the lexer and every rule (`classify` without its shortcut).
    static func classifyByTokens(_ sql: UnsafeRawBufferPointer, options: ClassifierOptions) -> Classification {
        var result = Classification()
        guard sql.count > 0 else { return result }
        var lexer = Lexer(sql, backslashInPlainStrings: !options.standardConformingStrings)
        while true {
            let first = lexer.next()
            if first.kind == .end { break }
            if lexer.isPunctuation(first, UInt8(ascii: ";")) { continue }
            result.statementCount += 1
            var startLexer = lexer
            let kind = classifyStatementStart(first, &startLexer, options, &result)
            scanStatement(first, &lexer, kind, options, &result)
        }
        if result.statementCount != 1 {
            result.deallocatedName = nil
            result.executedName = nil
            result.executedNameRange = nil
            result.resets.remove(.executeStatement)
        }
        return result
    }

    /// Classifies a Query/Parse string.
    public static func classify(_ sql: String, options: ClassifierOptions = ClassifierOptions()) -> Classification {
        var sql = sql
        return sql.withUTF8 { classify(UnsafeRawBufferPointer($0), options: options) }
    }

    /// Classifies UTF-8 bytes from any collection (contiguous storage is used in place).
    public static func classify<Bytes: Collection>(_ bytes: Bytes, options: ClassifierOptions = ClassifierOptions()) -> Classification
        where Bytes.Element == UInt8
    {
        if let result = bytes.withContiguousStorageIfAvailable({ classify(UnsafeRawBufferPointer($0), options: options) }) {
            return result
        }
        return Array(bytes).withUnsafeBytes { classify($0, options: options) }
    }
}

// MARK: - Statement-start rules

/// What the statement-start rules learned that the whole-statement scan needs.
private enum StatementKind {
    case other
    /// `SELECT`, `WITH`, `(`: a `... INTO [TEMP] target` may create a table.
    case selectLike
    /// `CREATE ...`: objects named `pg_temp.x` are temporary.
    case create
}

// Punctuation bytes the rules compare tokens with (shared with SQLClassifier+Set.swift).
let semicolon = UInt8(ascii: ";")
let dot = UInt8(ascii: ".")
let comma = UInt8(ascii: ",")
let openParen = UInt8(ascii: "(")
let closeParen = UInt8(ascii: ")")
let openBracket = UInt8(ascii: "[")
let closeBracket = UInt8(ascii: "]")
let equals = UInt8(ascii: "=")

extension SQLClassifier {
    /// Rules that apply to the first keyword(s) of a statement. `lx` is positioned after `first`
    /// and is a private copy (the caller rescans the statement from `first`).
    fileprivate static func classifyStatementStart(
        _ first: Token, _ lx: inout Lexer, _ options: ClassifierOptions, _ result: inout Classification
    ) -> StatementKind {
        var t = first
        if lx.isKeyword(t, "explain") {
            t = skipExplainOptions(&lx)
        }
        guard t.kind == .identifier else {
            return lx.isPunctuation(t, openParen) ? .selectLike : .other
        }
        switch t.end - t.start {
        case 3:
            if lx.isKeyword(t, "set") { classifySet(&lx, options, &result) }
        case 4:
            if lx.isKeyword(t, "with") { return .selectLike }
            if lx.isKeyword(t, "load") { result.pinReasons.insert(.load) }
        case 5:
            if lx.isKeyword(t, "reset") { classifyReset(&lx, options, &result) }
            if lx.isKeyword(t, "close"), lx.isKeyword(lx.next(), "all") { result.resets.insert(.closeAll) }
        case 6:
            if lx.isKeyword(t, "select") { return .selectLike }
            if lx.isKeyword(t, "create") {
                classifyCreate(&lx, &result)
                return .create
            }
            if lx.isKeyword(t, "listen") { result.pinReasons.insert(.listen) }
        case 7:
            if lx.isKeyword(t, "prepare") {
                classifyPrepare(&lx, &result)
            } else if lx.isKeyword(t, "declare") {
                classifyDeclare(&lx, &result)
            } else if lx.isKeyword(t, "discard") {
                classifyDiscard(&lx, &result)
            } else if lx.isKeyword(t, "execute") {
                let name = lx.next()
                if name.kind == .identifier || (name.kind == .quotedIdentifier && !name.unterminated) {
                    var bytes: [UInt8] = []
                    lx.appendIdentifier(name, to: &bytes)
                    result.executedName = String(decoding: bytes, as: UTF8.self)
                    result.executedNameRange = name.start..<name.end
                    result.resets.insert(.executeStatement)
                }
            }
        case 8:
            if lx.isKeyword(t, "unlisten"), lx.isOperator(lx.next(), UInt8(ascii: "*")) { result.resets.insert(.unlistenAll) }
        case 10:
            if lx.isKeyword(t, "deallocate") { classifyDeallocate(&lx, &result) }
        default:
            break
        }
        return .other
    }

    /// Skips `(option, ...)` or `ANALYZE`/`ANALYSE`/`VERBOSE` after `EXPLAIN`; returns the next token.
    private static func skipExplainOptions(_ lx: inout Lexer) -> Token {
        var t = lx.next()
        if lx.isPunctuation(t, openParen) {
            var depth = 1
            while depth > 0 {
                t = lx.next()
                if t.kind == .end || lx.isPunctuation(t, semicolon) { return t }
                if lx.isPunctuation(t, openParen) { depth += 1 }
                if lx.isPunctuation(t, closeParen) { depth -= 1 }
            }
            return lx.next()
        }
        while lx.isKeyword(t, "analyze") || lx.isKeyword(t, "analyse") || lx.isKeyword(t, "verbose") {
            t = lx.next()
        }
        return t
    }

    /// `CREATE [OR REPLACE] [GLOBAL|LOCAL] {TEMP|TEMPORARY} ...`.
    private static func classifyCreate(_ lx: inout Lexer, _ result: inout Classification) {
        var t = lx.next()
        if lx.isKeyword(t, "or") {
            t = lx.next()  // REPLACE
            t = lx.next()
        }
        if lx.isKeyword(t, "global") || lx.isKeyword(t, "local") { t = lx.next() }
        if lx.isKeyword(t, "temp") || lx.isKeyword(t, "temporary") {
            result.pinReasons.insert(.temporaryObject)
        }
    }

    /// `DISCARD {ALL | PLANS | SEQUENCES | TEMP | TEMPORARY}`: a reset, not a pin. Anything else
    /// is a syntax error that changes nothing.
    private static func classifyDiscard(_ lx: inout Lexer, _ result: inout Classification) {
        let t = lx.next()
        if lx.isKeyword(t, "all") {
            result.resets.insert(.discardAll)
        } else if lx.isKeyword(t, "plans") {
            result.resets.insert(.discardPlans)
        } else if lx.isKeyword(t, "sequences") {
            result.resets.insert(.discardSequences)
        } else if lx.isKeyword(t, "temp") || lx.isKeyword(t, "temporary") {
            result.resets.insert(.discardTemp)
        }
    }

    /// `DEALLOCATE [PREPARE] {name | ALL}`: a reset. The name is reported so the session can
    /// tell a protocol-level statement of its own (which the proxy renamed) from an SQL-level one.
    private static func classifyDeallocate(_ lx: inout Lexer, _ result: inout Classification) {
        var t = lx.next()
        if lx.isKeyword(t, "prepare") { t = lx.next() }
        if lx.isKeyword(t, "all") {
            result.resets.insert(.deallocateAll)
            return
        }
        guard t.kind == .identifier || (t.kind == .quotedIdentifier && !t.unterminated) else { return }
        var bytes: [UInt8] = []
        lx.appendIdentifier(t, to: &bytes)
        result.resets.insert(.deallocate)
        result.deallocatedName = String(decoding: bytes, as: UTF8.self)
    }

    /// `PREPARE name ...` pins; `PREPARE TRANSACTION 'gid'` (two-phase commit) does not.
    private static func classifyPrepare(_ lx: inout Lexer, _ result: inout Classification) {
        let name = lx.next()
        guard name.kind == .identifier || name.kind == .quotedIdentifier else { return }
        if lx.isKeyword(name, "transaction"), lx.next().kind == .string { return }
        result.pinReasons.insert(.sqlPrepare)
    }

    /// `DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR {WITH|WITHOUT} HOLD FOR ...`.
    private static func classifyDeclare(_ lx: inout Lexer, _ result: inout Classification) {
        let name = lx.next()
        guard name.kind == .identifier || name.kind == .quotedIdentifier else { return }
        var t = lx.next()
        while !lx.isKeyword(t, "cursor") {
            guard lx.isKeyword(t, "binary") || lx.isKeyword(t, "asensitive") || lx.isKeyword(t, "insensitive")
                || lx.isKeyword(t, "scroll") || lx.isKeyword(t, "no")
            else { return }
            t = lx.next()
        }
        if lx.isKeyword(lx.next(), "with"), lx.isKeyword(lx.next(), "hold") {
            result.pinReasons.insert(.cursorWithHold)
        }
    }
}

// MARK: - Whole-statement scan

extension SQLClassifier {
    /// Scans one statement from `first` to its terminating `;` (or the end), applying the rules
    /// that hold anywhere in a statement. Leaves `lx` after the terminator.
    fileprivate static func scanStatement(
        _ first: Token, _ lx: inout Lexer, _ kind: StatementKind, _ options: ClassifierOptions,
        _ result: inout Classification
    ) {
        var t = first
        var prev1 = Token.none, prev2 = Token.none, prev3 = Token.none
        var parenDepth = 0
        // psql's heuristic for SQL-standard routine bodies (`BEGIN ATOMIC ... END`), whose `;`
        // do not end the statement: the leading identifiers spell CREATE [OR REPLACE] FUNCTION|PROCEDURE.
        var identifierCount = 0
        var leadingWords: UInt32 = 0
        var isRoutineDefinition = false
        var atomicDepth = 0

        while true {
            switch t.kind {
            case .end:
                return
            case .punctuation:
                switch lx.buf[t.start] {
                case semicolon:
                    if parenDepth == 0, atomicDepth == 0 { return }
                case openParen, openBracket:
                    parenDepth += 1
                case closeParen, closeBracket:
                    if parenDepth > 0 { parenDepth -= 1 }
                case dot:
                    if kind == .create, lx.isTempSchema(prev1) { result.pinReasons.insert(.temporaryObject) }
                default:
                    break
                }
            case .identifier:
                // Only a statement that starts with CREATE can define a routine: the others
                // skip the five keyword comparisons per leading word (a tenth of the
                // classifier's instructions on an ordinary SELECT).
                if kind == .create, identifierCount < 4 {
                    leadingWords |= UInt32(leadingWordCode(t, lx)) << (8 * UInt32(identifierCount))
                    identifierCount += 1
                    isRoutineDefinition = isRoutineDefinitionPrefix(leadingWords)
                }
                if isRoutineDefinition {
                    if parenDepth == 0 {
                        if lx.isKeyword(t, "begin") {
                            if lx.isKeyword(peekToken(lx), "atomic") { atomicDepth += 1 }
                        } else if lx.isKeyword(t, "case") {
                            if atomicDepth > 0 { atomicDepth += 1 }
                        } else if lx.isKeyword(t, "end") {
                            if atomicDepth > 0 { atomicDepth -= 1 }
                        }
                    }
                } else {
                    if kind == .selectLike, lx.isKeyword(t, "into"),
                       !lx.isKeyword(prev1, "insert"), !lx.isKeyword(prev1, "merge"),
                       selectIntoCreatesTemporaryTable(lx)
                    {
                        result.pinReasons.insert(.temporaryObject)
                    }
                    checkFunctionCall(t, prev1, prev2, prev3, lx, options, &result)
                }
            case .quotedIdentifier:
                if !isRoutineDefinition { checkFunctionCall(t, prev1, prev2, prev3, lx, options, &result) }
            default:
                break
            }
            prev3 = prev2
            prev2 = prev1
            prev1 = t
            t = lx.next()
        }
    }

    private static func leadingWordCode(_ t: Token, _ lx: Lexer) -> UInt8 {
        if lx.isKeyword(t, "create") { return UInt8(ascii: "c") }
        if lx.isKeyword(t, "or") { return UInt8(ascii: "o") }
        if lx.isKeyword(t, "replace") { return UInt8(ascii: "r") }
        if lx.isKeyword(t, "function") { return UInt8(ascii: "f") }
        if lx.isKeyword(t, "procedure") { return UInt8(ascii: "p") }
        return 1
    }

    private static func isRoutineDefinitionPrefix(_ words: UInt32) -> Bool {
        let w0 = UInt8(truncatingIfNeeded: words), w1 = UInt8(truncatingIfNeeded: words >> 8)
        let w2 = UInt8(truncatingIfNeeded: words >> 16), w3 = UInt8(truncatingIfNeeded: words >> 24)
        let f = UInt8(ascii: "f"), p = UInt8(ascii: "p")
        guard w0 == UInt8(ascii: "c") else { return false }
        return w1 == f || w1 == p || (w1 == UInt8(ascii: "o") && w2 == UInt8(ascii: "r") && (w3 == f || w3 == p))
    }

    /// After `INTO` in a SELECT: `[GLOBAL|LOCAL] {TEMP|TEMPORARY} [TABLE] name` or `[TABLE] pg_temp.name`.
    private static func selectIntoCreatesTemporaryTable(_ after: Lexer) -> Bool {
        var lx = after
        var t = lx.next()
        if lx.isKeyword(t, "global") || lx.isKeyword(t, "local") { t = lx.next() }
        if lx.isKeyword(t, "temp") || lx.isKeyword(t, "temporary") {
            // `INTO temp FROM ...` names a table called temp; a target must follow TEMP.
            let u = lx.next()
            if u.kind == .quotedIdentifier { return true }
            return u.kind == .identifier && !isReservedAfterIntoTarget(u, lx)
        }
        if lx.isKeyword(t, "table") { t = lx.next() }
        return lx.isTempSchema(t) && lx.isPunctuation(lx.next(), dot)
    }

    private static func isReservedAfterIntoTarget(_ t: Token, _ lx: Lexer) -> Bool {
        lx.isKeyword(t, "from") || lx.isKeyword(t, "where") || lx.isKeyword(t, "group") || lx.isKeyword(t, "having")
            || lx.isKeyword(t, "window") || lx.isKeyword(t, "order") || lx.isKeyword(t, "limit")
            || lx.isKeyword(t, "offset") || lx.isKeyword(t, "fetch") || lx.isKeyword(t, "for")
            || lx.isKeyword(t, "union") || lx.isKeyword(t, "intersect") || lx.isKeyword(t, "except")
    }

    private enum FunctionRule {
        case none, advisoryLock, advisoryUnlockAll, sequence, setConfig
    }

    private static func functionRule(_ t: Token, _ lx: Lexer) -> FunctionRule {
        let length = t.kind == .identifier ? t.end - t.start : t.contentEnd - t.contentStart
        switch length {
        case 6:
            return lx.isName(t, "setval") ? .sequence : .none
        case 7:
            return lx.isName(t, "nextval") || lx.isName(t, "currval") || lx.isName(t, "lastval") ? .sequence : .none
        case 10:
            return lx.isName(t, "set_config") ? .setConfig : .none
        case 16:
            return lx.isName(t, "pg_advisory_lock") ? .advisoryLock : .none
        case 20:
            return lx.isName(t, "pg_try_advisory_lock") ? .advisoryLock : .none
        case 22:
            return lx.isName(t, "pg_advisory_unlock_all") ? .advisoryUnlockAll : .none
        case 23:
            return lx.isName(t, "pg_advisory_lock_shared") ? .advisoryLock : .none
        case 27:
            return lx.isName(t, "pg_try_advisory_lock_shared") ? .advisoryLock : .none
        default:
            return .none
        }
    }

    /// Function-call rules: `[pg_catalog.]name (` anywhere in a statement.
    private static func checkFunctionCall(
        _ t: Token, _ prev1: Token, _ prev2: Token, _ prev3: Token, _ after: Lexer,
        _ options: ClassifierOptions, _ result: inout Classification
    ) {
        let rule = functionRule(t, after)
        guard rule != .none else { return }
        var before = prev1
        if after.isPunctuation(prev1, dot) {
            guard after.isName(prev2, "pg_catalog") else { return }
            before = prev3
        }
        // `CREATE/DROP/ALTER FUNCTION nextval(...)`, `GRANT ... ON FUNCTION ...` name a function without calling it.
        if after.isKeyword(before, "function") || after.isKeyword(before, "procedure") || after.isKeyword(before, "routine") {
            return
        }
        var lx = after
        guard lx.isPunctuation(lx.next(), openParen) else { return }
        switch rule {
        case .advisoryLock:
            result.pinReasons.insert(.advisoryLock)
        case .advisoryUnlockAll:
            result.resets.insert(.advisoryUnlockAll)
        case .sequence:
            result.pinReasons.insert(.sequenceFunction)
        case .setConfig:
            classifySetConfig(&lx, options, &result)
        case .none:
            break
        }
    }

    /// `set_config(name, value, is_local)`: pins unless `is_local` is literally true.
    /// A literal name of `role`/`session_authorization` pins as a role change.
    private static func classifySetConfig(_ lx: inout Lexer, _ options: ClassifierOptions, _ result: inout Classification) {
        var depth = 1
        var argument = 0
        var nameToken = Token.none, nameTokens = 0
        var localToken = Token.none, localTokens = 0
        while true {
            let t = lx.next()
            if t.kind == .end || lx.isPunctuation(t, semicolon) { break }
            if lx.isPunctuation(t, closeParen) || lx.isPunctuation(t, closeBracket) {
                depth -= 1
                if depth == 0 { break }
            } else if lx.isPunctuation(t, openParen) || lx.isPunctuation(t, openBracket) {
                depth += 1
            } else if depth == 1, lx.isPunctuation(t, comma) {
                argument += 1
                continue
            }
            if argument == 0 {
                nameToken = t
                nameTokens += 1
            } else if argument == 2 {
                localToken = t
                localTokens += 1
            }
        }
        if localTokens == 1, isTrueLiteral(localToken, lx) { return }
        if nameTokens == 1,
           lx.isStringLiteral(nameToken, equalToIgnoringCase: "role")
            || lx.isStringLiteral(nameToken, equalToIgnoringCase: "session_authorization")
        {
            result.pinReasons.insert(.setRole)
        } else {
            pinVariable(options, &result)
        }
    }

    private static func isTrueLiteral(_ t: Token, _ lx: Lexer) -> Bool {
        if t.kind == .identifier { return lx.isKeyword(t, "true") }
        return lx.isStringLiteral(t, equalToIgnoringCase: "true") || lx.isStringLiteral(t, equalToIgnoringCase: "t")
            || lx.isStringLiteral(t, equalToIgnoringCase: "on") || lx.isStringLiteral(t, equalToIgnoringCase: "yes")
            || lx.isStringLiteral(t, equalToIgnoringCase: "y") || lx.isStringLiteral(t, equalToIgnoringCase: "1")
    }
}
