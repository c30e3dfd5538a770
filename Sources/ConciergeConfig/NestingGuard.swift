import Yams

/// A bound on how deeply a YAML text nests collections, checked before the parser sees it.
///
/// Yams composes a document recursively, one stack frame chain per level: 20,000 nested `[` in a
/// 40 KB file overflow the stack (signal 11), and a reload must refuse such a file, not die of it.
/// The scan counts what can nest without growing the text quadratically: flow collections
/// (`[`, `{`) and compact block indicators at the start of a line (`- - - x`, `? - x`). Nesting
/// by indentation needs n spaces for level n, so a file of any plausible size stays shallow that
/// way. Quoted scalars and comments are skipped; the count is an upper bound of the real depth.
enum NestingGuard {
    /// Far beyond any configuration (the deepest key path is about six levels).
    static let maximumDepth = 64

    /// Where the text first nests beyond `maximumDepth`, 1-based (nil: within the bound).
    static func firstExcess(in yaml: String) -> (line: Int, column: Int, depth: Int)? {
        var flowDepth = 0
        var line = 1
        var column = 0
        var atLineStart = true  // only indentation and block indicators seen on this line so far
        var blockDepth = 0
        var quote: UInt8?  // inside a quoted scalar: its quote
        var inComment = false
        var previous: UInt8 = UInt8(ascii: "\n")
        let bytes = Array(yaml.utf8)
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            column += 1
            defer { index += 1 }
            if byte == UInt8(ascii: "\n") {
                line += 1
                column = 0
                atLineStart = true
                blockDepth = 0
                inComment = false
                previous = byte
                continue
            }
            if inComment { continue }
            if let open = quote {
                if byte == UInt8(ascii: "\\"), open == UInt8(ascii: "\"") {
                    index += 1  // the escaped character
                    column += 1
                } else if byte == open {
                    if open == UInt8(ascii: "'"), index + 1 < bytes.count, bytes[index + 1] == open {
                        index += 1  // '' inside single quotes
                        column += 1
                    } else {
                        quote = nil
                    }
                }
                previous = byte
                continue
            }
            let next: UInt8 = index + 1 < bytes.count ? bytes[index + 1] : UInt8(ascii: "\n")
            let spaceAfter = next == UInt8(ascii: " ") || next == UInt8(ascii: "\t") || next == UInt8(ascii: "\n")
                || next == UInt8(ascii: "\r")
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                break
            case UInt8(ascii: "#") where previous == UInt8(ascii: " ") || previous == UInt8(ascii: "\t")
                || previous == UInt8(ascii: "\n"):
                inComment = true
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                quote = byte
                atLineStart = false
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                flowDepth += 1
                atLineStart = false
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                flowDepth = max(0, flowDepth - 1)
                atLineStart = false
            // (A `where` binds to the last pattern only: each pattern carries its own.)
            case UInt8(ascii: "-") where atLineStart && spaceAfter, UInt8(ascii: "?") where atLineStart && spaceAfter,
                UInt8(ascii: ":") where atLineStart && spaceAfter:
                blockDepth += 1
            default:
                atLineStart = false
            }
            previous = byte
            if flowDepth + blockDepth > maximumDepth {
                return (line, column, flowDepth + blockDepth)
            }
        }
        return nil
    }
}

/// A bound on how many nodes a YAML document expands to once its aliases are resolved, checked
/// after the parser (which resolves an alias in constant time) and before anything is decoded.
///
/// An alias (`*name`) stands for its anchor's whole node, so a few hundred bytes of nested anchors
/// and aliases expand to millions of nodes ("billion laughs"), and decoding them (an IAM policy
/// written as YAML is turned into JSON text) takes minutes and gigabytes. Without aliases a
/// document has at most about one node per byte: ten per byte, plus 1,000, never refuses one.
enum ExpansionGuard {
    static func nodeBudget(forTextOfLength length: Int) -> Int { length * 10 + 1_000 }

    /// Whether `node`, aliases expanded, has more than `budget` nodes; stops counting there.
    static func exceeds(_ node: Node, budget: Int) -> Bool {
        var remaining = budget
        return !fits(node, &remaining)
    }

    private static func fits(_ node: Node, _ remaining: inout Int) -> Bool {
        remaining -= 1
        guard remaining >= 0 else { return false }
        switch node {
        case .mapping(let mapping):
            for (key, value) in mapping where !fits(key, &remaining) || !fits(value, &remaining) { return false }
        case .sequence(let sequence):
            for element in sequence where !fits(element, &remaining) { return false }
        default:
            break
        }
        return true
    }
}
