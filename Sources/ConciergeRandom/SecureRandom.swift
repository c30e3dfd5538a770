#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Bytes from the system CSPRNG. Salts, nonces and cancel keys are made on every login, so the
/// bytes are drawn 256 at a time (one `getentropy` call, i.e. one `getrandom` system call on
/// Linux) into a buffer that hands each out once, instead of a system call or two per login.
public enum SecureRandom {
    private static let pool = Mutex(Pool())

    private struct Pool: ~Copyable {
        var bytes = [UInt8](repeating: 0, count: 256)
        var used = 256
        var systemCalls = 0

        mutating func take(_ count: Int, into out: inout [UInt8]) {
            while out.count < count {
                if used == bytes.count {
                    systemCalls += bytes.withUnsafeMutableBytes { SecureRandom.fill($0) }
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

    /// Fills `buffer` (at most 256 bytes: getentropy's limit) from the system CSPRNG; should that
    /// call fail, from `SystemRandomNumberGenerator`, which reads the same source 8 bytes a call.
    /// Returns the number of system calls made.
    private static func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        if getentropy(buffer.baseAddress, buffer.count) == 0 { return 1 }
        var generator = SystemRandomNumberGenerator()
        for start in stride(from: 0, to: buffer.count, by: 8) {
            var word = generator.next()
            for index in start..<min(start + 8, buffer.count) {
                buffer[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
            }
        }
        return 1 + (buffer.count + 7) / 8
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

    /// The system calls made so far to refill the pool (one per 256 bytes).
    public static var systemCalls: Int { pool.withLock { $0.systemCalls } }
}
