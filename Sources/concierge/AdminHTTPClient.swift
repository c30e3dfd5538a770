import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the admin API is: an `http://host[:port][/prefix]` URL (plain HTTP only).
struct AdminEndpoint: Sendable, Equatable {
    /// The URL as given (for messages).
    var url: String
    var host: String
    var port: Int
    /// A path prefix the routes go under ("" or e.g. "/concierge"), without a trailing slash.
    var basePath: String

    static let defaultURL = "http://127.0.0.1:9187"

    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    init(url: String) throws(Invalid) {
        self.url = url
        let lower = url.lowercased()
        if lower.hasPrefix("https://") {
            throw Invalid(description: "https is not supported: the admin API serves plain HTTP (http://HOST:PORT)")
        }
        guard lower.hasPrefix("http://") else {
            throw Invalid(description: "\(url) is not an http:// URL (expected http://HOST[:PORT])")
        }
        let rest = url.dropFirst("http://".count)
        if rest.contains("?") || rest.contains("#") {
            throw Invalid(description: "\(url): a query or fragment is not allowed in the endpoint URL")
        }
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var path = String(rest[authorityEnd...])
        while path.hasSuffix("/") { path.removeLast() }
        if authority.contains("@") {
            throw Invalid(description: "\(url): user information is not supported in the endpoint URL")
        }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                throw Invalid(description: "\(url): unterminated IPv6 address")
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Invalid(description: "\(url): bad text after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw Invalid(description: "\(url): no host") }
        var port = 80
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw Invalid(description: "\(url): the port must be a number from 1 to 65535")
            }
            port = p
        }
        self.host = String(host)
        self.port = port
        self.basePath = path
    }

    /// The value of the Host header.
    var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == 80 ? h : "\(h):\(port)"
    }
}

struct AdminHTTPResponse: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: [UInt8]
}

/// Why a request got no response: the CLI prints it and exits with 255.
enum AdminTransportError: Error {
    /// The TCP connection could not be made (refused, unresolvable host, connect timeout).
    case connect(String)
    /// No complete response within the timeout.
    case timeout(seconds: Int64)
    /// The connection broke, or the response was not HTTP.
    case io(String)
}

/// A minimal HTTP/1.1 client over SwiftNIO: one request per connection (`Connection: close`),
/// the whole response body collected, everything (connect included) within `timeout`.
struct AdminHTTPClient: Sendable {
    var endpoint: AdminEndpoint
    var token: String?
    var timeout: TimeAmount = .seconds(10)
    var group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton

    /// Sends `method path` (`path` starts with "/" and goes under the endpoint's prefix).
    func send(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil) async throws(AdminTransportError) -> AdminHTTPResponse {
        let deadline = NIODeadline.now() + timeout
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: endpoint.hostHeader)
        headers.add(name: "User-Agent", value: "concierge-cli")
        headers.add(name: "Accept", value: "application/json")
        headers.add(name: "Connection", value: "close")
        if let token {
            headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        if let body {
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(body.count))
        }
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: endpoint.basePath + path, headers: headers)

        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: endpoint.host, port: endpoint.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTPRequestEncoder())
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPResponseDecoder()))
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            if NIODeadline.now() >= deadline { throw .timeout(seconds: timeout.nanoseconds / 1_000_000_000) }
            throw .connect(Self.describeConnectError(error))
        }

        // The deadline closes the connection; reading then ends without a complete response.
        let rawChannel = channel.channel
        let timer = rawChannel.eventLoop.scheduleTask(deadline: deadline) {
            rawChannel.close(promise: nil)
        }
        defer { timer.cancel() }

        var responseHead: HTTPResponseHead?
        var responseBody: [UInt8] = []
        var complete = false
        var failure: (any Error)?
        do {
            try await channel.executeThenClose { inbound, outbound in
                // The whole request in one write: the server may answer (and, with
                // `Connection: close`, close) as soon as it has the head of a request without a
                // body, and a later write of `.end` then failed with "I/O on closed channel"
                // although the answer had arrived (seen under load in test_cli).
                var parts: [HTTPClientRequestPart] = [.head(head)]
                if let body { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
                parts.append(.end(nil))
                try await outbound.write(contentsOf: parts)
                for try await part in inbound {
                    switch part {
                    case .head(let h):
                        // An interim 1xx response precedes the real one.
                        if h.status.code >= 200 { responseHead = h }
                    case .body(let buffer):
                        responseBody.append(contentsOf: buffer.readableBytesView)
                    case .end:
                        if responseHead != nil {
                            complete = true
                            return
                        }
                    }
                }
            }
        } catch {
            failure = error
        }
        if complete, let responseHead {
            return AdminHTTPResponse(status: responseHead.status, headers: responseHead.headers, body: responseBody)
        }
        if NIODeadline.now() >= deadline {
            throw .timeout(seconds: timeout.nanoseconds / 1_000_000_000)
        }
        if let failure {
            throw .io(Self.describeIOError(failure))
        }
        throw .io("the connection was closed before a complete response")
    }

    static func describeConnectError(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first {
                return describeConnectError(first.error)
            }
            return "could not resolve the host name \(e.host)"
        }
        if let e = error as? IOError {
            return String(cString: strerror(e.errnoCode))
        }
        if let e = error as? ChannelError, case .connectTimeout(let t) = e {
            return "no connection within \(t.nanoseconds / 1_000_000_000) s"
        }
        return "\(error)"
    }

    static func describeIOError(_ error: any Error) -> String {
        if let e = error as? IOError {
            return String(cString: strerror(e.errnoCode))
        }
        if let e = error as? HTTPParserError {
            return "the response is not valid HTTP/1.1 (\(e))"
        }
        return "\(error)"
    }
}
