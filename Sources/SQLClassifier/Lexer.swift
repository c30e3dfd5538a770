/// A token of PostgreSQL SQL. Positions are byte offsets into the lexer's buffer.
struct Token {
    enum Kind: UInt8 {
        case end
        /// Unquoted identifier or keyword (`[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*`).
        case identifier
        /// `"..."` or `U&"..."`.
        case quotedIdentifier
        /// `'...'`, `E'...'`, `B'...'`, `X'...'`, `N'...'`, `U&'...'`, `$tag$...$tag$`.
        case string
        case number
        /// `$1`.
        case parameter
        /// One of `( ) [ ] , ; : .`.
        case punctuation
        /// Any other single byte (operator characters and stray bytes).
        case `operator`
    }

    // Offsets are stored as 32 bits (a query is at most 1 GB, PostgreSQL's message limit) and
    // the flags as bytes: 20 bytes a token instead of 48. The classifier keeps the last three
    // tokens and copies them on every token; the smaller copy was 8% of its instructions.
    var kind: Kind
    private var flags: UInt8
    private var start32: Int32
    private var end32: Int32
    private var contentStart32: Int32
    private var contentEnd32: Int32

    var start: Int { Int(start32) }
    var end: Int { Int(end32) }
    /// For strings and quoted identifiers: the bytes between the delimiters.
    var contentStart: Int { Int(contentStart32) }
    var contentEnd: Int { Int(contentEnd32) }
    /// The content contains doubled quotes or backslash escapes (so it is not the literal value).
    var hasEscapes: Bool { flags & 1 != 0 }
    /// A string or quoted identifier without its closing delimiter (it runs to the end of input).
    var unterminated: Bool { flags & 2 != 0 }

    static let none = Token(kind: .end, start: 0, end: 0)

    @inline(__always)
    init(kind: Kind, start: Int, end: Int) {
        self.kind = kind
        self.flags = 0
        self.start32 = Int32(truncatingIfNeeded: start)
        self.end32 = Int32(truncatingIfNeeded: end)
        self.contentStart32 = self.start32
        self.contentEnd32 = self.end32
    }

    @inline(__always)
    init(kind: Kind, start: Int, end: Int, contentStart: Int, contentEnd: Int, hasEscapes: Bool, unterminated: Bool) {
        self.kind = kind
        self.flags = (hasEscapes ? 1 : 0) | (unterminated ? 2 : 0)
        self.start32 = Int32(truncatingIfNeeded: start)
        self.end32 = Int32(truncatingIfNeeded: end)
        self.contentStart32 = Int32(truncatingIfNeeded: contentStart)
        self.contentEnd32 = Int32(truncatingIfNeeded: contentEnd)
    }
}

private let quote = UInt8(ascii: "'")
private let doubleQuote = UInt8(ascii: "\"")
private let dollar = UInt8(ascii: "$")
private let backslash = UInt8(ascii: "\\")

@inline(__always) private func isDigit(_ c: UInt8) -> Bool { c &- 0x30 < 10 }
@inline(__always) private func isLetter(_ c: UInt8) -> Bool { (c | 0x20) &- 0x61 < 26 }
/// `ident_start` / `dolq_start`: letters, `_`, and bytes >= 0x80.
@inline(__always) func isIdentStart(_ c: UInt8) -> Bool { isLetter(c) || c == 0x5F || c >= 0x80 }
/// `dolq_cont`: ident_start plus digits.
@inline(__always) private func isDollarTagCont(_ c: UInt8) -> Bool { isIdentStart(c) || isDigit(c) }
/// `ident_cont`: dolq_cont plus `$`. One bit test per byte (the classifier's inner loop):
/// bits 0x24 (`$`) and 0x30-0x39 of the low mask; 0x41-0x5A, 0x5F and 0x61-0x7A of the high.
@inline(__always) func isIdentCont(_ c: UInt8) -> Bool {
    if c >= 0x80 { return true }
    let mask: UInt64 = c < 64 ? 0x03FF_0010_0000_0000 : 0x07FF_FFFE_87FF_FFFE
    return (mask >> UInt64(c & 63)) & 1 != 0
}
@inline(__always) func asciiLower(_ c: UInt8) -> UInt8 { c &- 0x41 < 26 ? c | 0x20 : c }

/// A PostgreSQL lexer over UTF-8 bytes. A value type: copy it to look ahead.
struct Lexer {
    let buf: UnsafeRawBufferPointer
    let count: Int
    var pos: Int = 0
    /// `standard_conforming_strings = off`: backslash escapes in plain `'...'` literals.
    let backslashInPlainStrings: Bool

    init(_ buf: UnsafeRawBufferPointer, backslashInPlainStrings: Bool) {
        self.buf = buf
        // Tokens keep 32-bit offsets; PostgreSQL's messages stop at 1 GB long before this.
        self.count = min(buf.count, Int(Int32.max))
        self.backslashInPlainStrings = backslashInPlainStrings
    }

    @inline(__always)
    func byte(_ i: Int) -> UInt8 { i < count ? buf[i] : 0 }

    /// Skips whitespace, `--` comments and (nested) `/* */` comments.
    @inline(__always)
    mutating func skipTrivia() {
        while pos < count {
            switch buf[pos] {
            case 0x20, 0x09, 0x0A, 0x0D, 0x0C, 0x0B:
                pos += 1
            case UInt8(ascii: "-") where byte(pos + 1) == UInt8(ascii: "-"):
                pos += 2
                while pos < count, buf[pos] != 0x0A, buf[pos] != 0x0D { pos += 1 }
            case UInt8(ascii: "/") where byte(pos + 1) == UInt8(ascii: "*"):
                skipBlockComment()
            default:
                return
            }
        }
    }

    private mutating func skipBlockComment() {
        pos += 2
        var depth = 1
        while pos < count {
            let c = buf[pos]
            if c == UInt8(ascii: "/"), byte(pos + 1) == UInt8(ascii: "*") {
                depth += 1
                pos += 2
            } else if c == UInt8(ascii: "*"), byte(pos + 1) == UInt8(ascii: "/") {
                depth -= 1
                pos += 2
                if depth == 0 { return }
            } else {
                pos += 1
            }
        }
        pos = count  // unterminated: the rest is comment
    }

    mutating func next() -> Token {
        skipTrivia()
        let s = pos
        guard s < count else { return Token(kind: .end, start: count, end: count) }
        let c = buf[s]
        switch c {
        case quote:
            return scanString(tokenStart: s, quoteAt: s, backslashEscapes: backslashInPlainStrings)
        case doubleQuote:
            return scanQuotedIdentifier(tokenStart: s, quoteAt: s)
        case dollar:
            return scanDollar(s)
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return scanNumber(s)
        case UInt8(ascii: "."):
            if isDigit(byte(s + 1)) { return scanNumber(s) }
            pos = s + 1
            return Token(kind: .punctuation, start: s, end: s + 1)
        case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "["), UInt8(ascii: "]"),
             UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: ":"):
            pos = s + 1
            return Token(kind: .punctuation, start: s, end: s + 1)
        default:
            if isIdentStart(c) { return scanIdentifierOrPrefixedLiteral(s, c) }
            pos = s + 1
            return Token(kind: .operator, start: s, end: s + 1)
        }
    }

    private mutating func scanIdentifierOrPrefixedLiteral(_ s: Int, _ c: UInt8) -> Token {
        let n1 = byte(s + 1)
        if n1 == quote {
            switch c | 0x20 {
            case UInt8(ascii: "e"):
                return scanString(tokenStart: s, quoteAt: s + 1, backslashEscapes: true)
            case UInt8(ascii: "b"), UInt8(ascii: "x"):
                return scanString(tokenStart: s, quoteAt: s + 1, backslashEscapes: false)
            case UInt8(ascii: "n"):
                return scanString(tokenStart: s, quoteAt: s + 1, backslashEscapes: backslashInPlainStrings)
            default:
                break
            }
        } else if n1 == UInt8(ascii: "&"), c | 0x20 == UInt8(ascii: "u") {
            let n2 = byte(s + 2)
            if n2 == quote { return scanString(tokenStart: s, quoteAt: s + 2, backslashEscapes: false) }
            if n2 == doubleQuote { return scanQuotedIdentifier(tokenStart: s, quoteAt: s + 2) }
        }
        var i = s + 1
        while i < count, isIdentCont(buf[i]) { i += 1 }
        pos = i
        return Token(kind: .identifier, start: s, end: i)
    }

    /// A `'`-delimited literal; `''` is an escaped quote, and with `backslashEscapes` so is `\'`.
    private mutating func scanString(tokenStart: Int, quoteAt q: Int, backslashEscapes: Bool) -> Token {
        var i = q + 1
        var escapes = false
        while i < count {
            let c = buf[i]
            if c == quote {
                if byte(i + 1) == quote {
                    escapes = true
                    i += 2
                    continue
                }
                pos = i + 1
                return Token(kind: .string, start: tokenStart, end: i + 1, contentStart: q + 1, contentEnd: i,
                             hasEscapes: escapes, unterminated: false)
            }
            if backslashEscapes, c == backslash {
                escapes = true
                i += 2
                continue
            }
            i += 1
        }
        pos = count
        return Token(kind: .string, start: tokenStart, end: count, contentStart: q + 1, contentEnd: count,
                     hasEscapes: escapes, unterminated: true)
    }

    private mutating func scanQuotedIdentifier(tokenStart: Int, quoteAt q: Int) -> Token {
        var i = q + 1
        var escapes = false
        let unicode = q != tokenStart  // U&"...": backslash starts a Unicode escape
        while i < count {
            if unicode, buf[i] == backslash { escapes = true }
            if buf[i] == doubleQuote {
                if byte(i + 1) == doubleQuote {
                    escapes = true
                    i += 2
                    continue
                }
                pos = i + 1
                return Token(kind: .quotedIdentifier, start: tokenStart, end: i + 1, contentStart: q + 1,
                             contentEnd: i, hasEscapes: escapes, unterminated: false)
            }
            i += 1
        }
        pos = count
        return Token(kind: .quotedIdentifier, start: tokenStart, end: count, contentStart: q + 1, contentEnd: count,
                     hasEscapes: escapes, unterminated: true)
    }

    /// `$1` parameters, `$tag$...$tag$` / `$$...$$` dollar quotes, or a lone `$`.
    private mutating func scanDollar(_ s: Int) -> Token {
        let d = byte(s + 1)
        if isDigit(d) {
            var i = s + 2
            while i < count, isDigit(buf[i]) { i += 1 }
            pos = i
            return Token(kind: .parameter, start: s, end: i)
        }
        var j = s + 1  // index of the closing `$` of the opening delimiter
        if d != dollar {
            guard isIdentStart(d) else {
                pos = s + 1
                return Token(kind: .operator, start: s, end: s + 1)
            }
            j = s + 2
            while j < count, isDollarTagCont(buf[j]) { j += 1 }
            guard j < count, buf[j] == dollar else {
                pos = s + 1
                return Token(kind: .operator, start: s, end: s + 1)
            }
        }
        let delimiterLength = j - s + 1
        let bodyStart = j + 1
        var k = bodyStart
        while k + delimiterLength <= count {
            if buf[k] == dollar, matches(k, s, delimiterLength) {
                pos = k + delimiterLength
                return Token(kind: .string, start: s, end: pos, contentStart: bodyStart, contentEnd: k,
                             hasEscapes: false, unterminated: false)
            }
            k += 1
        }
        pos = count
        return Token(kind: .string, start: s, end: count, contentStart: bodyStart, contentEnd: count,
                     hasEscapes: false, unterminated: true)
    }

    @inline(__always)
    private func matches(_ a: Int, _ b: Int, _ length: Int) -> Bool {
        for i in 0..<length where buf[a + i] != buf[b + i] { return false }
        return true
    }

    /// Numeric literals, loosely: digits, letters, `_`, `.`, and a sign after a decimal exponent.
    private mutating func scanNumber(_ s: Int) -> Token {
        let radix = buf[s] == UInt8(ascii: "0") && isLetter(byte(s + 1)) && byte(s + 1) | 0x20 != UInt8(ascii: "e")
        var i = s
        var previous: UInt8 = 0
        while i < count {
            let c = buf[i]
            if isDollarTagCont(c) || c == UInt8(ascii: ".") {
                if c == UInt8(ascii: "."), byte(i + 1) == UInt8(ascii: ".") { break }
            } else if (c == UInt8(ascii: "+") || c == UInt8(ascii: "-")), !radix,
                      previous | 0x20 == UInt8(ascii: "e"), isDigit(byte(i + 1)) {
                // exponent sign
            } else {
                break
            }
            previous = c
            i += 1
        }
        pos = i
        return Token(kind: .number, start: s, end: i)
    }

    // MARK: - Token predicates (no allocation)

    /// Unquoted identifier equal to `keyword` (lowercase ASCII), case-insensitively.
    @inline(__always)
    func isKeyword(_ t: Token, _ keyword: StaticString) -> Bool {
        t.kind == .identifier && equalsIgnoringCase(t.start, t.end, keyword)
    }

    @inline(__always)
    func isPunctuation(_ t: Token, _ c: UInt8) -> Bool {
        t.kind == .punctuation && buf[t.start] == c
    }

    @inline(__always)
    func isOperator(_ t: Token, _ c: UInt8) -> Bool {
        t.kind == .operator && buf[t.start] == c
    }

    /// The token names `name` (lowercase ASCII): an unquoted identifier, case-insensitively, or
    /// a plain quoted identifier with exactly that content.
    @inline(__always)
    func isName(_ t: Token, _ name: StaticString) -> Bool {
        switch t.kind {
        case .identifier:
            return equalsIgnoringCase(t.start, t.end, name)
        case .quotedIdentifier:
            return !t.hasEscapes && !t.unterminated && equalsExactly(t.contentStart, t.contentEnd, name)
        default:
            return false
        }
    }

    /// A string literal (any form) whose literal content equals `value`, ignoring ASCII case.
    func isStringLiteral(_ t: Token, equalToIgnoringCase value: StaticString) -> Bool {
        t.kind == .string && !t.hasEscapes && !t.unterminated && equalsIgnoringCase(t.contentStart, t.contentEnd, value)
    }

    func equalsIgnoringCase(_ s: Int, _ e: Int, _ keyword: StaticString) -> Bool {
        let n = keyword.utf8CodeUnitCount
        guard e - s == n else { return false }
        let k = keyword.utf8Start
        for i in 0..<n where asciiLower(buf[s + i]) != k[i] { return false }
        return true
    }

    func equalsExactly(_ s: Int, _ e: Int, _ keyword: StaticString) -> Bool {
        let n = keyword.utf8CodeUnitCount
        guard e - s == n else { return false }
        let k = keyword.utf8Start
        for i in 0..<n where buf[s + i] != k[i] { return false }
        return true
    }

    /// `pg_temp` or `pg_temp_<digits>` (the session's temporary schema).
    func isTempSchema(_ t: Token) -> Bool {
        let s: Int, e: Int
        let caseInsensitive: Bool
        switch t.kind {
        case .identifier:
            (s, e, caseInsensitive) = (t.start, t.end, true)
        case .quotedIdentifier where !t.hasEscapes && !t.unterminated:
            (s, e, caseInsensitive) = (t.contentStart, t.contentEnd, false)
        default:
            return false
        }
        guard e - s >= 7 else { return false }
        let prefix: StaticString = "pg_temp"
        if caseInsensitive ? !equalsIgnoringCase(s, s + 7, prefix) : !equalsExactly(s, s + 7, prefix) { return false }
        if e - s == 7 { return true }
        guard e - s > 8, buf[s + 7] == 0x5F else { return false }
        for i in (s + 8)..<e where !isDigit(buf[i]) { return false }
        return true
    }

    /// Source text of `start..<end`.
    func text(_ start: Int, _ end: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: buf[start..<end]), as: UTF8.self)
    }

    /// Identifier as PostgreSQL folds it: unquoted → ASCII-lowercased; quoted → content with `""` → `"`.
    func appendIdentifier(_ t: Token, to bytes: inout [UInt8]) {
        if t.kind == .quotedIdentifier {
            var i = t.contentStart
            while i < t.contentEnd {
                let c = buf[i]
                bytes.append(c)
                i += (c == doubleQuote && i + 1 < t.contentEnd && buf[i + 1] == doubleQuote) ? 2 : 1
            }
        } else {
            for i in t.start..<t.end { bytes.append(asciiLower(buf[i])) }
        }
    }
}
