import ConciergeFuzzTargets
import Foundation
import Testing

/// Replays the fuzz inputs through the fuzz targets without libFuzzer: every input under
/// Fuzz/regressions/<target>/ (crashes and hangs the fuzzer found, since fixed) and the seed
/// corpus Fuzz/corpus/<target>/. A target traps on a crash or a violated property, which fails
/// the test run; a hang shows as a test that does not finish.
@Suite struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(under folder: String) -> [(target: String, file: URL)] {
        let root = fuzzDirectory.appendingPathComponent(folder)
        let manager = FileManager.default
        var inputs: [(String, URL)] = []
        for target in ((try? manager.contentsOfDirectory(atPath: root.path)) ?? []).sorted() {
            let directory = root.appendingPathComponent(target)
            for name in ((try? manager.contentsOfDirectory(atPath: directory.path)) ?? []).sorted() where !name.hasPrefix(".") {
                inputs.append((target, directory.appendingPathComponent(name)))
            }
        }
        return inputs
    }

    @Test func everyFolderNamesATarget() {
        for folder in ["corpus", "regressions"] {
            for (target, file) in Self.inputs(under: folder) {
                #expect(FuzzTargets.target(named: target) != nil, "\(file.path): no fuzz target \(target)")
            }
        }
    }

    @Test func everyTargetHasASeedCorpus() {
        let seeded = Set(Self.inputs(under: "corpus").map(\.target))
        for (name, _) in FuzzTargets.all {
            #expect(seeded.contains(name), "no seeds in Fuzz/corpus/\(name)")
        }
    }

    @Test(arguments: inputs(under: "regressions").map { "\($0.target)/\($0.file.lastPathComponent)" })
    func regression(_ input: String) throws {
        try Self.replay(folder: "regressions", input)
    }

    @Test func seedCorpus() throws {
        for (target, file) in Self.inputs(under: "corpus") {
            try Self.replay(folder: "corpus", "\(target)/\(file.lastPathComponent)")
        }
    }

    static func replay(folder: String, _ input: String) throws {
        let file = fuzzDirectory.appendingPathComponent(folder).appendingPathComponent(input)
        let target = String(input.split(separator: "/")[0])
        guard let run = FuzzTargets.target(named: target) else {
            Issue.record("no fuzz target \(target)")
            return
        }
        run(Array(try Data(contentsOf: file)))
    }
}
