import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The minimal transaction pooler of RawLoop, on SwiftNIO: per event loop a SO_REUSEPORT
/// listener and its share of the backends (so a client and its backend always share a thread),
/// a client's bytes forwarded as `ByteBuffer`s to a backend leased at its first message and
/// released at ReadyForQuery(idle). What NIO costs per transaction, beside the bare epoll pooler.
/// One event loop's backends and waiting clients; touched only on that loop.
final class LoopPool: @unchecked Sendable {
    var idle: [PoolerBackendHandler] = []
    var waiters: [PoolerClientHandler] = []
    var waitersHead = 0
    let storedHash: [UInt8]
    var loginOK: [UInt8] = []

    init(storedHash: [UInt8]) { self.storedHash = storedHash }

    func lease(to client: PoolerClientHandler) {
        if let backend = idle.popLast() { client.assign(backend) } else { waiters.append(client) }
    }

    func release(_ backend: PoolerBackendHandler) {
        while waitersHead < waiters.count {
            let client = waiters[waitersHead]
            waitersHead += 1
            if client.isOpen {
                client.assign(backend)
                return
            }
        }
        waiters.removeAll(keepingCapacity: true)
        waitersHead = 0
        idle.append(backend)
    }
}

final class PoolerBackendHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let settings: BackendSettings
    private let pool: LoopPool
    private let ready: EventLoopPromise<Void>
    private var loggedIn = false
    private var loginBuffer: ByteBuffer?
    var channel: Channel?
    weak var client: PoolerClientHandler?
    private var remaining = 0
    private var header: [UInt8] = []
    private var lastType: UInt8 = 0

    init(settings: BackendSettings, pool: LoopPool, ready: EventLoopPromise<Void>) {
        self.settings = settings
        self.pool = pool
        self.ready = ready
    }

    func channelActive(context: ChannelHandlerContext) {
        channel = context.channel
        let startup = Wire.startup(user: settings.user, database: settings.database)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: startup)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        guard loggedIn else { return login(context: context, incoming: &incoming) }
        // Scan for ReadyForQuery(idle), then forward the bytes as they are.
        var ready = false
        incoming.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                if remaining > 0 {
                    let take = min(remaining, bytes.count - offset)
                    remaining -= take
                    if remaining == 0, lastType == 0x5A { ready = bytes[offset + take - 1] == 0x49 }
                    offset += take
                    continue
                }
                header.append(bytes[offset])
                offset += 1
                if header.count == 5 {
                    lastType = header[0]
                    remaining = Wire.int32(header, at: 1) - 4
                    header.removeAll(keepingCapacity: true)
                    ready = false
                }
            }
        }
        if let client { client.channel?.writeAndFlush(incoming, promise: nil) }
        if ready {
            client?.backend = nil
            client = nil
            pool.release(self)
        }
    }

    private func login(context: ChannelHandlerContext, incoming: inout ByteBuffer) {
        if loginBuffer == nil { loginBuffer = incoming } else { loginBuffer!.writeBuffer(&incoming) }
        while let buffer = loginBuffer, buffer.readableBytes >= 5,
              let length = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self),
              buffer.readableBytes >= Int(length) + 1
        {
            let message = loginBuffer!.readBytes(length: Int(length) + 1)!
            switch message[0] {
            case 0x52 where Wire.int32(message, at: 5) == 5:
                let stored = Wire.storedHash(user: settings.user, password: settings.password)
                let password = Wire.message(0x70, Wire.md5Response(storedHash: stored, salt: Array(message[9..<13])) + [0])
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: password)), promise: nil)
            case 0x53:
                pool.loginOK += message
            case 0x5A:
                loggedIn = true
                pool.idle.append(self)
                ready.succeed(())
            case 0x45:
                ready.fail(FloorError.loginRefused)
            default:
                break
            }
        }
    }
}

enum FloorError: Error { case loginRefused }

final class PoolerClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let pool: LoopPool
    private var buffer: ByteBuffer?
    private var salt: [UInt8] = []
    private var started = false
    private var loggedIn = false
    private var waiting = false
    var channel: Channel?
    var backend: PoolerBackendHandler?
    var isOpen = true

    init(pool: LoopPool) { self.pool = pool }

    func channelActive(context: ChannelHandlerContext) { channel = context.channel }

    func channelInactive(context: ChannelHandlerContext) {
        isOpen = false
        if let backend {
            backend.client = nil
            self.backend = nil
            pool.release(backend)
        }
    }

    func assign(_ backend: PoolerBackendHandler) {
        waiting = false
        self.backend = backend
        backend.client = self
        if let pending = buffer, pending.readableBytes > 0 {
            buffer = nil
            backend.channel?.writeAndFlush(pending, promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if loggedIn, buffer == nil {
            if incoming.getInteger(at: incoming.readerIndex, as: UInt8.self) == 0x58 {
                context.close(promise: nil)
            } else if let backend {
                backend.channel?.writeAndFlush(incoming, promise: nil)
            } else {
                buffer = incoming
                if !waiting {
                    waiting = true
                    pool.lease(to: self)
                }
            }
            return
        }
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        if !started {
            guard let length = buffer!.getInteger(at: buffer!.readerIndex, as: UInt32.self),
                  buffer!.readableBytes >= Int(length) else { return }
            buffer!.moveReaderIndex(forwardBy: Int(length))
            started = true
            salt = [UInt8.random(in: 0...255), 1, 2, 3]
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: Wire.authenticationMD5(salt: salt))), promise: nil)
            return
        }
        if !loggedIn {
            guard buffer!.readableBytes >= 5, let length = buffer!.getInteger(at: buffer!.readerIndex + 1, as: UInt32.self),
                  buffer!.readableBytes >= Int(length) + 1 else { return }
            let frame = buffer!.readBytes(length: Int(length) + 1)!
            guard frame[0] == 0x70, Array(frame[5..<(frame.count - 1)]) == Wire.md5Response(storedHash: pool.storedHash, salt: salt) else {
                context.close(promise: nil)
                return
            }
            loggedIn = true
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: pool.loginOK)), promise: nil)
        }
        guard let pending = buffer, pending.readableBytes > 0 else {
            buffer = nil
            return
        }
        if pending.getInteger(at: pending.readerIndex, as: UInt8.self) == 0x58 {
            context.close(promise: nil)
            return
        }
        if let backend {
            buffer = nil
            backend.channel?.writeAndFlush(pending, promise: nil)
        } else if !waiting {
            waiting = true
            pool.lease(to: self)
        }
    }
}

enum NIOPooler {
    static func run(port: Int, threads: Int, storedHash: [UInt8], backends settings: BackendSettings) throws -> Never {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        for loop in group.makeIterator() {
            let pool = LoopPool(storedHash: storedHash)
            var ready: [EventLoopFuture<Void>] = []
            for _ in 0..<settings.connectionsPerLoop {
                let promise = loop.makePromise(of: Void.self)
                ready.append(promise.futureResult)
                _ = try ClientBootstrap(group: loop)
                    .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(
                                PoolerBackendHandler(settings: settings, pool: pool, ready: promise))
                        }
                    }
                    .connect(host: "127.0.0.1", port: settings.port).wait()
            }
            try EventLoopFuture.andAllSucceed(ready, on: loop).wait()
            try loop.submit {
                // Each backend appended its ParameterStatus messages: keep one backend's worth.
                let perBackend = pool.loginOK.count / max(1, settings.connectionsPerLoop)
                pool.loginOK = Wire.loginOK(parameterStatus: Array(pool.loginOK.prefix(perBackend)))
            }.wait()
            try NIOHandshakeServer.listen(on: loop, port: port) { PoolerClientHandler(pool: pool) }
        }
        while true { pause() }
    }
}
