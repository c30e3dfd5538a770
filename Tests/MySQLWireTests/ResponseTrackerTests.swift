import NIOCore
import XCTest

@testable import MySQLWire

/// The tracker over synthetic responses, one grammar rule per test; CaptureTests replays the real
/// server's.
final class ResponseTrackerTests: XCTestCase {
    let eofCaps: MySQLCapabilities = [.protocol41, .transactions, .multiResults, .psMultiResults, .sessionTrack]
    var deprecateCaps: MySQLCapabilities { self.eofCaps.union(.deprecateEOF) }

    // MARK: Packet builders

    func ok(_ status: MySQLServerStatus = .autocommit, eofReplacement: Bool = false, caps: MySQLCapabilities = .protocol41) -> ByteBuffer {
        encoded { MySQLOKPacket(affectedRows: 1, status: status).encode(into: &$0, capabilities: caps, asEOFReplacement: eofReplacement) }
    }

    func eof(_ status: MySQLServerStatus = .autocommit) -> ByteBuffer {
        encoded(MySQLEOFPacket(status: status).encode)
    }

    func err() -> ByteBuffer {
        encoded { MySQLErrPacket(code: 1146, sqlState: "42S02", message: "Table 't' doesn't exist").encode(into: &$0) }
    }

    func columnCount(_ count: UInt64, metadataFollows: UInt8? = nil) -> ByteBuffer {
        encoded {
            $0.writeMySQLLengthEncodedInteger(count)
            if let metadataFollows { $0.writeInteger(metadataFollows) }
        }
    }

    func columnDefinition(_ name: String = "c") -> ByteBuffer {
        encoded {
            for field in ["def", "db", "t", "t", name, name] { $0.writeMySQLLengthEncodedString(field) }
            $0.writeMySQLLengthEncodedInteger(0x0C)
            $0.writeBytes([45, 0, 0xFF, 0, 0, 0, 0xFD, 0, 0, 0, 0, 0])
        }
    }

    func textRow(_ fields: [String?]) -> ByteBuffer {
        encoded {
            for field in fields {
                if let field { $0.writeMySQLLengthEncodedString(field) } else { $0.writeInteger(UInt8(0xFB)) }
            }
        }
    }

    func binaryRow() -> ByteBuffer {
        ByteBuffer(bytes: [0x00, 0x00, 0x01, 0x00, 0x00, 0x00])
    }

    func prepareOK(columns: UInt16, parameters: UInt16) -> ByteBuffer {
        encoded {
            $0.writeInteger(UInt8(0))
            $0.writeInteger(UInt32(1), endianness: .little)
            $0.writeInteger(columns, endianness: .little)
            $0.writeInteger(parameters, endianness: .little)
            $0.writeInteger(UInt8(0))
            $0.writeInteger(UInt16(0), endianness: .little)
        }
    }

    /// Feeds `packets` and returns the steps.
    func run(_ tracker: inout MySQLResponseTracker, _ packets: [ByteBuffer], file: StaticString = #filePath, line: UInt = #line) -> [MySQLResponseTracker.Step] {
        packets.map { packet in
            do {
                return try tracker.serverPacket(packet)
            } catch {
                XCTFail("\(error)", file: file, line: line)
                return .inProgress
            }
        }
    }

    func inProgress(_ count: Int) -> [MySQLResponseTracker.Step] {
        Array(repeating: .inProgress, count: count)
    }

    // MARK: Simple responses

    func testOKAndERREndACommand() throws {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        XCTAssertTrue(tracker.isIdle)
        tracker.commandSent(.response)
        XCTAssertFalse(tracker.isIdle)
        XCTAssertEqual(try tracker.serverPacket(self.ok([.autocommit, .inTransaction])), .finished([.autocommit, .inTransaction], wasError: false))
        XCTAssertTrue(tracker.isIdle)
        XCTAssertEqual(tracker.lastStatus, [.autocommit, .inTransaction])

        tracker.commandSent(.response)
        XCTAssertEqual(try tracker.serverPacket(self.err()), .finished([.autocommit, .inTransaction], wasError: true))
        XCTAssertTrue(tracker.isIdle)
    }

    func testEOFAsTheWholeResponse() throws {
        // COM_SET_OPTION, COM_DEBUG: an EOF (or its 0xFE OK) alone.
        for (caps, packet) in [(self.eofCaps, self.eof()), (self.deprecateCaps, self.ok(eofReplacement: true))] {
            var tracker = MySQLResponseTracker(capabilities: caps)
            tracker.commandSent(MySQLResponseTracker.expectation(for: .setOption))
            XCTAssertEqual(try tracker.serverPacket(packet), .finished(.autocommit, wasError: false))
        }
    }

    func testPacketWhileIdleIsRejected() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        XCTAssertThrowsError(try tracker.serverPacket(self.err())) { error in
            guard case .unexpectedPacket = error as? MySQLWireError else { return XCTFail("\(error)") }
        }
        tracker.commandSent(.none)
        XCTAssertTrue(tracker.isIdle)
    }

    // MARK: Result sets

    func testTextResultSetWithEOFs() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(.response)
        let steps = self.run(&tracker, [
            self.columnCount(2), self.columnDefinition(), self.columnDefinition(), self.eof(),
            self.textRow(["1", nil]), self.textRow([nil, "x"]), self.textRow(["", ""]), self.eof([.autocommit, .noIndexUsed]),
        ])
        XCTAssertEqual(steps, self.inProgress(7) + [.finished([.autocommit, .noIndexUsed], wasError: false)])
        XCTAssertTrue(tracker.isIdle)
    }

    func testTextResultSetWithDeprecateEOF() {
        var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        tracker.commandSent(.response)
        let steps = self.run(&tracker, [
            self.columnCount(1), self.columnDefinition(), self.textRow(["1"]),
            self.ok([.autocommit, .inTransaction], eofReplacement: true, caps: self.deprecateCaps),
        ])
        XCTAssertEqual(steps, self.inProgress(3) + [.finished([.autocommit, .inTransaction], wasError: false)])
    }

    func testEmptyResultSet() {
        var eofTracker = MySQLResponseTracker(capabilities: self.eofCaps)
        eofTracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&eofTracker, [self.columnCount(1), self.columnDefinition(), self.eof(), self.eof()]),
            self.inProgress(3) + [.finished(.autocommit, wasError: false)]
        )
        var deprecateTracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        deprecateTracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&deprecateTracker, [self.columnCount(1), self.columnDefinition(), self.ok(eofReplacement: true)]),
            self.inProgress(2) + [.finished(.autocommit, wasError: false)]
        )
    }

    func testErrorInsteadOfTheFinalEOF() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&tracker, [self.columnCount(1), self.columnDefinition(), self.eof(), self.textRow(["1"]), self.err()]),
            self.inProgress(4) + [.finished(.autocommit, wasError: true)]
        )
        XCTAssertTrue(tracker.isIdle)
    }

    func testRowsThatLookLikeOtherPackets() {
        // Text rows starting with 0x00 (an empty... no: a 0-length string), 0xFB (NULL), 0xFC
        // (a 251+ byte field), and binary rows starting with 0x00 are rows, not OK/LOCAL INFILE.
        var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        tracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&tracker, [
                self.columnCount(1), self.columnDefinition(),
                self.textRow([""]), self.textRow([nil]), self.textRow([String(repeating: "x", count: 300)]), self.binaryRow(),
                self.ok(eofReplacement: true),
            ]),
            self.inProgress(6) + [.finished(.autocommit, wasError: false)]
        )
    }

    /// A row whose first field is 16 MB or more starts with 0xFE (a 9-byte length): it is told
    /// from an EOF or a 0xFE OK by the payload's length.
    func testHugeRowStartingWith0xFEIsARow() throws {
        let field = String(repeating: "z", count: 1 << 24)
        let row = self.textRow([field])
        XCTAssertEqual(row.getInteger(at: 0, as: UInt8.self), 0xFE)
        XCTAssertGreaterThan(row.readableBytes, 0xFF_FFFF)
        // Through the framing too: split on the wire, joined by the decoder.
        var wire = ByteBuffer()
        wire.writeMySQLPacket(sequenceID: 3, payload: row)
        let joined = try decodeAll(wire)
        XCTAssertEqual(joined.count, 1)

        for caps in [self.eofCaps, self.deprecateCaps] {
            var tracker = MySQLResponseTracker(capabilities: caps)
            tracker.commandSent(.response)
            var packets = [self.columnCount(1), self.columnDefinition()]
            if !caps.contains(.deprecateEOF) { packets.append(self.eof()) }
            packets += [joined[0].payload, caps.contains(.deprecateEOF) ? self.ok(eofReplacement: true) : self.eof()]
            XCTAssertEqual(self.run(&tracker, packets), self.inProgress(packets.count - 1) + [.finished(.autocommit, wasError: false)])
        }
    }

    func testMultipleResultsFollowMoreResultsExist() {
        let more: MySQLServerStatus = [.autocommit, .moreResultsExist]
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(.response)
        // SELECT 1; INSERT ...; SELECT 2 — and a CALL's final OK.
        let steps = self.run(&tracker, [
            self.columnCount(1), self.columnDefinition(), self.eof(), self.textRow(["1"]), self.eof(more),
            self.ok(more),
            self.columnCount(1), self.columnDefinition(), self.eof(), self.textRow(["2"]), self.eof(more),
            self.ok(.autocommit),
        ])
        XCTAssertEqual(steps, self.inProgress(11) + [.finished(.autocommit, wasError: false)])
        XCTAssertEqual(tracker.lastStatus, .autocommit)
    }

    func testErrorEndsAMultiStatementResponse() {
        var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        tracker.commandSent(.response)
        let steps = self.run(&tracker, [
            self.columnCount(1), self.columnDefinition(), self.textRow(["1"]),
            self.ok([.autocommit, .moreResultsExist], eofReplacement: true), self.err(),
        ])
        XCTAssertEqual(steps, self.inProgress(4) + [.finished(.autocommit, wasError: true)])
        XCTAssertTrue(tracker.isIdle)
    }

    func testLocalInfile() throws {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(.response)
        XCTAssertEqual(try tracker.serverPacket(ByteBuffer(bytes: [0xFB] + Array("rows.csv".utf8))), .localInfileRequested)
        XCTAssertFalse(tracker.isIdle)
        XCTAssertEqual(try tracker.serverPacket(self.ok()), .finished(.autocommit, wasError: false))

        // In a multi-statement, the OK after the file may announce more results.
        tracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&tracker, [ByteBuffer(bytes: [0xFB, 0x61]), self.ok([.autocommit, .moreResultsExist]), self.err()]),
            [.localInfileRequested, .inProgress, .finished(.autocommit, wasError: true)]
        )
    }

    // MARK: Metadata skipping

    func testSkippedMetadata() {
        for cap in [MySQLCapabilities.mariadbCacheMetadata, .optionalResultsetMetadata] {
            var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps.union(cap))
            tracker.commandSent(.response)
            XCTAssertEqual(
                self.run(&tracker, [self.columnCount(2, metadataFollows: 0), self.binaryRow(), self.ok(eofReplacement: true)]),
                self.inProgress(2) + [.finished(.autocommit, wasError: false)]
            )
            tracker.commandSent(.response)
            XCTAssertEqual(
                self.run(&tracker, [
                    self.columnCount(2, metadataFollows: 1), self.columnDefinition(), self.columnDefinition(), self.binaryRow(),
                    self.ok(eofReplacement: true),
                ]),
                self.inProgress(4) + [.finished(.autocommit, wasError: false)]
            )
            // Without DEPRECATE_EOF the metadata's EOF stays.
            var eofTracker = MySQLResponseTracker(capabilities: self.eofCaps.union(cap))
            eofTracker.commandSent(.response)
            XCTAssertEqual(
                self.run(&eofTracker, [self.columnCount(2, metadataFollows: 0), self.eof(), self.binaryRow(), self.eof()]),
                self.inProgress(3) + [.finished(.autocommit, wasError: false)]
            )
        }
        // Not negotiated: a byte after the count is not read as a flag (there is none).
        var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        tracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&tracker, [self.columnCount(1), self.columnDefinition(), self.ok(eofReplacement: true)]),
            self.inProgress(2) + [.finished(.autocommit, wasError: false)]
        )
    }

    // MARK: Prepared statements

    func testPrepareResponses() {
        for caps in [self.eofCaps, self.deprecateCaps] {
            let eofs = !caps.contains(.deprecateEOF)
            var tracker = MySQLResponseTracker(capabilities: caps)
            tracker.commandSent(MySQLResponseTracker.expectation(for: .stmtPrepare))
            var packets = [self.prepareOK(columns: 2, parameters: 1), self.columnDefinition("?")]
            if eofs { packets.append(self.eof()) }
            packets += [self.columnDefinition(), self.columnDefinition()]
            if eofs { packets.append(self.eof()) }
            XCTAssertEqual(self.run(&tracker, packets), self.inProgress(packets.count - 1) + [.finished(.autocommit, wasError: false)])

            for (columns, parameters) in [(0, 2), (3, 0), (0, 0)] as [(UInt16, UInt16)] {
                tracker.commandSent(.prepareResponse)
                var packets = [self.prepareOK(columns: columns, parameters: parameters)]
                for _ in 0..<parameters { packets.append(self.columnDefinition()) }
                if eofs, parameters > 0 { packets.append(self.eof()) }
                for _ in 0..<columns { packets.append(self.columnDefinition()) }
                if eofs, columns > 0 { packets.append(self.eof()) }
                XCTAssertEqual(
                    self.run(&tracker, packets), self.inProgress(packets.count - 1) + [.finished(.autocommit, wasError: false)],
                    "\(columns) columns, \(parameters) parameters, EOFs \(eofs)"
                )
            }
            tracker.commandSent(.prepareResponse)
            XCTAssertEqual(self.run(&tracker, [self.err()]), [.finished(.autocommit, wasError: true)])
        }
    }

    func testExecuteWithBinaryRowsAndCursor() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(MySQLResponseTracker.expectation(for: .stmtExecute))
        XCTAssertEqual(
            self.run(&tracker, [self.columnCount(1), self.columnDefinition(), self.eof(), self.binaryRow(), self.binaryRow(), self.eof()]),
            self.inProgress(5) + [.finished(.autocommit, wasError: false)]
        )

        // A cursor: the response ends at the EOF after the column definitions.
        let cursor: MySQLServerStatus = [.autocommit, .cursorExists]
        tracker.commandSent(.response)
        XCTAssertEqual(
            self.run(&tracker, [self.columnCount(1), self.columnDefinition(), self.eof(cursor)]),
            self.inProgress(2) + [.finished(cursor, wasError: false)]
        )
        tracker.commandSent(MySQLResponseTracker.expectation(for: .stmtFetch))
        XCTAssertEqual(self.run(&tracker, [self.binaryRow(), self.binaryRow(), self.eof(cursor)]), self.inProgress(2) + [.finished(cursor, wasError: false)])
        tracker.commandSent(.fetch)
        let last: MySQLServerStatus = [.autocommit, .lastRowSent]
        XCTAssertEqual(self.run(&tracker, [self.binaryRow(), self.eof(last)]), [.inProgress, .finished(last, wasError: false)])
        tracker.commandSent(.fetch)
        XCTAssertEqual(self.run(&tracker, [self.err()]), [.finished(last, wasError: true)])

        // Under DEPRECATE_EOF the cursor's end is a 0xFE OK.
        var deprecate = MySQLResponseTracker(capabilities: self.deprecateCaps)
        deprecate.commandSent(.response)
        XCTAssertEqual(
            self.run(&deprecate, [self.columnCount(1), self.columnDefinition(), self.ok(cursor, eofReplacement: true)]),
            self.inProgress(2) + [.finished(cursor, wasError: false)]
        )
    }

    // MARK: Other commands

    func testFieldListStatisticsAndNoResponse() {
        for (caps, end) in [(self.eofCaps, self.eof()), (self.deprecateCaps, self.ok(eofReplacement: true))] {
            var tracker = MySQLResponseTracker(capabilities: caps)
            tracker.commandSent(MySQLResponseTracker.expectation(for: .fieldList))
            XCTAssertEqual(self.run(&tracker, [self.columnDefinition(), self.columnDefinition(), end]), self.inProgress(2) + [.finished(.autocommit, wasError: false)])
            tracker.commandSent(.fieldList)
            XCTAssertEqual(self.run(&tracker, [self.err()]), [.finished(.autocommit, wasError: true)])
        }
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(MySQLResponseTracker.expectation(for: .statistics))
        XCTAssertEqual(self.run(&tracker, [ByteBuffer(string: "Uptime: 5  Threads: 1")]), [.finished(.autocommit, wasError: false)])
        for command in [MySQLCommand.stmtClose, .stmtSendLongData, .quit] {
            XCTAssertEqual(MySQLResponseTracker.expectation(for: command), .none)
            tracker.commandSent(MySQLResponseTracker.expectation(for: command))
            XCTAssertTrue(tracker.isIdle)
        }
    }

    func testChangeUserAuthenticationExchange() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(MySQLResponseTracker.expectation(for: .changeUser))
        let authSwitch = encoded(MySQLAuthSwitchRequest(pluginName: "mysql_native_password", pluginData: Array(repeating: 0x41, count: 20)).encode)
        XCTAssertEqual(
            self.run(&tracker, [authSwitch, encoded(MySQLAuthMoreData.fastAuthSuccess.encode), self.ok()]),
            [.inProgress, .inProgress, .finished(.autocommit, wasError: false)]
        )
    }

    func testProgressReportsDoNotEndAResponse() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps.union(.mariadbProgress))
        tracker.commandSent(.response)
        let progress = ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 1, 1, 1, 0x10, 0x27, 0x00, 0x00])
        XCTAssertEqual(self.run(&tracker, [progress, progress, self.ok()]), [.inProgress, .inProgress, .finished(.autocommit, wasError: false)])
    }

    func testPipelinedCommandsFinishInOrder() {
        var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        tracker.commandSent(.prepareResponse)
        tracker.commandSent(.none)
        tracker.commandSent(.response)
        tracker.commandSent(.response)
        XCTAssertEqual(tracker.outstandingResponses, 3)
        let steps = self.run(&tracker, [
            self.prepareOK(columns: 1, parameters: 0), self.columnDefinition(),
            self.columnCount(1), self.columnDefinition(), self.binaryRow(), self.ok(eofReplacement: true),
            self.err(),
        ])
        XCTAssertEqual(steps, [
            .inProgress, .finished(.autocommit, wasError: false),
            .inProgress, .inProgress, .inProgress, .finished(.autocommit, wasError: false),
            .finished(.autocommit, wasError: true),
        ])
        XCTAssertTrue(tracker.isIdle)
        XCTAssertEqual(tracker.outstandingResponses, 0)
    }

    func testMalformedResponsesThrow() {
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        tracker.commandSent(.response)
        XCTAssertThrowsError(try tracker.serverPacket(ByteBuffer()))
        tracker.reset()
        tracker.commandSent(.response)
        XCTAssertThrowsError(try tracker.serverPacket(ByteBuffer(bytes: [0x00, 0x01])), "truncated OK")
        tracker.reset()
        tracker.commandSent(.response)
        XCTAssertThrowsError(try tracker.serverPacket(ByteBuffer(bytes: [0xFC, 0x01])), "truncated column count")
        tracker.reset()
        tracker.commandSent(.response)
        _ = self.run(&tracker, [self.columnCount(1), self.columnDefinition()])
        XCTAssertThrowsError(try tracker.serverPacket(self.textRow(["1"])), "a row where the EOF belongs")
        tracker.reset()
        tracker.commandSent(.prepareResponse)
        XCTAssertThrowsError(try tracker.serverPacket(self.columnCount(1)), "not a prepare OK")
        XCTAssertTrue(
            MySQLResponseTracker.expectation(for: .query) == .response
                && MySQLResponseTracker.expectation(for: .resetConnection) == .response
                && MySQLResponseTracker.expectation(for: .stmtExecute) == .response
        )
    }

    /// `atResultStart` (what a session checks before rewriting an OK for a client without
    /// session tracking) holds where a 0x00 packet is an OK, and not among rows or in a prepare.
    func testAtResultStart() throws {
        var tracker = MySQLResponseTracker(capabilities: self.deprecateCaps)
        XCTAssertFalse(tracker.atResultStart)
        tracker.commandSent(.response)
        XCTAssertTrue(tracker.atResultStart)
        _ = try tracker.serverPacket(self.columnCount(1))
        XCTAssertFalse(tracker.atResultStart)
        _ = self.run(&tracker, [self.columnDefinition(), self.binaryRow()])
        XCTAssertFalse(tracker.atResultStart, "a binary row starts 0x00 too")
        _ = try tracker.serverPacket(self.ok([.autocommit, .moreResultsExist], eofReplacement: true))
        XCTAssertTrue(tracker.atResultStart, "the next result")
        _ = try tracker.serverPacket(self.ok())
        XCTAssertFalse(tracker.atResultStart)
        tracker.commandSent(.prepareResponse)
        XCTAssertFalse(tracker.atResultStart, "a prepare OK is not an OK packet")
    }
}

extension ResponseTrackerTests {
    /// A response that ends with an ERR or reports warnings in an OK or EOF leaves conditions in
    /// the server's diagnostics area (what SHOW WARNINGS reads); a clean one reports none.
    func testConditionsLeftByAResponse() throws {
        func warningOK(_ caps: MySQLCapabilities, eofReplacement: Bool = false) -> ByteBuffer {
            encoded { MySQLOKPacket(affectedRows: 0, status: .autocommit, warnings: 1)
                .encode(into: &$0, capabilities: caps, asEOFReplacement: eofReplacement) }
        }
        let warningEOF = encoded(MySQLEOFPacket(warnings: 2, status: .autocommit).encode)
        var tracker = MySQLResponseTracker(capabilities: self.eofCaps)
        XCTAssertFalse(tracker.lastResponseLeftConditions)
        // An OK with a warning (INSERT IGNORE of a duplicate).
        tracker.commandSent(.response)
        XCTAssertEqual(try tracker.serverPacket(warningOK(self.eofCaps)), .finished(.autocommit, wasError: false))
        XCTAssertTrue(tracker.lastResponseLeftConditions)
        // A clean OK.
        tracker.commandSent(.response)
        _ = try tracker.serverPacket(self.ok())
        XCTAssertFalse(tracker.lastResponseLeftConditions)
        // A result set whose final EOF reports warnings (SELECT CAST('x' AS INT)).
        tracker.commandSent(.response)
        _ = self.run(&tracker, [self.columnCount(1), self.columnDefinition(), self.eof(), self.textRow(["0"]), warningEOF])
        XCTAssertTrue(tracker.isIdle)
        XCTAssertTrue(tracker.lastResponseLeftConditions)
        // An ERR.
        tracker.commandSent(.response)
        _ = try tracker.serverPacket(self.err())
        XCTAssertTrue(tracker.lastResponseLeftConditions)
        // Warnings in an earlier result of a multi-result response count for the whole response.
        tracker.commandSent(.response)
        let moreWithWarning = encoded { MySQLOKPacket(affectedRows: 1, status: [.autocommit, .moreResultsExist], warnings: 1)
            .encode(into: &$0, capabilities: self.eofCaps) }
        XCTAssertEqual(self.run(&tracker, [moreWithWarning, self.ok()]), [.inProgress, .finished(.autocommit, wasError: false)])
        XCTAssertTrue(tracker.lastResponseLeftConditions)
        // Under DEPRECATE_EOF the final 0xFE OK carries the warnings.
        var deprecate = MySQLResponseTracker(capabilities: self.deprecateCaps)
        deprecate.commandSent(.response)
        _ = self.run(&deprecate, [self.columnCount(1), self.columnDefinition(), self.textRow(["0"]),
                                  warningOK(self.deprecateCaps, eofReplacement: true)])
        XCTAssertTrue(deprecate.isIdle)
        XCTAssertTrue(deprecate.lastResponseLeftConditions)
        deprecate.commandSent(.response)
        _ = self.run(&deprecate, [self.columnCount(1), self.columnDefinition(), self.textRow(["0"]),
                                  self.ok(eofReplacement: true, caps: self.deprecateCaps)])
        XCTAssertFalse(deprecate.lastResponseLeftConditions)
    }
}
