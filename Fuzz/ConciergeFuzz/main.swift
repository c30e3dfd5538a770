// The libFuzzer executable (built by scripts/fuzz.sh with -sanitize=fuzzer,address): runs the
// target named by CONCIERGE_FUZZ_TARGET on each input; the arguments are libFuzzer's.
//
// SwiftPM links an executable with its module's entry point as `main`, so this is a main.swift
// that hands over to libFuzzer's driver (LLVMFuzzerRunDriver) rather than a library relying on
// libFuzzer's own main.
import CLibFuzzer
import ConciergeFuzzTargets

#if canImport(Glibc)
import Glibc
#endif

private func complain(_ message: String) {
    var message = message
    message.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// The target, read once, before the first input.
nonisolated(unsafe) private var selected: FuzzTargets.Target = { _ in }

let names = FuzzTargets.all.map(\.name).joined(separator: ", ")
guard let raw = getenv("CONCIERGE_FUZZ_TARGET") else {
    complain("ConciergeFuzz: set CONCIERGE_FUZZ_TARGET to one of: \(names)\n")
    exit(2)
}
let name = String(cString: raw)
guard let target = FuzzTargets.target(named: name) else {
    complain("ConciergeFuzz: no fuzz target \(name) (targets: \(names))\n")
    exit(2)
}
selected = target

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    selected(size == 0 || data == nil ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
})
