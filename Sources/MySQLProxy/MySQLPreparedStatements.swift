import MySQLWire
import NIOCore

/// What identifies a binary-protocol prepared statement on any backend: its SQL (the exact bytes
/// the client sent) and the schema current when the client prepared it, which is where the
/// server resolves its unqualified tables.
public struct MySQLStatementKey: Sendable, Hashable {
    public var schema: String?
    public var sql: [UInt8]

    public init(schema: String?, sql: [UInt8]) {
        self.schema = schema
        self.sql = sql
    }
}

/// A statement a client prepared through the proxy, under the id the proxy gave it. The client
/// never sees a backend's ids: each backend that runs the statement prepares it when a lease
/// first needs it there (`MySQLBackendStatementCache`), so statements never pin.
public struct MySQLClientStatement: Sendable {
    public var key: MySQLStatementKey
    public var parameterCount: Int
    /// The parameter types the client last sent (2 bytes a parameter, as in COM_STMT_EXECUTE):
    /// a client sends them once and then executes with `new_params_bound_flag` 0, which a
    /// backend that never saw them (or saw another client's) cannot take as it is.
    public var types: [UInt8]?
    /// COM_STMT_SEND_LONG_DATA packets (headers included) held until the next execute, which
    /// may run on another backend than the one that would have taken them.
    public var longData: [ByteBuffer] = []
    /// Where this statement was last found: the cache (by its random id, not its address: a
    /// closed backend's cache is freed and a new one may get its address), its slot and the
    /// entry's serial, so that the next execute on the same backend skips hashing the SQL.
    var memo: (cache: UInt64, slot: Int, serial: UInt64)?

    public init(key: MySQLStatementKey, parameterCount: Int) {
        self.key = key
        self.parameterCount = parameterCount
    }
}

/// One backend connection's prepared statements, shared by every client whose lease finds them
/// there: bounded, least recently used closed first, so the proxy's backends together stay under
/// the server's `max_prepared_stmt_count`.
///
/// A reference type owned by its backend connection and used only by the session that holds
/// the lease (the pool's lease hand-off orders those uses): a value would be copied whole by
/// the first change of each lease.
public final class MySQLBackendStatementCache: @unchecked Sendable {
    public struct Entry: Sendable {
        public var key: MySQLStatementKey
        /// The backend's id for the statement.
        public var backendID: UInt32
        /// The parameter types last bound to it on this backend (nil: none yet).
        public var boundTypes: [UInt8]?
        var lastUse: UInt64
        var serial: UInt64
    }

    /// How many statements the backend may hold.
    public let capacity: Int
    /// Tells this cache from every other for the memos of client statements (random: caches are
    /// made on every event loop, so a shared counter would need a lock).
    let id = UInt64.random(in: 1...UInt64.max)
    /// The server's `max_prepared_stmt_count` (a client may not hold more through the proxy).
    public let serverLimit: Int
    public private(set) var slots: [Entry?] = []
    private var index: [MySQLStatementKey: Int] = [:]
    private var free: [Int] = []
    private var clock: UInt64 = 0
    private var serials: UInt64 = 0

    /// A cache for a backend of a server with these limits: a share of `max_prepared_stmt_count`
    /// per possible connection (`max_connections`), so that even a server whose every
    /// connection is the proxy's never reaches it; at least 1, at most 1,024.
    public init(maxPreparedStatements: Int?, maxConnections: Int?) {
        let limit = max(maxPreparedStatements ?? 16_382, 0)
        serverLimit = limit
        capacity = max(1, min(1_024, limit / max(maxConnections ?? 151, 1)))
    }

    public var count: Int { index.count }

    /// The slot holding `statement`'s key, found through its memo when it is still valid.
    public func find(_ statement: inout MySQLClientStatement) -> Int? {
        if let memo = statement.memo, memo.cache == id, memo.slot < slots.count,
           let entry = slots[memo.slot], entry.serial == memo.serial
        {
            touch(memo.slot)
            return memo.slot
        }
        guard let slot = index[statement.key], let entry = slots[slot] else { return nil }
        statement.memo = (id, slot, entry.serial)
        touch(slot)
        return slot
    }

    private func touch(_ slot: Int) {
        clock &+= 1
        slots[slot]!.lastUse = clock
    }

    /// Makes room for a statement about to be prepared under `key`: an entry of the same key (an
    /// older preparation) goes, and the least recently used one when the cache is full. Returns
    /// the backend ids to close (COM_STMT_CLOSE, sent before the prepare).
    public func makeRoom(for key: MySQLStatementKey) -> [UInt32] {
        var closed: [UInt32] = []
        if let slot = index[key] { closed.append(remove(slot)) }
        if index.count >= capacity, let victim = leastRecentlyUsed() { closed.append(remove(victim)) }
        return closed
    }

    /// Records a statement the backend just prepared.
    public func insert(_ key: MySQLStatementKey, backendID: UInt32) {
        if let old = index[key] { _ = remove(old) }
        serials &+= 1
        clock &+= 1
        let entry = Entry(key: key, backendID: backendID, boundTypes: nil, lastUse: clock, serial: serials)
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            slots[slot] = entry
        } else {
            slot = slots.count
            slots.append(entry)
        }
        index[key] = slot
    }

    /// Notes the parameter types now bound to the statement in `slot`.
    public func setBoundTypes(_ types: [UInt8]?, slot: Int) {
        slots[slot]?.boundTypes = types
    }

    private func remove(_ slot: Int) -> UInt32 {
        let entry = slots[slot]!
        slots[slot] = nil
        index[entry.key] = nil
        free.append(slot)
        return entry.backendID
    }

    private func leastRecentlyUsed() -> Int? {
        var best: Int?
        var bestUse = UInt64.max
        for (slot, entry) in slots.enumerated() {
            if let entry, entry.lastUse < bestUse {
                best = slot
                bestUse = entry.lastUse
            }
        }
        return best
    }
}

/// The binary-protocol packets the proxy rewrites: the statement id a client command names, the
/// parameter types an execute leaves out, the id a prepare's answer gives. Only the first bytes
/// of a packet are rewritten; the rest (the parameter values) is forwarded as a slice.
public enum MySQLStatementPackets {
    /// The offset of the statement id in a command packet (header and command byte first).
    static let idOffset = 5

    /// The client's statement id in a command packet (headers included), nil when too short.
    public static func statementID(inPacket bytes: ByteBuffer) -> UInt32? {
        bytes.getInteger(at: bytes.readerIndex + idOffset, endianness: .little, as: UInt32.self)
    }

    /// Appends the packet (headers included) with the statement id replaced to `writes`: a new
    /// 9-byte head, then the rest of the client's bytes as a slice (not copied).
    public static func appendWithStatementID(_ id: UInt32, _ bytes: ByteBuffer, to writes: inout MySQLWrites) {
        // Allocated at its size (`ByteBuffer()` and then `reserveCapacity` allocated twice).
        var head = ByteBufferAllocator().buffer(capacity: idOffset + 4)
        head.writeBytes(bytes.readableBytesView.prefix(idOffset))
        head.writeInteger(id, endianness: .little)
        writes.append(head)
        let restStart = bytes.readerIndex + idOffset + 4
        if let rest = bytes.getSlice(at: restStart, length: bytes.writerIndex - restStart), rest.readableBytes > 0 {
            writes.append(rest)
        }
    }

    /// Where an execute's `new_params_bound_flag` is, for `parameterCount` parameters
    /// (payload offset: command, id, flags, iteration count, then the NULL bitmap).
    static func boundFlagOffset(parameterCount: Int) -> Int { 10 + (parameterCount + 7) / 8 }

    /// The parameter types a COM_STMT_EXECUTE packet (headers included, one packet) carries,
    /// or nil when its `new_params_bound_flag` is 0 (or the packet is too short to say).
    public static func boundTypes(inExecute bytes: ByteBuffer, parameterCount: Int) -> ByteBufferView? {
        guard parameterCount > 0 else { return nil }
        let flag = bytes.readerIndex + 4 + boundFlagOffset(parameterCount: parameterCount)
        guard bytes.getInteger(at: flag, as: UInt8.self) == 1,
              let types = bytes.getSlice(at: flag + 1, length: 2 * parameterCount)
        else { return nil }
        return types.readableBytesView
    }

    /// Whether the execute sends no parameter types (`new_params_bound_flag` 0).
    public static func omitsTypes(_ bytes: ByteBuffer, parameterCount: Int) -> Bool {
        guard parameterCount > 0 else { return false }
        let flag = bytes.readerIndex + 4 + boundFlagOffset(parameterCount: parameterCount)
        return bytes.getInteger(at: flag, as: UInt8.self) == 0
    }

    /// An execute packet (headers included; one or more packets) rebuilt with the backend's id
    /// and `types` bound (the flag set to 1 and the types inserted before the values): for a
    /// backend whose statement has other types, or none, bound. Rare (the first execute of a
    /// statement on a backend), so the payload is copied and framed again.
    public static func execute(_ bytes: ByteBuffer, backendID: UInt32, insertingTypes types: [UInt8], parameterCount: Int) -> ByteBuffer {
        var payload = ByteBuffer()
        payload.reserveCapacity(bytes.readableBytes + types.count)
        var reader = bytes
        while let header = reader.peekMySQLPacketHeader() {
            reader.moveReaderIndex(forwardBy: 4)
            guard var part = reader.readSlice(length: min(header.length, reader.readableBytes)) else { break }
            payload.writeBuffer(&part)
        }
        let flagOffset = boundFlagOffset(parameterCount: parameterCount)
        var out = ByteBuffer()
        out.reserveCapacity(payload.readableBytes + types.count + 8)
        var rebuilt = ByteBuffer()
        rebuilt.reserveCapacity(payload.readableBytes + types.count)
        rebuilt.writeInteger(payload.getInteger(at: payload.readerIndex, as: UInt8.self) ?? MySQLCommand.stmtExecute.rawValue)
        rebuilt.writeInteger(backendID, endianness: .little)
        if let middle = payload.getSlice(at: payload.readerIndex + 5, length: max(0, flagOffset - 5)) {
            rebuilt.writeImmutableBuffer(middle)
        }
        rebuilt.writeInteger(UInt8(1))
        rebuilt.writeBytes(types)
        let valuesStart = payload.readerIndex + flagOffset + 1
        if valuesStart < payload.writerIndex, let values = payload.getSlice(at: valuesStart, length: payload.writerIndex - valuesStart) {
            rebuilt.writeImmutableBuffer(values)
        }
        out.writeMySQLPacket(sequenceID: 0, payload: rebuilt)
        return out
    }

    /// A COM_STMT_PREPARE packet for this SQL (split when 16 MB or more).
    public static func prepare(_ sql: [UInt8]) -> ByteBuffer {
        var payload = ByteBuffer()
        payload.reserveCapacity(sql.count + 1)
        payload.writeInteger(MySQLCommand.stmtPrepare.rawValue)
        payload.writeBytes(sql)
        var out = ByteBuffer()
        out.reserveCapacity(sql.count + 8)
        out.writeMySQLPacket(sequenceID: 0, payload: payload)
        return out
    }

    /// A command that names a statement and nothing else (COM_STMT_CLOSE, COM_STMT_RESET).
    public static func command(_ command: MySQLCommand, statementID: UInt32) -> ByteBuffer {
        var out = ByteBuffer()
        out.reserveCapacity(9)
        out.writeMySQLCommand(command, statementID: statementID)
        return out
    }

    /// The SQL of a COM_STMT_PREPARE packet (headers included; joined when it spans packets).
    public static func sql(ofPrepare bytes: ByteBuffer) -> [UInt8] {
        var sql: [UInt8] = []
        var reader = bytes
        var first = true
        while let header = reader.peekMySQLPacketHeader() {
            reader.moveReaderIndex(forwardBy: 4)
            guard var part = reader.readSlice(length: min(header.length, reader.readableBytes)) else { break }
            if first {
                part.moveReaderIndex(forwardBy: min(1, part.readableBytes))
                first = false
            }
            sql.append(contentsOf: part.readableBytesView)
        }
        return sql
    }

    /// A prepare's OK (payload): the statement id and its parameter count.
    public static func prepareOK(_ payload: ByteBuffer) -> (id: UInt32, parameters: Int)? {
        guard payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0x00,
              let id = payload.getInteger(at: payload.readerIndex + 1, endianness: .little, as: UInt32.self),
              let parameters = payload.getInteger(at: payload.readerIndex + 7, endianness: .little, as: UInt16.self)
        else { return nil }
        return (id, Int(parameters))
    }
}

/// The packets one action sends to the backend, in order. The first two are kept inline: a text
/// command is one packet, a statement command with the backend's id two (its new head and the
/// rest of the client's packet), so the actions of a transaction allocate no array.
public struct MySQLWrites: RandomAccessCollection, Sendable {
    private var first: ByteBuffer?
    private var second: ByteBuffer?
    private var more: [ByteBuffer] = []

    public init() {}

    public init(_ buffers: [ByteBuffer]) {
        for buffer in buffers { append(buffer) }
    }

    public mutating func append(_ buffer: ByteBuffer) {
        if first == nil {
            first = buffer
        } else if second == nil {
            second = buffer
        } else {
            more.append(buffer)
        }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { first == nil ? 0 : second == nil ? 1 : 2 + more.count }
    public var isEmpty: Bool { first == nil }

    public subscript(position: Int) -> ByteBuffer {
        switch position {
        case 0: first!
        case 1: second!
        default: more[position - 2]
        }
    }
}
