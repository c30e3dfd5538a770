/// The capability flags a server offers in its handshake and a client picks in its response.
///
/// The flags decide the wire format of almost everything after the handshake (DEPRECATE_EOF
/// removes EOF packets, SESSION_TRACK adds data to OK packets, ...), so a proxy must know exactly
/// which were negotiated on each side. MySQL's flags fill the lower 32 bits; MariaDB's extended
/// flags, carried in filler bytes of the handshake packets when a peer lacks `CLIENT_MYSQL` (bit 0),
/// fill the upper 32 bits, so one value describes a MariaDB connection completely.
public struct MySQLCapabilities: OptionSet, Sendable, Hashable {
    /// The flags as one word: MySQL's in the lower 32 bits, MariaDB's extended ones above.
    public let rawValue: UInt64

    /// Wraps a word read from (or to be written to) a handshake packet.
    public init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    /// `CLIENT_LONG_PASSWORD`; MariaDB calls the same bit `CLIENT_MYSQL`: a MariaDB peer clears it
    /// to say "my filler bytes carry extended capabilities".
    public static let longPassword = MySQLCapabilities(rawValue: 1)
    /// MariaDB's name for ``longPassword``: set by MySQL peers, cleared by MariaDB ones.
    public static let clientMySQL = MySQLCapabilities.longPassword
    /// Affected rows count found (matched) rows instead of changed ones: changes OK packets' numbers.
    public static let foundRows = MySQLCapabilities(rawValue: 2)
    /// Column flags are sent as 2 bytes (always on in practice).
    public static let longFlag = MySQLCapabilities(rawValue: 4)
    /// The handshake response carries a default database.
    public static let connectWithDB = MySQLCapabilities(rawValue: 8)
    /// Refuse `db.table.column` syntax (legacy).
    public static let noSchema = MySQLCapabilities(rawValue: 0x10)
    /// zlib-compressed packets after the handshake (the proxy strips it: it forwards plain packets).
    public static let compress = MySQLCapabilities(rawValue: 0x20)
    /// Legacy ODBC behaviour (no wire effect).
    public static let odbc = MySQLCapabilities(rawValue: 0x40)
    /// The client can answer a LOCAL INFILE request with a file's contents.
    public static let localFiles = MySQLCapabilities(rawValue: 0x80)
    /// The parser ignores spaces before `(`.
    public static let ignoreSpace = MySQLCapabilities(rawValue: 0x100)
    /// The 4.1 protocol (status and warnings in OK/EOF, SQLSTATE in ERR); every current peer sets it.
    public static let protocol41 = MySQLCapabilities(rawValue: 0x200)
    /// interactive_timeout instead of wait_timeout for this session.
    public static let interactive = MySQLCapabilities(rawValue: 0x400)
    /// TLS: the client sends an SSLRequest and starts a TLS handshake before its real response.
    public static let ssl = MySQLCapabilities(rawValue: 0x800)
    /// Client-side only (no wire effect).
    public static let ignoreSigpipe = MySQLCapabilities(rawValue: 0x1000)
    /// Status flags in OK packets even without protocol41.
    public static let transactions = MySQLCapabilities(rawValue: 0x2000)
    /// Old flag for 4.1 protocol.
    public static let reserved = MySQLCapabilities(rawValue: 0x4000)
    /// 4.1 authentication: a 20-byte nonce and a length-prefixed auth response.
    public static let secureConnection = MySQLCapabilities(rawValue: 0x8000)
    /// Several statements in one COM_QUERY.
    public static let multiStatements = MySQLCapabilities(rawValue: 1 << 16)
    /// Several result sets for one COM_QUERY (CALL, multi-statements).
    public static let multiResults = MySQLCapabilities(rawValue: 1 << 17)
    /// Several result sets for one COM_STMT_EXECUTE.
    public static let psMultiResults = MySQLCapabilities(rawValue: 1 << 18)
    /// Authentication plugins: plugin names in the handshake, AuthSwitchRequest.
    public static let pluginAuth = MySQLCapabilities(rawValue: 1 << 19)
    /// Connection attributes (program name, driver version, ...) in the handshake response.
    public static let connectAttrs = MySQLCapabilities(rawValue: 1 << 20)
    /// The auth response in the handshake response is length-encoded (may exceed 255 bytes).
    public static let pluginAuthLenencClientData = MySQLCapabilities(rawValue: 1 << 21)
    /// The client can handle a sandboxed session for an expired password.
    public static let canHandleExpiredPasswords = MySQLCapabilities(rawValue: 1 << 22)
    /// OK packets carry session-state changes (system variables, schema, ...).
    public static let sessionTrack = MySQLCapabilities(rawValue: 1 << 23)
    /// No EOF packets: column definitions end without one, and result sets end with an OK whose
    /// header is 0xFE.
    public static let deprecateEOF = MySQLCapabilities(rawValue: 1 << 24)
    /// MySQL 8: a result set may omit its column definitions (a flag after the column count).
    public static let optionalResultsetMetadata = MySQLCapabilities(rawValue: 1 << 25)
    /// MySQL 8.0.18: zstd-compressed packets (stripped by the proxy, like ``compress``).
    public static let zstdCompression = MySQLCapabilities(rawValue: 1 << 26)
    /// MySQL 8.0.23: COM_QUERY and COM_STMT_EXECUTE carry query attributes (stripped by the proxy).
    public static let queryAttributes = MySQLCapabilities(rawValue: 1 << 27)
    /// MySQL 8.0.27: multi-factor authentication (AuthNextFactor packets).
    public static let multiFactorAuth = MySQLCapabilities(rawValue: 1 << 28)
    /// Client-side: verify the server's certificate (no wire effect).
    public static let sslVerifyServerCert = MySQLCapabilities(rawValue: 1 << 30)
    /// Client-side: keep options after a failed connect (no wire effect).
    public static let rememberOptions = MySQLCapabilities(rawValue: 1 << 31)

    /// MariaDB: progress reports (ERR packets with code 0xFFFF) during long statements.
    public static let mariadbProgress = MySQLCapabilities(rawValue: 1 << 32)
    /// MariaDB: COM_MULTI (several commands in one packet; removed in 10.6).
    public static let mariadbComMulti = MySQLCapabilities(rawValue: 1 << 33)
    /// MariaDB: COM_STMT_BULK_EXECUTE (array binding).
    public static let mariadbStmtBulkOperations = MySQLCapabilities(rawValue: 1 << 34)
    /// MariaDB: extended type information (JSON, UUID, ...) in column definitions.
    public static let mariadbExtendedTypeInfo = MySQLCapabilities(rawValue: 1 << 35)
    /// MariaDB: a prepared statement's result metadata may be skipped on execute when unchanged.
    public static let mariadbCacheMetadata = MySQLCapabilities(rawValue: 1 << 36)

    /// All of MariaDB's extended capabilities (the upper 32 bits).
    public static let mariadbExtended = MySQLCapabilities(rawValue: 0xFFFF_FFFF_0000_0000)

    /// The capabilities whose wire format this module does not follow, which a proxy must strip
    /// from what it offers and asks for: compressed packets (zlib, zstd), query attributes inside
    /// COM_QUERY/COM_STMT_EXECUTE, MySQL 8's optional metadata (supported in result sets, not in
    /// COM_STMT_PREPARE responses), multi-factor authentication, and MariaDB's COM_MULTI.
    /// (MariaDB's progress reports, cache metadata, bulk execution and extended type info are
    /// followed by ``MySQLResponseTracker``; whether to forward them is the proxy's choice.)
    public static let unsupportedWireFormats: MySQLCapabilities = [
        .compress, .zstdCompression, .queryAttributes, .optionalResultsetMetadata, .multiFactorAuth, .mariadbComMulti,
    ]

    /// The lower 32 bits, as written in the capability words of the handshake packets.
    public var lowerWord: UInt32 { UInt32(truncatingIfNeeded: self.rawValue) }
    /// The upper 32 bits, as written in MariaDB's extended-capability filler.
    public var mariadbWord: UInt32 { UInt32(truncatingIfNeeded: self.rawValue >> 32) }
}

/// The status flags of OK and EOF packets: how a proxy learns, without parsing SQL, whether the
/// server is in a transaction, whether more results follow, whether a cursor is open, and whether
/// session state changed, which decides when a backend can be returned to the pool.
public struct MySQLServerStatus: OptionSet, Sendable, Hashable {
    /// The flags as sent in OK and EOF packets.
    public let rawValue: UInt16

    /// Wraps the flags read from an OK or EOF packet.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// A transaction is open: the backend must stay with this client.
    public static let inTransaction = MySQLServerStatus(rawValue: 1)
    /// Autocommit is on; off means every statement opens a transaction (RDS Proxy treats the
    /// session as in a transaction).
    public static let autocommit = MySQLServerStatus(rawValue: 2)
    /// Another result follows this one (multi-statements, CALL): the response is not over.
    public static let moreResultsExist = MySQLServerStatus(rawValue: 8)
    /// The statement used no good index (informational).
    public static let noGoodIndexUsed = MySQLServerStatus(rawValue: 0x10)
    /// The statement used no index (informational).
    public static let noIndexUsed = MySQLServerStatus(rawValue: 0x20)
    /// A read-only cursor is open for a prepared statement: COM_STMT_FETCH will follow.
    public static let cursorExists = MySQLServerStatus(rawValue: 0x40)
    /// The cursor has sent its last row.
    public static let lastRowSent = MySQLServerStatus(rawValue: 0x80)
    /// The current database was dropped.
    public static let dbDropped = MySQLServerStatus(rawValue: 0x100)
    /// `NO_BACKSLASH_ESCAPES` is in sql_mode: the SQL lexer must not treat `\` as an escape.
    public static let noBackslashEscapes = MySQLServerStatus(rawValue: 0x200)
    /// A prepared statement's result metadata changed since it was prepared.
    public static let metadataChanged = MySQLServerStatus(rawValue: 0x400)
    /// The statement was logged as slow (informational).
    public static let queryWasSlow = MySQLServerStatus(rawValue: 0x800)
    /// This result set holds a CALL's OUT parameters.
    public static let psOutParams = MySQLServerStatus(rawValue: 0x1000)
    /// The open transaction is read-only.
    public static let inTransactionReadOnly = MySQLServerStatus(rawValue: 0x2000)
    /// The OK packet carries session-state changes (with CLIENT_SESSION_TRACK).
    public static let sessionStateChanged = MySQLServerStatus(rawValue: 0x4000)
    /// MariaDB: `ANSI_QUOTES` is in sql_mode: the SQL lexer must read `"..."` as an identifier.
    public static let ansiQuotes = MySQLServerStatus(rawValue: 0x8000)
}

/// The first byte of a client's command packet (after the handshake, each command starts a new
/// sequence at id 0). The session machine routes on it and asks ``MySQLResponseTracker`` what
/// response to expect.
public enum MySQLCommand: UInt8, Sendable, Hashable, CaseIterable {
    /// Internal server thread state; a client sending it gets an ERR.
    case sleep = 0x00
    /// The client is leaving; no response follows (the server closes).
    case quit = 0x01
    /// `USE db` without SQL: answered with OK or ERR; changes the session's schema.
    case initDB = 0x02
    /// A text-protocol statement (or several, with MULTI_STATEMENTS): OK, ERR, LOCAL INFILE or result sets.
    case query = 0x03
    /// Deprecated column listing of a table: column definitions until EOF.
    case fieldList = 0x04
    /// Deprecated `CREATE DATABASE`: OK or ERR.
    case createDB = 0x05
    /// Deprecated `DROP DATABASE`: OK or ERR.
    case dropDB = 0x06
    /// `FLUSH` variants: OK or ERR.
    case refresh = 0x07
    /// Server shutdown (the proxy refuses it): EOF/OK or ERR.
    case shutdown = 0x08
    /// A human-readable status string, one packet with no header byte.
    case statistics = 0x09
    /// Deprecated `SHOW PROCESSLIST`: a result set.
    case processInfo = 0x0A
    /// Internal server thread state; a client sending it gets an ERR.
    case connect = 0x0B
    /// Deprecated `KILL`: OK or ERR.
    case processKill = 0x0C
    /// Dump debug info to the server log: EOF/OK or ERR.
    case debug = 0x0D
    /// Liveness check: OK.
    case ping = 0x0E
    /// Internal server thread state; a client sending it gets an ERR.
    case time = 0x0F
    /// Internal server thread state; a client sending it gets an ERR.
    case delayedInsert = 0x10
    /// Re-authenticate and reset the session: an authentication exchange ending in OK or ERR.
    case changeUser = 0x11
    /// Replication stream (the proxy refuses it: the response never ends).
    case binlogDump = 0x12
    /// Replication (obsolete; the proxy refuses it).
    case tableDump = 0x13
    /// Replication internal (the proxy refuses it).
    case connectOut = 0x14
    /// Replication registration (the proxy refuses it).
    case registerSlave = 0x15
    /// Prepare a binary-protocol statement: a prepare OK with parameter and column definitions, or ERR.
    case stmtPrepare = 0x16
    /// Execute a prepared statement: like COM_QUERY's response with binary rows, or a cursor opening.
    case stmtExecute = 0x17
    /// Stream a parameter's data before execute: no response.
    case stmtSendLongData = 0x18
    /// Deallocate a prepared statement: no response.
    case stmtClose = 0x19
    /// Reset a prepared statement's long data and cursor: OK or ERR.
    case stmtReset = 0x1A
    /// Turn multi-statements on or off for the session: EOF/OK or ERR.
    case setOption = 0x1B
    /// Fetch rows from an open cursor: binary rows until EOF/OK, or ERR.
    case stmtFetch = 0x1C
    /// Internal server thread state; a client sending it gets an ERR.
    case daemon = 0x1D
    /// GTID replication stream (the proxy refuses it).
    case binlogDumpGTID = 0x1E
    /// Reset the session without re-authenticating: OK; wipes variables, temporary tables, prepared statements and the session trackers.
    case resetConnection = 0x1F
    /// MariaDB: execute a prepared statement for many parameter sets at once.
    case stmtBulkExecute = 0xFA
    /// MariaDB: several commands in one packet (removed in MariaDB 10.6; the proxy strips the
    /// capability, so clients never send it).
    case multi = 0xFE
}

/// Well-known first bytes of server packets.
public enum MySQLPacketHeaderByte {
    /// OK packet.
    public static let ok: UInt8 = 0x00
    /// AuthMoreData during authentication.
    public static let authMoreData: UInt8 = 0x01
    /// LOCAL INFILE request as the first packet of a COM_QUERY response.
    public static let localInfile: UInt8 = 0xFB
    /// EOF packet, OK packet that replaces EOF (DEPRECATE_EOF), or AuthSwitchRequest.
    public static let eof: UInt8 = 0xFE
    /// ERR packet.
    public static let err: UInt8 = 0xFF
}

/// Collation ids a handshake names (a 1-byte collation id stands for the character set).
public enum MySQLCharacterSet {
    /// `utf8mb4_general_ci`: what MariaDB and MySQL 5.7 clients default to.
    public static let utf8mb4GeneralCI: UInt8 = 45
    /// `utf8mb4_0900_ai_ci`: MySQL 8's default (MariaDB maps it to utf8mb4 as well).
    public static let utf8mb40900AICI: UInt8 = 255
    /// `utf8mb3_general_ci`.
    public static let utf8GeneralCI: UInt8 = 33
    /// `latin1_swedish_ci`.
    public static let latin1SwedishCI: UInt8 = 8
    /// `binary`.
    public static let binary: UInt8 = 63
}
