import MySQLWire

/// What must be the same between a client and the backend serving it, because it changes the
/// bytes on the wire or how the server reads statements: the capability flags that shape
/// responses (EOF or OK at the end of a result, FOUND_ROWS counts, multi-statements and
/// multi-results, LOCAL INFILE, IGNORE_SPACE's parsing, INTERACTIVE's timeout) and the character
/// set of the handshake (the login values of the character set variables).
///
/// Part of the pool key: clients with the same profile share backends; the proxy never
/// translates one format into another.
public struct MySQLClientProfile: Sendable, Hashable, CustomStringConvertible {
    /// The capabilities that shape the wire format or the session, as the client negotiated them.
    public var capabilities: MySQLCapabilities
    /// The handshake's character set (collation id).
    public var characterSet: UInt8

    /// Capabilities a backend always has whatever its client asked: the proxy's own needs
    /// (session tracking for state restoration; multi-results so a CALL's answer is readable).
    public static let backendAlways: MySQLCapabilities = [
        .longPassword, .protocol41, .secureConnection, .pluginAuth, .pluginAuthLenencClientData, .transactions,
        .sessionTrack, .multiResults, .connectAttrs,
    ]

    /// The capabilities that must match between a client and its backend.
    public static let matched: MySQLCapabilities = [
        .foundRows, .longFlag, .noSchema, .ignoreSpace, .interactive, .localFiles, .multiStatements,
        .psMultiResults, .deprecateEOF,
    ]

    /// What the proxy offers clients (before TLS, which depends on configuration): never
    /// compression, query attributes, optional metadata or MariaDB's extended capabilities,
    /// which it does not speak.
    public static let offeredToClients: MySQLCapabilities = matched.union([
        .longPassword, .connectWithDB, .protocol41, .transactions, .secureConnection, .multiResults, .pluginAuth,
        .connectAttrs, .pluginAuthLenencClientData, .sessionTrack,
    ])

    public init(negotiated: MySQLCapabilities, characterSet: UInt8) {
        self.capabilities = negotiated.intersection(Self.matched)
        self.characterSet = characterSet
    }

    /// The capabilities a backend of this profile asks the server for.
    public var backendCapabilities: MySQLCapabilities { capabilities.union(Self.backendAlways) }

    /// The pool key's variant: short, stable, readable in logs and the admin API.
    public var description: String {
        "caps=" + String(capabilities.rawValue, radix: 16) + ",cs=\(characterSet)"
    }

    /// The profile a pool key's variant names.
    public init?(variant: String) {
        var caps: UInt64?
        var cs: UInt8?
        for part in variant.split(separator: ",") {
            if part.hasPrefix("caps=") { caps = UInt64(part.dropFirst(5), radix: 16) }
            if part.hasPrefix("cs=") { cs = UInt8(part.dropFirst(3)) }
        }
        guard let caps, let cs else { return nil }
        self.capabilities = MySQLCapabilities(rawValue: caps).intersection(Self.matched)
        self.characterSet = cs
    }
}
