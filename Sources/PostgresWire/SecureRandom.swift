/// Bytes from the system CSPRNG (getrandom on Linux), drawn 8 at a time: salts, nonces and
/// cancel keys are made on every login, so one system call per 8 bytes instead of per byte.
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            var word = generator.next()
            for _ in 0..<min(8, count - out.count) {
                out.append(UInt8(truncatingIfNeeded: word))
                word >>= 8
            }
        }
        return out
    }
}
