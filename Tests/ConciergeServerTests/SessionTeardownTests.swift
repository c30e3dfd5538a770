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
    /// What a session sees of SwiftNIO's close of a channel that was never active: its handler
    /// is removed, and no `channelInactive` reaches it (EmbeddedChannel fires one on every close:
    /// the handler in front keeps it from the session).
    final class NoInactive: ChannelInboundHandler {
        typealias InboundIn = NIOAny
        func channelInactive(context: ChannelHandlerContext) {}
    }

    /// A runtime of `engine`, one session on a channel that never becomes active, and its close:
    /// the runtime's client count must come back to zero.
    func expectUnregistered<Engine: ServedEngine>(_ engine: Engine.Type, _ family: EngineFamily) throws {
        let loop = EmbeddedEventLoop()
        let runtime = try ProxyRuntime<Engine>(
            configuration: ProxyConfiguration(
                name: "unit", engineFamily: family, listen: HostPort(host: "127.0.0.1", port: 1),
                auth: [AuthConfiguration(secretARN: "env:X", secret: .env(name: "X"))],
                targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "127.0.0.1", port: 2))])),
            credentials: [DatabaseCredential(username: "app", password: "secret")], group: loop, logger: .init(label: "test"))
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(NoInactive())
        try channel.pipeline.syncOperations.addHandler(runtime.makeSession(on: loop))
        #expect(runtime.clientConnections == 1)
        try channel.close().wait()
        loop.run()
        #expect(runtime.clientConnections == 0)
    }

    @Test func aPostgresSessionNeverActiveIsUnregistered() throws {
        try expectUnregistered(PostgresEngine.self, .postgresql)
    }

    @Test func aMySQLSessionNeverActiveIsUnregistered() throws {
        try expectUnregistered(MySQLEngine.self, .mysql)
    }
}
