import MySQLProxy
import MySQLWire
import ProxyCore

/// The errors a MySQL client gets from the proxy itself, with RDS Proxy's codes and wording
/// (reference 001, "Troubleshooting": MySQL) where it gives them, MySQL's own otherwise.
enum MySQLClientErrors {
    /// RDS: `ERROR 9501 (HY000): Timed-out waiting to acquire database connection`.
    static let borrowTimeout = MySQLErrPacket(
        code: 9501, sqlState: "HY000", message: "Timed-out waiting to acquire database connection")

    /// RDS: `ERROR 1040 (HY000): Number simultaneous connections exceeded (limit)`.
    static func tooManyConnections(limit: Int) -> MySQLErrPacket {
        MySQLErrPacket(code: 1040, sqlState: "HY000", message: "Number simultaneous connections exceeded (\(limit))")
    }

    /// RDS: `ERROR 1045 (28000): Access denied for user 'USER'@'%' (using password: YES)`: the
    /// same for an unknown user and a wrong password.
    static func accessDenied(user: String, usingPassword: Bool = true) -> MySQLErrPacket {
        MySQLErrPacket(
            code: 1045, sqlState: "28000",
            message: "Access denied for user '\(user)'@'%' (using password: \(usingPassword ? "YES" : "NO"))")
    }

    /// The proxy is shutting down (MySQL's ER_SERVER_SHUTDOWN).
    static let shuttingDown = MySQLErrPacket(code: 1053, sqlState: "08S01", message: "Server shutdown in progress")

    /// The client was idle longer than `idle_client_timeout` (MySQL's ER_NET_READ_INTERRUPTED
    /// is what a server's wait_timeout gives; MySQL 8 sends 4031).
    static let idleTimeout = MySQLErrPacket(
        code: 4031, sqlState: "HY000",
        message: "The client was disconnected by the server because of inactivity. See wait_timeout and interactive_timeout for configuring this behavior.")

    /// The login took longer than the proxy allows (MySQL's ER_HANDSHAKE_ERROR).
    static let authenticationTimeout = MySQLErrPacket(code: 1043, sqlState: "08S01", message: "Bad handshake")

    /// Malformed input from the client (MySQL's ER_NET_PACKETS_OUT_OF_ORDER / ER_MALFORMED_PACKET).
    static func malformed(_ reason: String) -> MySQLErrPacket {
        MySQLErrPacket(code: 1835, sqlState: "HY000", message: "Malformed communication packet: \(reason)")
    }

    /// A packet over the size limit (MySQL's ER_NET_PACKET_TOO_LARGE).
    static let packetTooLarge = MySQLErrPacket(
        code: 1153, sqlState: "08S01", message: "Got a packet bigger than 'max_allowed_packet' bytes")

    /// A command the proxy does not serve yet.
    static func unsupportedCommand(_ code: UInt8) -> MySQLErrPacket {
        MySQLErrPacket(code: 1047, sqlState: "08S01", message: "Unknown command")
    }

    /// The database connection serving the client was lost with its state on it (the session
    /// machine's `lostConnection`).
    static let backendLost = MySQLSessionMachine.lostConnection

    /// A READ_ONLY endpoint with no available reader: the proxy's wording (`ProxyError.noReader`,
    /// as PostgreSQL clients get it) with MySQL's ER_CONNECT_TO_FOREIGN_DATA_SOURCE, the code of
    /// the proxy's other "no database connection" errors. The connection stays usable.
    static let noReader = MySQLErrPacket(code: 1429, sqlState: "HY000", message: ProxyError.noReader.message)

    /// A borrow failed for another reason than the timeout: the database refused or was
    /// unreachable (its own error when it gave one). The database refusing the proxy's login
    /// (a stale secret) is RDS's `ERROR 1045 (28000)` for the client's user, as RDS documents it,
    /// not the server's text (which names the proxy's host, and whose SQLSTATE the pool does not
    /// keep).
    static func borrowFailed(_ error: BorrowError, user: String) -> MySQLErrPacket {
        switch error {
        case .timeout:
            return borrowTimeout
        case .shuttingDown:
            return shuttingDown
        case .connectionFailed(let failure):
            if failure.code == "1045" { return accessDenied(user: user) }
            if let code = failure.code.flatMap({ UInt16($0) }) {
                return MySQLErrPacket(code: code, sqlState: "HY000", message: failure.message)
            }
            // MySQL's ER_CONNECT_TO_FOREIGN_DATA_SOURCE: a server must not send the client
            // library's own 2003 (libmariadb shows any ERR in 2000...2999 as "Received malformed
            // packet").
            return MySQLErrPacket(code: 1429, sqlState: "HY000", message: "Can't connect to MySQL server: \(failure.message)")
        }
    }
}
