import Testing

import ConciergeJSON

// Moved from Tests/ConciergeServerTests/AdminTests.swift (the admin API's JSON).
@Suite struct JSONTests {
    @Test func roundTripKeepsKeyOrderAndTypes() throws {
        let text = #"{"b": 1, "a": [true, null, -2.5e3, "x\"\\\n\u00e9\ud83d\ude00"], "c": {}}"#
        let value = try JSON.parse(Array(text.utf8))
        #expect(value["b"] == .int(1))
        // Numbers keep their source text (formerly parsed to `.double(-2500)`, printed `-2500.0`).
        #expect(value["a"] == .array([.bool(true), .null, .number("-2.5e3"), .string("x\"\\\né😀")]))
        if case .array(let elements) = value["a"] { #expect(elements[2].doubleValue == -2500) } else { Issue.record("not an array") }
        #expect(value.rendered(indent: 0) == #"{"b":1,"a":[true,null,-2.5e3,"x\"\\\né😀"],"c":{}}"#)
        #expect(try JSON.parse(Array(value.rendered().utf8)) == value)
        // A number built from a Double prints as before.
        #expect(JSON.array([.double(-2500), .double(1.5), .double(.nan)]).rendered(indent: 0) == "[-2500.0,1.5,null]")
    }

    @Test(arguments: ["", "{", "{\"a\":1,}", "[1 2]", "01", "\"\u{01}\"", "{\"a\":1,\"a\":2}", "nul", "1 2", "\"\\ud800\""])
    func rejectsInvalidJSON(_ text: String) {
        #expect(throws: JSON.ParseError.self) { try JSON.parse(Array(text.utf8), rejectingDuplicateKeys: true) }
    }

    @Test func rejectsDeepNesting() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: JSON.ParseError.self) { try JSON.parse(Array(deep.utf8)) }
        // A larger limit (the CLI's 512) accepts it.
        #expect(throws: Never.self) { try JSON.parse(deep, maximumDepth: 512) }
    }

    @Test func duplicateKeysAreKeptUnlessRejected() throws {
        #expect(try JSON.parse(#"{"a":1,"a":2}"#) == .object([("a", .int(1)), ("a", .int(2))]))
        let error = #expect(throws: JSON.ParseError.self) { try JSON.parse(#"{"a":1,"a":2}"#, rejectingDuplicateKeys: true) }
        #expect(error?.reason == #"duplicate key "a""#)
        #expect(error?.offset == 10)
    }

    @Test func numberAccessors() {
        #expect(JSON.int(50) == .number("50"))
        #expect(JSON.number("50").intValue == 50)
        #expect(JSON.number("1.0").intValue == nil)
        #expect(JSON.number("1e2").intValue == nil)
        #expect(JSON.number("99999999999999999999").intValue == nil)
        #expect(JSON.number("1e2").doubleValue == 100)
        #expect(JSON.string("1").intValue == nil)
        #expect(JSON.bool(true).typeName == "a boolean")
        #expect(JSON.number("1").typeName == "a number")
    }

    @Test func prettyPrintingIsPythons() {
        let value = JSON.object([
            ("b", .array([.int(1), .object([]), .array([])])), ("a", .object([("x", .string("é\u{8}\u{c}\u{1}"))])), ("n", .null),
        ])
        #expect(value.rendered() == """
            {
                "b": [
                    1,
                    {},
                    []
                ],
                "a": {
                    "x": "é\\b\\f\\u0001"
                },
                "n": null
            }

            """)
        #expect(value.rendered(indent: 0) == #"{"b":[1,{},[]],"a":{"x":"é\b\f\u0001"},"n":null}"#)
    }
}

// Moved from Tests/ConciergeAWSTests/IAMPolicyTests.swift (the AWS clients' JSON reader).
@Suite("JSON reader")
struct JSONReaderTests {
    @Test func values() throws {
        #expect(try JSON.parse(#" {"a": [1, -2.5e3, true, false, null, "x"], "b": {}} "#) == .object([
            ("a", .array([.number("1"), .number("-2.5e3"), .bool(true), .bool(false), .null, .string("x")])), ("b", .object([])),
        ]))
        #expect(try JSON.parse(#""\u00fc\ud83d\ude00\n\"\\\/""#) == .string("ü\u{1F600}\n\"\\/"))
        #expect(try JSON.parse("\"ü\"") == .string("ü"))
        #expect(try JSON.parse(#"{"a": 1, "a": 2}"#)["a"] == .number("1"))
    }

    @Test func syntaxErrors() {
        for bad in ["[1,]", "{\"a\" 1}", "01", "1.", "-", "1e", "tru", "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\nb\"", "[", "nul",
                    String(repeating: "[", count: 100) + String(repeating: "]", count: 100)] {
            #expect(throws: JSON.ParseError.self, "\(bad)") { try JSON.parse(bad) }
        }
        #expect(throws: JSON.ParseError.self) { try JSON.parse([0x22, 0xFF, 0x22]) }
    }

    @Test func errorPositions() {
        let error = #expect(throws: JSON.ParseError.self) { try JSON.parse("{\"Version\": \"2012-10-17\",\n  \"Statement\": [}") }
        #expect(error == JSON.ParseError(reason: "expected a value, found '}'", offset: 42, line: 2, column: 17))
        #expect(error?.description == "line 2, column 17: expected a value, found '}'")
    }

    @Test func quoting() throws {
        #expect(JSON.quote("a\"b\\c\n\u{1}é") == #""a\"b\\c\n\u0001é""#)
        #expect(JSON.quote("é\u{1F600}", asciiOnly: true) == #""\u00e9\ud83d\ude00""#)
        for text in ["", "plain", "a\"b\\c\n\u{1}é\u{1F600}\t\u{7F}"] {
            #expect(try JSON.parse(JSON.quote(text)) == .string(text))
            #expect(try JSON.parse(JSON.quote(text, asciiOnly: true)) == .string(text))
        }
    }
}
