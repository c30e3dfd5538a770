import NIOCore

/// Command packets the proxy writes itself (to a backend: the init query, state restoration,
/// pings, resets, closing statements) and the few fields it reads from clients' commands.
///
/// Every command starts a new sequence at id 0; the server's response continues at 1.
extension ByteBuffer {
    /// Writes a command packet whose argument is a string to the end of the packet: the SQL of
    /// COM_QUERY and COM_STMT_PREPARE, the schema of COM_INIT_DB, nothing for COM_PING,
    /// COM_QUIT, COM_RESET_CONNECTION, COM_STATISTICS.
    ///
    /// - Returns: The sequence id the server's response starts with (1, or more for a statement of
    ///   16 MB or more, which is split).
    @discardableResult
    public mutating func writeMySQLCommand(_ command: MySQLCommand, _ argument: String = "") -> UInt8 {
        let length = 1 + argument.utf8.count
        if length < MySQLPacketHeader.maxPacketPayload {
            return self.writeMySQLPacket(sequenceID: 0) { payload in
                payload.writeInteger(command.rawValue)
                payload.writeString(argument)
            }
        }
        var payload = ByteBuffer()
        payload.reserveCapacity(length)
        payload.writeInteger(command.rawValue)
        payload.writeString(argument)
        return self.writeMySQLPacket(sequenceID: 0, payload: payload)
    }

    /// Writes a command that names a prepared statement and nothing else: COM_STMT_CLOSE (which
    /// the proxy sends when it deallocates a client's statements before returning a backend) and
    /// COM_STMT_RESET.
    @discardableResult
    public mutating func writeMySQLCommand(_ command: MySQLCommand, statementID: UInt32) -> UInt8 {
        self.writeMySQLPacket(sequenceID: 0) { payload in
            payload.writeInteger(command.rawValue)
            payload.writeInteger(statementID, endianness: .little)
        }
    }
}

/// Reading the command a client sent, without copying its payload.
public enum MySQLCommandPacket {
    /// The command of a command packet's payload, nil for an empty payload or an unknown byte
    /// (which the proxy answers with an ERR, like the server's "Unknown command").
    public static func command(of payload: ByteBuffer) -> MySQLCommand? {
        payload.getInteger(at: payload.readerIndex, as: UInt8.self).flatMap(MySQLCommand.init(rawValue:))
    }

    /// The statement id that COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE,
    /// COM_STMT_RESET and COM_STMT_FETCH carry right after the command byte: what a proxy maps
    /// between the ids a client knows and a backend's. Nil for other commands or a short payload.
    public static func statementID(of payload: ByteBuffer) -> UInt32? {
        switch Self.command(of: payload) {
        case .stmtExecute, .stmtSendLongData, .stmtClose, .stmtReset, .stmtFetch, .stmtBulkExecute:
            return payload.getInteger(at: payload.readerIndex + 1, endianness: .little, as: UInt32.self)
        default:
            return nil
        }
    }

    /// Rewrites the statement id of such a command in place (the payload must be a command that
    /// ``statementID(of:)`` reads), so a proxy forwards the client's packet with the backend's id
    /// without re-encoding it. Returns false, changing nothing, otherwise.
    @discardableResult
    public static func setStatementID(_ id: UInt32, in payload: inout ByteBuffer) -> Bool {
        guard Self.statementID(of: payload) != nil else { return false }
        payload.setInteger(id, at: payload.readerIndex + 1, endianness: .little)
        return true
    }

    /// The text argument of COM_QUERY, COM_STMT_PREPARE, COM_INIT_DB (the SQL or the schema), as
    /// a slice of the payload: the classifier reads it without a copy. Nil for other commands.
    public static func textArgument(of payload: ByteBuffer) -> ByteBuffer? {
        switch Self.command(of: payload) {
        case .query, .stmtPrepare, .initDB:
            return payload.getSlice(at: payload.readerIndex + 1, length: payload.readableBytes - 1)
        default:
            return nil
        }
    }
}
