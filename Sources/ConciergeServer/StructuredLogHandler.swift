import ConciergeJSON
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// How log lines are written.
public enum LogFormat: String, Sendable, CaseIterable {
    /// `ts=2026-11-23T04:00:00.123Z level=info msg="listening" proxy=app listen=127.0.0.1:6432`
    case logfmt
    /// One JSON object per line: `{"ts":"...","level":"info","msg":"listening","proxy":"app",...}`
    case json
}

/// A swift-log handler writing one structured line per event to standard error, in logfmt or
/// JSON. Metadata keys lose their `concierge.` prefix (`concierge.proxy` → `proxy`). Values are
/// quoted and escaped so a line is always one line and always parses.
///
/// What is logged never includes passwords or tokens: the proxy does not put them in metadata,
/// and SQL text (logged only with `debug_logging`) has every string literal and comment
/// redacted (see `SQLRedaction`).
public struct StructuredLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: LogFormat

    public init(label: String, format: LogFormat, level: Logger.Level) {
        self.label = label
        self.format = format
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [
            ("ts", Self.timestamp()), ("level", event.level.rawValue), ("msg", "\(event.message)"),
        ]
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for key in merged.keys.sorted() {
            let name = key.hasPrefix("concierge.") ? String(key.dropFirst("concierge.".count)) : key
            fields.append((name, Self.render(merged[key]!)))
        }
        if event.level >= .error || event.level == .trace {
            fields.append(("source", "\(event.file.split(separator: "/").last ?? ""):\(event.line)"))
        }
        let line: String
        switch format {
        case .logfmt: line = Self.logfmt(fields)
        case .json: line = Self.json(fields)
        }
        Self.writeToStandardError(line + "\n")
    }

    static func render(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return text
        case .stringConvertible(let convertible): return convertible.description
        case .array(let values): return "[" + values.map(render).joined(separator: ",") + "]"
        case .dictionary(let values):
            return "{" + values.keys.sorted().map { "\($0)=\(render(values[$0]!))" }.joined(separator: ",") + "}"
        }
    }

    static func logfmt(_ fields: [(String, String)]) -> String {
        fields.map { key, value in
            let needsQuotes = value.isEmpty || value.unicodeScalars.contains {
                $0 == " " || $0 == "=" || $0 == "\"" || $0 == "\\" || $0.value < 0x20 || $0.value == 0x7F
            }
            guard needsQuotes else { return "\(key)=\(value)" }
            return "\(key)=\"\(escaped(value))\""
        }.joined(separator: " ")
    }

    static func json(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\"\(escaped($0.0))\":\"\(escaped($0.1))\"" }.joined(separator: ",") + "}"
    }

    /// JSON string escaping (also valid inside logfmt's quotes); DEL too, as `\u007f`.
    private static let logEscaping = JSON.Escaping(shortBackspaceAndFormFeed: false, uppercaseHex: false) {
        $0.value == 0x7F
    }

    static func escaped(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        JSON.appendEscaped(text, to: &out, logEscaping)
        return out
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(Int(parts.tm_year) + 1900, 4))-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2))."
            + "\(pad(now.tv_nsec / 1_000_000, 3))Z"
    }

    /// One write(2) per line (retried until all is written), so lines from different threads
    /// never interleave. Also what the executable prints its own errors with.
    public static func writeToStandardError(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
