import Synchronization

/// Bytes from the system CSPRNG (getrandom on Linux). Salts, nonces and cancel keys are made on
/// every login, so the bytes are drawn 256 at a time into a buffer that hands each out once:
/// one system call per 256 bytes instead of one or two per login (as arc4random does).
public enum SecureRandom {
    private static let pool = Mutex(Pool())

    private struct Pool: ~Copyable {
        var bytes = [UInt8](repeating: 0, count: 256)
        var used = 256

        mutating func take(_ count: Int, into out: inout [UInt8]) {
            var generator = SystemRandomNumberGenerator()
            while out.count < count {
                if used == bytes.count {
                    for index in stride(from: 0, to: bytes.count, by: 8) {
                        var word = generator.next()
                        for offset in 0..<8 {
                            bytes[index + offset] = UInt8(truncatingIfNeeded: word)
                            word >>= 8
                        }
                    }
                    used = 0
                }
                let n = min(count - out.count, bytes.count - used)
                out.append(contentsOf: bytes[used..<(used + n)])
                // Each byte goes out once: wipe it.
                for index in used..<(used + n) { bytes[index] = 0 }
                used += n
            }
        }
    }

    public static func bytes(_ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        pool.withLock { $0.take(count, into: &out) }
        return out
    }

    /// A random 64-bit value from the same pool.
    public static func uint64() -> UInt64 {
        bytes(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }
}
