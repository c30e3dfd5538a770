import NIOCore

/// The server's first packet (Protocol::HandshakeV10): who the server is, the nonce for the
/// scramble, and the capabilities it offers.
///
/// The proxy parses it from each backend (to answer with the negotiated capabilities and the
/// scramble for the secret) and encodes its own for clients (with its own nonce).
public struct MySQLHandshakeV10: Sendable, Hashable {
    /// Always 10 for every server since 3.21.
    public var protocolVersion: UInt8
    /// The server's version string; MariaDB 10 prefixes `5.5.5-` for old replication clients.
    public var serverVersion: String
    /// The server's thread id: what `KILL` and `CONNECTION_ID()` name.
    public var connectionID: UInt32
    /// The 20-byte nonce (both parts joined, without the trailing NUL) that the client scrambles
    /// its password with.
    public var authPluginData: [UInt8]
    /// The capabilities the server offers, MariaDB's extended ones included (upper 32 bits).
    public var capabilities: MySQLCapabilities
    /// The server's default collation id.
    public var characterSet: UInt8
    /// The server status at connect time (autocommit, normally).
    public var status: MySQLServerStatus
    /// The authentication plugin the nonce is for (`mysql_native_password`,
    /// `caching_sha2_password`, ...); empty when the server lacks CLIENT_PLUGIN_AUTH.
    public var authPluginName: String

    /// Creates a handshake to send (the proxy as a server).
    public init(
        protocolVersion: UInt8 = 10,
        serverVersion: String,
        connectionID: UInt32,
        authPluginData: [UInt8],
        capabilities: MySQLCapabilities,
        characterSet: UInt8,
        status: MySQLServerStatus,
        authPluginName: String
    ) {
        self.protocolVersion = protocolVersion
        self.serverVersion = serverVersion
        self.connectionID = connectionID
        self.authPluginData = authPluginData
        self.capabilities = capabilities
        self.characterSet = characterSet
        self.status = status
        self.authPluginName = authPluginName
    }

    /// Parses a HandshakeV10 payload. A server that refuses the connection sends an ERR packet
    /// (0xFF) instead: check the first byte before calling this.
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        var buffer = payload
        guard let version = buffer.readInteger(as: UInt8.self) else { throw .malformed("empty handshake") }
        guard version == 10 else { throw .malformed("handshake protocol version \(version), expected 10") }
        guard let serverVersion = buffer.readMySQLNullTerminatedString(),
              let connectionID = buffer.readInteger(endianness: .little, as: UInt32.self),
              let part1 = buffer.readBytes(length: 8),
              buffer.readInteger(as: UInt8.self) != nil,
              let capabilitiesLow = buffer.readInteger(endianness: .little, as: UInt16.self)
        else { throw .malformed("truncated handshake") }
        self.protocolVersion = version
        self.serverVersion = serverVersion
        self.connectionID = connectionID
        var capabilities = UInt64(capabilitiesLow)
        var nonce = part1
        self.characterSet = 0
        self.status = []
        self.authPluginName = ""
        if buffer.readableBytes > 0 {
            guard let characterSet = buffer.readInteger(as: UInt8.self),
                  let status = buffer.readInteger(endianness: .little, as: UInt16.self),
                  let capabilitiesHigh = buffer.readInteger(endianness: .little, as: UInt16.self),
                  let authDataLength = buffer.readInteger(as: UInt8.self),
                  let filler = buffer.readSlice(length: 10)
            else { throw .malformed("truncated handshake") }
            self.characterSet = characterSet
            self.status = MySQLServerStatus(rawValue: status)
            capabilities |= UInt64(capabilitiesHigh) << 16
            if capabilities & MySQLCapabilities.clientMySQL.rawValue == 0 {
                let extended = filler.getInteger(at: filler.readerIndex + 6, endianness: .little, as: UInt32.self)!
                capabilities |= UInt64(extended) << 32
            }
            if capabilities & MySQLCapabilities.secureConnection.rawValue != 0 {
                let length = min(max(13, Int(authDataLength) - 8), buffer.readableBytes)
                var part2 = buffer.readBytes(length: length)!
                if part2.last == 0 { part2.removeLast() }
                nonce += part2
            }
            if capabilities & MySQLCapabilities.pluginAuth.rawValue != 0 {
                // Some old servers omit the NUL after the plugin name (MySQL bug #59453).
                self.authPluginName = buffer.readMySQLNullTerminatedString()
                    ?? buffer.readString(length: buffer.readableBytes)!
            }
        }
        self.capabilities = MySQLCapabilities(rawValue: capabilities)
        self.authPluginData = nonce
    }

    /// Writes the payload (no packet header). MariaDB's extended capabilities are written to the
    /// filler only when the capabilities lack CLIENT_MYSQL, as a MariaDB server does.
    public func encode(into buffer: inout ByteBuffer) {
        let capabilities = self.capabilities
        buffer.writeInteger(self.protocolVersion)
        buffer.writeMySQLNullTerminatedString(self.serverVersion)
        buffer.writeInteger(self.connectionID, endianness: .little)
        let nonce = self.authPluginData
        buffer.writeBytes(nonce.prefix(8))
        if nonce.count < 8 { buffer.writeRepeatingByte(0, count: 8 - nonce.count) }
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt16(truncatingIfNeeded: capabilities.rawValue), endianness: .little)
        buffer.writeInteger(self.characterSet)
        buffer.writeInteger(self.status.rawValue, endianness: .little)
        buffer.writeInteger(UInt16(truncatingIfNeeded: capabilities.rawValue >> 16), endianness: .little)
        buffer.writeInteger(capabilities.contains(.pluginAuth) ? UInt8(truncatingIfNeeded: nonce.count + 1) : 0)
        buffer.writeRepeatingByte(0, count: 6)
        buffer.writeInteger(capabilities.contains(.clientMySQL) ? 0 : capabilities.mariadbWord, endianness: .little)
        if capabilities.contains(.secureConnection) {
            let part2 = nonce.dropFirst(8)
            buffer.writeBytes(part2)
            buffer.writeRepeatingByte(0, count: max(1, 13 - part2.count))
        }
        if capabilities.contains(.pluginAuth) {
            buffer.writeMySQLNullTerminatedString(self.authPluginName)
        }
    }
}

/// Writes the fixed 32-byte head shared by SSLRequest and HandshakeResponse41.
private func writeResponseHead(
    capabilities: MySQLCapabilities, maxPacketSize: UInt32, characterSet: UInt8, into buffer: inout ByteBuffer
) {
    buffer.writeInteger(capabilities.lowerWord, endianness: .little)
    buffer.writeInteger(maxPacketSize, endianness: .little)
    buffer.writeInteger(characterSet)
    buffer.writeRepeatingByte(0, count: 19)
    buffer.writeInteger(capabilities.contains(.clientMySQL) ? 0 : capabilities.mariadbWord, endianness: .little)
}

/// Reads the fixed 32-byte head shared by SSLRequest and HandshakeResponse41.
private func readResponseHead(
    _ buffer: inout ByteBuffer
) throws(MySQLWireError) -> (MySQLCapabilities, UInt32, UInt8) {
    guard let capabilitiesLow = buffer.readInteger(endianness: .little, as: UInt32.self),
          let maxPacketSize = buffer.readInteger(endianness: .little, as: UInt32.self),
          let characterSet = buffer.readInteger(as: UInt8.self),
          let filler = buffer.readSlice(length: 23)
    else { throw .malformed("truncated handshake response") }
    var capabilities = UInt64(capabilitiesLow)
    if capabilities & MySQLCapabilities.clientMySQL.rawValue == 0 {
        capabilities |= UInt64(filler.getInteger(at: filler.readerIndex + 19, endianness: .little, as: UInt32.self)!) << 32
    }
    return (MySQLCapabilities(rawValue: capabilities), maxPacketSize, characterSet)
}

/// The client's request to switch to TLS (Protocol::SSLRequest): the first 32 bytes of a
/// HandshakeResponse41 with CLIENT_SSL, sent in clear before the TLS handshake.
///
/// After it, the next bytes on the wire must be a TLS ClientHello: a proxy refuses any plaintext
/// that arrived with the SSLRequest (the CVE-2021-23214 class of injection).
public struct MySQLSSLRequest: Sendable, Hashable {
    /// The client's capabilities (with CLIENT_SSL); the real response repeats them under TLS.
    public var capabilities: MySQLCapabilities
    /// The client's max packet size.
    public var maxPacketSize: UInt32
    /// The client's collation id.
    public var characterSet: UInt8

    /// Creates a request to send (the proxy as a client of a backend).
    public init(capabilities: MySQLCapabilities, maxPacketSize: UInt32, characterSet: UInt8) {
        self.capabilities = capabilities
        self.maxPacketSize = maxPacketSize
        self.characterSet = characterSet
    }

    /// Whether the client's first packet is an SSLRequest rather than a full response: exactly
    /// 32 bytes with CLIENT_SSL (a real response has at least a user name after them).
    public static func isSSLRequest(payload: ByteBuffer) -> Bool {
        guard payload.readableBytes == 32,
              let capabilities = payload.getInteger(at: payload.readerIndex, endianness: .little, as: UInt32.self)
        else { return false }
        return capabilities & UInt32(MySQLCapabilities.ssl.rawValue) != 0
    }

    /// Parses the 32-byte payload.
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        guard payload.readableBytes == 32 else { throw .malformed("SSLRequest of \(payload.readableBytes) bytes") }
        var buffer = payload
        (self.capabilities, self.maxPacketSize, self.characterSet) = try readResponseHead(&buffer)
        guard self.capabilities.contains(.ssl) else { throw .malformed("SSLRequest without CLIENT_SSL") }
    }

    /// Writes the 32-byte payload (no packet header).
    public func encode(into buffer: inout ByteBuffer) {
        writeResponseHead(
            capabilities: self.capabilities, maxPacketSize: self.maxPacketSize, characterSet: self.characterSet, into: &buffer
        )
    }
}

/// One connection attribute (`_client_name`, `program_name`, ...): kept in order because
/// clients and `performance_schema.session_connect_attrs` show them in order.
public struct MySQLConnectAttribute: Sendable, Hashable {
    /// The attribute's name.
    public var name: String
    /// The attribute's value.
    public var value: String

    /// Creates an attribute.
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// The client's answer to the handshake (Protocol::HandshakeResponse41): who logs in, with what
/// scramble, to which database, with which capabilities.
///
/// The proxy parses it from clients (to check the scramble against the secret and mirror the
/// capabilities on the backend) and encodes it to log in to backends.
public struct MySQLHandshakeResponse41: Sendable, Hashable {
    /// The client's capabilities, MariaDB's extended ones (from the filler, when the client lacks
    /// CLIENT_MYSQL) included.
    public var capabilities: MySQLCapabilities
    /// The largest packet the client wants to receive.
    public var maxPacketSize: UInt32
    /// The client's collation id (it sets character_set_client/connection/results).
    public var characterSet: UInt8
    /// The user name.
    public var username: String
    /// The scramble (or, for clear-text plugins, the password) for ``authPluginName``.
    public var authResponse: [UInt8]
    /// The default database, when the client sent CLIENT_CONNECT_WITH_DB (possibly empty).
    public var database: String?
    /// The plugin the auth response is for, when the client sent CLIENT_PLUGIN_AUTH.
    public var authPluginName: String?
    /// The connection attributes, in the client's order.
    public var attributes: [MySQLConnectAttribute]
    /// The zstd level the client asked for with CLIENT_ZSTD_COMPRESSION_ALGORITHM (ignored: the
    /// proxy strips compression; kept so a parse and an encode give the same bytes).
    public var zstdCompressionLevel: UInt8?

    /// Creates a response to send (the proxy as a client of a backend). Fields whose capability
    /// is missing are not written.
    public init(
        capabilities: MySQLCapabilities,
        maxPacketSize: UInt32,
        characterSet: UInt8,
        username: String,
        authResponse: [UInt8],
        database: String? = nil,
        authPluginName: String? = nil,
        attributes: [MySQLConnectAttribute] = [],
        zstdCompressionLevel: UInt8? = nil
    ) {
        self.capabilities = capabilities
        self.maxPacketSize = maxPacketSize
        self.characterSet = characterSet
        self.username = username
        self.authResponse = authResponse
        self.database = database
        self.authPluginName = authPluginName
        self.attributes = attributes
        self.zstdCompressionLevel = zstdCompressionLevel
    }

    /// Parses a HandshakeResponse41 payload. Trailing optional fields (database, plugin name,
    /// attributes) missing at the end of the packet are read as absent, as the server does.
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        var buffer = payload
        (self.capabilities, self.maxPacketSize, self.characterSet) = try readResponseHead(&buffer)
        guard self.capabilities.contains(.protocol41) else {
            throw .malformed("handshake response without CLIENT_PROTOCOL_41")
        }
        guard let username = buffer.readMySQLNullTerminatedString() else {
            throw .malformed("handshake response without a NUL-terminated user name")
        }
        self.username = username
        self.authResponse = try buffer.readMySQLAuthResponse(self.capabilities)
        self.database = nil
        self.authPluginName = nil
        self.attributes = []
        self.zstdCompressionLevel = nil
        if self.capabilities.contains(.connectWithDB), buffer.readableBytes > 0 {
            guard let database = buffer.readMySQLNullTerminatedString() else { throw .malformed("unterminated database name") }
            self.database = database
        }
        try buffer.readMySQLPluginAndAttributes(self.capabilities, plugin: &self.authPluginName, attributes: &self.attributes)
        if self.capabilities.contains(.zstdCompression), buffer.readableBytes > 0 {
            self.zstdCompressionLevel = buffer.readInteger(as: UInt8.self)
        }
    }

    /// Writes the payload (no packet header). The auth response is written the way the
    /// capabilities say (length-encoded, 1-byte length, or NUL-terminated); with only
    /// CLIENT_SECURE_CONNECTION it must fit 255 bytes.
    public func encode(into buffer: inout ByteBuffer) {
        let capabilities = self.capabilities
        writeResponseHead(capabilities: capabilities, maxPacketSize: self.maxPacketSize, characterSet: self.characterSet, into: &buffer)
        buffer.writeMySQLNullTerminatedString(self.username)
        if capabilities.contains(.pluginAuthLenencClientData) {
            buffer.writeMySQLLengthEncodedBytes(self.authResponse)
        } else if capabilities.contains(.secureConnection) {
            precondition(self.authResponse.count <= 255, "an auth response above 255 bytes needs CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA")
            buffer.writeInteger(UInt8(self.authResponse.count))
            buffer.writeBytes(self.authResponse)
        } else {
            buffer.writeBytes(self.authResponse)
            buffer.writeInteger(UInt8(0))
        }
        if capabilities.contains(.connectWithDB) {
            buffer.writeMySQLNullTerminatedString(self.database ?? "")
        }
        buffer.writeMySQLPluginAndAttributes(capabilities, plugin: self.authPluginName, attributes: self.attributes)
        if capabilities.contains(.zstdCompression) {
            buffer.writeInteger(self.zstdCompressionLevel ?? 3)
        }
    }
}

/// The server's request to restart authentication with another plugin
/// (Protocol::AuthSwitchRequest): 0xFE, the plugin name, and a fresh nonce.
///
/// A backend sends it when the user's plugin differs from the handshake's; the proxy sends it
/// when a client answered with a plugin other than the one the proxy wants.
public struct MySQLAuthSwitchRequest: Sendable, Hashable {
    /// The plugin to switch to.
    public var pluginName: String
    /// The plugin's data (the 20-byte nonce for native and caching_sha2), without the trailing NUL.
    public var pluginData: [UInt8]

    /// Creates a request to send.
    public init(pluginName: String, pluginData: [UInt8]) {
        self.pluginName = pluginName
        self.pluginData = pluginData
    }

    /// Whether a payload received during authentication is an AuthSwitchRequest: 0xFE and longer
    /// than an EOF packet (a bare 0xFE would be the pre-4.1 old-password switch, not supported).
    public static func isAuthSwitchRequest(payload: ByteBuffer) -> Bool {
        payload.readableBytes > 5 && payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0xFE
    }

    /// Parses the payload (one trailing NUL of the plugin data is dropped).
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        var buffer = payload
        guard buffer.readInteger(as: UInt8.self) == 0xFE else { throw .malformed("AuthSwitchRequest without 0xFE") }
        guard let name = buffer.readMySQLNullTerminatedString() else {
            throw .malformed("AuthSwitchRequest without a plugin name (old-password switch is not supported)")
        }
        var data = Array(buffer.readableBytesView)
        if data.last == 0 { data.removeLast() }
        self.pluginName = name
        self.pluginData = data
    }

    /// Writes the payload, with the NUL after the plugin data that clients expect
    /// (libmysqlclient's native plugin rejects a nonce that is not 21 bytes).
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0xFE))
        buffer.writeMySQLNullTerminatedString(self.pluginName)
        buffer.writeBytes(self.pluginData)
        buffer.writeInteger(UInt8(0))
    }
}

/// Extra data inside an authentication exchange (Protocol::AuthMoreData: 0x01 + data), which
/// caching_sha2_password uses to say "fast path ok", "send the full password", or to send its
/// RSA public key.
public enum MySQLAuthMoreData: Sendable, Hashable {
    /// caching_sha2: the scramble matched the server's cache; an OK follows.
    case fastAuthSuccess
    /// caching_sha2: the server needs the password itself (in clear over TLS, RSA-encrypted
    /// otherwise).
    case performFullAuthentication
    /// caching_sha2 / sha256: the server's RSA public key (PEM), after the client asked with
    /// ``MySQLAuthentication/requestPublicKey``.
    case publicKey(String)
    /// Any other plugin data.
    case data([UInt8])

    /// The status byte caching_sha2 sends for a fast-path success.
    public static let fastAuthSuccessByte: UInt8 = 0x03
    /// The status byte caching_sha2 sends to ask for full authentication.
    public static let performFullAuthenticationByte: UInt8 = 0x04

    /// Whether a payload is AuthMoreData (first byte 0x01).
    public static func isAuthMoreData(payload: ByteBuffer) -> Bool {
        payload.getInteger(at: payload.readerIndex, as: UInt8.self) == 0x01
    }

    /// Parses the payload.
    public init(parsing payload: ByteBuffer) throws(MySQLWireError) {
        var buffer = payload
        guard buffer.readInteger(as: UInt8.self) == 0x01 else { throw .malformed("AuthMoreData without 0x01") }
        let data = Array(buffer.readableBytesView)
        if data == [Self.fastAuthSuccessByte] {
            self = .fastAuthSuccess
        } else if data == [Self.performFullAuthenticationByte] {
            self = .performFullAuthentication
        } else if data.starts(with: "-----BEGIN".utf8) {
            self = .publicKey(String(decoding: data, as: UTF8.self))
        } else {
            self = .data(data)
        }
    }

    /// Writes the payload.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x01))
        switch self {
        case .fastAuthSuccess:
            buffer.writeInteger(Self.fastAuthSuccessByte)
        case .performFullAuthentication:
            buffer.writeInteger(Self.performFullAuthenticationByte)
        case .publicKey(let pem):
            buffer.writeString(pem)
        case .data(let data):
            buffer.writeBytes(data)
        }
    }
}
