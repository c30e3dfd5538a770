import ConciergeConfig
import ConnectionPool
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ProxyCore

extension ProxyRuntime {
    // MARK: Health checks

    /// One checker per registered target (started with the proxy; kept in step with the
    /// registered targets).
    func syncMonitors() {
        let (targets, existing, monitoring) = state.withLockedValue {
            ($0.configuration.targetGroup.targets.map(\.endpoint), $0.monitors, $0.monitoring)
        }
        guard monitoring else { return }  // not started (or stopped)
        var started: [TargetMonitor<Engine, HostPort>] = []
        var stopped: [TargetMonitor<Engine, HostPort>] = []
        state.withLockedValue { state in
            for (target, monitor) in existing where !targets.contains(target) {
                stopped.append(monitor)
                state.monitors[target] = nil
            }
            state.targetGroup.forget(stopped.map(\.target))
            for (index, target) in targets.enumerated() where state.monitors[target] == nil {
                let monitor = TargetMonitor(
                    target: target, engine: engine, eventLoop: eventLoops[index % eventLoops.count], logger: logger,
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
        let monitors = state.withLockedValue { state -> [TargetMonitor<Engine, HostPort>] in
            state.monitoring = false
            defer { state.monitors = [:] }
            return Array(state.monitors.values)
        }
        for monitor in monitors { monitor.stop() }
    }

    /// How a health check logs in: the first auth entry's credentials, the check's database.
    private func healthCheckSettings(for target: HostPort) -> TargetCheckSettings? {
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
        let login = BackendLogin(
            address: address, username: credential.username, password: credential.password,
            database: snapshot.1.database, initQuery: "", readMaxConnections: true,
            logger: checkLogger, generation: 0, tls: snapshot.3.context,
            serverHostname: BackendTLS.serverHostname(target.host), tlsMode: snapshot.3.mode)
        return TargetCheckSettings(login: login, intervalMS: snapshot.1.intervalMS, timeoutMS: snapshot.1.timeoutMS)
    }

    /// A check's result: the target group decides, under the lock, what changes; the promises,
    /// pools and log lines its action names are dealt with here, outside it.
    func targetChecked(_ target: HostPort, _ result: TargetProbeResult) {
        typealias Promises = [EventLoopPromise<Void>]
        let (action, refused, resumed, unresponsivePools, writer) = state.withLockedValue {
            state -> (TargetGroupStateMachine<HostPort>.TargetCheckedAction, Promises, Promises, [Pool], HostPort?) in
            let action = state.targetGroup.targetChecked(target, result, now: .now())
            if let change = action.writerChange {
                state.writerAddress = state.targetAddresses[change.new]
                    ?? (try? SocketAddress.makeAddressResolvingHost(change.new.host, port: change.new.port))
            }
            var pools: [Pool] = []
            if let unresponsive = action.unresponsive {
                if unresponsive.wasWriter { pools.append(pool) }
                if let readerPool = state.readerPools[target] { pools.append(readerPool) }
            }
            return (action, action.refuse.compactMap { state.writerWaiters.removeValue(forKey: $0) },
                    action.resume.compactMap { state.writerWaiters.removeValue(forKey: $0) }, pools, state.targetGroup.writer)
        }
        if let refusal = action.refusal {
            for waiter in refused { waiter.fail(NoWriter(reason: engine.connectionError(refusal.text))) }
        }
        if action.unresponsive?.newly == true {
            logger.warning("the database stopped answering health checks: closing its connections", metadata: [
                "concierge.target": "\(target)",
            ])
        }
        // Its backends would wait for ever for answers that do not come: closed, so that clients
        // mid-transaction get 08006 now (idle clients hold none).
        for unresponsive in unresponsivePools {
            unresponsive.retire()
            unresponsive.abortAll()
        }
        if let demoted = action.writerDemoted {
            // Its backends would run new transactions on a server that refuses writes: retired
            // (idle ones close now, leased ones when returned), so new transactions wait for a
            // writer. The writer change, if this check made one, retires them anyway.
            logger.warning("the writer is read-only now: its connections are closed as they are returned", metadata: [
                "concierge.target": "\(demoted)",
            ])
            if action.writerChange == nil { pool.retire() }
        }
        if let change = action.writerChange {
            logger.warning("writer changed: new backends go to the new writer", metadata: [
                "concierge.previous_writer": "\(change.old.map(\.description) ?? "none")",
                "concierge.writer": "\(change.new)",
            ])
            pool.retire()
            if let maxConnections = change.maxConnections {
                pool.updateLimits(Self.limits(for: configuration, maxConnections: maxConnections))
            }
        } else if action.writerBecameAvailable {
            logger.info("writer available", metadata: ["concierge.writer": "\(writer.map(\.description) ?? "")"])
        }
        if action.writerBecameUnavailable {
            logger.warning("no writer available: new transactions wait for one (up to the borrow timeout)", metadata: [
                "concierge.target": "\(target)",
            ])
        }
        for waiter in resumed { waiter.succeed(()) }
        applyReaderChanges(action.readers)
    }

    // MARK: READ_ONLY endpoints

    /// One pool per available reader: a reader that joins gets its pool (made once, then kept and
    /// resized); one that fails or is promoted retires its pool (idle backends close now, the
    /// others as they are returned).
    private func applyReaderChanges(_ changes: TargetGroupStateMachine<HostPort>.ReaderChanges) {
        guard !changes.activate.isEmpty || !changes.retire.isEmpty else { return }
        var created: [HostPort] = []
        var resized: [(Pool, PoolLimits)] = []
        let retired = state.withLockedValue { state -> [Pool] in
            for reader in changes.activate {
                let limits = Self.limits(for: state.configuration, maxConnections: reader.maxConnections)
                if let pool = state.readerPools[reader.target] {
                    resized.append((pool, limits))
                } else {
                    let target = reader.target
                    state.readerPools[target] = Pool(limits: limits, eventLoops: eventLoops) { [unowned self] id, key, eventLoop, pool in
                        self.metrics.databaseConnectionRequests.increment()
                        return self.connectToWriter(id: id, key: key, on: eventLoop, pool: pool, reader: target)
                    }
                    created.append(target)
                }
            }
            return changes.retire.compactMap { state.readerPools[$0] }
        }
        for pool in retired { pool.retire() }
        for (pool, limits) in resized { pool.updateLimits(limits) }
        for target in created {
            logger.info("reader available for read-only endpoints", metadata: ["concierge.target": "\(target)"])
        }
    }

    /// The pool a client of `endpoint` borrows from: the writer's, or for a READ_ONLY endpoint
    /// the least busy available reader's (nil: no reader).
    /// Inlinable (the engine's session calls it from its own module at every borrow): the
    /// writer's pool is returned without a call; only a READ_ONLY endpoint looks at the readers.
    @inlinable
    public func borrowPool(forEndpoint endpoint: Int) -> Pool? {
        guard endpoint < endpointRoles.count, endpointRoles[endpoint] == .readOnly else { return pool }
        return leastBusyReaderPool()
    }

    @usableFromInline
    func leastBusyReaderPool() -> Pool? {
        let candidates = state.withLockedValue { state in state.targetGroup.activeReaders.compactMap { state.readerPools[$0] } }
        return candidates.min { a, b in
            let x = a.totals, y = b.totals
            return (x.leased + x.waiting, x.total) < (y.leased + y.waiting, y.total)
        }
    }

    /// Every pool (the writer's and the readers'), for metrics and shutdown.
    var allPools: [Pool] {
        [pool] + state.withLockedValue { Array($0.readerPools.values) }
    }

    /// A backend open to `writer` failed to connect: until a health check says otherwise, new
    /// opens wait, and the check runs now.
    func writerSuspect(_ writer: HostPort) {
        let monitor = state.withLockedValue { state -> TargetMonitor<Engine, HostPort>? in
            state.targetGroup.writerSuspect(writer, now: .now())
            return state.monitors[writer]
        }
        monitor?.checkNow()
    }

    /// A backend connection to the writer broke while in use: check the writer now.
    public func backendConnectionLost() {
        let monitor = state.withLockedValue { state in state.targetGroup.writer.flatMap { state.monitors[$0] } }
        monitor?.checkNow()
    }

    // MARK: Opening backends (paced, waiting out a failover)

    /// Opens a backend to the writer. With no writer available (a failover), it waits for one
    /// until the borrow timeout; a failed connect marks the writer suspect and waits again.
    /// At most a few opens run at once, so a new writer is not hit by a reconnection storm.
    func openBackend(id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, pool: Pool)
        -> EventLoopFuture<Engine.Connection>
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
        id: ConnectionID, key: PoolKey, on eventLoop: any EventLoop, pool: Pool, began: NIODeadline,
        deadline: NIODeadline
    ) -> EventLoopFuture<Engine.Connection> {
        waitForWriter(on: eventLoop, began: began, until: deadline)
            .flatMap { self.acquireOpenSlot(on: eventLoop) }
            .flatMap {
                self.connectToWriter(id: id, key: key, on: eventLoop, pool: pool)
                    .always { _ in self.releaseOpenSlot() }
            }
            .flatMapError { error in
                // No writer (and no failover to wait out): the reason is final.
                if let refusal = error as? NoWriter { return eventLoop.makeFailedFuture(refusal.reason) }
                // A failed connect made the writer suspect: the next attempt waits for a health
                // check (or fails with its reason), so this cannot spin.
                switch BackendOpenRetry.decide(after: self.engine.openFailure(error), now: .now(), deadline: deadline) {
                case .giveUp:
                    return eventLoop.makeFailedFuture(error)
                case .retryNow:
                    return self.attemptOpen(id: id, key: key, on: eventLoop, pool: pool, began: began, deadline: deadline)
                case .retryAfter(let pause):
                    return eventLoop.scheduleTask(in: pause) {}.futureResult.flatMap {
                        self.attemptOpen(id: id, key: key, on: eventLoop, pool: pool, began: began, deadline: deadline)
                    }
                }
            }
    }

    /// Proceeds at once while the writer is available; otherwise the target group decides: wait
    /// for a writer (its promise kept here under the waiter's id, failed at `deadline`), or fail.
    private func waitForWriter(on eventLoop: any EventLoop, began: NIODeadline, until deadline: NIODeadline) -> EventLoopFuture<Void> {
        if state.withLockedValue({ $0.targetGroup.writerAvailable }) { return eventLoop.makeSucceededVoidFuture() }
        let promise = eventLoop.makePromise(of: Void.self)
        let decision = state.withLockedValue { state in
            let decision = state.targetGroup.openRequested(began: began)
            if case .wait(let id) = decision { state.writerWaiters[id] = promise }
            return decision
        }
        switch decision {
        case .proceed:
            promise.succeed(())
        case .fail(let reason):
            promise.fail(NoWriter(reason: engine.connectionError(reason.text)))
        case .wait(let waiter):
            let timeout = eventLoop.scheduleTask(deadline: deadline) { [weak self] in
                guard let self else { return }
                let expired = self.state.withLockedValue { state -> (EventLoopPromise<Void>, String)? in
                    guard let reason = state.targetGroup.waiterTimedOut(waiter),
                          let promise = state.writerWaiters.removeValue(forKey: waiter)
                    else { return nil }
                    return (promise, reason.text)
                }
                if let (promise, reason) = expired { promise.fail(NoWriter(reason: self.engine.connectionError(reason))) }
            }
            promise.futureResult.whenComplete { _ in timeout.cancel() }
        }
        return promise.futureResult
    }

    /// How many backend opens may run at once.
    var maxConcurrentOpens: Int { TargetGroupStateMachine<HostPort>.openLimit(poolMaxConnections: pool.limits.maxConnections) }

    private func acquireOpenSlot(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let maxConnections = pool.limits.maxConnections
        let promise = eventLoop.makePromise(of: Void.self)
        let granted = state.withLockedValue { state -> Bool in
            switch state.targetGroup.openSlotRequested(poolMaxConnections: maxConnections) {
            case .granted:
                return true
            case .queued(let id):
                state.openSlotWaiters[id] = promise
                return false
            }
        }
        if granted { promise.succeed(()) }
        return promise.futureResult
    }

    private func releaseOpenSlot() {
        // The slot passes on to the oldest queued open, if any.
        let next = state.withLockedValue { state in
            state.targetGroup.openFinished().flatMap { state.openSlotWaiters.removeValue(forKey: $0) }
        }
        next?.succeed(())
    }

    /// The role the admin API shows for a target.
    func roleName(of target: HostPort) -> String {
        state.withLockedValue { $0.targetGroup.roleName(of: target) }
    }
}
/// Opening a backend gave up waiting for a writer (its reason is what the client sees).
struct NoWriter: Error {
    /// The engine's error (`DatabaseEngine.connectionError`).
    var reason: any Error
}

struct BackendTLSSnapshot: @unchecked Sendable {
    var context: NIOSSLContext?
    var mode: String
}
