// The SET rules of the MySQL classifier: which variables a statement assigns (reported as
// `MySQLSetAssignment`s for the session) and which assignments pin. Split from
// MySQLClassifier.swift, which holds the entry points, the statement-start rules and the
// whole-statement scan.

// MARK: - SET

extension MySQLClassifier {
    /// `SET ...` (`lx` is positioned after `SET`):
    ///
    /// - `SET [GLOBAL | SESSION | LOCAL | PERSIST | PERSIST_ONLY] var = expr, ...` with `@@var`,
    ///   `@@scope.var` and `@uservar` targets; a scope keyword holds for the assignments after it
    ///   that have none (as MySQL documents), `@@scope.` only for its own;
    /// - `SET NAMES ...`, `SET {CHARACTER SET | CHARSET} ...` (`setsNames`; they may be items of
    ///   the list);
    /// - `SET [scope] TRANSACTION characteristic, ...`;
    /// - `SET PASSWORD [FOR user] = ...`, `SET DEFAULT ROLE ...` (account changes: no pin),
    ///   `SET ROLE ...` (`setRole`), `SET RESOURCE GROUP ...` (`setVariable`), MariaDB's
    ///   `SET STATEMENT var = value, ... FOR statement` (per statement: the inner statement is
    ///   classified).
    static func classifySet(_ lx: inout MySQLLexer, _ options: MySQLClassifierOptions, _ result: inout MySQLClassification) {
        var t = lx.next()
        if t.kind == .identifier {
            let u = peekToken(lx)
            switch t.end - t.start {
            case 4 where lx.isKeyword(t, "role") && !lx.isAssignment(u):
                result.pinReasons.insert(.setRole)
                return
            case 7 where lx.isKeyword(t, "default") && lx.isKeyword(u, "role"):
                return
            case 8 where lx.isKeyword(t, "password") && (lx.isAssignment(u) || lx.isKeyword(u, "for")):
                return  // the value is a secret: never reported
            case 8 where lx.isKeyword(t, "resource") && lx.isKeyword(u, "group"):
                pinVariable(options, &result)
                return
            case 9 where lx.isKeyword(t, "statement") && !lx.isAssignment(u):
                classifySetStatement(&lx, options, &result)
                return
            case 11 where lx.isKeyword(t, "transaction"):
                classifyTransactionCharacteristics(&lx, .nextTransaction, options, &result)
                return
            default:
                if let scope = scopeKeyword(t, lx), lx.isKeyword(u, "transaction") {
                    _ = lx.next()  // TRANSACTION
                    classifyTransactionCharacteristics(&lx, scope, options, &result)
                    return
                }
            }
        }

        var carriedScope = MySQLSetAssignment.Scope.session
        while true {
            if let scope = scopeKeyword(t, lx), !lx.isAssignment(peekToken(lx)) {
                carriedScope = scope
                t = lx.next()
            }
            if t.kind == .identifier, isCharacterSetItem(t, &lx) {
                result.setsNames = true
                if !skipValue(&lx) { return }
                t = lx.next()
                continue
            }
            var scope = carriedScope
            let name: String
            switch t.kind {
            case .userVariable:
                var bytes: [UInt8] = []
                lx.appendLowercasedName(t, to: &bytes)
                name = String(decoding: bytes, as: UTF8.self)
                scope = .user
            case .systemVariable:
                var peek = lx
                if let explicit = systemVariableScope(t, lx), lx.isPunctuation(peek.next(), dot) {
                    let part = peek.next()
                    guard let dotted = parseDottedName(first: part, &peek) else {
                        pinVariable(options, &result)  // malformed: be conservative
                        return
                    }
                    lx = peek
                    name = dotted
                    scope = explicit
                } else {
                    guard let dotted = parseDottedName(first: t, &lx) else { return }
                    name = dotted
                    scope = .session
                }
            case .identifier, .quotedIdentifier:
                guard let dotted = parseDottedName(first: t, &lx) else { return }
                name = dotted
            default:
                // `SET;` is a syntax error that runs nothing; anything else, be conservative.
                if t.kind != .end, !lx.isPunctuation(t, semicolon) { pinVariable(options, &result) }
                return
            }
            guard lx.isAssignment(lx.next()) else {
                if scope == .session { pinVariable(options, &result) }  // malformed: be conservative
                return
            }
            var first = MySQLToken.none, last = MySQLToken.none
            let more = readValue(&lx, &first, &last)
            let value = first.kind == .end ? "" : lx.text(first.start, last.end)
            record(MySQLSetAssignment(name: name, scope: scope, value: value), options, &result)
            if !more { return }
            t = lx.next()
        }
    }

    /// `GLOBAL`, `SESSION`, `LOCAL`, `PERSIST`, `PERSIST_ONLY` as a word.
    private static func scopeKeyword(_ t: MySQLToken, _ lx: MySQLLexer) -> MySQLSetAssignment.Scope? {
        guard t.kind == .identifier else { return nil }
        return scope(named: t, lx)
    }

    /// The scope of `@@global.`, `@@session.`, `@@local.`, `@@persist.`, `@@persist_only.`.
    private static func systemVariableScope(_ t: MySQLToken, _ lx: MySQLLexer) -> MySQLSetAssignment.Scope? {
        guard t.kind == .systemVariable, !t.hasEscapes, lx.buf[t.contentStart &- 1] != UInt8(ascii: "`") else { return nil }
        return scope(named: t, lx)
    }

    private static func scope(named t: MySQLToken, _ lx: MySQLLexer) -> MySQLSetAssignment.Scope? {
        let s = t.contentStart, e = t.contentEnd
        if lx.equalsIgnoringCase(s, e, "session") || lx.equalsIgnoringCase(s, e, "local") { return .session }
        if lx.equalsIgnoringCase(s, e, "global") { return .global }
        if lx.equalsIgnoringCase(s, e, "persist") { return .persist }
        if lx.equalsIgnoringCase(s, e, "persist_only") { return .persistOnly }
        return nil
    }

    /// `NAMES`, `CHARSET`, or `CHARACTER SET` (then consumed through `SET`).
    private static func isCharacterSetItem(_ t: MySQLToken, _ lx: inout MySQLLexer) -> Bool {
        if lx.isKeyword(t, "names") || lx.isKeyword(t, "charset") { return true }
        guard lx.isKeyword(t, "character") else { return false }
        var peek = lx
        guard lx.isKeyword(peek.next(), "set") else { return false }
        lx = peek
        return true
    }

    /// A name and its `.part`s, from `first` (a word, a quoted identifier or the name of a
    /// `@@variable`); `lx` ends after the name. ASCII-lowercased, joined with `.`.
    private static func parseDottedName(first: MySQLToken, _ lx: inout MySQLLexer) -> String? {
        guard first.kind == .identifier || first.kind == .quotedIdentifier || first.kind == .number
            || first.kind == .systemVariable
        else { return nil }
        var bytes: [UInt8] = []
        lx.appendLowercasedName(first, to: &bytes)
        while true {
            var peek = lx
            guard lx.isPunctuation(peek.next(), dot) else { break }
            let part = peek.next()
            guard part.kind == .identifier || part.kind == .quotedIdentifier || part.kind == .number else { break }
            bytes.append(dot)
            lx.appendLowercasedName(part, to: &bytes)
            lx = peek
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Reads a value expression up to a `,` outside parentheses (returns true: another item
    /// follows) or the end of the statement (false). `first`/`last` are its first and last tokens.
    private static func readValue(_ lx: inout MySQLLexer, _ first: inout MySQLToken, _ last: inout MySQLToken) -> Bool {
        var depth = 0
        while true {
            let t = lx.next()
            if t.kind == .end || lx.isPunctuation(t, semicolon) { return false }
            if t.kind == .punctuation {
                switch lx.buf[t.start] {
                case openParen: depth += 1
                case closeParen: if depth > 0 { depth -= 1 }
                case comma: if depth == 0 { return true }
                default: break
                }
            }
            if first.kind == .end { first = t }
            last = t
        }
    }

    private static func skipValue(_ lx: inout MySQLLexer) -> Bool {
        var first = MySQLToken.none, last = MySQLToken.none
        return readValue(&lx, &first, &last)
    }

    /// `characteristic [, characteristic]` of `SET [scope] TRANSACTION` (`lx` after `TRANSACTION`):
    /// `ISOLATION LEVEL {REPEATABLE READ | READ COMMITTED | READ UNCOMMITTED | SERIALIZABLE}`,
    /// `READ WRITE`, `READ ONLY`. Reported as `transaction_isolation` / `transaction_read_only`.
    private static func classifyTransactionCharacteristics(
        _ lx: inout MySQLLexer, _ scope: MySQLSetAssignment.Scope, _ options: MySQLClassifierOptions,
        _ result: inout MySQLClassification
    ) {
        while true {
            let t = lx.next()
            if lx.isKeyword(t, "isolation") {
                guard lx.isKeyword(lx.next(), "level") else { break }
                let level = lx.next()
                let value: String
                if lx.isKeyword(level, "serializable") {
                    value = "'SERIALIZABLE'"
                } else if lx.isKeyword(level, "repeatable"), lx.isKeyword(lx.next(), "read") {
                    value = "'REPEATABLE-READ'"
                } else if lx.isKeyword(level, "read") {
                    let u = lx.next()
                    if lx.isKeyword(u, "committed") {
                        value = "'READ-COMMITTED'"
                    } else if lx.isKeyword(u, "uncommitted") {
                        value = "'READ-UNCOMMITTED'"
                    } else {
                        break
                    }
                } else {
                    break
                }
                record(MySQLSetAssignment(name: "transaction_isolation", scope: scope, value: value), options, &result)
            } else if lx.isKeyword(t, "read") {
                let u = lx.next()
                if lx.isKeyword(u, "only") {
                    record(MySQLSetAssignment(name: "transaction_read_only", scope: scope, value: "ON"), options, &result)
                } else if lx.isKeyword(u, "write") {
                    record(MySQLSetAssignment(name: "transaction_read_only", scope: scope, value: "OFF"), options, &result)
                } else {
                    break
                }
            } else {
                break
            }
            guard lx.isPunctuation(lx.next(), comma) else { return }
        }
        // Malformed: an error that changes nothing, unless it was half-applied; be conservative.
        if scope == .session { pinVariable(options, &result) }
    }

    /// MariaDB's `SET STATEMENT var = value [, ...] FOR statement`: the assignments hold for the
    /// one statement (no pin, not reported); the statement after `FOR` is classified.
    private static func classifySetStatement(
        _ lx: inout MySQLLexer, _ options: MySQLClassifierOptions, _ result: inout MySQLClassification
    ) {
        var depth = 0
        while true {
            let t = lx.next()
            if t.kind == .end || lx.isPunctuation(t, semicolon) { return }
            if lx.isPunctuation(t, openParen) {
                depth += 1
            } else if lx.isPunctuation(t, closeParen) {
                if depth > 0 { depth -= 1 }
            } else if depth == 0, lx.isKeyword(t, "for") {
                let inner = lx.next()
                _ = classifyStatementStart(inner, &lx, options, &result, nested: true)
                return
            }
        }
    }

    private static func record(
        _ assignment: MySQLSetAssignment, _ options: MySQLClassifierOptions, _ result: inout MySQLClassification
    ) {
        result.sets.append(assignment)
        switch assignment.scope {
        case .session:
            if !options.trackedVariables.contains(assignment.name) { pinVariable(options, &result) }
        case .user:
            result.pinReasons.insert(.userVariable)
        case .global, .persist, .persistOnly, .nextTransaction:
            break
        }
    }

    static func pinVariable(_ options: MySQLClassifierOptions, _ result: inout MySQLClassification) {
        if !options.excludeVariableSets { result.pinReasons.insert(.setVariable) }
    }
}
