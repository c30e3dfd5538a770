/// Default values of every optional key.
public enum ConfigurationDefaults {
    public static let drainTimeout = 30
    public static let adminListen = HostPort(host: "127.0.0.1", port: 9187)
    public static let requireTLS = false
    public static let idleClientTimeout = 1800
    public static let maxClientConnections = 10_000
    public static let debugLogging = false
    public static let maxMessageSize = 67_108_864
    public static let targetGroupName = "default"
    public static let maxConnectionsPercent = 100
    public static let maxIdleConnectionsPercent = 50

    /// RDS Proxy's documented default for MaxIdleConnectionsPercent: half of
    /// MaxConnectionsPercent (so 50 when neither is given).
    public static func maxIdleConnectionsPercent(forMaxConnectionsPercent max: Int) -> Int {
        max / 2
    }
    public static let connectionBorrowTimeout = 120
    public static let backendIdleTimeout = 60
    /// Port of a target `endpoint` written without one, for POSTGRESQL (`targetPort(for:)` per engine).
    public static let targetPort = 5432
    public static let secretRefreshInterval = 300
    public static let healthCheckIntervalMS = 500
    public static let healthCheckTimeoutMS = 1000
    /// The health checks' database, for POSTGRESQL (`healthCheckDatabase(for:)` per engine).
    public static let healthCheckDatabase = "postgres"

    // Per engine family.

    /// Port of a target `endpoint` written without one: PostgreSQL's 5432, MySQL's 3306.
    public static func targetPort(for engine: EngineFamily) -> Int {
        switch engine {
        case .postgresql: targetPort
        case .mysql: 3306
        }
    }

    /// `client_password_auth_type` when not given: RDS Proxy's default per engine
    /// (`POSTGRES_SCRAM_SHA_256`; `MYSQL_CACHING_SHA2_PASSWORD`, as the RDS API documents for MySQL).
    public static func clientPasswordAuthType(for engine: EngineFamily) -> ClientPasswordAuthType {
        switch engine {
        case .postgresql: .postgresScramSHA256
        case .mysql: .mysqlCachingSHA2Password
        }
    }

    /// `health_check.database` when not given: `postgres`; for MYSQL "" (no default schema: a
    /// MySQL login needs none, and the checks read only server variables).
    public static func healthCheckDatabase(for engine: EngineFamily) -> String {
        switch engine {
        case .postgresql: healthCheckDatabase
        case .mysql: ""
        }
    }
}

/// Allowed ranges of every numeric key (inclusive).
public enum ConfigurationLimits {
    public static let drainTimeout: ClosedRange<Int> = 0...3600
    public static let idleClientTimeout: ClosedRange<Int> = 1...28_800
    public static let maxClientConnections: ClosedRange<Int> = 1...1_000_000
    public static let maxMessageSize: ClosedRange<Int> = 1024...1_073_741_824
    public static let authEntries: ClosedRange<Int> = 1...200
    public static let maxConnectionsPercent: ClosedRange<Int> = 1...100
    /// The upper bound is also capped by `max_connections_percent`.
    public static let maxIdleConnectionsPercent: ClosedRange<Int> = 0...100
    public static let connectionBorrowTimeout: ClosedRange<Int> = 0...3600
    public static let backendIdleTimeout: ClosedRange<Int> = 1...86_400
    public static let port: ClosedRange<Int> = 1...65535
    public static let secretRefreshInterval: ClosedRange<Int> = 1...86_400
    public static let healthCheckIntervalMS: ClosedRange<Int> = 100...60_000
    public static let healthCheckTimeoutMS: ClosedRange<Int> = 100...60_000
    /// Proxy, endpoint and target group names: a letter, then up to 62 letters, digits or hyphens.
    public static let nameMaxLength = 63

    /// `prx-` and 17 lowercase hex digits.
    public static func isValidResourceID(_ id: String) -> Bool {
        guard id.hasPrefix("prx-") else { return false }
        let hex = id.dropFirst(4)
        return hex.count == 17 && hex.unicodeScalars.allSatisfy { ("0"..."9").contains($0) || ("a"..."f").contains($0) }
    }

    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= nameMaxLength else { return false }
        guard first.isASCIILetter else { return false }
        return name.unicodeScalars.allSatisfy { $0.isASCIILetter || ("0"..."9").contains($0) || $0 == "-" }
    }

    static let nameExpectation = "a name of 1 to 63 characters: a letter, then letters, digits or hyphens"
}

extension Unicode.Scalar {
    var isASCIILetter: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}
