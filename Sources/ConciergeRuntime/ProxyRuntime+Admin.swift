import ConciergeAuth
import ConciergeAdmin
import ConciergeConfig
import ConciergeJSON
import ConnectionPool
import Logging
import NIOCore
import ProxyCore

#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension ProxyRuntime: AdminManagedProxy {
    // MARK: Metrics

    public var latencyHistograms: [LatencyHistogram] { metrics.latencyHistograms }

    /// Samples every event loop's sessions and the pool, and sets the gauges (and the counters
    /// kept per loop). The future completes once the registry holds the numbers of this moment.
    public func collectMetrics() -> EventLoopFuture<Void> {
        let endpoints = metrics.endpointNames.count
        let futures = loopSessions.values.map { sessions in
            sessions.eventLoop.submit { sessions.sample(endpoints: endpoints) }
        }
        return EventLoopFuture.whenAllSucceed(futures, on: eventLoops[0]).map { samples in
            var total = LoopMetricsSample(endpoints: endpoints)
            for sample in samples { total.add(sample) }
            let stats = self.pool.stats
            // Readers' pools (READ_ONLY endpoints) count in the connection gauges too.
            var totals = stats.totals
            for reader in self.allPools.dropFirst() {
                let counts = reader.stats.totals
                totals.connecting += counts.connecting
                totals.idle += counts.idle
                totals.leased += counts.leased
                totals.waiting += counts.waiting
                totals.closing += counts.closing
            }
            let metrics = self.metrics
            for (index, gauge) in metrics.clientConnections.enumerated() {
                gauge.set(Int64(total.clientsPerEndpoint[index]))
            }
            metrics.maxDatabaseConnectionsAllowed.set(Int64(stats.limits.maxConnections))
            // Every slot of the cap in use, closing connections included: the database still
            // holds their sessions, so this never exceeds the cap (as the database sees it).
            metrics.databaseConnections.set(Int64(totals.total))
            metrics.databaseConnectionsCurrentlyBorrowed.set(Int64(totals.leased))
            metrics.databaseConnectionsCurrentlySessionPinned.set(Int64(total.pinned))
            metrics.databaseConnectionsCurrentlyInTransaction.set(Int64(total.inTransaction))
            metrics.borrowWaiters.set(Int64(totals.waiting))
            let (queries, writerSeconds) = self.state.withLockedValue { state -> (Int, Double) in
                let queries = max(0, total.queryRequests - state.reportedQueryRequests)
                state.reportedQueryRequests = max(state.reportedQueryRequests, total.queryRequests)
                return (queries, state.targetGroup.writerAvailableSecondsToReport(now: .now()))
            }
            self.updateTargetGauges()
            if queries > 0 { metrics.queryRequests.increment(by: Int64(queries)) }
            metrics.borrowLatency.publish(total.borrowLatency)
            metrics.queryDatabaseResponseLatency.publish(total.queryLatency)
            if writerSeconds > 0 { metrics.writerAvailableDuration.increment(by: writerSeconds) }
        }
    }

    /// `concierge_target_available{target, role}`: 1 when the target is AVAILABLE; series of
    /// deregistered targets (or of a role a target no longer has) are removed.
    private func updateTargetGauges() {
        let (targets, roles, health) = state.withLockedValue { state -> ([HostPort], [String], [HostPort: TargetHealth]) in
            let targets = state.configuration.targetGroup.targets.map(\.endpoint)
            return (targets, targets.map { state.targetGroup.roleName(of: $0) }, state.targetGroup.health)
        }
        var wanted: [String: (labels: [(String, String)], value: Int64)] = [:]
        for (target, role) in zip(targets, roles) {
            // The role describe-db-proxy-targets shows (READ_WRITE, READ_ONLY, UNKNOWN).
            wanted["\(target)|\(role)"] = (
                [("proxy", name), ("target_group", metrics.targetGroup), ("target", target.description), ("role", role)],
                health[target]?.state == .available ? 1 : 0)
        }
        metrics.setTargetAvailability(wanted)
    }

    // MARK: Describe (shaped like the RDS API)

    var arn: String { "arn:concierge:rds:local:000000000000:db-proxy:\(resourceID)" }

    public func describeProxy() -> JSON {
        let (configuration, users, updated) = state.withLockedValue { ($0.configuration, $0.users, $0.updatedDate) }
        let auth: [JSON] = zip(configuration.auth.indices, configuration.auth).map { index, entry in
            var members: [JSON.Member] = [
                ("AuthScheme", .string(entry.authScheme.rawValue)),
                ("SecretArn", .string(entry.secretARN.isEmpty ? entry.secret.description : entry.secretARN)),
                ("IAMAuth", .string(entry.iamAuth.rawValue)),
                ("ClientPasswordAuthType", .string(entry.clientPasswordAuthType.rawValue)),
                ("Description", .string(entry.description)),
            ]
            if let user = users.username(forAuthIndex: index) { members.append(("UserName", .string(user))) }
            return .object(members)
        }
        let endpoints: [JSON] = configuration.endpoints.map {
            .object([
                ("DBProxyEndpointName", .string($0.name)),
                ("Endpoint", .string($0.listen.host)),
                ("Port", .int($0.listen.port)),
                ("TargetRole", .string($0.targetRole.rawValue)),
            ])
        }
        let draining = state.withLockedValue { $0.draining }
        return .object([
            ("DBProxyName", .string(name)),
            ("DBProxyArn", .string(arn)),
            ("DBProxyResourceId", .string(resourceID)),
            ("Status", .string(draining ? "deleting" : "available")),
            ("EngineFamily", .string(configuration.engineFamily.rawValue)),
            ("Endpoint", .string(configuration.listen.host)),
            ("Port", .int(configuration.listen.port)),
            ("Endpoints", .array(endpoints)),
            ("RequireTLS", .bool(configuration.requireTLS)),
            ("IdleClientTimeout", .int(configuration.idleClientTimeout)),
            ("DebugLogging", .bool(configuration.debugLogging)),
            ("MaxClientConnections", .int(configuration.maxClientConnections)),
            ("Auth", .array(auth)),
            ("CreatedDate", .string(Self.iso8601(createdDate))),
            ("UpdatedDate", .string(Self.iso8601(updated))),
        ])
    }

    public func describeTargetGroup() -> JSON {
        let (configuration, updated) = state.withLockedValue { ($0.configuration, $0.targetGroupUpdatedDate) }
        let group = configuration.targetGroup
        let pool = group.connectionPoolConfig
        return .object([
            ("DBProxyName", .string(name)),
            ("TargetGroupName", .string(group.name)),
            ("TargetGroupArn", .string("arn:concierge:rds:local:000000000000:target-group:\(resourceID)-\(group.name)")),
            ("IsDefault", .bool(true)),
            ("Status", .string("available")),
            ("ConnectionPoolConfig", .object([
                ("MaxConnectionsPercent", .int(pool.maxConnectionsPercent)),
                ("MaxIdleConnectionsPercent", .int(pool.maxIdleConnectionsPercent)),
                ("ConnectionBorrowTimeout", .int(pool.connectionBorrowTimeout)),
                ("SessionPinningFilters", .array(pool.sessionPinningFilters.map { .string($0.rawValue) })),
                ("InitQuery", .string(pool.initQuery)),
            ])),
            ("CreatedDate", .string(Self.iso8601(createdDate))),
            ("UpdatedDate", .string(Self.iso8601(updated))),
        ])
    }

    public func describeTargets() -> [JSON] {
        let (targets, health) = state.withLockedValue {
            ($0.configuration.targetGroup.targets.map(\.endpoint), $0.targetGroup.health)
        }
        var result = targets.map { target in
            let targetHealth = health[target] ?? TargetHealth(
                state: .registering, description: "The first health check has not completed yet.")
            return Self.targetJSON(target, role: roleName(of: target), health: targetHealth, resourceID: resourceID)
        }
        // A READ_ONLY endpoint with no reader: its targets are unusable, as RDS reports it.
        let (endpoints, readers) = state.withLockedValue { ($0.configuration.endpoints, $0.targetGroup.activeReaders) }
        for endpoint in endpoints where endpoint.targetRole == .readOnly && readers.isEmpty {
            for target in targets {
                guard case .object(var members) = Self.targetJSON(
                    target, role: "READ_ONLY",
                    health: TargetHealth(
                        state: .unavailable, reason: "INVALID_REPLICATION_STATE",
                        description: "No reader is available for the read-only endpoint \(endpoint.name)."),
                    resourceID: resourceID)
                else { continue }
                members.append(("DBProxyEndpointName", .string(endpoint.name)))
                result.append(.object(members))
            }
        }
        return result
    }

    static func targetJSON(_ target: HostPort, role: String, health: TargetHealth, resourceID: String) -> JSON {
        .object([
            ("Endpoint", .string(target.host)),
            ("Port", .int(target.port)),
            ("Type", .string("RDS_INSTANCE")),
            ("Role", .string(role)),
            ("RdsResourceId", .string(target.description)),
            ("TargetArn", .string("arn:concierge:rds:local:000000000000:target:\(resourceID)/\(target)")),
            ("TrackedClusterId", .null),
            ("TargetHealth", .object([
                ("State", .string(health.state.rawValue)),
                ("Reason", health.reason.map { .string($0) } ?? .null),
                ("Description", health.description.map { .string($0) } ?? .null),
            ])),
        ])
    }

    static func iso8601(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        let millis = Int((date.timeIntervalSince1970 - Double(seconds)) * 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T"
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }

    // MARK: Modify

    /// ModifyDBProxy: the changes are validated like a loaded configuration, then take effect at
    /// once (the idle timeout at the next sweep, debug logging at the next log line).
    public func modifyProxy(idleClientTimeout: Int?, requireTLS: Bool?, debugLogging: Bool?) throws(AdminError) {
        var candidate = configuration
        if let idleClientTimeout { candidate.idleClientTimeout = idleClientTimeout }
        if let requireTLS { candidate.requireTLS = requireTLS }
        if let debugLogging { candidate.debugLogging = debugLogging }
        try Self.check(candidate, fields: [
            "idle_client_timeout": "IdleClientTimeout", "require_tls": "RequireTLS", "debug_logging": "DebugLogging",
        ])
        applyProxySettings(candidate)
    }

    private func applyProxySettings(_ candidate: ProxyConfiguration) {
        let changed = state.withLockedValue { state -> Bool in
            let old = state.configuration
            state.configuration.idleClientTimeout = candidate.idleClientTimeout
            state.configuration.requireTLS = candidate.requireTLS
            state.configuration.debugLogging = candidate.debugLogging
            state.configuration.maxClientConnections = candidate.maxClientConnections
            state.configuration.maxMessageSize = candidate.maxMessageSize
            let changed = old != state.configuration
            if changed { state.updatedDate = Date() }
            return changed
        }
        idleClientTimeoutSeconds.store(candidate.idleClientTimeout, ordering: .relaxed)
        debugLoggingEnabled.store(candidate.debugLogging, ordering: .relaxed)
        maxClientConnectionsValue.store(candidate.maxClientConnections, ordering: .relaxed)
        maxMessageSizeValue.store(candidate.maxMessageSize, ordering: .relaxed)
        requireTLSValue.store(candidate.requireTLS, ordering: .relaxed)
        if changed {
            logger.info("proxy settings changed", metadata: [
                "concierge.idle_client_timeout": "\(candidate.idleClientTimeout)",
                "concierge.debug_logging": "\(candidate.debugLogging)",
                "concierge.max_client_connections": "\(candidate.maxClientConnections)",
            ])
        }
    }

    /// ModifyDBProxyTargetGroup: a lower cap closes idle backends now and borrowed ones as they
    /// are returned (no client fails); a new borrow timeout applies to the next waiters and to
    /// those already waiting (counted from when each started); new
    /// filters apply to clients that log in from now on; a new init query retires the backends
    /// that ran the old one (idle ones now, borrowed ones when returned).
    public func modifyTargetGroup(_ pool: ConnectionPoolConfiguration) throws(AdminError) {
        var candidate = configuration
        candidate.targetGroup.connectionPoolConfig = pool
        try Self.check(candidate, fields: [
            "max_connections_percent": "ConnectionPoolConfig.MaxConnectionsPercent",
            "max_idle_connections_percent": "ConnectionPoolConfig.MaxIdleConnectionsPercent",
            "connection_borrow_timeout": "ConnectionPoolConfig.ConnectionBorrowTimeout",
            "session_pinning_filters": "ConnectionPoolConfig.SessionPinningFilters",
            "init_query": "ConnectionPoolConfig.InitQuery",
        ])
        applyPoolConfiguration(pool)
    }

    private func applyPoolConfiguration(_ pool: ConnectionPoolConfiguration) {
        let (old, limits) = state.withLockedValue { state -> (ConnectionPoolConfiguration, PoolLimits) in
            let old = state.configuration.targetGroup.connectionPoolConfig
            state.configuration.targetGroup.connectionPoolConfig = pool
            if old != pool { state.targetGroupUpdatedDate = Date() }
            state.targetGroup.failoverWindowChanged(.seconds(Int64(pool.connectionBorrowTimeout)))
            return (old, Self.limits(for: state.configuration, maxConnections: state.targetGroup.writerMaxConnections))
        }
        engine.sessionPinningFiltersChanged(excludeVariableSets: pool.excludesVariableSets)
        guard old != pool else { return }
        logger.info("connection pool settings changed", metadata: [
            "concierge.max_connections_percent": "\(pool.maxConnectionsPercent)",
            "concierge.max_idle_connections_percent": "\(pool.maxIdleConnectionsPercent)",
            "concierge.connection_borrow_timeout": "\(pool.connectionBorrowTimeout)",
            "concierge.max_connections": "\(limits.maxConnections)",
        ])
        self.pool.updateLimits(limits)
        if old.initQuery != pool.initQuery { self.pool.retire() }
    }

    /// RegisterDBProxyTargets: the targets are added after those registered.
    public func registerTargets(_ targets: [HostPort]) throws(AdminError) -> [JSON] {
        var candidate = configuration
        for target in targets {
            let exists = candidate.targetGroup.targets.contains {
                $0.endpoint.host.lowercased() == target.host.lowercased() && $0.endpoint.port == target.port
            }
            if exists {
                throw AdminError(
                    status: 409, code: "DBProxyTargetAlreadyRegisteredFault", field: "DBInstanceIdentifiers",
                    message: "DBInstanceIdentifiers: \(target) is already registered with \(name)")
            }
            candidate.targetGroup.targets.append(TargetConfiguration(endpoint: target))
        }
        try Self.check(candidate, fields: ["targets": "DBInstanceIdentifiers"])
        try applyTargets(candidate.targetGroup.targets.map(\.endpoint))
        let resourceID = self.resourceID
        return targets.map {
            Self.targetJSON($0, role: "UNKNOWN", health: TargetHealth(state: .registering), resourceID: resourceID)
        }
    }

    /// DeregisterDBProxyTargets. Deregistering the writer moves new backends to the next target;
    /// backends of the old one close as their clients return them.
    public func deregisterTargets(_ targets: [HostPort]) throws(AdminError) {
        var remaining = configuration.targetGroup.targets.map(\.endpoint)
        for target in targets {
            guard let index = remaining.firstIndex(where: {
                $0.host.lowercased() == target.host.lowercased() && $0.port == target.port
            }) else {
                throw AdminError(
                    status: 404, code: "DBProxyTargetNotFoundFault", field: "DBInstanceIdentifiers",
                    message: "DBInstanceIdentifiers: \(target) is not registered with \(name)")
            }
            remaining.remove(at: index)
        }
        try applyTargets(remaining)
    }

    /// Sets the registered targets; the first is the writer. An empty list leaves no writer:
    /// clients then wait (up to the borrow timeout) and get an error.
    private func applyTargets(_ targets: [HostPort]) throws(AdminError) {
        var address: SocketAddress?
        if let first = targets.first {
            do {
                address = try SocketAddress.makeAddressResolvingHost(first.host, port: first.port)
            } catch {
                throw AdminError.invalid("DBInstanceIdentifiers", "\(first) cannot be resolved: \(error)")
            }
        }
        let writerRemoved = state.withLockedValue { state -> Bool in
            state.configuration.targetGroup.targets = targets.map { TargetConfiguration(endpoint: $0) }
            if let address, let first = targets.first, state.targetAddresses[first] == nil {
                state.targetAddresses[first] = address
            }
            state.targetGroupUpdatedDate = Date()
            // The writer left the group: health checks pick the next one.
            let writerRemoved = state.targetGroup.targetsChanged(targets, now: .now())
            if writerRemoved { state.writerAddress = nil }
            return writerRemoved
        }
        logger.info("targets changed", metadata: ["concierge.targets": "\(targets.map(\.description).joined(separator: ","))"])
        syncMonitors()
        if writerRemoved { pool.retire() }
    }

    /// Validates a changed proxy configuration; the first issue becomes an API error naming the
    /// API field (looked up by the YAML key at the end of the issue's key path).
    private static func check(_ candidate: ProxyConfiguration, fields: [String: String]) throws(AdminError) {
        let issues = ConfigurationValidator.validate(candidate, at: "proxy")
        guard let issue = issues.first else { return }
        let key = issue.keyPath.split(separator: ".").last.map { String($0.split(separator: "[").first ?? "") } ?? ""
        let field = fields[key] ?? key
        let combination = issue.message.contains("greater than")
        throw AdminError(
            status: 400, code: combination ? "InvalidParameterCombination" : "InvalidParameterValue", field: field,
            message: "\(field): \(issue.message)")
    }

    // MARK: Reload

}

extension ProxyConfiguration {
    /// What a new configuration changes that needs a restart, as key paths (empty: reloadable).
    public static func unreloadableChanges(from old: ProxyConfiguration, to new: ProxyConfiguration, at path: String) -> [String] {
        var keys: [String] = []
        if old.listen != new.listen { keys.append("\(path).listen") }
        if old.endpoints != new.endpoints { keys.append("\(path).endpoints") }
        if old.engineFamily != new.engineFamily { keys.append("\(path).engine_family") }
        if old.targetGroup.name != new.targetGroup.name { keys.append("\(path).target_group.name") }
        if old.effectiveResourceID != new.effectiveResourceID { keys.append("\(path).resource_id") }
        return keys
    }
}

extension ProxyRuntime {
    /// Applies a reloaded configuration of this proxy (already validated, credentials read):
    /// settings, pool, auth entries and targets, without dropping any client.
    public func reload(_ new: ProxyConfiguration, credentials: [DatabaseCredential]) throws(AdminError) {
        let old = configuration
        // TLS first: a certificate that does not load refuses the whole reload.
        var serverTLS = state.withLockedValue { $0.serverTLS }
        var backendTLS = state.withLockedValue { $0.backendTLS }
        do {
            if new.tls != old.tls {
                serverTLS = try new.tls.map { try ServerTLSContextSource($0) }
            }
            if new.targetGroup.tls != old.targetGroup.tls {
                backendTLS = try BackendTLS.makeContext(new.targetGroup.tls)
            }
        } catch {
            throw AdminError(status: 400, code: "InvalidParameterValue", field: "tls", message: "tls: \(error)")
        }
        state.withLockedValue {
            $0.serverTLS = serverTLS
            $0.backendTLS = backendTLS
            $0.configuration.tls = new.tls
            $0.configuration.targetGroup.tls = new.targetGroup.tls
            $0.configuration.hostnames = new.hostnames
        }
        if new.targetGroup.tls != old.targetGroup.tls { pool.retire() }
        let users = Self.userDirectory(credentials: credentials, auth: new.auth, reusing: self.users)
        state.withLockedValue { state in
            if state.configuration.auth != new.auth || state.credentials.values.sorted(by: { $0.username < $1.username })
                != credentials.sorted(by: { $0.username < $1.username })
            {
                state.updatedDate = Date()
            }
            state.configuration.auth = new.auth
            state.users = users
            state.credentials = Dictionary(credentials.map { ($0.username, $0) }, uniquingKeysWith: { first, _ in first })
        }
        applyProxySettings(new)
        applyPoolConfiguration(new.targetGroup.connectionPoolConfig)
        let targets = new.targetGroup.targets.map(\.endpoint)
        if targets != configuration.targetGroup.targets.map(\.endpoint) { try applyTargets(targets) }
    }
}
