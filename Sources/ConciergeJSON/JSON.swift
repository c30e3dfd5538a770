/// A JSON value shared by the admin API server, the `concierge` CLI and the AWS clients.
///
/// It keeps what a generic decoder loses: the order of an object's members (repeated names
/// included, for callers that refuse them with their own message) and the exact text of
/// numbers, so a body can be printed again key for key and digit for digit. Parsing is strict
/// (RFC 8259) with a nesting limit; errors carry the byte offset, line and column.
public indirect enum JSON: Sendable, Equatable {
    public typealias Member = (key: String, value: JSON)

    case null
    case bool(Bool)
    /// The number's text as it appeared (or as written), e.g. `50`, `1.5` or `-2.5e3`.
    case number(String)
    case string(String)
    case array([JSON])
    case object([Member])

    public static func == (lhs: JSON, rhs: JSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.number(let a), .number(let b)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.elementsEqual(b) { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// An integer number.
    public static func int(_ value: Int) -> JSON { .number(String(value)) }

    /// A floating-point number written as Swift prints it (`1.5`, `100.0`, `1e+20`); `null`
    /// when it is not finite (JSON has no NaN or infinity).
    public static func double(_ value: Double) -> JSON { value.isFinite ? .number("\(value)") : .null }

    /// The value of the first member named `key` of an object, else nil.
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    /// The number as an `Int` when its text is an integer that fits (not `1.0`, `1e2`, ...).
    public var intValue: Int? {
        guard case .number(let text) = self else { return nil }
        return Int(text)
    }

    /// The number as a `Double`.
    public var doubleValue: Double? {
        guard case .number(let text) = self else { return nil }
        return Double(text)
    }

    public var stringValue: String? {
        guard case .string(let value) = self else { return nil }
        return value
    }

    public var boolValue: Bool? {
        guard case .bool(let value) = self else { return nil }
        return value
    }

    /// The JSON type's name for error messages: "an object", "a string", "null", ...
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

// MARK: - Writing

extension JSON {
    /// Serialized with `indent` spaces per level, as Python's `json.dumps(indent=4,
    /// ensure_ascii=False)` writes it (the aws CLI's output), ending in a newline; with
    /// `indent` 0 compact (`{"a":1,"b":[true]}`) and without a newline.
    public func rendered(indent: Int = 4) -> String {
        var out = ""
        write(into: &out, indent: indent, level: 0)
        if indent > 0 { out += "\n" }
        return out
    }

    private func write(into out: inout String, indent: Int, level: Int) {
        let newline = indent > 0 ? "\n" : ""
        let pad = { (level: Int) in String(repeating: " ", count: indent * level) }
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .number(let text): out += text
        case .string(let value): out += JSON.quote(value)
        case .array(let elements):
            if elements.isEmpty { out += "[]"; return }
            out += "[" + newline
            for (index, element) in elements.enumerated() {
                out += pad(level + 1)
                element.write(into: &out, indent: indent, level: level + 1)
                out += (index < elements.count - 1 ? "," : "") + newline
            }
            out += pad(level) + "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{" + newline
            for (index, member) in members.enumerated() {
                out += pad(level + 1) + JSON.quote(member.key) + (indent > 0 ? ": " : ":")
                member.value.write(into: &out, indent: indent, level: level + 1)
                out += (index < members.count - 1 ? "," : "") + newline
            }
            out += pad(level) + "}"
        }
    }

    /// `"text"` with JSON escapes as Python's json module writes them (`\"`, `\\`, `\n`, `\r`,
    /// `\t`, `\b`, `\f`, other control characters as `\u00XX`); with `asciiOnly`, characters
    /// beyond ASCII as `\uXXXX` too (UTF-16, lowercase hex), like `ensure_ascii=True`.
    public static func quote(_ text: String, asciiOnly: Bool = false) -> String {
        var out = "\""
        appendEscaped(text, to: &out, asciiOnly ? .pythonASCII : .python)
        return out + "\""
    }

    /// How `appendEscaped` writes characters beyond the five it always escapes (`\"`, `\\`,
    /// `\n`, `\r`, `\t`). The JSON output, the configuration printer (YAML-safe too) and the log
    /// lines differ only in these.
    public struct Escaping: Sendable {
        /// Backspace and form feed as `\b` and `\f` (otherwise `\u0008`, `\u000c`).
        public var shortBackspaceAndFormFeed: Bool
        public var uppercaseHex: Bool
        /// Characters written as `\uXXXX` besides the other control characters below U+0020.
        public var alsoEscaped: @Sendable (Unicode.Scalar) -> Bool

        public init(shortBackspaceAndFormFeed: Bool, uppercaseHex: Bool,
                    alsoEscaped: @escaping @Sendable (Unicode.Scalar) -> Bool) {
            self.shortBackspaceAndFormFeed = shortBackspaceAndFormFeed
            self.uppercaseHex = uppercaseHex
            self.alsoEscaped = alsoEscaped
        }

        /// As Python's json module writes.
        public static let python = Escaping(shortBackspaceAndFormFeed: true, uppercaseHex: false) { _ in false }
        /// As Python's json module writes with `ensure_ascii=True`.
        public static let pythonASCII = Escaping(shortBackspaceAndFormFeed: true, uppercaseHex: false) { $0.value > 0x7F }
    }

    /// Appends `text` JSON-escaped (without quotes) to `out`; `\uXXXX` escapes are UTF-16 units.
    public static func appendEscaped(_ text: String, to out: inout String, _ escaping: Escaping) {
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}" where escaping.shortBackspaceAndFormFeed: out += "\\b"
            case "\u{0C}" where escaping.shortBackspaceAndFormFeed: out += "\\f"
            default:
                if scalar.value < 0x20 || escaping.alsoEscaped(scalar) {
                    for unit in String(scalar).utf16 {
                        let hex = String(unit, radix: 16, uppercase: escaping.uppercaseHex)
                        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    }
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
    }
}

// MARK: - Parsing

extension JSON {
    /// Where and why a text is not JSON. `offset` is the byte offset (0-based); `line` and
    /// `column` count from 1, the column in characters (UTF-8 sequences count once).
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var reason: String
        public var offset: Int
        public var line: Int
        public var column: Int

        public init(reason: String, offset: Int, line: Int, column: Int) {
            self.reason = reason
            self.offset = offset
            self.line = line
            self.column = column
        }

        public var description: String { "line \(line), column \(column): \(reason)" }
    }

    /// The default nesting limit.
    public static let defaultMaximumDepth = 64

    /// Parses one JSON value filling the whole text (white space around it allowed).
    /// - Parameters:
    ///   - maximumDepth: how deeply arrays and objects may nest.
    ///   - rejectingDuplicateKeys: refuse an object that names a member twice (else both are
    ///     kept, in order; `subscript` finds the first).
    public static func parse<Bytes: Collection>(
        _ bytes: Bytes, maximumDepth: Int = defaultMaximumDepth, rejectingDuplicateKeys: Bool = false
    ) throws(ParseError) -> JSON where Bytes.Element == UInt8 {
        var parser = Parser(bytes: Array(bytes), maximumDepth: maximumDepth, rejectsDuplicateKeys: rejectingDuplicateKeys)
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.index == parser.bytes.count else { throw parser.error("unexpected text after the JSON value") }
        return value
    }

    public static func parse(
        _ text: String, maximumDepth: Int = defaultMaximumDepth, rejectingDuplicateKeys: Bool = false
    ) throws(ParseError) -> JSON {
        try parse(Array(text.utf8), maximumDepth: maximumDepth, rejectingDuplicateKeys: rejectingDuplicateKeys)
    }

    private struct Parser {
        let bytes: [UInt8]
        let maximumDepth: Int
        let rejectsDuplicateKeys: Bool
        var index = 0

        init(bytes: [UInt8], maximumDepth: Int, rejectsDuplicateKeys: Bool) {
            self.bytes = bytes
            self.maximumDepth = maximumDepth
            self.rejectsDuplicateKeys = rejectsDuplicateKeys
        }

        func error(_ reason: String) -> ParseError {
            let end = min(index, bytes.count)
            var line = 1
            var column = 1
            for byte in bytes[..<end] {
                if byte == UInt8(ascii: "\n") {
                    line += 1
                    column = 1
                } else if byte & 0xC0 != 0x80 {
                    column += 1
                }
            }
            return ParseError(reason: reason, offset: end, line: line, column: column)
        }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipWhitespace() {
            while let b = current, b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D { index += 1 }
        }

        func describeCurrent() -> String {
            guard let b = current else { return "the end of the text" }
            if b >= 0x21 && b < 0x7F { return "'\(Character(Unicode.Scalar(b)))'" }
            return "byte 0x\(String(b, radix: 16))"
        }

        mutating func value(depth: Int) throws(ParseError) -> JSON {
            guard depth < maximumDepth else { throw error("nested more than \(maximumDepth) levels deep") }
            guard let b = current else { throw error("expected a value, found the end of the text") }
            switch b {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw error("expected a value, found \(describeCurrent())")
            }
        }

        mutating func literal(_ word: String) throws(ParseError) {
            for expected in word.utf8 {
                guard current == expected else { throw error("expected '\(word)'") }
                index += 1
            }
        }

        mutating func object(depth: Int) throws(ParseError) -> JSON {
            index += 1
            var members: [Member] = []
            skipWhitespace()
            if current == UInt8(ascii: "}") {
                index += 1
                return .object(members)
            }
            while true {
                skipWhitespace()
                guard current == UInt8(ascii: "\"") else {
                    throw error("expected a member name in double quotes, found \(describeCurrent())")
                }
                let key = try string()
                if rejectsDuplicateKeys, members.contains(where: { $0.key == key }) {
                    throw error("duplicate key \"\(key)\"")
                }
                skipWhitespace()
                guard current == UInt8(ascii: ":") else {
                    throw error("expected ':' after the member name \"\(key)\", found \(describeCurrent())")
                }
                index += 1
                skipWhitespace()
                members.append((key, try value(depth: depth + 1)))
                skipWhitespace()
                switch current {
                case UInt8(ascii: ","): index += 1
                case UInt8(ascii: "}"): index += 1; return .object(members)
                default: throw error("expected ',' or '}' in an object, found \(describeCurrent())")
                }
            }
        }

        mutating func array(depth: Int) throws(ParseError) -> JSON {
            index += 1
            var elements: [JSON] = []
            skipWhitespace()
            if current == UInt8(ascii: "]") {
                index += 1
                return .array(elements)
            }
            while true {
                skipWhitespace()
                elements.append(try value(depth: depth + 1))
                skipWhitespace()
                switch current {
                case UInt8(ascii: ","): index += 1
                case UInt8(ascii: "]"): index += 1; return .array(elements)
                default: throw error("expected ',' or ']' in an array, found \(describeCurrent())")
                }
            }
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard let b = current else { throw error("incomplete \\u escape") }
                let digit: UInt32
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(b - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(b - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(b - UInt8(ascii: "A") + 10)
                default: throw error("invalid \\u escape")
                }
                value = value << 4 | digit
                index += 1
            }
            return value
        }

        mutating func string() throws(ParseError) -> String {
            let start = index
            index += 1
            var out = [UInt8]()
            while true {
                guard let b = current else {
                    index = start
                    throw error("unterminated string")
                }
                index += 1
                switch b {
                case UInt8(ascii: "\""):
                    guard let text = String(validating: out, as: UTF8.self) else {
                        index = start
                        throw error("a string is not valid UTF-8")
                    }
                    return text
                case UInt8(ascii: "\\"):
                    guard let e = current else { throw error("unterminated escape") }
                    index += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800..<0xDC00).contains(scalar) {
                            guard current == UInt8(ascii: "\\") else { throw error("a lone UTF-16 surrogate in a \\u escape") }
                            index += 1
                            guard current == UInt8(ascii: "u") else { throw error("a lone UTF-16 surrogate in a \\u escape") }
                            index += 1
                            let low = try hex4()
                            guard (0xDC00..<0xE000).contains(low) else { throw error("a lone UTF-16 surrogate in a \\u escape") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00..<0xE000).contains(scalar) {
                            throw error("a lone UTF-16 surrogate in a \\u escape")
                        }
                        out.append(contentsOf: Array(String(Unicode.Scalar(scalar)!).utf8))
                    default:
                        index -= 1
                        throw error("invalid escape '\\\(Character(Unicode.Scalar(e)))'")
                    }
                default:
                    guard b >= 0x20 else {
                        index -= 1
                        throw error("a control character in a string (escape it)")
                    }
                    out.append(b)
                }
            }
        }

        mutating func number() throws(ParseError) -> String {
            let start = index
            if current == UInt8(ascii: "-") { index += 1 }
            func isDigit(_ b: UInt8?) -> Bool { b.map { $0 >= 0x30 && $0 <= 0x39 } ?? false }
            guard isDigit(current) else { throw error("expected a digit") }
            if current == UInt8(ascii: "0") {
                index += 1
            } else {
                while isDigit(current) { index += 1 }
            }
            if current == UInt8(ascii: ".") {
                index += 1
                guard isDigit(current) else { throw error("expected a digit after '.'") }
                while isDigit(current) { index += 1 }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                guard isDigit(current) else { throw error("expected a digit in the exponent") }
                while isDigit(current) { index += 1 }
            }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }
    }
}
