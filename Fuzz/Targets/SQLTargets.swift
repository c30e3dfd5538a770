import SQLClassifier

/// The SQL lexer and classifier, and the redaction of SQL text for logs.
enum SQLTargets {
    // MARK: classify

    static let trackedParameters: Set<String> = ["application_name", "datestyle", "timezone", "search_path"]

    /// `SQLClassifier.classify` on the whole input as SQL, with every combination of
    /// `standard_conforming_strings` and `EXCLUDE_VARIABLE_SETS` (tracked parameters with the
    /// latter). Properties: the bytes, String and generic-collection entry points agree; an
    /// EXECUTE's name range lies inside the text and holds a name; a statement count no larger
    /// than the text. Redaction runs on the same text too (it must not crash either).
    static let classify: FuzzTargets.Target = { data in
        let text = String(validating: data, as: UTF8.self)
        for standardConformingStrings in [true, false] {
            for excludeVariableSets in [false, true] {
                let options = ClassifierOptions(
                    excludeVariableSets: excludeVariableSets, standardConformingStrings: standardConformingStrings,
                    trackedParameters: excludeVariableSets ? trackedParameters : [])
                let result = data.withUnsafeBytes { SQLClassifier.classify($0, options: options) }
                check(result, data)
                // A collection without contiguous storage takes the copying path.
                let lazy = SQLClassifier.classify(data.lazy.map { $0 }, options: options)
                FuzzCheck.require(lazy == result, "classify: a lazy collection gives \(lazy), bytes \(result)")
                if let text {
                    let fromString = SQLClassifier.classify(text, options: options)
                    FuzzCheck.require(fromString == result, "classify: the String gives \(fromString), the bytes \(result)")
                }
            }
        }
        _ = SQLRedaction.redacted(String(decoding: data, as: UTF8.self))
    }

    private static func check(_ result: Classification, _ data: [UInt8]) {
        FuzzCheck.require(result.statementCount <= data.count, "classify: \(result.statementCount) statements in \(data.count) bytes")
        FuzzCheck.require((result.executedName == nil) == (result.executedNameRange == nil),
                          "classify: executedName \(String(describing: result.executedName)) with range \(String(describing: result.executedNameRange))")
        if let range = result.executedNameRange {
            FuzzCheck.require(range.lowerBound >= 0 && range.upperBound <= data.count && !range.isEmpty,
                              "classify: executedNameRange \(range) outside 0..<\(data.count)")
            FuzzCheck.require(result.statementCount == 1, "classify: an executed name with \(result.statementCount) statements")
        }
        if result.deallocatedName != nil || result.executedName != nil {
            FuzzCheck.require(result.statementCount == 1, "classify: a statement name with \(result.statementCount) statements")
        }
    }

    // MARK: redact

    /// The secret the redaction property looks for: letters and digits only, so that it can
    /// never be made of the mask `'***'` and what is around it.
    static let marker = Array("Kq7SECRETmarker9vX".utf8)

    /// A property: a marker placed inside a string literal (or a comment) of a statement never
    /// appears in `SQLRedaction.redacted`'s output.
    ///
    /// The input is read as a program (FuzzReader) that writes a statement for one setting of
    /// `standard_conforming_strings` (the first choice; backslashes in `'..'` and `N'..'`
    /// literals escape only with it off, and `U&'..'` exists only with it on): tokens that are
    /// complete in themselves (keywords, identifiers, quoted identifiers, closed comments,
    /// literals, numbers, operators that cannot start a comment, bytes that cannot start a
    /// quote), each followed by white space; then the marker inside a literal written in one of
    /// PostgreSQL's quoting styles (`'..'` for either `standard_conforming_strings`, `E'..'`,
    /// `N'..'`, `B'..'`, `X'..'`, `U&'..'` with or without `UESCAPE`, `$$..$$`, `$tag$..$tag$`,
    /// a block comment, nested or not, a line comment), its content around the marker chosen by
    /// the input and escaped for that style; then the rest of the input, unchanged. Nothing
    /// after a closed literal can make its content leave it (a following quote only extends a
    /// `'..'` literal), and every token before it is closed in that setting, so in PostgreSQL's
    /// own lexer, with that setting, the marker is inside a literal or comment whatever the
    /// input. (Redaction lexes both ways, since the session may have changed the setting.) When the marker also occurs
    /// elsewhere in the text (the input wrote it) the property says nothing, and the input is
    /// skipped.
    static let redact: FuzzTargets.Target = { data in
        var reader = FuzzReader(data)
        let conforming = reader.choice(2) == 0
        var sql: [UInt8] = []
        for _ in 0..<reader.choice(6) {
            appendToken(&reader, conforming, to: &sql)
            appendSpace(&reader, to: &sql)
        }
        appendSecret(&reader, conforming, to: &sql)
        appendSpace(&reader, to: &sql)
        for _ in 0..<reader.choice(3) {
            appendToken(&reader, conforming, to: &sql)
            appendSpace(&reader, to: &sql)
        }
        sql += reader.rest()

        let text = String(decoding: sql, as: UTF8.self)
        guard Array(text.utf8).occurrences(of: marker) == 1 else { return }
        let redacted = SQLRedaction.redacted(text)
        FuzzCheck.require(Array(redacted.utf8).occurrences(of: marker) == 0,
                          "redact: the secret survived:\n\(text.debugDescription)\n->\n\(redacted.debugDescription)")
    }

    private static let keywords: [String] = [
        "SET", "RESET", "ALTER ROLE app PASSWORD", "CREATE ROLE", "SELECT", "FROM", "WHERE", "set_config(", "DISCARD ALL",
        "DEALLOCATE", "PREPARE", "EXECUTE", "LISTEN", "BEGIN", "COPY", "TO STDOUT", "WITH", "UESCAPE", "E", "U", "N", "B",
        "X", "U&", "LOCAL", "SESSION", "TIME ZONE", "search_path", "OPTIONS (", ")", "dblink_connect(", ";", "DO",
        "LANGUAGE", "CREATE FUNCTION f() RETURNS int AS", "VALUES (", ",", "::text", "=",
    ]

    private static func appendSpace(_ reader: inout FuzzReader, to sql: inout [UInt8]) {
        // PostgreSQL's white space less \v (older servers do not count it).
        let spaces: [UInt8] = [0x20, 0x0A, 0x09, 0x0D, 0x0C]
        sql.append(spaces[reader.choice(spaces.count)])
    }

    private static func appendToken(_ reader: inout FuzzReader, _ conforming: Bool, to sql: inout [UInt8]) {
        switch reader.choice(10) {
        case 0:
            sql += keywords[reader.choice(keywords.count)].utf8
        case 1:  // identifier: letters, digits, _, $ and bytes >= 0x80, not starting with a digit or $
            let run = reader.run(maximum: 12).map(identifierByte)
            sql += [UInt8(ascii: "a")] + run
        case 2:  // quoted identifier, plain or U&
            if reader.choice(2) == 1 { sql += "U&".utf8 }
            sql.append(UInt8(ascii: "\""))
            for byte in reader.run(maximum: 16) {
                sql.append(byte)
                if byte == UInt8(ascii: "\"") { sql.append(byte) }
            }
            sql.append(UInt8(ascii: "\""))
        case 3:  // closed block comment, possibly nested
            sql += commentBlock(&reader, content: [], depth: 1 + reader.choice(3))
        case 4:  // line comment
            sql += "--".utf8 + lineCommentContent(reader.run(maximum: 16)) + [0x0A]
        case 5:  // a literal without the marker
            sql += literal(&reader, conforming, content: reader.run(maximum: 16))
        case 6:  // number or parameter
            sql += reader.choice(2) == 0 ? "$\(reader.byte())".utf8 : "\(reader.byte()).5e\(reader.byte() % 3)".utf8
        case 7:  // operator or punctuation that cannot start a comment or a quote
            let operators = Array("()[],;:.+*<>=~!@#%^&|?".utf8)
            for _ in 0..<(1 + reader.choice(3)) { sql.append(operators[reader.choice(operators.count)]) }
        case 8:  // raw bytes, less those that can open something: ' " $ - / \
            sql += reader.run(maximum: 16).map { byte in
                switch byte {
                case UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "$"), UInt8(ascii: "-"), UInt8(ascii: "/"),
                     UInt8(ascii: "\\"):
                    return UInt8(ascii: "_")
                default:
                    return byte
                }
            }
        default:
            appendSpace(&reader, to: &sql)
        }
    }

    private static func identifierByte(_ byte: UInt8) -> UInt8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "_"), UInt8(ascii: "$"), 0x80...0xFF:
            return byte
        default:
            return UInt8(ascii: "a") + byte % 26
        }
    }

    /// A dollar-quote tag character for an input byte: `dolq_cont` in valid UTF-8.
    private static func tagBytes(_ byte: UInt8) -> [UInt8] {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "_"):
            return [byte]
        case 0x80...0x9F:
            return Array("é".utf8)
        default:
            return [UInt8(ascii: "a") + byte % 26]
        }
    }

    /// `/* ... */` nested `depth` deep, `content` in the innermost; the input's bytes around it
    /// with `*` and `/` replaced (they could open or close a comment).
    private static func commentBlock(_ reader: inout FuzzReader, content: [UInt8], depth: Int) -> [UInt8] {
        func filler(_ reader: inout FuzzReader) -> [UInt8] {
            reader.run(maximum: 12).map { $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: "/") ? UInt8(ascii: " ") : $0 }
        }
        var out: [UInt8] = Array("/*".utf8) + filler(&reader)
        out += depth > 1 ? commentBlock(&reader, content: content, depth: depth - 1) : content
        out += filler(&reader) + Array("*/".utf8)
        return out
    }

    private static func lineCommentContent(_ bytes: [UInt8]) -> [UInt8] {
        bytes.map { $0 == 0x0A || $0 == 0x0D ? UInt8(ascii: " ") : $0 }
    }

    /// A literal in a style the input picks, holding `content`, escaped for that style, closed
    /// with `standard_conforming_strings` as `conforming` says.
    private static func literal(_ reader: inout FuzzReader, _ conforming: Bool, content: [UInt8]) -> [UInt8] {
        switch reader.choice(9) {
        case 0, 1:  // backslash escapes only with standard_conforming_strings = off
            return quoted(prefix: "", content, backslashEscapes: !conforming, &reader)
        case 2:
            return quoted(prefix: reader.choice(2) == 0 ? "E" : "e", content, backslashEscapes: true, &reader)
        case 3:
            return quoted(prefix: reader.choice(2) == 0 ? "N" : "n", content, backslashEscapes: !conforming, &reader)
        case 4:
            return quoted(prefix: reader.choice(2) == 0 ? "B" : "x", content, backslashEscapes: false, &reader)
        case 5:
            // U&'..' is refused with standard_conforming_strings = off: an E'..' instead.
            guard conforming else { return quoted(prefix: "E", content, backslashEscapes: true, &reader) }
            var out = quoted(prefix: reader.choice(2) == 0 ? "U&" : "u&", content, backslashEscapes: false, &reader)
            if reader.choice(2) == 1 { out += " UESCAPE '!'".utf8 }
            return out
        default:  // $$..$$ or $tag$..$tag$
            // The tag in valid UTF-8 (ASCII and é): the property is about the text the redaction
            // sees, which is decoded with invalid sequences replaced, and two tags that differ
            // only in invalid bytes decode alike (see tagBytes).
            var tag: [UInt8] = []
            if reader.choice(3) != 0 {
                tag = [UInt8(ascii: "t")] + reader.run(maximum: 6).flatMap(tagBytes)
            }
            let delimiter = [UInt8(ascii: "$")] + tag + [UInt8(ascii: "$")]
            var body = content
            // The first occurrence of the delimiter in body + delimiter must be the closing one.
            while let range = (body + delimiter).firstRange(of: delimiter), range.lowerBound < body.count {
                body[range.lowerBound] = UInt8(ascii: "_")
            }
            return delimiter + body + delimiter
        }
    }

    /// `prefix'content'` with quotes doubled (or, with backslash escapes, escaped either way) and,
    /// with backslash escapes, every backslash followed by the character it escapes.
    private static func quoted(prefix: String, _ content: [UInt8], backslashEscapes: Bool, _ reader: inout FuzzReader) -> [UInt8] {
        var out = Array(prefix.utf8) + [UInt8(ascii: "'")]
        var index = 0
        while index < content.count {
            let byte = content[index]
            index += 1
            switch byte {
            case UInt8(ascii: "'"):
                out += backslashEscapes && reader.choice(2) == 1 ? Array("\\'".utf8) : Array("''".utf8)
            case UInt8(ascii: "\\") where backslashEscapes:
                // An escape: \\, or \ and the next character of the content (it may be a quote).
                if index < content.count, reader.choice(2) == 1 {
                    out += [byte, content[index]]
                    index += 1
                } else {
                    out += Array("\\\\".utf8)
                }
            default:
                out.append(byte)
            }
        }
        out.append(UInt8(ascii: "'"))
        return out
    }

    /// The marker inside a literal or comment, with input-chosen content around it.
    private static func appendSecret(_ reader: inout FuzzReader, _ conforming: Bool, to sql: inout [UInt8]) {
        let before = reader.run(maximum: 24)
        let after = reader.run(maximum: 24)
        let content = before + marker + after
        switch reader.choice(8) {
        case 0:
            sql += commentBlock(&reader, content: content.map { $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: "/") ? UInt8(ascii: " ") : $0 },
                                depth: 1 + reader.choice(3))
        case 1:
            sql += "--".utf8 + lineCommentContent(content)
            if reader.choice(2) == 1 { sql.append(0x0A) }
        default:
            sql += literal(&reader, conforming, content: content)
        }
    }
}
