import MySQLWire
import NIOCore

extension ByteBuffer {
    /// The header of the packet at `index` (any readable offset), nil if fewer than 4 bytes are
    /// there: the handlers walk a read buffer's packets without moving its reader index.
    @inlinable
    func getMySQLPacketHeader(at index: Int) -> MySQLPacketHeader? {
        guard let word = getInteger(at: index, endianness: .little, as: UInt32.self) else { return nil }
        return MySQLPacketHeader(length: Int(word & 0xFF_FFFF), sequenceID: UInt8(truncatingIfNeeded: word >> 24))
    }
}
