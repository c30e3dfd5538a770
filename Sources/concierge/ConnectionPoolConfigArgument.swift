import ArgumentParser
import ConciergeJSON

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `--connection-pool-config`: JSON (`{"MaxConnectionsPercent": 50}`), the aws CLI's shorthand
/// (`MaxConnectionsPercent=50,SessionPinningFilters=EXCLUDE_VARIABLE_SETS`), or `file://PATH`
/// holding either. Keys and types are checked here like the aws CLI does (a usage error, 252);
/// ranges are the API's to check.
enum ConnectionPoolConfigArgument {
    enum Kind { case integer, string, stringList }

    static let keys: [(name: String, kind: Kind)] = [
        ("MaxConnectionsPercent", .integer),
        ("MaxIdleConnectionsPercent", .integer),
        ("ConnectionBorrowTimeout", .integer),
        ("SessionPinningFilters", .stringList),
        ("InitQuery", .string),
    ]

    static func kind(of key: String) -> Kind? { keys.first { $0.name == key }?.kind }

    static var validKeys: String { keys.map(\.name).joined(separator: ", ") }

    /// The ConnectionPoolConfig object to send, keys in the order given.
    static func parse(_ argument: String, flag: String) throws -> JSON {
        var text = argument
        if argument.hasPrefix("file://") {
            let path = String(argument.dropFirst("file://".count))
            guard let contents = readFile(path) else {
                throw usageError(flag, "could not read \(path): \(String(cString: strerror(errno)))")
            }
            text = contents
        }
        let trimmed = text.trimmingSpaces
        if trimmed.hasPrefix("{") || trimmed.hasPrefix("[") || trimmed.hasPrefix("\"") {
            return try parseJSON(trimmed, flag: flag)
        }
        guard !trimmed.isEmpty else { throw usageError(flag, "expected JSON or key=value pairs, got nothing") }
        return try parseShorthand(trimmed, flag: flag)
    }

    // MARK: JSON

    static func parseJSON(_ text: String, flag: String) throws -> JSON {
        let value: JSON
        do {
            value = try JSON.parse(text, maximumDepth: 512)
        } catch {
            throw usageError(flag, "Invalid JSON: \(error.reason) at character \(error.offset + 1)\nJSON received: \(text)")
        }
        guard case .object(let members) = value else {
            throw usageError(flag, "expected a JSON object, e.g. {\"MaxConnectionsPercent\": 50}")
        }
        var seen = Set<String>()
        for member in members {
            guard let kind = kind(of: member.key) else {
                throw usageError(flag, "Unknown parameter in ConnectionPoolConfig: \"\(member.key)\", must be one of: \(validKeys)")
            }
            guard seen.insert(member.key).inserted else {
                throw usageError(flag, "ConnectionPoolConfig.\(member.key) is given twice")
            }
            try checkType(member.key, member.value, kind, flag: flag)
        }
        return value
    }

    private static func checkType(_ key: String, _ value: JSON, _ kind: Kind, flag: String) throws {
        let ok: Bool
        let expected: String
        switch kind {
        case .integer:
            expected = "an integer"
            if case .number(let n) = value { ok = Int(n) != nil } else { ok = false }
        case .string:
            expected = "a string"
            if case .string = value { ok = true } else { ok = false }
        case .stringList:
            expected = "a list of strings"
            if case .array(let elements) = value {
                ok = elements.allSatisfy { if case .string = $0 { true } else { false } }
            } else {
                ok = false
            }
        }
        if !ok {
            throw usageError(flag, "Invalid type for parameter ConnectionPoolConfig.\(key), value: \(value.rendered(indent: 0)), valid types: \(expected)")
        }
    }

    // MARK: shorthand

    /// The aws CLI's shorthand syntax: `Key=value,Key2=value2`; a list value is `Key=[a,b]` or
    /// `Key=a,b` (a comma not followed by `Name=` continues the list); values may be quoted
    /// with "..." or '...'.
    static func parseShorthand(_ text: String, flag: String) throws -> JSON {
        var parser = ShorthandParser(chars: Array(text))
        let pairs: [(key: String, values: [String], explicitList: Bool)]
        do {
            pairs = try parser.parse()
        } catch {
            throw usageError(flag, "Error parsing parameter: \(error.message), received: \(text)")
        }
        var members: [JSON.Member] = []
        for pair in pairs {
            guard let kind = kind(of: pair.key) else {
                throw usageError(flag, "Unknown parameter in ConnectionPoolConfig: \"\(pair.key)\", must be one of: \(validKeys)")
            }
            guard !members.contains(where: { $0.key == pair.key }) else {
                throw usageError(flag, "ConnectionPoolConfig.\(pair.key) is given twice")
            }
            let value: JSON
            switch kind {
            case .stringList:
                // `Key=` alone: an empty list.
                let values = !pair.explicitList && pair.values == [""] ? [] : pair.values
                value = .array(values.map(JSON.string))
            case .integer, .string:
                guard pair.values.count == 1, !pair.explicitList else {
                    throw usageError(flag, "ConnectionPoolConfig.\(pair.key) takes one value, got a list (quote a value that has commas)")
                }
                if kind == .integer {
                    guard let n = Int(pair.values[0].trimmingSpaces) else {
                        throw usageError(flag, "Invalid value for parameter ConnectionPoolConfig.\(pair.key): '\(pair.values[0])' is not an integer")
                    }
                    value = .int(n)
                } else {
                    value = .string(pair.values[0])
                }
            }
            members.append((key: pair.key, value: value))
        }
        return .object(members)
    }

    private static func readFile(_ path: String) -> String? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            if n > 0 { bytes.append(contentsOf: buffer[0..<n]) }
            if n < buffer.count { break }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

struct ShorthandError: Error {
    var message: String
}

struct ShorthandParser {
    let chars: [Character]
    var position = 0

    init(chars: [Character]) { self.chars = chars }

    private var atEnd: Bool { position >= chars.count }
    private var current: Character? { atEnd ? nil : chars[position] }

    private mutating func skipSpaces() {
        while let c = current, c == " " || c == "\t" { position += 1 }
    }

    mutating func parse() throws(ShorthandError) -> [(key: String, values: [String], explicitList: Bool)] {
        var pairs: [(key: String, values: [String], explicitList: Bool)] = []
        while true {
            skipSpaces()
            let key = readKey()
            guard !key.isEmpty else { throw ShorthandError(message: "expected a key at character \(position + 1)") }
            skipSpaces()
            guard current == "=" else {
                throw ShorthandError(message: "expected '=' after \(key)")
            }
            position += 1
            skipSpaces()
            if current == "[" {
                position += 1
                var values: [String] = []
                skipSpaces()
                if current == "]" {
                    position += 1
                } else {
                    while true {
                        skipSpaces()
                        values.append(try readValue(stopAt: [",", "]"]))
                        skipSpaces()
                        if current == "," { position += 1; continue }
                        if current == "]" { position += 1; break }
                        throw ShorthandError(message: "expected ',' or ']' in the list of \(key)")
                    }
                }
                pairs.append((key, values, true))
                skipSpaces()
                if atEnd { return pairs }
                guard current == "," else { throw ShorthandError(message: "expected ',' after the list of \(key)") }
                position += 1
                continue
            }
            var values = [try readValue(stopAt: [","])]
            while current == "," {
                position += 1
                if startsKeyValue() { break }
                skipSpaces()
                values.append(try readValue(stopAt: [","]))
            }
            pairs.append((key, values, false))
            if atEnd { return pairs }
        }
    }

    private mutating func readKey() -> String {
        var key = ""
        while let c = current, c.isLetter || c.isNumber || c == "_" || c == "-" || c == "." || c == ":" {
            key.append(c)
            position += 1
        }
        return key
    }

    /// Whether the text from here is `Key=` (a new pair) rather than another value of a list.
    private func startsKeyValue() -> Bool {
        var p = position
        while p < chars.count, chars[p] == " " || chars[p] == "\t" { p += 1 }
        let start = p
        while p < chars.count, chars[p].isLetter || chars[p].isNumber || chars[p] == "_" || chars[p] == "-"
            || chars[p] == "." || chars[p] == ":" {
            p += 1
        }
        guard p > start else { return false }
        while p < chars.count, chars[p] == " " || chars[p] == "\t" { p += 1 }
        return p < chars.count && chars[p] == "="
    }

    private mutating func readValue(stopAt stops: Set<Character>) throws(ShorthandError) -> String {
        if let q = current, q == "\"" || q == "'" {
            position += 1
            var value = ""
            while true {
                guard let c = current else { throw ShorthandError(message: "unterminated quoted value") }
                position += 1
                if c == "\\", let next = current, next == q || next == "\\" {
                    value.append(next)
                    position += 1
                    continue
                }
                if c == q { break }
                value.append(c)
            }
            skipSpaces()
            if let c = current, !stops.contains(c) {
                throw ShorthandError(message: "unexpected '\(c)' after a quoted value")
            }
            return value
        }
        var value = ""
        while let c = current, !stops.contains(c) {
            value.append(c)
            position += 1
        }
        return value.trimmingSpaces
    }
}
