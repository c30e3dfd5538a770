import ConciergeConfig
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Runs every proxy of a configuration until graceful shutdown, then drains them.
///
/// A ServiceLifecycle `Service`: put it in a `ServiceGroup` with SIGTERM/SIGINT as graceful
/// shutdown signals. On shutdown it stops accepting, lets open transactions finish (up to
/// `drain_timeout`), and closes every client and backend.
public final class ConciergeServer: Service, @unchecked Sendable {
    private let configuration: ConciergeConfiguration
    private let credentials: [String: [DatabaseCredential]]
    private let logger: Logger
    private let group: any EventLoopGroup
    private var proxies: [ProxyRuntime] = []

    public init(
        configuration: ConciergeConfiguration, credentials: [String: [DatabaseCredential]],
        logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.credentials = credentials
        self.logger = logger
        self.group = group
    }

    /// Binds every listener; throws if any cannot be bound (nothing is left listening then).
    public func start() async throws {
        do {
            for proxy in configuration.proxies {
                let runtime = try ProxyRuntime(
                    configuration: proxy, credentials: credentials[proxy.name] ?? [], group: group, logger: logger)
                try await runtime.start()
                proxies.append(runtime)
            }
        } catch {
            for proxy in proxies { await proxy.stopAccepting() }
            proxies = []
            throw error
        }
    }

    public func run() async throws {
        if proxies.isEmpty { try await start() }
        try? await gracefulShutdown()
        logger.info("shutting down: no longer accepting clients")
        for proxy in proxies { await proxy.stopAccepting() }
        await withTaskGroup(of: Void.self) { group in
            for proxy in proxies {
                group.addTask { await proxy.drain(timeout: .seconds(Int64(self.configuration.drainTimeout))) }
            }
        }
        logger.info("shutdown complete")
    }
}
