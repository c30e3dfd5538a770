import NIOConcurrencyHelpers
import Prometheus

/// One proxy's Prometheus metrics: the CloudWatch metrics of RDS Proxy under `concierge_` names
/// (docs/metrics.md), each labelled with the proxy.
///
/// Three kinds of recording, chosen by how often they happen:
/// - gauges (client connections, borrowed, pinned, in transaction, ...) are not maintained at
///   all: each scrape computes them from the live state of every event loop and the pool, so
///   they are exact and cost nothing between scrapes;
/// - `QueryRequests`, counted per query, is a plain integer per event loop (no atomic shared
///   between threads on the per-query path), summed at scrape;
/// - the two latency histograms, recorded per transaction, are plain bucket counts per event
///   loop (`LatencyBuckets`), summed at scrape and rendered by `LatencyHistogram`;
/// - per-connection events (logins, pins, borrow timeouts) go straight to swift-prometheus's
///   atomic counters.
public final class ProxyMetrics: Sendable {
    public let proxy: String
    public let targetGroup: String

    // Per endpoint (index 0: the default endpoint; then `endpoints` in order).
    public let endpointNames: [String]
    public let clientConnectionsReceived: [Counter]
    public let clientConnectionsSetupSucceeded: [Counter]
    public let clientConnectionsSetupFailedAuth: [Counter]
    public let clientConnectionsClosed: [Counter]
    public let clientConnections: [Gauge]

    public let queryRequests: Counter
    public let databaseConnectionRequests: Counter
    public let databaseConnectionsSetupSucceeded: Counter
    public let databaseConnectionsSetupFailed: Counter
    public let borrowTimeouts: Counter
    public let writerAvailableDuration: Counter
    /// Indexed like the bits of the engine's pin reasons (`pinReasonNames`).
    public let sessionPins: [Counter]

    public let maxDatabaseConnectionsAllowed: Gauge
    public let databaseConnections: Gauge
    public let databaseConnectionsCurrentlyBorrowed: Gauge
    public let databaseConnectionsCurrentlySessionPinned: Gauge
    public let databaseConnectionsCurrentlyInTransaction: Gauge
    public let borrowWaiters: Gauge

    /// Recorded per event loop (`LatencyBuckets`), published at scrape.
    public let borrowLatency: LatencyHistogram
    public let queryDatabaseResponseLatency: LatencyHistogram
    /// Rendered after the registry's metrics (`LatencyHistogram.render`).
    public var latencyHistograms: [LatencyHistogram] { [borrowLatency, queryDatabaseResponseLatency] }

    private let registry: PrometheusCollectorRegistry
    private let targetAvailable = NIOLockedValueBox<[String: Gauge]>([:])

    public static let borrowLatencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
        .seconds(30), .seconds(60), .seconds(120),
    ]
    public static let queryLatencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
        .seconds(30), .seconds(60),
    ]

    /// `pinReasonNames`: the engine's reasons for pinning a session, in the order of their bits
    /// (one `concierge_session_pins_total` series each; the label values operators alert on).
    public init(
        registry: PrometheusCollectorRegistry, proxy: String, endpointNames: [String], targetGroup: String,
        pinReasonNames: [String]
    ) {
        self.registry = registry
        self.proxy = proxy
        self.targetGroup = targetGroup
        self.endpointNames = endpointNames
        let byEndpoint = endpointNames.map { [("proxy", proxy), ("endpoint", $0)] }
        let pool = [("proxy", proxy), ("target_group", targetGroup)]

        func counters(_ name: String, _ help: String) -> [Counter] {
            byEndpoint.map { registry.makeCounter(descriptor: Self.descriptor(name, help), labels: $0) }
        }
        clientConnectionsReceived = counters(
            "concierge_client_connections_received_total", "Client connection requests received (ClientConnectionsReceived).")
        clientConnectionsSetupSucceeded = counters(
            "concierge_client_connections_setup_succeeded_total",
            "Client connections established, with any authentication, with or without TLS (ClientConnectionsSetupSucceeded).")
        clientConnectionsSetupFailedAuth = counters(
            "concierge_client_connections_setup_failed_auth_total",
            "Client connection attempts that failed authentication or TLS (ClientConnectionsSetupFailedAuth).")
        clientConnectionsClosed = counters(
            "concierge_client_connections_closed_total", "Client connections closed (ClientConnectionsClosed).")
        clientConnections = byEndpoint.map {
            registry.makeGauge(descriptor: Self.descriptor("concierge_client_connections", "Open client connections (ClientConnections)."), labels: $0)
        }
        queryRequests = registry.makeCounter(descriptor: Self.descriptor("concierge_query_requests_total", "Queries received: simple Query messages and extended-protocol Executes; a multi-statement query counts once (QueryRequests)."), labels: [("proxy", proxy)])
        databaseConnectionRequests = registry.makeCounter(descriptor: Self.descriptor("concierge_database_connection_requests_total", "Requests to open a database connection (DatabaseConnectionRequests)."), labels: pool)
        databaseConnectionsSetupSucceeded = registry.makeCounter(descriptor: Self.descriptor("concierge_database_connections_setup_succeeded_total", "Database connections established and set up (DatabaseConnectionsSetupSucceeded)."), labels: pool)
        databaseConnectionsSetupFailed = registry.makeCounter(descriptor: Self.descriptor("concierge_database_connections_setup_failed_total", "Database connection requests that failed (DatabaseConnectionsSetupFailed)."), labels: pool)
        borrowTimeouts = registry.makeCounter(descriptor: Self.descriptor("concierge_borrow_timeouts_total", "Clients that waited connection_borrow_timeout for a database connection and got an error."), labels: pool)
        writerAvailableDuration = registry.makeCounter(descriptor: Self.descriptor("concierge_target_group_writer_available_duration_seconds_total", "Seconds during which the target group had an available writer (TargetGroupWriterAvailableDuration)."), labels: pool)
        sessionPins = pinReasonNames.map {
            registry.makeCounter(descriptor: Self.descriptor("concierge_session_pins_total", "Sessions pinned to their database connection, by reason (a session counts once per new reason)."), labels: [("proxy", proxy), ("reason", $0)])
        }
        maxDatabaseConnectionsAllowed = registry.makeGauge(descriptor: Self.descriptor("concierge_max_database_connections_allowed", "The cap on database connections: max_connections_percent of the database's max_connections (MaxDatabaseConnectionsAllowed)."), labels: pool)
        databaseConnections = registry.makeGauge(descriptor: Self.descriptor("concierge_database_connections", "Open database connections, including ones being opened (DatabaseConnections)."), labels: pool)
        databaseConnectionsCurrentlyBorrowed = registry.makeGauge(descriptor: Self.descriptor("concierge_database_connections_currently_borrowed", "Database connections lent to a client (DatabaseConnectionsCurrentlyBorrowed)."), labels: pool)
        databaseConnectionsCurrentlySessionPinned = registry.makeGauge(descriptor: Self.descriptor("concierge_database_connections_currently_session_pinned", "Database connections pinned to one client by session state (DatabaseConnectionsCurrentlySessionPinned)."), labels: pool)
        databaseConnectionsCurrentlyInTransaction = registry.makeGauge(descriptor: Self.descriptor("concierge_database_connections_currently_in_transaction", "Database connections in a transaction or running a statement (DatabaseConnectionsCurrentlyInTransaction)."), labels: pool)
        borrowWaiters = registry.makeGauge(descriptor: Self.descriptor("concierge_database_connection_borrow_waiters", "Clients waiting for a database connection."), labels: pool)
        borrowLatency = LatencyHistogram(name: "concierge_database_connections_borrow_latency_seconds", help: "Time from a client needing a database connection to getting one (DatabaseConnectionsBorrowLatency).", labels: pool, bounds: Self.borrowLatencyBuckets)
        queryDatabaseResponseLatency = LatencyHistogram(name: "concierge_query_database_response_latency_seconds", help: "Time from sending a query to the database to its ReadyForQuery (QueryDatabaseResponseLatency).", labels: pool, bounds: Self.queryLatencyBuckets)
    }

    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Sets `concierge_target_available` for exactly the given series (key: target and role).
    public func setTargetAvailability(_ wanted: [String: (labels: [(String, String)], value: Int64)]) {
        targetAvailable.withLockedValue { gauges in
            for (key, gauge) in gauges where wanted[key] == nil {
                registry.unregisterGauge(gauge)
                gauges[key] = nil
            }
            for (key, series) in wanted {
                let gauge = gauges[key] ?? registry.makeGauge(
                    descriptor: Self.descriptor(
                        "concierge_target_available", "1 when the target's health State is AVAILABLE, else 0."),
                    labels: series.labels)
                gauges[key] = gauge
                gauge.set(series.value)
            }
        }
    }

    /// Records a pin for each reason whose bit is set in `reasons` (new reasons of one session).
    public func recordPins(bits reasons: UInt64) {
        var bit = 0
        var remaining = reasons
        while remaining != 0, bit < sessionPins.count {
            if remaining & 1 != 0 { sessionPins[bit].increment() }
            remaining >>= 1
            bit += 1
        }
    }
}

/// Counts one event loop's sessions contribute, read at scrape time on that loop.
public struct LoopMetricsSample: Sendable {
    public var clientsPerEndpoint: [Int]
    public var pinned = 0
    public var inTransaction = 0
    public var queryRequests = 0
    public var borrowLatency = LatencyBuckets(bounds: ProxyMetrics.borrowLatencyBuckets)
    public var queryLatency = LatencyBuckets(bounds: ProxyMetrics.queryLatencyBuckets)

    public init(endpoints: Int) {
        clientsPerEndpoint = Array(repeating: 0, count: endpoints)
    }

    public mutating func add(_ other: LoopMetricsSample) {
        for index in clientsPerEndpoint.indices where index < other.clientsPerEndpoint.count {
            clientsPerEndpoint[index] += other.clientsPerEndpoint[index]
        }
        pinned += other.pinned
        inTransaction += other.inTransaction
        queryRequests += other.queryRequests
        borrowLatency.add(other.borrowLatency)
        queryLatency.add(other.queryLatency)
    }
}
