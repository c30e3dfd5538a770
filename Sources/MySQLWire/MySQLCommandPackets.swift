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

/// COM_CHANGE_USER (0x11): the client logs in again, as another user or the same one, on the
/// connection it has. Its fields are those of a HandshakeResponse41 without the capabilities
/// (the connection's stay) and in another order; the auth response is always 1-byte-length
/// prefixed (CLIENT_SECURE_CONNECTION), never length-encoded, even with
/// CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA (MySQL's and MariaDB's parsers read it so).
///
/// The scramble is computed with the nonce of the connection's greeting (clients keep it), so a
/// proxy that answers the command itself checks it against that nonce.
public struct MySQLChangeUser: Sendable, Hashable {
    public var username: String
    /// The scramble (or, for mysql_clear_password, the password) for ``authPluginName``.
    public var authResponse: [UInt8]
    /// The schema to select; empty for none.
    public var database: String
    /// The collation id, when the client sent one (it changes the connection's character set).
    public var characterSet: UInt8?
    /// The plugin the auth response is for (CLIENT_PLUGIN_AUTH).
    public var authPluginName: String?
    /// The connection attributes (CLIENT_CONNECT_ATTRS), in the client's order.
    public var attributes: [MySQLConnectAttribute]

    public init(
        username: String, authResponse: [UInt8], database: String = "", characterSet: UInt8? = nil,
        authPluginName: String? = nil, attributes: [MySQLConnectAttribute] = []
    ) {
        self.username = username
        self.authResponse = authResponse
        self.database = database
        self.characterSet = characterSet
        self.authPluginName = authPluginName
        self.attributes = attributes
    }

    /// Parses the payload (command byte included), read with the connection's negotiated
    /// `capabilities`. Optional fields missing at the end are read as absent, as the server does.
    public init(parsing payload: ByteBuffer, capabilities: MySQLCapabilities) throws(MySQLWireError) {
        var buffer = payload
        guard buffer.readInteger(as: UInt8.self) == MySQLCommand.changeUser.rawValue else {
            throw .malformed("not a COM_CHANGE_USER")
        }
        guard let username = buffer.readMySQLNullTerminatedString() else {
            throw .malformed("COM_CHANGE_USER without a NUL-terminated user name")
        }
        self.username = username
        // COM_CHANGE_USER has no length-encoded form of the auth response.
        self.authResponse = try buffer.readMySQLAuthResponse(capabilities.subtracting(.pluginAuthLenencClientData))
        self.database = ""
        self.characterSet = nil
        self.authPluginName = nil
        self.attributes = []
        guard buffer.readableBytes > 0 else { return }
        guard let database = buffer.readMySQLNullTerminatedString() else { throw .malformed("unterminated database name") }
        self.database = database
        guard buffer.readableBytes > 0 else { return }
        guard let characterSet = buffer.readInteger(endianness: .little, as: UInt16.self) else {
            throw .malformed("truncated character set")
        }
        self.characterSet = UInt8(truncatingIfNeeded: characterSet)
        try buffer.readMySQLPluginAndAttributes(capabilities, plugin: &self.authPluginName, attributes: &self.attributes)
    }

    /// Writes the payload (command byte included, no packet header), for `capabilities`. The
    /// auth response must fit 255 bytes with CLIENT_SECURE_CONNECTION.
    public func encode(into buffer: inout ByteBuffer, capabilities: MySQLCapabilities) {
        buffer.writeInteger(MySQLCommand.changeUser.rawValue)
        buffer.writeMySQLNullTerminatedString(self.username)
        if capabilities.contains(.secureConnection) {
            precondition(self.authResponse.count <= 255, "COM_CHANGE_USER's auth response is at most 255 bytes")
            buffer.writeInteger(UInt8(self.authResponse.count))
            buffer.writeBytes(self.authResponse)
        } else {
            buffer.writeBytes(self.authResponse)
            buffer.writeInteger(UInt8(0))
        }
        buffer.writeMySQLNullTerminatedString(self.database)
        buffer.writeInteger(UInt16(self.characterSet ?? 45), endianness: .little)
        buffer.writeMySQLPluginAndAttributes(capabilities, plugin: self.authPluginName, attributes: self.attributes)
    }
}

extension ByteBuffer {
    /// The auth response of HandshakeResponse41 and COM_CHANGE_USER, the way the capabilities
    /// say: length-encoded (CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA), a 1-byte length
    /// (CLIENT_SECURE_CONNECTION), or NUL-terminated.
    mutating func readMySQLAuthResponse(_ capabilities: MySQLCapabilities) throws(MySQLWireError) -> [UInt8] {
        if capabilities.contains(.pluginAuthLenencClientData) {
            guard let response = self.readMySQLLengthEncodedBytes() else { throw .malformed("truncated auth response") }
            return response
        }
        if capabilities.contains(.secureConnection) {
            guard let length = self.readInteger(as: UInt8.self), let response = self.readBytes(length: Int(length)) else {
                throw .malformed("truncated auth response")
            }
            return response
        }
        guard let response = self.readMySQLNullTerminatedSlice() else { throw .malformed("truncated auth response") }
        return Array(response.readableBytesView)
    }

    /// The tail HandshakeResponse41 and COM_CHANGE_USER share: the auth plugin's name
    /// (CLIENT_PLUGIN_AUTH) and the connection attributes (CLIENT_CONNECT_ATTRS), each only when
    /// the packet has bytes left for it.
    mutating func readMySQLPluginAndAttributes(
        _ capabilities: MySQLCapabilities, plugin: inout String?, attributes list: inout [MySQLConnectAttribute]
    ) throws(MySQLWireError) {
        if capabilities.contains(.pluginAuth), self.readableBytes > 0 {
            guard let name = self.readMySQLNullTerminatedString() else { throw .malformed("unterminated plugin name") }
            plugin = name
        }
        if capabilities.contains(.connectAttrs), self.readableBytes > 0 {
            guard var attributes = self.readMySQLLengthEncodedSlice() else { throw .malformed("truncated connection attributes") }
            while attributes.readableBytes > 0 {
                guard let name = attributes.readMySQLLengthEncodedString(),
                      let value = attributes.readMySQLLengthEncodedString()
                else { throw .malformed("truncated connection attribute") }
                list.append(MySQLConnectAttribute(name: name, value: value))
            }
        }
    }

    /// Writes that tail (see `readMySQLPluginAndAttributes`).
    mutating func writeMySQLPluginAndAttributes(_ capabilities: MySQLCapabilities, plugin: String?, attributes list: [MySQLConnectAttribute]) {
        if capabilities.contains(.pluginAuth) {
            self.writeMySQLNullTerminatedString(plugin ?? "")
        }
        if capabilities.contains(.connectAttrs) {
            var attributes = ByteBuffer()
            for attribute in list {
                attributes.writeMySQLLengthEncodedString(attribute.name)
                attributes.writeMySQLLengthEncodedString(attribute.value)
            }
            self.writeMySQLLengthEncodedInteger(UInt64(attributes.readableBytes))
            self.writeBuffer(&attributes)
        }
    }
}
