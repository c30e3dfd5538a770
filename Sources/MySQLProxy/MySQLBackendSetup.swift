import MySQLWire
import NIOCore

/// What a backend runs after its login and before it serves anyone, as a pure machine: the
/// session trackers the proxy's state tracking relies on, the proxy's init query, and a read of
/// the values a lease restores to (the baseline) and of `max_connections` when the pool's cap
/// needs it.
///
/// Each step is one COM_QUERY; the machine gives the next query to send and consumes each
/// response packet (`packetReceived`), so the handler only writes and frames.
public struct MySQLBackendSetup: Sendable {
    public enum Step: Sendable, Hashable {
        case trackers
        case initQuery
        case baseline
        case done
        case failed
    }

    public enum Action: Sendable, Hashable {
        /// Send this query (COM_QUERY, sequence 0).
        case send(String)
        /// Keep reading.
        case none
        /// Setup finished: the backend can be pooled.
        case ready
        /// Setup failed with the server's error (or the proxy's, for a malformed answer).
        case failed(MySQLErrPacket)
    }

    /// The statement that turns on what the proxy's session tracking needs. Reported values are
    /// the server's own spelling; `session_track_state_change` tells of state no variable names
    /// (user variables, temporary tables), which pins.
    public static let trackersQuery =
        "SET SESSION session_track_system_variables = '*', session_track_schema = ON, session_track_state_change = ON"

    /// Variables whose login value is not the global one (set by the handshake's character set,
    /// or by CLIENT_INTERACTIVE for wait_timeout): a lease restores them to these values rather
    /// than to DEFAULT.
    public static let baselineVariables = [
        "character_set_client", "character_set_connection", "character_set_results", "collation_connection",
        "wait_timeout",
    ]

    public private(set) var step: Step = .trackers
    /// Variable values a lease restores to (see `MySQLRestorePlan`): the baseline variables'
    /// login values and what the init query set.
    public private(set) var baseline: [String: String] = [:]
    /// `@@max_connections`, when read.
    public private(set) var maxConnections: Int?
    /// `@@global.max_prepared_stmt_count`, when read: the bound of the backends' statement caches.
    public private(set) var maxPreparedStatements: Int?
    /// Whether sql_mode has NO_BACKSLASH_ESCAPES after setup.
    public private(set) var noBackslashEscapes = false

    private let initQuery: String
    private var tracker: MySQLResponseTracker
    private var result = MySQLTextResultReader()
    private let capabilities: MySQLCapabilities

    public init(initQuery: String, capabilities: MySQLCapabilities) {
        self.initQuery = String(initQuery.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
        self.capabilities = capabilities
        self.tracker = MySQLResponseTracker(capabilities: capabilities)
    }

    /// The first query.
    public mutating func start() -> Action {
        step = .trackers
        tracker.commandSent(.response)
        return .send(Self.trackersQuery)
    }

    private var baselineQuery: String {
        "SELECT @@max_connections, @@session.sql_mode, @@global.max_prepared_stmt_count, "
            + Self.baselineVariables.map { "@@session.\($0)" }.joined(separator: ", ")
    }

    /// A response packet's payload.
    public mutating func packetReceived(_ payload: ByteBuffer) -> Action {
        let outcome: MySQLResponseTracker.Step
        do {
            if step == .baseline { try result.packet(payload, capabilities: capabilities) }
            outcome = try tracker.serverPacket(payload)
        } catch {
            step = .failed
            return .failed(MySQLErrPacket(code: 2027, sqlState: "HY000", message: "Malformed packet during setup: \(error)"))
        }
        switch outcome {
        case .inProgress:
            return .none
        case .localInfileRequested:
            step = .failed
            return .failed(MySQLErrPacket(code: 2027, sqlState: "HY000", message: "LOCAL INFILE request during setup"))
        case .finished(let status, let wasError):
            if wasError {
                step = .failed
                let error = (try? MySQLErrPacket(parsing: payload)) ?? MySQLErrPacket(
                    code: 1105, sqlState: "HY000", message: "Unknown error")
                return .failed(error)
            }
            if status.contains(.sessionStateChanged), step == .initQuery,
                let ok = try? MySQLOKPacket(parsing: payload, capabilities: capabilities.union(.sessionTrack))
            {
                for case .systemVariable(let name, let value) in ok.sessionStateChanges {
                    baseline[name.lowercased()] = value
                }
            }
            if status.contains(.moreResultsExist) {
                // A multi-statement init query: the next result follows.
                tracker.commandSent(.response)
                return .none
            }
            return advance()
        }
    }

    private mutating func advance() -> Action {
        switch step {
        case .trackers where !initQuery.isEmpty:
            step = .initQuery
            tracker.commandSent(.response)
            return .send(initQuery)
        case .trackers, .initQuery:
            step = .baseline
            tracker.commandSent(.response)
            return .send(baselineQuery)
        case .baseline:
            guard let row = result.rows.first, row.count == 3 + Self.baselineVariables.count else {
                step = .failed
                return .failed(MySQLErrPacket(code: 2027, sqlState: "HY000", message: "Unexpected answer to the setup query"))
            }
            maxConnections = row[0].flatMap { Int($0) }
            maxPreparedStatements = row[2].flatMap { Int($0) }
            noBackslashEscapes = (row[1] ?? "").uppercased().contains("NO_BACKSLASH_ESCAPES")
            for (index, name) in Self.baselineVariables.enumerated() where baseline[name] == nil {
                baseline[name] = row[3 + index] ?? ""
            }
            step = .done
            return .ready
        case .done, .failed:
            return .none
        }
    }
}

/// Collects the rows of a small text result set (the proxy's own queries: setup, health
/// checks). Values are the text protocol's strings; NULL is nil.
public struct MySQLTextResultReader: Sendable {
    public private(set) var rows: [[String?]] = []
    private var columns: Int?
    private var definitionsLeft = 0
    private var rowsStarted = false

    public init() {}

    /// Feeds a response packet (the tracker decides where the response ends; this only reads).
    public mutating func packet(_ payload: ByteBuffer, capabilities: MySQLCapabilities) throws(MySQLWireError) {
        guard let first = payload.getInteger(at: payload.readerIndex, as: UInt8.self) else {
            throw MySQLWireError.malformed("empty packet")
        }
        var buffer = payload
        if columns == nil {
            if first == 0x00 || first == 0xFF { return }  // OK or ERR: no result set
            guard let count = buffer.readMySQLLengthEncodedInteger() else { throw .malformed("column count") }
            columns = Int(count)
            definitionsLeft = Int(count)
            return
        }
        if definitionsLeft > 0 {
            definitionsLeft -= 1
            return
        }
        if !rowsStarted {
            rowsStarted = true
            if first == 0xFE, payload.readableBytes < 9, !capabilities.contains(.deprecateEOF) { return }
        }
        if first == 0xFF || (first == 0xFE && payload.readableBytes < 0xFF_FFFF && payload.readableBytes < 9)
            || (first == 0xFE && capabilities.contains(.deprecateEOF) && payload.readableBytes < 0xFF_FFFF)
        {
            return  // the end of the rows
        }
        var row: [String?] = []
        row.reserveCapacity(columns ?? 0)
        for _ in 0..<(columns ?? 0) {
            if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0xFB {
                buffer.moveReaderIndex(forwardBy: 1)
                row.append(nil)
            } else {
                guard let value = buffer.readMySQLLengthEncodedString() else { throw .malformed("row value") }
                row.append(value)
            }
        }
        rows.append(row)
    }
}
