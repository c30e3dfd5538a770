import ArgumentParser
import Foundation
import ConciergeConfig
import ConciergeServer
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct Concierge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "concierge",
        abstract: "A PostgreSQL proxy that multiplexes client transactions over a small pool of database connections.",
        subcommands: [
            Serve.self, CheckConfig.self,
            DescribeDBProxies.self, DescribeDBProxyTargetGroups.self, DescribeDBProxyTargets.self,
            ModifyDBProxy.self, ModifyDBProxyTargetGroup.self,
            RegisterDBProxyTargets.self, DeregisterDBProxyTargets.self,
            GenerateDBAuthToken.self,
        ]
    )

    static let adminVerbs: Set<String> = Set([
        DescribeDBProxies.self, DescribeDBProxyTargetGroups.self, DescribeDBProxyTargets.self,
        ModifyDBProxy.self, ModifyDBProxyTargetGroup.self,
        RegisterDBProxyTargets.self, DeregisterDBProxyTargets.self, GenerateDBAuthToken.self,
    ].compactMap { ($0 as ParsableCommand.Type).configuration.commandName })

    /// As swift-argument-parser's, except that a usage error of an admin verb (a missing or
    /// unknown flag) exits 252, like the aws CLI, instead of 64.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure, let verb = CommandLine.arguments.dropFirst().first,
               adminVerbs.contains(verb)
            {
                printError(fullMessage(for: error))
                Glibc.exit(AdminExit.usage)
            }
            exit(withError: error)
        }
    }
}

/// Exit status for an invalid configuration.
let configurationErrorExitCode: Int32 = 2

struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "The YAML configuration file.")
    var config: String

    /// The Secrets Manager client, when an auth entry names an `arn:aws:secretsmanager:` secret.
    func remoteSecretFetcher(for loaded: LoadedConfiguration) throws -> (any RemoteSecretFetcher)? {
        let usesSecretsManager = loaded.configuration.proxies.contains { proxy in
            proxy.auth.contains { if case .secretsManager = $0.secret { return true } else { return false } }
        }
        guard usesSecretsManager, let credentials = loaded.secretsManagerCredentials else { return nil }
        do {
            return try SecretsManagerFetcher(configuration: loaded.configuration.secretsManager, credentials: credentials)
        } catch {
            printError("concierge: invalid configuration in \(config):")
            printError("secrets_manager: \(error)")
            throw ExitCode(configurationErrorExitCode)
        }
    }

    /// Fetches Secrets Manager secrets; problems are printed like configuration errors (status 2).
    func fetchRemoteSecrets(_ loaded: LoadedConfiguration, with fetcher: (any RemoteSecretFetcher)?) async throws
        -> LoadedConfiguration
    {
        do {
            return try await loaded.fetchingRemoteSecrets(with: fetcher)
        } catch {
            printError("concierge: invalid configuration in \(config):")
            printError(error.description)
            throw ExitCode(configurationErrorExitCode)
        }
    }

    /// Loads and validates the configuration, printing every problem and exiting with status 2.
    func load() throws -> LoadedConfiguration {
        do {
            return try ConfigurationLoader.load(path: config)
        } catch {
            printError("concierge: invalid configuration in \(config):")
            printError(error.description)
            throw ExitCode(configurationErrorExitCode)
        }
    }
}

func printError(_ message: String) {
    var stderr = StandardError()
    print(message, to: &stderr)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        StructuredLogHandler.writeToStandardError(string)
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run every proxy in the configuration until SIGTERM or SIGINT, then drain.")

    @OptionGroup var options: ConfigOptions

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(name: .long, help: "Event-loop threads (default: one per core).")
    var threads: Int?

    @Option(name: .long, help: "Log line format: logfmt or json.")
    var logFormat: LogFormat = .logfmt

    func run() async throws {
        var loaded = try options.load()
        let remoteSecrets = try options.remoteSecretFetcher(for: loaded)
        loaded = try await options.fetchRemoteSecrets(loaded, with: remoteSecrets)
        let level = logLevel
        let format = logFormat
        LoggingSystem.bootstrap { label in
            StructuredLogHandler(label: label, format: format, level: level)
        }
        let logger = Logger(label: "concierge")
        raiseFileDescriptorLimit(logger: logger)

        let threads = self.threads ?? NIOCore.System.coreCount
        guard threads >= 1 else {
            printError("concierge: --threads must be at least 1")
            throw ExitCode(configurationErrorExitCode)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        logger.info("event loops", metadata: [
            "concierge.threads": "\(threads)", "concierge.cores": "\(NIOCore.System.coreCount)",
        ])
        let registry = PrometheusCollectorRegistry()
        // Libraries instrumented with swift-metrics report into the same registry as the proxy.
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let server = ConciergeServer(
            configuration: loaded.configuration, credentials: loaded.credentials, adminToken: loaded.adminToken,
            logger: logger, group: group, registry: registry,
            remoteSecrets: remoteSecrets, environment: ProcessInfo.processInfo.environment,
            iamSecretKeys: loaded.iamSecretKeys)
        do {
            try await server.start()
        } catch {
            logger.critical("could not start", metadata: ["concierge.error": "\(error)"])
            throw ExitCode(1)
        }
        let reloader = ConfigurationReloader(options: options, server: server, logger: logger)
        let services = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: server, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: reloader),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await services.run()
        try? await group.shutdownGracefully()
    }
}

/// SIGHUP: reads the configuration file again and applies it. A file with any problem is
/// refused and logged; the running configuration stays.
struct ConfigurationReloader: Service {
    let options: ConfigOptions
    let server: ConciergeServer
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            for await _ in signals.cancelOnGracefulShutdown() {
                await reload()
            }
        } onGracefulShutdown: {}
    }

    private func reload() async {
        let path = options.config
        logger.info("SIGHUP: reloading the configuration", metadata: ["concierge.config": "\(path)"])
        var loaded: LoadedConfiguration
        do {
            loaded = try ConfigurationLoader.load(path: path)
            let fetcher = try? options.remoteSecretFetcher(for: loaded)
            loaded = try await loaded.fetchingRemoteSecrets(with: fetcher ?? nil)
        } catch {
            logger.error("configuration not reloaded: the file is invalid; the running configuration stays", metadata: [
                "concierge.config": "\(path)", "concierge.error": "\(error)",
            ])
            return
        }
        do {
            try server.reload(loaded)
            logger.info("configuration reloaded", metadata: ["concierge.config": "\(path)"])
        } catch {
            logger.error("configuration not reloaded; the running configuration stays", metadata: [
                "concierge.config": "\(path)", "concierge.error": "\(error.description)",
            ])
        }
    }
}

extension LogFormat: ExpressibleByArgument {}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration and print the effective settings, defaults filled in.")

    @OptionGroup var options: ConfigOptions

    func run() throws {
        let loaded = try options.load()
        print(EffectiveConfiguration.render(loaded.configuration), terminator: "")
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Raises the open-file limit to the hard limit: every client and backend is a descriptor.
func raiseFileDescriptorLimit(logger: Logger) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 {
            logger.warning("could not raise the open-file limit")
        }
    }
    logger.debug("open-file limit", metadata: ["concierge.nofile": "\(limit.rlim_cur)"])
}
