import NIOCore

// Value types for the backend messages a proxy inspects or generates (the frontend messages
// it reads are zero-copy views in `PGFrontend`).

/// A parsed backend ParameterStatus (`S`) message.
public struct PGParameterStatus: Sendable, Hashable {
    /// The run-time parameter name, such as `TimeZone`.
    public var name: String
    /// Its current value.
    public var value: String

    /// Creates a value.
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// A parsed backend BackendKeyData (`K`) message (protocol 3.0: a 4-byte secret key).
public struct PGBackendKeyData: Sendable, Hashable {
    /// The backend's process ID.
    public var processID: Int32
    /// The secret key needed to cancel its queries.
    public var secretKey: Int32

    /// Creates a value.
    public init(processID: Int32, secretKey: Int32) {
        self.processID = processID
        self.secretKey = secretKey
    }
}

/// A parsed backend NegotiateProtocolVersion (`v`) message.
public struct PGNegotiateProtocolVersion: Sendable, Hashable {
    /// The newest minor protocol version the server supports for the requested major version.
    public var newestMinorVersion: Int32
    /// The `_pq_.` protocol options the server did not recognise.
    public var unsupportedOptions: [String]

    /// Creates a value.
    public init(newestMinorVersion: Int32, unsupportedOptions: [String]) {
        self.newestMinorVersion = newestMinorVersion
        self.unsupportedOptions = unsupportedOptions
    }
}

/// A backend Authentication (`R`) message.
public enum AuthenticationRequest: Sendable, Hashable {
    /// AuthenticationOk (0).
    case ok
    /// AuthenticationKerberosV5 (2), unsupported by modern servers.
    case kerberosV5
    /// AuthenticationCleartextPassword (3).
    case cleartextPassword
    /// AuthenticationMD5Password (5) with its 4-byte salt.
    case md5Password(salt: [UInt8])
    /// AuthenticationGSS (7).
    case gss
    /// AuthenticationSSPI (9).
    case sspi
    /// AuthenticationSASL (10) with the mechanisms offered, in the server's order of preference.
    case sasl(mechanisms: [String])
    /// AuthenticationSASLContinue (11) with the SASL challenge.
    case saslContinue([UInt8])
    /// AuthenticationSASLFinal (12) with the SASL outcome data.
    case saslFinal([UInt8])
    /// AuthenticationGSSContinue (8); the GSSAPI data is not kept.
    case gssContinue
    /// Any other request code.
    case unknown(Int32)
}

/// One column of a RowDescription (`T`) message.
public struct PGColumnDescription: Sendable, Hashable {
    /// The column name.
    public var name: String
    /// The OID of the source table, or 0.
    public var tableOID: UInt32
    /// The attribute number of the source column, or 0.
    public var columnAttributeNumber: Int16
    /// The data type OID (25 = `text`).
    public var typeOID: UInt32
    /// The data type size (`pg_type.typlen`); negative for variable-width types.
    public var typeSize: Int16
    /// The type modifier (`pg_attribute.atttypmod`); -1 when none.
    public var typeModifier: Int32
    /// The format code: 0 text, 1 binary.
    public var formatCode: Int16

    /// The OID of the `text` type.
    public static let textTypeOID: UInt32 = 25

    /// Creates a column description; the defaults describe a text column not taken from a table.
    public init(
        name: String,
        tableOID: UInt32 = 0,
        columnAttributeNumber: Int16 = 0,
        typeOID: UInt32 = PGColumnDescription.textTypeOID,
        typeSize: Int16 = -1,
        typeModifier: Int32 = -1,
        formatCode: Int16 = 0
    ) {
        self.name = name
        self.tableOID = tableOID
        self.columnAttributeNumber = columnAttributeNumber
        self.typeOID = typeOID
        self.typeSize = typeSize
        self.typeModifier = typeModifier
        self.formatCode = formatCode
    }
}
