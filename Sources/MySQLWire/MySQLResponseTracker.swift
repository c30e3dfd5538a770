import NIOCore

/// Tells where a command's response ends, from the server's packets alone.
///
/// A proxy must know when the backend has finished answering a command (to return it to the
/// pool, to send the next queued command, to report the status flags) without parsing rows. The
/// tracker follows the response's grammar on each packet's first byte, length and, for OK/EOF,
/// status flags, reading bytes in place: no allocation per packet.
///
/// Feed it each logical payload (``MySQLPacketDecoder`` joins continuation packets), or, for a
/// proxy that forwards wire packets untouched, only the first wire packet of each logical
/// payload (skip the packets that follow a 0xFFFFFF-byte one): the tracker reads only a
/// payload's first bytes, and its length only to tell a 16 MB row starting with 0xFE (whose
/// first wire packet is 0xFFFFFF bytes long) from an EOF or OK (always shorter).
///
/// The grammar followed, for a `.response` (COM_QUERY, COM_STMT_EXECUTE, ...):
/// - OK (0x00, or 0xFE under DEPRECATE_EOF as for COM_SET_OPTION), ERR (0xFF), or LOCAL INFILE
///   (0xFB: the client sends the file, then the server's OK/ERR follows), or
/// - a result set: column count (length-encoded; followed by a metadata-follows byte when
///   CLIENT_OPTIONAL_RESULTSET_METADATA or MariaDB's cache-metadata capability is negotiated) →
///   that many column definitions (none when metadata is skipped) → EOF unless DEPRECATE_EOF →
///   rows (text, or binary starting 0x00) → EOF, OK with 0xFE under DEPRECATE_EOF, or ERR.
/// - SERVER_MORE_RESULTS_EXISTS on a final OK/EOF means another result follows (multi-statements,
///   CALL); an ERR always ends the response.
/// - A COM_STMT_EXECUTE that opens a cursor ends after the column definitions: its EOF (or, under
///   DEPRECATE_EOF, its 0xFE OK) carries SERVER_STATUS_CURSOR_EXISTS.
///
/// Not supported: metadata skipping in a COM_STMT_PREPARE response (MySQL 8's optional metadata:
/// the proxy strips CLIENT_OPTIONAL_RESULTSET_METADATA; MariaDB never sends it), compressed
/// protocols, and replication streams (the proxy refuses COM_BINLOG_DUMP and friends: their
/// response never ends).
///
/// Commands may be pipelined (MariaDB Connector/J sends COM_STMT_PREPARE and COM_STMT_EXECUTE
/// together): each ``commandSent(_:)`` queues an expectation, and each `.finished` step ends
/// the oldest one.
public struct MySQLResponseTracker: Sendable {
    /// The shape of response a command gets.
    public enum Expectation: Sendable, Hashable {
        /// OK, ERR, LOCAL INFILE or result sets (COM_QUERY, COM_INIT_DB, COM_PING,
        /// COM_STMT_EXECUTE, COM_RESET_CONNECTION, COM_SET_OPTION, COM_STMT_RESET, ...).
        case response
        /// COM_STMT_PREPARE: ERR, or a prepare OK followed by parameter and column definitions.
        case prepareResponse
        /// COM_FIELD_LIST: column definitions until EOF (or 0xFE OK), or ERR.
        case fieldList
        /// COM_STMT_FETCH: binary rows until EOF (or 0xFE OK), or ERR.
        case fetch
        /// COM_STATISTICS: one string packet (no header byte).
        case statistics
        /// COM_CHANGE_USER: an authentication exchange (AuthSwitchRequest 0xFE, AuthMoreData
        /// 0x01) that ends with OK or ERR.
        case authentication
        /// No response (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA, COM_QUIT).
        case none
    }

    /// What a server packet meant for the command in flight.
    public enum Step: Sendable, Hashable {
        /// The response continues.
        case inProgress
        /// LOCAL INFILE (0xFB): the client now sends the file's packets and an empty one; the
        /// tracker then awaits the server's OK/ERR.
        case localInfileRequested
        /// The oldest command's response is complete, with the final status flags; for an ERR
        /// (`wasError`) the status is the last one known (less MORE_RESULTS_EXISTS), since ERR
        /// carries none.
        case finished(MySQLServerStatus, wasError: Bool)
    }

    /// Where in a response the tracker stands.
    enum State: Sendable, Hashable {
        case idle
        /// The first packet of a response, or of the next result after MORE_RESULTS_EXISTS.
        case resultStart
        case columnDefinitions(remaining: Int)
        /// The EOF after the column definitions (no DEPRECATE_EOF).
        case columnsEOF
        case rows
        case prepareOK
        case prepareParameters(remaining: Int, columns: Int)
        case prepareParametersEOF(columns: Int)
        case prepareColumns(remaining: Int)
        case prepareColumnsEOF
        case fieldList
        case fetchRows
        case statistics
        case authentication
    }

    /// The capabilities negotiated with the backend (DEPRECATE_EOF, metadata skipping, ...).
    public let capabilities: MySQLCapabilities
    private let deprecateEOF: Bool
    private let metadataFlag: Bool
    private let statusInOK: Bool
    private var state: State = .idle
    /// Expectations of commands sent while an earlier response is in flight (pipelining). Empty,
    /// and so never allocated, for clients that wait for each response.
    private var pending: [Expectation] = []
    /// The status flags of the last OK or EOF packet seen: an ERR has none, so this is what a
    /// session reasons with after one.
    public private(set) var lastStatus: MySQLServerStatus
    /// Whether the response that last finished ended with an ERR or reported warnings in any of
    /// its OK or EOF packets: the server's diagnostics area then holds conditions that SHOW
    /// WARNINGS, SHOW ERRORS, GET DIAGNOSTICS and @@warning_count read on that connection.
    public private(set) var lastResponseLeftConditions = false
    /// Warnings reported so far by the response in flight.
    private var warningsInResponse = false
    /// How the last result of the response that last finished ended, and how many results it
    /// had: what `ROW_COUNT()` and `FOUND_ROWS()` answer next on that connection (a session
    /// that answers them itself follows them here).
    public private(set) var lastResult: MySQLResultSummary = .other
    public private(set) var resultsInLastResponse = 0
    /// The rows of the last result set of that response (nil: it had none).
    public private(set) var rowsOfLastResultSetInLastResponse: UInt64?
    private var resultsInResponse = 0
    private var rowsOfLastResultSet: UInt64?
    private var rowsInResult: UInt64 = 0

    /// Creates a tracker for a backend connection with the negotiated `capabilities`;
    /// `initialStatus` is the handshake's status (autocommit, normally).
    public init(capabilities: MySQLCapabilities, initialStatus: MySQLServerStatus = .autocommit) {
        self.capabilities = capabilities
        self.deprecateEOF = capabilities.contains(.deprecateEOF)
        self.metadataFlag = !capabilities.isDisjoint(with: [.optionalResultsetMetadata, .mariadbCacheMetadata])
        self.statusInOK = !capabilities.isDisjoint(with: [.protocol41, .transactions])
        self.lastStatus = initialStatus
    }

    /// Whether no response is outstanding: the backend is between commands.
    public var isIdle: Bool { self.state == .idle }

    /// Whether the next packet starts a response or the next result of one: there, a packet
    /// starting 0x00 is an OK packet (a session rewrites OKs for clients that did not negotiate
    /// CLIENT_SESSION_TRACK, whose format differs).
    public var atResultStart: Bool { self.state == .resultStart }

    /// Whether the next packet is a COM_STMT_PREPARE's first (its OK, with the statement id).
    public var atPrepareOK: Bool { self.state == .prepareOK }

    /// The number of commands whose responses have not finished (the one in flight included).
    public var outstandingResponses: Int { self.state == .idle ? 0 : 1 + self.pending.count }

    /// The response shape of each command.
    public static func expectation(for command: MySQLCommand) -> Expectation {
        switch command {
        case .quit, .stmtClose, .stmtSendLongData:
            return .none
        case .stmtPrepare:
            return .prepareResponse
        case .fieldList:
            return .fieldList
        case .stmtFetch:
            return .fetch
        case .statistics:
            return .statistics
        case .changeUser:
            return .authentication
        case .sleep, .initDB, .query, .createDB, .dropDB, .refresh, .shutdown, .processInfo, .connect, .processKill,
             .debug, .ping, .time, .delayedInsert, .binlogDump, .tableDump, .connectOut, .registerSlave, .stmtExecute,
             .stmtReset, .setOption, .daemon, .binlogDumpGTID, .resetConnection, .stmtBulkExecute, .multi:
            return .response
        }
    }

    /// Records that a command was sent to the server; `.none` changes nothing.
    public mutating func commandSent(_ expectation: Expectation) {
        guard expectation != .none else { return }
        if self.state == .idle {
            self.state = Self.initialState(expectation)
        } else {
            self.pending.append(expectation)
        }
    }

    /// Forgets every outstanding response (after the connection was reset out of band, or to
    /// reuse the value for a new connection with the same capabilities).
    public mutating func reset(status: MySQLServerStatus = .autocommit) {
        self.state = .idle
        self.pending.removeAll()
        self.lastStatus = status
        self.lastResponseLeftConditions = false
        self.warningsInResponse = false
        self.resultsInResponse = 0
        self.rowsOfLastResultSet = nil
    }

    private static func initialState(_ expectation: Expectation) -> State {
        switch expectation {
        case .response: return .resultStart
        case .prepareResponse: return .prepareOK
        case .fieldList: return .fieldList
        case .fetch: return .fetchRows
        case .statistics: return .statistics
        case .authentication: return .authentication
        case .none: return .idle
        }
    }

    /// Feeds one server packet's logical payload.
    ///
    /// - Throws: ``MySQLWireError/unexpectedPacket(_:)`` for a packet while idle (a server
    ///   that kills a connection sends an ERR first: close the backend) or out of grammar, and
    ///   ``MySQLWireError/malformed(_:)`` for a truncated OK/EOF or column count. The tracker
    ///   is then unusable, as is the connection.
    public mutating func serverPacket(_ payload: ByteBuffer) throws(MySQLWireError) -> Step {
        let start = payload.readerIndex
        let length = payload.readableBytes
        guard let first = payload.getInteger(at: start, as: UInt8.self) else {
            if self.state == .statistics { return self.finish(self.lastStatus, wasError: false) }
            throw .malformed("empty server packet")
        }
        // A MariaDB progress report (ERR with code 0xFFFF) never ends a response.
        if first == 0xFF, length >= 3, self.state != .idle,
           payload.getInteger(at: start + 1, endianness: .little, as: UInt16.self) == 0xFFFF {
            return .inProgress
        }
        // 0xFE below 0xFFFFFF bytes is an EOF or an OK that replaces it; a row can start with
        // 0xFE only for a first field of 16 MB or more (a 9-byte length), a longer payload.
        let isTerminator = first == 0xFE && length < MySQLPacketHeader.maxPacketPayload

        switch self.state {
        case .idle:
            throw .unexpectedPacket("server packet (first byte \(first)) while no command is in flight")

        case .resultStart:
            switch first {
            case 0x00:
                self.noteOK(payload)
                return self.resultEnded(try self.okStatus(payload))
            case 0xFF:
                return self.finish(self.lastStatus, wasError: true)
            case 0xFB:
                return .localInfileRequested
            default:
                if isTerminator {
                    self.noteOK(payload)
                    return self.resultEnded(try self.terminatorStatus(payload))
                }
                self.rowsInResult = 0
                guard let (count, width) = payload.getMySQLLengthEncodedInteger(at: start), count > 0,
                      count <= UInt64(Int32.max)
                else { throw .malformed("invalid column count") }
                var metadataFollows = true
                if self.metadataFlag, length > width {
                    metadataFollows = payload.getInteger(at: start + width, as: UInt8.self) != 0
                }
                self.state = metadataFollows ? .columnDefinitions(remaining: Int(count)) : self.afterColumnDefinitions
                return .inProgress
            }

        case .columnDefinitions(let remaining):
            if first == 0xFF { return self.finish(self.lastStatus, wasError: true) }
            self.state = remaining > 1 ? .columnDefinitions(remaining: remaining - 1) : self.afterColumnDefinitions
            return .inProgress

        case .columnsEOF:
            if first == 0xFF { return self.finish(self.lastStatus, wasError: true) }
            guard isTerminator else { throw .unexpectedPacket("expected an EOF after the column definitions") }
            let status = try self.terminatorStatus(payload)
            self.lastStatus = status
            if status.contains(.cursorExists) {
                // COM_STMT_EXECUTE opened a cursor: rows come with COM_STMT_FETCH.
                self.resultsInResponse += 1
                self.lastResult = .other
                return self.finish(status, wasError: false)
            }
            self.state = .rows
            return .inProgress

        case .rows:
            if first == 0xFF { return self.finish(self.lastStatus, wasError: true) }
            guard isTerminator else {
                self.rowsInResult &+= 1
                return .inProgress
            }
            self.resultsInResponse += 1
            self.lastResult = .resultSet(rows: self.rowsInResult)
            self.rowsOfLastResultSet = self.rowsInResult
            return self.resultEnded(try self.terminatorStatus(payload))

        case .prepareOK:
            if first == 0xFF { return self.finish(self.lastStatus, wasError: true) }
            guard first == 0x00, length >= 9,
                  let columns = payload.getInteger(at: start + 5, endianness: .little, as: UInt16.self),
                  let parameters = payload.getInteger(at: start + 7, endianness: .little, as: UInt16.self)
            else { throw .unexpectedPacket("expected a COM_STMT_PREPARE OK") }
            return self.prepareNext(parameters: Int(parameters), columns: Int(columns))

        case .prepareParameters(let remaining, let columns):
            if remaining > 1 {
                self.state = .prepareParameters(remaining: remaining - 1, columns: columns)
                return .inProgress
            }
            if self.deprecateEOF { return self.prepareNext(parameters: 0, columns: columns) }
            self.state = .prepareParametersEOF(columns: columns)
            return .inProgress

        case .prepareParametersEOF(let columns):
            guard isTerminator else { throw .unexpectedPacket("expected an EOF after the parameter definitions") }
            self.lastStatus = try self.terminatorStatus(payload)
            return self.prepareNext(parameters: 0, columns: columns)

        case .prepareColumns(let remaining):
            if remaining > 1 {
                self.state = .prepareColumns(remaining: remaining - 1)
                return .inProgress
            }
            if self.deprecateEOF { return self.finish(self.lastStatus, wasError: false) }
            self.state = .prepareColumnsEOF
            return .inProgress

        case .prepareColumnsEOF:
            guard isTerminator else { throw .unexpectedPacket("expected an EOF after the column definitions") }
            return self.finish(try self.terminatorStatus(payload), wasError: false)

        case .fieldList, .fetchRows:
            if first == 0xFF { return self.finish(self.lastStatus, wasError: true) }
            guard isTerminator else { return .inProgress }
            return self.finish(try self.terminatorStatus(payload), wasError: false)

        case .statistics:
            return self.finish(self.lastStatus, wasError: first == 0xFF)

        case .authentication:
            switch first {
            case 0x00:
                return self.finish(try self.okStatus(payload), wasError: false)
            case 0xFF:
                return self.finish(self.lastStatus, wasError: true)
            case 0xFE, 0x01:
                return .inProgress
            default:
                throw .unexpectedPacket("unexpected packet (first byte \(first)) during authentication")
            }
        }
    }

    private var afterColumnDefinitions: State {
        self.deprecateEOF ? .rows : .columnsEOF
    }

    /// A result (OK, or a result set's final EOF/OK) ended: another follows with
    /// MORE_RESULTS_EXISTS, else the command is finished.
    private mutating func resultEnded(_ status: MySQLServerStatus) -> Step {
        if status.contains(.moreResultsExist) {
            self.lastStatus = status
            self.state = .resultStart
            return .inProgress
        }
        return self.finish(status, wasError: false)
    }

    private mutating func prepareNext(parameters: Int, columns: Int) -> Step {
        if parameters > 0 {
            self.state = .prepareParameters(remaining: parameters, columns: columns)
            return .inProgress
        }
        if columns > 0 {
            self.state = .prepareColumns(remaining: columns)
            return .inProgress
        }
        return self.finish(self.lastStatus, wasError: false)
    }

    private mutating func finish(_ status: MySQLServerStatus, wasError: Bool) -> Step {
        // An ERR after a result that announced more results ends the response all the same.
        let status = wasError ? status.subtracting(.moreResultsExist) : status
        self.lastStatus = status
        if wasError {
            self.lastResult = .error
            self.resultsInResponse += 1
        }
        self.resultsInLastResponse = self.resultsInResponse
        self.resultsInResponse = 0
        self.rowsOfLastResultSetInLastResponse = self.rowsOfLastResultSet
        self.rowsOfLastResultSet = nil
        self.lastResponseLeftConditions = wasError || self.warningsInResponse
        self.warningsInResponse = false
        if self.pending.isEmpty {
            self.state = .idle
        } else {
            self.state = Self.initialState(self.pending.removeFirst())
        }
        return .finished(status, wasError: wasError)
    }

    /// An OK that is a result of its own (not a result set's end): its affected rows.
    private mutating func noteOK(_ payload: ByteBuffer) {
        self.resultsInResponse += 1
        if let (affected, _) = payload.getMySQLLengthEncodedInteger(at: payload.readerIndex + 1) {
            self.lastResult = .ok(affectedRows: affected)
        } else {
            self.lastResult = .other
        }
    }

    /// The status of an OK packet (0x00 or 0xFE header), read in place; its warning count (after
    /// the status) is noted.
    private mutating func okStatus(_ payload: ByteBuffer) throws(MySQLWireError) -> MySQLServerStatus {
        guard self.statusInOK else { return self.lastStatus }
        var index = payload.readerIndex + 1
        guard let (_, affectedWidth) = payload.getMySQLLengthEncodedInteger(at: index) else {
            throw .malformed("truncated OK packet")
        }
        index += affectedWidth
        guard let (_, insertIDWidth) = payload.getMySQLLengthEncodedInteger(at: index),
              let status = payload.getInteger(at: index + insertIDWidth, endianness: .little, as: UInt16.self)
        else { throw .malformed("truncated OK packet") }
        if let warnings = payload.getInteger(at: index + insertIDWidth + 2, endianness: .little, as: UInt16.self),
           warnings > 0 {
            self.warningsInResponse = true
        }
        return MySQLServerStatus(rawValue: status)
    }

    /// The status of a 0xFE terminator: an EOF (5 bytes: header, warnings, status; 1 byte
    /// before 4.1) or an OK with a 0xFE header (at least 7 bytes).
    private mutating func terminatorStatus(_ payload: ByteBuffer) throws(MySQLWireError) -> MySQLServerStatus {
        let length = payload.readableBytes
        if length <= 5 {
            guard let status = payload.getInteger(at: payload.readerIndex + 3, endianness: .little, as: UInt16.self) else {
                return self.lastStatus
            }
            if let warnings = payload.getInteger(at: payload.readerIndex + 1, endianness: .little, as: UInt16.self),
               warnings > 0 {
                self.warningsInResponse = true
            }
            return MySQLServerStatus(rawValue: status)
        }
        return try self.okStatus(payload)
    }
}

/// How a result ended (`MySQLResponseTracker.lastResult`).
public enum MySQLResultSummary: Sendable, Hashable {
    /// An OK packet with its affected rows.
    case ok(affectedRows: UInt64)
    /// A result set and the number of rows it carried.
    case resultSet(rows: UInt64)
    /// An ERR packet.
    case error
    /// Anything else (a prepare response, a cursor opened, field lists, statistics).
    case other
}
