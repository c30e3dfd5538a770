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
///
/// The bytes are inlinable computed properties, not `static let`s: a `static let` of another
/// module is reached through an accessor call at each use, and these are compared for every
/// message the proxy relays.
public enum PGMessageType {
    /// Messages sent by a client (frontend) to the server.
    public enum Frontend {
        /// `B` Bind.
        @inlinable public static var bind: UInt8 { UInt8(ascii: "B") }
        /// `C` Close (a statement or portal).
        @inlinable public static var close: UInt8 { UInt8(ascii: "C") }
        /// `d` CopyData.
        @inlinable public static var copyData: UInt8 { UInt8(ascii: "d") }
        /// `c` CopyDone.
        @inlinable public static var copyDone: UInt8 { UInt8(ascii: "c") }
        /// `f` CopyFail.
        @inlinable public static var copyFail: UInt8 { UInt8(ascii: "f") }
        /// `D` Describe (a statement or portal).
        @inlinable public static var describe: UInt8 { UInt8(ascii: "D") }
        /// `E` Execute.
        @inlinable public static var execute: UInt8 { UInt8(ascii: "E") }
        /// `H` Flush.
        @inlinable public static var flush: UInt8 { UInt8(ascii: "H") }
        /// `F` FunctionCall.
        @inlinable public static var functionCall: UInt8 { UInt8(ascii: "F") }
        /// `P` Parse.
        @inlinable public static var parse: UInt8 { UInt8(ascii: "P") }
        /// `p` PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse (the meaning
        /// depends on the authentication exchange in progress).
        @inlinable public static var password: UInt8 { UInt8(ascii: "p") }
        /// `Q` Query (simple query protocol).
        @inlinable public static var query: UInt8 { UInt8(ascii: "Q") }
        /// `S` Sync.
        @inlinable public static var sync: UInt8 { UInt8(ascii: "S") }
        /// `X` Terminate.
        @inlinable public static var terminate: UInt8 { UInt8(ascii: "X") }
    }

    /// Messages sent by the server (backend) to a client.
    public enum Backend {
        /// `R` Authentication request (all Authentication* messages).
        @inlinable public static var authentication: UInt8 { UInt8(ascii: "R") }
        /// `K` BackendKeyData.
        @inlinable public static var backendKeyData: UInt8 { UInt8(ascii: "K") }
        /// `2` BindComplete.
        @inlinable public static var bindComplete: UInt8 { UInt8(ascii: "2") }
        /// `3` CloseComplete.
        @inlinable public static var closeComplete: UInt8 { UInt8(ascii: "3") }
        /// `C` CommandComplete.
        @inlinable public static var commandComplete: UInt8 { UInt8(ascii: "C") }
        /// `d` CopyData.
        @inlinable public static var copyData: UInt8 { UInt8(ascii: "d") }
        /// `c` CopyDone.
        @inlinable public static var copyDone: UInt8 { UInt8(ascii: "c") }
        /// `G` CopyInResponse.
        @inlinable public static var copyInResponse: UInt8 { UInt8(ascii: "G") }
        /// `H` CopyOutResponse.
        @inlinable public static var copyOutResponse: UInt8 { UInt8(ascii: "H") }
        /// `W` CopyBothResponse.
        @inlinable public static var copyBothResponse: UInt8 { UInt8(ascii: "W") }
        /// `D` DataRow.
        @inlinable public static var dataRow: UInt8 { UInt8(ascii: "D") }
        /// `I` EmptyQueryResponse.
        @inlinable public static var emptyQueryResponse: UInt8 { UInt8(ascii: "I") }
        /// `E` ErrorResponse.
        @inlinable public static var errorResponse: UInt8 { UInt8(ascii: "E") }
        /// `V` FunctionCallResponse.
        @inlinable public static var functionCallResponse: UInt8 { UInt8(ascii: "V") }
        /// `v` NegotiateProtocolVersion.
        @inlinable public static var negotiateProtocolVersion: UInt8 { UInt8(ascii: "v") }
        /// `n` NoData.
        @inlinable public static var noData: UInt8 { UInt8(ascii: "n") }
        /// `N` NoticeResponse.
        @inlinable public static var noticeResponse: UInt8 { UInt8(ascii: "N") }
        /// `A` NotificationResponse (LISTEN/NOTIFY).
        @inlinable public static var notificationResponse: UInt8 { UInt8(ascii: "A") }
        /// `t` ParameterDescription.
        @inlinable public static var parameterDescription: UInt8 { UInt8(ascii: "t") }
        /// `S` ParameterStatus.
        @inlinable public static var parameterStatus: UInt8 { UInt8(ascii: "S") }
        /// `1` ParseComplete.
        @inlinable public static var parseComplete: UInt8 { UInt8(ascii: "1") }
        /// `s` PortalSuspended.
        @inlinable public static var portalSuspended: UInt8 { UInt8(ascii: "s") }
        /// `Z` ReadyForQuery.
        @inlinable public static var readyForQuery: UInt8 { UInt8(ascii: "Z") }
        /// `T` RowDescription.
        @inlinable public static var rowDescription: UInt8 { UInt8(ascii: "T") }
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
