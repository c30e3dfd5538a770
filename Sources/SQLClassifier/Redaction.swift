/// SQL text made safe to log: every string literal and every comment replaced by `'***'`.
///
/// Built on the lexer the classifier uses, so that what counts as a literal is what PostgreSQL
/// reads as one: `E'..\'..'`, `$tag$...$tag$`, `U&'...'`, a quote inside a comment or a quoted
/// identifier (`"o'neil"`) does not start one. Every literal of every statement goes, not only
/// those after `PASSWORD`: a secret can sit in `set_config`, a connection string, an `OPTIONS`
/// list or a function argument. Comments go too (`-- the password is ...`). Because the session's
/// `standard_conforming_strings` may have changed since the proxy last saw it, the text is lexed
/// both ways and a byte that is literal or comment in either reading is redacted.
public enum SQLRedaction {
    public static let mask = "'***'"

    public static func redacted(_ sql: String) -> String {
        var utf8 = Array(sql.utf8)
        guard !utf8.isEmpty else { return sql }
        let secret = utf8.withUnsafeBytes { bytes -> [Bool] in
            var secret = [Bool](repeating: false, count: bytes.count)
            for backslashes in [false, true] {
                var lexer = Lexer(bytes, backslashInPlainStrings: backslashes)
                var previousEnd = 0
                while true {
                    let token = lexer.next()
                    // Between two tokens: whitespace and comments. Comments are redacted.
                    var first = previousEnd
                    var last = token.start
                    while first < last, isSpace(bytes[first]) { first += 1 }
                    while last > first, isSpace(bytes[last - 1]) { last -= 1 }
                    for index in first..<last { secret[index] = true }
                    if token.kind == .end { break }
                    if token.kind == .string {
                        for index in token.start..<token.end { secret[index] = true }
                    }
                    previousEnd = token.end
                }
            }
            return secret
        }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count)
        var index = 0
        while index < utf8.count {
            if secret[index] {
                while index < utf8.count, secret[index] { index += 1 }
                out.append(contentsOf: mask.utf8)
            } else {
                out.append(utf8[index])
                index += 1
            }
        }
        utf8 = out
        return String(decoding: utf8, as: UTF8.self)
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D || byte == 0x0C || byte == 0x0B
    }
}
