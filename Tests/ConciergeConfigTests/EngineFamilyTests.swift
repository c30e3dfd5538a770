import Testing
@testable import ConciergeConfig

/// One proxy; `auth` and `targetGroup` in YAML's flow style (the auth entries are on line 5).
func proxyYAML(
    engine: String? = "MYSQL", auth: String = #"[{secret_arn: "env:APP_SECRET"}]"#,
    targetGroup: String = #"{targets: [{endpoint: "10.0.0.21"}]}"#
) -> String {
    """
    proxies:
      - name: shop
        \(engine.map { "engine_family: \($0)" } ?? "# no engine_family")
        listen: "0.0.0.0:3306"
        auth: \(auth)
        target_group: \(targetGroup)

    """
}

/// A valid minimal MYSQL proxy; its target has no port.
let mysqlYAML = proxyYAML()

let threeSecrets = minimalEnvironment.merging([
    "OTHER": reportingSecretJSON, "THIRD": #"{"username": "third", "password": "pw-3"}"#,
]) { $1 }

@Suite("Engine families: per-engine defaults and rules")
struct EngineFamilyTests {
    @Test func mysqlProxyGetsTheMySQLDefaults() throws {
        let loaded = try ConfigurationLoader.parse(yaml: mysqlYAML, baseDirectory: "/x", environment: minimalEnvironment)
        let proxy = loaded.configuration.proxies[0]
        #expect(proxy.engineFamily == .mysql)
        // RDS Proxy's default for MySQL (the RDS API's UserAuthConfig).
        #expect(proxy.auth[0].clientPasswordAuthType == .mysqlCachingSHA2Password)
        #expect(proxy.targetGroup.targets == [TargetConfiguration(endpoint: HostPort(host: "10.0.0.21", port: 3306))])
        #expect(proxy.targetGroup.healthCheck == HealthCheckConfiguration(database: ""))
        // The engine-neutral settings keep their defaults.
        #expect(proxy.targetGroup.connectionPoolConfig == ConnectionPoolConfiguration())
        #expect(proxy.targetGroup.tls == BackendTLSConfiguration())
        #expect(proxy.maxMessageSize == ConfigurationDefaults.maxMessageSize)
        #expect(loaded.credentials["shop"] == [DatabaseCredential(username: "app", password: "s3cr3t-app-pw")])

        // The effective configuration shows the engine's defaults and re-parses to the same model.
        let rendered = EffectiveConfiguration.render(loaded.configuration)
        #expect(rendered.contains("engine_family: MYSQL\n"))
        #expect(rendered.contains("client_password_auth_type: MYSQL_CACHING_SHA2_PASSWORD\n"))
        #expect(rendered.contains("database: \"\"\n"))
        #expect(rendered.contains("- endpoint: \"10.0.0.21:3306\"\n"))
        #expect(try ConfigurationLoader.parseConfiguration(yaml: rendered, baseDirectory: "/x") == loaded.configuration)
    }

    @Test func postgresqlProxyKeepsThePostgreSQLDefaults() throws {
        let yaml = minimal(replacing: "\"10.0.0.11:5432\"", with: "\"10.0.0.11\"")
        let proxy = try ConfigurationLoader.parseConfiguration(yaml: yaml, baseDirectory: "/x").proxies[0]
        #expect(proxy.auth[0].clientPasswordAuthType == .postgresScramSHA256)
        #expect(proxy.targetGroup.targets == [TargetConfiguration(endpoint: HostPort(host: "10.0.0.11", port: 5432))])
        #expect(proxy.targetGroup.healthCheck == HealthCheckConfiguration())
        #expect(proxy.targetGroup.healthCheck.database == "postgres")
    }

    @Test func mysqlProxyWithEverySetting() throws {
        let yaml = proxyYAML(
            auth: #"""
                [{secret_arn: "env:APP_SECRET", client_password_auth_type: MYSQL_NATIVE_PASSWORD},
                       {secret_arn: "env:REPORTING_SECRET", client_password_auth_type: MYSQL_CACHING_SHA2_PASSWORD}]
                """#,
            targetGroup: #"""
                {connection_pool_config: {max_connections_percent: 40, session_pinning_filters: [EXCLUDE_VARIABLE_SETS],
                         init_query: "SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES'"},
                       health_check: {interval_ms: 250, timeout_ms: 500, database: shop}, tls: {mode: verify-full},
                       targets: [{endpoint: "10.0.0.21:3307"}, {endpoint: "db-2"}]}
                """#)
        let environment = minimalEnvironment.merging(["REPORTING_SECRET": reportingSecretJSON]) { $1 }
        let loaded = try ConfigurationLoader.parse(yaml: yaml, baseDirectory: "/x", environment: environment)
        let proxy = loaded.configuration.proxies[0]
        #expect(proxy.auth.map(\.clientPasswordAuthType) == [.mysqlNativePassword, .mysqlCachingSHA2Password])
        #expect(proxy.targetGroup.targets.map(\.endpoint) == [
            HostPort(host: "10.0.0.21", port: 3307), HostPort(host: "db-2", port: 3306),
        ])
        #expect(proxy.targetGroup.healthCheck == HealthCheckConfiguration(intervalMS: 250, timeoutMS: 500, database: "shop"))
        #expect(proxy.targetGroup.tls.mode == .verifyFull)
        #expect(proxy.targetGroup.connectionPoolConfig.excludesVariableSets)
        #expect(proxy.targetGroup.connectionPoolConfig.initQuery == "SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES'")
        let rendered = EffectiveConfiguration.render(loaded.configuration)
        #expect(try ConfigurationLoader.parse(yaml: rendered, baseDirectory: "/x", environment: environment) == loaded)
    }

    @Test func authTypesOfTheOtherEngineAreRefused() {
        let mysql = expectFailure(proxyYAML(auth: """
            [{secret_arn: "env:APP_SECRET", client_password_auth_type: POSTGRES_MD5},
                   {secret_arn: "env:OTHER", client_password_auth_type: MYSQL_NATIVE_PASSWORD},
                   {secret_arn: "env:THIRD", client_password_auth_type: POSTGRES_SCRAM_SHA_256}]
            """), environment: threeSecrets)
        expectIssue(mysql, "proxies[0].auth[0].client_password_auth_type: POSTGRES_MD5 is not allowed with engine_family MYSQL "
            + "(allowed: MYSQL_NATIVE_PASSWORD, MYSQL_CACHING_SHA2_PASSWORD)")
        expectIssue(mysql, "proxies[0].auth[2].client_password_auth_type: POSTGRES_SCRAM_SHA_256 is not allowed with "
            + "engine_family MYSQL (allowed: MYSQL_NATIVE_PASSWORD, MYSQL_CACHING_SHA2_PASSWORD)")
        #expect(mysql.issues.count == 2, "\(mysql)")
        let issue = mysql.issues(at: "proxies[0].auth[0].client_password_auth_type").first
        #expect(issue?.value == "POSTGRES_MD5")
        #expect(issue?.expectation == "one of MYSQL_NATIVE_PASSWORD, MYSQL_CACHING_SHA2_PASSWORD")

        for value in ["MYSQL_NATIVE_PASSWORD", "MYSQL_CACHING_SHA2_PASSWORD"] {
            let postgres = expectFailure(minimal(replacing: "      - secret_arn: \"env:APP_SECRET\"\n", with: """
                      - secret_arn: "env:APP_SECRET"
                        client_password_auth_type: \(value)

                """))
            expectIssue(postgres, "proxies[0].auth[0].client_password_auth_type: \(value) is not allowed with engine_family "
                + "POSTGRESQL (allowed: POSTGRES_SCRAM_SHA_256, POSTGRES_MD5)")
            #expect(postgres.issues.count == 1, "\(postgres)")
        }
    }

    @Test func anUnknownAuthTypeListsTheEnginesValues() {
        let mysql = expectFailure(proxyYAML(auth: #"[{secret_arn: "env:APP_SECRET", client_password_auth_type: MYSQL_SHA256_PASSWORD}]"#))
        expectIssue(mysql, "proxies[0].auth[0].client_password_auth_type: MYSQL_SHA256_PASSWORD is not a valid value "
            + "(allowed: MYSQL_NATIVE_PASSWORD, MYSQL_CACHING_SHA2_PASSWORD)")
        #expect(mysql.issues.count == 1, "\(mysql)")
        #expect(mysql.issues.first?.line == 5)

        let postgres = expectFailure(minimal(replacing: "      - secret_arn: \"env:APP_SECRET\"\n", with: """
                  - secret_arn: "env:APP_SECRET"
                    client_password_auth_type: scram-sha-256

            """))
        expectIssue(postgres, "proxies[0].auth[0].client_password_auth_type: scram-sha-256 is not a valid value "
            + "(allowed: POSTGRES_SCRAM_SHA_256, POSTGRES_MD5)")
        #expect(postgres.issues.count == 1, "\(postgres)")
    }

    @Test func anInvalidOrMissingEngineLeavesOutTheEngineRules() {
        // The values are not judged against the default engine nobody wrote.
        let invalid = expectFailure(proxyYAML(
            engine: "MARIADB", auth: #"[{secret_arn: "env:APP_SECRET", client_password_auth_type: MYSQL_NATIVE_PASSWORD}]"#))
        expectIssue(invalid, "proxies[0].engine_family: MARIADB is not a valid value (allowed: POSTGRESQL, MYSQL)")
        #expect(invalid.issues.count == 1, "\(invalid)")

        let missing = expectFailure(proxyYAML(engine: nil, auth: """
            [{secret_arn: "env:APP_SECRET", client_password_auth_type: POSTGRES_MD5},
                   {secret_arn: "env:OTHER", client_password_auth_type: MYSQL_CACHING_SHA2_PASSWORD}]
            """), environment: threeSecrets)
        expectIssue(missing, "proxies[0].engine_family: missing required key (expected: one of POSTGRESQL, MYSQL)")
        #expect(missing.issues.count == 1, "\(missing)")
    }

    @Test func anInvalidTargetNamesTheEnginesDefaultPort() {
        let error = expectFailure(proxyYAML(targetGroup: #"{targets: [{endpoint: "10.0.0.21:x"}]}"#))
        let issue = error.issues(at: "proxies[0].target_group.targets[0].endpoint").first
        #expect(issue?.expectation == "host:port or [ipv6]:port with a port in 1...65535 (port 3306 when omitted)", "\(error)")
        let postgres = expectFailure(minimal(replacing: "\"10.0.0.11:5432\"", with: "\"10.0.0.11:x\""))
        #expect(postgres.issues(at: "proxies[0].target_group.targets[0].endpoint").first?.expectation
            == "host:port or [ipv6]:port with a port in 1...65535 (port 5432 when omitted)", "\(postgres)")
    }

    @Test func theValidatorChecksModelsBuiltInCode() {
        // The admin API and code-built configurations go through the same rule.
        var proxy = ProxyConfiguration(
            name: "shop", engineFamily: .mysql, listen: HostPort(host: "127.0.0.1", port: 3306),
            auth: [AuthConfiguration(secretARN: "env:A", secret: .env(name: "A"))],
            targetGroup: TargetGroupConfiguration(targets: [TargetConfiguration(endpoint: HostPort(host: "db", port: 3306))]))
        let issues = ConfigurationValidator.validate(proxy, at: "proxy")
        #expect(issues.map(\.description) == [
            "proxy.auth[0].client_password_auth_type: POSTGRES_SCRAM_SHA_256 is not allowed with engine_family MYSQL "
                + "(allowed: MYSQL_NATIVE_PASSWORD, MYSQL_CACHING_SHA2_PASSWORD)",
        ])
        #expect(ConfigurationValidator.validate(proxy, at: "proxy", engineKnown: false).isEmpty)
        proxy.auth[0].clientPasswordAuthType = ConfigurationDefaults.clientPasswordAuthType(for: .mysql)
        #expect(ConfigurationValidator.validate(proxy, at: "proxy").isEmpty)
        #expect(ConfigurationValidator.validate(ConciergeConfiguration(proxies: [proxy])).isEmpty)
    }

    @Test func perEngineDefaultsAndAllowedValues() {
        #expect(ConfigurationDefaults.targetPort(for: .postgresql) == 5432)
        #expect(ConfigurationDefaults.targetPort(for: .mysql) == 3306)
        #expect(ConfigurationDefaults.targetPort == ConfigurationDefaults.targetPort(for: .postgresql))
        #expect(ConfigurationDefaults.clientPasswordAuthType(for: .postgresql) == .postgresScramSHA256)
        #expect(ConfigurationDefaults.clientPasswordAuthType(for: .mysql) == .mysqlCachingSHA2Password)
        #expect(ConfigurationDefaults.healthCheckDatabase(for: .postgresql) == "postgres")
        #expect(ConfigurationDefaults.healthCheckDatabase(for: .mysql) == "")
        #expect(ClientPasswordAuthType.allowed(for: .postgresql) == [.postgresScramSHA256, .postgresMD5])
        #expect(ClientPasswordAuthType.allowed(for: .mysql) == [.mysqlNativePassword, .mysqlCachingSHA2Password])
        #expect(EngineFamily.allCases.map(\.rawValue) == ["POSTGRESQL", "MYSQL"])
        for engine in EngineFamily.allCases {
            // Each engine's default is one of its own values.
            #expect(ClientPasswordAuthType.allowed(for: engine).contains(ConfigurationDefaults.clientPasswordAuthType(for: engine)))
        }
        // Every value belongs to exactly one engine.
        #expect(EngineFamily.allCases.flatMap { ClientPasswordAuthType.allowed(for: $0) }.count
            == ClientPasswordAuthType.allCases.count)
    }
}
