import Foundation
import NIOCore
import XCTest

@testable import MySQLWire

extension ByteBuffer {
    /// A buffer holding `hex` (whitespace ignored).
    init(hex: String) {
        self.init(bytes: [UInt8](hex: hex))
    }

    var bytes: [UInt8] { Array(self.readableBytesView) }
}

extension Array where Element == UInt8 {
    init(hex: String) {
        let digits = Array(hex.utf8.filter { !($0 == 32 || $0 == 10 || $0 == 13 || $0 == 9) })
        precondition(digits.count % 2 == 0, "odd number of hex digits")
        func value(_ digit: UInt8) -> UInt8 {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
            default: preconditionFailure("not a hex digit")
            }
        }
        self = stride(from: 0, to: digits.count, by: 2).map { value(digits[$0]) << 4 | value(digits[$0 + 1]) }
    }

    var hex: String { self.map { String(format: "%02x", $0) }.joined() }
}

/// Encodes with an `encode(into:)`-style closure and returns the bytes.
func encoded(_ body: (inout ByteBuffer) -> Void) -> ByteBuffer {
    var buffer = ByteBuffer()
    body(&buffer)
    return buffer
}

/// All logical payloads in `bytes`, decoded with a fresh decoder; fails if bytes are left over.
func decodeAll(
    _ bytes: ByteBuffer, maxPayload: Int = 1 << 26, expectedSequenceID: UInt8? = nil,
    file: StaticString = #filePath, line: UInt = #line
) throws -> [MySQLPacket] {
    var decoder = MySQLPacketDecoder(maxPayload: maxPayload, expectedSequenceID: expectedSequenceID)
    var buffer = bytes
    var packets: [MySQLPacket] = []
    while let packet = try decoder.next(from: &buffer) {
        packets.append(packet)
    }
    XCTAssertEqual(buffer.readableBytes, 0, "bytes left over", file: file, line: line)
    XCTAssertFalse(decoder.hasPartialPacket, "a split payload left half-read", file: file, line: line)
    return packets
}

/// One recorded conversation from Captures/NAME.hex (written by capture.py).
struct Capture {
    enum Direction { case client, server }

    var name: String
    var capabilities: MySQLCapabilities
    var expect: String
    var note: String
    var records: [(Direction, ByteBuffer)]

    var serverRecords: [ByteBuffer] { self.records.filter { $0.0 == .server }.map(\.1) }
    var clientRecords: [ByteBuffer] { self.records.filter { $0.0 == .client }.map(\.1) }

    static let directory: URL = {
        guard let url = Bundle.module.url(forResource: "Captures", withExtension: nil) else {
            fatalError("the Captures resource directory is missing")
        }
        return url
    }()

    /// Hex tokens, where `HH*COUNT` stands for COUNT bytes HH.
    static func expand(_ tokens: Substring) -> ByteBuffer {
        var buffer = ByteBuffer()
        for token in tokens.split(separator: " ") {
            if let star = token.firstIndex(of: "*") {
                let byte = [UInt8](hex: String(token[..<star]))[0]
                buffer.writeRepeatingByte(byte, count: Int(token[token.index(after: star)...])!)
            } else {
                buffer.writeBytes([UInt8](hex: String(token)))
            }
        }
        return buffer
    }

    static func names() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: Self.directory.path)
            .filter { $0.hasSuffix(".hex") }
            .map { String($0.dropLast(4)) }
            .sorted()
    }

    static func load(_ name: String) throws -> Capture {
        let text = try String(contentsOf: Self.directory.appendingPathComponent(name + ".hex"), encoding: .utf8)
        var capture = Capture(name: name, capabilities: [], expect: "", note: "", records: [])
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("# capabilities: 0x") {
                capture.capabilities = MySQLCapabilities(rawValue: UInt64(line.dropFirst(18), radix: 16)!)
            } else if line.hasPrefix("# expect: ") {
                capture.expect = String(line.dropFirst(10))
            } else if line.hasPrefix("# note: ") {
                capture.note = String(line.dropFirst(8))
            } else if line.hasPrefix("C ") || line == "C" {
                capture.records.append((.client, Self.expand(line.dropFirst(1))))
            } else if line.hasPrefix("S ") || line == "S" {
                capture.records.append((.server, Self.expand(line.dropFirst(1))))
            }
        }
        return capture
    }
}
