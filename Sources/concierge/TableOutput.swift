import ConciergeJSON
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `--output table`: a response rendered the way the aws CLI's table formatter does it
/// (awscli/formatter.py `TableFormatter` and awscli/table.py `MultiTable`): a title row with the
/// operation name, one boxed section per nested object or list (indented by `|` per level), the
/// scalar keys of an object as columns (sorted), turned into key/value rows when the table would
/// be wider than the terminal.
struct TableOutput {
    /// The terminal's width, 80 when stdout is not a terminal (like the aws CLI).
    var terminalWidth: Int

    init(terminalWidth: Int = TableOutput.stdoutTerminalWidth()) {
        self.terminalWidth = terminalWidth
    }

    /// The table for `response` (every line ending in a newline), or "" when there is nothing
    /// to show (an empty response, like the aws CLI's).
    func render(title: String, _ response: JSON) -> String {
        var builder = Builder()
        guard builder.build(title: title, response, indentLevel: 0) else { return "" }
        var sections = builder.sections
        guard !sections.isEmpty else { return "" }
        var maxWidth = Self.maxWidth(sections)
        if maxWidth > terminalWidth {
            Self.convertToVertical(&sections)
            maxWidth = Self.maxWidth(sections)
        }
        var out = String(repeating: "-", count: maxWidth) + "\n"
        for section in sections {
            Self.render(section, maxWidth: maxWidth, into: &out)
        }
        return out
    }

    static func stdoutTerminalWidth() -> Int {
        var size = winsize()
        guard ioctl(1, UInt(TIOCGWINSZ), &size) == 0 else { return 80 }
        return Int(size.ws_col)
    }

    // MARK: building sections (TableFormatter)

    final class Section {
        var title = ""
        var headers: [String] = []
        var rows: [[String]] = []
        var indentLevel = 0
        var columnCount: Int?
        var maxWidths: [Int] = []

        func addHeader(_ headers: [String]) {
            updateMaxWidths(headers)
            if columnCount == nil { columnCount = headers.count }
            self.headers = headers
        }

        func addRow(_ row: [String]) {
            if columnCount == nil { columnCount = row.count }
            rows.append(row)
            updateMaxWidths(row)
        }

        private func updateMaxWidths(_ row: [String]) {
            if maxWidths.isEmpty {
                maxWidths = row.map(textLength)
            } else {
                for (i, cell) in row.enumerated() {
                    if i < maxWidths.count {
                        maxWidths[i] = max(textLength(cell), maxWidths[i])
                    } else {
                        maxWidths.append(textLength(cell))
                    }
                }
            }
        }

        func columnWidths(padding: Int = 0, maxWidth: Int? = nil) -> [Int] {
            let unscaled = maxWidths.map { $0 + padding }
            guard let maxWidth, !unscaled.isEmpty else { return unscaled }
            let scale = Double(maxWidth) / Double(unscaled.reduce(0, +))
            var scaled = unscaled.map { Int((scale * Double($0)).rounded(.toNearestOrEven)) }
            var offBy = scaled.reduce(0, +) - maxWidth
            while offBy != 0 {
                let order: [Int] = offBy < 0 ? Array(scaled.indices.reversed()) : Array(scaled.indices)
                for i in order {
                    if offBy > 0 {
                        scaled[i] -= 1
                        offBy -= 1
                    } else {
                        scaled[i] += 1
                        offBy += 1
                    }
                    if offBy == 0 { break }
                }
            }
            return scaled
        }

        func totalWidth(padding: Int, withBorder: Bool, outerPadding: Int) -> Int {
            var total = columnWidths().reduce(0) { $0 + $1 + padding }
            if withBorder { total += 2 }
            total += 2 * outerPadding
            return max(textLength(title) + 2 + 2 * outerPadding, total)
        }
    }

    struct Builder {
        var sections: [Section] = []
        var current: Section?

        private mutating func newSection(_ title: String, indentLevel: Int) {
            let section = Section()
            section.title = title
            section.indentLevel = indentLevel
            sections.append(section)
            current = section
        }

        private mutating func section() -> Section {
            if let current { return current }
            newSection("", indentLevel: 0)
            return current!
        }

        /// `_build_table`: false when `value` is empty (nothing shown for it).
        @discardableResult
        mutating func build(title: String?, _ value: JSON, indentLevel: Int) -> Bool {
            if value.isEmptyContainer { return false }
            if let title { newSection(title, indentLevel: indentLevel) }
            switch value {
            case .array(let elements):
                if case .object = elements[0] {
                    buildFromList(elements, indentLevel: indentLevel, title: title ?? "")
                } else {
                    for element in elements {
                        switch element {
                        case .array(let inner) where inner.allSatisfy(\.isScalar):
                            section().addRow(inner.map(\.tableCell))
                        case .object, .array:
                            build(title: nil, element, indentLevel: indentLevel)
                        default:
                            section().addRow([element.tableCell])
                        }
                    }
                }
            case .object(let members):
                buildFromObject(members, indentLevel: indentLevel)
            default:
                section().addRow([value.tableCell])
            }
            return true
        }

        /// `_build_sub_table_from_dict`.
        private mutating func buildFromObject(_ members: [JSON.Member], indentLevel: Int) {
            let (headers, more) = Self.groupScalarKeys(members)
            let values = Self.lookup(members)
            if headers.count == 1 {
                section().addRow([headers[0], values[headers[0]]!.tableCell])
            } else if !headers.isEmpty {
                section().addHeader(headers)
                section().addRow(headers.map { values[$0]!.tableCell })
            }
            for key in more {
                build(title: key, values[key]!, indentLevel: indentLevel + 1)
            }
        }

        /// `_build_sub_table_from_list`: a list of objects, one row per object under the same
        /// column headers (the union of their scalar keys); an object with nested values starts
        /// a section of its own so that its nested sections follow it.
        private mutating func buildFromList(_ elements: [JSON], indentLevel: Int, title: String) {
            var headerSet = Set<String>()
            var moreSet = Set<String>()
            for element in elements {
                guard case .object(let members) = element else { continue }
                let (h, m) = Self.groupScalarKeys(members)
                headerSet.formUnion(h)
                moreSet.formUnion(m)
            }
            let headers = headerSet.sorted(by: Self.pythonOrder)
            let more = moreSet.sorted(by: Self.pythonOrder)
            section().addHeader(headers)
            var first = true
            for element in elements {
                let members: [JSON.Member]
                if case .object(let m) = element { members = m } else { members = [] }
                if !first && !more.isEmpty {
                    newSection(title, indentLevel: indentLevel)
                    section().addHeader(headers)
                }
                first = false
                let values = Self.lookup(members)
                section().addRow(headers.map { values[$0]?.tableCell ?? "" })
                for key in more {
                    if let nested = values[key] {
                        build(title: key, nested, indentLevel: indentLevel + 1)
                    }
                }
            }
        }

        private static func lookup(_ members: [JSON.Member]) -> [String: JSON] {
            var values: [String: JSON] = [:]
            for m in members { values[m.key] = m.value }  // the last one wins, like a Python dict
            return values
        }

        private static func groupScalarKeys(_ members: [JSON.Member]) -> ([String], [String]) {
            var headers: [String] = []
            var more: [String] = []
            var seen = Set<String>()
            for m in members.reversed() where seen.insert(m.key).inserted {
                if m.value.isScalar { headers.append(m.key) } else { more.append(m.key) }
            }
            return (headers.sorted(by: pythonOrder), more.sorted(by: pythonOrder))
        }

        /// Python's string order: by code point.
        static func pythonOrder(_ a: String, _ b: String) -> Bool {
            a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars)
        }
    }

    // MARK: rendering (MultiTable)

    private static func maxWidth(_ sections: [Section]) -> Int {
        sections.map { $0.totalWidth(padding: 4, withBorder: true, outerPadding: $0.indentLevel) }.max() ?? 0
    }

    /// `convert_to_vertical_table`: every section of one row under headers becomes key/value rows.
    private static func convertToVertical(_ sections: inout [Section]) {
        for (i, section) in sections.enumerated() where section.rows.count == 1 && !section.headers.isEmpty {
            let vertical = Section()
            vertical.title = section.title
            vertical.indentLevel = section.indentLevel
            for (header, cell) in zip(section.headers, section.rows[0]) {
                vertical.addRow([header, cell])
            }
            sections[i] = vertical
        }
    }

    private static func render(_ section: Section, maxWidth: Int, into out: inout String) {
        let edge = String(repeating: "|", count: section.indentLevel)
        func write(_ line: String) { out += edge + line + edge + "\n" }
        let width = maxWidth - 2 * section.indentLevel
        if !section.title.isEmpty {
            write(centered(section.title, length: width, left: "|", right: "|"))
            if section.headers.isEmpty && section.rows.isEmpty {
                write("+" + String(repeating: "-", count: max(0, width - 2)) + "+")
            }
        }
        if !section.headers.isEmpty {
            let widths = section.columnWidths(padding: 4, maxWidth: width)
            write(lineBreak(widths))
            var line = ""
            for (i, (w, header)) in zip(widths, section.headers).enumerated() {
                line += centered(header, length: w, left: i == 0 ? "|" : "", right: "|")
            }
            write(line)
        }
        if !section.rows.isEmpty {
            let widths = section.columnWidths(padding: 4, maxWidth: width)
            guard !widths.isEmpty else { return }
            write(lineBreak(widths))
            for row in section.rows {
                var line = ""
                for (i, (w, cell)) in zip(widths, row).enumerated() {
                    line += alignedLeft(cell, length: w, left: i == 0 ? "|" : "", right: "|")
                }
                write(line)
            }
            write(lineBreak(widths))
        }
    }

    private static func lineBreak(_ widths: [Int]) -> String {
        var parts = ""
        for (i, w) in widths.enumerated() {
            if i == 0 {
                parts += "+" + String(repeating: "-", count: max(0, w - 2)) + "+"
            } else {
                parts += String(repeating: "-", count: max(0, w - 1)) + "+"
            }
        }
        return parts
    }

    /// `center_text`.
    private static func centered(_ text: String, length: Int, left: String, right: String) -> String {
        let textLen = textLength(text)
        let start = floorDiv(length, 2) - floorDiv(textLen, 2) - 1
        var out = left + String(repeating: " ", count: max(0, start)) + text
        let soFar = left.count + start + textLen
        out += String(repeating: " ", count: max(0, length - right.count - soFar))
        return out + right
    }

    /// `align_left`, with a left padding of 2 when the cell has room for it.
    private static func alignedLeft(_ text: String, length: Int, left: String, right: String) -> String {
        let textLen = textLength(text)
        let padding = length - (textLen + 2 + left.count + right.count) >= 0 ? 2 : 0
        let soFar = left.count + padding + textLen
        return left + String(repeating: " ", count: padding) + text
            + String(repeating: " ", count: max(0, length - soFar - right.count)) + right
    }

    private static func floorDiv(_ a: Int, _ b: Int) -> Int {
        let q = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
    }
}

/// The columns a text takes in a terminal: 2 for East Asian wide and full-width characters
/// (approximated by their blocks), else 1 per character.
func textLength(_ text: String) -> Int {
    text.unicodeScalars.reduce(0) { total, scalar in
        let v = scalar.value
        let wide = (0x1100...0x115F).contains(v) || (0x2E80...0xA4CF).contains(v)
            || (0xAC00...0xD7A3).contains(v) || (0xF900...0xFAFF).contains(v)
            || (0xFE30...0xFE4F).contains(v) || (0xFF00...0xFF60).contains(v)
            || (0xFFE0...0xFFE6).contains(v) || (0x1F300...0x1F64F).contains(v)
            || (0x20000...0x3FFFD).contains(v)
        return total + (wide ? 2 : 1)
    }
}

// What the aws CLI's table formatter needs of a JSON value.
extension JSON {
    var isScalar: Bool {
        switch self {
        case .object, .array: return false
        default: return true
        }
    }

    /// Python's truthiness, which the aws CLI's table formatter tests: empty containers are false.
    var isEmptyContainer: Bool {
        switch self {
        case .object(let m): return m.isEmpty
        case .array(let a): return a.isEmpty
        default: return false
        }
    }

    /// The value as Python's `str()` shows it, which is what the aws CLI's table cells contain:
    /// strings bare, `True`/`False`, `None`.
    var tableCell: String {
        switch self {
        case .string(let s): return s
        case .number(let n): return n
        case .bool(let b): return b ? "True" : "False"
        case .null: return "None"
        case .object, .array: return rendered(indent: 0)
        }
    }
}
