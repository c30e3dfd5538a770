import PostgresWire
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
}
