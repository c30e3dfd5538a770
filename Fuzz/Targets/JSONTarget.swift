import ConciergeJSON

/// `JSON.parse`, as the admin API reads request bodies and the configuration reads IAM policies.
enum JSONTarget {
    /// Parses the input with and without duplicate-key rejection and with a small depth limit.
    /// Properties: whatever parses is rendered (compact and indented) to text that parses to the
    /// same value; a value accepted with duplicate keys rejected is accepted without; a value
    /// within depth 3 parses the same with the default limit.
    static let json: FuzzTargets.Target = { data in
        let lenient = try? JSON.parse(data)
        let strict = try? JSON.parse(data, rejectingDuplicateKeys: true)
        if let strict {
            FuzzCheck.require(lenient == strict, "json: strict \(strict.rendered(indent: 0)) != lenient")
        }
        do {
            _ = try JSON.parse(data, maximumDepth: 3)
        } catch {
            _ = String(describing: error)
        }
        if let shallow = try? JSON.parse(data, maximumDepth: 3) {
            FuzzCheck.require(shallow == lenient, "json: depth 3 parse differs")
        }
        guard let value = lenient else { return }
        for indent in [0, 4] {
            let text = value.rendered(indent: indent)
            guard let again = try? JSON.parse(text) else {
                FuzzCheck.fail("json: the rendering does not parse: \(text.debugDescription)")
            }
            FuzzCheck.require(again == value, "json: \(text.debugDescription) parses as something else")
        }
        visit(value)
    }

    /// The accessors on every value (number conversions, string quoting both ways).
    private static func visit(_ value: JSON) {
        _ = value.typeName
        _ = value.intValue
        _ = value.doubleValue
        _ = value.boolValue
        switch value {
        case .string(let text):
            for asciiOnly in [false, true] {
                let quoted = JSON.quote(text, asciiOnly: asciiOnly)
                FuzzCheck.require((try? JSON.parse(quoted)) == .string(text), "json: quote(asciiOnly: \(asciiOnly)) of \(text.debugDescription) = \(quoted)")
            }
            var python = ""
            JSON.appendEscaped(text, to: &python, .pythonASCII)
        case .array(let elements):
            elements.forEach(visit)
        case .object(let members):
            for member in members {
                _ = value[member.key]
                visit(member.value)
            }
        default:
            break
        }
    }
}
