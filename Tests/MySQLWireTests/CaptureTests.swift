import NIOCore
import XCTest

@testable import MySQLWire

/// Replays packets recorded from a real MariaDB 10.11 (capture.py) through the decoder, the
/// tracker and the parsers. The captures were read until the server fell silent, so they say
/// nothing about where a response ends: the tracker must find the end exactly at the last packet.
final class CaptureTests: XCTestCase {
    /// The password of the `capture` user the scenarios log in as.
    let capturePassword = "capture-secret"

    /// The outcome of one server burst.
    struct Burst {
        var packets: [MySQLPacket]
        var steps: [MySQLResponseTracker.Step]
    }

    /// Replays a command capture: each client record's packets are commands (or LOCAL INFILE
    /// data while a response is open), each server record goes through the decoder (checking
    /// sequence ids from the command's) and the tracker.
    func replay(_ capture: Capture, file: StaticString = #filePath, line: UInt = #line) throws -> [Burst] {
        var tracker = MySQLResponseTracker(capabilities: capture.capabilities)
        var clientDecoder = MySQLPacketDecoder(maxPayload: 1 << 26)
        var serverDecoder = MySQLPacketDecoder(maxPayload: 1 << 26)
        var bursts: [Burst] = []
        for (direction, bytes) in capture.records {
            switch direction {
            case .client:
                var input = bytes
                while let packet = try clientDecoder.next(from: &input) {
                    if tracker.isIdle {
                        XCTAssertEqual(packet.sequenceID, 0, "\(capture.name): a command starts a sequence", file: file, line: line)
                        let command = try XCTUnwrap(packet.firstByte.flatMap(MySQLCommand.init(rawValue:)), file: file, line: line)
                        tracker.commandSent(MySQLResponseTracker.expectation(for: command))
                    }
                    serverDecoder.expectedSequenceID = packet.nextSequenceID
                }
            case .server:
                var input = bytes
                var burst = Burst(packets: [], steps: [])
                while let packet = try serverDecoder.next(from: &input) {
                    burst.packets.append(packet)
                    burst.steps.append(try tracker.serverPacket(packet.payload))
                    // Decoding and re-encoding gives the server's bytes back.
                    var reencoded = ByteBuffer()
                    reencoded.writeMySQLPacket(packet)
                    XCTAssertEqual(reencoded, bytes.getSlice(at: bytes.readerIndex + reencodedOffset(burst.packets.dropLast()), length: reencoded.readableBytes), file: file, line: line)
                }
                XCTAssertEqual(input.readableBytes, 0, "\(capture.name): a partial packet", file: file, line: line)
                bursts.append(burst)
            }
        }
        return bursts
    }

    private func reencodedOffset(_ packets: ArraySlice<MySQLPacket>) -> Int {
        packets.reduce(0) { $0 + $1.payload.readableBytes + 4 * $1.wirePacketCount }
    }

    /// Checks that every burst ends its command exactly at its last packet (or asks for a LOCAL
    /// INFILE there), and returns the final steps.
    func assertEachBurstEndsItsCommand(_ capture: Capture, file: StaticString = #filePath, line: UInt = #line) throws -> [MySQLResponseTracker.Step] {
        let bursts = try self.replay(capture, file: file, line: line)
        var finals: [MySQLResponseTracker.Step] = []
        for burst in bursts where !burst.packets.isEmpty {
            let last = try XCTUnwrap(burst.steps.last)
            switch last {
            case .finished, .localInfileRequested:
                break
            case .inProgress:
                // An authentication exchange waits for the client after AuthSwitchRequest.
                if capture.expect == "authentication", burst.packets.last?.firstByte == 0xFE { break }
                XCTFail("\(capture.name): the response did not end at the burst's last packet", file: file, line: line)
            }
            XCTAssertEqual(
                burst.steps.dropLast().filter { $0 != .inProgress }, [],
                "\(capture.name): the response ended before the burst's last packet", file: file, line: line
            )
            finals.append(last)
        }
        return finals
    }

    /// A proxy that forwards wire packets feeds the tracker each logical payload's first wire
    /// packet only: the steps are the same as with joined payloads.
    func testFirstWirePacketsAloneGiveTheSameSteps() throws {
        for name in try Capture.names() where !name.hasPrefix("handshake") {
            let capture = try Capture.load(name)
            let logical = try self.replay(capture).flatMap(\.steps)
            var tracker = MySQLResponseTracker(capabilities: capture.capabilities)
            var steps: [MySQLResponseTracker.Step] = []
            var continues = false
            for (direction, bytes) in capture.records {
                var buffer = bytes
                while let header = buffer.peekMySQLPacketHeader() {
                    let payload = buffer.getSlice(at: buffer.readerIndex + 4, length: header.length)!
                    buffer.moveReaderIndex(forwardBy: 4 + header.length)
                    let continuation = continues
                    continues = header.length == MySQLPacketHeader.maxPacketPayload
                    if continuation { continue }
                    switch direction {
                    case .client:
                        if tracker.isIdle {
                            tracker.commandSent(MySQLResponseTracker.expectation(for: MySQLCommandPacket.command(of: payload)!))
                        }
                    case .server:
                        steps.append(try tracker.serverPacket(payload))
                    }
                }
            }
            XCTAssertEqual(steps, logical, name)
        }
    }

    func testEveryCommandCaptureEndsExactlyAtItsLastPacket() throws {
        let names = try Capture.names().filter { !$0.hasPrefix("handshake") }
        XCTAssertGreaterThan(names.count, 40)
        for name in names {
            let capture = try Capture.load(name)
            _ = try self.assertEachBurstEndsItsCommand(capture)
        }
    }

    func finals(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> [MySQLResponseTracker.Step] {
        try self.assertEachBurstEndsItsCommand(try Capture.load(name), file: file, line: line)
    }

    func status(_ step: MySQLResponseTracker.Step) -> MySQLServerStatus? {
        if case .finished(let status, false) = step { return status }
        return nil
    }

    func testStatusFlagsAtTheEndOfEachResponse() throws {
        for mode in ["eof", "deprecate_eof"] {
            XCTAssertEqual(try self.finals("ok_\(mode)"), [.finished(.autocommit, wasError: false)])
            XCTAssertEqual(try self.finals("err_\(mode)"), [.finished(.autocommit, wasError: true)])
            XCTAssertEqual(try self.finals("multi_err_\(mode)"), [.finished(.autocommit, wasError: true)])
            let begin = try XCTUnwrap(try self.finals("begin_\(mode)").first.flatMap(self.status))
            XCTAssertTrue(begin.contains(.inTransaction))
            let commit = try XCTUnwrap(try self.finals("commit_\(mode)").first.flatMap(self.status))
            XCTAssertFalse(commit.contains(.inTransaction))
            let cursor = try XCTUnwrap(try self.finals("execute_cursor_\(mode)").first.flatMap(self.status))
            XCTAssertTrue(cursor.contains(.cursorExists), mode)
            let fetch = try XCTUnwrap(try self.finals("fetch_\(mode)").first.flatMap(self.status))
            XCTAssertTrue(fetch.contains(.cursorExists))
            XCTAssertFalse(fetch.contains(.lastRowSent))
            let fetchLast = try XCTUnwrap(try self.finals("fetch_last_\(mode)").first.flatMap(self.status))
            XCTAssertTrue(fetchLast.contains(.lastRowSent))
            XCTAssertEqual(try self.finals("local_infile_\(mode)").map { $0 == .localInfileRequested }, [true, false])
            let autocommitOff = try XCTUnwrap(try self.finals("select_autocommit_off_\(mode)").first.flatMap(self.status))
            XCTAssertFalse(autocommitOff.contains(.autocommit))
            XCTAssertEqual(try self.finals("close_ping_\(mode)").count, 1, "COM_STMT_CLOSE has no response")
            XCTAssertEqual(try self.finals("change_user_\(mode)").last, .finished([.autocommit, .sessionStateChanged], wasError: false), "the schema is reported")
            for name in ["multi", "call", "execute_call", "select", "select_empty", "prepare", "prepare_none", "execute", "field_list",
                         "statistics", "set_option", "reset_connection", "ping", "stmt_reset"] {
                let finals = try self.finals("\(name)_\(mode)")
                XCTAssertEqual(finals.count, 1, name)
                XCTAssertNotNil(finals.first.flatMap(self.status), "\(name)_\(mode) ended in success")
            }
        }
    }

    /// MariaDB sets SERVER_MORE_RESULTS_EXISTS on the EOF after the column definitions too
    /// (it is the session's status while the statement runs), so only the grammar, not the flag
    /// alone, tells where a result ends: 2 flagged EOFs per result set without DEPRECATE_EOF, 1
    /// flagged OK with it.
    func testMultiResultResponsesFlagEveryResultButTheLast() throws {
        for mode in ["eof", "deprecate_eof"] {
            for name in ["multi", "call", "execute_call"] {
                let capture = try Capture.load("\(name)_\(mode)")
                let flagged = try self.replay(capture)[0].packets.filter { packet in
                    // Result sets end with 0xFE here (binary rows start with 0x00, like OKs).
                    guard packet.firstByte == 0xFE else { return false }
                    let status = packet.payload.readableBytes == 5
                        ? try MySQLEOFPacket(parsing: packet.payload).status
                        : try MySQLOKPacket(parsing: packet.payload, capabilities: capture.capabilities).status
                    return status.contains(.moreResultsExist)
                }
                let resultSetsBeforeTheLastResult = 2
                XCTAssertEqual(flagged.count, resultSetsBeforeTheLastResult * (mode == "eof" ? 2 : 1), "\(name)_\(mode)")
            }
        }
    }

    func testDeprecateEOFCapturesHaveNoEOFPackets() throws {
        for name in try Capture.names() where name.hasSuffix("_deprecate_eof") && !name.hasPrefix("handshake") {
            for burst in try self.replay(try Capture.load(name)) {
                for packet in burst.packets {
                    // A 7-byte 0xFE OK also passes `isEOF` (< 9 bytes); an EOF has 5.
                    XCTAssertFalse(packet.firstByte == 0xFE && packet.payload.readableBytes == 5, "\(name) has an EOF packet")
                }
            }
        }
        for name in ["select_eof", "multi_eof", "field_list_eof"] {
            let packets = try self.replay(try Capture.load(name)).flatMap(\.packets)
            XCTAssertTrue(packets.contains { MySQLEOFPacket.isEOF(payload: $0.payload) }, name)
        }
    }

    func testResultSetShapes() throws {
        // SELECT id, a, NULL AS n FROM t ORDER BY id: count, 3 definitions, [EOF], 5 rows, EOF/OK.
        let eof = try self.replay(try Capture.load("select_eof"))[0].packets
        XCTAssertEqual(eof.count, 1 + 3 + 1 + 5 + 1)
        let deprecate = try self.replay(try Capture.load("select_deprecate_eof"))[0].packets
        XCTAssertEqual(deprecate.count, 1 + 3 + 6 + 1, "one more row: ok_insert_deprecate_eof ran before")
        XCTAssertEqual(deprecate.last?.firstByte, 0xFE)
        XCTAssertGreaterThanOrEqual(deprecate.last!.payload.readableBytes, 7, "an OK, not an EOF")
        // Binary rows start with 0x00.
        let execute = try self.replay(try Capture.load("execute_eof"))[0].packets
        XCTAssertEqual(execute[5].firstByte, 0x00)
    }

    func testOKPacketsParse() throws {
        let insert = try self.replay(try Capture.load("ok_insert_eof"))[0].packets[0]
        let caps = try Capture.load("ok_insert_eof").capabilities
        let ok = try MySQLOKPacket(parsing: insert.payload, capabilities: caps)
        XCTAssertEqual(ok.affectedRows, 1)
        XCTAssertEqual(ok.lastInsertID, 5)
        XCTAssertTrue(ok.status.contains(.autocommit))

        let infile = try self.replay(try Capture.load("local_infile_eof"))
        XCTAssertEqual(infile[0].packets[0].payload.bytes, [0xFB] + Array("rows.csv".utf8))
        let loaded = try MySQLOKPacket(parsing: infile[1].packets[0].payload, capabilities: caps)
        XCTAssertEqual(loaded.affectedRows, 3)
        XCTAssertTrue(loaded.info.contains("Records: 3"), loaded.info)

        let err = try MySQLErrPacket(parsing: try self.replay(try Capture.load("err_eof"))[0].packets[0].payload)
        XCTAssertEqual(err.code, 1146)
        XCTAssertEqual(err.sqlState, "42S02")
        XCTAssertEqual(err.message, "Table 'capture.no_such_table' doesn't exist")
    }

    /// The OK packets' session-state information, as the server reports each kind of change.
    func testSessionStateChanges() throws {
        func changes(_ name: String) throws -> [MySQLSessionStateChange] {
            let capture = try Capture.load(name)
            let packet = try self.replay(capture)[0].packets[0]
            let ok = try MySQLOKPacket(parsing: packet.payload, capabilities: capture.capabilities)
            // Re-encoding gives the server's bytes back.
            XCTAssertEqual(encoded { ok.encode(into: &$0, capabilities: capture.capabilities) }, packet.payload, name)
            return ok.sessionStateChanges
        }
        for mode in ["eof", "deprecate_eof"] {
            let sqlMode = try changes("session_sql_mode_\(mode)")
            XCTAssertTrue(sqlMode.contains(.systemVariable(name: "sql_mode", value: "ANSI_QUOTES,NO_BACKSLASH_ESCAPES")), "\(sqlMode)")
            XCTAssertTrue(sqlMode.contains(.stateChanged(true)), "\(sqlMode)")
            XCTAssertTrue(try changes("session_use_\(mode)").contains(.schema("capture2")))
            XCTAssertTrue(try changes("session_init_db_\(mode)").contains(.schema("capture")))
            let names = try changes("session_names_\(mode)")
            for variable in ["character_set_client", "character_set_connection", "character_set_results"] {
                XCTAssertTrue(names.contains(.systemVariable(name: variable, value: "latin1")), "\(variable) in \(names)")
            }
            XCTAssertEqual(try changes("session_user_variable_\(mode)"), [.stateChanged(true)])
            let timeZone = try changes("session_time_zone_\(mode)")
            XCTAssertTrue(timeZone.contains(.systemVariable(name: "time_zone", value: "+02:00")), "\(timeZone)")
            XCTAssertTrue(timeZone.contains(.systemVariable(name: "autocommit", value: "OFF")), "\(timeZone)")
        }
    }

    // MARK: Handshakes

    func testHandshakesAndNativeLoginAgainstTheRealServer() throws {
        for name in ["handshake_eof", "handshake_deprecate_eof", "handshake_mariadb_extended"] {
            let capture = try Capture.load(name)
            let serverPackets = try decodeAll(capture.serverRecords[0], expectedSequenceID: 0)
            let handshake = try MySQLHandshakeV10(parsing: serverPackets[0].payload)
            XCTAssertEqual(handshake.protocolVersion, 10)
            XCTAssertTrue(handshake.serverVersion.contains("MariaDB"), handshake.serverVersion)
            XCTAssertEqual(handshake.authPluginData.count, 20)
            XCTAssertEqual(handshake.authPluginName, MySQLAuthentication.nativePasswordPlugin)
            XCTAssertFalse(handshake.capabilities.contains(.clientMySQL), "MariaDB clears CLIENT_MYSQL")
            XCTAssertTrue(handshake.capabilities.contains([.protocol41, .pluginAuth, .secureConnection, .sessionTrack, .deprecateEOF]))
            XCTAssertTrue(handshake.capabilities.contains([.mariadbStmtBulkOperations, .mariadbCacheMetadata]), "\(handshake.capabilities.rawValue)")
            // Our encoding of it gives the server's bytes back.
            XCTAssertEqual(encoded(handshake.encode), serverPackets[0].payload)

            let clientPackets = try decodeAll(capture.clientRecords[0], expectedSequenceID: 1)
            let response = try MySQLHandshakeResponse41(parsing: clientPackets[0].payload)
            XCTAssertEqual(response.username, "capture")
            XCTAssertEqual(response.database, "capture")
            XCTAssertEqual(response.attributes.first, MySQLConnectAttribute(name: "_client_name", value: "concierge-capture"))
            XCTAssertEqual(encoded(response.encode), clientPackets[0].payload)
            // The server accepted this scramble: ours matches it.
            XCTAssertTrue(MySQLAuthentication.verifyNativePassword(response: response.authResponse, password: self.capturePassword, nonce: handshake.authPluginData))

            let reply = try decodeAll(capture.serverRecords[1], expectedSequenceID: 2)
            XCTAssertEqual(reply.count, 1)
            XCTAssertEqual(reply[0].firstByte, 0x00)
            let ok = try MySQLOKPacket(parsing: reply[0].payload, capabilities: response.capabilities.intersection(handshake.capabilities))
            XCTAssertTrue(ok.status.contains(.autocommit))
        }
        let extended = try Capture.load("handshake_mariadb_extended")
        let response = try MySQLHandshakeResponse41(parsing: try decodeAll(extended.clientRecords[0])[0].payload)
        XCTAssertTrue(response.capabilities.contains(.mariadbCacheMetadata))
        XCTAssertFalse(response.capabilities.contains(.clientMySQL))
    }

    func testAuthSwitchAndWrongPasswordAgainstTheRealServer() throws {
        let capture = try Capture.load("handshake_auth_switch")
        let handshake = try MySQLHandshakeV10(parsing: try decodeAll(capture.serverRecords[0])[0].payload)
        let switchPacket = try decodeAll(capture.serverRecords[1], expectedSequenceID: 2)[0]
        XCTAssertTrue(MySQLAuthSwitchRequest.isAuthSwitchRequest(payload: switchPacket.payload))
        let request = try MySQLAuthSwitchRequest(parsing: switchPacket.payload)
        XCTAssertEqual(request.pluginName, MySQLAuthentication.nativePasswordPlugin)
        XCTAssertEqual(request.pluginData, handshake.authPluginData, "MariaDB reuses the handshake's nonce")
        XCTAssertEqual(encoded(request.encode), switchPacket.payload)
        let answer = try decodeAll(capture.clientRecords[1], expectedSequenceID: 3)[0]
        XCTAssertEqual(answer.payload.bytes, MySQLAuthentication.nativePasswordScramble(password: self.capturePassword, nonce: request.pluginData))
        XCTAssertEqual(try decodeAll(capture.serverRecords[2], expectedSequenceID: 4)[0].firstByte, 0x00)

        let wrong = try Capture.load("handshake_wrong_password")
        let err = try MySQLErrPacket(parsing: try decodeAll(wrong.serverRecords[1], expectedSequenceID: 2)[0].payload)
        XCTAssertEqual(err.code, 1045)
        XCTAssertEqual(err.sqlState, "28000")
        XCTAssertTrue(err.message.hasPrefix("Access denied for user 'capture'@"), err.message)
    }

    /// With MARIADB_CLIENT_CACHE_METADATA, a column count carries a metadata-follows byte, in
    /// text results too; an execute skips the definitions the prepare response already gave.
    func testCacheMetadataFlagAfterTheColumnCount() throws {
        let select = try self.replay(try Capture.load("select_cache_metadata"))[0].packets
        XCTAssertEqual(select[0].payload.bytes, [1, 1], "one column, metadata follows")
        XCTAssertEqual(select.count, 1 + 1 + 2 + 1, "count, a definition, 2 rows, the 0xFE OK")
        for name in ["execute_cache_metadata_1", "execute_cache_metadata_2"] {
            let execute = try self.replay(try Capture.load(name))[0].packets
            XCTAssertEqual(execute[0].payload.bytes, [2, 0], "\(name): two columns, metadata skipped")
            XCTAssertEqual(execute.count, 1 + 2 + 1, "\(name): count, 2 binary rows, the 0xFE OK")
        }
    }

    /// The real server's 16 MB rows: one starting with 0xFE (a 9-byte field length), one whose
    /// payload is exactly 0xFFFFFF bytes; and a client's 17 MB statement.
    func testPayloadsOf16MBAndMoreFromTheRealServer() throws {
        for mode in ["eof", "deprecate_eof"] {
            let big = try self.replay(try Capture.load("big_row_\(mode)"))[0].packets
            let row = big[mode == "eof" ? 4 : 3]
            XCTAssertEqual(row.firstByte, 0xFE)
            XCTAssertEqual(row.wirePacketCount, 2)
            XCTAssertEqual(row.payload.readableBytes, 9 + 16_777_226 + 1 + 4)
            var fields = row.payload
            XCTAssertEqual(fields.readMySQLLengthEncodedSlice()?.readableBytes, 16_777_226)
            XCTAssertEqual(fields.readMySQLLengthEncodedString(), "tail")

            let exact = try self.replay(try Capture.load("exact_row_\(mode)"))[0].packets
            let exactRow = exact[mode == "eof" ? 3 : 2]
            XCTAssertEqual(exactRow.payload.readableBytes, 0xFF_FFFF)
            XCTAssertEqual(exactRow.wirePacketCount, 2, "continued by an empty packet")

            let statement = try Capture.load("big_statement_\(mode)")
            let command = try decodeAll(statement.clientRecords[0], expectedSequenceID: 0)
            XCTAssertEqual(command.count, 1)
            XCTAssertEqual(command[0].wirePacketCount, 2)
            XCTAssertEqual(MySQLCommandPacket.command(of: command[0].payload), .query)
            let sql = try XCTUnwrap(MySQLCommandPacket.textArgument(of: command[0].payload))
            XCTAssertEqual(sql.readableBytes, "SELECT LENGTH('') AS n".utf8.count + 17 * 1024 * 1024)
            var reencoded = ByteBuffer()
            XCTAssertEqual(reencoded.writeMySQLCommand(.query, String(buffer: sql)), 2)
            XCTAssertEqual(reencoded, statement.clientRecords[0])
            // SELECT LENGTH(...) returned 17825792.
            let result = try self.replay(statement)[0].packets
            var value = result[mode == "eof" ? 3 : 2].payload
            XCTAssertEqual(value.readMySQLLengthEncodedString(), "17825792")
        }
    }
}
