import ConciergeConfig
import NIOCore
import NIOEmbedded
import Testing

@testable import ConciergeRuntime
@testable import MySQLServer
@testable import PostgresServer

/// A session leaves the registry even when its channel never became active. SwiftNIO closes a
/// channel whose registration failed (its event loop shutting down as the client is accepted)
/// without `channelInactive`: the handler is only removed. A session still registered would be
/// counted among the clients for good and hold up a drain.
@Suite struct SessionTeardownTests {
    static func configuration(_ engine: EngineFamily) -> ProxyConfiguration {
        ProxyConfiguration(
            name: "unit", engineFamily: engine, listen: HostPort(host: "127.0.0.1", port: 1),
            auth: [AuthConfiguration(secretARN: "env:X", secret: .env(name: "X"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "127.0.0.1", port: 2))]))
    }

    /// What a session sees of SwiftNIO's close of a channel that was never active: its handler
    /// is removed, and no `channelInactive` reaches it (EmbeddedChannel fires one on every close:
    /// the handler in front keeps it from the session).
    final class NoInactive: ChannelInboundHandler {
        typealias InboundIn = NIOAny
        func channelInactive(context: ChannelHandlerContext) {}
    }

    func expectUnregistered<Engine>(_ runtime: ProxyRuntime<Engine>, _ session: Engine.ClientHandler, loop: EmbeddedEventLoop) throws {
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(NoInactive())
        try channel.pipeline.syncOperations.addHandler(session)
        #expect(runtime.clientConnections == 1)
        try channel.close().wait()
        loop.run()
        #expect(runtime.clientConnections == 0)
    }

    @Test func aPostgresSessionNeverActiveIsUnregistered() throws {
        let loop = EmbeddedEventLoop()
        let runtime = try PostgresRuntime(
            configuration: Self.configuration(.postgresql), credentials: [DatabaseCredential(username: "app", password: "secret")],
            group: loop, logger: .init(label: "test"))
        try expectUnregistered(runtime, runtime.makeSession(on: loop), loop: loop)
    }

    @Test func aMySQLSessionNeverActiveIsUnregistered() throws {
        let loop = EmbeddedEventLoop()
        let runtime = try MySQLRuntime(
            configuration: Self.configuration(.mysql), credentials: [DatabaseCredential(username: "app", password: "secret")],
            group: loop, logger: .init(label: "test"))
        try expectUnregistered(runtime, runtime.makeSession(on: loop), loop: loop)
    }
}
