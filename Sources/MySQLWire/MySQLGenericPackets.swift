import NIOCore

/// One entry of an OK packet's session-state information (CLIENT_SESSION_TRACK): what the
/// server itself reports a statement changed, so the proxy can record a client's session state
/// exactly (the value as the server normalised it) and restore it on another backend.
public enum MySQLSessionStateChange: Sendable, Hashable {
    /// SESSION_TRACK_SYSTEM_VARIABLES: a tracked system variable and its new value.
    case systemVariable(name: String, value: String)
    /// SESSION_TRACK_SCHEMA: the new default schema (`USE db`, COM_INIT_DB).
    case schema(String)
    /// SESSION_TRACK_STATE_CHANGE: some session state changed (user variables, temporary
    /// tables, prepared statements, ...) — the signal that the session may not be reusable.
    case stateChanged(Bool)
    /// SESSION_TRACK_GTIDS: the tracker's data as sent (encoding-specification byte, then the
    /// length-encoded GTID set).
    case gtids([UInt8])
    /// SESSION_TRACK_TRANSACTION_CHARACTERISTICS: the statements that would recreate the
    /// transaction's characteristics.
    case transactionCharacteristics(String)
    /// SESSION_TRACK_TRANSACTION_STATE: the 8-character transaction state summary.
    case transactionState(String)
    /// A tracker type this module does not know, kept so it can be forwarded unchanged.
    case unknown(type: UInt8, data: [UInt8])

    /// The tracker type bytes.
    public enum TrackerType {
        /// SESSION_TRACK_SYSTEM_VARIABLES.
        public static let systemVariables: UInt8 = 0
        /// SESSION_TRACK_SCHEMA.
        public static let schema: UInt8 = 1
        /// SESSION_TRACK_STATE_CHANGE.
        public static let stateChange: UInt8 = 2
        /// SESSION_TRACK_GTIDS.
        public static let gtids: UInt8 = 3
        /// SESSION_TRACK_TRANSACTION_CHARACTERISTICS.
        public static let transactionCharacteristics: UInt8 = 4
        /// SESSION_TRACK_TRANSACTION_STATE (MariaDB: SESSION_TRACK_TRANSACTION_TYPE).
        public static let transactionState: UInt8 = 5
    }

    /// Parses a session-state information block (the bytes inside its length prefix) into
    /// changes, in order. A system-variables entry holding several name/value pairs gives one
    /// change per pair.
    public static func parse(block: ByteBuffer) throws(MySQLWireError) -> [MySQLSessionStateChange] {
        var block = block
        var changes: [MySQLSessionStateChange] = []
        while block.readableBytes > 0 {
            guard let type = block.readInteger(as: UInt8.self), var data = block.readMySQLLengthEncodedSlice() else {
                throw .malformed("truncated session state information")
            }
            switch type {
            case TrackerType.systemVariables:
                while data.readableBytes > 0 {
                    guard let name = data.readMySQLLengthEncodedString(), let value = data.readMySQLLengthEncodedString() else {
                        throw .malformed("truncated session system variable")
                    }
                    changes.append(.systemVariable(name: name, value: value))
                }
            case TrackerType.schema:
                guard let schema = data.readMySQLLengthEncodedString() else { throw .malformed("truncated session schema") }
                changes.append(.schema(schema))
            case TrackerType.stateChange:
                // The data is the character itself, not a length-encoded string (MySQL and
                // MariaDB both send 02 01 31).
                guard let flag = data.readableBytesView.last else { throw .malformed("empty session state change") }
                changes.append(.stateChanged(flag == UInt8(ascii: "1")))
            case TrackerType.gtids:
                changes.append(.gtids(Array(data.readableBytesView)))
            case TrackerType.transactionCharacteristics:
                guard let text = data.readMySQLLengthEncodedString() else {
                    throw .malformed("truncated transaction characteristics")
                }
                changes.append(.transactionCharacteristics(text))
            case TrackerType.transactionState:
                guard let text = data.readMySQLLengthEncodedString() else { throw .malformed("truncated transaction state") }
                changes.append(.transactionState(text))
            default:
                changes.append(.unknown(type: type, data: Array(data.readableBytesView)))
            }
        }
        return changes
    }

    /// Writes this change as one entry (type byte, length-encoded data).
    public func encode(into buffer: inout ByteBuffer) {
        var data = ByteBuffer()
        let type: UInt8
        switch self {
        case .systemVariable(let name, let value):
            type = TrackerType.systemVariables
            data.writeMySQLLengthEncodedString(name)
            data.writeMySQLLengthEncodedString(value)
        case .schema(let schema):
            type = TrackerType.schema
            data.writeMySQLLengthEncodedString(schema)
        case .stateChanged(let changed):
            type = TrackerType.stateChange
            data.writeInteger(changed ? UInt8(ascii: "1") : UInt8(ascii: "0"))
        case .gtids(let bytes):
            type = TrackerType.gtids
            data.writeBytes(bytes)
        case .transactionCharacteristics(let text):
            type = TrackerType.transactionCharacteristics
            data.writeMySQLLengthEncodedString(text)
        case .transactionState(let text):
            type = TrackerType.transactionState
            data.writeMySQLLengthEncodedString(text)
        case .unknown(let unknownType, let bytes):
            type = unknownType
            data.writeBytes(bytes)
        }
        buffer.writeInteger(type)
        buffer.writeMySQLLengthEncodedInteger(UInt64(data.readableBytes))
        buffer.writeBuffer(&data)
    }
}

/// A command's success (Protocol::OK_Packet): rows affected, last insert id, the status flags
/// that decide whether a backend can go back to the pool, and the session-state changes.
public struct MySQLOKPacket: Sendable, Hashable {
    /// Rows changed (or matched, with CLIENT_FOUND_ROWS).
    public var affectedRows: UInt64
    /// The AUTO_INCREMENT value of the last insert.
    public var lastInsertID: UInt64
    /// The server status after the command.
    public var status: MySQLServerStatus
    /// The number of warnings the command raised.
    public var warnings: UInt16
    /// Human-readable information (`Rows matched: 1  Changed: 1  Warnings: 0`), often empty.
    public var info: String
    /// The session-state changes, when the peer negotiated CLIENT_SESSION_TRACK and the status
    /// says SERVER_SESSION_STATE_CHANGED.
    public var sessionStateChanges: [MySQLSessionStateChange]

    /// Creates an OK packet to send.
    public init(
        affectedRows: UInt64 = 0,
        lastInsertID: UInt64 = 0,
        status: MySQLServerStatus,
        warnings: UInt16 = 0,
        info: String = "",
        sessionStateChanges: [MySQLSessionStateChange] = []
    ) {
        self.affectedRows = affectedRows
        self.lastInsertID = lastInsertID
        self.status = status
        self.warnings = warnings
        self.info = info
        self.sessionStateChanges = sessionStateChanges
    }

    /// Whether a payload is an OK packet where a command's response starts: first byte 0x00.
    /// (An OK with 0xFE ends a result set under DEPRECATE_EOF; ``MySQLResponseTracker`` tells.)
    public static func isOK(payload: ByteBuffer) -> Bool {
        payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0x00
    }

    /// Parses an OK packet: header 0x00, or 0xFE for the OK that replaces EOF under
    /// DEPRECATE_EOF (both are accepted; the caller knows where it is). `capabilities` are the
    /// ones negotiated on this connection: they decide whether status, warnings and session
    /// state are present.
    public init(parsing payload: ByteBuffer, capabilities: MySQLCapabilities) throws(MySQLWireError) {
        var buffer = payload
        guard let header = buffer.readInteger(as: UInt8.self), header == 0x00 || header == 0xFE else {
            throw .malformed("OK packet without 0x00 or 0xFE")
        }
        guard let affectedRows = buffer.readMySQLLengthEncodedInteger(),
              let lastInsertID = buffer.readMySQLLengthEncodedInteger()
        else { throw .malformed("truncated OK packet") }
        self.affectedRows = affectedRows
        self.lastInsertID = lastInsertID
        self.status = []
        self.warnings = 0
        if capabilities.contains(.protocol41) {
            guard let status = buffer.readInteger(endianness: .little, as: UInt16.self),
                  let warnings = buffer.readInteger(endianness: .little, as: UInt16.self)
            else { throw .malformed("truncated OK packet") }
            self.status = MySQLServerStatus(rawValue: status)
            self.warnings = warnings
        } else if capabilities.contains(.transactions) {
            guard let status = buffer.readInteger(endianness: .little, as: UInt16.self) else {
                throw .malformed("truncated OK packet")
            }
            self.status = MySQLServerStatus(rawValue: status)
        }
        self.info = ""
        self.sessionStateChanges = []
        if capabilities.contains(.sessionTrack) {
            // The info string is omitted altogether when empty and no state follows.
            if buffer.readableBytes > 0 {
                guard let info = buffer.readMySQLLengthEncodedString() else { throw .malformed("truncated OK info") }
                self.info = info
            }
            if self.status.contains(.sessionStateChanged), buffer.readableBytes > 0 {
                guard let block = buffer.readMySQLLengthEncodedSlice() else {
                    throw .malformed("truncated session state information")
                }
                self.sessionStateChanges = try MySQLSessionStateChange.parse(block: block)
            }
        } else {
            self.info = buffer.readString(length: buffer.readableBytes)!
        }
    }

    /// Writes the payload for a peer with `capabilities`. Session-state information is written
    /// only when the peer has CLIENT_SESSION_TRACK and there are changes, and
    /// SERVER_SESSION_STATE_CHANGED is set exactly then: a client that did not ask for tracking
    /// gets a plain OK. `asEOFReplacement` writes the 0xFE header that ends a result set under
    /// DEPRECATE_EOF.
    public func encode(into buffer: inout ByteBuffer, capabilities: MySQLCapabilities, asEOFReplacement: Bool = false) {
        let withState = capabilities.contains(.sessionTrack) && !self.sessionStateChanges.isEmpty
        var status = self.status
        if withState {
            status.insert(.sessionStateChanged)
        } else {
            status.remove(.sessionStateChanged)
        }
        buffer.writeInteger(asEOFReplacement ? UInt8(0xFE) : 0x00)
        buffer.writeMySQLLengthEncodedInteger(self.affectedRows)
        buffer.writeMySQLLengthEncodedInteger(self.lastInsertID)
        if capabilities.contains(.protocol41) {
            buffer.writeInteger(status.rawValue, endianness: .little)
            buffer.writeInteger(self.warnings, endianness: .little)
        } else if capabilities.contains(.transactions) {
            buffer.writeInteger(status.rawValue, endianness: .little)
        }
        if capabilities.contains(.sessionTrack) {
            if withState || !self.info.isEmpty {
                buffer.writeMySQLLengthEncodedString(self.info)
            }
            if withState {
                var block = ByteBuffer()
                for change in self.sessionStateChanges {
                    change.encode(into: &block)
                }
                buffer.writeMySQLLengthEncodedInteger(UInt64(block.readableBytes))
                buffer.writeBuffer(&block)
            }
        } else {
            buffer.writeString(self.info)
        }
    }
}

/// A command's failure (Protocol::ERR_Packet): the error code, SQLSTATE and message a client
/// shows (`ERROR 1045 (28000): Access denied ...`). Also an `Error`, so the proxy can throw what
/// it will send.
public struct MySQLErrPacket: Sendable, Hashable, Error, CustomStringConvertible {
    /// The server error code (1045 access denied, 1040 too many connections, 9501 RDS Proxy's
    /// borrow timeout, ...).
    public var code: UInt16
    /// The 5-character SQLSTATE ("HY000" when the server sent none).
    public var sqlState: String
    /// The message.
    public var message: String

    /// Creates an ERR packet to send.
    public init(code: UInt16, sqlState: String = "HY000", message: String) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
    }

    /// Whether a payload is an ERR packet (first byte 0xFF).
    public static func isErr(payload: ByteBuffer) -> Bool {
        payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0xFF
    }

    /// MariaDB progress reports travel as ERR packets with code 0xFFFF and do not end a command:
    /// a client that asked for them (MARIADB_CLIENT_PROGRESS) must not take them for errors.
    public var isProgressReport: Bool { self.code == 0xFFFF }

    /// Parses the payload. The SQLSTATE marker `#` is optional (servers omit it before the
    /// handshake completes); a progress report keeps its raw data as the message.
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        var buffer = payload
        guard buffer.readInteger(as: UInt8.self) == 0xFF else { throw .malformed("ERR packet without 0xFF") }
        guard let code = buffer.readInteger(endianness: .little, as: UInt16.self) else { throw .malformed("truncated ERR packet") }
        self.code = code
        if code != 0xFFFF, buffer.readableBytes >= 6, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == UInt8(ascii: "#") {
            buffer.moveReaderIndex(forwardBy: 1)
            self.sqlState = buffer.readString(length: 5)!
        } else {
            self.sqlState = code == 0xFFFF ? "" : "HY000"
        }
        self.message = buffer.readString(length: buffer.readableBytes)!
    }

    /// Writes the payload; with CLIENT_PROTOCOL_41 the SQLSTATE follows a `#` (padded or cut to
    /// 5 characters, which clients require).
    public func encode(into buffer: inout ByteBuffer, capabilities: MySQLCapabilities = .protocol41) {
        buffer.writeInteger(UInt8(0xFF))
        buffer.writeInteger(self.code, endianness: .little)
        if capabilities.contains(.protocol41) {
            buffer.writeInteger(UInt8(ascii: "#"))
            var state = Array(self.sqlState.utf8.prefix(5))
            while state.count < 5 { state.append(UInt8(ascii: "0")) }
            buffer.writeBytes(state)
        }
        buffer.writeString(self.message)
    }

    /// The way the `mysql` client prints it: `ERROR 1045 (28000): Access denied ...`.
    public var description: String {
        "ERROR \(self.code) (\(self.sqlState)): \(self.message)"
    }
}

/// The end of column definitions or rows without DEPRECATE_EOF (Protocol::EOF_Packet): warnings
/// and the status flags, which say whether more results follow or a cursor opened.
public struct MySQLEOFPacket: Sendable, Hashable {
    /// The number of warnings.
    public var warnings: UInt16
    /// The server status.
    public var status: MySQLServerStatus

    /// Creates an EOF packet to send.
    public init(warnings: UInt16 = 0, status: MySQLServerStatus) {
        self.warnings = warnings
        self.status = status
    }

    /// Whether a payload is an EOF packet: 0xFE and shorter than 9 bytes (a text row can start
    /// with 0xFE only when its first field needs a 9-byte length). Under DEPRECATE_EOF no EOF is
    /// ever sent, and a short 0xFE OK (7 or 8 bytes) passes this test too: parse it as an OK.
    public static func isEOF(payload: ByteBuffer) -> Bool {
        payload.readableBytes < 9 && payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0xFE
    }

    /// Parses the payload (a pre-4.1 EOF of 1 byte has neither warnings nor status).
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        guard Self.isEOF(payload: payload) else { throw .malformed("not an EOF packet") }
        var buffer = payload
        buffer.moveReaderIndex(forwardBy: 1)
        self.warnings = buffer.readInteger(endianness: .little, as: UInt16.self) ?? 0
        self.status = MySQLServerStatus(rawValue: buffer.readInteger(endianness: .little, as: UInt16.self) ?? 0)
    }

    /// Writes the 5-byte payload.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0xFE))
        buffer.writeInteger(self.warnings, endianness: .little)
        buffer.writeInteger(self.status.rawValue, endianness: .little)
    }
}
