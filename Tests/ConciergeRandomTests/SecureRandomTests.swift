import ConciergeRandom
import Testing

@Suite struct SecureRandomPoolTests {
    @Test func drawsTheRequestedCountAcrossPoolRefills() {
        for count in [0, 1, 4, 8, 32, 255, 256, 257, 1000] {
            #expect(SecureRandom.bytes(count).count == count)
        }
    }

    @Test func drawsDoNotRepeat() {
        // 64 draws of 32 bytes span several refills of the 256-byte pool; a repeated or zeroed
        // draw would mean a byte was handed out twice or a refill was missed.
        var seen = Set<[UInt8]>()
        for _ in 0..<64 {
            let draw = SecureRandom.bytes(32)
            #expect(draw != [UInt8](repeating: 0, count: 32))
            #expect(seen.insert(draw).inserted)
        }
        #expect(SecureRandom.uint64() != SecureRandom.uint64())
    }

    /// The pool refills 256 bytes with one system call. It used to make one per 8 bytes (128 for
    /// these 1,024 bytes; 1.5 per md5 login). Other tests draw concurrently: the bound has slack.
    @Test func oneSystemCallPerTwoHundredFiftySixBytes() {
        let before = SecureRandom.systemCalls
        for _ in 0..<128 { _ = SecureRandom.bytes(8) }
        let calls = SecureRandom.systemCalls - before
        #expect(calls >= 4)
        #expect(calls <= 16)
    }
}
