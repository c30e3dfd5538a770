// The configuration model. Swift names are camelCase; the YAML names (snake_case, following the
// Terraform `aws_db_proxy` provider) are given in the comments and in `ConfigurationKeys`.

/// The whole configuration file.
public struct ConciergeConfiguration: Sendable, Hashable {
    /// `drain_timeout`: seconds SIGTERM waits for open transactions (Concierge extension).
    public var drainTimeout: Int
    /// `admin`: the HTTP admin API and `/metrics`; `nil` when not configured.
    public var admin: AdminConfiguration?
    /// `iam`: the identity store IAM authentication tokens are checked against.
    public var iam: IAMConfiguration?
    /// `secrets_manager`: how `arn:aws:secretsmanager:...` secrets are fetched.
    public var secretsManager: SecretsManagerConfiguration?
    /// `secret_refresh_interval`: seconds between re-reads of every secret (rotation).
    public var secretRefreshInterval: Int = ConfigurationDefaults.secretRefreshInterval
    /// `proxies`: at least one.
    public var proxies: [ProxyConfiguration]

    public init(
        drainTimeout: Int = ConfigurationDefaults.drainTimeout,
        admin: AdminConfiguration? = nil,
        proxies: [ProxyConfiguration]
    ) {
        self.drainTimeout = drainTimeout
        self.admin = admin
        self.proxies = proxies
    }

    /// The proxy with this name, if any.
    public func proxy(named name: String) -> ProxyConfiguration? {
        proxies.first { $0.name == name }
    }
}

/// `admin`: the HTTP admin API and Prometheus `/metrics` listener.
public struct AdminConfiguration: Sendable, Hashable {
    /// `listen`: default `127.0.0.1:9187`.
    public var listen: HostPort
    /// `token`: optional bearer token, normally a secret reference (`file:PATH` / `env:NAME`), as written.
    public var token: String?

    public init(listen: HostPort = ConfigurationDefaults.adminListen, token: String? = nil) {
        self.listen = listen
        self.token = token
    }
}

/// One entry of `proxies`.
public struct ProxyConfiguration: Sendable, Hashable {
    /// `resource_id`: the stable `prx-` id (IAM resources, describe); derived from the name if nil.
    public var resourceID: String?
    /// `tls`: the certificate clients see; nil: no client TLS (SSLRequest is answered `N`).
    public var tls: ClientTLSConfiguration?
    /// `hostnames`: the names clients reach this proxy by; IAM tokens must be signed for one of
    /// them (the listen host counts too, unless it is a wildcard).
    public var hostnames: [String] = []
    /// `name`: unique, `[A-Za-z][A-Za-z0-9-]{0,62}`.
    public var name: String
    /// `engine_family`.
    public var engineFamily: EngineFamily
    /// `listen`: the default READ_WRITE endpoint.
    public var listen: HostPort
    /// `endpoints`: extra endpoints.
    public var endpoints: [EndpointConfiguration]
    /// `require_tls`.
    public var requireTLS: Bool
    /// `idle_client_timeout`: seconds.
    public var idleClientTimeout: Int
    /// `max_client_connections`.
    public var maxClientConnections: Int
    /// `debug_logging`.
    public var debugLogging: Bool
    /// `max_message_size`: bytes (Concierge extension).
    public var maxMessageSize: Int
    /// `auth`: 1...200 entries.
    public var auth: [AuthConfiguration]
    /// `target_group`.
    public var targetGroup: TargetGroupConfiguration

    public init(
        name: String,
        engineFamily: EngineFamily = .postgresql,
        listen: HostPort,
        endpoints: [EndpointConfiguration] = [],
        requireTLS: Bool = ConfigurationDefaults.requireTLS,
        idleClientTimeout: Int = ConfigurationDefaults.idleClientTimeout,
        maxClientConnections: Int = ConfigurationDefaults.maxClientConnections,
        debugLogging: Bool = ConfigurationDefaults.debugLogging,
        maxMessageSize: Int = ConfigurationDefaults.maxMessageSize,
        auth: [AuthConfiguration],
        targetGroup: TargetGroupConfiguration
    ) {
        self.name = name
        self.engineFamily = engineFamily
        self.listen = listen
        self.endpoints = endpoints
        self.requireTLS = requireTLS
        self.idleClientTimeout = idleClientTimeout
        self.maxClientConnections = maxClientConnections
        self.debugLogging = debugLogging
        self.maxMessageSize = maxMessageSize
        self.auth = auth
        self.targetGroup = targetGroup
    }
}

/// One entry of a proxy's `endpoints`.
public struct EndpointConfiguration: Sendable, Hashable {
    /// `name`: `[A-Za-z][A-Za-z0-9-]{0,62}`, unique across all endpoints.
    public var name: String
    /// `target_role`: default `READ_WRITE`.
    public var targetRole: TargetRole
    /// `listen`.
    public var listen: HostPort

    public init(name: String, targetRole: TargetRole = .readWrite, listen: HostPort) {
        self.name = name
        self.targetRole = targetRole
        self.listen = listen
    }
}

/// One entry of a proxy's `auth`: one database user the proxy can log in as.
public struct AuthConfiguration: Sendable, Hashable {
    /// `auth_scheme`: default `SECRETS`.
    public var authScheme: AuthScheme
    /// `secret_arn`, exactly as written in the file.
    public var secretARN: String
    /// `secret_arn` resolved (file paths made absolute against the config file's directory).
    public var secret: SecretReference
    /// `iam_auth`: default `DISABLED`.
    public var iamAuth: IAMAuth
    /// `client_password_auth_type`: how clients prove the password; one of the proxy's engine's
    /// (`ClientPasswordAuthType.allowed(for:)`). Loaded configurations default to the engine's
    /// (`ConfigurationDefaults.clientPasswordAuthType(for:)`); built in code, to `POSTGRES_SCRAM_SHA_256`.
    public var clientPasswordAuthType: ClientPasswordAuthType
    /// `description`: free text, default "".
    public var description: String

    public init(
        authScheme: AuthScheme = .secrets,
        secretARN: String,
        secret: SecretReference,
        iamAuth: IAMAuth = .disabled,
        clientPasswordAuthType: ClientPasswordAuthType = .postgresScramSHA256,
        description: String = ""
    ) {
        self.authScheme = authScheme
        self.secretARN = secretARN
        self.secret = secret
        self.iamAuth = iamAuth
        self.clientPasswordAuthType = clientPasswordAuthType
        self.description = description
    }
}

/// A proxy's `target_group`.
public struct TargetGroupConfiguration: Sendable, Hashable {
    /// `tls`: how the proxy's connections to the database are encrypted.
    public var tls: BackendTLSConfiguration = BackendTLSConfiguration()
    /// `health_check`: how targets are checked (writer discovery, failover).
    public var healthCheck: HealthCheckConfiguration = HealthCheckConfiguration()
    /// `name`: default `default`.
    public var name: String
    /// `connection_pool_config`.
    public var connectionPoolConfig: ConnectionPoolConfiguration
    /// `targets`: at least one.
    public var targets: [TargetConfiguration]

    public init(
        name: String = ConfigurationDefaults.targetGroupName,
        connectionPoolConfig: ConnectionPoolConfiguration = ConnectionPoolConfiguration(),
        targets: [TargetConfiguration]
    ) {
        self.name = name
        self.connectionPoolConfig = connectionPoolConfig
        self.targets = targets
    }
}

/// A target group's `connection_pool_config`.
public struct ConnectionPoolConfiguration: Sendable, Hashable {
    /// `max_connections_percent`: 1...100 of the writer's `max_connections`.
    public var maxConnectionsPercent: Int
    /// `max_idle_connections_percent`: 0...maxConnectionsPercent.
    public var maxIdleConnectionsPercent: Int
    /// `connection_borrow_timeout`: seconds 0...3600.
    public var connectionBorrowTimeout: Int
    /// `session_pinning_filters`.
    public var sessionPinningFilters: [SessionPinningFilter]
    /// `init_query`: run on every new backend connection ("" = none).
    public var initQuery: String
    /// `backend_idle_timeout`: seconds 1...86400 surplus idle backends live (Concierge extension).
    public var backendIdleTimeout: Int

    public init(
        maxConnectionsPercent: Int = ConfigurationDefaults.maxConnectionsPercent,
        maxIdleConnectionsPercent: Int? = nil,
        connectionBorrowTimeout: Int = ConfigurationDefaults.connectionBorrowTimeout,
        sessionPinningFilters: [SessionPinningFilter] = [],
        initQuery: String = "",
        backendIdleTimeout: Int = ConfigurationDefaults.backendIdleTimeout
    ) {
        self.maxConnectionsPercent = maxConnectionsPercent
        // Unset: RDS Proxy's default, half of MaxConnectionsPercent.
        self.maxIdleConnectionsPercent = maxIdleConnectionsPercent
            ?? ConfigurationDefaults.maxIdleConnectionsPercent(forMaxConnectionsPercent: maxConnectionsPercent)
        self.connectionBorrowTimeout = connectionBorrowTimeout
        self.sessionPinningFilters = sessionPinningFilters
        self.initQuery = initQuery
        self.backendIdleTimeout = backendIdleTimeout
    }

    /// Whether `EXCLUDE_VARIABLE_SETS` is set.
    public var excludesVariableSets: Bool { sessionPinningFilters.contains(.excludeVariableSets) }
}

/// One entry of a target group's `targets`.
public struct TargetConfiguration: Sendable, Hashable {
    /// `endpoint`: `host:port`; the port defaults to the engine's (5432 for POSTGRESQL, 3306 for
    /// MYSQL: `ConfigurationDefaults.targetPort(for:)`).
    public var endpoint: HostPort

    public init(endpoint: HostPort) {
        self.endpoint = endpoint
    }
}

// MARK: - Enums (raw values are the YAML spellings)

public enum EngineFamily: String, Sendable, Hashable, CaseIterable {
    case postgresql = "POSTGRESQL"
    /// MySQL and MariaDB.
    case mysql = "MYSQL"
}

public enum TargetRole: String, Sendable, Hashable, CaseIterable {
    case readWrite = "READ_WRITE"
    case readOnly = "READ_ONLY"
}

public enum AuthScheme: String, Sendable, Hashable, CaseIterable {
    case secrets = "SECRETS"
}

public enum IAMAuth: String, Sendable, Hashable, CaseIterable {
    case disabled = "DISABLED"
    /// Recognised but refused at load for now (needs TLS).
    case required = "REQUIRED"
}

/// RDS Proxy's names. Each belongs to one engine family: a proxy accepts only its engine's.
public enum ClientPasswordAuthType: String, Sendable, Hashable, CaseIterable {
    case postgresScramSHA256 = "POSTGRES_SCRAM_SHA_256"
    case postgresMD5 = "POSTGRES_MD5"
    /// `mysql_native_password`.
    case mysqlNativePassword = "MYSQL_NATIVE_PASSWORD"
    /// `caching_sha2_password` (RDS Proxy's default for MySQL).
    case mysqlCachingSHA2Password = "MYSQL_CACHING_SHA2_PASSWORD"

    /// The engine family this authentication belongs to.
    public var engineFamily: EngineFamily {
        switch self {
        case .postgresScramSHA256, .postgresMD5: .postgresql
        case .mysqlNativePassword, .mysqlCachingSHA2Password: .mysql
        }
    }

    /// The values a proxy of `engine` accepts, in declaration order.
    public static func allowed(for engine: EngineFamily) -> [ClientPasswordAuthType] {
        allCases.filter { $0.engineFamily == engine }
    }
}

public enum SessionPinningFilter: String, Sendable, Hashable, CaseIterable {
    case excludeVariableSets = "EXCLUDE_VARIABLE_SETS"
}


// MARK: - TLS, IAM, secrets

/// `proxies[].tls`: the server certificate (PEM chain) and private key (PEM), as absolute paths.
public struct ClientTLSConfiguration: Sendable, Hashable {
    public var certificateFile: String
    public var privateKeyFile: String

    public init(certificateFile: String, privateKeyFile: String) {
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
    }
}

/// `target_group.tls.mode`.
public enum BackendTLSMode: String, Sendable, Hashable, CaseIterable {
    /// Plaintext to the database.
    case disable
    /// Encrypted; the certificate is not checked (libpq's `sslmode=require`).
    case require
    /// Encrypted; the certificate chain is checked against `ca_file` (or the system's roots) and
    /// the target's host name (or IP address) must match it.
    case verifyFull = "verify-full"
}

/// `target_group.tls`.
public struct BackendTLSConfiguration: Sendable, Hashable {
    public var mode: BackendTLSMode
    /// PEM trust roots for `verify-full` (absolute path); nil: the system's.
    public var caFile: String?

    public init(mode: BackendTLSMode = .disable, caFile: String? = nil) {
        self.mode = mode
        self.caFile = caFile
    }
}

/// `iam`: who may log in with IAM authentication tokens.
public struct IAMConfiguration: Sendable, Hashable {
    public var region: String
    public var accountID: String
    public var identities: [IAMIdentity]

    public init(region: String, accountID: String, identities: [IAMIdentity]) {
        self.region = region
        self.accountID = accountID
        self.identities = identities
    }
}

/// `iam.identities[]`: an access key, its secret (a reference, read at load), the principal's ARN
/// and its policy (JSON text).
public struct IAMIdentity: Sendable, Hashable {
    public var accessKeyID: String
    /// `secret_access_key` as written: `env:NAME` or `file:PATH`.
    public var secretAccessKeyReference: String
    public var arn: String
    /// The policy document, as JSON text.
    public var policy: String

    public init(accessKeyID: String, secretAccessKeyReference: String, arn: String, policy: String) {
        self.accessKeyID = accessKeyID
        self.secretAccessKeyReference = secretAccessKeyReference
        self.arn = arn
        self.policy = policy
    }
}

/// `secrets_manager`: the endpoint and credentials for `arn:aws:secretsmanager:` secrets.
public struct SecretsManagerConfiguration: Sendable, Hashable {
    /// Overrides the ARN's region for signing and the default endpoint.
    public var region: String?
    /// e.g. `http://127.0.0.1:5000` (default `https://secretsmanager.REGION.amazonaws.com`).
    public var endpoint: String?
    /// Default: `AWS_ACCESS_KEY_ID` from the environment.
    public var accessKeyID: String?
    /// `env:NAME` or `file:PATH`; default: `AWS_SECRET_ACCESS_KEY` from the environment.
    public var secretAccessKeyReference: String?

    public init(region: String? = nil, endpoint: String? = nil, accessKeyID: String? = nil, secretAccessKeyReference: String? = nil) {
        self.region = region
        self.endpoint = endpoint
        self.accessKeyID = accessKeyID
        self.secretAccessKeyReference = secretAccessKeyReference
    }
}

extension ProxyConfiguration {
    /// `resource_id`, or `prx-` and 17 hex digits derived from the name (FNV-1a): stable across
    /// restarts and hosts, so IAM policies can name it.
    public var effectiveResourceID: String {
        if let resourceID { return resourceID }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "prx-" + String(repeating: "0", count: max(0, 17 - hex.count)) + hex
    }
}

/// `target_group.health_check`: each target is checked every `interval_ms` over a kept
/// connection (`SELECT pg_is_in_recovery()`; `@@global.read_only` for MYSQL); a check that takes
/// longer than `timeout_ms` fails (two such in a row: the target is hung, its connections closed).
/// The defaults find a stopped writer within about half a second, a hung one within 2.5.
public struct HealthCheckConfiguration: Sendable, Hashable {
    public var intervalMS: Int
    public var timeoutMS: Int
    /// The database the checks log in to, with the first auth entry's secret. Loaded
    /// configurations default to the engine's (`ConfigurationDefaults.healthCheckDatabase(for:)`:
    /// `postgres`, or "" for MYSQL: no default schema); built in code, to `postgres`.
    public var database: String

    public init(
        intervalMS: Int = ConfigurationDefaults.healthCheckIntervalMS, timeoutMS: Int = ConfigurationDefaults.healthCheckTimeoutMS,
        database: String = ConfigurationDefaults.healthCheckDatabase
    ) {
        self.intervalMS = intervalMS
        self.timeoutMS = timeoutMS
        self.database = database
    }
}
