import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The handshake server on SwiftNIO: one ServerBootstrap per event loop (SO_REUSEPORT), one
/// handler per connection that answers the startup packet and the md5 password, then waits for
/// Terminate. Everything a NIO-based proxy does per connection, minus the proxy.
final class HandshakeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private static let loginOK = Wire.loginOK(parameterStatus: Wire.defaultParameterStatus)
    private let storedHash: [UInt8]
    private var buffer: ByteBuffer?
    private var salt: [UInt8] = []
    private var started = false

    init(storedHash: [UInt8]) { self.storedHash = storedHash }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        while let length = nextLength() {
            let frame = buffer!.readBytes(length: length)!
            if !started {
                started = true
                salt = [UInt8.random(in: 0...255), 1, 2, 3]
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: Wire.authenticationMD5(salt: salt))), promise: nil)
            } else if frame[0] == 0x70 {
                guard Array(frame[5..<(frame.count - 1)]) == Wire.md5Response(storedHash: storedHash, salt: salt) else {
                    context.close(promise: nil)
                    return
                }
                // Built once, as the bare-epoll server does (it cost 7,600 instructions a login).
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: Self.loginOK)), promise: nil)
                salt = []
            } else {
                context.close(promise: nil)  // Terminate, or anything else
                return
            }
        }
        // Nothing kept while idle: a buffer held here would keep SwiftNIO's receive buffer alive.
        if buffer?.readableBytes == 0 { buffer = nil }
    }

    /// The length of the next complete frame in `buffer`, if there is one.
    private func nextLength() -> Int? {
        guard let buffer else { return nil }
        let headerOffset = started ? 1 : 0
        guard buffer.readableBytes >= headerOffset + 4,
              let length = buffer.getInteger(at: buffer.readerIndex + headerOffset, as: UInt32.self),
              buffer.readableBytes >= Int(length) + headerOffset
        else { return nil }
        return Int(length) + headerOffset
    }
}

enum NIOHandshakeServer {
    static func run(port: Int, threads: Int, storedHash: [UInt8]) throws -> Never {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        for loop in group.makeIterator() {
            try listen(on: loop, port: port) { HandshakeHandler(storedHash: storedHash) }
        }
        while true { pause() }
    }

    /// A SO_REUSEPORT listener on `loop` (so each loop accepts its own connections) whose every
    /// connection gets a new handler. Accepted the way Concierge accepts (`ClientAcceptor` in
    /// ProxyRuntime+Listeners.swift): the handler is added and the socket registered and made
    /// active in the listener's read event, without the ten or so futures of `ServerBootstrap`'s
    /// child setup, so that the floor is the least a SwiftNIO server pays per connection.
    static func listen(on loop: any EventLoop, port: Int, makeHandler: @escaping @Sendable () -> any ChannelHandler) throws {
        _ = try ServerBootstrap(group: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            .serverChannelOption(ChannelOptions.backlog, value: 4096)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Acceptor(makeHandler: makeHandler))
                }
            }
            .childChannelInitializer { channel in
                // Only for a connection accepted for another loop (never, with one listener per
                // loop on Linux): the Acceptor passes those on to NIO.
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(makeHandler())
                }
            }
            .bind(host: "127.0.0.1", port: port).wait()
    }

    final class Acceptor: ChannelInboundHandler {
        typealias InboundIn = any Channel
        private let makeHandler: @Sendable () -> any ChannelHandler

        init(makeHandler: @escaping @Sendable () -> any ChannelHandler) { self.makeHandler = makeHandler }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let client = Self.unwrapInboundIn(data)
            guard client.eventLoop === context.eventLoop else {
                context.fireChannelRead(data)
                return
            }
            do {
                // A small first receive buffer, as Concierge's: SwiftNIO keeps a channel's first
                // buffer for the channel's life (2,048 bytes with its default allocator), and
                // an idle client's memory is measured here too. One `Int`: kept inline.
                try client.syncOptions!.setOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 128))
                try client.pipeline.syncOperations.addHandler(makeHandler())
            } catch {
                client.close(promise: nil)
                return
            }
            client._channelCore.registerAlreadyConfigured0(promise: nil)
        }
    }
}
