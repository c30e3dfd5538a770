import ConciergeConfig
import ConnectionPool
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// A target's role, as its health checks found it.
enum TargetRoleState: Sendable {
    case writer
    case reader
    case unknown
}

extension ProxyRuntime {
    // MARK: Health checks

    /// How health-check connections show in `pg_stat_activity` (they are outside the pool's cap).
    static let healthCheckApplicationName = "concierge_health_check"

    /// One checker per registered target (started with the proxy; kept in step with the
    /// registered targets).
    func syncMonitors() {
        let (targets, existing, monitoring) = state.withLockedValue {
            ($0.configuration.targetGroup.targets.map(\.endpoint), $0.monitors, $0.monitoring)
        }
        guard monitoring else { return }  // not started (or stopped)
        var started: [TargetMonitor] = []
        var stopped: [TargetMonitor] = []
        state.withLockedValue { state in
            for (target, monitor) in existing where !targets.contains(target) {
                stopped.append(monitor)
                state.monitors[target] = nil
                state.roles[target] = nil
                state.targetMaxConnections[target] = nil
            }
            for (index, target) in targets.enumerated() where state.monitors[target] == nil {
                let monitor = TargetMonitor(
                    target: target, eventLoop: eventLoops[index % eventLoops.count], logger: logger,
                    settings: { [weak self] in self?.healthCheckSettings(for: target) },
                    report: { [weak self] target, result in self?.targetChecked(target, result) })
                state.monitors[target] = monitor
                started.append(monitor)
            }
        }
        for monitor in stopped { monitor.stop() }
        for monitor in started { monitor.start() }
    }

    func startMonitors() {
        state.withLockedValue { $0.monitoring = true }
        syncMonitors()
    }

    func stopMonitors() {
        let monitors = state.withLockedValue { state -> [TargetMonitor] in
            state.monitoring = false
            defer { state.monitors = [:] }
            return Array(state.monitors.values)
        }
        for monitor in monitors { monitor.stop() }
    }

    /// How a health check logs in: the first auth entry's credentials, the check's database.
    private func healthCheckSettings(for target: HostPort) -> (BackendSettings, HealthCheckConfiguration)? {
        let snapshot = state.withLockedValue { state -> (DatabaseCredential?, HealthCheckConfiguration, SocketAddress?, BackendTLSSnapshot) in
            let first = state.users.username(forAuthIndex: 0).flatMap { state.credentials[$0] }
                ?? state.credentials.values.sorted { $0.username < $1.username }.first
            return (first, state.configuration.targetGroup.healthCheck, state.targetAddresses[target],
                    BackendTLSSnapshot(context: state.backendTLS, mode: state.configuration.targetGroup.tls.mode.rawValue))
        }
        guard let credential = snapshot.0 else { return nil }
        var address = snapshot.2
        if address == nil {
            address = try? SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
            if let address { state.withLockedValue { $0.targetAddresses[target] = address } }
        }
        guard let address else { return nil }
        var checkLogger = logger
        checkLogger[metadataKey: "concierge.health_check"] = "\(target)"
        let settings = BackendSettings(
            address: address, username: credential.username, password: credential.password,
            database: snapshot.1.database, initQuery: "", readMaxConnections: true, scramCache: scramCacheForChecks,
            logger: checkLogger, generation: 0, tls: snapshot.3.context,
            serverHostname: BackendTLS.serverHostname(target.host), tlsMode: snapshot.3.mode,
            applicationName: Self.healthCheckApplicationName)
        return (settings, snapshot.1)
    }

    /// A check's result: the target's health and role, then the writer.
    func targetChecked(_ target: HostPort, _ result: TargetCheckResult) {
        var changedWriter: (old: HostPort?, new: HostPort, maxConnections: Int?)?
        var becameAvailable = false
        var becameUnavailable = false
        var waiters: [EventLoopPromise<Void>] = []
        var refused: [EventLoopPromise<Void>] = []
        var refusal: BackendError?
        var unresponsivePools: [BackendPool] = []
        var newlyUnresponsive = false
        state.withLockedValue { state in
            guard state.configuration.targetGroup.targets.contains(where: { $0.endpoint == target }) else { return }
            if target == state.writer { state.writerChecked = true }
            switch result {
            case .up(let inRecovery, let maxConnections):
                state.unresponsiveTargets.remove(target)
                state.targetHealth[target] = TargetHealth(state: .available)
                state.roles[target] = inRecovery ? .reader : .writer
                if let maxConnections { state.targetMaxConnections[target] = maxConnections }
            case .upUnknownRole(let why):
                state.unresponsiveTargets.remove(target)
                state.targetHealth[target] = TargetHealth(
                    state: .available, description: "The health check could not tell the role: \(why)")
                if state.roles[target] == nil { state.roles[target] = .unknown }
            case .down(let health, let unresponsive):
                state.targetHealth[target] = health
                state.roles[target] = .unknown
                if unresponsive {
                    // Its backends would wait for ever for answers that do not come: closed, so
                    // that clients mid-transaction get 08006 now (idle clients hold none).
                    if target == state.writer { unresponsivePools.append(pool) }
                    if let readerPool = state.readerPools[target] { unresponsivePools.append(readerPool) }
                    newlyUnresponsive = state.unresponsiveTargets.insert(target).inserted
                } else {
                    state.unresponsiveTargets.remove(target)
                }
            }
            // The writer: the current one while it still is; else the first target that is.
            let targets = state.configuration.targetGroup.targets.map(\.endpoint)
            let health = state.targetHealth
            let available = { (t: HostPort) in health[t]?.state == .available }
            let roles = state.roles
            var writer: HostPort?
            if let current = state.writer, available(current), state.roles[current] == .writer {
                writer = current
            } else if let found = targets.first(where: { available($0) && roles[$0] == .writer }) {
                writer = found
            } else if let current = state.writer, available(current), state.roles[current] == .unknown,
                      !targets.contains(where: { roles[$0] == .writer })
            {
                writer = current  // up, role unknown, and nobody claims to be the writer
            }
            if let writer, writer != state.writer {
                changedWriter = (state.writer, writer, state.targetMaxConnections[writer])
                state.writer = writer
                state.writerAddress = state.targetAddresses[writer]
                    ?? (try? SocketAddress.makeAddressResolvingHost(writer.host, port: writer.port))
                state.databaseMaxConnections = state.targetMaxConnections[writer]
                state.writerChecked = true
            }
            let nowAvailable = writer != nil
            if nowAvailable != state.writerAvailable {
                Self.setWriterAvailable(nowAvailable, in: &state)
                becameAvailable = nowAvailable
                becameUnavailable = !nowAvailable
            }
            if state.writerAvailable, !state.writerWaiters.isEmpty {
                waiters = state.writerWaiters.values.map(\.promise)
                state.writerWaiters = [:]
            } else if !state.writerAvailable, !state.writerWaiters.isEmpty {
                // Not a failover (no writer was lost lately when they began): waiting would only
                // delay the error. Those that began during one wait out their borrow timeout.
                for (id, waiter) in state.writerWaiters {
                    guard let reason = Self.noWriterReason(state, began: waiter.began) else { continue }
                    refused.append(waiter.promise)
                    state.writerWaiters[id] = nil
                    refusal = reason
                }
            }
        }
        if let refusal { for waiter in refused { waiter.fail(NoWriter(reason: refusal)) } }
        if newlyUnresponsive {
            logger.warning("the database stopped answering health checks: closing its connections", metadata: [
                "concierge.target": "\(target)",
            ])
        }
        for unresponsive in unresponsivePools {
            unresponsive.retire()
            unresponsive.abortAll()
        }
        if let change = changedWriter {
            logger.warning("writer changed: new backends go to the new writer", metadata: [
                "concierge.previous_writer": "\(change.old.map(\.description) ?? "none")",
                "concierge.writer": "\(change.new)",
            ])
            pool.retire()
            if let maxConnections = change.maxConnections {
                pool.updateLimits(Self.limits(for: configuration, maxConnections: maxConnections))
            }
        } else if becameAvailable {
            logger.info("writer available", metadata: ["concierge.writer": "\(state.withLockedValue { $0.writer }.map(\.description) ?? "")"])
        }
        if becameUnavailable {
            logger.warning("no writer available: new transactions wait for one (up to the borrow timeout)", metadata: [
                "concierge.target": "\(target)",
            ])
        }
        for waiter in waiters { waiter.succeed(()) }
        updateReaders()
    }

    // MARK: READ_ONLY endpoints

    /// Keeps one pool per available reader; a reader that fails or is promoted leaves the set
    /// (its idle backends close now, the others as they are returned).
    func updateReaders() {
        guard endpointRoles.contains(.readOnly) else { return }
        var created: [(HostPort, BackendPool)] = []
        var retired: [BackendPool] = []
        var resized: [(BackendPool, PoolLimits)] = []
        state.withLockedValue { state in
            let readers = Set(state.configuration.targetGroup.targets.map(\.endpoint).filter {
                state.roles[$0] == .reader && state.targetHealth[$0]?.state == .available
            })
            for target in state.activeReaders.subtracting(readers) {
                if let pool = state.readerPools[target] { retired.append(pool) }
            }
            for target in readers where !state.activeReaders.contains(target) {
                let limits = Self.limits(for: state.configuration, maxConnections: state.targetMaxConnections[target])
                if let pool = state.readerPools[target] {
                    resized.append((pool, limits))
                } else {
                    let pool = BackendPool(limits: limits, eventLoops: eventLoops) { [unowned self] id, key, eventLoop, pool in
                        self.metrics.databaseConnectionRequests.increment()
                        return self.connectToWriter(id: id, key: key, on: eventLoop, pool: pool, reader: target)
                    }
                    state.readerPools[target] = pool
                    created.append((target, pool))
                }
            }
            state.activeReaders = readers
        }
        for pool in retired { pool.retire() }
        for (pool, limits) in resized { pool.updateLimits(limits) }
        for (target, _) in created {
            logger.info("reader available for read-only endpoints", metadata: ["concierge.target": "\(target)"])
        }
    }

    /// The pool a client of `endpoint` borrows from: the writer's, or for a READ_ONLY endpoint
    /// the least busy available reader's (nil: no reader).
    func borrowPool(forEndpoint endpoint: Int) -> BackendPool? {
        guard endpoint < endpointRoles.count, endpointRoles[endpoint] == .readOnly else { return pool }
        let candidates = state.withLockedValue { state in state.activeReaders.compactMap { state.readerPools[$0] } }
        return candidates.min { a, b in
            let x = a.stats.totals, y = b.stats.totals
            return (x.leased + x.waiting, x.total) < (y.leased + y.waiting, y.total)
        }
    }

    /// Every pool (the writer's and the readers'), for metrics and shutdown.
    var allPools: [BackendPool] {
        [pool] + state.withLockedValue { Array($0.readerPools.values) }
    }

    static func setWriterAvailable(_ available: Bool, in state: inout MutableState) {
        state.writerAvailable = available
        let now = NIODeadline.now()
        if available {
            state.writerAvailableSince = now
            state.writerLostAt = nil
        } else if let since = state.writerAvailableSince {
            state.writerLostAt = now
            state.writerAvailableSeconds += Double((now - since).nanoseconds) / 1e9
            state.writerAvailableSince = nil
        }
    }

    /// A backend open to `writer` failed to connect: until a health check says otherwise, new
    /// opens wait, and the check runs now.
    func writerSuspect(_ writer: HostPort) {
        let monitor = state.withLockedValue { state -> TargetMonitor? in
            if state.writer == writer, state.writerAvailable {
                Self.setWriterAvailable(false, in: &state)
            }
            return state.monitors[writer]
        }
        monitor?.checkNow()
    }

    /// A backend connection to the writer broke while in use: check the writer now.
    func backendConnectionLost() {
        let monitor = state.withLockedValue { state in state.writer.flatMap { state.monitors[$0] } }
        monitor?.checkNow()
    }

    // MARK: Opening backends (paced, waiting out a failover)

    /// Opens a backend to the writer. With no writer available (a failover), it waits for one
    /// until the borrow timeout; a failed connect marks the writer suspect and waits again.
    /// At most a few opens run at once, so a new writer is not hit by a reconnection storm.
    func openBackend(id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, pool: BackendPool)
        -> EventLoopFuture<BackendConnection>
    {
        metrics.databaseConnectionRequests.increment()
        let borrowTimeout = state.withLockedValue { $0.configuration.targetGroup.connectionPoolConfig.connectionBorrowTimeout }
        let began = NIODeadline.now()
        // A little beyond the borrow timeout of the client it is opened for: that client gets
        // the borrow timeout's error (53300), not this open's reason, whichever timer fires first.
        let deadline = began + .seconds(Int64(max(1, borrowTimeout))) + .milliseconds(250)
        return attemptOpen(id: id, key: key, on: eventLoop, pool: pool, began: began, deadline: deadline)
            .map { connection in
                self.metrics.databaseConnectionsSetupSucceeded.increment()
                return connection
            }
            .flatMapErrorThrowing { error in
                self.metrics.databaseConnectionsSetupFailed.increment()
                throw error
            }
    }

    private func attemptOpen(
        id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, pool: BackendPool, began: NIODeadline,
        deadline: NIODeadline
    ) -> EventLoopFuture<BackendConnection> {
        waitForWriter(on: eventLoop, began: began, until: deadline)
            .flatMap { self.acquireOpenSlot(on: eventLoop) }
            .flatMap {
                self.connectToWriter(id: id, key: key, on: eventLoop, pool: pool)
                    .always { _ in self.releaseOpenSlot() }
            }
            .flatMapError { error in
                // No writer (and no failover to wait out): the reason is final.
                if let refusal = error as? NoWriter { return eventLoop.makeFailedFuture(refusal.reason) }
                let retry: Bool
                var pause = TimeAmount.zero
                switch error as? BackendError {
                case .connection?: retry = NIODeadline.now() < deadline
                case .server(let fields)? where fields.code.hasPrefix("57P"):
                    // The database refuses logins for now (57P03: starting up, shutting down,
                    // recovering from a crash): as for a failover, the transaction waits for it,
                    // asking again at a gentle pace (its health-check session may still answer).
                    retry = NIODeadline.now() + .milliseconds(100) < deadline
                    pause = .milliseconds(100)
                default: retry = false
                }
                guard retry else { return eventLoop.makeFailedFuture(error) }
                // The connect failed: the writer is now suspect and the next attempt waits for a
                // health check (or fails with its reason), so this cannot spin.
                guard pause > .zero else {
                    return self.attemptOpen(id: id, key: key, on: eventLoop, pool: pool, began: began, deadline: deadline)
                }
                return eventLoop.scheduleTask(in: pause) {}.futureResult.flatMap {
                    self.attemptOpen(id: id, key: key, on: eventLoop, pool: pool, began: began, deadline: deadline)
                }
            }
    }

    private func waitForWriter(on eventLoop: any EventLoop, began: NIODeadline, until deadline: NIODeadline) -> EventLoopFuture<Void> {
        enum Decision { case proceed, wait(UInt64), fail(BackendError) }
        if state.withLockedValue({ $0.writerAvailable }) { return eventLoop.makeSucceededVoidFuture() }
        let promise = eventLoop.makePromise(of: Void.self)
        let decision: Decision = state.withLockedValue { state in
            if state.writerAvailable { return .proceed }
            if let reason = Self.noWriterReason(state, began: began) { return .fail(reason) }
            state.nextWaiterID &+= 1
            state.writerWaiters[state.nextWaiterID] = (promise, began)
            return .wait(state.nextWaiterID)
        }
        let waiter: UInt64
        switch decision {
        case .proceed:
            promise.succeed(())
            return promise.futureResult
        case .fail(let error):
            promise.fail(NoWriter(reason: error))
            return promise.futureResult
        case .wait(let id):
            waiter = id
        }
        let timeout = eventLoop.scheduleTask(deadline: deadline) { [weak self] in
            let expired = self?.state.withLockedValue { $0.writerWaiters.removeValue(forKey: waiter) }
            expired?.promise.fail(NoWriter(reason: BackendError.connection("no writer is available (the target group has no healthy primary)")))
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        return promise.futureResult
    }

    /// Why a backend cannot be opened now without waiting, or nil to wait: waiting makes sense
    /// during a failover (the writer was lost less than `connection_borrow_timeout` before the
    /// open `began`: its client waits out its own borrow timeout) and before the first health
    /// check has answered.
    static func noWriterReason(_ state: MutableState, began: NIODeadline = .now()) -> BackendError? {
        guard !state.writerAvailable else { return nil }
        let window = TimeAmount.seconds(Int64(state.configuration.targetGroup.connectionPoolConfig.connectionBorrowTimeout))
        if let lost = state.writerLostAt, began < lost + window { return nil }
        guard let writer = state.writer else {
            return state.configuration.targetGroup.targets.isEmpty
                ? .connection("no database target is registered")
                : .connection("no target is a writer (every reachable target is in recovery)")
        }
        guard state.writerChecked else { return nil }
        let health = state.targetHealth[writer]
        if health?.state == .available {
            return .connection("no target is a writer (every reachable target is in recovery)")
        }
        return .connection("\(writer): \(health?.description ?? "unavailable")")
    }

    /// How many backend opens may run at once.
    var maxConcurrentOpens: Int { max(4, pool.limits.maxConnections / 4) }

    private func acquireOpenSlot(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let limit = maxConcurrentOpens
        let promise = eventLoop.makePromise(of: Void.self)
        let granted = state.withLockedValue { state -> Bool in
            if state.opening < limit {
                state.opening += 1
                return true
            }
            state.openQueue.append(promise)
            return false
        }
        if granted { promise.succeed(()) }
        return promise.futureResult
    }

    private func releaseOpenSlot() {
        let next = state.withLockedValue { state -> EventLoopPromise<Void>? in
            if state.openQueue.isEmpty {
                state.opening -= 1
                return nil
            }
            return state.openQueue.removeFirst()  // the slot passes on
        }
        next?.succeed(())
    }

    /// The role the admin API shows for a target.
    func roleName(of target: HostPort) -> String {
        state.withLockedValue { state in
            switch state.roles[target] {
            case .writer?: return state.writer == target ? "READ_WRITE" : "UNKNOWN"
            case .reader?: return "READ_ONLY"
            case .unknown?, nil: return state.writer == target && state.writerAvailable ? "READ_WRITE" : "UNKNOWN"
            }
        }
    }
}

/// Opening a backend gave up waiting for a writer (its reason is what the client sees).
struct NoWriter: Error {
    var reason: BackendError
}

struct BackendTLSSnapshot: @unchecked Sendable {
    var context: NIOSSLContext?
    var mode: String
}
