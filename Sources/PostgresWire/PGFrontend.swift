import NIOCore

/// Zero-copy views of the frontend (client-to-server) message bodies a proxy reads.
///
/// Each view is parsed from a body (``PGFrame/body``: no type byte, no length word) and holds
/// slices of it: no bytes are copied, no `String` is made. Names and texts compare with
/// `slice.readableBytesView.elementsEqual(...)` or become a `String` with `String(buffer:)` where
/// one is needed (dictionary keys).
///
/// Parsers never trap, and throw ``PGWireError/malformedMessage(type:reason:)`` for what
/// PostgreSQL itself rejects in the same message (`pq_getmsgstring`, `pq_getmsgint`,
/// `pq_getmsgend` in its `postgres.c`): a missing NUL terminator, a body shorter than its counts
/// and lengths say, trailing bytes. Counts are unsigned 16-bit words, as PostgreSQL reads them.
/// The reasons are stable: a client sees them in the proxy's protocol-violation error.
public enum PGFrontend {
    /// A Query (`Q`): one SQL string, whose NUL must be the last byte.
    public struct Query: Sendable, Hashable {
        /// The SQL text without its NUL.
        public var sql: ByteBuffer

        public init(_ body: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(body, type: PGMessageType.Frontend.query)
            self.sql = try reader.readCStringSlice("query string")
            try reader.expectEnd()
        }
    }

    /// A Parse (`P`): statement name, SQL text, parameter type OIDs.
    public struct Parse: Sendable, Hashable {
        /// The statement name; empty for the unnamed statement.
        public var name: ByteBuffer
        /// Everything after the name (SQL text, NUL, count, OIDs): what a proxy forwards under
        /// another statement name, or keeps to prepare the statement again elsewhere.
        public var definition: ByteBuffer
        /// The SQL text without its NUL.
        public var query: ByteBuffer
        /// The parameter types the client specified (0 = unspecified); often fewer than the
        /// statement's parameters.
        public var parameterTypes: ParameterTypes

        public init(_ body: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(body, type: PGMessageType.Frontend.parse)
            let name = try reader.readCStringSlice("statement name")
            try self.init(name: name, definition: reader.buffer)
        }

        /// Parses a definition kept from an earlier Parse (its body after the name), for a
        /// statement called `name`.
        public init(name: ByteBuffer = ByteBuffer(), definition: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(definition, type: PGMessageType.Frontend.parse)
            self.name = name
            self.definition = definition
            self.query = try reader.readCStringSlice("query string")
            let count = try reader.checkedCount(try reader.readUInt16("parameter type count"), minimumElementSize: 4, "parameter type count")
            self.parameterTypes = ParameterTypes(oids: try reader.readSlice(length: count &* 4, "parameter types"))
            try reader.expectEnd()
        }
    }

    /// The parameter type OIDs of a Parse, read in place.
    public struct ParameterTypes: RandomAccessCollection, Sendable, Hashable {
        /// The OIDs, four bytes each, without the count word before them.
        public let oids: ByteBuffer

        init(oids: ByteBuffer) {
            self.oids = oids
        }

        public var startIndex: Int { 0 }
        public var endIndex: Int { self.oids.readableBytes &>> 2 }

        public subscript(position: Int) -> UInt32 {
            precondition(position >= 0 && position < self.endIndex, "parameter type index out of range")
            // In range: the slice holds exactly `endIndex` OIDs.
            return self.oids.getInteger(at: self.oids.readerIndex &+ position &* 4, as: UInt32.self)!
        }
    }

    /// A Bind (`B`): portal and statement names; the rest is kept raw (``parametersAndFormats``),
    /// which a proxy forwards untouched after new names. ``arguments()`` parses the rest.
    public struct Bind: Sendable, Hashable {
        /// The destination portal; empty for the unnamed portal.
        public var portal: ByteBuffer
        /// The source prepared statement; empty for the unnamed statement.
        public var statement: ByteBuffer
        /// The body after the names: parameter formats, values and result formats.
        public var parametersAndFormats: ByteBuffer

        /// Reads the names only: a proxy that forwards the rest leaves its errors to PostgreSQL,
        /// which answers them in place (and goes on after the next Sync) as it would directly.
        public init(_ body: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(body, type: PGMessageType.Frontend.bind)
            self.portal = try reader.readCStringSlice("portal name")
            self.statement = try reader.readCStringSlice("statement name")
            self.parametersAndFormats = reader.buffer
        }

        /// Parses ``parametersAndFormats``.
        public func arguments() throws(PGWireError) -> BindArguments {
            try BindArguments(self.parametersAndFormats)
        }
    }

    /// The part of a Bind after its names: parameter format codes, parameter values, result
    /// format codes; each a slice of the body.
    public struct BindArguments: Sendable, Hashable {
        /// The parameter format codes (Int16 each): none (all text), one (for all), or one per
        /// parameter.
        public var parameterFormats: ByteBuffer
        /// The number of parameter values.
        public var parameterCount: Int
        /// The parameter values: each an Int32 length (-1 for NULL) and that many bytes.
        public var parameterValues: ByteBuffer
        /// The result column format codes (Int16 each).
        public var resultFormats: ByteBuffer

        /// The number of parameter format codes.
        public var parameterFormatCount: Int { self.parameterFormats.readableBytes &>> 1 }
        /// The number of result format codes.
        public var resultFormatCount: Int { self.resultFormats.readableBytes &>> 1 }

        /// Parses `rest`, a Bind's ``Bind/parametersAndFormats``, as PostgreSQL's
        /// `exec_bind_message` does before it looks at the statement: the format count must be
        /// 0, 1 or the parameter count, each value must be there whole.
        public init(_ rest: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(rest, type: PGMessageType.Frontend.bind)
            let formatCount = try reader.checkedCount(try reader.readUInt16("parameter format count"), minimumElementSize: 2, "parameter format count")
            self.parameterFormats = try reader.readSlice(length: formatCount &* 2, "parameter formats")
            self.parameterCount = Int(try reader.readUInt16("parameter count"))
            guard formatCount <= 1 || formatCount == self.parameterCount else {
                throw reader.malformed("\(formatCount) parameter formats for \(self.parameterCount) parameters")
            }
            let valuesStart = reader.buffer.readerIndex
            for _ in 0..<self.parameterCount {
                let length = try reader.readInt32("parameter length")
                if length == -1 { continue }
                guard length >= 0 else { throw reader.malformed("negative parameter length") }
                _ = try reader.readSlice(length: Int(length), "parameter value")
            }
            self.parameterValues = rest.getSlice(at: valuesStart, length: reader.buffer.readerIndex &- valuesStart) ?? ByteBuffer()
            let resultCount = try reader.checkedCount(try reader.readUInt16("result format count"), minimumElementSize: 2, "result format count")
            self.resultFormats = try reader.readSlice(length: resultCount &* 2, "result formats")
            try reader.expectEnd()
        }
    }

    /// A Describe (`D`) or a Close (`C`): a statement or a portal, by name.
    public struct ObjectReference: Sendable, Hashable {
        /// A prepared statement or a portal.
        public var kind: PGObjectKind
        /// The name; empty for the unnamed statement or portal.
        public var name: ByteBuffer

        init(_ body: ByteBuffer, type: UInt8) throws(PGWireError) {
            var reader = PGBodyReader(body, type: type)
            let rawKind = try reader.readUInt8("kind")
            guard let kind = PGObjectKind(rawValue: rawKind) else {
                throw reader.malformed("kind must be 'S' or 'P'")
            }
            self.kind = kind
            self.name = try reader.readCStringSlice("name")
            try reader.expectEnd()
        }

        /// Whether it names the unnamed statement (`S` and an empty name).
        public var isUnnamedStatement: Bool { self.kind == .statement && self.name.readableBytes == 0 }
    }

    /// Parses a Describe (`D`) body.
    public static func describe(_ body: ByteBuffer) throws(PGWireError) -> ObjectReference {
        try ObjectReference(body, type: PGMessageType.Frontend.describe)
    }

    /// Parses a Close (`C`) body.
    public static func close(_ body: ByteBuffer) throws(PGWireError) -> ObjectReference {
        try ObjectReference(body, type: PGMessageType.Frontend.close)
    }

    /// An Execute (`E`): portal name and row limit.
    public struct Execute: Sendable, Hashable {
        /// The portal; empty for the unnamed portal.
        public var portal: ByteBuffer
        /// The maximum number of rows to return; 0 means no limit.
        public var maxRows: Int32

        public init(_ body: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(body, type: PGMessageType.Frontend.execute)
            self.portal = try reader.readCStringSlice("portal name")
            self.maxRows = try reader.readInt32("row limit")
            try reader.expectEnd()
        }
    }

    /// A PasswordMessage (`p` answering a cleartext or md5 request): the password or md5 response.
    public struct PasswordMessage: Sendable, Hashable {
        /// The password without its NUL; valid UTF-8.
        public var password: ByteBuffer

        /// Invalid UTF-8 is rejected, never replaced, so two different passwords can never
        /// compare equal once made `String`s.
        public init(_ body: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(body, type: PGMessageType.Frontend.password)
            self.password = try reader.readCStringSlice("password")
            guard self.password.withUnsafeReadableBytes({ pgIsValidUTF8($0) }) else {
                throw reader.malformed("password is not valid UTF-8")
            }
            try reader.expectEnd()
        }

        /// The password as a `String` (exact: it is valid UTF-8).
        public var string: String { String(buffer: self.password) }
    }

    /// A SASLInitialResponse (`p` opening a SASL exchange): mechanism and initial response.
    public struct SASLInitialResponse: Sendable, Hashable {
        /// The selected mechanism, such as `SCRAM-SHA-256`, without its NUL.
        public var mechanism: ByteBuffer
        /// The initial client response; nil when the client sent length -1.
        public var data: ByteBuffer?

        public init(_ body: ByteBuffer) throws(PGWireError) {
            var reader = PGBodyReader(body, type: PGMessageType.Frontend.password)
            self.mechanism = try reader.readCStringSlice("mechanism")
            let length = try reader.readInt32("response length")
            if length == -1 {
                self.data = nil
            } else if length < 0 {
                throw reader.malformed("negative response length")
            } else {
                self.data = try reader.readSlice(length: Int(length), "response")
            }
            try reader.expectEnd()
        }
    }

    /// A SASLResponse (`p` continuing a SASL exchange): the whole body is the SASL data.
    public struct SASLResponse: Sendable, Hashable {
        /// The SASL data.
        public var data: ByteBuffer

        /// Any body is a valid SASLResponse (its meaning is the mechanism's business).
        public init(_ body: ByteBuffer) {
            self.data = body
        }
    }
}
