import NIOCore
import XCTest

@testable import MySQLWire

final class MessageTests: XCTestCase {
    let nonce: [UInt8] = Array("abcdefghijklmnopqrst".utf8)

    func testHandshakeRoundTripsForMySQLAndMariaDB() throws {
        let mysql = MySQLHandshakeV10(
            serverVersion: "8.0.36-concierge",
            connectionID: 0x0102_0304,
            authPluginData: self.nonce,
            capabilities: [.longPassword, .protocol41, .secureConnection, .pluginAuth, .deprecateEOF, .ssl, .sessionTrack],
            characterSet: MySQLCharacterSet.utf8mb4GeneralCI,
            status: .autocommit,
            authPluginName: MySQLAuthentication.cachingSHA2PasswordPlugin
        )
        let parsed = try MySQLHandshakeV10(parsing: encoded(mysql.encode))
        XCTAssertEqual(parsed, mysql)

        // MariaDB: no CLIENT_MYSQL, extended capabilities in the filler.
        var mariadb = mysql
        mariadb.serverVersion = "5.5.5-10.11.6-MariaDB"
        mariadb.capabilities = [.protocol41, .secureConnection, .pluginAuth, .mariadbCacheMetadata, .mariadbStmtBulkOperations]
        let bytes = encoded(mariadb.encode)
        XCTAssertEqual(try MySQLHandshakeV10(parsing: bytes), mariadb)
        // The extended word sits in the last 4 of the 10 reserved bytes.
        let fillerStart = 1 + mariadb.serverVersion.utf8.count + 1 + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1
        XCTAssertEqual(bytes.getInteger(at: fillerStart + 6, endianness: .little, as: UInt32.self), 0b10100)

        // With CLIENT_MYSQL, the filler stays zero even if upper bits are set.
        var both = mysql
        both.capabilities.insert(.mariadbProgress)
        let parsedBoth = try MySQLHandshakeV10(parsing: encoded(both.encode))
        XCTAssertFalse(parsedBoth.capabilities.contains(.mariadbProgress))
    }

    func testHandshakeRejectsOtherProtocolVersionsAndTruncation() {
        XCTAssertThrowsError(try MySQLHandshakeV10(parsing: ByteBuffer(bytes: [9, 0x41, 0])))
        XCTAssertThrowsError(try MySQLHandshakeV10(parsing: ByteBuffer(bytes: [10, 0x41, 0, 1, 2])))
        XCTAssertThrowsError(try MySQLHandshakeV10(parsing: ByteBuffer()))
    }

    func testSSLRequestRoundTripAndDetection() throws {
        let request = MySQLSSLRequest(capabilities: [.longPassword, .protocol41, .ssl, .secureConnection], maxPacketSize: 1 << 24, characterSet: 45)
        let bytes = encoded(request.encode)
        XCTAssertEqual(bytes.readableBytes, 32)
        XCTAssertTrue(MySQLSSLRequest.isSSLRequest(payload: bytes))
        XCTAssertEqual(try MySQLSSLRequest(parsing: bytes), request)

        let mariadb = MySQLSSLRequest(capabilities: [.protocol41, .ssl, .mariadbProgress], maxPacketSize: 0, characterSet: 8)
        XCTAssertEqual(try MySQLSSLRequest(parsing: encoded(mariadb.encode)), mariadb)

        let withoutSSL = MySQLSSLRequest(capabilities: [.protocol41], maxPacketSize: 0, characterSet: 8)
        XCTAssertFalse(MySQLSSLRequest.isSSLRequest(payload: encoded(withoutSSL.encode)))
        XCTAssertThrowsError(try MySQLSSLRequest(parsing: encoded(withoutSSL.encode)))
        let response = MySQLHandshakeResponse41(capabilities: [.protocol41, .ssl], maxPacketSize: 0, characterSet: 8, username: "u", authResponse: [])
        XCTAssertFalse(MySQLSSLRequest.isSSLRequest(payload: encoded(response.encode)))
    }

    func testHandshakeResponseRoundTripsInEveryAuthResponseEncoding() throws {
        let full = MySQLHandshakeResponse41(
            capabilities: [.longPassword, .protocol41, .secureConnection, .pluginAuth, .pluginAuthLenencClientData, .connectWithDB, .connectAttrs, .zstdCompression],
            maxPacketSize: 16_777_216,
            characterSet: 45,
            username: "app",
            authResponse: MySQLAuthentication.nativePasswordScramble(password: "secret", nonce: self.nonce),
            database: "shop",
            authPluginName: MySQLAuthentication.nativePasswordPlugin,
            attributes: [
                MySQLConnectAttribute(name: "_client_name", value: "libmariadb"),
                MySQLConnectAttribute(name: "program_name", value: "mariadb"),
                MySQLConnectAttribute(name: "_pid", value: "42"),
            ],
            zstdCompressionLevel: 7
        )
        XCTAssertEqual(try MySQLHandshakeResponse41(parsing: encoded(full.encode)), full)

        var oneByteLength = full
        oneByteLength.capabilities = [.longPassword, .protocol41, .secureConnection, .pluginAuth]
        oneByteLength.database = nil
        oneByteLength.attributes = []
        oneByteLength.zstdCompressionLevel = nil
        XCTAssertEqual(try MySQLHandshakeResponse41(parsing: encoded(oneByteLength.encode)), oneByteLength)

        var nulTerminated = oneByteLength
        nulTerminated.capabilities = [.longPassword, .protocol41]
        nulTerminated.authResponse = Array("plain".utf8)
        nulTerminated.authPluginName = nil
        XCTAssertEqual(try MySQLHandshakeResponse41(parsing: encoded(nulTerminated.encode)), nulTerminated)

        var mariadb = full
        mariadb.capabilities = [.protocol41, .secureConnection, .pluginAuthLenencClientData, .mariadbStmtBulkOperations, .mariadbExtendedTypeInfo]
        mariadb.database = nil
        mariadb.authPluginName = nil
        mariadb.attributes = []
        mariadb.zstdCompressionLevel = nil
        mariadb.authResponse = [UInt8](repeating: 7, count: 300)
        XCTAssertEqual(try MySQLHandshakeResponse41(parsing: encoded(mariadb.encode)), mariadb)
    }

    func testHandshakeResponseToleratesMissingTrailingFieldsAndRejectsTruncation() throws {
        var response = MySQLHandshakeResponse41(
            capabilities: [.protocol41, .secureConnection, .connectWithDB, .pluginAuth, .connectAttrs],
            maxPacketSize: 0, characterSet: 45, username: "app", authResponse: [1, 2, 3]
        )
        response.capabilities.remove([.connectWithDB, .pluginAuth, .connectAttrs])
        var bytes = encoded(response.encode)
        // Same bytes, but the capability words claim database, plugin and attributes.
        bytes.setInteger(MySQLCapabilities([.protocol41, .secureConnection, .connectWithDB, .pluginAuth, .connectAttrs]).lowerWord, at: 0, endianness: .little)
        let parsed = try MySQLHandshakeResponse41(parsing: bytes)
        XCTAssertNil(parsed.database)
        XCTAssertNil(parsed.authPluginName)
        XCTAssertEqual(parsed.attributes, [])

        XCTAssertThrowsError(try MySQLHandshakeResponse41(parsing: bytes.getSlice(at: 0, length: 34)!))
        var no41 = response
        no41.capabilities = [.secureConnection]
        XCTAssertThrowsError(try MySQLHandshakeResponse41(parsing: encoded(no41.encode)))
        var badAuth = encoded(response.encode)
        badAuth.moveWriterIndex(to: badAuth.writerIndex - 1)
        XCTAssertThrowsError(try MySQLHandshakeResponse41(parsing: badAuth))
    }

    func testAuthSwitchRequestRoundTripsWithTheNULClientsExpect() throws {
        let request = MySQLAuthSwitchRequest(pluginName: MySQLAuthentication.nativePasswordPlugin, pluginData: self.nonce)
        let bytes = encoded(request.encode)
        XCTAssertEqual(bytes.bytes, [0xFE] + Array("mysql_native_password".utf8) + [0] + self.nonce + [0])
        XCTAssertTrue(MySQLAuthSwitchRequest.isAuthSwitchRequest(payload: bytes))
        XCTAssertEqual(try MySQLAuthSwitchRequest(parsing: bytes), request)
        XCTAssertFalse(MySQLAuthSwitchRequest.isAuthSwitchRequest(payload: encoded(MySQLEOFPacket(status: .autocommit).encode)))
        XCTAssertThrowsError(try MySQLAuthSwitchRequest(parsing: ByteBuffer(bytes: [0xFE])))
    }

    func testAuthMoreDataRoundTrips() throws {
        for value: MySQLAuthMoreData in [
            .fastAuthSuccess, .performFullAuthentication,
            .publicKey("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"), .data([9, 9]),
        ] {
            let bytes = encoded(value.encode)
            XCTAssertTrue(MySQLAuthMoreData.isAuthMoreData(payload: bytes))
            XCTAssertEqual(try MySQLAuthMoreData(parsing: bytes), value)
        }
        XCTAssertEqual(encoded(MySQLAuthMoreData.fastAuthSuccess.encode).bytes, [0x01, 0x03])
        XCTAssertEqual(encoded(MySQLAuthMoreData.performFullAuthentication.encode).bytes, [0x01, 0x04])
        XCTAssertThrowsError(try MySQLAuthMoreData(parsing: ByteBuffer(bytes: [0x02, 0x03])))
    }

    func testOKPacketRoundTripsWithAndWithoutSessionTracking() throws {
        let tracking: MySQLCapabilities = [.protocol41, .sessionTrack]
        let changes: [MySQLSessionStateChange] = [
            .systemVariable(name: "sql_mode", value: "ANSI_QUOTES"),
            .schema("shop"),
            .stateChanged(true),
            .gtids([0, 5] + Array("0-1-2".utf8)),
            .transactionCharacteristics("SET TRANSACTION READ ONLY;"),
            .transactionState("T_______"),
            .unknown(type: 200, data: [1, 2]),
        ]
        let ok = MySQLOKPacket(
            affectedRows: 300, lastInsertID: 1 << 40, status: [.autocommit, .sessionStateChanged], warnings: 2,
            info: "Rows matched: 1", sessionStateChanges: changes
        )
        XCTAssertEqual(try MySQLOKPacket(parsing: encoded { ok.encode(into: &$0, capabilities: tracking) }, capabilities: tracking), ok)

        // Under DEPRECATE_EOF the same OK ends a result set with a 0xFE header.
        let eofReplacement = encoded { ok.encode(into: &$0, capabilities: tracking, asEOFReplacement: true) }
        XCTAssertEqual(eofReplacement.getInteger(at: 0, as: UInt8.self), 0xFE)
        XCTAssertEqual(try MySQLOKPacket(parsing: eofReplacement, capabilities: tracking), ok)

        // A client without session tracking gets neither the flag nor the block.
        let plain = encoded { ok.encode(into: &$0, capabilities: .protocol41) }
        let parsedPlain = try MySQLOKPacket(parsing: plain, capabilities: .protocol41)
        XCTAssertEqual(parsedPlain.status, .autocommit)
        XCTAssertEqual(parsedPlain.sessionStateChanges, [])
        XCTAssertEqual(parsedPlain.info, "Rows matched: 1")

        // No changes: the flag is cleared, and an empty info is omitted altogether.
        let bare = MySQLOKPacket(status: [.autocommit, .sessionStateChanged])
        let bareBytes = encoded { bare.encode(into: &$0, capabilities: tracking) }
        XCTAssertEqual(bareBytes.bytes, [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00])
        XCTAssertEqual(try MySQLOKPacket(parsing: bareBytes, capabilities: tracking), MySQLOKPacket(status: .autocommit))
    }

    func testSessionStateSystemVariablesEntryWithSeveralPairs() throws {
        var data = ByteBuffer()
        data.writeMySQLLengthEncodedString("a")
        data.writeMySQLLengthEncodedString("1")
        data.writeMySQLLengthEncodedString("b")
        data.writeMySQLLengthEncodedString("")
        var block = ByteBuffer(bytes: [0])
        block.writeMySQLLengthEncodedInteger(UInt64(data.readableBytes))
        block.writeBuffer(&data)
        XCTAssertEqual(
            try MySQLSessionStateChange.parse(block: block),
            [.systemVariable(name: "a", value: "1"), .systemVariable(name: "b", value: "")]
        )
        XCTAssertThrowsError(try MySQLSessionStateChange.parse(block: ByteBuffer(bytes: [0, 5, 1])))
    }

    func testOKPacketRejectsTruncation() {
        XCTAssertThrowsError(try MySQLOKPacket(parsing: ByteBuffer(bytes: [0x00, 0x00]), capabilities: .protocol41))
        XCTAssertThrowsError(try MySQLOKPacket(parsing: ByteBuffer(bytes: [0x01, 0, 0, 2, 0, 0, 0]), capabilities: .protocol41))
        XCTAssertThrowsError(
            try MySQLOKPacket(parsing: ByteBuffer(bytes: [0x00, 0, 0, 0x02, 0x40, 0, 0, 0x00, 0x05, 0x01]), capabilities: [.protocol41, .sessionTrack])
        )
    }

    func testErrPacketRoundTripsAndToleratesAMissingSQLState() throws {
        let err = MySQLErrPacket(code: 1045, sqlState: "28000", message: "Access denied for user 'app'@'%' (using password: YES)")
        let bytes = encoded { err.encode(into: &$0) }
        XCTAssertTrue(MySQLErrPacket.isErr(payload: bytes))
        XCTAssertEqual(try MySQLErrPacket(parsing: bytes), err)
        XCTAssertEqual(err.description, "ERROR 1045 (28000): Access denied for user 'app'@'%' (using password: YES)")
        XCTAssertFalse(err.isProgressReport)

        // Before the handshake, servers send no SQLSTATE.
        let early = encoded { MySQLErrPacket(code: 1040, message: "Too many connections").encode(into: &$0, capabilities: []) }
        XCTAssertEqual(try MySQLErrPacket(parsing: early), MySQLErrPacket(code: 1040, sqlState: "HY000", message: "Too many connections"))

        let progress = try MySQLErrPacket(parsing: ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 1, 1, 2, 0, 0, 0, 0]))
        XCTAssertTrue(progress.isProgressReport)
        XCTAssertThrowsError(try MySQLErrPacket(parsing: ByteBuffer(bytes: [0xFF, 0x01])))
    }

    func testEOFPacketRoundTripsAndIsTellableFromARow() throws {
        let eof = MySQLEOFPacket(warnings: 3, status: [.autocommit, .moreResultsExist])
        let bytes = encoded(eof.encode)
        XCTAssertEqual(bytes.bytes, [0xFE, 3, 0, 0x0A, 0])
        XCTAssertTrue(MySQLEOFPacket.isEOF(payload: bytes))
        XCTAssertEqual(try MySQLEOFPacket(parsing: bytes), eof)
        XCTAssertEqual(try MySQLEOFPacket(parsing: ByteBuffer(bytes: [0xFE])), MySQLEOFPacket(warnings: 0, status: []))
        let row = ByteBuffer(bytes: [0xFE] + [UInt8](repeating: 0, count: 8))
        XCTAssertFalse(MySQLEOFPacket.isEOF(payload: row))
        XCTAssertThrowsError(try MySQLEOFPacket(parsing: row))
    }

    func testCapabilityAndStatusValuesMatchTheProtocol() {
        XCTAssertEqual(MySQLCapabilities.protocol41.rawValue, 0x200)
        XCTAssertEqual(MySQLCapabilities.deprecateEOF.rawValue, 0x100_0000)
        XCTAssertEqual(MySQLCapabilities.rememberOptions.rawValue, 0x8000_0000)
        XCTAssertEqual(MySQLCapabilities.mariadbCacheMetadata.rawValue, 1 << 36)
        XCTAssertEqual(MySQLServerStatus.sessionStateChanged.rawValue, 0x4000)
        XCTAssertEqual(MySQLCommand.resetConnection.rawValue, 0x1F)
        XCTAssertEqual(MySQLCommand.stmtBulkExecute.rawValue, 0xFA)
        XCTAssertEqual(MySQLCommand.allCases.count, 34)
    }

    func testCommandPackets() throws {
        var buffer = ByteBuffer()
        XCTAssertEqual(buffer.writeMySQLCommand(.query, "SELECT 1"), 1)
        XCTAssertEqual(buffer.bytes, [9, 0, 0, 0, 0x03] + Array("SELECT 1".utf8))
        buffer.clear()
        buffer.writeMySQLCommand(.ping)
        XCTAssertEqual(buffer.bytes, [1, 0, 0, 0, 0x0E])
        buffer.clear()
        buffer.writeMySQLCommand(.stmtClose, statementID: 0x0102_0304)
        XCTAssertEqual(buffer.bytes, [5, 0, 0, 0, 0x19, 4, 3, 2, 1])

        var close = try decodeAll(buffer)[0].payload
        XCTAssertEqual(MySQLCommandPacket.command(of: close), .stmtClose)
        XCTAssertEqual(MySQLCommandPacket.statementID(of: close), 0x0102_0304)
        XCTAssertTrue(MySQLCommandPacket.setStatementID(7, in: &close))
        XCTAssertEqual(close.bytes, [0x19, 7, 0, 0, 0])
        XCTAssertNil(MySQLCommandPacket.textArgument(of: close))

        var query = ByteBuffer(bytes: [0x03] + Array("USE x".utf8))
        XCTAssertEqual(MySQLCommandPacket.textArgument(of: query).map { String(buffer: $0) }, "USE x")
        XCTAssertNil(MySQLCommandPacket.statementID(of: query))
        XCTAssertFalse(MySQLCommandPacket.setStatementID(1, in: &query))
        XCTAssertNil(MySQLCommandPacket.command(of: ByteBuffer()))
        XCTAssertNil(MySQLCommandPacket.command(of: ByteBuffer(bytes: [0x99])))
        XCTAssertNil(MySQLCommandPacket.statementID(of: ByteBuffer(bytes: [0x17, 1])))
    }
}
