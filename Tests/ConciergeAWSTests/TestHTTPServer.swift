import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A request as the test server received it.
struct ReceivedRequest: Sendable {
    var requestLine: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }
}

/// A raw HTTP/1.1 test server: reads one request (headers and a Content-Length body), then
/// replies with exactly the bytes given, hangs, or closes.
final class TestHTTPServer: Sendable {
    enum Reply: Sendable {
        /// Writes these bytes, then closes.
        case bytes([UInt8])
        /// Writes these bytes and keeps the connection open.
        case bytesThenHang([UInt8])
        /// Never answers.
        case hang
        /// Closes without answering.
        case close
    }

    let channel: any Channel
    let port: Int
    private let received = Mutex<[ReceivedRequest]>([])

    var requests: [ReceivedRequest] { received.withLock { $0 } }

    private init(channel: any Channel) {
        self.channel = channel
        self.port = channel.localAddress!.port!
    }

    static func start(tls: NIOSSLContext? = nil, reply: @escaping @Sendable (ReceivedRequest) -> Reply) async throws -> TestHTTPServer {
        let box = Mutex<TestHTTPServer?>(nil)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    try channel.pipeline.syncOperations.addHandler(RequestReader { request in
                        box.withLock { $0 }?.received.withLock { $0.append(request) }
                        return reply(request)
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let server = TestHTTPServer(channel: channel)
        box.withLock { $0 = server }
        return server
    }

    var url: String { "http://127.0.0.1:\(port)" }

    func shutdown() async {
        try? await channel.close()
    }
}

private final class RequestReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let reply: @Sendable (ReceivedRequest) -> TestHTTPServer.Reply
    var bytes: [UInt8] = []
    var done = false

    init(reply: @escaping @Sendable (ReceivedRequest) -> TestHTTPServer.Reply) {
        self.reply = reply
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
        guard !done, let end = headerEnd() else { return }
        let headText = String(decoding: bytes[..<end], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst()
        let headers = lines.filter { !$0.isEmpty }.map { line -> (name: String, value: String) in
            let parts = line.split(separator: ":", maxSplits: 1)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]).trimmingCharacters(in: .whitespaces) : "")
        }
        let length = headers.first { $0.name.lowercased() == "content-length" }.flatMap { Int($0.value) } ?? 0
        guard bytes.count >= end + 4 + length else { return }
        done = true
        let request = ReceivedRequest(requestLine: requestLine, headers: headers, body: Array(bytes[(end + 4)..<(end + 4 + length)]))
        switch reply(request) {
        case .bytes(let out):
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(bytes: out))).whenComplete { _ in
                channel.close(promise: nil)
            }
        case .bytesThenHang(let out):
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: out)), promise: nil)
        case .hang:
            break
        case .close:
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func headerEnd() -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }
}

/// An HTTP/1.1 response with a Content-Length (or chunked) body.
func httpResponse(_ status: Int, _ body: String = "", headers: [String] = [], chunked: Bool = false) -> [UInt8] {
    var text = "HTTP/1.1 \(status) \(status == 200 ? "OK" : "Error")\r\n"
    for header in headers { text += header + "\r\n" }
    if chunked {
        text += "Transfer-Encoding: chunked\r\n\r\n"
        let bytes = Array(body.utf8)
        var index = 0
        var out = Array(text.utf8)
        while index < bytes.count {
            let n = min(7, bytes.count - index)
            out += Array("\(String(n, radix: 16))\r\n".utf8) + bytes[index..<(index + n)] + Array("\r\n".utf8)
            index += n
        }
        return out + Array("0\r\n\r\n".utf8)
    }
    text += "Content-Length: \(body.utf8.count)\r\n\r\n" + body
    return Array(text.utf8)
}
