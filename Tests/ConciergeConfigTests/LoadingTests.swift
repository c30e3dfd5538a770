import Foundation
import Testing
@testable import ConciergeConfig

@Suite("Loading valid configurations")
struct LoadingTests {
    @Test func minimalConfigurationGetsEveryDefault() throws {
        let loaded = try ConfigurationLoader.parse(yaml: minimalYAML, baseDirectory: "/etc/concierge",
                                                   environment: minimalEnvironment)
        let config = loaded.configuration
        #expect(config.drainTimeout == 30)
        #expect(config.admin == nil)
        #expect(config.proxies.count == 1)
        let proxy = config.proxies[0]
        #expect(proxy.name == "app")
        #expect(proxy.engineFamily == .postgresql)
        #expect(proxy.listen == HostPort(host: "0.0.0.0", port: 5432))
        #expect(proxy.endpoints.isEmpty)
        #expect(proxy.requireTLS == false)
        #expect(proxy.idleClientTimeout == 1800)
        #expect(proxy.maxClientConnections == 10_000)
        #expect(proxy.debugLogging == false)
        #expect(proxy.maxMessageSize == 67_108_864)
        #expect(proxy.auth == [AuthConfiguration(
            authScheme: .secrets, secretARN: "env:APP_SECRET", secret: .env(name: "APP_SECRET"), iamAuth: .disabled,
            clientPasswordAuthType: .postgresScramSHA256, description: "")])
        #expect(proxy.targetGroup.name == "default")
        #expect(proxy.targetGroup.connectionPoolConfig == ConnectionPoolConfiguration(
            maxConnectionsPercent: 100, maxIdleConnectionsPercent: 50, connectionBorrowTimeout: 120,
            sessionPinningFilters: [], initQuery: "", backendIdleTimeout: 60))
        #expect(proxy.targetGroup.targets == [TargetConfiguration(endpoint: HostPort(host: "10.0.0.11", port: 5432))])
        #expect(loaded.credentials == ["app": [DatabaseCredential(username: "app", password: "s3cr3t-app-pw")]])

        // The same model built in code with the public initializers' defaults.
        let inCode = ConciergeConfiguration(proxies: [ProxyConfiguration(
            name: "app", listen: HostPort(host: "0.0.0.0", port: 5432),
            auth: [AuthConfiguration(secretARN: "env:APP_SECRET", secret: .env(name: "APP_SECRET"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "10.0.0.11", port: 5432))]))])
        #expect(config == inCode)
        #expect(ConfigurationValidator.validate(inCode).isEmpty)
    }

    static let fullYAML = """
        # every key set
        drain_timeout: 45
        admin:
          listen: "127.0.0.1:9187"
          token: "env:ADMIN_TOKEN"
        proxies:
          - name: app
            engine_family: POSTGRESQL
            listen: "0.0.0.0:5432"
            endpoints:
              - { name: app-ro, target_role: READ_WRITE, listen: "0.0.0.0:5433" }
              - name: app-rw2
                listen: "[::1]:5434"
            require_tls: false
            idle_client_timeout: 900
            max_client_connections: 500
            debug_logging: true
            max_message_size: 1048576
            auth:
              - auth_scheme: SECRETS
                secret_arn: "file:secrets/app_user.json"
                iam_auth: DISABLED
                client_password_auth_type: POSTGRES_MD5
                description: "the \\"app\\" user"
              - secret_arn: env:REPORTING_SECRET
            target_group:
              name: default
              connection_pool_config:
                max_connections_percent: 75
                max_idle_connections_percent: 25
                connection_borrow_timeout: 30
                session_pinning_filters: [EXCLUDE_VARIABLE_SETS]
                init_query: "SET search_path TO app, public"
                backend_idle_timeout: 300
              targets:
                - endpoint: "10.0.0.11:5432"
                - endpoint: "db-2.internal"
                - endpoint: "[fd00::12]:6432"
          - name: billing
            engine_family: POSTGRESQL
            listen: "127.0.0.1:6543"
            auth:
              - secret_arn: "file:/ABSOLUTE/billing.json"
            target_group:
              targets:
                - endpoint: "10.0.1.5"
        """

    @Test func fullConfigurationRoundTrips() throws {
        let dir = try TemporaryDirectory()
        try dir.write("secrets/app_user.json", appSecretJSON)
        try dir.write("billing.json", #"{"username":"billing","password":"pw-billing"}"#)
        let yaml = Self.fullYAML.replacingOccurrences(of: "/ABSOLUTE", with: dir.path)
        let environment = ["REPORTING_SECRET": reportingSecretJSON, "ADMIN_TOKEN": " the-admin-token\n"]
        let loaded = try ConfigurationLoader.parse(yaml: yaml, baseDirectory: dir.path, environment: environment)
        let config = loaded.configuration
        #expect(loaded.adminToken == "the-admin-token")

        #expect(config.drainTimeout == 45)
        #expect(config.admin == AdminConfiguration(listen: HostPort(host: "127.0.0.1", port: 9187), token: "env:ADMIN_TOKEN"))
        let app = try #require(config.proxy(named: "app"))
        #expect(app.endpoints == [
            EndpointConfiguration(name: "app-ro", targetRole: .readWrite, listen: HostPort(host: "0.0.0.0", port: 5433)),
            EndpointConfiguration(name: "app-rw2", targetRole: .readWrite, listen: HostPort(host: "::1", port: 5434)),
        ])
        #expect(app.endpoints[1].listen.description == "[::1]:5434")
        #expect(app.idleClientTimeout == 900)
        #expect(app.maxClientConnections == 500)
        #expect(app.debugLogging)
        #expect(app.maxMessageSize == 1_048_576)
        #expect(app.auth[0] == AuthConfiguration(
            authScheme: .secrets, secretARN: "file:secrets/app_user.json",
            secret: .file(path: dir.path + "/secrets/app_user.json"), iamAuth: .disabled,
            clientPasswordAuthType: .postgresMD5, description: "the \"app\" user"))
        #expect(app.auth[1].secret == .env(name: "REPORTING_SECRET"))
        #expect(app.auth[1].clientPasswordAuthType == .postgresScramSHA256)
        #expect(app.targetGroup.connectionPoolConfig == ConnectionPoolConfiguration(
            maxConnectionsPercent: 75, maxIdleConnectionsPercent: 25, connectionBorrowTimeout: 30,
            sessionPinningFilters: [.excludeVariableSets], initQuery: "SET search_path TO app, public",
            backendIdleTimeout: 300))
        #expect(app.targetGroup.connectionPoolConfig.excludesVariableSets)
        #expect(app.targetGroup.targets.map(\.endpoint) == [
            HostPort(host: "10.0.0.11", port: 5432), HostPort(host: "db-2.internal", port: 5432),
            HostPort(host: "fd00::12", port: 6432),
        ])
        let billing = try #require(config.proxy(named: "billing"))
        #expect(billing.auth[0].secret == .file(path: dir.path + "/billing.json"))
        #expect(billing.targetGroup.targets[0].endpoint.port == 5432)
        #expect(billing.targetGroup.connectionPoolConfig == ConnectionPoolConfiguration())

        #expect(loaded.credentials["app"] == [
            DatabaseCredential(username: "app", password: "s3cr3t-app-pw"),
            DatabaseCredential(username: "reporting", password: "s3cr3t-reporting-pw"),
        ])
        #expect(loaded.credentials["billing"] == [DatabaseCredential(username: "billing", password: "pw-billing")])

        // Effective settings re-parse to the same model and never show a password.
        let rendered = EffectiveConfiguration.render(config)
        #expect(!rendered.contains("s3cr3t"))
        #expect(!rendered.contains("pw-billing"))
        #expect(rendered.contains("secret_arn: \"file:secrets/app_user.json\""))
        let reparsed = try ConfigurationLoader.parse(yaml: rendered, baseDirectory: dir.path, environment: environment)
        #expect(reparsed == loaded)
    }

    @Test func effectiveConfigurationOfMinimalFillsEveryKey() throws {
        let config = try ConfigurationLoader.parseConfiguration(yaml: minimalYAML, baseDirectory: "/etc/concierge")
        let rendered = EffectiveConfiguration.render(config)
        for key in ConfigurationDecoder.proxyKeys + ConfigurationDecoder.authKeys + ConfigurationDecoder.poolKeys
            + ["drain_timeout", "target_group", "targets", "endpoint"] {
            #expect(rendered.contains("\(key):"), "\(key) missing from:\n\(rendered)")
        }
        #expect(rendered.contains("max_idle_connections_percent: 50"))
        #expect(rendered.contains("backend_idle_timeout: 60"))
        #expect(try ConfigurationLoader.parseConfiguration(yaml: rendered, baseDirectory: "/etc/concierge") == config)
    }

    @Test func effectiveConfigurationEscapesAwkwardStrings() throws {
        var config = try ConfigurationLoader.parseConfiguration(yaml: minimalYAML, baseDirectory: "/x")
        config.proxies[0].auth[0].description = "quote \" backslash \\ newline \n tab \t unicode é ✓ #not-a-comment: x"
        config.proxies[0].targetGroup.connectionPoolConfig.initQuery = "SET a = 'b'; -- \"c\"\nSET d = 1"
        config.admin = AdminConfiguration(token: "file:/run/secrets/admin token")
        let rendered = EffectiveConfiguration.render(config)
        #expect(try ConfigurationLoader.parseConfiguration(yaml: rendered, baseDirectory: "/x") == config)
    }

    @Test func effectiveConfigurationRedactsLiteralAdminToken() throws {
        var config = try ConfigurationLoader.parseConfiguration(yaml: minimalYAML, baseDirectory: "/x")
        config.admin = AdminConfiguration(token: "literal-bearer-value")
        let rendered = EffectiveConfiguration.render(config)
        #expect(!rendered.contains("literal-bearer-value"))
        #expect(rendered.contains("<redacted>"))
    }

    @Test func loadFromFileResolvesSecretsAgainstTheConfigDirectory() throws {
        let dir = try TemporaryDirectory()
        try dir.write("conf/secrets/app_user.json", appSecretJSON)
        let yaml = minimal(replacing: "\"env:APP_SECRET\"", with: "\"file:secrets/app_user.json\"")
        let path = try dir.write("conf/concierge.yaml", yaml)
        let loaded = try ConfigurationLoader.load(path: path, environment: [:])
        #expect(loaded.configuration.proxies[0].auth[0].secret == .file(path: dir.path + "/conf/secrets/app_user.json"))
        #expect(loaded.configuration.proxies[0].auth[0].secretARN == "file:secrets/app_user.json")
        #expect(loaded.credentials["app"]?.first?.username == "app")

        // ../ segments are resolved.
        let upward = minimal(replacing: "\"env:APP_SECRET\"", with: "\"file:../conf/secrets/./app_user.json\"")
        let path2 = try dir.write("other/concierge.yaml", upward)
        let loaded2 = try ConfigurationLoader.load(path: path2, environment: [:])
        #expect(loaded2.configuration.proxies[0].auth[0].secret == .file(path: dir.path + "/conf/secrets/app_user.json"))
    }

    @Test func loadReportsAMissingConfigurationFile() {
        do {
            _ = try ConfigurationLoader.load(path: "/nonexistent/concierge.yaml", environment: [:])
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "cannot read the configuration file /nonexistent/concierge.yaml: file not found")
        }
    }

    @Test func yamlConveniencesWork() throws {
        // Anchors, aliases and merge keys share settings between proxies; flow style works.
        let yaml = """
            x-defaults: &defaults
              engine_family: POSTGRESQL
              idle_client_timeout: 60
            proxies:
              - <<: *defaults
                name: a
                listen: 127.0.0.1:7001
                auth: [{secret_arn: "env:APP_SECRET"}]
                target_group: {targets: [{endpoint: db}]}
            """
        // x-defaults is not a known key, so it is refused...
        let error = expectFailure(yaml)
        expectIssue(error, "x-defaults: unknown key (allowed: drain_timeout, admin, iam, secrets_manager, secret_refresh_interval, proxies)")
        // ...but a merge inside a proxy is fine.
        let good = """
            proxies:
              - &first
                name: a
                engine_family: POSTGRESQL
                idle_client_timeout: 60
                listen: 127.0.0.1:7001
                auth: [{secret_arn: "env:APP_SECRET"}]
                target_group: {targets: [{endpoint: db}]}
              - <<: *first
                name: b
                listen: 127.0.0.1:7002
            """
        let loaded = try ConfigurationLoader.parse(yaml: good, baseDirectory: "/x", environment: minimalEnvironment)
        #expect(loaded.configuration.proxies.map(\.name) == ["a", "b"])
        #expect(loaded.configuration.proxies[1].idleClientTimeout == 60)
        #expect(loaded.configuration.proxies[1].listen.port == 7002)
    }

    @Test func nullOptionalValuesMeanDefaults() throws {
        let yaml = minimal(
            replacing: "    listen: \"0.0.0.0:5432\"\n",
            with: "    listen: \"0.0.0.0:5432\"\n    endpoints:\n    idle_client_timeout: ~\n")
        let loaded = try ConfigurationLoader.parse(yaml: yaml, baseDirectory: "/x", environment: minimalEnvironment)
        #expect(loaded.configuration.proxies[0].endpoints.isEmpty)
        #expect(loaded.configuration.proxies[0].idleClientTimeout == 1800)
    }
}

@Suite("Addresses")
struct HostPortTests {
    @Test func parsesAndDescribes() {
        #expect(HostPort(parsing: "0.0.0.0:5432") == HostPort(host: "0.0.0.0", port: 5432))
        #expect(HostPort(parsing: "[::]:5432") == HostPort(host: "::", port: 5432))
        #expect(HostPort(parsing: "db.internal", defaultPort: 5432) == HostPort(host: "db.internal", port: 5432))
        #expect(HostPort(parsing: "[fd00::1]", defaultPort: 5432) == HostPort(host: "fd00::1", port: 5432))
        #expect(HostPort(parsing: "fd00::1", defaultPort: 5432) == HostPort(host: "fd00::1", port: 5432))
        #expect(HostPort(parsing: "db.internal") == nil)
        #expect(HostPort(parsing: "fd00::1") == nil)
        #expect(HostPort(parsing: "db:0") == nil)
        #expect(HostPort(parsing: "db:65536") == nil)
        #expect(HostPort(parsing: ":5432") == nil)
        #expect(HostPort(parsing: "db:54x") == nil)
        #expect(HostPort(parsing: "d b:5432") == nil)
        #expect(HostPort(host: "::1", port: 5432).description == "[::1]:5432")
        #expect(HostPort(host: "10.0.0.1", port: 1).description == "10.0.0.1:1")
    }

    @Test func wildcardClashes() {
        let any = HostPort(host: "0.0.0.0", port: 5432)
        #expect(any.clashes(with: HostPort(host: "127.0.0.1", port: 5432)))
        #expect(HostPort(host: "10.0.0.1", port: 5432).clashes(with: HostPort(host: "::", port: 5432)))
        #expect(!any.clashes(with: HostPort(host: "127.0.0.1", port: 5433)))
        #expect(!HostPort(host: "127.0.0.1", port: 5432).clashes(with: HostPort(host: "127.0.0.2", port: 5432)))
        #expect(HostPort(host: "DB", port: 1).clashes(with: HostPort(host: "db", port: 1)))
    }
}
