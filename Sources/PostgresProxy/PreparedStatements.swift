import ConnectionPool
import NIOCore
import PostgresWire

/// Protocol-level named prepared statements in transaction mode, without pinning.
///
/// A client's statement names are its own: the session's `StatementCatalogue` maps each to its
/// text and parameter types. A backend knows statements by a name derived from that text
/// (`BackendStatementCache`), so every client preparing the same query shares one server-side
/// statement per backend. Before a Bind or Describe reaches a backend that lacks the statement, the
/// session prepares it there in the same round trip and drops the ParseComplete that answers it;
/// a Parse for a statement the backend already has, and a Close of a statement, are answered by
/// the proxy (ParseComplete, CloseComplete) at the place in the response stream where PostgreSQL
/// would have answered them. `PendingResponse` is that ordering: one entry per message sent to the
/// backend (or answered locally), consumed as the backend's responses arrive.

/// The statements a backend holds, by key, least recently used first out. Touched only by the
/// session the backend is leased to (and by the backend itself at lease time, when no session
/// touches it).
public struct BackendStatementCache {
    /// How many statements a backend keeps; beyond it, the least recently used are deallocated
    /// when the backend is next leased (PgBouncer's `max_prepared_statements` is 200).
    public static let capacity = 256

    private struct Entry {
        var serverName: String
        var lastUse: UInt64
        /// When it was last parsed on the backend (`StatementEpoch`).
        var parsedAt: UInt64
        /// Its row type (`ResultShape`), once the Describe sent after its Parse is answered.
        var shape: Int?
    }

    private var entries: [String: Entry] = [:]
    private var clock: UInt64 = 0
    private var generation = 0
    /// Server-side names to deallocate at the next lease (evicted or invalidated ones).
    public private(set) var stale: [String] = []

    public init() {}

    public var count: Int { entries.count }

    /// The server-side name of `key`, marking it used; nil if the backend lacks it, or has only
    /// a copy parsed before `since`.
    public mutating func use(_ key: String, since: UInt64 = 0) -> String? {
        guard let entry = entries[key], entry.parsedAt >= since else { return nil }
        clock &+= 1
        let now = clock
        entries.modifyValue(forKey: key) { $0.lastUse = now }
        return entry.serverName
    }

    /// The backend's copy of `key` if it may serve a client that defined it at `since`: when it
    /// was parsed and its row type (nil while its Describe is unanswered). Does not mark it used.
    public func copy(_ key: String, since: UInt64) -> (parsedAt: UInt64, shape: Int?)? {
        guard let entry = entries[key], entry.parsedAt >= since else { return nil }
        return (entry.parsedAt, entry.shape)
    }

    /// The row type of the backend's copy of `key`, when known.
    public func shape(of key: String) -> Int? {
        entries[key]?.shape
    }

    /// The Describe after the Parse of `serverName` at `parsedAt` was answered with this row type.
    public mutating func record(shape: Int, key: String, serverName: String, parsedAt: UInt64) {
        guard let entry = entries[key], entry.serverName == serverName, entry.parsedAt == parsedAt else { return }
        entries.modifyValue(forKey: key) { $0.shape = shape }
    }

    /// Records that `key` is being (re)prepared on the backend, at `parsedAt`; returns its
    /// server-side name (the existing one when it is parsed again).
    public mutating func parse(_ key: String, at parsedAt: UInt64) -> String {
        clock &+= 1
        let now = clock
        if let serverName = entries.modifyValueIfPresent(forKey: key, { entry in
            entry.lastUse = now
            entry.parsedAt = parsedAt
            entry.shape = nil
            return entry.serverName
        }) {
            return serverName
        }
        // A key whose statement was invalidated gets a fresh name: the old one is deallocated later.
        let name = generation == 0 ? key : key + "_" + String(generation)
        entries[key] = Entry(serverName: name, lastUse: clock, parsedAt: parsedAt)
        return name
    }

    /// A statement of the proxy's own (the placeholder) to deallocate at the next lease.
    public mutating func discardLater(_ serverName: String) {
        if !stale.contains(serverName) { stale.append(serverName) }
    }

    /// The Parse that prepared `key` failed or was skipped: the backend does not have it.
    public mutating func forget(_ key: String, serverName: String) {
        if entries[key]?.serverName == serverName { entries[key] = nil }
    }

    /// The server-side plan of `serverName` is unusable (`cached plan must not change result
    /// type`): the next use prepares it again under a new name.
    public mutating func invalidate(serverName: String) {
        guard let key = entries.first(where: { $0.value.serverName == serverName })?.key else { return }
        invalidate(key: key)
    }

    /// As `invalidate(serverName:)`, by key.
    public mutating func invalidate(key: String) {
        guard let serverName = entries[key]?.serverName else { return }
        entries[key] = nil
        stale.append(serverName)
        generation += 1
    }

    /// A statement that may deallocate any of them (`DEALLOCATE ALL`, `DISCARD ALL`, a
    /// `DEALLOCATE` of one of the proxy's names) is on its way to the server. Whether it succeeds
    /// or not, nothing known is used again: the next use prepares afresh under a new name, and
    /// the old names are closed at the next lease (a Close of a name that no longer exists is
    /// not an error), so no Parse can collide with a statement the server still has.
    public mutating func invalidateAll() {
        guard !entries.isEmpty else { return }
        for entry in entries.values { stale.append(entry.serverName) }
        entries.removeAll()
        generation += 1
    }

    /// At lease time: moves the least recently used statements beyond `capacity` to `stale` and
    /// returns (and clears) everything to deallocate.
    public mutating func takeStale() -> [String] {
        if entries.count > Self.capacity {
            let victims = entries.sorted { $0.value.lastUse < $1.value.lastUse }.prefix(entries.count - Self.capacity)
            for (key, entry) in victims {
                entries[key] = nil
                stale.append(entry.serverName)
            }
        }
        defer { stale.removeAll() }
        return stale
    }
}

public enum StatementMessages {
    /// `text` (a client's SQL, without its NUL) with the bytes at `range` (the statement name of
    /// an `EXECUTE name`) replaced by the backend's name for that statement, quoted. Bytes, not a
    /// String: the text is in the client's encoding, not necessarily UTF-8. Nil when `range`
    /// lies outside `text`.
    public static func executeText(_ text: ByteBuffer, naming range: Range<Int>, as serverName: String) -> ByteBuffer? {
        guard range.lowerBound >= 0, range.upperBound <= text.readableBytes,
              let before = text.getSlice(at: text.readerIndex, length: range.lowerBound),
              let after = text.getSlice(at: text.readerIndex + range.upperBound, length: text.readableBytes - range.upperBound)
        else { return nil }
        let quoted = ParameterSync.quoteIdentifier(serverName)
        var out = ByteBuffer()
        out.reserveCapacity(before.readableBytes + quoted.utf8.count + after.readableBytes + 1)
        out.writeImmutableBuffer(before)
        out.writeString(quoted)
        out.writeImmutableBuffer(after)
        return out
    }

    /// Parse of `name` with a definition (query, NUL, parameter types) taken from a client's Parse.
    public static func parse(name: String, definition: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 6 + name.utf8.count + definition.readableBytes)
        out.writeInteger(PGMessageType.Frontend.parse)
        out.writeInteger(Int32(4 + name.utf8.count + 1 + definition.readableBytes))
        out.writeString(name)
        out.writeInteger(UInt8(0))
        var definition = definition
        out.writeBuffer(&definition)
        return out
    }

    /// Bind with its statement name replaced: `portal`, then `rest` (formats, values, result formats).
    public static func bind(portal: ByteBuffer, statement: String, rest: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 7 + portal.readableBytes + statement.utf8.count + rest.readableBytes)
        out.writeInteger(PGMessageType.Frontend.bind)
        out.writeInteger(Int32(4 + portal.readableBytes + 1 + statement.utf8.count + 1 + rest.readableBytes))
        var portal = portal
        out.writeBuffer(&portal)
        out.writeInteger(UInt8(0))
        out.writeString(statement)
        out.writeInteger(UInt8(0))
        var rest = rest
        out.writeBuffer(&rest)
        return out
    }

    /// Describe of statement `name`.
    public static func describeStatement(_ name: String, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 7 + name.utf8.count)
        out.writeInteger(PGMessageType.Frontend.describe)
        out.writeInteger(Int32(4 + 1 + name.utf8.count + 1))
        out.writeInteger(UInt8(ascii: "S"))
        out.writeString(name)
        out.writeInteger(UInt8(0))
        return out
    }

    /// Close of statement `name` (a Close of a name that does not exist is not an error).
    public static func closeStatement(_ name: String, into out: inout ByteBuffer) {
        out.writeInteger(PGMessageType.Frontend.close)
        out.writeInteger(Int32(4 + 1 + name.utf8.count + 1))
        out.writeInteger(UInt8(ascii: "S"))
        out.writeString(name)
        out.writeInteger(UInt8(0))
    }

    /// The placeholder statement (see `PendingResponse.injectedPlaceholder`): a name of the
    /// proxy's form (`concierge_` and hex digits, which errors shown to clients never contain)
    /// that no statement key takes in practice, and a transaction-exit text, which PostgreSQL
    /// parses even in a failed transaction.
    public static let placeholderName = "concierge_0"
    public static let placeholderDefinition: ByteBuffer = {
        var out = ByteBuffer()
        out.writeString("ROLLBACK")
        out.writeInteger(UInt8(0))
        out.writeInteger(Int16(0))
        return out
    }()

    /// A Bind or Describe sent for this name fails (`PendingResponse.changedResultType`): no
    /// statement has it (the proxy's names are `concierge_` and hex digits).
    public static let missingName = "concierge_none"

    public static let flush: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "H"), 0, 0, 0, 4])
    public static let sync: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "S"), 0, 0, 0, 4])

    /// PostgreSQL's error for a prepared statement whose row type changed, with its source
    /// fields: drivers recognise it by them (asyncpg raises `InvalidCachedStatementError`, and
    /// re-prepares, when the routine is `RevalidateCachedQuery`; the message may be localised).
    /// The line is PostgreSQL 15's.
    public static let changedResultTypeError: ByteBuffer = {
        var out = ByteBuffer()
        PGEncode.errorResponse(PGErrorFields(
            severity: "ERROR", code: "0A000", message: "cached plan must not change result type",
            source: ("plancache.c", "722", "RevalidateCachedQuery")), into: &out)
        return out
    }()

    public static let parseComplete: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "1"), 0, 0, 0, 4])
    public static let closeComplete: ByteBuffer = ByteBuffer(bytes: [UInt8(ascii: "3"), 0, 0, 0, 4])
}

/// A statement's row type, as a hash of what PostgreSQL compares when it decides that a cached
/// plan changed its result type (the columns' names, types, lengths and type modifiers; not the
/// table and column a value comes from). NoData is `noRows`.
public enum ResultShape {
    public static let noRows = 0

    /// The shape of a RowDescription's body (after the message header); nil if malformed.
    public static func of(rowDescription body: ByteBuffer) -> Int? {
        var body = body
        guard let count = body.readInteger(as: Int16.self), count >= 0 else { return nil }
        var hasher = Hasher()
        hasher.combine(count)
        for _ in 0..<count {
            guard let name = body.pgReadCStringSlice() else { return nil }
            name.withUnsafeReadableBytes { hasher.combine(bytes: $0) }
            hasher.combine(UInt8(0))
            // Table OID (4) and column number (2) are where values come from, not their type.
            guard body.readSlice(length: 6) != nil,
                  let type = body.readInteger(as: UInt32.self),
                  let length = body.readInteger(as: Int16.self),
                  let modifier = body.readInteger(as: Int32.self),
                  body.readInteger(as: Int16.self) != nil
            else { return nil }
            hasher.combine(type)
            hasher.combine(length)
            hasher.combine(modifier)
        }
        let shape = hasher.finalize()
        return shape == noRows ? 1 : shape
    }
}
