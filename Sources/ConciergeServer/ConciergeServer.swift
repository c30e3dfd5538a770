import ConciergeRuntime
import MySQLServer
import PostgresServer
import ConciergeAuth
import ConciergeAdmin
import ConciergeConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Fetches `arn:aws:secretsmanager:` secrets (their SecretString).
public protocol RemoteSecretFetcher: Sendable {
    func secretString(arn: String) async throws -> String
}

extension LoadedConfiguration {
    /// Fetches the Secrets Manager secrets the loader left pending; any failure names the key
    /// path and the ARN, never a value.
    public func fetchingRemoteSecrets(with fetcher: (any RemoteSecretFetcher)?) async throws(ConfigurationError)
        -> LoadedConfiguration
    {
        guard !pendingSecrets.isEmpty else { return self }
        var fetched: [PendingSecret: DatabaseCredential] = [:]
        var issues: [ConfigurationIssue] = []
        for pending in pendingSecrets {
            guard let fetcher else {
                issues.append(ConfigurationIssue(
                    keyPath: pending.keyPath, value: pending.arn, expectation: "Secrets Manager credentials",
                    message: "\(pending.arn): no Secrets Manager credentials"))
                continue
            }
            do {
                let text = try await fetcher.secretString(arn: pending.arn)
                fetched[pending] = try SecretLoader.parse(json: Data(text.utf8))
            } catch {
                issues.append(ConfigurationIssue(
                    keyPath: pending.keyPath, value: pending.arn, expectation: "a readable Secrets Manager secret",
                    message: "\(pending.arn): \(error)"))
            }
        }
        if !issues.isEmpty { throw ConfigurationError(issues: issues) }
        return try completing(with: fetched)
    }
}

/// Runs every proxy of a configuration, and the admin API, until graceful shutdown; then drains.
///
/// A ServiceLifecycle `Service`: put it in a `ServiceGroup` with SIGTERM/SIGINT as graceful
/// shutdown signals. On shutdown it stops accepting, lets open transactions finish (up to
/// `drain_timeout`), and closes every client and backend.
public final class ConciergeServer: Service, @unchecked Sendable {
    private let logger: Logger
    private let group: any EventLoopGroup
    /// Where the metrics of every proxy are registered (also swift-metrics' factory, see main).
    public let registry: PrometheusCollectorRegistry
    private let state: NIOLockedValueBox<State>
    private let router: AdminRouter
    private let remoteSecrets: (any RemoteSecretFetcher)?
    private let iamSecretKeys: NIOLockedValueBox<[String: String]>
    private let environment: [String: String]
    /// Set when a backend login was refused: secrets are re-read at the next tick.
    private let refreshRequested = Atomic<Bool>(false)

    private struct State {
        var configuration: ConciergeConfiguration
        var credentials: [String: [DatabaseCredential]]
        var proxies: [any ServedProxy] = []
        var adminChannel: (any Channel)?
    }

    public init(
        configuration: ConciergeConfiguration, credentials: [String: [DatabaseCredential]], adminToken: String? = nil,
        logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        remoteSecrets: (any RemoteSecretFetcher)? = nil, environment: [String: String] = [:],
        iamSecretKeys: [String: String] = [:]
    ) {
        self.iamSecretKeys = NIOLockedValueBox(iamSecretKeys)
        self.logger = logger
        self.remoteSecrets = remoteSecrets
        self.environment = environment
        self.group = group
        self.registry = registry
        let state = NIOLockedValueBox(State(configuration: configuration, credentials: credentials))
        self.state = state
        self.router = AdminRouter(
            proxies: { state.withLockedValue { $0.proxies } }, token: adminToken, registry: registry, logger: logger)
    }

    var proxies: [any ServedProxy] { state.withLockedValue { $0.proxies } }

    /// Binds every listener; throws if any cannot be bound (nothing is left listening then).
    public func start() async throws {
        let (configuration, credentials) = state.withLockedValue { ($0.configuration, $0.credentials) }
        var started: [any ServedProxy] = []
        do {
            let iam = try IAMAuthenticator(configuration: configuration.iam, secretKeys: iamSecretKeys.withLockedValue { $0 })
            for proxy in configuration.proxies {
                let runtime: any ServedProxy
                switch proxy.engineFamily {
                case .postgresql:
                    runtime = try PostgresEngineFactory.makeProxy(
                        configuration: proxy, credentials: credentials[proxy.name] ?? [], group: group,
                        registry: registry, logger: logger)
                case .mysql:
                    runtime = try MySQLEngineFactory.makeProxy(
                        configuration: proxy, credentials: credentials[proxy.name] ?? [], group: group,
                        registry: registry, logger: logger)
                }
                try await runtime.start()
                runtime.onBackendAuthFailure = { [weak self] in self?.refreshRequested.store(true, ordering: .relaxed) }
                runtime.iam = iam
                started.append(runtime)
            }
            if let admin = configuration.admin {
                let channel = try await AdminListener.bind(admin.listen, router: router, group: group, logger: logger)
                state.withLockedValue { $0.adminChannel = channel }
                logger.info("admin API listening", metadata: ["concierge.listen": "\(admin.listen)"])
            }
        } catch {
            for proxy in started { await proxy.stopAccepting() }
            throw error
        }
        state.withLockedValue { $0.proxies = started }
    }

    public func run() async throws {
        if proxies.isEmpty { try await start() }
        let refresher = Task { await self.refreshSecretsPeriodically() }
        try? await gracefulShutdown()
        refresher.cancel()
        logger.info("shutting down: no longer accepting clients")
        let (proxies, admin, drainTimeout) = state.withLockedValue {
            ($0.proxies, $0.adminChannel, $0.configuration.drainTimeout)
        }
        for proxy in proxies { await proxy.stopAccepting() }
        await withTaskGroup(of: Void.self) { group in
            for proxy in proxies {
                group.addTask { await proxy.drain(timeout: .seconds(Int64(drainTimeout))) }
            }
        }
        try? await admin?.close()
        logger.info("shutdown complete")
    }

    // MARK: Secret rotation

    /// Re-reads every secret each `secret_refresh_interval`, and soon after the database refuses
    /// a secret's credentials (at most every 5 seconds then).
    private func refreshSecretsPeriodically() async {
        var lastRefresh = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let interval = state.withLockedValue { $0.configuration.secretRefreshInterval }
            let elapsed = ContinuousClock.now - lastRefresh
            let requested = refreshRequested.load(ordering: .relaxed) && elapsed >= .seconds(5)
            guard requested || elapsed >= .seconds(interval) else { continue }
            refreshRequested.store(false, ordering: .relaxed)
            lastRefresh = ContinuousClock.now
            await refreshSecrets()
        }
    }

    /// Reads every auth entry's secret again; a proxy whose secrets all read gets the new
    /// credentials (clients stay connected). A secret that cannot be read is logged by name and
    /// the proxy keeps its current credentials.
    func refreshSecrets() async {
        let (configuration, proxies) = state.withLockedValue { ($0.configuration, $0.proxies) }
        for proxy in proxies {
            guard let entry = configuration.proxy(named: proxy.name) else { continue }
            var credentials: [DatabaseCredential] = []
            var complete = true
            for auth in entry.auth {
                let name = auth.secretARN.isEmpty ? auth.secret.description : auth.secretARN
                do {
                    switch auth.secret {
                    case .secretsManager(let arn):
                        guard let remoteSecrets else { throw SecretError.remoteSecret }
                        let text = try await remoteSecrets.secretString(arn: arn)
                        credentials.append(try SecretLoader.parse(json: Data(text.utf8)))
                    case .file, .env:
                        credentials.append(try SecretLoader.load(auth.secret, environment: environment))
                    }
                } catch {
                    logger.error("could not re-read a secret; the current credentials stay in use", metadata: [
                        "concierge.proxy": "\(proxy.name)", "concierge.secret": "\(name)", "concierge.error": "\(error)",
                    ])
                    complete = false
                    break
                }
            }
            if complete { proxy.updateCredentials(credentials) }
        }
    }

    // MARK: - Reload

    /// Why a reloaded configuration was refused (the running one stays).
    public struct ReloadError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Applies a reloaded configuration: per proxy, its settings, pool, auth entries (with their
    /// secrets as just read) and targets; and the admin token and drain timeout. Clients are not
    /// dropped. Changes that need new listeners (listen addresses, endpoints, proxies added or
    /// removed, `admin.listen`) are refused as a whole, naming the keys.
    public func reload(_ loaded: LoadedConfiguration) throws(ReloadError) {
        let (current, proxies) = state.withLockedValue { ($0.configuration, $0.proxies) }
        let new = loaded.configuration
        var needsRestart: [String] = []
        if current.proxies.map(\.name) != new.proxies.map(\.name) { needsRestart.append("proxies (names or order)") }
        if current.admin?.listen != new.admin?.listen { needsRestart.append("admin.listen") }
        for (index, proxy) in new.proxies.enumerated() {
            guard let old = current.proxy(named: proxy.name) else { continue }
            needsRestart += ProxyConfiguration.unreloadableChanges(from: old, to: proxy, at: "proxies[\(index)]")
        }
        if !needsRestart.isEmpty {
            throw ReloadError(description: "these changes need a restart: \(needsRestart.joined(separator: ", "))")
        }
        let iam: IAMAuthenticator?
        do {
            iam = try IAMAuthenticator(configuration: new.iam, secretKeys: loaded.iamSecretKeys)
        } catch {
            throw ReloadError(description: "\(error)")
        }
        iamSecretKeys.withLockedValue { $0 = loaded.iamSecretKeys }
        for proxy in proxies {
            proxy.iam = iam
            guard let configuration = new.proxy(named: proxy.name) else { continue }
            do {
                try proxy.reload(configuration, credentials: loaded.credentials[proxy.name] ?? [])
            } catch {
                throw ReloadError(description: "proxy \(proxy.name): \(error.message)")
            }
        }
        router.setToken(loaded.adminToken)
        state.withLockedValue {
            $0.configuration = new
            $0.credentials = loaded.credentials
        }
    }
}
