import Foundation
import Testing
@testable import ConciergeConfig

@Suite("Configuration errors")
struct ErrorTests {
    /// The configuration printer's quoting is valid JSON and YAML: control characters, DEL, C1
    /// controls, U+2028/U+2029 and the byte-order mark as uppercase \u escapes.
    @Test func quotedIsSafeForJSONAndYAML() {
        #expect(quoted("a\"\\\n\t\u{08}\u{0C}\u{7F}\u{85}\u{2028}\u{2029}\u{FEFF}é\u{1F600}")
            == #""a\"\\\n\t\u0008\u000C\u007F\u0085\u2028\u2029\uFEFFé"# + "\u{1F600}\"")
    }

    @Test func malformedYAMLHasLineAndColumn() {
        let error = expectFailure("proxies:\n  - name: app\n    listen: [unclosed\n")
        #expect(error.issues.count == 1)
        let issue = error.issues[0]
        #expect(issue.keyPath == "")
        #expect(issue.line != nil && issue.column != nil)
        #expect(issue.description.hasPrefix("malformed YAML at line "))
        #expect(issue.description.contains("line \(issue.line!), column \(issue.column!)"))

        let tab = expectFailure("proxies:\n\t- name: app\n")
        #expect(tab.issues.count == 1)
        #expect(tab.description.hasPrefix("malformed YAML at line 2, column 1"))
    }

    /// Deep nesting is refused before Yams recurses into it (20,000 `[` overflowed its stack),
    /// in every form that nests without growing the text quadratically; quoted brackets and
    /// comments do not count, and ordinary nesting passes.
    @Test func deepNestingIsRefusedBeforeTheParser() {
        let deep = [
            "proxies: " + String(repeating: "[", count: 20_000),
            "proxies: " + String(repeating: "{a: ", count: 20_000),
            "proxies:\n" + String(repeating: "- ", count: 20_000) + "x\n",
            "proxies:\n" + String(repeating: "? ", count: 20_000) + "x\n",
        ]
        for yaml in deep {
            let error = expectFailure(yaml)
            #expect(error.issues.count == 1)
            #expect(error.description.contains("nested more than 64 levels deep"))
            #expect(error.issues[0].line != nil)
        }
        #expect(NestingGuard.firstExcess(in: "a: " + String(repeating: "[", count: 64)) == nil)
        #expect(NestingGuard.firstExcess(in: "a: " + String(repeating: "[", count: 65))?.depth == 65)
        let quoted = "a: '" + String(repeating: "[", count: 500) + "'\nb: \"" + String(repeating: "{", count: 500)
            + "\\\"\"\n# " + String(repeating: "[", count: 500) + "\nc: x # " + String(repeating: "- ", count: 500) + "\n"
        #expect(NestingGuard.firstExcess(in: quoted) == nil)
    }

    /// RDS Proxy's default: max_idle_connections_percent left out is half of
    /// max_connections_percent (a file with max_connections_percent: 10 was refused over 50).
    @Test func dashesAndQuestionMarksInsideALineAreNotNesting() {
        // A `where` bound only `:`: every `-` or `?` of a line counted as a level, and a value
        // with 70 dashes was refused as nested 70 deep (seen while building the fuzz harness).
        #expect(NestingGuard.firstExcess(in: "x: a" + String(repeating: "-", count: 70) + "b\n") == nil)
        #expect(NestingGuard.firstExcess(in: "x: " + String(repeating: "?", count: 70) + "\n") == nil)
        #expect(NestingGuard.firstExcess(in: String(repeating: "- ", count: 65) + "x\n")?.depth == 65)
    }

    @Test func idlePercentageDefaultsToHalfOfMaxConnectionsPercent() throws {
        let withMax = minimal(
            replacing: "      targets:",
            with: "      connection_pool_config:\n        max_connections_percent: 10\n      targets:")
        let loaded = try ConfigurationLoader.parse(yaml: withMax, baseDirectory: "/nonexistent", environment: minimalEnvironment)
        #expect(loaded.configuration.proxies[0].targetGroup.connectionPoolConfig.maxIdleConnectionsPercent == 5)
        let plain = try ConfigurationLoader.parse(yaml: minimalYAML, baseDirectory: "/nonexistent", environment: minimalEnvironment)
        #expect(plain.configuration.proxies[0].targetGroup.connectionPoolConfig.maxIdleConnectionsPercent == 50)
    }

    @Test func aNULInTheInitQueryIsRefused() {
        let yaml = minimal(
            replacing: "      targets:",
            with: "      connection_pool_config:\n        init_query: \"SET a = 1\\0; DROP TABLE x\"\n      targets:")
        let error = expectFailure(yaml)
        #expect(error.description.contains("init_query"))
        #expect(error.description.contains("NUL"))
    }

    @Test func emptyDocumentIsAnError() {
        for yaml in ["", "   \n", "# only a comment\n", "~\n"] {
            let error = expectFailure(yaml)
            #expect(error.description == "the configuration is empty (expected: a mapping with at least the key proxies)")
        }
    }

    @Test func nonMappingRootIsAnError() {
        expectIssue(expectFailure("- a\n- b\n"),
                    "the configuration must be a mapping of keys (allowed: drain_timeout, admin, iam, secrets_manager, secret_refresh_interval, proxies); found a list")
        expectIssue(expectFailure("hello\n"),
                    "the configuration must be a mapping of keys (allowed: drain_timeout, admin, iam, secrets_manager, secret_refresh_interval, proxies); found a scalar")
    }

    @Test func unknownKeysAnywhere() {
        let error = expectFailure(minimalYAML
            .replacingOccurrences(of: "proxies:\n", with: "colour: blue\nproxies:\n")
            .replacingOccurrences(of: "    engine_family:", with: "    foo: 1\n    engine_family:")
            .replacingOccurrences(of: "      - secret_arn:", with: "      - secret_ARN: x\n        secret_arn:")
            .replacingOccurrences(of: "      targets:", with: "      connection_pool_config: {max_connections: 5}\n      targets:"))
        expectIssue(error, "colour: unknown key (allowed: drain_timeout, admin, iam, secrets_manager, secret_refresh_interval, proxies)")
        expectIssue(error, "proxies[0].foo: unknown key (allowed: name, resource_id, engine_family, listen, hostnames, endpoints, "
            + "require_tls, tls, idle_client_timeout, max_client_connections, debug_logging, max_message_size, auth, target_group)")
        expectIssue(error, "proxies[0].auth[0].secret_ARN: unknown key (allowed: auth_scheme, secret_arn, iam_auth, "
            + "client_password_auth_type, description)")
        expectIssue(error, "proxies[0].target_group.connection_pool_config.max_connections: unknown key (allowed: "
            + "max_connections_percent, max_idle_connections_percent, connection_borrow_timeout, "
            + "session_pinning_filters, init_query, backend_idle_timeout)")
        #expect(error.issues.count == 4)
        let issue = error.issues(at: "proxies[0].foo")[0]
        #expect(issue.value == "foo")
        #expect(issue.line == 4 && issue.column == 5)
    }

    @Test func duplicateKeys() {
        let error = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL\n",
                                          with: "    engine_family: POSTGRESQL\n    name: other\n"))
        expectIssue(error, "proxies[0].name: duplicate key (each key may appear once)")
    }

    @Test func wrongTypes() {
        let error = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL\n", with: """
                engine_family: POSTGRESQL
                idle_client_timeout: abc
                max_client_connections: "100"
                max_message_size: 1.5
                require_tls: yes
                debug_logging: "true"
                endpoints: {name: x}

            """))
        expectIssue(error, #"proxies[0].idle_client_timeout: "abc" is not an integer (expected: an integer in 1...28800)"#)
        expectIssue(error, #"proxies[0].max_client_connections: "100" is a string, not an integer (expected: an integer in 1...1000000; remove the quotes)"#)
        expectIssue(error, "proxies[0].max_message_size: 1.5 is not an integer (expected: an integer in 1024...1073741824)")
        expectIssue(error, "proxies[0].require_tls: yes is not a boolean (expected: true or false)")
        expectIssue(error, #"proxies[0].debug_logging: "true" is a string, not a boolean (expected: true or false; remove the quotes)"#)
        expectIssue(error, "proxies[0].endpoints: a mapping is not a list (expected: a list of endpoints)")
        #expect(error.issues.count == 6)
        #expect(error.issues(at: "proxies[0].idle_client_timeout")[0].value == "\"abc\"")
        #expect(error.issues(at: "proxies[0].idle_client_timeout")[0].expectation == "an integer in 1...28800")

        expectIssue(expectFailure("proxies: app\n"),
                    #"proxies: "app" is not a list (expected: a list of at least one proxy)"#)
        expectIssue(expectFailure("proxies: [7]\n"),
                    "proxies[0]: 7 is not a mapping (expected: a mapping describing a proxy)")
        expectIssue(expectFailure(minimal(replacing: "    listen: \"0.0.0.0:5432\"", with: "    listen: [a]")),
                    "proxies[0].listen: found a list (expected: host:port or [ipv6]:port with a port in 1...65535)")
    }

    @Test func outOfRangeNumbers() {
        let error = expectFailure(minimal(replacing: "      targets:", with: """
                  connection_pool_config:
                    max_connections_percent: 150
                    connection_borrow_timeout: -1
                    backend_idle_timeout: 0
                  targets:
            """).replacingOccurrences(of: "proxies:", with: "drain_timeout: 3601\nproxies:"))
        expectIssue(error, "proxies[0].target_group.connection_pool_config.max_connections_percent: 150 is out of range (allowed: 1...100)")
        expectIssue(error, "proxies[0].target_group.connection_pool_config.connection_borrow_timeout: -1 is out of range (allowed: 0...3600)")
        expectIssue(error, "proxies[0].target_group.connection_pool_config.backend_idle_timeout: 0 is out of range (allowed: 1...86400)")
        expectIssue(error, "drain_timeout: 3601 is out of range (allowed: 0...3600)")
        #expect(error.issues.count == 4)
        let issue = error.issues(at: "proxies[0].target_group.connection_pool_config.max_connections_percent")[0]
        #expect(issue.value == "150")
        #expect(issue.expectation == "an integer in 1...100")

        let huge = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL",
                                         with: "    engine_family: POSTGRESQL\n    max_client_connections: 99999999999999999999999"))
        expectIssue(huge, "proxies[0].max_client_connections: 99999999999999999999999 is out of range (allowed: 1...1000000)")

        let bounds = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL", with: """
                engine_family: POSTGRESQL
                idle_client_timeout: 28801
                max_client_connections: 0
                max_message_size: 1023
            """))
        expectIssue(bounds, "proxies[0].idle_client_timeout: 28801 is out of range (allowed: 1...28800)")
        expectIssue(bounds, "proxies[0].max_client_connections: 0 is out of range (allowed: 1...1000000)")
        expectIssue(bounds, "proxies[0].max_message_size: 1023 is out of range (allowed: 1024...1073741824)")
    }

    @Test func idlePercentAboveMaxPercent() {
        let error = expectFailure(minimal(replacing: "      targets:", with: """
                  connection_pool_config: {max_connections_percent: 40, max_idle_connections_percent: 60}
                  targets:
            """))
        expectIssue(error, "proxies[0].target_group.connection_pool_config.max_idle_connections_percent: "
            + "60 is greater than max_connections_percent (40) (allowed: 0...40)")
        #expect(error.issues.count == 1)
    }

    @Test func badEnumValues() {
        let error = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL", with: """
                engine_family: ORACLE
                endpoints: [{name: ro, target_role: READER, listen: "0.0.0.0:6000"}]
            """).replacingOccurrences(of: "      - secret_arn: \"env:APP_SECRET\"", with: """
                  - secret_arn: "env:APP_SECRET"
                    auth_scheme: PASSWORD
                    client_password_auth_type: SHA1
                    iam_auth: maybe
            """).replacingOccurrences(of: "      targets:", with: """
                  connection_pool_config: {session_pinning_filters: [EXCLUDE_EVERYTHING, EXCLUDE_VARIABLE_SETS, EXCLUDE_VARIABLE_SETS]}
                  targets:
            """))
        expectIssue(error, "proxies[0].engine_family: ORACLE is not a valid value (allowed: POSTGRESQL, MYSQL)")
        expectIssue(error, "proxies[0].endpoints[0].target_role: READER is not a valid value (allowed: READ_WRITE, READ_ONLY)")
        expectIssue(error, "proxies[0].auth[0].auth_scheme: PASSWORD is not a valid value (allowed: SECRETS)")
        // The engine is unknown: every engine's values are allowed (EngineFamilyTests has them per engine).
        expectIssue(error, "proxies[0].auth[0].client_password_auth_type: SHA1 is not a valid value "
            + "(allowed: POSTGRES_SCRAM_SHA_256, POSTGRES_MD5, MYSQL_NATIVE_PASSWORD, MYSQL_CACHING_SHA2_PASSWORD)")
        expectIssue(error, "proxies[0].auth[0].iam_auth: maybe is not a valid value (allowed: DISABLED, REQUIRED)")
        expectIssue(error, "proxies[0].target_group.connection_pool_config.session_pinning_filters[0]: "
            + "EXCLUDE_EVERYTHING is not a valid value (allowed: EXCLUDE_VARIABLE_SETS)")
        expectIssue(error, "proxies[0].target_group.connection_pool_config.session_pinning_filters[2]: "
            + "EXCLUDE_VARIABLE_SETS is listed twice")
        #expect(error.issues.count == 7)
    }

    @Test func recognisedButUnsupportedValues() {
        let error = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL", with: """
                engine_family: MYSQL
                require_tls: true
            """).replacingOccurrences(of: "      - secret_arn: \"env:APP_SECRET\"", with: """
                  - secret_arn: "env:APP_SECRET"
                    iam_auth: REQUIRED
            """))
        expectIssue(error, "proxies[0].require_tls: require_tls: true needs proxies[0].tls (certificate_file and private_key_file)")
        expectIssue(error, "proxies[0].auth[0].iam_auth: IAM authentication is allowed only over TLS: set proxies[0].tls")
        expectIssue(error, "proxies[0].hostnames: with iam_auth REQUIRED and a wildcard listen address, hostnames must list "
            + "the names clients use to reach the proxy (IAM tokens are signed for one of them)")
        expectIssue(error, "iam: an auth entry has iam_auth REQUIRED: the iam section (region, account_id, identities) is required")
        #expect(error.issues.count == 4)
    }

    @Test func tlsIAMAndSecretsManagerSections() throws {
        let dir = try TemporaryDirectory()
        try dir.write("cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        try dir.write("key.pem", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
        try dir.write("ak.secret", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n")
        let yaml = minimal(replacing: "    engine_family: POSTGRESQL", with: """
                engine_family: POSTGRESQL
                resource_id: prx-0123456789abcdef0
                hostnames: [Proxy.Example.com]
                require_tls: true
                tls: {certificate_file: cert.pem, private_key_file: key.pem}
            """).replacingOccurrences(of: "      - secret_arn: \"env:APP_SECRET\"", with: """
                  - secret_arn: "env:APP_SECRET"
                    iam_auth: REQUIRED
                  - secret_arn: "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf"
            """).replacingOccurrences(of: "      targets:", with: """
                  tls: {mode: verify-full}
                  targets:
            """) + "\n" + """
            iam:
              region: us-east-1
              account_id: "123456789012"
              identities:
                - access_key_id: AKIDEXAMPLE
                  secret_access_key: file:ak.secret
                  arn: arn:aws:iam::123456789012:user/app
                  policy:
                    Version: "2012-10-17"
                    Statement:
                      - {Effect: Allow, Action: "rds-db:connect", Resource: "*"}
            secrets_manager: {endpoint: "http://127.0.0.1:5000", access_key_id: AKIDSM, secret_access_key: env:SM_SECRET}

            """
        var environment = minimalEnvironment
        environment["SM_SECRET"] = "sm-secret"
        let loaded = try ConfigurationLoader.parse(yaml: yaml, baseDirectory: dir.path, environment: environment)
        let proxy = loaded.configuration.proxies[0]
        #expect(proxy.resourceID == "prx-0123456789abcdef0")
        #expect(proxy.hostnames == ["proxy.example.com"])
        #expect(proxy.tls == ClientTLSConfiguration(certificateFile: dir.path + "/cert.pem", privateKeyFile: dir.path + "/key.pem"))
        #expect(proxy.targetGroup.tls == BackendTLSConfiguration(mode: .verifyFull))
        #expect(loaded.iamSecretKeys == ["AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"])
        #expect(loaded.configuration.iam?.identities.first?.policy
            == #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"rds-db:connect","Resource":"*"}]}"#)
        #expect(loaded.pendingSecrets == [LoadedConfiguration.PendingSecret(
            proxy: "app", authIndex: 1, keyPath: "proxies[0].auth[1].secret_arn",
            arn: "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf")])
        #expect(loaded.secretsManagerCredentials == LoadedConfiguration.AWSKeyPair(accessKeyID: "AKIDSM", secretAccessKey: "sm-secret"))
        #expect(loaded.credentials["app"]?.count == 1)
        let completed = try loaded.completing(with: [loaded.pendingSecrets[0]: DatabaseCredential(username: "other", password: "x")])
        #expect(completed.credentials["app"]?.map(\.username) == ["app", "other"])
        #expect(throws: ConfigurationError.self) {
            try loaded.completing(with: [loaded.pendingSecrets[0]: DatabaseCredential(username: "app", password: "x")])
        }
        // The effective configuration parses back to the same model.
        let rendered = EffectiveConfiguration.render(loaded.configuration)
        #expect(try ConfigurationLoader.parseConfiguration(yaml: rendered, baseDirectory: "/") == loaded.configuration)
    }

    @Test func badTLSAndIAMValues() throws {
        let yaml = minimal(replacing: "    engine_family: POSTGRESQL", with: """
                engine_family: POSTGRESQL
                resource_id: prx-XYZ
                tls: {certificate_file: /nonexistent/cert.pem, private_key_file: /nonexistent/key.pem}
            """).replacingOccurrences(of: "      targets:", with: """
                  tls: {mode: sometimes}
                  targets:
            """) + "\n" + """
            iam:
              region: "us east"
              account_id: "12"
              identities:
                - {access_key_id: AK, secret_access_key: "plain-secret", arn: "user/x", policy: "not json"}

            """
        let error = expectFailure(yaml)
        expectIssue(error, "proxies[0].resource_id: prx-XYZ is not a proxy resource id (expected: prx- and 17 lowercase hex digits, e.g. prx-0123456789abcdef0)")
        expectIssue(error, "proxies[0].target_group.tls.mode: sometimes is not a valid value (allowed: disable, require, verify-full)")
        expectIssue(error, "iam.region: us east is not a region (expected e.g. us-east-1)")
        expectIssue(error, "iam.account_id: 12 is not an account id (expected: 12 digits)")
        expectIssue(error, "iam.identities[0].secret_access_key: a secret access key must be a reference (env:NAME or file:PATH), not the key itself")
        expectIssue(error, "iam.identities[0].arn: user/x is not an ARN")
        expectIssue(error, "proxies[0].tls.certificate_file: /nonexistent/cert.pem: the file does not exist or cannot be read")
        expectIssue(error, "iam.identities[0].policy: the policy is not a JSON object (expected: an IAM policy document, as JSON text or a YAML mapping)")
        #expect(!error.description.contains("plain-secret"))
    }

    @Test func missingRequiredKeys() {
        expectIssue(expectFailure("drain_timeout: 5\n"),
                    "proxies: missing required key (expected: a list of at least one proxy)")
        expectIssue(expectFailure("proxies: []\n"), "proxies: at least one proxy is required")
        let error = expectFailure("""
            proxies:
              - engine_family: POSTGRESQL
              - name: second
                listen:
                auth:
                  - description: no secret
                target_group: {}
            """)
        expectIssue(error, "proxies[0].name: missing required key (expected: a name of 1 to 63 characters: a letter, then letters, digits or hyphens)")
        expectIssue(error, "proxies[0].listen: missing required key (expected: host:port or [ipv6]:port with a port in 1...65535)")
        expectIssue(error, "proxies[0].auth: missing required key (expected: a list of 1...200 auth entries)")
        expectIssue(error, "proxies[0].target_group: missing required key (expected: a mapping with targets)")
        expectIssue(error, "proxies[1].engine_family: missing required key (expected: one of POSTGRESQL, MYSQL)")
        expectIssue(error, "proxies[1].listen: missing value (expected: host:port or [ipv6]:port with a port in 1...65535)")
        expectIssue(error, "proxies[1].auth[0].secret_arn: missing required key (expected: file:PATH, env:NAME or arn:aws:secretsmanager:...)")
        expectIssue(error, "proxies[1].target_group.targets: missing required key (expected: a list of at least one target)")
        #expect(error.issues.count == 8, "\(error)")
        #expect(error.issues(at: "proxies[0].name")[0].value == nil)
    }

    @Test func emptyAuthAndTargets() {
        let error = expectFailure(minimal(replacing: "      - secret_arn: \"env:APP_SECRET\"\n", with: "")
            .replacingOccurrences(of: "    auth:\n", with: "    auth: []\n")
            .replacingOccurrences(of: "      targets:\n        - endpoint: \"10.0.0.11:5432\"", with: "      targets: []"))
        expectIssue(error, "proxies[0].auth: at least one auth entry is required (allowed: 1...200 entries)")
        expectIssue(error, "proxies[0].target_group.targets: at least one target is required")
        #expect(error.issues.count == 2)
    }

    @Test func tooManyAuthEntries() {
        let entries = (0..<201).map { _ in "      - secret_arn: \"env:APP_SECRET\"\n" }.joined()
        let error = expectFailure(minimal(replacing: "      - secret_arn: \"env:APP_SECRET\"\n", with: entries))
        expectIssue(error, "proxies[0].auth: 201 entries are too many (allowed: 1...200 entries)")
    }

    @Test func invalidNames() {
        let error = expectFailure(minimal(replacing: "name: app", with: "name: my_app")
            .replacingOccurrences(of: "      targets:", with: "      name: 9lives\n      targets:"))
        expectIssue(error, #"proxies[0].name: "my_app" is not a valid name (expected: a name of 1 to 63 characters: a letter, then letters, digits or hyphens)"#)
        expectIssue(error, #"proxies[0].target_group.name: "9lives" is not a valid name (expected: a name of 1 to 63 characters: a letter, then letters, digits or hyphens)"#)
        let long = "a" + String(repeating: "b", count: 63)
        expectIssue(expectFailure(minimal(replacing: "name: app", with: "name: \(long)")),
                    #"proxies[0].name: "\#(long)" is not a valid name (expected: a name of 1 to 63 characters: a letter, then letters, digits or hyphens)"#)
        #expect(ConfigurationLimits.isValidName("a" + String(repeating: "-", count: 62)))
        #expect(!ConfigurationLimits.isValidName(""))
    }

    @Test func badAddresses() {
        let error = expectFailure(minimal(replacing: "    listen: \"0.0.0.0:5432\"", with: """
                listen: "0.0.0.0"
                endpoints:
                  - {name: a, listen: "0.0.0.0:70000"}
                  - {name: b, listen: "::1:5432"}
            """).replacingOccurrences(of: "        - endpoint: \"10.0.0.11:5432\"",
                                      with: "        - endpoint: \"db:\"\n        - endpoint: \"db\"\n        - endpoint: \"DB:5432\""))
        expectIssue(error, "proxies[0].listen: 0.0.0.0 is not a valid address: missing port (expected: host:port or [ipv6]:port with a port in 1...65535)")
        expectIssue(error, "proxies[0].endpoints[0].listen: 0.0.0.0:70000 is not a valid address: port 70000 is out of range (allowed: 1...65535)")
        expectIssue(error, "proxies[0].endpoints[1].listen: ::1:5432 is not a valid address: IPv6 addresses must be written in brackets, like [::1]:5432 (expected: host:port or [ipv6]:port with a port in 1...65535)")
        expectIssue(error, "proxies[0].target_group.targets[0].endpoint: db: is not a valid address: missing port after ':' (expected: host:port or [ipv6]:port with a port in 1...65535 (port 5432 when omitted))")
        expectIssue(error, "proxies[0].target_group.targets[2].endpoint: DB:5432 is listed twice (already at proxies[0].target_group.targets[1].endpoint)")
        #expect(error.issues.count == 5, "\(error)")
    }

    @Test func duplicateProxyNamesAndEndpointNames() {
        let yaml = minimalYAML + "\n" + """
              - name: app
                engine_family: POSTGRESQL
                listen: "127.0.0.1:6000"
                endpoints: [{name: ro, listen: "127.0.0.1:6001"}, {name: ro, listen: "127.0.0.1:6002"}]
                auth: [{secret_arn: "env:APP_SECRET"}]
                target_group: {targets: [{endpoint: db}]}
            """
        let error = expectFailure(yaml)
        expectIssue(error, "proxies[1].name: app is a duplicate proxy name (already used by proxies[0].name)")
        expectIssue(error, "proxies[1].endpoints[1].name: ro is a duplicate endpoint name (already used by proxies[1].endpoints[0].name)")
        // 127.0.0.1:6000 clashes with nothing (the first proxy listens on port 5432).
        #expect(error.issues.count == 2, "\(error)")
    }

    @Test func listenAddressClashes() {
        let yaml = """
            admin:
              listen: "127.0.0.1:5433"
            proxies:
              - name: one
                engine_family: POSTGRESQL
                listen: "0.0.0.0:5432"
                endpoints:
                  - {name: one-ro, target_role: READ_WRITE, listen: "10.1.1.1:5432"}
                  - {name: one-ro2, target_role: READ_WRITE, listen: "[::]:5433"}
                auth: [{secret_arn: "env:APP_SECRET"}]
                target_group: {targets: [{endpoint: db}]}
              - name: two
                engine_family: POSTGRESQL
                listen: "127.0.0.1:5440"
                endpoints: [{name: two-ro, listen: "127.0.0.1:5440"}]
                auth: [{secret_arn: "env:APP_SECRET"}]
                target_group: {targets: [{endpoint: db}]}
            """
        let error = expectFailure(yaml)
        expectIssue(error, "proxies[0].endpoints[0].listen: 10.1.1.1:5432 clashes with proxies[0].listen (0.0.0.0:5432)")
        expectIssue(error, "proxies[0].endpoints[1].listen: [::]:5433 clashes with admin.listen (127.0.0.1:5433)")
        expectIssue(error, "proxies[1].endpoints[0].listen: 127.0.0.1:5440 clashes with proxies[1].listen (127.0.0.1:5440)")
        #expect(error.issues.count == 3, "\(error)")
    }

    @Test func adminValidation() {
        let error = expectFailure(minimalYAML + "\nadmin:\n  listen: nowhere\n  token: [a]\n  port: 1\n")
        expectIssue(error, "admin.listen: nowhere is not a valid address: missing port (expected: host:port or [ipv6]:port with a port in 1...65535)")
        expectIssue(error, "admin.token: found a list (expected: a string)")
        expectIssue(error, "admin.port: unknown key (allowed: listen, token)")
        #expect(error.issues.count == 3)

        var environment = minimalEnvironment
        environment["T"] = "tok"
        let ok = try? ConfigurationLoader.parse(yaml: minimalYAML + "\nadmin: {token: \"env:T\"}\n", baseDirectory: "/x",
                                                environment: environment)
        #expect(ok?.configuration.admin == AdminConfiguration(listen: HostPort(host: "127.0.0.1", port: 9187), token: "env:T"))
        #expect(ok?.adminToken == "tok")
    }

    @Test func adminTokenReferencesMustResolve() throws {
        let unset = expectFailure(minimalYAML + "\nadmin: {token: \"env:NOPE\"}\n")
        expectIssue(unset, "admin.token: env:NOPE: the environment variable is not set")
        let dir = try TemporaryDirectory()
        try dir.write("token", "\n  file-token \n")
        let fromFile = try ConfigurationLoader.parse(
            yaml: minimalYAML + "\nadmin: {token: \"file:token\"}\n", baseDirectory: dir.path, environment: minimalEnvironment)
        #expect(fromFile.adminToken == "file-token")
        let missing = expectFailure(minimalYAML + "\nadmin: {token: \"file:/nonexistent/token\"}\n")
        expectIssue(missing, "admin.token: file:/nonexistent/token: the file cannot be read (or is over 1 MiB, or not UTF-8)")
        let literal = try ConfigurationLoader.parse(
            yaml: minimalYAML + "\nadmin: {token: \"literal\"}\n", baseDirectory: "/x", environment: minimalEnvironment)
        #expect(literal.adminToken == "literal")
    }

    @Test func adminWithoutTokenListensOnLoopbackOnly() throws {
        let error = expectFailure(minimalYAML + "\nadmin: {listen: \"0.0.0.0:9187\"}\n")
        expectIssue(error, "admin.listen: 0.0.0.0:9187 is not a loopback address: without admin.token the admin API may listen on loopback only (set admin.token, or listen on 127.0.0.1)")
        for listen in ["127.0.0.1:9187", "localhost:9187", "[::1]:9187", "127.1.2.3:80"] {
            let ok = try ConfigurationLoader.parse(
                yaml: minimalYAML + "\nadmin: {listen: \"\(listen)\"}\n", baseDirectory: "/x", environment: minimalEnvironment)
            #expect(ok.adminToken == nil)
        }
        let withToken = try ConfigurationLoader.parse(
            yaml: minimalYAML + "\nadmin: {listen: \"0.0.0.0:9187\", token: \"t\"}\n", baseDirectory: "/x", environment: minimalEnvironment)
        #expect(withToken.adminToken == "t")
    }

    @Test func allProblemsAreReportedTogether() {
        let error = expectFailure(minimal(replacing: "    engine_family: POSTGRESQL", with: """
                engine_family: POSTGRESQL
                idle_client_timeout: 0
                bogus: true
            """).replacingOccurrences(of: "env:APP_SECRET", with: "env:UNSET_VAR"))
        #expect(error.issues.map(\.keyPath) == [
            "proxies[0].bogus", "proxies[0].idle_client_timeout", "proxies[0].auth[0].secret_arn",
        ])
        #expect(error.description == """
            proxies[0].bogus: unknown key (allowed: name, resource_id, engine_family, listen, hostnames, endpoints, require_tls, tls, idle_client_timeout, max_client_connections, debug_logging, max_message_size, auth, target_group)
            proxies[0].idle_client_timeout: 0 is out of range (allowed: 1...28800)
            proxies[0].auth[0].secret_arn: env:UNSET_VAR: environment variable UNSET_VAR is not set
            """)
    }

    @Test func validatorChecksModelsBuiltInCode() {
        var pool = ConnectionPoolConfiguration(maxConnectionsPercent: 0, maxIdleConnectionsPercent: 101)
        #expect(ConfigurationValidator.validate(pool).map(\.description) == [
            "connection_pool_config.max_connections_percent: 0 is out of range (allowed: 1...100)",
            "connection_pool_config.max_idle_connections_percent: 101 is out of range (allowed: 0...100)",
        ])
        pool = ConnectionPoolConfiguration(maxConnectionsPercent: 10, maxIdleConnectionsPercent: 11)
        #expect(ConfigurationValidator.validate(pool).map(\.description) == [
            "connection_pool_config.max_idle_connections_percent: 11 is greater than max_connections_percent (10) (allowed: 0...10)",
        ])
        #expect(ConfigurationValidator.validate(ConnectionPoolConfiguration()).isEmpty)
        let config = ConciergeConfiguration(drainTimeout: -1, proxies: [ProxyConfiguration(
            name: "p", listen: HostPort(host: "0.0.0.0", port: 0), auth: [],
            targetGroup: TargetGroupConfiguration(targets: []))])
        #expect(ConfigurationValidator.validate(config).map(\.description) == [
            "drain_timeout: -1 is out of range (allowed: 0...3600)",
            "proxies[0].listen: 0.0.0.0:0 is not a valid address: port 0 is out of range (allowed: 1...65535)",
            "proxies[0].auth: at least one auth entry is required (allowed: 1...200 entries)",
            "proxies[0].target_group.targets: at least one target is required",
        ])
    }
}

@Suite struct EndpointRoleTests {
    @Test func readOnlyEndpointsAndHealthChecksAreAccepted() throws {
        let yaml = """
            proxies:
              - name: one
                engine_family: POSTGRESQL
                listen: "127.0.0.1:5432"
                endpoints: [{name: one-ro, target_role: READ_ONLY, listen: "127.0.0.1:5433"}]
                auth: [{secret_arn: "env:APP_SECRET"}]
                target_group:
                  health_check: {interval_ms: 250, timeout_ms: 800, database: app}
                  targets: [{endpoint: db}, {endpoint: "db2:5433"}]
            """
        let config = try ConfigurationLoader.parseConfiguration(yaml: yaml, baseDirectory: "/")
        #expect(config.proxies[0].endpoints[0].targetRole == .readOnly)
        #expect(config.proxies[0].targetGroup.healthCheck == HealthCheckConfiguration(intervalMS: 250, timeoutMS: 800, database: "app"))
        let bad = expectFailure(minimal(replacing: "      targets:", with: """
                  health_check: {interval_ms: 10, timeout_ms: 100000}
                  targets:
            """))
        expectIssue(bad, "proxies[0].target_group.health_check.interval_ms: 10 is out of range (allowed: 100...60000)")
        expectIssue(bad, "proxies[0].target_group.health_check.timeout_ms: 100000 is out of range (allowed: 100...60000)")
    }
}

/// A few hundred bytes of nested anchors and aliases ("billion laughs") expand to millions of
/// nodes: an IAM policy written as YAML is turned into JSON text node by node, so a 600-byte file
/// took a minute and 650 bytes ten times that (found with the fuzz target `config`,
/// Fuzz/regressions/config). Refused right after the parser, before anything is decoded; files
/// that use aliases modestly still load.
@Suite("Configuration alias expansion")
struct AliasExpansionTests {
    static func withPolicy(_ policyLines: [String]) -> String {
        """
        iam:
          region: us-east-1
          account_id: "123456789012"
          identities:
            - access_key_id: AKIAEXAMPLE
              secret_access_key: "env:K"
              arn: "arn:aws:iam::123456789012:user/app"
              policy:

        """ + policyLines.map { "          " + $0 + "\n" }.joined() + minimalYAML
    }

    /// `levels` anchors, each a list of ten aliases of the one before: 10^levels scalars.
    static func bomb(levels: Int) -> String {
        var lines = ["Version: \"2012-10-17\"", "Anchors:", "  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
        for level in 1..<levels {
            lines.append("  - &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ") + "]")
        }
        lines.append("Statement: *a\(levels - 1)")
        return withPolicy(lines)
    }

    @Test func aliasesThatExpandToMillionsOfNodesAreRefused() {
        for levels in [5, 7] {
            let started = ContinuousClock.now
            let error = expectFailure(Self.bomb(levels: levels))
            #expect(error.issues.count == 1)
            #expect(error.description.contains("aliases expand"), "\(error)")
            #expect(ContinuousClock.now - started < .seconds(5))
        }
    }

    @Test func modestAliasesStillLoad() throws {
        let yaml = Self.withPolicy([
            "Version: \"2012-10-17\"",
            "Statement:",
            "  - &allow {Effect: Allow, Action: \"rds-db:connect\", Resource: \"arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-*/app\"}",
            "  - *allow",
        ])
        let configuration = try ConfigurationLoader.parseConfiguration(yaml: yaml, baseDirectory: "/nonexistent")
        #expect(configuration.iam?.identities.first?.policy.components(separatedBy: "rds-db:connect").count == 3)
    }
}
