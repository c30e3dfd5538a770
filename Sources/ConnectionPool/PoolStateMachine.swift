/// The backend pool of one proxy, as a pure state machine.
///
/// The runtime owns one machine (behind a lock), feeds it events with the current instant and runs
/// the returned actions in order. The machine does no I/O and never reads a clock.
///
/// Rules (see each event for details):
/// - `stats.totals.total` (connecting + idle + leased, all keys) never exceeds `maxConnections`,
///   except after the cap is lowered below the connections in use: the surplus is closed as it is
///   released (idle surplus right away) and nothing is created until the total is below the cap.
/// - Waiters are served in FIFO order across the whole queue, but a connection of key K only serves
///   waiters of key K. A connection being opened for key K "covers" one waiter of K: the oldest
///   `connecting(K)` waiters of K are covered, the others are uncovered. The machine keeps two
///   invariants after every event: no uncovered waiter while total < cap, and no uncovered waiter
///   while an idle connection exists (it would be stolen for it).
/// - Each request gets exactly one outcome (`lease` or `failRequest`). Unknown ids are ignored.
public struct PoolStateMachine: Sendable {
    // MARK: State

    private enum Lifecycle: Sendable {
        case running
        case shuttingDown
        case drained
    }

    private enum ConnectionState: Sendable {
        case connecting
        /// `order` identifies this idle period (for the lazy LRU queue) and orders idle connections.
        case idle(since: PoolInstant, order: UInt64)
        case leased(RequestID)
    }

    private struct Connection: Sendable {
        var key: PoolKey
        var eventLoopIndex: Int
        var state: ConnectionState
    }

    private struct Waiter: Sendable {
        var id: RequestID
        var key: PoolKey
        var eventLoopIndex: Int
        var enqueuedAt: PoolInstant
        var order: UInt64
    }

    private struct IdleEntry: Sendable {
        var id: ConnectionID
        var order: UInt64
    }

    public private(set) var limits: PoolLimits
    private var lifecycle: Lifecycle = .running
    private var nextConnectionID = 0
    /// Shared sequence for waiters (FIFO) and idle periods (LRU/MRU).
    private var nextOrder: UInt64 = 0

    private var connections: [ConnectionID: Connection] = [:]
    /// key → event loop → idle connections, most recently parked last.
    private var idleStacks: [PoolKey: [Int: [ConnectionID]]] = [:]
    /// All idle periods, oldest first; entries whose connection left that idle period are stale and
    /// skipped lazily (compacted when they outnumber live ones).
    private var idleLRU = FIFOQueue<IdleEntry>()

    /// key → waiters of that key, oldest first (deadlines = enqueuedAt + borrowTimeout, so each queue
    /// is also sorted by deadline).
    private var waiters: [PoolKey: FIFOQueue<Waiter>] = [:]
    private var waiterKeys: [RequestID: PoolKey] = [:]

    private var perKey: [PoolKey: PoolCounts] = [:]
    private var totals = PoolCounts()

    /// The earliest instant the runtime's timer is armed for (nil: none armed).
    public private(set) var scheduledTimer: PoolInstant?

    public init(limits: PoolLimits) {
        self.limits = Self.sanitized(limits)
    }

    // MARK: Queries

    public var stats: PoolStats {
        PoolStats(totals: totals, perKey: perKey, limits: limits, isShuttingDown: lifecycle != .running)
    }

    public var waitingCount: Int { totals.waiting }
    public var totalConnections: Int { totals.total }
    public var isShuttingDown: Bool { lifecycle != .running }
    /// True once `shutdown()` was called and every connection is gone.
    public var isDrained: Bool { lifecycle == .drained }

    public func connection(_ id: ConnectionID) -> PoolConnectionInfo? {
        guard let connection = connections[id] else { return nil }
        let state: PoolConnectionInfo.State
        switch connection.state {
        case .connecting: state = .connecting
        case .idle(let since, _): state = .idle(since: since)
        case .leased(let request): state = .leased(to: request)
        }
        return PoolConnectionInfo(id: id, key: connection.key, eventLoopIndex: connection.eventLoopIndex, state: state)
    }

    public func isWaiting(_ request: RequestID) -> Bool { waiterKeys[request] != nil }

    // MARK: Events

    /// A client needs a backend of `key`.
    /// Idle of that key → lease (same event loop first, then most recently used); else below the
    /// cap → open one (the request waits for it); else an idle connection of another key → close the
    /// least recently used one and open one for this key; else wait in FIFO order (or fail with
    /// `.timeout` right away when `borrowTimeout` is zero). A duplicate id of a waiting request is
    /// ignored. After `shutdown()` → `.shuttingDown`.
    public mutating func borrow(request: RequestID, key: PoolKey, eventLoopIndex: Int, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        switch lifecycle {
        case .running:
            break
        case .shuttingDown, .drained:
            actions.append(.failRequest(request, .shuttingDown))
            return actions
        }
        guard waiterKeys[request] == nil else { return actions }

        if let id = takeIdle(key: key, preferring: eventLoopIndex) {
            lease(id, to: request, actions: &actions)
            return actions
        }
        // Invariants: below the cap or with any idle connection, no older waiter is uncovered, so
        // the connection opened now covers exactly this request.
        if totals.total < limits.maxConnections {
            enqueue(request, key: key, eventLoopIndex: eventLoopIndex, now: now)
            createConnection(key: key, eventLoopIndex: eventLoopIndex, actions: &actions)
        } else if totals.total == limits.maxConnections, let victim = oldestIdle() {
            close(victim.id, actions: &actions)
            enqueue(request, key: key, eventLoopIndex: eventLoopIndex, now: now)
            createConnection(key: key, eventLoopIndex: eventLoopIndex, actions: &actions)
        } else if borrowTimeoutNanoseconds == 0 {
            actions.append(.failRequest(request, .timeout))
            return actions
        } else {
            enqueue(request, key: key, eventLoopIndex: eventLoopIndex, now: now)
        }
        armTimer(waiterDeadline(enqueuedAt: now), actions: &actions)
        return actions
    }

    /// A connection requested with `createConnection` is ready (authenticated, init queries done).
    /// It goes to the oldest waiter of its key, else serves an uncovered waiter of another key (close
    /// + create), else parks idle. Closed if the pool is over its cap or shutting down.
    public mutating func connectionEstablished(_ id: ConnectionID, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id], case .connecting = connection.state else { return actions }
        connectionAvailable(id, now: now, actions: &actions)
        return actions
    }

    /// Opening a connection failed. Frees its slot and fails the oldest waiter of its key that is not
    /// covered by another in-flight creation (one failure per failed attempt, so a broken database
    /// fails waiters rather than hanging them). Other waiters may trigger new creations within the
    /// cap. For a connection that was already established this is the same as `connectionClosed`.
    public mutating func connectionFailed(_ id: ConnectionID, error: ConnectionFailure, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id] else { return actions }
        switch connection.state {
        case .connecting:
            forget(id)
            connectingEnded(key: connection.key, error: error, now: now, actions: &actions)
        case .idle, .leased:
            forget(id)
            afterSlotFreed(now: now, actions: &actions)
        }
        return actions
    }

    /// The runtime returns a leased connection. `reusable`: clean and idle (ReadyForQuery `I`), it may
    /// serve others; otherwise it is closed. A reusable one is closed if the pool is over its cap
    /// (lowered cap) or shutting down; else it goes to the oldest waiter of its key; else, if
    /// uncovered waiters of other keys exist (so the pool is at its cap), it is closed and one is
    /// opened for the oldest of them; else it parks idle.
    public mutating func release(_ id: ConnectionID, reusable: Bool, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id], case .leased = connection.state else { return actions }
        if reusable {
            connectionAvailable(id, now: now, actions: &actions)
        } else {
            close(id, actions: &actions)
            afterSlotFreed(now: now, actions: &actions)
        }
        return actions
    }

    /// The database or the network closed a connection (in any state). Frees its slot and serves
    /// waiters. A connection closed while connecting counts as a failed attempt.
    public mutating func connectionClosed(_ id: ConnectionID, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id] else { return actions }
        forget(id)
        switch connection.state {
        case .connecting:
            let failure = ConnectionFailure(message: "connection closed during startup")
            connectingEnded(key: connection.key, error: failure, now: now, actions: &actions)
        case .idle, .leased:
            afterSlotFreed(now: now, actions: &actions)
        }
        return actions
    }

    /// The waiting client went away: its request is failed with `.cancelled`. Unknown (e.g. already
    /// leased) requests are ignored.
    public mutating func cancel(request: RequestID, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let key = waiterKeys[request],
              let index = waiters[key]?.firstIndex(where: { $0.id == request })
        else { return actions }
        let waiter = removeWaiter(key: key, at: index)
        actions.append(.failRequest(waiter.id, .cancelled))
        // Fewer waiters only improves coverage: nothing else to do.
        return actions
    }

    /// The timer fired (calling it at any other time is harmless). Fails waiters whose deadline
    /// passed with `.timeout` (oldest first), closes idle connections beyond `maxIdleConnections` that
    /// have been idle for at least `idleTimeout` (oldest idle first), and arms the next timer.
    public mutating func tick(now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        if let armed = scheduledTimer, armed <= now { scheduledTimer = nil }
        guard lifecycle == .running else { return actions }
        expireWaiters(now: now, actions: &actions)
        rebalance(now: now, actions: &actions)
        trimIdle(now: now, actions: &actions)
        armTimer(nextDeadline(), actions: &actions)
        return actions
    }

    /// New limits. A lower cap never touches leased or connecting connections: idle surplus is
    /// closed now, the rest as it is released. A higher cap serves waiting requests. A new
    /// `borrowTimeout` applies to requests already waiting (deadline = enqueued + timeout); with zero,
    /// waiters not covered by a creation fail now with `.timeout`.
    public mutating func updateLimits(_ newLimits: PoolLimits, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        limits = Self.sanitized(newLimits)
        guard lifecycle == .running else { return actions }
        expireWaiters(now: now, actions: &actions)
        rebalance(now: now, actions: &actions)
        trimIdle(now: now, actions: &actions)
        armTimer(nextDeadline(), actions: &actions)
        return actions
    }

    /// Closes idle connections, fails every waiter with `.shuttingDown` and makes later borrows fail
    /// the same way. Connecting and leased connections are closed when they are established or
    /// released. `.shutdownComplete` is emitted (once) when no connection is left.
    public mutating func shutdown() -> PoolActions {
        var actions = PoolActions()
        guard lifecycle == .running else { return actions }
        lifecycle = .shuttingDown

        var failed: [Waiter] = []
        failed.reserveCapacity(totals.waiting)
        for key in Array(waiters.keys) {
            while let waiter = popFirstWaiter(key: key) { failed.append(waiter) }
        }
        failed.sort { $0.order < $1.order }
        for waiter in failed { actions.append(.failRequest(waiter.id, .shuttingDown)) }

        while let entry = oldestIdle() { close(entry.id, actions: &actions) }
        checkDrained(actions: &actions)
        return actions
    }

    // MARK: Transitions

    /// `id` (connecting or leased) is ready to serve.
    private mutating func connectionAvailable(_ id: ConnectionID, now: PoolInstant, actions: inout PoolActions) {
        guard let connection = connections[id] else { return }
        switch lifecycle {
        case .running:
            break
        case .shuttingDown, .drained:
            close(id, actions: &actions)
            checkDrained(actions: &actions)
            return
        }
        if totals.total > limits.maxConnections {
            close(id, actions: &actions)
            rebalance(now: now, actions: &actions)
            return
        }
        if let waiter = popFirstWaiter(key: connection.key) {
            lease(id, to: waiter.id, actions: &actions)
            return
        }
        if totals.waiting > 0, oldestUncoveredWaiter() != nil {
            close(id, actions: &actions)
            rebalance(now: now, actions: &actions)
            return
        }
        park(id, now: now)
        trimIdle(now: now, actions: &actions)
        armTimer(nextIdleDeadline(), actions: &actions)
    }

    /// A connecting connection of `key` is gone (already forgotten).
    private mutating func connectingEnded(key: PoolKey, error: ConnectionFailure, now: PoolInstant, actions: inout PoolActions) {
        guard lifecycle == .running else {
            checkDrained(actions: &actions)
            return
        }
        let covered = perKey[key]?.connecting ?? 0
        if let queue = waiters[key], queue.count > covered {
            let waiter = removeWaiter(key: key, at: covered)
            actions.append(.failRequest(waiter.id, .connectionFailed(error)))
        }
        rebalance(now: now, actions: &actions)
    }

    private mutating func afterSlotFreed(now: PoolInstant, actions: inout PoolActions) {
        switch lifecycle {
        case .running: rebalance(now: now, actions: &actions)
        case .shuttingDown, .drained: checkDrained(actions: &actions)
        }
    }

    /// Restores the invariants: closes idle surplus over the cap, then opens (or steals idle
    /// connections of other keys) for uncovered waiters, oldest first, within the cap. With a zero
    /// borrow timeout, uncovered waiters that still cannot be served fail with `.timeout`.
    private mutating func rebalance(now: PoolInstant, actions: inout PoolActions) {
        guard lifecycle == .running else { return }
        while totals.total > limits.maxConnections, let entry = oldestIdle() {
            close(entry.id, actions: &actions)
        }
        guard totals.waiting > 0 else { return }
        while let waiter = oldestUncoveredWaiter() {
            if let id = takeIdle(key: waiter.key, preferring: waiter.eventLoopIndex) {
                // Defensive (the invariants exclude it): serve the oldest waiter of that key.
                if let first = popFirstWaiter(key: waiter.key) {
                    lease(id, to: first.id, actions: &actions)
                }
            } else if totals.total < limits.maxConnections {
                createConnection(key: waiter.key, eventLoopIndex: waiter.eventLoopIndex, actions: &actions)
            } else if totals.total == limits.maxConnections, let victim = oldestIdle() {
                close(victim.id, actions: &actions)
                createConnection(key: waiter.key, eventLoopIndex: waiter.eventLoopIndex, actions: &actions)
            } else {
                break
            }
        }
        if borrowTimeoutNanoseconds == 0 {
            failUncoveredWaiters(with: .timeout, actions: &actions)
        }
    }

    private mutating func expireWaiters(now: PoolInstant, actions: inout PoolActions) {
        let timeout = borrowTimeoutNanoseconds
        guard timeout > 0, totals.waiting > 0 else { return }
        var expired: [Waiter] = []
        for key in Array(waiters.keys) {
            while let first = waiters[key]?.first, first.enqueuedAt.advanced(byNanoseconds: timeout) <= now {
                expired.append(popFirstWaiter(key: key)!)
            }
        }
        expired.sort { $0.order < $1.order }
        for waiter in expired { actions.append(.failRequest(waiter.id, .timeout)) }
    }

    private mutating func failUncoveredWaiters(with error: PoolError, actions: inout PoolActions) {
        var failed: [Waiter] = []
        for key in Array(waiters.keys) {
            let covered = perKey[key]?.connecting ?? 0
            while let queue = waiters[key], queue.count > covered {
                failed.append(removeWaiter(key: key, at: queue.count - 1))
            }
        }
        failed.sort { $0.order < $1.order }
        for waiter in failed { actions.append(.failRequest(waiter.id, error)) }
    }

    /// Closes idle connections beyond `maxIdleConnections` idle for at least `idleTimeout`.
    private mutating func trimIdle(now: PoolInstant, actions: inout PoolActions) {
        let timeout = limits.idleTimeout.poolNanoseconds
        while totals.idle > limits.maxIdleConnections, let entry = oldestIdle(),
              case .idle(let since, _)? = connections[entry.id]?.state,
              since.advanced(byNanoseconds: timeout) <= now
        {
            close(entry.id, actions: &actions)
        }
    }

    // MARK: Timer

    private var borrowTimeoutNanoseconds: UInt64 { limits.borrowTimeout.poolNanoseconds }

    private func waiterDeadline(enqueuedAt: PoolInstant) -> PoolInstant? {
        let timeout = borrowTimeoutNanoseconds
        return timeout == 0 ? nil : enqueuedAt.advanced(byNanoseconds: timeout)
    }

    private mutating func nextIdleDeadline() -> PoolInstant? {
        guard totals.idle > limits.maxIdleConnections, let entry = oldestIdle(),
              case .idle(let since, _)? = connections[entry.id]?.state
        else { return nil }
        return since + limits.idleTimeout
    }

    private mutating func nextDeadline() -> PoolInstant? {
        var next = nextIdleDeadline()
        if borrowTimeoutNanoseconds > 0 {
            for queue in waiters.values {
                if let first = queue.first, let deadline = waiterDeadline(enqueuedAt: first.enqueuedAt),
                   next.map({ deadline < $0 }) ?? true
                {
                    next = deadline
                }
            }
        }
        return next
    }

    /// Arms the runtime's timer if `deadline` is earlier than the armed one.
    private mutating func armTimer(_ deadline: PoolInstant?, actions: inout PoolActions) {
        guard let deadline, deadline != .distantFuture else { return }
        if let armed = scheduledTimer, armed <= deadline { return }
        scheduledTimer = deadline
        actions.append(.scheduleTimer(at: deadline))
    }

    // MARK: Connections

    private mutating func createConnection(key: PoolKey, eventLoopIndex: Int, actions: inout PoolActions) {
        let id = ConnectionID(nextConnectionID)
        nextConnectionID += 1
        connections[id] = Connection(key: key, eventLoopIndex: eventLoopIndex, state: .connecting)
        perKey[key, default: PoolCounts()].connecting += 1
        totals.connecting += 1
        actions.append(.createConnection(id, key, eventLoopIndex: eventLoopIndex))
    }

    private mutating func lease(_ id: ConnectionID, to request: RequestID, actions: inout PoolActions) {
        guard var connection = connections[id] else { return }
        leaveState(of: id, connection)
        connection.state = .leased(request)
        connections[id] = connection
        perKey[connection.key, default: PoolCounts()].leased += 1
        totals.leased += 1
        actions.append(.lease(id, to: request))
    }

    private mutating func park(_ id: ConnectionID, now: PoolInstant) {
        guard var connection = connections[id] else { return }
        leaveState(of: id, connection)
        let order = nextOrder
        nextOrder += 1
        connection.state = .idle(since: now, order: order)
        connections[id] = connection
        perKey[connection.key, default: PoolCounts()].idle += 1
        totals.idle += 1
        idleStacks[connection.key, default: [:]][connection.eventLoopIndex, default: []].append(id)
        idleLRU.append(IdleEntry(id: id, order: order))
    }

    private mutating func close(_ id: ConnectionID, actions: inout PoolActions) {
        guard connections[id] != nil else { return }
        forget(id)
        actions.append(.closeConnection(id))
    }

    /// Removes `id` from every structure and count.
    private mutating func forget(_ id: ConnectionID) {
        guard let connection = connections.removeValue(forKey: id) else { return }
        leaveState(of: id, connection)
    }

    /// Undoes the counts (and idle indexes) of the connection's current state.
    private mutating func leaveState(of id: ConnectionID, _ connection: Connection) {
        let key = connection.key
        switch connection.state {
        case .connecting:
            perKey[key]?.connecting -= 1
            totals.connecting -= 1
        case .idle:
            perKey[key]?.idle -= 1
            totals.idle -= 1
            removeFromIdleStacks(id, key: key, eventLoopIndex: connection.eventLoopIndex)
            compactIdleLRUIfNeeded()
        case .leased:
            perKey[key]?.leased -= 1
            totals.leased -= 1
        }
        if perKey[key]?.isEmpty == true { perKey[key] = nil }
    }

    private mutating func removeFromIdleStacks(_ id: ConnectionID, key: PoolKey, eventLoopIndex: Int) {
        guard var byLoop = idleStacks[key], var stack = byLoop[eventLoopIndex],
              let index = stack.lastIndex(of: id)
        else { return }
        // Drop the outer references first so the arrays are uniquely referenced (no copy).
        idleStacks[key] = nil
        byLoop[eventLoopIndex] = nil
        stack.remove(at: index)
        byLoop[eventLoopIndex] = stack.isEmpty ? nil : stack
        if !byLoop.isEmpty { idleStacks[key] = byLoop }
    }

    /// The idle connection of `key` to lease: on `eventLoopIndex` if any, else the most recently used.
    /// `lease` then removes it from the idle indexes.
    private func takeIdle(key: PoolKey, preferring eventLoopIndex: Int) -> ConnectionID? {
        guard let byLoop = idleStacks[key] else { return nil }
        var chosen: ConnectionID?
        if let id = byLoop[eventLoopIndex]?.last {
            chosen = id
        } else {
            var bestOrder: UInt64 = 0
            for stack in byLoop.values {
                guard let id = stack.last, case .idle(_, let order)? = connections[id]?.state else { continue }
                if chosen == nil || order > bestOrder {
                    chosen = id
                    bestOrder = order
                }
            }
        }
        return chosen
    }

    /// The least recently parked idle connection (any key), skipping stale LRU entries.
    private mutating func oldestIdle() -> IdleEntry? {
        while let entry = idleLRU.first {
            if case .idle(_, let order)? = connections[entry.id]?.state, order == entry.order {
                return entry
            }
            _ = idleLRU.popFirst()
        }
        return nil
    }

    private mutating func compactIdleLRUIfNeeded() {
        guard idleLRU.count > 2 * totals.idle + 32 else { return }
        let connections = self.connections
        idleLRU.filterInPlace { entry in
            if case .idle(_, let order)? = connections[entry.id]?.state { return order == entry.order }
            return false
        }
    }

    private mutating func checkDrained(actions: inout PoolActions) {
        guard lifecycle == .shuttingDown, connections.isEmpty else { return }
        lifecycle = .drained
        actions.append(.shutdownComplete)
    }

    // MARK: Waiters

    private mutating func enqueue(_ request: RequestID, key: PoolKey, eventLoopIndex: Int, now: PoolInstant) {
        let waiter = Waiter(id: request, key: key, eventLoopIndex: eventLoopIndex, enqueuedAt: now, order: nextOrder)
        nextOrder += 1
        waiters[key, default: FIFOQueue()].append(waiter)
        waiterKeys[request] = key
        perKey[key, default: PoolCounts()].waiting += 1
        totals.waiting += 1
    }

    private mutating func popFirstWaiter(key: PoolKey) -> Waiter? {
        guard let queue = waiters[key], !queue.isEmpty else { return nil }
        return removeWaiter(key: key, at: 0)
    }

    private mutating func removeWaiter(key: PoolKey, at index: Int) -> Waiter {
        var queue = waiters.removeValue(forKey: key)!  // unique while mutated
        let waiter = index == 0 ? queue.popFirst()! : queue.remove(at: index)
        if !queue.isEmpty { waiters[key] = queue }
        waiterKeys[waiter.id] = nil
        perKey[key]?.waiting -= 1
        totals.waiting -= 1
        if perKey[key]?.isEmpty == true { perKey[key] = nil }
        return waiter
    }

    /// The oldest waiter (all keys) not covered by an in-flight creation of its key.
    private func oldestUncoveredWaiter() -> Waiter? {
        var oldest: Waiter?
        for (key, queue) in waiters {
            let covered = perKey[key]?.connecting ?? 0
            guard queue.count > covered else { continue }
            let candidate = queue[covered]
            if oldest.map({ candidate.order < $0.order }) ?? true { oldest = candidate }
        }
        return oldest
    }

    private static func sanitized(_ limits: PoolLimits) -> PoolLimits {
        var limits = limits
        limits.maxConnections = max(0, limits.maxConnections)
        limits.maxIdleConnections = max(0, limits.maxIdleConnections)
        return limits
    }
}
