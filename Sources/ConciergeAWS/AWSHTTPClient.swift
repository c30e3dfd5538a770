import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// An `http://` or `https://` endpoint: scheme, host, port (no path beyond `/`).
public struct AWSEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var useTLS: Bool
    /// The host name or IP address (an IPv6 address without brackets).
    public var host: String
    public var port: Int

    public init(useTLS: Bool, host: String, port: Int) {
        self.useTLS = useTLS
        self.host = host
        self.port = port
    }

    /// Parses `http://HOST[:PORT][/]` or `https://HOST[:PORT][/]`; nil for anything else
    /// (another scheme, a path, a query, user information, a bad port).
    public init?(url: String) {
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            useTLS = true
            rest = url.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            useTLS = false
            rest = url.dropFirst(7)
        } else {
            return nil
        }
        var authority = rest
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        guard !authority.isEmpty, !authority.contains(where: { "/?#@ ".contains($0) }) else { return nil }
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            host = String(authority)
        }
        guard !host.isEmpty else { return nil }
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let p = Int(portText), (1...65535).contains(p)
            else { return nil }
            port = p
        } else {
            port = useTLS ? 443 : 80
        }
    }

    /// The `Host` header: the host (IPv6 in brackets), with `:PORT` unless it is the scheme's
    /// default port (as botocore signs it).
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (useTLS ? 443 : 80) ? h : "\(h):\(port)"
    }

    public var description: String { "\(useTLS ? "https" : "http")://\(hostHeader)" }
}

/// A response: status, headers, body.
struct AWSHTTPResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: [UInt8]
}

/// Why an HTTP exchange failed (no secret in any description).
enum AWSHTTPError: Error, Sendable, Equatable {
    case connect(String)
    case timeout
    case io(String)
    case tooLarge(Int)
}

/// One request per connection (`Connection: close`), the response read whole (`Content-Length`,
/// chunked, or until the server closes) up to `maximumBodySize` bytes, within `timeout` from
/// the start of the connection attempt.
struct AWSHTTPClient: Sendable {
    var group: any EventLoopGroup
    var sslContext: NIOSSLContext?
    var timeout: TimeAmount
    var maximumBodySize: Int

    func send(
        endpoint: AWSEndpoint, head: HTTPRequestHead, body: [UInt8]
    ) async throws(AWSHTTPError) -> AWSHTTPResponse {
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: AWSHTTPResponse.self)
        let deadline = NIODeadline.now() + timeout
        let timeoutTask = eventLoop.scheduleTask(deadline: deadline) {
            promise.fail(AWSHTTPError.timeout)
        }
        let sslContext = self.sslContext
        let limit = maximumBodySize
        let sniHost: String? = endpoint.useTLS && !Self.isIPAddress(endpoint.host) ? endpoint.host : nil
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if endpoint.useTLS {
                        guard let sslContext else { throw AWSHTTPError.connect("no TLS configuration") }
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: sslContext, serverHostname: sniHost))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise, limit: limit))
                }
            }
        let connect = bootstrap.connect(host: endpoint.host, port: endpoint.port)
        connect.whenFailure { error in
            promise.fail(AWSHTTPError.connect(Self.describe(error)))
        }
        connect.whenSuccess { channel in
            // When the response (or a failure, or the timeout) is in, the connection is done.
            promise.futureResult.whenComplete { _ in
                channel.close(promise: nil)
            }
            var buffer = channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if !body.isEmpty {
                channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
            }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil)).whenFailure { error in
                promise.fail(AWSHTTPError.io("could not send the request: \(Self.describe(error))"))
            }
        }
        defer { timeoutTask.cancel() }
        do {
            return try await promise.futureResult.get()
        } catch let error as AWSHTTPError {
            throw error
        } catch {
            throw .io(Self.describe(error))
        }
    }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? AWSHTTPError {
            switch error {
            case .connect(let s), .io(let s): return s
            case .timeout: return "timed out"
            case .tooLarge(let n): return "the response is larger than \(n) bytes"
            }
        }
        return String(describing: error)
    }
}

/// Collects the response and fulfils the promise (first outcome wins).
private final class ResponseCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    let promise: EventLoopPromise<AWSHTTPResponse>
    let limit: Int
    var head: HTTPResponseHead?
    var body: [UInt8] = []

    init(promise: EventLoopPromise<AWSHTTPResponse>, limit: Int) {
        self.promise = promise
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            if h.status == .continue { return }
            if let length = h.headers.first(name: "content-length").flatMap(Int.init), length > limit {
                fail(.tooLarge(limit), context: context)
                return
            }
            head = h
        case .body(var buffer):
            guard head != nil else { return }
            if body.count + buffer.readableBytes > limit {
                fail(.tooLarge(limit), context: context)
                return
            }
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard let head else { return }
            promise.succeed(AWSHTTPResponse(status: Int(head.status.code), headers: head.headers, body: body))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(AWSHTTPError.io(head == nil
            ? "the connection closed before a response"
            : "the connection closed before the end of the response"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(.io(AWSHTTPClient.describe(error)), context: context)
    }

    private func fail(_ error: AWSHTTPError, context: ChannelHandlerContext) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
