/// The backend pool of one proxy, as a pure state machine.
///
/// The runtime owns one machine (behind a lock), feeds it events with the current instant and runs
/// the returned actions in order. The machine does no I/O and never reads a clock.
///
/// Rules (see each event for details):
/// - `stats.totals.total` (connecting + idle + leased + closing, all keys) never exceeds
///   `maxConnections`, except after the cap is lowered below the connections in use: the surplus is
///   closed as it is released (idle surplus right away) and nothing is created until the total is
///   below the cap.
/// - A connection the machine closes keeps its slot until the runtime reports it gone
///   (`connectionClosed`): the database ends its session only then, and an open started earlier
///   would give it one session more than the cap. An open that needs that slot is decided at once
///   (it covers its waiter) but started (`createConnection`) only then. Closing connections are
///   never leased.
/// - A connection of key K only serves waiters of key K. It goes to the oldest waiter of K on the
///   connection's event loop (no cross-thread hand-off), unless the oldest waiter of K arrived
///   `affinityWindow` or more before that one (then to the oldest), so no waiter is overtaken by
///   one that arrived a window or more after it; with a zero window, strict FIFO. Freed slots go to the oldest uncovered waiter (all keys).
///   A connection being opened for key K "covers" one waiter of K: the oldest `connecting(K)`
///   waiters of K are covered, the others are uncovered. The machine keeps two invariants after
///   every event: no uncovered waiter while total < cap, and no uncovered waiter while the total is
///   at the cap and an idle connection (it would be stolen for it) or a closing one whose slot is
///   not yet promised exists.
/// - Cost per event: O(1) for borrow, release, establish and cancel (plus the number of keys when a
///   slot is freed): one hash lookup of the key per borrow, of the connection per release; keys'
///   records are reached by slot, and waiters live in intrusive doubly linked lists.
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
        /// Asked to close; forgotten when the runtime reports it closed. `successor`: the open its
        /// slot is promised to (that open is counted, as connecting, instead of this one); nil
        /// while the slot is its own (counted as closing, listed in `freeClosing`).
        case closing(successor: ConnectionID?)
        /// An open waiting for the slot of closing connection `freedBy`: counted as connecting (it
        /// covers a waiter), started when that one is reported closed. The runtime does not know
        /// its id until then, so events naming it are ignored.
        case awaitingSlot(freedBy: ConnectionID)
    }

    private struct Connection: Sendable {
        var key: PoolKey
        /// Its key's record. Stale only for a closing connection whose slot went to a successor
        /// (it counts for nothing, so its key may have been dropped): never read for those.
        var keySlot: KeySlot
        var eventLoopIndex: Int
        var state: ConnectionState
    }

    /// Where a waiter lives in `waiterSlots`. Links between waiters are slots, not request ids,
    /// so walking and relinking the lists costs array accesses instead of hash lookups.
    private typealias Slot = Int

    /// Where a key's record lives in `keyRecords`. Connections and waiters carry their key's
    /// slot, so that releasing a connection and serving a waiter reach the key's counts, waiters
    /// and idle connections by index: hashing a key and probing for it cost about 80
    /// instructions a time, and the path took a dozen lookups per transaction.
    private typealias KeySlot = Int

    private struct Waiter: Sendable {
        var id: RequestID
        var keySlot: KeySlot
        var eventLoopIndex: Int
        var enqueuedAt: PoolInstant
        var order: UInt64
        /// Neighbours among the waiters of `key`, oldest first.
        var previousOfKey: Slot?
        var nextOfKey: Slot?
        /// Neighbours among the waiters of `key` on `eventLoopIndex`, oldest first.
        var previousOnLoop: Slot?
        var nextOnLoop: Slot?
    }

    /// Ends of an intrusive list of waiters (links live in `Waiter`).
    private struct WaiterList: Sendable {
        var head: Slot?
        var tail: Slot?
    }

    /// The waiters of one key.
    private struct KeyWaiters: Sendable {
        /// All of them, oldest first (deadlines = enqueuedAt + borrowTimeout, so also by deadline).
        var all = WaiterList()
        /// Per event loop (indexed by loop), oldest first; empty lists have a nil head.
        var byLoop: [WaiterList] = []
        /// The waiter at index `connecting(key)` of `all`, i.e. the oldest one not covered by an
        /// in-flight creation; nil when every waiter is covered.
        var firstUncovered: Slot?
    }

    /// Everything the pool keeps per key while the key has connections or waiters.
    private struct KeyRecord: Sendable {
        /// nil: the slot is free.
        var key: PoolKey?
        var counts = PoolCounts()
        var waiters = KeyWaiters()
        /// Idle connections by event loop (indexed by loop), most recently parked last.
        var idle: [[ConnectionID]] = []
    }

    private struct IdleEntry: Sendable {
        var id: ConnectionID
        var order: UInt64
    }

    public private(set) var limits: PoolLimits {
        // Converted once: `Duration.components` multiplies 128-bit integers, and the borrow
        // path read the timeout three times per transaction (2% of its instructions).
        didSet {
            borrowTimeoutNanoseconds = limits.borrowTimeout.poolNanoseconds
            affinityWindowNanoseconds = limits.affinityWindow.poolNanoseconds
        }
    }
    private var borrowTimeoutNanoseconds: UInt64
    /// Read each time a connection is released to a waiter.
    private var affinityWindowNanoseconds: UInt64
    private var lifecycle: Lifecycle = .running
    private var nextConnectionID = 0
    /// Shared sequence for waiters (FIFO) and idle periods (LRU/MRU).
    private var nextOrder: UInt64 = 0

    private var connections: [ConnectionID: Connection] = [:]
    /// Closing connections whose slot is not promised to an open, oldest close first.
    private var freeClosing: [ConnectionID] = []
    /// Keys with connections or waiters, by slot (see `KeySlot`); freed slots are reused. A
    /// record stays, its arrays possibly empty, while its counts are not all zero, so the
    /// per-transaction path does not allocate. Changed in place (`keyRecords[slot].x`): a copy
    /// of a record would make its arrays copy themselves at their next change.
    private var keyRecords: [KeyRecord] = []
    private var freeKeySlots: [KeySlot] = []
    /// One lookup per borrow; the rest of the path goes by slot.
    private var keySlotByKey: [PoolKey: KeySlot] = [:]
    /// All idle periods, oldest first; entries whose connection left that idle period are stale and
    /// skipped lazily (compacted when they outnumber live ones).
    private var idleLRU = FIFOQueue<IdleEntry>()

    /// Every waiting request (with its list links), by slot; freed slots are reused.
    private var waiterSlots: [Waiter] = []
    private var freeWaiterSlots: [Slot] = []
    /// The slot of each waiting request: one hash lookup when it arrives, one when it leaves.
    private var waiterSlotByRequest: [RequestID: Slot] = [:]
    private var totals = PoolCounts()

    /// The earliest instant the runtime's timer is armed for (nil: none armed).
    public private(set) var scheduledTimer: PoolInstant?

    public init(limits: PoolLimits) {
        self.limits = Self.sanitized(limits)
        self.borrowTimeoutNanoseconds = self.limits.borrowTimeout.poolNanoseconds
        self.affinityWindowNanoseconds = self.limits.affinityWindow.poolNanoseconds
    }

    // MARK: Queries

    public var stats: PoolStats {
        var perKey: [PoolKey: PoolCounts] = [:]
        for (key, slot) in keySlotByKey { perKey[key] = keyRecords[slot].counts }
        return PoolStats(totals: totals, perKey: perKey, limits: limits, isShuttingDown: lifecycle != .running)
    }

    /// The counts of all keys together (`stats.totals` without building `stats.perKey`).
    public var totalCounts: PoolCounts { totals }

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
        case .closing: state = .closing
        case .awaitingSlot(let closing): state = .awaitingSlot(freedBy: closing)
        }
        return PoolConnectionInfo(id: id, key: connection.key, eventLoopIndex: connection.eventLoopIndex, state: state)
    }

    public func isWaiting(_ request: RequestID) -> Bool { waiterSlotByRequest[request] != nil }

    // MARK: Events

    /// A client needs a backend of `key`.
    /// Idle of that key → lease (same event loop first, then most recently used); else below the
    /// cap → open one (the request waits for it); else at the cap, a connection already closing
    /// whose slot is not promised, or else the least recently used idle connection of another key
    /// (closed now) → an open for this key, started when that connection is reported closed; else
    /// wait (or fail with `.timeout` right away when `borrowTimeout` is zero). A duplicate id of a
    /// waiting request is ignored. After `shutdown()` → `.shuttingDown`.
    public mutating func borrow(request: RequestID, key: PoolKey, eventLoopIndex: Int, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        switch lifecycle {
        case .running:
            break
        case .shuttingDown, .drained:
            actions.append(.failRequest(request, .shuttingDown))
            return actions
        }
        guard waiterSlotByRequest[request] == nil else { return actions }

        let known = keySlotByKey[key]
        if let known, let id = takeIdle(keySlot: known, preferring: eventLoopIndex) {
            lease(id, to: request, actions: &actions)
            return actions
        }
        // Invariants: when a slot can be had, no older waiter is uncovered, so the connection
        // opened now covers exactly this request.
        if canOpen {
            let keySlot = known ?? addKey(key)
            enqueue(request, keySlot: keySlot, eventLoopIndex: eventLoopIndex, now: now)
            openConnection(keySlot: keySlot, eventLoopIndex: eventLoopIndex, actions: &actions)
        } else if borrowTimeoutNanoseconds == 0 {
            actions.append(.failRequest(request, .timeout))
            return actions
        } else {
            enqueue(request, keySlot: known ?? addKey(key), eventLoopIndex: eventLoopIndex, now: now)
        }
        armTimer(waiterDeadline(enqueuedAt: now), actions: &actions)
        return actions
    }

    /// A connection requested with `createConnection` is ready (authenticated, init queries done).
    /// It goes to a waiter of its key (which one: see `PoolLimits.affinityWindow`), else serves an
    /// uncovered waiter of another key (close + create), else parks idle. Closed if the pool is over
    /// its cap or shutting down.
    public mutating func connectionEstablished(_ id: ConnectionID, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id], case .connecting = connection.state else { return actions }
        connectionAvailable(id, connection, now: now, actions: &actions)
        return actions
    }

    /// Opening a connection failed. Frees its slot and fails the oldest waiter of its key that is not
    /// covered by another in-flight creation (one failure per failed attempt, so a broken database
    /// fails waiters rather than hanging them). Other waiters may trigger new creations within the
    /// cap. For a connection that was already established this is the same as `connectionClosed`.
    public mutating func connectionFailed(_ id: ConnectionID, error: ConnectionFailure, now: PoolInstant) -> PoolActions {
        guard let connection = connections[id] else { return PoolActions() }
        switch connection.state {
        case .connecting:
            var actions = PoolActions()
            forget(id)
            connectingEnded(keySlot: connection.keySlot, error: error, now: now, actions: &actions)
            return actions
        case .idle, .leased, .closing, .awaitingSlot:
            return connectionClosed(id, now: now)
        }
    }

    /// The runtime returns a leased connection. `reusable`: clean and idle (ReadyForQuery `I`), it may
    /// serve others; otherwise it is closed. A reusable one is closed if the pool is over its cap
    /// (lowered cap) or shutting down; else it goes to a waiter of its key (the oldest on its event
    /// loop, unless the oldest overall arrived `affinityWindow` before that one); else, if
    /// uncovered waiters of other keys exist (so the pool is at its cap), it is closed and one is
    /// opened for the oldest of them; else it parks idle.
    public mutating func release(_ id: ConnectionID, reusable: Bool, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id], case .leased = connection.state else { return actions }
        if reusable {
            connectionAvailable(id, connection, now: now, actions: &actions)
        } else {
            close(id, actions: &actions)
            // Its slot goes to the oldest uncovered waiter, if any (the open starts once it is
            // reported closed).
            rebalance(now: now, actions: &actions)
        }
        return actions
    }

    /// A connection is closed (in any state): the database or the network closed it, or the
    /// runtime closed it as asked (`closeConnection`). Frees its slot: the open it was promised to
    /// starts, or waiters are served. A connection closed while connecting counts as a failed
    /// attempt. Reports of unknown (or already forgotten) ids are ignored.
    public mutating func connectionClosed(_ id: ConnectionID, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let connection = connections[id] else { return actions }
        switch connection.state {
        case .connecting:
            forget(id)
            let failure = ConnectionFailure(message: "connection closed during startup")
            connectingEnded(keySlot: connection.keySlot, error: failure, now: now, actions: &actions)
        case .idle, .leased, .closing(successor: nil):
            forget(id)
            afterSlotFreed(now: now, actions: &actions)
        case .closing(let successor?):
            forget(id)
            startAwaitingOpen(successor, now: now, actions: &actions)
        case .awaitingSlot:
            break  // its id was never given out: the report is not about it
        }
        return actions
    }

    /// The waiting client went away: its request is failed with `.cancelled`. Unknown (e.g. already
    /// leased) requests are ignored.
    public mutating func cancel(request: RequestID, now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard let slot = waiterSlotByRequest[request] else { return actions }
        let waiter = removeWaiter(slot)
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

    /// Closes every idle connection now (the target or the init query changed, so they are stale);
    /// waiters are served by new connections, each started as a closed one is reported gone.
    /// Leased connections are the caller's to close when they come back
    /// (`release(_:reusable: false)`).
    public mutating func closeIdleConnections(now: PoolInstant) -> PoolActions {
        var actions = PoolActions()
        guard lifecycle == .running else { return actions }
        while let entry = oldestIdle() { close(entry.id, actions: &actions) }
        rebalance(now: now, actions: &actions)
        armTimer(nextDeadline(), actions: &actions)
        return actions
    }

    /// Closes idle connections, fails every waiter with `.shuttingDown` and makes later borrows fail
    /// the same way. Connecting and leased connections are closed when they are established or
    /// released. `.shutdownComplete` is emitted (once) when no connection is left: every one closed
    /// has been reported closed, and opens waiting for a slot are dropped.
    public mutating func shutdown() -> PoolActions {
        var actions = PoolActions()
        guard lifecycle == .running else { return actions }
        lifecycle = .shuttingDown

        var failed: [Waiter] = []
        failed.reserveCapacity(totals.waiting)
        // By index, re-reading the count: dropping the last key may give the records' memory back.
        var keySlot = 0
        while keySlot < keyRecords.count {
            while keySlot < keyRecords.count, let waiter = popFirstWaiter(keySlot: keySlot) { failed.append(waiter) }
            keySlot += 1
        }
        failed.sort { $0.order < $1.order }
        for waiter in failed { actions.append(.failRequest(waiter.id, .shuttingDown)) }

        while let entry = oldestIdle() { close(entry.id, actions: &actions) }
        checkDrained(actions: &actions)
        return actions
    }

    // MARK: Transitions

    /// `id` (connecting or leased) is ready to serve.
    /// `connection` is `connections[id]`, looked up by the caller (one hash lookup fewer on the
    /// path of every released backend).
    private mutating func connectionAvailable(_ id: ConnectionID, _ connection: Connection, now: PoolInstant, actions: inout PoolActions) {
        switch lifecycle {
        case .running:
            break
        case .shuttingDown, .drained:
            close(id, actions: &actions)  // drained once it is reported closed
            return
        }
        if liveTotal > limits.maxConnections {
            close(id, actions: &actions)
            rebalance(now: now, actions: &actions)
            return
        }
        if let slot = waiterToServe(keySlot: connection.keySlot, eventLoopIndex: connection.eventLoopIndex) {
            let waiter = removeWaiter(slot)
            lease(id, connection, to: waiter.id, actions: &actions)
            return
        }
        if totals.waiting > 0, oldestUncoveredWaiter() != nil {
            close(id, actions: &actions)
            rebalance(now: now, actions: &actions)
            return
        }
        park(id, connection, now: now)
        trimIdle(now: now, actions: &actions)
        armTimer(nextIdleDeadline(), actions: &actions)
    }

    /// A connecting connection of the key in `keySlot` is gone (already forgotten; the key may
    /// have gone with it, and its record is then empty).
    private mutating func connectingEnded(keySlot: KeySlot, error: ConnectionFailure, now: PoolInstant, actions: inout PoolActions) {
        guard lifecycle == .running else {
            checkDrained(actions: &actions)
            return
        }
        if let slot = keyRecords[keySlot].waiters.firstUncovered {
            let waiter = removeWaiter(slot)
            actions.append(.failRequest(waiter.id, .connectionFailed(error)))
        }
        rebalance(now: now, actions: &actions)
    }

    /// A connection is gone: its slot is free.
    private mutating func afterSlotFreed(now: PoolInstant, actions: inout PoolActions) {
        switch lifecycle {
        case .running: rebalance(now: now, actions: &actions)
        case .shuttingDown, .drained: checkDrained(actions: &actions)
        }
    }

    /// Restores the invariants: closes idle surplus over the cap, then opens (in free slots, in the
    /// slots of closing connections, or in those of idle connections of other keys closed for them)
    /// for uncovered waiters, oldest first, within the cap. With a zero borrow timeout, uncovered
    /// waiters that still cannot be served fail with `.timeout`.
    private mutating func rebalance(now: PoolInstant, actions: inout PoolActions) {
        guard lifecycle == .running else { return }
        // Closing connections are already on their way out: they are not surplus to close again.
        while liveTotal > limits.maxConnections, let entry = oldestIdle() {
            close(entry.id, actions: &actions)
        }
        guard totals.waiting > 0 else { return }
        while let waiter = oldestUncoveredWaiter() {
            if let id = takeIdle(keySlot: waiter.keySlot, preferring: waiter.eventLoopIndex) {
                // Defensive (the invariants exclude it): serve the oldest waiter of that key.
                if let first = popFirstWaiter(keySlot: waiter.keySlot) {
                    lease(id, to: first.id, actions: &actions)
                }
            } else if canOpen {
                openConnection(keySlot: waiter.keySlot, eventLoopIndex: waiter.eventLoopIndex, actions: &actions)
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
        var keySlot = 0  // see `shutdown`
        while keySlot < keyRecords.count {
            while keySlot < keyRecords.count, let head = keyRecords[keySlot].waiters.all.head,
                  waiterSlots[head].enqueuedAt.advanced(byNanoseconds: timeout) <= now
            {
                expired.append(removeWaiter(head))
            }
            keySlot += 1
        }
        expired.sort { $0.order < $1.order }
        for waiter in expired { actions.append(.failRequest(waiter.id, .timeout)) }
    }

    private mutating func failUncoveredWaiters(with error: PoolError, actions: inout PoolActions) {
        var failed: [Waiter] = []
        var keySlot = 0  // see `shutdown`
        while keySlot < keyRecords.count {
            while keySlot < keyRecords.count, let slot = keyRecords[keySlot].waiters.firstUncovered {
                failed.append(removeWaiter(slot))
            }
            keySlot += 1
        }
        failed.sort { $0.order < $1.order }
        for waiter in failed { actions.append(.failRequest(waiter.id, error)) }
    }

    /// Closes idle connections beyond `maxIdleConnections` idle for at least `idleTimeout`.
    private mutating func trimIdle(now: PoolInstant, actions: inout PoolActions) {
        // Checked first: the conversion below costs about 190 instructions, and every connection
        // parked idle comes here.
        guard totals.idle > limits.maxIdleConnections else { return }
        let timeout = limits.idleTimeout.poolNanoseconds
        while totals.idle > limits.maxIdleConnections, let entry = oldestIdle(),
              case .idle(let since, _)? = connections[entry.id]?.state,
              since.advanced(byNanoseconds: timeout) <= now
        {
            close(entry.id, actions: &actions)
        }
    }

    // MARK: Timer


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
            for record in keyRecords {
                if let head = record.waiters.all.head,
                   let deadline = waiterDeadline(enqueuedAt: waiterSlots[head].enqueuedAt),
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

    /// Connections not on their way out (closing ones whose slot is promised are not counted at
    /// all; their successors are, as connecting).
    private var liveTotal: Int { totals.total - totals.closing }

    /// Whether a waiter with no idle connection of its key can have a connection opened for it
    /// now (see `openConnection`).
    private var canOpen: Bool {
        let total = totals.total
        if total < limits.maxConnections { return true }
        // Not over a lowered cap: a slot that is being freed will then be within it.
        return total == limits.maxConnections && (!freeClosing.isEmpty || totals.idle > 0)
    }

    /// Opens a connection for a waiter of `key` (only when `canOpen`; the caller has checked that
    /// no idle connection of `key` exists): in a free slot, at once; else in the slot of the oldest
    /// closing connection whose slot is not promised; else in that of the least recently used idle
    /// connection (of another key), closed now. In the last two cases the open is decided now (it
    /// covers a waiter) and started when that connection is reported closed.
    private mutating func openConnection(keySlot: KeySlot, eventLoopIndex: Int, actions: inout PoolActions) {
        if totals.total < limits.maxConnections {
            createConnection(keySlot: keySlot, eventLoopIndex: eventLoopIndex, actions: &actions)
            return
        }
        if freeClosing.isEmpty {
            guard let victim = oldestIdle() else { return }
            close(victim.id, actions: &actions)
        }
        let closingID = freeClosing.removeFirst()
        guard var closing = connections[closingID] else { return }
        // The slot changes hands: counted for the new open (as connecting) instead of as closing.
        let successor = createConnection(
            keySlot: keySlot, eventLoopIndex: eventLoopIndex, freedBy: closingID, actions: &actions)
        keyRecords[closing.keySlot].counts.closing -= 1
        totals.closing -= 1
        closing.state = .closing(successor: successor)
        connections[closingID] = closing
        dropKeyIfUnused(closing.keySlot)
    }

    /// `freedBy`: the closing connection whose slot it takes; the open waits for it
    /// (`awaitingSlot`) instead of starting now.
    @discardableResult
    private mutating func createConnection(
        keySlot: KeySlot, eventLoopIndex: Int, freedBy closing: ConnectionID? = nil, actions: inout PoolActions
    ) -> ConnectionID {
        let id = ConnectionID(nextConnectionID)
        nextConnectionID += 1
        let state: ConnectionState = closing.map { .awaitingSlot(freedBy: $0) } ?? .connecting
        let key = keyRecords[keySlot].key!
        connections[id] = Connection(key: key, keySlot: keySlot, eventLoopIndex: eventLoopIndex, state: state)
        keyRecords[keySlot].counts.connecting += 1
        totals.connecting += 1
        // One more covered waiter: the boundary moves one newer.
        if let first = keyRecords[keySlot].waiters.firstUncovered {
            keyRecords[keySlot].waiters.firstUncovered = waiterSlots[first].nextOfKey
        }
        if closing == nil { actions.append(.createConnection(id, key, eventLoopIndex: eventLoopIndex)) }
        return id
    }

    /// The closing connection whose slot `id` was promised is gone: the open starts. Shutting
    /// down, or over a cap lowered since, it is dropped instead (its waiter, if still waiting, is
    /// uncovered again and served like any other).
    private mutating func startAwaitingOpen(_ id: ConnectionID, now: PoolInstant, actions: inout PoolActions) {
        guard var connection = connections[id], case .awaitingSlot = connection.state else {
            afterSlotFreed(now: now, actions: &actions)  // defensive: nothing was waiting for it
            return
        }
        if lifecycle == .running, totals.total <= limits.maxConnections {
            connection.state = .connecting  // same counts: it was counted as connecting already
            connections[id] = connection
            actions.append(.createConnection(id, connection.key, eventLoopIndex: connection.eventLoopIndex))
        } else {
            forget(id)
            afterSlotFreed(now: now, actions: &actions)
        }
    }

    private mutating func lease(_ id: ConnectionID, to request: RequestID, actions: inout PoolActions) {
        guard let connection = connections[id] else { return }
        lease(id, connection, to: request, actions: &actions)
    }

    /// `connection` is `connections[id]`, looked up by the caller.
    private mutating func lease(_ id: ConnectionID, _ connection: Connection, to request: RequestID, actions: inout PoolActions) {
        var connection = connection
        leaveState(of: id, connection)
        connection.state = .leased(request)
        connections[id] = connection
        keyRecords[connection.keySlot].counts.leased += 1
        totals.leased += 1
        actions.append(.lease(id, to: request))
    }

    /// `connection` is `connections[id]`, looked up by the caller.
    private mutating func park(_ id: ConnectionID, _ connection: Connection, now: PoolInstant) {
        var connection = connection
        leaveState(of: id, connection)
        let order = nextOrder
        nextOrder += 1
        connection.state = .idle(since: now, order: order)
        connections[id] = connection
        keyRecords[connection.keySlot].counts.idle += 1
        totals.idle += 1
        Self.push(id, loop: connection.eventLoopIndex, onto: &keyRecords[connection.keySlot].idle)
        idleLRU.append(IdleEntry(id: id, order: order))
    }

    /// Asks the runtime to close `id` (connecting-just-established, idle or leased). It keeps its
    /// slot, as closing, until reported closed: PostgreSQL counts a session until its backend
    /// exits, and an open started in the slot before then would exceed the cap on the database.
    private mutating func close(_ id: ConnectionID, actions: inout PoolActions) {
        guard var connection = connections[id] else { return }
        switch connection.state {
        case .connecting, .idle, .leased: break
        case .closing, .awaitingSlot: return
        }
        // Counted as closing before its old state is undone, so its key's entries are not dropped
        // and made again.
        keyRecords[connection.keySlot].counts.closing += 1
        totals.closing += 1
        leaveState(of: id, connection)
        connection.state = .closing(successor: nil)
        connections[id] = connection
        freeClosing.append(id)
        actions.append(.closeConnection(id))
    }

    /// Removes `id` from every structure and count.
    private mutating func forget(_ id: ConnectionID) {
        guard let connection = connections.removeValue(forKey: id) else { return }
        if leaveState(of: id, connection) { dropKeyIfUnused(connection.keySlot) }
    }

    /// Undoes the counts (and idle indexes) of the connection's current state. The key stays
    /// even if its counts are now zero: the connection is counted again at once (leased, idle,
    /// closing), or `forget` drops the key. False: the connection counted for nothing (closing,
    /// its slot handed over), and its key's record must not be touched.
    @discardableResult
    private mutating func leaveState(of id: ConnectionID, _ connection: Connection) -> Bool {
        let keySlot = connection.keySlot
        switch connection.state {
        case .connecting, .awaitingSlot:
            keyRecords[keySlot].counts.connecting -= 1
            totals.connecting -= 1
            // One less covered waiter: the newest covered one (if any) becomes uncovered.
            if let first = keyRecords[keySlot].waiters.firstUncovered {
                keyRecords[keySlot].waiters.firstUncovered = waiterSlots[first].previousOfKey
            } else if keyRecords[keySlot].counts.waiting > keyRecords[keySlot].counts.connecting {
                keyRecords[keySlot].waiters.firstUncovered = keyRecords[keySlot].waiters.all.tail
            }
        case .idle:
            totals.idle -= 1
            keyRecords[keySlot].counts.idle -= 1
            Self.remove(id, loop: connection.eventLoopIndex, from: &keyRecords[keySlot].idle)
            compactIdleLRUIfNeeded()
        case .leased:
            totals.leased -= 1
            keyRecords[keySlot].counts.leased -= 1
        case .closing(let successor):
            // With a successor its slot was already handed over (and uncounted): it counts for
            // nothing, and its key's record may be gone (or another key's by now).
            guard successor == nil else { return false }
            keyRecords[keySlot].counts.closing -= 1
            totals.closing -= 1
            if let index = freeClosing.firstIndex(of: id) { freeClosing.remove(at: index) }
        }
        return true
    }

    /// The slot of a key that has none yet (its first connection or waiter comes next).
    private mutating func addKey(_ key: PoolKey) -> KeySlot {
        let keySlot: KeySlot
        if let free = freeKeySlots.popLast() {
            keySlot = free
        } else {
            keySlot = keyRecords.count
            keyRecords.append(KeyRecord())
        }
        keyRecords[keySlot].key = key
        keySlotByKey[key] = keySlot
        return keySlot
    }

    /// Forgets a key with no connections and no waiters (its emptied structures go too).
    private mutating func dropKeyIfUnused(_ keySlot: KeySlot) {
        guard keyRecords[keySlot].counts.isEmpty, let key = keyRecords[keySlot].key else { return }
        keySlotByKey[key] = nil
        keyRecords[keySlot] = KeyRecord()
        if keySlotByKey.isEmpty, keyRecords.count > 64 {
            // After many keys at once: give the memory back.
            keyRecords = []
            freeKeySlots = []
        } else {
            freeKeySlots.append(keySlot)
        }
    }

    private static func push(_ id: ConnectionID, loop: Int, onto stacks: inout [[ConnectionID]]) {
        if stacks.count <= loop { stacks.append(contentsOf: repeatElement([], count: loop + 1 - stacks.count)) }
        stacks[loop].append(id)
    }

    private static func remove(_ id: ConnectionID, loop: Int, from stacks: inout [[ConnectionID]]) {
        guard loop < stacks.count, let index = stacks[loop].lastIndex(of: id) else { return }
        stacks[loop].remove(at: index)
    }

    /// The idle connection of the key in `keySlot` to lease: on `eventLoopIndex` if any, else the
    /// most recently used. `lease` then removes it from the idle indexes.
    private func takeIdle(keySlot: KeySlot, preferring eventLoopIndex: Int) -> ConnectionID? {
        let byLoop = keyRecords[keySlot].idle
        var chosen: ConnectionID?
        if eventLoopIndex < byLoop.count, let id = byLoop[eventLoopIndex].last {
            chosen = id
        } else {
            var bestOrder: UInt64 = 0
            for stack in byLoop {
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

    private mutating func enqueue(_ request: RequestID, keySlot: KeySlot, eventLoopIndex: Int, now: PoolInstant) {
        // The key's lists are changed where they are (`keyRecords[keySlot]...`), never through a
        // copy of the record, whose arrays would then copy themselves.
        if keyRecords[keySlot].waiters.byLoop.count <= eventLoopIndex {
            let missing = eventLoopIndex + 1 - keyRecords[keySlot].waiters.byLoop.count
            keyRecords[keySlot].waiters.byLoop.append(contentsOf: repeatElement(WaiterList(), count: missing))
        }
        let keyTail = keyRecords[keySlot].waiters.all.tail
        let loopTail = keyRecords[keySlot].waiters.byLoop[eventLoopIndex].tail
        let waiter = Waiter(
            id: request, keySlot: keySlot, eventLoopIndex: eventLoopIndex, enqueuedAt: now, order: nextOrder,
            previousOfKey: keyTail, previousOnLoop: loopTail)
        let slot: Slot
        if let free = freeWaiterSlots.popLast() {
            slot = free
            waiterSlots[slot] = waiter
        } else {
            slot = waiterSlots.count
            waiterSlots.append(waiter)
        }
        waiterSlotByRequest[request] = slot
        nextOrder += 1
        if let keyTail { waiterSlots[keyTail].nextOfKey = slot } else { keyRecords[keySlot].waiters.all.head = slot }
        keyRecords[keySlot].waiters.all.tail = slot
        if let loopTail { waiterSlots[loopTail].nextOnLoop = slot } else {
            keyRecords[keySlot].waiters.byLoop[eventLoopIndex].head = slot
        }
        keyRecords[keySlot].waiters.byLoop[eventLoopIndex].tail = slot
        keyRecords[keySlot].counts.waiting += 1
        totals.waiting += 1
        // Appended at index waiting - 1: it is the first uncovered one iff all older ones are covered.
        if keyRecords[keySlot].waiters.firstUncovered == nil,
           keyRecords[keySlot].counts.waiting > keyRecords[keySlot].counts.connecting
        {
            keyRecords[keySlot].waiters.firstUncovered = slot
        }
    }

    private mutating func popFirstWaiter(keySlot: KeySlot) -> Waiter? {
        guard let head = keyRecords[keySlot].waiters.all.head else { return nil }
        return removeWaiter(head)
    }

    /// Unlinks the waiter in `slot` (which must be in use) from every structure and count.
    private mutating func removeWaiter(_ slot: Slot) -> Waiter {
        let waiter = waiterSlots[slot]
        waiterSlotByRequest[waiter.id] = nil
        if waiterSlotByRequest.isEmpty, waiterSlots.count > 256 {
            // After a burst of waiters: give the memory back.
            waiterSlots = []
            freeWaiterSlots = []
        } else {
            freeWaiterSlots.append(slot)
        }
        let keySlot = waiter.keySlot

        // Keep `firstUncovered` at index `connecting(key)`: removing a covered waiter (older than the
        // boundary) or the boundary itself moves the boundary one newer.
        if let first = keyRecords[keySlot].waiters.firstUncovered {
            if first == slot {
                keyRecords[keySlot].waiters.firstUncovered = waiter.nextOfKey
            } else if waiter.order < waiterSlots[first].order {
                keyRecords[keySlot].waiters.firstUncovered = waiterSlots[first].nextOfKey
            }
        }

        if let previous = waiter.previousOfKey { waiterSlots[previous].nextOfKey = waiter.nextOfKey } else {
            keyRecords[keySlot].waiters.all.head = waiter.nextOfKey
        }
        if let next = waiter.nextOfKey { waiterSlots[next].previousOfKey = waiter.previousOfKey } else {
            keyRecords[keySlot].waiters.all.tail = waiter.previousOfKey
        }

        let loop = waiter.eventLoopIndex
        if let previous = waiter.previousOnLoop { waiterSlots[previous].nextOnLoop = waiter.nextOnLoop } else {
            keyRecords[keySlot].waiters.byLoop[loop].head = waiter.nextOnLoop
        }
        if let next = waiter.nextOnLoop { waiterSlots[next].previousOnLoop = waiter.previousOnLoop } else {
            keyRecords[keySlot].waiters.byLoop[loop].tail = waiter.previousOnLoop
        }

        keyRecords[keySlot].counts.waiting -= 1
        totals.waiting -= 1
        dropKeyIfUnused(keySlot)
        return waiter
    }

    /// The waiter of the key in `keySlot` that a connection on `eventLoopIndex` becoming
    /// available serves: the oldest waiter of the key on that loop, unless the oldest waiter of
    /// the key overall arrived `affinityWindow` or more before it (or the window is zero, or
    /// nobody waits on that loop): then that one. O(1).
    ///
    /// The window compares arrival times, not time waited: under a steady overload every waiter
    /// has waited longer than any small window, and a rule on time waited would then hand half the
    /// connections across threads.
    private func waiterToServe(keySlot: KeySlot, eventLoopIndex: Int) -> Slot? {
        guard let oldest = keyRecords[keySlot].waiters.all.head else { return nil }
        let window = affinityWindowNanoseconds
        guard window > 0 else { return oldest }
        let head = waiterSlots[oldest]
        guard head.eventLoopIndex != eventLoopIndex, eventLoopIndex < keyRecords[keySlot].waiters.byLoop.count,
              let local = keyRecords[keySlot].waiters.byLoop[eventLoopIndex].head
        else { return oldest }
        if head.enqueuedAt.advanced(byNanoseconds: window) <= waiterSlots[local].enqueuedAt { return oldest }
        return local
    }

    /// The oldest waiter (all keys) not covered by an in-flight creation of its key.
    private func oldestUncoveredWaiter() -> Waiter? {
        var oldest: Waiter?
        for record in keyRecords {
            guard let first = record.waiters.firstUncovered else { continue }
            let candidate = waiterSlots[first]
            if oldest.map({ candidate.order < $0.order }) ?? true { oldest = candidate }
        }
        return oldest
    }

    /// Checks the waiter and key indexes against each other (O(waiters)); returns the problems
    /// found. For tests only.
    @_spi(Testing)
    public func waiterIndexProblems() -> [String] {
        var problems: [String] = []
        var seen = 0
        var usedKeySlots = 0
        for (keySlot, record) in keyRecords.enumerated() {
            guard let key = record.key else {
                if record.waiters.all.head != nil || !record.counts.isEmpty { problems.append("free key slot \(keySlot) in use") }
                continue
            }
            usedKeySlots += 1
            if keySlotByKey[key] != keySlot { problems.append("\(key): not found at its slot \(keySlot)") }
            if record.counts.isEmpty { problems.append("\(key): kept with no connections and no waiters") }
            let queue = record.waiters
            var ids: [Slot] = []
            var previous: Slot?
            var cursor = queue.all.head
            while let id = cursor, ids.count <= waiterSlotByRequest.count {
                guard let node = waiter(in: id) else { problems.append("\(key): dangling slot \(id)"); break }
                if node.keySlot != keySlot { problems.append("\(node.id): in the list of \(key)") }
                if node.previousOfKey != previous { problems.append("\(node.id): bad previous link") }
                if let previous, waiterSlots[previous].order >= node.order { problems.append("\(key): not oldest first") }
                ids.append(id)
                previous = id
                cursor = node.nextOfKey
            }
            if queue.all.tail != previous { problems.append("\(key): bad tail") }
            if ids.count != record.counts.waiting { problems.append("\(key): bad count") }
            let covered = record.counts.connecting
            let expected = ids.count > covered ? ids[covered] : nil
            if queue.firstUncovered != expected {
                problems.append("\(key): firstUncovered \(String(describing: queue.firstUncovered)), expected \(String(describing: expected))")
            }
            var onLoops = 0
            for (loop, list) in queue.byLoop.enumerated() where list.head != nil || list.tail != nil {
                var previous: Slot?
                var cursor = list.head
                var count = 0
                while let id = cursor, count <= ids.count {
                    guard let node = waiter(in: id) else { problems.append("\(key)/\(loop): dangling slot \(id)"); break }
                    if node.keySlot != keySlot || node.eventLoopIndex != loop { problems.append("\(node.id): on the wrong loop list") }
                    if node.previousOnLoop != previous { problems.append("\(node.id): bad previous loop link") }
                    if let previous, waiterSlots[previous].order >= node.order { problems.append("\(key)/\(loop): not oldest first") }
                    previous = id
                    cursor = node.nextOnLoop
                    count += 1
                }
                if list.tail != previous { problems.append("\(key)/\(loop): bad tail") }
                onLoops += count
            }
            if onLoops != ids.count { problems.append("\(key): loop lists hold \(onLoops), key list \(ids.count)") }
            seen += ids.count
        }
        if usedKeySlots != keySlotByKey.count { problems.append("key slots in use \(usedKeySlots), keys \(keySlotByKey.count)") }
        if usedKeySlots + freeKeySlots.count != keyRecords.count { problems.append("key slots leaked") }
        if seen != waiterSlotByRequest.count || seen != totals.waiting { problems.append("waiter count mismatch") }
        if waiterSlotByRequest.count + freeWaiterSlots.count != waiterSlots.count { problems.append("slots leaked") }
        return problems
    }

    /// The waiter in `slot` if that slot is in use (for the checks above).
    private func waiter(in slot: Slot) -> Waiter? {
        guard slot >= 0, slot < waiterSlots.count, waiterSlotByRequest[waiterSlots[slot].id] == slot else { return nil }
        return waiterSlots[slot]
    }

    private static func sanitized(_ limits: PoolLimits) -> PoolLimits {
        var limits = limits
        limits.maxConnections = max(0, limits.maxConnections)
        limits.maxIdleConnections = max(0, limits.maxIdleConnections)
        return limits
    }
}
