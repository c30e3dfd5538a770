import NIOCore

/// The receive-buffer sizes of client connections: SwiftNIO's adaptive rule (double the next
/// buffer after a read that filled it, halve it after two reads that used at most half), from 64
/// bytes to 64 KiB, starting at 128 bytes.
///
/// Why not `AdaptiveRecvByteBufferAllocator` itself: a channel keeps its receive allocator as an
/// existential, whose inline storage is three words. NIO's adaptive allocator (four `Int`s and a
/// `Bool`) does not fit, so every accepted channel boxed a copy on the heap, held for the life of
/// the connection: 64 bytes per idle client, and an allocation per login. This one is a single
/// word and is stored inline.
///
/// Why it starts at 128 bytes: SwiftNIO keeps the channel's first receive buffer for the life of
/// the connection and only ever grows it (`NIOPooledRecvBufferAllocator`), so the starting size is
/// what an idle client holds when it never sent more at once. A startup packet (user, database,
/// a few parameters) and an md5 or SCRAM message fit in 128 bytes; a client that sends more gets a
/// larger buffer at its next read, as before.
struct ClientReceiveAllocator: RecvByteBufferAllocator {
    static let minimum: UInt32 = 64
    static let maximum: UInt32 = 65_536
    static let initial: UInt32 = 128

    /// The next buffer's capacity: a power of two in `minimum...maximum`.
    private var next: UInt32 = Self.initial
    /// The last read used at most half of the buffer: one more such read halves it.
    private var decreaseNow = false

    init() {}

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(capacity: Int(next))
    }

    func nextBufferSize() -> Int? {
        Int(next)
    }

    /// As `AdaptiveRecvByteBufferAllocator.record`: true if the next buffer is larger.
    mutating func record(actualReadBytes: Int) -> Bool {
        let half = next >> 1
        if actualReadBytes <= Int(half), half >= Self.minimum {
            if decreaseNow {
                next = half
                decreaseNow = false
            } else {
                decreaseNow = true
            }
            return false
        }
        decreaseNow = false
        if actualReadBytes >= Int(next), next < Self.maximum {
            next <<= 1
            return true
        }
        return false
    }
}
