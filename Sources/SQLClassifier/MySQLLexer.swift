/// A token of MySQL/MariaDB SQL. Positions are byte offsets into the lexer's buffer.
struct MySQLToken {
    enum Kind: UInt8 {
        case end
        /// An unquoted word: identifier or keyword (`[A-Za-z_$\x80-\xff][0-9A-Za-z_$\x80-\xff]*`).
        case identifier
        /// `` `...` `` (and `"..."` under `ANSI_QUOTES`).
        case quotedIdentifier
        /// `'...'`, `"..."`, `X'...'`, `B'...'` (an introducer or `N` before a literal is an
        /// identifier token of its own).
        case string
        /// A word starting with a digit: `1`, `1.5e-3`, `0x1F`, `0b01` (and the identifiers
        /// MySQL allows to start with digits, such as `1abc`).
        case number
        /// `@name`, `@'name'`, `@"name"`, `` @`name` ``, or a bare `@` (content: the name).
        case userVariable
        /// `@@name` or `` @@`name` `` (content: the name). A scope such as `@@session.x` is the
        /// tokens `@@session`, `.`, `x`.
        case systemVariable
        /// One of `( ) , ; . :`.
        case punctuation
        /// `:=`, or any other single byte (operator characters and stray bytes).
        case `operator`
    }

    var kind: Kind
    var start: Int
    var end: Int
    /// For strings, quoted identifiers and variables: the bytes of the name or value, without
    /// quotes or sigils.
    var contentStart: Int
    var contentEnd: Int
    /// The content contains doubled quotes or backslash escapes (so it is not the literal value).
    var hasEscapes: Bool
    /// A string or quoted identifier without its closing delimiter (it runs to the end of input).
    var unterminated: Bool

    static let none = MySQLToken(kind: .end, start: 0, end: 0)

    @inline(__always)
    init(kind: Kind, start: Int, end: Int) {
        self.kind = kind
        self.start = start
        self.end = end
        self.contentStart = start
        self.contentEnd = end
        self.hasEscapes = false
        self.unterminated = false
    }

    @inline(__always)
    init(kind: Kind, start: Int, end: Int, contentStart: Int, contentEnd: Int, hasEscapes: Bool, unterminated: Bool) {
        self.kind = kind
        self.start = start
        self.end = end
        self.contentStart = contentStart
        self.contentEnd = contentEnd
        self.hasEscapes = hasEscapes
        self.unterminated = unterminated
    }
}

private let singleQuote = UInt8(ascii: "'")
private let doubleQuote = UInt8(ascii: "\"")
private let backtick = UInt8(ascii: "`")
private let backslash = UInt8(ascii: "\\")
private let at = UInt8(ascii: "@")
private let star = UInt8(ascii: "*")
private let slash = UInt8(ascii: "/")
private let minus = UInt8(ascii: "-")
private let newline = UInt8(ascii: "\n")

@inline(__always) private func isDigit(_ c: UInt8) -> Bool { c &- 0x30 < 10 }
@inline(__always) private func isLetter(_ c: UInt8) -> Bool { (c | 0x20) &- 0x61 < 26 }
/// Bytes of an unquoted MySQL identifier: ASCII letters and digits, `_`, `$`, and every byte
/// of a multi-byte UTF-8 character.
@inline(__always) func mysqlIsIdentByte(_ c: UInt8) -> Bool {
    isLetter(c) || isDigit(c) || c == 0x5F || c == 0x24 || c >= 0x80
}
/// MySQL's `my_isspace`: space, `\t`, `\n`, `\v`, `\f`, `\r`.
@inline(__always) private func isSpace(_ c: UInt8) -> Bool { c == 0x20 || (c >= 0x09 && c <= 0x0D) }
/// MySQL's `my_iscntrl` (ASCII): the C0 controls and DEL.
@inline(__always) private func isControl(_ c: UInt8) -> Bool { c < 0x20 || c == 0x7F }

/// A MySQL/MariaDB lexer over UTF-8 bytes. A value type: copy it to look ahead.
///
/// What it reads as MySQL does (sql_lex.cc): `#` and `-- ` comments to the end of the line
/// (`--` is a comment only when whitespace, a control character or the end follows), `/* */`
/// comments without nesting, and executable comments `/*! ... */`, `/*!50700 ... */`,
/// `/*M! ... */`, `/*M!100100 ... */` whose content is read as code (every version is taken
/// as run: the backend is a modern server); their closing `*/` is skipped. Strings `'...'` and
/// `"..."` take backslash escapes (unless `NO_BACKSLASH_ESCAPES`) and doubled quotes; under
/// `ANSI_QUOTES` `"..."` is an identifier. Backticked identifiers double their backticks.
struct MySQLLexer {
    let buf: UnsafeRawBufferPointer
    let count: Int
    var pos: Int = 0
    /// Backslash escapes in `'...'` and `"..."` (off under `NO_BACKSLASH_ESCAPES`).
    let backslashEscapes: Bool
    /// `"..."` is a quoted identifier (`ANSI_QUOTES`).
    let ansiQuotes: Bool
    /// Inside `/*! ... */`: the next `*/` closes the executable comment.
    var inExecutableComment = false

    init(_ buf: UnsafeRawBufferPointer, backslashEscapes: Bool, ansiQuotes: Bool) {
        self.buf = buf
        self.count = buf.count
        self.backslashEscapes = backslashEscapes
        self.ansiQuotes = ansiQuotes
    }

    @inline(__always)
    func byte(_ i: Int) -> UInt8 { i < count ? buf[i] : 0 }

    /// Skips whitespace, comments, the openers of executable comments and their closing `*/`.
    @inline(__always)
    mutating func skipTrivia() {
        while pos < count {
            switch buf[pos] {
            case 0x20, 0x09, 0x0A, 0x0D, 0x0C, 0x0B:
                pos += 1
            case UInt8(ascii: "#"):
                skipLineComment()
            case minus where byte(pos + 1) == minus && (pos + 2 >= count || isSpace(buf[pos + 2]) || isControl(buf[pos + 2])):
                skipLineComment()
            case slash where byte(pos + 1) == star:
                skipBlockCommentOrEnterExecutable()
            case star where inExecutableComment && byte(pos + 1) == slash:
                inExecutableComment = false
                pos += 2
            default:
                return
            }
        }
    }

    @inline(__always)
    private mutating func skipLineComment() {
        while pos < count, buf[pos] != newline { pos += 1 }
    }

    /// At `/*`: an executable comment's opener (its content is then lexed as code), or a
    /// comment to the first `*/` (not nested; unterminated: the rest is comment).
    private mutating func skipBlockCommentOrEnterExecutable() {
        let c2 = byte(pos + 2)
        var bodyStart = -1
        if c2 == UInt8(ascii: "!") {
            bodyStart = pos + 3
        } else if c2 == UInt8(ascii: "M"), byte(pos + 3) == UInt8(ascii: "!") {
            bodyStart = pos + 4
        }
        if bodyStart >= 0 {
            // `/*!` or `/*M!`, then an optional version of exactly 5 or 6 digits.
            var i = bodyStart
            if isDigit(byte(i)), isDigit(byte(i + 1)), isDigit(byte(i + 2)), isDigit(byte(i + 3)), isDigit(byte(i + 4)) {
                i += isDigit(byte(i + 5)) ? 6 : 5
            }
            pos = i
            inExecutableComment = true
            return
        }
        var i = pos + 2
        while i + 1 < count {
            if buf[i] == star, buf[i + 1] == slash {
                pos = i + 2
                return
            }
            i += 1
        }
        pos = count
    }

    mutating func next() -> MySQLToken {
        skipTrivia()
        let s = pos
        guard s < count else { return MySQLToken(kind: .end, start: count, end: count) }
        let c = buf[s]
        switch c {
        case singleQuote:
            return scanQuoted(tokenStart: s, quoteAt: s, kind: .string, backslashEscapes: backslashEscapes)
        case doubleQuote:
            if ansiQuotes { return scanQuoted(tokenStart: s, quoteAt: s, kind: .quotedIdentifier, backslashEscapes: false) }
            return scanQuoted(tokenStart: s, quoteAt: s, kind: .string, backslashEscapes: backslashEscapes)
        case backtick:
            return scanQuoted(tokenStart: s, quoteAt: s, kind: .quotedIdentifier, backslashEscapes: false)
        case at:
            return scanVariable(s)
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return scanNumber(s)
        case UInt8(ascii: "."):
            if isDigit(byte(s + 1)) { return scanNumber(s) }
            pos = s + 1
            return MySQLToken(kind: .punctuation, start: s, end: s + 1)
        case UInt8(ascii: ":"):
            if byte(s + 1) == UInt8(ascii: "=") {
                pos = s + 2
                return MySQLToken(kind: .operator, start: s, end: s + 2)
            }
            pos = s + 1
            return MySQLToken(kind: .punctuation, start: s, end: s + 1)
        case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: ","), UInt8(ascii: ";"):
            pos = s + 1
            return MySQLToken(kind: .punctuation, start: s, end: s + 1)
        default:
            if mysqlIsIdentByte(c) { return scanWord(s, c) }
            pos = s + 1
            return MySQLToken(kind: .operator, start: s, end: s + 1)
        }
    }

    /// An identifier, or `X'..'` / `B'..'` (hexadecimal and bit literals: no escapes; they end
    /// at the next quote).
    private mutating func scanWord(_ s: Int, _ c: UInt8) -> MySQLToken {
        if byte(s + 1) == singleQuote, c | 0x20 == UInt8(ascii: "x") || c | 0x20 == UInt8(ascii: "b") {
            var i = s + 2
            while i < count, buf[i] != singleQuote { i += 1 }
            if i < count {
                pos = i + 1
                return MySQLToken(kind: .string, start: s, end: i + 1, contentStart: s + 2, contentEnd: i,
                                  hasEscapes: false, unterminated: false)
            }
            pos = count
            return MySQLToken(kind: .string, start: s, end: count, contentStart: s + 2, contentEnd: count,
                              hasEscapes: false, unterminated: true)
        }
        var i = s + 1
        while i < count, mysqlIsIdentByte(buf[i]) { i += 1 }
        pos = i
        return MySQLToken(kind: .identifier, start: s, end: i)
    }

    /// A literal or quoted identifier delimited by `buf[q]`; a doubled delimiter is an escaped
    /// one, and with `backslashEscapes` a backslash escapes the next byte.
    private mutating func scanQuoted(tokenStart: Int, quoteAt q: Int, kind: MySQLToken.Kind, backslashEscapes: Bool) -> MySQLToken {
        let delimiter = buf[q]
        var i = q + 1
        var escapes = false
        while i < count {
            let c = buf[i]
            if c == delimiter {
                if byte(i + 1) == delimiter, i + 1 < count {
                    escapes = true
                    i += 2
                    continue
                }
                pos = i + 1
                return MySQLToken(kind: kind, start: tokenStart, end: i + 1, contentStart: q + 1, contentEnd: i,
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
        return MySQLToken(kind: kind, start: tokenStart, end: count, contentStart: q + 1, contentEnd: count,
                          hasEscapes: escapes, unterminated: true)
    }

    /// `@name`, `@'..'`, `@".."`, `` @`..` ``, a bare `@`; `@@name`, `` @@`..` ``, a bare `@@`.
    /// A user variable's unquoted name may contain `.` (MySQL reads it as a host name).
    private mutating func scanVariable(_ s: Int) -> MySQLToken {
        let system = byte(s + 1) == at && s + 1 < count
        let nameStart = system ? s + 2 : s + 1
        let kind: MySQLToken.Kind = system ? .systemVariable : .userVariable
        let c = byte(nameStart)
        if nameStart < count {
            if c == backtick || (!system && (c == singleQuote || c == doubleQuote)) {
                return scanQuoted(tokenStart: s, quoteAt: nameStart, kind: kind,
                                  backslashEscapes: backslashEscapes && quoteTakesBackslashEscapes(c))
            }
        }
        var i = nameStart
        while i < count, mysqlIsIdentByte(buf[i]) || (!system && buf[i] == UInt8(ascii: ".")) { i += 1 }
        pos = i
        return MySQLToken(kind: kind, start: s, end: i, contentStart: nameStart, contentEnd: i,
                          hasEscapes: false, unterminated: false)
    }

    /// Numeric literals, loosely: identifier bytes, `.` before a digit, and a sign after a
    /// decimal exponent. MySQL identifiers may start with digits; they are numbers here too.
    private mutating func scanNumber(_ s: Int) -> MySQLToken {
        let radix = buf[s] == UInt8(ascii: "0") && (byte(s + 1) | 0x20 == UInt8(ascii: "x") || byte(s + 1) | 0x20 == UInt8(ascii: "b"))
        var i = s
        var previous: UInt8 = 0
        while i < count {
            let c = buf[i]
            if mysqlIsIdentByte(c) {
                // part of the number
            } else if c == UInt8(ascii: "."), isDigit(byte(i + 1)), !radix {
                // decimal point
            } else if c == UInt8(ascii: "+") || c == minus, !radix, previous | 0x20 == UInt8(ascii: "e"), isDigit(byte(i + 1)) {
                // exponent sign
            } else {
                break
            }
            previous = c
            i += 1
        }
        pos = i
        return MySQLToken(kind: .number, start: s, end: i)
    }

    // MARK: - Token predicates (no allocation)

    /// Unquoted word equal to `keyword` (lowercase ASCII), case-insensitively.
    @inline(__always)
    func isKeyword(_ t: MySQLToken, _ keyword: StaticString) -> Bool {
        t.kind == .identifier && equalsIgnoringCase(t.start, t.end, keyword)
    }

    @inline(__always)
    func isPunctuation(_ t: MySQLToken, _ c: UInt8) -> Bool {
        t.kind == .punctuation && buf[t.start] == c
    }

    @inline(__always)
    func isOperator(_ t: MySQLToken, _ c: UInt8) -> Bool {
        t.kind == .operator && t.end - t.start == 1 && buf[t.start] == c
    }

    /// `=` or `:=`.
    @inline(__always)
    func isAssignment(_ t: MySQLToken) -> Bool {
        t.kind == .operator && (buf[t.start] == UInt8(ascii: "=") || (t.end - t.start == 2 && buf[t.start] == UInt8(ascii: ":")))
    }

    /// The token names `name` (lowercase ASCII) as MySQL compares routine and variable names: an
    /// unquoted word or a quoted identifier without escapes, case-insensitively.
    @inline(__always)
    func isName(_ t: MySQLToken, _ name: StaticString) -> Bool {
        switch t.kind {
        case .identifier:
            return equalsIgnoringCase(t.start, t.end, name)
        case .quotedIdentifier:
            return !t.hasEscapes && !t.unterminated && equalsIgnoringCase(t.contentStart, t.contentEnd, name)
        default:
            return false
        }
    }

    func equalsIgnoringCase(_ s: Int, _ e: Int, _ keyword: StaticString) -> Bool {
        let n = keyword.utf8CodeUnitCount
        guard e - s == n else { return false }
        let k = keyword.utf8Start
        for i in 0..<n where asciiLower(buf[s + i]) != k[i] { return false }
        return true
    }

    /// Source text of `start..<end`.
    func text(_ start: Int, _ end: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: buf[start..<end]), as: UTF8.self)
    }

    /// A name as MySQL compares it, ASCII-lowercased: an unquoted word as written, a quoted
    /// one (or a variable's quoted name) with its escapes undone.
    func appendLowercasedName(_ t: MySQLToken, to bytes: inout [UInt8]) {
        guard t.hasEscapes else {
            for i in t.contentStart..<t.contentEnd { bytes.append(asciiLower(buf[i])) }
            return
        }
        let delimiter = buf[t.contentStart - 1]
        var i = t.contentStart
        while i < t.contentEnd {
            let c = buf[i]
            if c == delimiter, i + 1 < t.contentEnd, buf[i + 1] == delimiter {
                bytes.append(c)
                i += 2
            } else if c == backslash, backslashEscapes, quoteTakesBackslashEscapes(delimiter), i + 1 < t.contentEnd {
                bytes.append(asciiLower(MySQLLexer.unescaped(buf[i + 1])))
                i += 2
            } else {
                bytes.append(asciiLower(c))
                i += 1
            }
        }
    }

    /// `'` always, `"` unless it quotes identifiers (`ANSI_QUOTES`); never a backtick.
    @inline(__always)
    func quoteTakesBackslashEscapes(_ quote: UInt8) -> Bool {
        quote == singleQuote || (quote == doubleQuote && !ansiQuotes)
    }

    /// The byte a backslash escape stands for (MySQL: `\0 \b \n \r \t \Z`; any other byte is
    /// itself; `\%` and `\_` keep their backslash, which callers of this ignore).
    static func unescaped(_ c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "0"): return 0
        case UInt8(ascii: "b"): return 0x08
        case UInt8(ascii: "n"): return 0x0A
        case UInt8(ascii: "r"): return 0x0D
        case UInt8(ascii: "t"): return 0x09
        case UInt8(ascii: "Z"): return 0x1A
        default: return c
        }
    }
}
