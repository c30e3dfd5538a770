import NIOCore
import PostgresWire
import SQLClassifier

/// The PostgreSQL wire protocol as a client sends it: the startup packet, then typed messages.
enum WireTargets {
    // MARK: startup

    /// `PGFraming.nextStartupPacket` over the whole input (the first packet, and any that follow,
    /// as a client could send after a refused SSLRequest). Properties: a packet consumes bytes, an
    /// error or an incomplete packet leaves the reader index alone, and feeding the bytes in two
    /// pieces (split where the input's length says) gives the same packets and the same error.
    static let startup: FuzzTargets.Target = { data in
        // The limit: PostgreSQL's by default; the input's length picks a small one now and then
        // so that the too-large path is reached with small inputs.
        let maxLength = data.count % 7 == 3 ? 8 + data.count % 64 : PGProtocol.maxStartupPacketLength
        let whole = startupPackets(data[...], split: nil, maxLength: maxLength)
        if data.count > 1 {
            let split = data.count / 3 + Int(data[data.count / 2]) % (data.count / 2 + 1)
            let pieces = startupPackets(data[...], split: min(split, data.count), maxLength: maxLength)
            FuzzCheck.require(whole == pieces, "startup: whole \(whole) != in two pieces \(pieces)")
        }
    }

    private struct StartupOutcome: Equatable, CustomStringConvertible {
        var packets: [StartupPacket] = []
        var error: String?
        var description: String { "\(packets) error: \(error ?? "none")" }
    }

    private static func startupPackets(_ data: ArraySlice<UInt8>, split: Int?, maxLength: Int) -> StartupOutcome {
        var outcome = StartupOutcome()
        var buffer = ByteBuffer()
        let first = split.map { data.prefix($0) } ?? data
        buffer.writeBytes(first)
        var fedAll = split == nil || split == data.count
        while true {
            let before = buffer.readerIndex
            do {
                if let packet = try PGFraming.nextStartupPacket(from: &buffer, maxLength: maxLength) {
                    FuzzCheck.require(buffer.readerIndex >= before + 8, "startup: a packet consumed under 8 bytes")
                    if case .startup(_, let parameters) = packet {
                        let names = parameters.map(\.name)
                        FuzzCheck.require(Set(names).count == names.count, "startup: a repeated parameter name \(names)")
                        FuzzCheck.require(!names.contains(""), "startup: an empty parameter name")
                    }
                    outcome.packets.append(packet)
                    continue
                }
                FuzzCheck.require(buffer.readerIndex == before, "startup: an incomplete packet moved the reader index")
            } catch {
                FuzzCheck.require(buffer.readerIndex == before, "startup: an error moved the reader index")
                outcome.error = "\(error)"
                return outcome
            }
            if fedAll { return outcome }
            buffer.writeBytes(data.dropFirst(split!))
            fedAll = true
        }
    }

    // MARK: frontend

    /// Message framing with a maximum size (`peekFrame` and `nextFrame`, which must agree), then
    /// every body parser that applies to the message's type byte, both directions (the type
    /// bytes overlap). Frontend messages that parse are encoded again with `PGEncode` and parsed
    /// once more: the same message (and, for a valid UTF-8 body, the same bytes).
    static let frontend: FuzzTargets.Target = { data in
        guard let knob = data.first else { return }
        let maxMessageSize = [16, 1024, 1 << 20, Int(Int32.max)][Int(knob) & 3]
        var buffer = ByteBuffer(bytes: data.dropFirst())
        while true {
            let before = buffer.readerIndex
            let peeked: (type: UInt8, size: Int)?
            do throws(PGWireError) {
                peeked = try PGFraming.peekFrame(in: buffer, maxMessageSize: maxMessageSize)
            } catch {
                var copy = buffer
                do throws(PGWireError) {
                    _ = try PGFraming.nextFrame(from: &copy, maxMessageSize: maxMessageSize)
                    FuzzCheck.fail("frontend: peekFrame threw \(error), nextFrame did not")
                } catch let sameError {
                    FuzzCheck.require(sameError == error, "frontend: peekFrame threw \(error), nextFrame \(sameError)")
                }
                FuzzCheck.require(copy.readerIndex == before, "frontend: an error moved the reader index")
                return
            }
            let frame: PGFrame?
            do {
                frame = try PGFraming.nextFrame(from: &buffer, maxMessageSize: maxMessageSize)
            } catch {
                FuzzCheck.fail("frontend: nextFrame threw \(error) after peekFrame returned \(String(describing: peeked))")
            }
            guard let frame, let peeked else {
                FuzzCheck.require(frame == nil && peeked == nil, "frontend: peekFrame and nextFrame disagree on completeness")
                FuzzCheck.require(buffer.readerIndex == before, "frontend: an incomplete message moved the reader index")
                return
            }
            FuzzCheck.require(frame.type == peeked.type && frame.bytes.readableBytes == peeked.size,
                              "frontend: frame \(frame.type)/\(frame.bytes.readableBytes) != peek \(peeked)")
            FuzzCheck.require(buffer.readerIndex == before + peeked.size, "frontend: the reader index did not move by the frame")
            FuzzCheck.require(frame.bodyLength == peeked.size - 5 && frame.body.readableBytes == frame.bodyLength,
                              "frontend: body length \(frame.bodyLength) for a frame of \(peeked.size)")
            FuzzCheck.require(peeked.size - 1 <= maxMessageSize, "frontend: a frame over the maximum size")
            parseBody(frame)
        }
    }

    private static func parseBody(_ frame: PGFrame) {
        let body = frame.body
        let validUTF8 = String(validating: body.readableBytesView, as: UTF8.self) != nil
        switch frame.type {
        case UInt8(ascii: "Q"):
            if let query = try? PGFrontend.Query(body) {
                _ = SQLClassifier.classify(query.sql.readableBytesView)
                let text = String(buffer: query.sql)
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in [String(buffer: try PGFrontend.Query(body).sql)] }) {
                    PGEncode.query(text, into: &$0)
                }
            }
        case UInt8(ascii: "P"):
            if let message = try? PGFrontend.Parse(body) {
                _ = SQLClassifier.classify(message.query.readableBytesView)
                FuzzCheck.require((try? PGFrontend.Parse(name: message.name, definition: message.definition)) == message,
                                  "frontend: a Parse's definition parses as another")
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in Self.fields(try PGFrontend.Parse(body)) }) {
                    PGEncode.parse(statementName: String(buffer: message.name), query: String(buffer: message.query),
                                   parameterTypeOIDs: Array(message.parameterTypes), into: &$0)
                }
            }
        case UInt8(ascii: "B"):
            if let message = try? PGFrontend.Bind(body) {
                if let arguments = try? message.arguments() {
                    FuzzCheck.require(arguments.parameterFormats.readableBytes + arguments.parameterValues.readableBytes
                                      + arguments.resultFormats.readableBytes + 6 == message.parametersAndFormats.readableBytes,
                                      "frontend: Bind arguments do not add up to the body")
                }
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in
                    let bind = try PGFrontend.Bind(body)
                    return [String(buffer: bind.portal), String(buffer: bind.statement), "\(Array(bind.parametersAndFormats.readableBytesView))"]
                }) {
                    PGEncode.bind(portalName: String(buffer: message.portal), statementName: String(buffer: message.statement),
                                  parametersAndFormats: message.parametersAndFormats, into: &$0)
                }
            }
        case UInt8(ascii: "D"):
            if let message = try? PGFrontend.describe(body) {
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in Self.fields(try PGFrontend.describe(body)) }) {
                    PGEncode.describe(message.kind, name: String(buffer: message.name), into: &$0)
                }
            }
            _ = try? PGParse.dataRow(body)
            _ = try? PGParse.dataRowStrings(body)
        case UInt8(ascii: "C"):
            if let message = try? PGFrontend.close(body) {
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in Self.fields(try PGFrontend.close(body)) }) {
                    PGEncode.close(message.kind, name: String(buffer: message.name), into: &$0)
                }
            }
            _ = try? PGParse.commandComplete(body)
        case UInt8(ascii: "E"):
            if let message = try? PGFrontend.Execute(body) {
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in
                    let execute = try PGFrontend.Execute(body)
                    return [String(buffer: execute.portal), "\(execute.maxRows)"]
                }) {
                    PGEncode.execute(portalName: String(buffer: message.portal), maxRows: message.maxRows, into: &$0)
                }
            }
            _ = try? PGParse.errorResponse(body)
        case UInt8(ascii: "p"):
            if let password = try? PGFrontend.PasswordMessage(body) {
                // Invalid UTF-8 is refused here, never replaced: the bytes always round-trip.
                roundTrip(frame, true, parse: { body throws(PGWireError) in [try PGFrontend.PasswordMessage(body).string] }) {
                    PGEncode.passwordMessage(password.string, into: &$0)
                }
            }
            if let message = try? PGFrontend.SASLInitialResponse(body) {
                roundTrip(frame, validUTF8, parse: { body throws(PGWireError) in
                    let initial = try PGFrontend.SASLInitialResponse(body)
                    return [String(buffer: initial.mechanism), "\(initial.data.map { Array($0.readableBytesView) } as [UInt8]?)"]
                }) {
                    PGEncode.saslInitialResponse(mechanism: String(buffer: message.mechanism),
                                                 data: message.data.map { Array($0.readableBytesView) }, into: &$0)
                }
            }
            let data = Array(PGFrontend.SASLResponse(body).data.readableBytesView)
            roundTrip(frame, true, parse: { body throws(PGWireError) in ["\(Array(PGFrontend.SASLResponse(body).data.readableBytesView))"] }) {
                PGEncode.saslResponse(data: data, into: &$0)
            }
        case UInt8(ascii: "Z"):
            _ = try? PGParse.readyForQuery(body)
        case UInt8(ascii: "N"):
            _ = try? PGParse.noticeResponse(body)
        case UInt8(ascii: "S"):
            _ = try? PGParse.parameterStatus(body)
        case UInt8(ascii: "K"):
            _ = try? PGParse.backendKeyData(body)
        case UInt8(ascii: "R"):
            _ = try? PGParse.authentication(body)
        case UInt8(ascii: "v"):
            _ = try? PGParse.negotiateProtocolVersion(body)
        case UInt8(ascii: "T"):
            _ = try? PGParse.rowDescription(body)
        default:
            break
        }
    }

    /// What a view says, as strings (names are decoded with replacement, as `PGEncode` writes
    /// them again), for comparing a message with its re-encoding.
    private static func fields(_ parse: PGFrontend.Parse) -> [String] {
        [String(buffer: parse.name), String(buffer: parse.query)] + parse.parameterTypes.map { "\($0)" }
    }

    private static func fields(_ reference: PGFrontend.ObjectReference) -> [String] {
        ["\(reference.kind)", String(buffer: reference.name)]
    }

    /// Encodes a parsed message again: parsing that gives the same message, and for a valid
    /// UTF-8 body (strings are decoded with replacement) the same bytes.
    private static func roundTrip(
        _ frame: PGFrame, _ bytesMustMatch: Bool, parse: (ByteBuffer) throws(PGWireError) -> [String],
        encode: (inout ByteBuffer) -> Void
    ) {
        var encoded = ByteBuffer()
        encode(&encoded)
        if bytesMustMatch {
            FuzzCheck.require(encoded == frame.bytes, "frontend: \(frame.bytes.readableBytesView.map { $0 }) re-encoded as \(encoded.readableBytesView.map { $0 })")
        }
        guard let reframed = try? PGFraming.nextFrame(from: &encoded, maxMessageSize: Int(Int32.max)) else {
            FuzzCheck.fail("frontend: a re-encoded message does not frame")
        }
        guard let original = try? parse(frame.body), let again = try? parse(reframed.body) else {
            FuzzCheck.fail("frontend: a re-encoded message does not parse")
        }
        FuzzCheck.require(original == again, "frontend: \(original) re-encoded parses as \(again)")
    }
}
