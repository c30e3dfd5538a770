/// Constants of the PostgreSQL frontend/backend protocol, version 3.
///
/// See <https://www.postgresql.org/docs/current/protocol-message-formats.html>.
public enum PGProtocol {
    /// Protocol version 3.0 (`3 << 16 | 0`), as sent in a StartupMessage.
    public static let version3: UInt32 = 196_608
    /// The request code of an SSLRequest packet (`1234 << 16 | 5679`).
    public static let sslRequestCode: UInt32 = 80_877_103
    /// The request code of a GSSENCRequest packet (`1234 << 16 | 5680`).
    public static let gssEncRequestCode: UInt32 = 80_877_104
    /// The request code of a CancelRequest packet (`1234 << 16 | 5678`).
    public static let cancelRequestCode: UInt32 = 80_877_102
    /// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: the largest startup-phase packet a server accepts.
    public static let maxStartupPacketLength = 10_000
    /// The length of a CancelRequest packet with a 4-byte secret key (protocol 3.0), length word included.
    public static let cancelRequestLength = 16

    /// The major version of a protocol version number (`3` for ``version3``).
    @inlinable
    public static func majorVersion(_ version: UInt32) -> UInt16 { UInt16(truncatingIfNeeded: version >> 16) }

    /// The minor version of a protocol version number (`0` for ``version3``).
    @inlinable
    public static func minorVersion(_ version: UInt32) -> UInt16 { UInt16(truncatingIfNeeded: version) }
}

/// The type bytes of typed protocol messages, for both directions.
///
/// Several bytes mean different things depending on the direction (for example `C` is Close from
/// the frontend and CommandComplete from the backend), hence the two namespaces.
public enum PGMessageType {
    /// Messages sent by a client (frontend) to the server.
    public enum Frontend {
        /// `B` Bind.
        public static let bind = UInt8(ascii: "B")
        /// `C` Close (a statement or portal).
        public static let close = UInt8(ascii: "C")
        /// `d` CopyData.
        public static let copyData = UInt8(ascii: "d")
        /// `c` CopyDone.
        public static let copyDone = UInt8(ascii: "c")
        /// `f` CopyFail.
        public static let copyFail = UInt8(ascii: "f")
        /// `D` Describe (a statement or portal).
        public static let describe = UInt8(ascii: "D")
        /// `E` Execute.
        public static let execute = UInt8(ascii: "E")
        /// `H` Flush.
        public static let flush = UInt8(ascii: "H")
        /// `F` FunctionCall.
        public static let functionCall = UInt8(ascii: "F")
        /// `P` Parse.
        public static let parse = UInt8(ascii: "P")
        /// `p` PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse (the meaning
        /// depends on the authentication exchange in progress).
        public static let password = UInt8(ascii: "p")
        /// `Q` Query (simple query protocol).
        public static let query = UInt8(ascii: "Q")
        /// `S` Sync.
        public static let sync = UInt8(ascii: "S")
        /// `X` Terminate.
        public static let terminate = UInt8(ascii: "X")
    }

    /// Messages sent by the server (backend) to a client.
    public enum Backend {
        /// `R` Authentication request (all Authentication* messages).
        public static let authentication = UInt8(ascii: "R")
        /// `K` BackendKeyData.
        public static let backendKeyData = UInt8(ascii: "K")
        /// `2` BindComplete.
        public static let bindComplete = UInt8(ascii: "2")
        /// `3` CloseComplete.
        public static let closeComplete = UInt8(ascii: "3")
        /// `C` CommandComplete.
        public static let commandComplete = UInt8(ascii: "C")
        /// `d` CopyData.
        public static let copyData = UInt8(ascii: "d")
        /// `c` CopyDone.
        public static let copyDone = UInt8(ascii: "c")
        /// `G` CopyInResponse.
        public static let copyInResponse = UInt8(ascii: "G")
        /// `H` CopyOutResponse.
        public static let copyOutResponse = UInt8(ascii: "H")
        /// `W` CopyBothResponse.
        public static let copyBothResponse = UInt8(ascii: "W")
        /// `D` DataRow.
        public static let dataRow = UInt8(ascii: "D")
        /// `I` EmptyQueryResponse.
        public static let emptyQueryResponse = UInt8(ascii: "I")
        /// `E` ErrorResponse.
        public static let errorResponse = UInt8(ascii: "E")
        /// `V` FunctionCallResponse.
        public static let functionCallResponse = UInt8(ascii: "V")
        /// `v` NegotiateProtocolVersion.
        public static let negotiateProtocolVersion = UInt8(ascii: "v")
        /// `n` NoData.
        public static let noData = UInt8(ascii: "n")
        /// `N` NoticeResponse.
        public static let noticeResponse = UInt8(ascii: "N")
        /// `A` NotificationResponse (LISTEN/NOTIFY).
        public static let notificationResponse = UInt8(ascii: "A")
        /// `t` ParameterDescription.
        public static let parameterDescription = UInt8(ascii: "t")
        /// `S` ParameterStatus.
        public static let parameterStatus = UInt8(ascii: "S")
        /// `1` ParseComplete.
        public static let parseComplete = UInt8(ascii: "1")
        /// `s` PortalSuspended.
        public static let portalSuspended = UInt8(ascii: "s")
        /// `Z` ReadyForQuery.
        public static let readyForQuery = UInt8(ascii: "Z")
        /// `T` RowDescription.
        public static let rowDescription = UInt8(ascii: "T")
    }
}

/// The transaction status carried by ReadyForQuery.
public enum PGTransactionStatus: UInt8, Sendable, Hashable, CaseIterable {
    /// `I`: not in a transaction block. The proxy may release the backend.
    case idle = 0x49
    /// `T`: in a transaction block.
    case inTransaction = 0x54
    /// `E`: in a failed transaction block (queries are rejected until the block ends).
    case failed = 0x45
}

/// What a Describe or Close message refers to.
public enum PGObjectKind: UInt8, Sendable, Hashable, CaseIterable {
    /// `S`: a prepared statement.
    case statement = 0x53
    /// `P`: a portal.
    case portal = 0x50
}
