// The SET / RESET rules of the classifier: which session variables a statement changes (reported
// as `SetCommand`s for the session to track) and which pin the session. Split from
// SQLClassifier.swift, which holds the entry points, the statement-start rules and the
// whole-statement scan.

// MARK: - SET / RESET

extension SQLClassifier {
    /// `SET [SESSION|LOCAL] ...` (`lx` is positioned after `SET`).
    static func classifySet(_ lx: inout Lexer, _ options: ClassifierOptions, _ result: inout Classification) {
        var t = lx.next()
        var scope = SetCommand.Scope.session
        if lx.isKeyword(t, "local") {
            scope = .local
            t = lx.next()
        } else if lx.isKeyword(t, "session") {
            var peek = lx
            let u = peek.next()
            if !lx.isKeyword(u, "authorization"), !lx.isKeyword(u, "characteristics") { t = lx.next() }
        }
        guard t.kind == .identifier || t.kind == .quotedIdentifier else {
            // Malformed (`SET;` is a syntax error and runs nothing); be conservative otherwise.
            if t.kind != .end, !lx.isPunctuation(t, semicolon), scope == .session { pinVariable(options, &result) }
            return
        }

        if t.kind == .identifier {
            var peek = lx
            let u = peek.next()
            switch t.end - t.start {
            case 11 where lx.isKeyword(t, "transaction"), 11 where lx.isKeyword(t, "constraints"):
                return  // transaction-scoped: SET TRANSACTION ..., SET CONSTRAINTS ...
            case 7 where lx.isKeyword(t, "session"):
                lx = peek
                if lx.isKeyword(u, "authorization") {
                    setCommand("session_authorization", keywordForm: true, &lx, scope, options, &result)
                } else if scope == .session {
                    pinVariable(options, &result)  // SESSION CHARACTERISTICS AS TRANSACTION ...
                }
                return
            case 4 where lx.isKeyword(t, "time") && lx.isKeyword(u, "zone"):
                lx = peek
                setCommand("timezone", keywordForm: true, &lx, scope, options, &result)
                return
            case 5 where lx.isKeyword(t, "names"):
                setCommand("client_encoding", keywordForm: true, &lx, scope, options, &result)
                return
            case 3 where lx.isKeyword(t, "xml") && lx.isKeyword(u, "option"):
                lx = peek
                setCommand("xmloption", keywordForm: true, &lx, scope, options, &result)
                return
            case 6 where lx.isKeyword(t, "schema") && u.kind == .string:
                setCommand("search_path", keywordForm: true, &lx, scope, options, &result)
                return
            case 7 where lx.isKeyword(t, "catalog") && u.kind == .string:
                setCommand("catalog", keywordForm: true, &lx, scope, options, &result)
                return
            case 4 where lx.isKeyword(t, "role") && !isAssignment(u, lx):
                setCommand("role", keywordForm: true, &lx, scope, options, &result)
                return
            default:
                break
            }
        }

        // Generic: var_name {TO | =} value | var_name FROM CURRENT
        guard let name = parseVariableName(first: t, &lx) else {
            if scope == .session { pinVariable(options, &result) }
            return
        }
        let u = lx.next()
        if isAssignment(u, lx) {
            setCommand(name, keywordForm: false, &lx, scope, options, &result)
        } else if scope == .session {
            // `FROM CURRENT`, or malformed: pin conservatively, nothing to report.
            let lower = String(decoding: name.utf8.map(asciiLower), as: UTF8.self)
            if lower == "role" || lower == "session_authorization" {
                result.pinReasons.insert(.setRole)
            } else {
                pinVariable(options, &result)
            }
        }
    }

    /// `RESET {name | ALL | ROLE | SESSION AUTHORIZATION | TIME ZONE | TRANSACTION ISOLATION LEVEL}`.
    static func classifyReset(_ lx: inout Lexer, _ options: ClassifierOptions, _ result: inout Classification) {
        let t = lx.next()
        guard t.kind == .identifier || t.kind == .quotedIdentifier else { return }
        var name: String
        if lx.isKeyword(t, "transaction") {
            return  // RESET TRANSACTION ISOLATION LEVEL: transaction-scoped
        } else if lx.isKeyword(t, "all") {
            // Reported (`setCommands`) but not a pin: the session applies it (SessionResets).
            result.setCommands.append(SetCommand(name: "all", value: nil, scope: .session, isReset: true))
            result.resets.insert(.resetAll)
            return
        } else if lx.isKeyword(t, "session"), lx.isKeyword(peekToken(lx), "authorization") {
            name = "session_authorization"
        } else if lx.isKeyword(t, "time"), lx.isKeyword(peekToken(lx), "zone") {
            name = "timezone"
        } else {
            guard let parsed = parseVariableName(first: t, &lx) else { return }
            name = parsed
        }
        record(SetCommand(name: name, value: nil, scope: .session, isReset: true), options, &result)
    }

    static func peekToken(_ lx: Lexer) -> Token {
        var copy = lx
        return copy.next()
    }

    private static func isAssignment(_ t: Token, _ lx: Lexer) -> Bool {
        lx.isKeyword(t, "to") || lx.isOperator(t, equals)
    }

    /// `ColId ('.' ColId)*` starting at `first`; `lx` ends positioned after the name.
    private static func parseVariableName(first: Token, _ lx: inout Lexer) -> String? {
        guard first.kind == .identifier || first.kind == .quotedIdentifier else { return nil }
        var bytes: [UInt8] = []
        lx.appendIdentifier(first, to: &bytes)
        while true {
            var peek = lx
            guard lx.isPunctuation(peek.next(), dot) else { break }
            let part = peek.next()
            guard part.kind == .identifier || part.kind == .quotedIdentifier else { break }
            bytes.append(dot)
            lx.appendIdentifier(part, to: &bytes)
            lx = peek
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Reads the value (rest of the statement) and records a `SetCommand`.
    /// `keywordForm`: an empty value means the default (`SET NAMES`), and `LOCAL` after `TIME ZONE`
    /// means the default.
    private static func setCommand(
        _ name: String, keywordForm: Bool, _ lx: inout Lexer, _ scope: SetCommand.Scope,
        _ options: ClassifierOptions, _ result: inout Classification
    ) {
        var first = Token.none
        var last = Token.none
        var tokens = 0
        while true {
            let t = lx.next()
            if t.kind == .end || lx.isPunctuation(t, semicolon) { break }
            if tokens == 0 { first = t }
            last = t
            tokens += 1
        }
        var isReset = false
        if tokens == 0 {
            isReset = keywordForm
        } else if tokens == 1 {
            isReset = lx.isKeyword(first, "default") || (name == "timezone" && keywordForm && lx.isKeyword(first, "local"))
        }
        let value: String? = isReset || tokens == 0 ? nil : lx.text(first.start, last.end)
        record(SetCommand(name: name, value: value, scope: scope, isReset: isReset), options, &result)
    }

    private static func record(_ command: SetCommand, _ options: ClassifierOptions, _ result: inout Classification) {
        result.setCommands.append(command)
        guard command.scope == .session else { return }
        let lower = String(decoding: command.name.utf8.map(asciiLower), as: UTF8.self)
        if lower == "role" || lower == "session_authorization" {
            result.pinReasons.insert(.setRole)
            return
        }
        if command.isReset { result.resets.insert(.resetParameter) }
        if !options.trackedParameters.contains(lower) {
            pinVariable(options, &result)
        }
    }

    static func pinVariable(_ options: ClassifierOptions, _ result: inout Classification) {
        if !options.excludeVariableSets { result.pinReasons.insert(.setVariable) }
    }
}
