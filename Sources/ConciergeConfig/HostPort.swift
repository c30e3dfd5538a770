/// A `host:port` address (`[ipv6]:port` for IPv6 literals). `host` is stored without brackets.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[ipv6]:port`, or (when `defaultPort` is given) `host` / `[ipv6]` / a bare IPv6 literal.
    public init?(parsing text: String, defaultPort: Int? = nil) {
        guard case .success(let value) = HostPort.parse(text, defaultPort: defaultPort) else { return nil }
        self = value
    }

    /// `host:port`, or `[host]:port` when the host is an IPv6 literal.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// `0.0.0.0` or `::`: binds every interface, so it clashes with any other address on the same port.
    public var isWildcard: Bool {
        host == "0.0.0.0" || host == "::" || host == "0:0:0:0:0:0:0:0"
    }

    /// Whether two listen addresses cannot both be bound (same port, and same host or either is a wildcard).
    public func clashes(with other: HostPort) -> Bool {
        guard port == other.port else { return false }
        return isWildcard || other.isWildcard || host.lowercased() == other.host.lowercased()
    }

    public static let portRange: ClosedRange<Int> = 1...65535

    /// A parse failure, with a human-readable reason.
    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public static func parse(_ text: String, defaultPort: Int? = nil) -> Result<HostPort, ParseError> {
        func fail(_ reason: String) -> Result<HostPort, ParseError> { .failure(ParseError(reason: reason)) }
        if text.isEmpty { return fail("empty address") }
        let host: Substring
        let portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return fail("missing ']' after the IPv6 address") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if rest.isEmpty {
                portText = nil
            } else if rest.hasPrefix(":") {
                portText = rest.dropFirst()
            } else {
                return fail("unexpected text after ']'")
            }
            if !host.contains(":") { return fail("only IPv6 addresses may be written in brackets") }
        } else {
            let colons = text.filter { $0 == ":" }.count
            if colons == 0 {
                host = Substring(text)
                portText = nil
            } else if colons == 1 {
                let colon = text.firstIndex(of: ":")!
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            } else if defaultPort != nil {
                host = Substring(text)
                portText = nil
            } else {
                return fail("IPv6 addresses must be written in brackets, like [::1]:5432")
            }
        }
        if host.isEmpty { return fail("missing host") }
        let allowed = host.unicodeScalars.allSatisfy { scalar in
            switch scalar {
            case "a"..."z", "A"..."Z", "0"..."9", ".", "-", "_", ":", "%": return true
            default: return false
            }
        }
        if !allowed { return fail("the host contains characters not allowed in a host name or IP address") }
        let port: Int
        if let portText {
            if portText.isEmpty { return fail("missing port after ':'") }
            guard portText.allSatisfy({ $0.isASCII && $0.isNumber }) else { return fail("the port is not a number") }
            guard let value = Int(portText), portRange.contains(value) else {
                return fail("port \(portText) is out of range (allowed: 1...65535)")
            }
            port = value
        } else if let defaultPort {
            port = defaultPort
        } else {
            return fail("missing port")
        }
        return .success(HostPort(host: String(host), port: port))
    }
}

extension HostPort {
    /// Whether the host is a loopback address: `localhost`, 127.0.0.0/8 or `::1`.
    public var isLoopback: Bool {
        let host = self.host.lowercased()
        if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}
