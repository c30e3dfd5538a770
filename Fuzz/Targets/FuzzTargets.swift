/// The fuzz targets: one function per parser of untrusted input, each taking the raw bytes of one
/// input. They must never crash, trap or hang on any input; where a target checks a property it
/// reports a violation with `FuzzCheck.fail`, which traps (libFuzzer then saves the input).
///
/// Used by the libFuzzer executable (Fuzz/ConciergeFuzz, built by scripts/fuzz.sh) and by the
/// unit tests in Tests/FuzzRegressionTests, which replay Fuzz/regressions and Fuzz/corpus
/// through the same functions without libFuzzer.
public enum FuzzTargets {
    /// A target: one input's bytes.
    public typealias Target = @Sendable ([UInt8]) -> Void

    /// Every target by name (the name of its folder under Fuzz/corpus and Fuzz/regressions).
    public static let all: [(name: String, run: Target)] = {
        var targets: [(String, Target)] = [
            ("startup", WireTargets.startup),
            ("frontend", WireTargets.frontend),
            ("scram", AuthTargets.scram),
            ("classify", SQLTargets.classify),
            ("redact", SQLTargets.redact),
            ("json", JSONTarget.json),
            ("config", ConfigTarget.config),
            ("iam_token", IAMTarget.iamToken),
        ]
        #if CONCIERGE_FUZZ_TESTABLE
        targets.append(("admin_http", AdminHTTPTarget.adminHTTP))
        #endif
        return targets.sorted { $0.0 < $1.0 }
    }()

    /// The target called `name`, nil when there is none.
    public static func target(named name: String) -> Target? {
        all.first { $0.name == name }?.run
    }
}

/// Property checks of the targets.
public enum FuzzCheck {
    /// A property does not hold: trap with `message` (libFuzzer saves the input as a crash).
    public static func fail(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) -> Never {
        fatalError("fuzz property violated: \(message())", file: file, line: line)
    }

    /// Traps unless `condition` holds.
    @inline(__always)
    public static func require(
        _ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line
    ) {
        if !condition { fail(message(), file: file, line: line) }
    }
}

/// Reads an input as a sequence of choices, for the structure-aware targets: past the end every
/// choice is 0, so any input is a valid program.
struct FuzzReader {
    let bytes: [UInt8]
    private(set) var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { index >= bytes.count }

    mutating func byte() -> UInt8 {
        guard index < bytes.count else { return 0 }
        defer { index += 1 }
        return bytes[index]
    }

    /// A choice in `0..<count`.
    mutating func choice(_ count: Int) -> Int { Int(byte()) % count }

    /// A length-prefixed run of at most `maximum` bytes.
    mutating func run(maximum: Int) -> [UInt8] {
        let length = min(Int(byte()) % (maximum + 1), bytes.count - min(index, bytes.count))
        defer { index += length }
        return Array(bytes[index..<(index + length)])
    }

    /// Everything not read yet.
    mutating func rest() -> [UInt8] {
        defer { index = bytes.count }
        return index < bytes.count ? Array(bytes[index...]) : []
    }
}

extension Array where Element == UInt8 {
    /// The number of (possibly overlapping) occurrences of `needle`.
    func occurrences(of needle: [UInt8]) -> Int {
        guard !needle.isEmpty, count >= needle.count else { return 0 }
        var found = 0
        for start in 0...(count - needle.count) where self[start] == needle[0] {
            if self[start..<(start + needle.count)].elementsEqual(needle) { found += 1 }
        }
        return found
    }

    func firstRange(of needle: [UInt8]) -> Range<Int>? {
        guard !needle.isEmpty, count >= needle.count else { return nil }
        for start in 0...(count - needle.count) where self[start] == needle[0] {
            if self[start..<(start + needle.count)].elementsEqual(needle) { return start..<(start + needle.count) }
        }
        return nil
    }
}
