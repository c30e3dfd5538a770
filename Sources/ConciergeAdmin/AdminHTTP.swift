import ConciergeConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
import ProxyCore

/// The admin listener: HTTP/1.1 with keep-alive, bodies up to 1 MiB.
///
/// It must never take the data path down: at most `AdminListener.maxConnections` connections
/// are open at once (more are closed as they are accepted); a connection has
/// `requestTimeout` to deliver each complete request (counted from its accept, then from the
/// end of the previous response: slow senders and idle keep-alive connections are closed); a
/// framing error is answered 400 and the connection closed.
final class AdminHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let maxBodySize = 1 << 20
    static let requestTimeout = TimeAmount.seconds(15)

    private let router: AdminRouter
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    private var deadline: Scheduled<Void>?

    init(router: AdminRouter) {
        self.router = router
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    /// The next complete request must arrive within `requestTimeout`.
    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: Self.requestTimeout) {
            channel.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A framing error (answered 400 by NIO's protocol error handler before us) or an I/O
        // error: nothing more is read from this connection.
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.removeAll()
            tooLarge = false
        case .body(var chunk):
            guard !tooLarge else { return }
            if body.count + chunk.readableBytes > Self.maxBodySize {
                tooLarge = true
                body.removeAll()
                return
            }
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            guard let head else { return }
            self.head = nil
            // Being answered: no deadline until the response is out.
            deadline?.cancel()
            deadline = nil
            let keepAlive = head.isKeepAlive && !tooLarge
            if tooLarge {
                respond(.error(AdminError(status: 413, code: "RequestTooLarge", field: nil, message: "the body is larger than 1 MiB")),
                        version: head.version, keepAlive: false, context: context)
                return
            }
            let (path, query) = Self.split(head.uri)
            let request = AdminRequest(
                method: head.method, path: path, query: query,
                authorization: head.headers.first(name: "authorization"), body: body)
            body = []
            let version = head.version
            let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            router.handle(request, on: context.eventLoop).whenComplete { result in
                let context = boundContext.value
                let response: AdminResponse
                switch result {
                case .success(let value): response = value
                case .failure(let error):
                    response = .error(AdminError(status: 500, code: "InternalFailure", field: nil, message: "\(error)"))
                }
                self.respond(response, version: version, keepAlive: keepAlive, context: context)
            }
        }
    }

    private func respond(_ response: AdminResponse, version: HTTPVersion, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.utf8.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: response.status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: response.body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        } else if context.channel.isActive {
            armDeadline(context: context)
        }
    }

    /// Path (percent-decoded) and query parameters of a request target.
    static func split(_ uri: String) -> (String, [String: String]) {
        let pieces = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = percentDecoded(String(pieces[0]))
        var query: [String: String] = [:]
        if pieces.count > 1 {
            for pair in pieces[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = percentDecoded(String(kv[0]))
                query[key] = kv.count > 1 ? percentDecoded(String(kv[1].map { $0 == "+" ? " " : $0 })) : ""
            }
        }
        return (path, query)
    }

    static func percentDecoded(_ text: String) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
               let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Starts the admin listener.
public enum AdminListener {
    /// Admin connections open at once; beyond it, new ones are closed as they are accepted.
    static let maxConnections = 64

    public static func bind(_ address: HostPort, router: AdminRouter, group: any EventLoopGroup, logger: Logger) async throws
        -> any Channel
    {
        let open = NIOLockedValueBox(0)
        return try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.pipeline.addHandler(ListenerBackoff.handler(listener: "admin", logger: logger))
            }
            .childChannelInitializer { channel in
                let admitted = open.withLockedValue { count -> Bool in
                    guard count < maxConnections else { return false }
                    count += 1
                    return true
                }
                guard admitted else {
                    // Refused before anything is read: an attacker's idle connections cannot
                    // hold more than maxConnections descriptors.
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                return channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(AdminHTTPHandler(router: router))
                }
            }
            .bind(host: address.host, port: address.port).get()
    }
}
