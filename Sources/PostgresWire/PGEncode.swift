import NIOCore

/// Encoders for the messages the proxy generates. Each writes one complete message (type byte,
/// correct length word, body) at the end of `buffer`.
///
/// Strings are written as C strings; a NUL inside a string ends it early so that no input can
/// break the framing. Lengths beyond `Int32.max` are not representable and not checked.
public enum PGEncode {
    // MARK: Backend messages (proxy → client)

    /// AuthenticationOk: `R`, code 0.
    public static func authenticationOk(into buffer: inout ByteBuffer) {
        Self.authentication(code: 0, into: &buffer) { _ in }
    }

    /// AuthenticationCleartextPassword: `R`, code 3.
    public static func authenticationCleartextPassword(into buffer: inout ByteBuffer) {
        Self.authentication(code: 3, into: &buffer) { _ in }
    }

    /// AuthenticationMD5Password: `R`, code 5, then the 4-byte salt. The first four bytes of
    /// `salt` are written (zero-padded if shorter).
    public static func authenticationMD5Password(salt: [UInt8], into buffer: inout ByteBuffer) {
        Self.authentication(code: 5, into: &buffer) { buffer in
            for index in 0..<4 {
                buffer.writeInteger(index < salt.count ? salt[index] : 0)
            }
        }
    }

    /// AuthenticationSASL: `R`, code 10, then the mechanism names and an empty terminator.
    public static func authenticationSASL(mechanisms: [String] = [SCRAM.mechanism], into buffer: inout ByteBuffer) {
        Self.authentication(code: 10, into: &buffer) { buffer in
            for mechanism in mechanisms {
                buffer.pgWriteCString(mechanism)
            }
            buffer.writeInteger(UInt8(0))
        }
    }

    /// AuthenticationSASLContinue: `R`, code 11, then the SASL challenge.
    public static func authenticationSASLContinue(data: [UInt8], into buffer: inout ByteBuffer) {
        Self.authentication(code: 11, into: &buffer) { $0.writeBytes(data) }
    }

    /// AuthenticationSASLFinal: `R`, code 12, then the SASL outcome data.
    public static func authenticationSASLFinal(data: [UInt8], into buffer: inout ByteBuffer) {
        Self.authentication(code: 12, into: &buffer) { $0.writeBytes(data) }
    }

    private static func authentication(code: Int32, into buffer: inout ByteBuffer, _ rest: (inout ByteBuffer) -> Void) {
        buffer.pgWriteMessage(type: PGMessageType.Backend.authentication) { buffer in
            buffer.writeInteger(code)
            rest(&buffer)
        }
    }

    /// ParameterStatus: `S`, name, value.
    public static func parameterStatus(name: String, value: String, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Backend.parameterStatus) { buffer in
            buffer.pgWriteCString(name)
            buffer.pgWriteCString(value)
        }
    }

    /// BackendKeyData: `K`, process ID, secret key.
    public static func backendKeyData(processID: Int32, secretKey: Int32, into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(PGMessageType.Backend.backendKeyData, UInt32(12), processID, secretKey)
    }

    /// ReadyForQuery: `Z`, status byte. `[0x5A, 0, 0, 0, 5, 0x49]` when idle.
    public static func readyForQuery(_ status: PGTransactionStatus, into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(PGMessageType.Backend.readyForQuery, UInt32(5), status.rawValue)
    }

    /// ErrorResponse: `E` with fields S, V, C, M, D, H (F, L, R when set) and the terminator.
    public static func errorResponse(_ fields: PGErrorFields, into buffer: inout ByteBuffer) {
        Self.diagnostic(type: PGMessageType.Backend.errorResponse, fields, into: &buffer)
    }

    /// NoticeResponse: `N` with fields S, V, C, M, D, H (F, L, R when set) and the terminator.
    public static func noticeResponse(_ fields: PGErrorFields, into buffer: inout ByteBuffer) {
        Self.diagnostic(type: PGMessageType.Backend.noticeResponse, fields, into: &buffer)
    }

    private static func diagnostic(type: UInt8, _ fields: PGErrorFields, into buffer: inout ByteBuffer) {
        typealias Code = PGDiagnosticFields.Code
        buffer.pgWriteMessage(type: type) { buffer in
            buffer.writeInteger(Code.severity)
            buffer.pgWriteCString(fields.severity)
            buffer.writeInteger(Code.severityNonLocalized)
            buffer.pgWriteCString(fields.severity)
            buffer.writeInteger(Code.sqlState)
            buffer.pgWriteCString(fields.code)
            buffer.writeInteger(Code.message)
            buffer.pgWriteCString(fields.message)
            if let detail = fields.detail {
                buffer.writeInteger(Code.detail)
                buffer.pgWriteCString(detail)
            }
            if let hint = fields.hint {
                buffer.writeInteger(Code.hint)
                buffer.pgWriteCString(hint)
            }
            if let source = fields.source {
                buffer.writeInteger(UInt8(ascii: "F"))
                buffer.pgWriteCString(source.file)
                buffer.writeInteger(UInt8(ascii: "L"))
                buffer.pgWriteCString(source.line)
                buffer.writeInteger(UInt8(ascii: "R"))
                buffer.pgWriteCString(source.routine)
            }
            buffer.writeInteger(UInt8(0))
        }
    }

    /// NegotiateProtocolVersion: `v`, newest supported minor version, unrecognised options.
    public static func negotiateProtocolVersion(newestMinorVersion: Int32, unsupportedOptions: [String], into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Backend.negotiateProtocolVersion) { buffer in
            buffer.writeInteger(newestMinorVersion)
            buffer.writeInteger(Int32(truncatingIfNeeded: unsupportedOptions.count))
            for option in unsupportedOptions {
                buffer.pgWriteCString(option)
            }
        }
    }

    /// CommandComplete: `C`, command tag (for example `SELECT 1` or `SET`).
    public static func commandComplete(tag: String, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Backend.commandComplete) { $0.pgWriteCString(tag) }
    }

    /// ParseComplete: `1`.
    public static func parseComplete(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Backend.parseComplete)
    }

    /// BindComplete: `2`.
    public static func bindComplete(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Backend.bindComplete)
    }

    /// CloseComplete: `3`.
    public static func closeComplete(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Backend.closeComplete)
    }

    /// EmptyQueryResponse: `I`.
    public static func emptyQueryResponse(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Backend.emptyQueryResponse)
    }

    /// NoData: `n` (the answer to Describe of a statement returning no rows).
    public static func noData(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Backend.noData)
    }

    /// RowDescription: `T` with the given columns.
    public static func rowDescription(_ columns: [PGColumnDescription], into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Backend.rowDescription) { buffer in
            buffer.writeInteger(Int16(truncatingIfNeeded: columns.count))
            for column in columns {
                buffer.pgWriteCString(column.name)
                buffer.writeMultipleIntegers(
                    column.tableOID, column.columnAttributeNumber, column.typeOID,
                    column.typeSize, column.typeModifier, column.formatCode
                )
            }
        }
    }

    /// RowDescription: `T` with text columns of the given names.
    public static func rowDescription(columnNames: [String], into buffer: inout ByteBuffer) {
        Self.rowDescription(columnNames.map { PGColumnDescription(name: $0) }, into: &buffer)
    }

    /// DataRow: `D` with text values; `nil` is SQL NULL.
    public static func dataRow(_ values: [String?], into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Backend.dataRow) { buffer in
            buffer.writeInteger(Int16(truncatingIfNeeded: values.count))
            for value in values {
                if let value {
                    buffer.writeInteger(Int32(truncatingIfNeeded: value.utf8.count))
                    buffer.writeString(value)
                } else {
                    buffer.writeInteger(Int32(-1))
                }
            }
        }
    }

    /// The single-byte answer to an SSLRequest: `S` (proceed with the TLS handshake) or `N`.
    public static func sslResponse(accepted: Bool, into buffer: inout ByteBuffer) {
        buffer.writeInteger(accepted ? UInt8(ascii: "S") : UInt8(ascii: "N"))
    }

    /// The single-byte answer to a GSSENCRequest: `G` (proceed with GSSAPI encryption) or `N`.
    public static func gssEncResponse(accepted: Bool, into buffer: inout ByteBuffer) {
        buffer.writeInteger(accepted ? UInt8(ascii: "G") : UInt8(ascii: "N"))
    }

    // MARK: Frontend messages (proxy → database)

    /// StartupMessage (no type byte): length, protocol version, `name\0value\0` pairs, terminator.
    public static func startupMessage(
        parameters: [StartupParameter],
        protocolVersion: UInt32 = PGProtocol.version3,
        into buffer: inout ByteBuffer
    ) {
        let lengthIndex = buffer.writerIndex
        buffer.writeMultipleIntegers(UInt32(0), protocolVersion)
        for parameter in parameters {
            buffer.pgWriteCString(parameter.name)
            buffer.pgWriteCString(parameter.value)
        }
        buffer.writeInteger(UInt8(0))
        buffer.setInteger(UInt32(truncatingIfNeeded: buffer.writerIndex - lengthIndex), at: lengthIndex)
    }

    /// SSLRequest (no type byte): 8 bytes.
    public static func sslRequest(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(UInt32(8), PGProtocol.sslRequestCode)
    }

    /// GSSENCRequest (no type byte): 8 bytes.
    public static func gssEncRequest(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(UInt32(8), PGProtocol.gssEncRequestCode)
    }

    /// CancelRequest (no type byte): 16 bytes, sent on a new connection.
    public static func cancelRequest(processID: Int32, secretKey: Int32, into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(UInt32(16), PGProtocol.cancelRequestCode, processID, secretKey)
    }

    /// PasswordMessage: `p`, password (cleartext or md5 response).
    public static func passwordMessage(_ password: String, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.password) { $0.pgWriteCString(password) }
    }

    /// SASLInitialResponse: `p`, mechanism, Int32 length (-1 when `data` is `nil`), data.
    public static func saslInitialResponse(mechanism: String, data: [UInt8]?, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.password) { buffer in
            buffer.pgWriteCString(mechanism)
            if let data {
                buffer.writeInteger(Int32(truncatingIfNeeded: data.count))
                buffer.writeBytes(data)
            } else {
                buffer.writeInteger(Int32(-1))
            }
        }
    }

    /// SASLResponse: `p`, data.
    public static func saslResponse(data: [UInt8], into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.password) { $0.writeBytes(data) }
    }

    /// Query: `Q`, SQL text.
    public static func query(_ sql: String, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.query) { $0.pgWriteCString(sql) }
    }

    /// Parse: `P`, statement name, SQL text, parameter type OIDs.
    public static func parse(statementName: String, query: String, parameterTypeOIDs: [UInt32] = [], into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.parse) { buffer in
            buffer.pgWriteCString(statementName)
            buffer.pgWriteCString(query)
            buffer.writeInteger(Int16(truncatingIfNeeded: parameterTypeOIDs.count))
            for oid in parameterTypeOIDs {
                buffer.writeInteger(oid)
            }
        }
    }

    /// Bind: `B` with all parameters and results in text format; `nil` parameters are SQL NULL.
    public static func bind(portalName: String, statementName: String, parameters: [[UInt8]?], into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.bind) { buffer in
            buffer.pgWriteCString(portalName)
            buffer.pgWriteCString(statementName)
            buffer.writeInteger(Int16(0))  // no parameter format codes: all text
            buffer.writeInteger(Int16(truncatingIfNeeded: parameters.count))
            for parameter in parameters {
                if let parameter {
                    buffer.writeInteger(Int32(truncatingIfNeeded: parameter.count))
                    buffer.writeBytes(parameter)
                } else {
                    buffer.writeInteger(Int32(-1))
                }
            }
            buffer.writeInteger(Int16(0))  // no result format codes: all text
        }
    }

    /// Bind: `B` with new names and the raw remainder of a received Bind
    /// (``PGFrontend/Bind/parametersAndFormats``), for renaming a statement while forwarding.
    public static func bind(portalName: String, statementName: String, parametersAndFormats: ByteBuffer, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.bind) { buffer in
            buffer.pgWriteCString(portalName)
            buffer.pgWriteCString(statementName)
            buffer.writeImmutableBuffer(parametersAndFormats)
        }
    }

    /// Describe: `D`, kind, name.
    public static func describe(_ kind: PGObjectKind, name: String, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.describe) { buffer in
            buffer.writeInteger(kind.rawValue)
            buffer.pgWriteCString(name)
        }
    }

    /// Execute: `E`, portal name, row limit (0 = no limit).
    public static func execute(portalName: String, maxRows: Int32 = 0, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.execute) { buffer in
            buffer.pgWriteCString(portalName)
            buffer.writeInteger(maxRows)
        }
    }

    /// Close: `C`, kind, name.
    public static func close(_ kind: PGObjectKind, name: String, into buffer: inout ByteBuffer) {
        buffer.pgWriteMessage(type: PGMessageType.Frontend.close) { buffer in
            buffer.writeInteger(kind.rawValue)
            buffer.pgWriteCString(name)
        }
    }

    /// Sync: `S`.
    public static func sync(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Frontend.sync)
    }

    /// Flush: `H`.
    public static func flush(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Frontend.flush)
    }

    /// Terminate: `X`.
    public static func terminate(into buffer: inout ByteBuffer) {
        buffer.pgWriteEmptyMessage(type: PGMessageType.Frontend.terminate)
    }
}
