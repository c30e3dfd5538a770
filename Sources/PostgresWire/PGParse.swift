import NIOCore

/// Parsers for backend message bodies (``PGFrame/body``); the frontend messages have their
/// zero-copy views in ``PGFrontend``.
///
/// Every parser takes the body only (no type byte, no length), never traps, and throws
/// ``PGWireError/malformedMessage(type:reason:)`` on truncated input, a missing NUL terminator,
/// an out-of-range value or trailing bytes. Strings are decoded as UTF-8 with invalid sequences
/// replaced by U+FFFD, except where noted.
public enum PGParse {
    // MARK: Backend messages

    /// Parses a ReadyForQuery (`Z`) body: the transaction status.
    public static func readyForQuery(_ body: ByteBuffer) throws(PGWireError) -> PGTransactionStatus {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.readyForQuery)
        let raw = try reader.readUInt8("transaction status")
        guard let status = PGTransactionStatus(rawValue: raw) else {
            throw reader.malformed("transaction status must be 'I', 'T' or 'E'")
        }
        try reader.expectEnd()
        return status
    }

    /// Parses an ErrorResponse (`E`) body.
    public static func errorResponse(_ body: ByteBuffer) throws(PGWireError) -> PGDiagnosticFields {
        try Self.diagnosticFields(body, type: PGMessageType.Backend.errorResponse)
    }

    /// Parses a NoticeResponse (`N`) body.
    public static func noticeResponse(_ body: ByteBuffer) throws(PGWireError) -> PGDiagnosticFields {
        try Self.diagnosticFields(body, type: PGMessageType.Backend.noticeResponse)
    }

    private static func diagnosticFields(_ body: ByteBuffer, type: UInt8) throws(PGWireError) -> PGDiagnosticFields {
        var reader = PGBodyReader(body, type: type)
        var fields: [UInt8: String] = [:]
        while true {
            let code = try reader.readUInt8("field type")
            if code == 0 {
                break
            }
            fields[code] = try reader.readCString("field value")
        }
        try reader.expectEnd()
        return PGDiagnosticFields(fields: fields)
    }

    /// Parses a ParameterStatus (`S`) body.
    public static func parameterStatus(_ body: ByteBuffer) throws(PGWireError) -> PGParameterStatus {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.parameterStatus)
        let name = try reader.readCString("parameter name")
        let value = try reader.readCString("parameter value")
        try reader.expectEnd()
        return PGParameterStatus(name: name, value: value)
    }

    /// Parses a BackendKeyData (`K`) body. Only the protocol 3.0 layout (4-byte key) is accepted.
    public static func backendKeyData(_ body: ByteBuffer) throws(PGWireError) -> PGBackendKeyData {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.backendKeyData)
        let processID = try reader.readInt32("process ID")
        let secretKey = try reader.readInt32("secret key")
        try reader.expectEnd()
        return PGBackendKeyData(processID: processID, secretKey: secretKey)
    }

    /// Parses an Authentication (`R`) body.
    public static func authentication(_ body: ByteBuffer) throws(PGWireError) -> AuthenticationRequest {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.authentication)
        let code = try reader.readInt32("authentication code")
        let request: AuthenticationRequest
        switch code {
        case 0:
            request = .ok
        case 2:
            request = .kerberosV5
        case 3:
            request = .cleartextPassword
        case 5:
            request = .md5Password(salt: try reader.readBytes(length: 4, "md5 salt"))
        case 7:
            request = .gss
        case 8:
            // GSSAPI data is not interpreted.
            return .gssContinue
        case 9:
            request = .sspi
        case 10:
            var mechanisms: [String] = []
            while true {
                let mechanism = try reader.readCString("SASL mechanism")
                if mechanism.isEmpty {
                    break
                }
                mechanisms.append(mechanism)
            }
            request = .sasl(mechanisms: mechanisms)
        case 11:
            return .saslContinue(reader.readRemainingBytes())
        case 12:
            return .saslFinal(reader.readRemainingBytes())
        default:
            return .unknown(code)
        }
        try reader.expectEnd()
        return request
    }

    /// Parses a NegotiateProtocolVersion (`v`) body.
    public static func negotiateProtocolVersion(_ body: ByteBuffer) throws(PGWireError) -> PGNegotiateProtocolVersion {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.negotiateProtocolVersion)
        let newestMinor = try reader.readInt32("newest minor version")
        let rawCount = try reader.readInt32("option count")
        let count = try reader.checkedCount(rawCount, minimumElementSize: 1, "option count")
        var options: [String] = []
        options.reserveCapacity(count)
        for _ in 0..<count {
            options.append(try reader.readCString("option name"))
        }
        try reader.expectEnd()
        return PGNegotiateProtocolVersion(newestMinorVersion: newestMinor, unsupportedOptions: options)
    }

    /// Parses a CommandComplete (`C`) body: the command tag, such as `INSERT 0 1`.
    public static func commandComplete(_ body: ByteBuffer) throws(PGWireError) -> String {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.commandComplete)
        let tag = try reader.readCString("command tag")
        try reader.expectEnd()
        return tag
    }

    /// Parses a RowDescription (`T`) body.
    public static func rowDescription(_ body: ByteBuffer) throws(PGWireError) -> [PGColumnDescription] {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.rowDescription)
        let rawCount = try reader.readInt16("column count")
        let count = try reader.checkedCount(rawCount, minimumElementSize: 19, "column count")
        var columns: [PGColumnDescription] = []
        columns.reserveCapacity(count)
        for _ in 0..<count {
            let name = try reader.readCString("column name")
            let tableOID = try reader.readUInt32("table OID")
            let attribute = try reader.readInt16("column attribute number")
            let typeOID = try reader.readUInt32("type OID")
            let typeSize = try reader.readInt16("type size")
            let typeModifier = try reader.readInt32("type modifier")
            let format = try reader.readInt16("format code")
            columns.append(PGColumnDescription(
                name: name, tableOID: tableOID, columnAttributeNumber: attribute, typeOID: typeOID,
                typeSize: typeSize, typeModifier: typeModifier, formatCode: format
            ))
        }
        try reader.expectEnd()
        return columns
    }

    /// Parses a DataRow (`D`) body: one slice per column (no copy), `nil` for SQL NULL.
    public static func dataRow(_ body: ByteBuffer) throws(PGWireError) -> [ByteBuffer?] {
        var reader = PGBodyReader(body, type: PGMessageType.Backend.dataRow)
        let rawCount = try reader.readInt16("column count")
        let count = try reader.checkedCount(rawCount, minimumElementSize: 4, "column count")
        var values: [ByteBuffer?] = []
        values.reserveCapacity(count)
        for _ in 0..<count {
            let length = try reader.readInt32("value length")
            if length == -1 {
                values.append(nil)
            } else if length < 0 {
                throw reader.malformed("negative value length")
            } else {
                values.append(try reader.readSlice(length: Int(length), "column value"))
            }
        }
        try reader.expectEnd()
        return values
    }

    /// Parses a DataRow (`D`) body of text-format values into strings, `nil` for SQL NULL.
    public static func dataRowStrings(_ body: ByteBuffer) throws(PGWireError) -> [String?] {
        try Self.dataRow(body).map { $0.map { String(buffer: $0) } }
    }
}
