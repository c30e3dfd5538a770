/// Statements a MySQL proxy answers itself, without a backend, because the answer belongs to the
/// client's connection to the proxy and not to whichever backend would run it:
///
/// - `KILL [HARD | SOFT] [CONNECTION | QUERY] id` (MariaDB's grammar; MySQL's is the plain
///   forms): the id is a proxy connection id (the one the client's handshake gave), which only
///   the proxy can map to the backend serving that client now.
/// - `SELECT f() [[AS] alias] [, ...]` where each `f` is `ROW_COUNT`, `FOUND_ROWS`,
///   `CONNECTION_ID` or `LAST_INSERT_ID`: per-connection values that another backend does not
///   have.
///
/// Parsed only when `MySQLClassification.kind` is `.kill` or `mentionsSessionFunction` is set,
/// so the common statement pays nothing.
public enum MySQLProxyAnswerable: Sendable, Hashable {
    /// `KILL [CONNECTION] id` (`query: false`) or `KILL QUERY id`. `id` is the number as
    /// written, as MySQL reads it (an unsigned 64-bit value: `-1` is 2^64 - 1), so that an
    /// unknown id is reported with the server's own rendering of it.
    case kill(id: UInt64, query: Bool)
    /// `KILL [CONNECTION | QUERY] CONNECTION_ID()`: the client's own connection.
    case killSelf(query: Bool)
    /// MariaDB's `KILL QUERY ID n`: a server's query id, which names no proxy connection.
    case killQueryID(UInt64)
    /// A `KILL` the proxy cannot map to a proxy connection (`KILL USER`, an expression for the
    /// id): refused, since sent to a backend it would kill whatever that backend's user runs.
    case killUnsupported
    /// A `SELECT` of session functions only, each with its column name (the text as written,
    /// or the alias).
    case select([MySQLSessionFunctionColumn])

    /// Parses a `COM_QUERY` text; nil when it is not one of the shapes above.
    public static func parse(_ sql: UnsafeRawBufferPointer, options: MySQLClassifierOptions) -> MySQLProxyAnswerable? {
        var lx = MySQLLexer(sql, backslashEscapes: !options.noBackslashEscapes, ansiQuotes: options.ansiQuotes)
        let first = lx.next()
        if lx.isKeyword(first, "kill") { return parseKill(&lx) }
        if lx.isKeyword(first, "select") { return parseSelect(&lx) }
        return nil
    }

    public static func parse(_ sql: String, options: MySQLClassifierOptions = MySQLClassifierOptions()) -> MySQLProxyAnswerable? {
        var sql = sql
        return sql.withUTF8 { parse(UnsafeRawBufferPointer($0), options: options) }
    }

    /// Nothing but an optional `;` is left.
    private static func atEnd(_ lx: inout MySQLLexer) -> Bool {
        var t = lx.next()
        if lx.isPunctuation(t, semicolon) { t = lx.next() }
        return t.kind == .end
    }

    private static func parseKill(_ lx: inout MySQLLexer) -> MySQLProxyAnswerable {
        var t = lx.next()
        if lx.isKeyword(t, "hard") || lx.isKeyword(t, "soft") { t = lx.next() }
        var query = false
        if lx.isKeyword(t, "query") {
            query = true
            t = lx.next()
            if lx.isKeyword(t, "id") {
                // `KILL QUERY ID n`: a query id (unless `id` is followed by nothing numeric).
                var peek = lx
                if let n = number(peek.next(), negative: false, lx), atEnd(&peek) { return .killQueryID(n) }
                return .killUnsupported
            }
        } else if lx.isKeyword(t, "connection") {
            t = lx.next()
        } else if lx.isKeyword(t, "user") {
            return .killUnsupported
        }
        var negative = false
        if lx.isOperator(t, UInt8(ascii: "-")) {
            negative = true
            t = lx.next()
        }
        if let n = number(t, negative: negative, lx) {
            return atEnd(&lx) ? .kill(id: n, query: query) : .killUnsupported
        }
        if !negative, t.kind == .identifier, lx.isName(t, "connection_id") {
            let open = lx.next(), close = lx.next()
            if lx.isPunctuation(open, openParen), lx.isPunctuation(close, closeParen), atEnd(&lx) { return .killSelf(query: query) }
        }
        return .killUnsupported
    }

    /// An unsigned decimal literal as MySQL converts it for KILL (negated modulo 2^64 after `-`).
    private static func number(_ t: MySQLToken, negative: Bool, _ lx: MySQLLexer) -> UInt64? {
        guard t.kind == .number, t.end > t.start, t.end - t.start <= 20 else { return nil }
        var value: UInt64 = 0
        for i in t.start..<t.end {
            let c = lx.buf[i]
            guard c >= 0x30, c <= 0x39 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(c - 0x30))
            if o1 || o2 { return nil }
            value = s
        }
        return negative ? 0 &- value : value
    }

    private static func parseSelect(_ lx: inout MySQLLexer) -> MySQLProxyAnswerable? {
        var columns: [MySQLSessionFunctionColumn] = []
        while true {
            let name = lx.next()
            guard name.kind == .identifier else { return nil }
            let function: MySQLSessionFunction
            if lx.isKeyword(name, "row_count") {
                function = .rowCount
            } else if lx.isKeyword(name, "found_rows") {
                function = .foundRows
            } else if lx.isKeyword(name, "connection_id") {
                function = .connectionID
            } else if lx.isKeyword(name, "last_insert_id") {
                function = .lastInsertID
            } else {
                return nil
            }
            let open = lx.next()
            guard lx.isPunctuation(open, openParen), open.start == name.end else { return nil }
            let close = lx.next()
            guard lx.isPunctuation(close, closeParen) else { return nil }
            // The server names the column by the text as written (case and inner spaces kept).
            var column = MySQLSessionFunctionColumn(function: function, name: text(lx, name.start, close.end))
            var t = lx.next()
            if lx.isKeyword(t, "as") { t = lx.next() }
            if t.kind == .identifier || (t.kind == .quotedIdentifier && !t.hasEscapes && !t.unterminated)
                || (t.kind == .string && !t.hasEscapes && !t.unterminated)
            {
                guard !isReserved(t, lx) else { return nil }
                let alias = text(lx, t.contentStart, t.contentEnd)
                // ASCII only: the column name goes out in the client's character set.
                guard !alias.isEmpty, alias.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return nil }
                column.name = alias
                t = lx.next()
            }
            columns.append(column)
            if lx.isPunctuation(t, comma) { continue }
            if lx.isPunctuation(t, semicolon) { t = lx.next() }
            return t.kind == .end && columns.count <= 16 ? .select(columns) : nil
        }
    }

    /// Words after a select item that start a clause, not an alias.
    private static func isReserved(_ t: MySQLToken, _ lx: MySQLLexer) -> Bool {
        guard t.kind == .identifier else { return false }
        return lx.isKeyword(t, "from") || lx.isKeyword(t, "where") || lx.isKeyword(t, "into") || lx.isKeyword(t, "limit")
            || lx.isKeyword(t, "union") || lx.isKeyword(t, "order") || lx.isKeyword(t, "group") || lx.isKeyword(t, "having")
            || lx.isKeyword(t, "for") || lx.isKeyword(t, "lock") || lx.isKeyword(t, "window") || lx.isKeyword(t, "procedure")
            || lx.isKeyword(t, "except") || lx.isKeyword(t, "intersect") || lx.isKeyword(t, "div") || lx.isKeyword(t, "mod")
            || lx.isKeyword(t, "and") || lx.isKeyword(t, "or") || lx.isKeyword(t, "xor") || lx.isKeyword(t, "is")
            || lx.isKeyword(t, "not") || lx.isKeyword(t, "like") || lx.isKeyword(t, "in") || lx.isKeyword(t, "between")
            || lx.isKeyword(t, "collate") || lx.isKeyword(t, "regexp") || lx.isKeyword(t, "rlike") || lx.isKeyword(t, "sounds")
    }

    private static func text(_ lx: MySQLLexer, _ start: Int, _ end: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: lx.buf[start..<end]), as: UTF8.self)
    }
}

/// A per-connection function the proxy answers.
public enum MySQLSessionFunction: Sendable, Hashable {
    case rowCount
    case foundRows
    case connectionID
    case lastInsertID
}

/// One column of a proxy-answered `SELECT`.
public struct MySQLSessionFunctionColumn: Sendable, Hashable {
    public var function: MySQLSessionFunction
    public var name: String

    public init(function: MySQLSessionFunction, name: String) {
        self.function = function
        self.name = name
    }
}
