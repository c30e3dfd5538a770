@_spi(Testing) import ConnectionPool
import Testing

/// Deterministic generator so a failing seed can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A model of the runtime: it runs the actions and checks them against what it knows.
struct RuntimeModel {
    enum ConnectionState: Equatable {
        case connecting
        /// Handed back to the machine in this step (established or released); idle if not used.
        case available
        case idle(since: PoolInstant)
        case leased(RequestID)
        /// Asked to close; the runtime has not reported it closed yet (the database still holds
        /// its session).
        case closing
    }

    struct Connection {
        var key: PoolKey
        var eventLoopIndex: Int
        var state: ConnectionState
    }

    struct Waiting {
        var key: PoolKey
        var since: PoolInstant
        var eventLoopIndex: Int
        /// Borrow order (FIFO position).
        var order: UInt64
    }

    var pool: PoolStateMachine
    var rng: SplitMix64
    var now = PoolInstant.zero
    /// The one timer the runtime keeps (replaced by each `scheduleTimer`).
    var timer: PoolInstant?
    var connections: [ConnectionID: Connection] = [:]
    var waiting: [RequestID: Waiting] = [:]
    var outcomes: [RequestID: Int] = [:]
    var borrowed: [RequestID] = []
    var nextRequest: UInt64 = 0
    var highestConnectionID = -1
    /// Every id ever created: an open that waited for a slot gets an id allocated before the ones
    /// created in the meantime, so ids are unique but not created in increasing order.
    var createdIDs: Set<ConnectionID> = []
    var shutdownCompletions = 0
    var steps = 0
    /// Leases that went to a same-loop waiter while an older waiter of the key was waiting.
    var affinityLeases = 0
    /// Opens started by the report that a closing connection is gone (they waited for its slot).
    var opensAfterClose = 0
    let keys = [keyA, keyB, keyC]
    let loops = 4

    init(seed: UInt64) {
        rng = SplitMix64(state: seed)
        pool = makePool(
            cap: 3, maxIdle: 1, borrowTimeout: .seconds(3), idleTimeout: .seconds(2), affinityWindow: .milliseconds(500))
    }

    // MARK: Running actions

    mutating func run(_ actions: PoolActions, afterTick: Bool = false) {
        steps += 1
        var created = false
        for action in actions {
            switch action {
            case .createConnection(let id, let key, let loop):
                #expect(connections[id] == nil && createdIDs.insert(id).inserted, "step \(steps): reused \(id)")
                highestConnectionID = max(highestConnectionID, id.rawValue)
                connections[id] = Connection(key: key, eventLoopIndex: loop, state: .connecting)
                created = true
            case .lease(let id, let request):
                resolve(request)
                if let connection = connections[id] { checkWaiterChoice(request, connection: connection) }
                guard let waiter = waiting.removeValue(forKey: request) else {
                    Issue.record("step \(steps): lease to \(request), which is not waiting")
                    continue
                }
                guard let connection = connections[id] else {
                    Issue.record("step \(steps): lease of unknown \(id)")
                    continue
                }
                #expect(connection.key == waiter.key, "step \(steps): key mismatch")
                switch connection.state {
                case .available, .idle: break
                case .connecting, .leased, .closing: Issue.record("step \(steps): lease of \(id) in state \(connection.state)")
                }
                connections[id]?.state = .leased(request)
            case .failRequest(let request, _):
                resolve(request)
                if waiting.removeValue(forKey: request) == nil {
                    Issue.record("step \(steps): failure of \(request), which is not waiting")
                }
            case .closeConnection(let id):
                guard let connection = connections[id] else {
                    Issue.record("step \(steps): close of unknown \(id)")
                    continue
                }
                if case .leased = connection.state { Issue.record("step \(steps): closed leased \(id)") }
                if case .closing = connection.state { Issue.record("step \(steps): closed \(id) twice") }
                // Still there (and in the cap) until reported closed.
                connections[id]?.state = .closing
            case .scheduleTimer(let at):
                if let timer { #expect(at < timer, "step \(steps): timer not earlier") }
                timer = at
            case .shutdownComplete:
                shutdownCompletions += 1
                #expect(connections.isEmpty)
            }
        }
        for (id, connection) in connections where connection.state == .available {
            connections[id]?.state = .idle(since: now)
        }
        check(created: created, afterTick: afterTick)
    }

    mutating func resolve(_ request: RequestID) {
        outcomes[request, default: 0] += 1
        #expect(outcomes[request] == 1, "step \(steps): \(request) resolved twice")
    }

    // MARK: Invariants

    /// Which waiter a connection goes to (checked before the lease is applied to the model).
    mutating func checkWaiterChoice(_ request: RequestID, connection: Connection) {
        guard let chosen = waiting[request] else { return }
        let window = pool.limits.affinityWindow
        let sameKey = waiting.filter { $0.value.key == chosen.key }
        // Bounded unfairness: nobody of the key is overtaken by a waiter that arrived
        // `affinityWindow` or more after it.
        for (other, waiter) in sameKey where waiter.order < chosen.order {
            #expect(window > .zero && chosen.since < waiter.since + window,
                "step \(steps): \(request) served before \(other), which arrived \(chosen.since - waiter.since) earlier (window \(window))")
        }
        switch connection.state {
        case .idle:
            // Borrowed from idle: an idle connection of a key never coexists with waiters of that key.
            #expect(sameKey.count == 1, "step \(steps): idle \(connection.key) connection with other waiters")
        case .available:
            // The exact rule: the oldest, unless someone waits on the connection's loop who
            // arrived less than the window after it (then the oldest there).
            let oldest = sameKey.min { $0.value.order < $1.value.order }!
            let sameLoop = sameKey.filter { $0.value.eventLoopIndex == connection.eventLoopIndex }
                .min { $0.value.order < $1.value.order }
            var expected = oldest.key
            if window > .zero, let sameLoop, sameLoop.value.since < oldest.value.since + window { expected = sameLoop.key }
            #expect(request == expected, "step \(steps): leased to \(request), expected \(expected)")
            if request != oldest.key { affinityLeases += 1 }
        case .connecting, .leased, .closing:
            break  // reported by `run`
        }
    }

    func check(created: Bool, afterTick: Bool) {
        let stats = pool.stats
        let limits = pool.limits
        let indexProblems = pool.waiterIndexProblems()
        #expect(indexProblems.isEmpty, "step \(steps): \(indexProblems)")
        // Idle, leased and waiting as the model counts them. Opens waiting for a closing
        // connection's slot are not visible to the runtime: the machine counts each as connecting
        // and its closing predecessor not at all, so only the sum of the two is compared.
        var perKey: [PoolKey: PoolCounts] = [:]
        var idleSince: [PoolInstant] = []
        var connectingOrClosing = 0
        var closing = 0
        for connection in connections.values {
            switch connection.state {
            case .connecting: connectingOrClosing += 1
            case .closing:
                connectingOrClosing += 1
                closing += 1
            case .available: Issue.record("available after step")
            case .idle(let since):
                perKey[connection.key, default: PoolCounts()].idle += 1
                idleSince.append(since)
            case .leased: perKey[connection.key, default: PoolCounts()].leased += 1
            }
        }
        for waiter in waiting.values { perKey[waiter.key, default: PoolCounts()].waiting += 1 }
        var totals = PoolCounts()
        for counts in perKey.values {
            totals.idle += counts.idle
            totals.leased += counts.leased
            totals.waiting += counts.waiting
        }
        #expect(stats.totals.idle == totals.idle && stats.totals.leased == totals.leased
            && stats.totals.waiting == totals.waiting, "step \(steps): totals")
        #expect(stats.totals.connecting + stats.totals.closing == connectingOrClosing, "step \(steps): connecting and closing")
        #expect(stats.totals.closing <= closing, "step \(steps): closing")
        for (key, counts) in stats.perKey {
            let model = perKey[key] ?? PoolCounts()
            #expect(counts.idle == model.idle && counts.leased == model.leased && counts.waiting == model.waiting,
                "step \(steps): per key \(key)")
        }
        for (key, counts) in perKey where stats.perKey[key] == nil {
            #expect(counts == PoolCounts(), "step \(steps): per key \(key) missing")
        }
        var sum = PoolCounts()
        for counts in stats.perKey.values {
            sum.connecting += counts.connecting
            sum.idle += counts.idle
            sum.leased += counts.leased
            sum.waiting += counts.waiting
            sum.closing += counts.closing
        }
        #expect(sum == stats.totals, "step \(steps): per-key counts do not add up")
        #expect(pool.waitingCount == waiting.count)
        // Every connection the runtime still has (closing ones included) is one the machine
        // counts: what the database sees is what the cap limits.
        #expect(connections.count == stats.totals.total, "step \(steps): \(connections.count) connections, total \(stats.totals.total)")

        // The cap: exceeded only after lowering it, and then nothing is created and nothing idles
        // beyond it (closing connections are on their way out).
        if created {
            #expect(connections.count <= limits.maxConnections, "step \(steps): opened with \(connections.count) connections")
        }
        if stats.totals.total > limits.maxConnections {
            #expect(!created, "step \(steps): created over the cap")
        }
        if stats.totals.total - stats.totals.closing > limits.maxConnections {
            #expect(stats.totals.idle == 0, "step \(steps): idle over the cap")
        }
        guard !pool.isShuttingDown else {
            #expect(waiting.isEmpty)
            return
        }
        // Liveness: no waiter left uncovered while a slot, a slot being freed or an idle
        // connection could serve it.
        for (key, counts) in stats.perKey where counts.waiting > counts.connecting {
            #expect(stats.totals.total >= limits.maxConnections, "step \(steps): \(key) starved below the cap")
            if stats.totals.total == limits.maxConnections {
                #expect(stats.totals.idle == 0, "step \(steps): \(key) starved with idle connections")
                #expect(stats.totals.closing == 0, "step \(steps): \(key) starved with a slot being freed")
            }
            #expect(limits.borrowTimeout > .zero, "step \(steps): uncovered waiter with zero timeout")
        }
        // The timer covers every deadline.
        if limits.borrowTimeout > .zero {
            for (request, waiter) in waiting {
                let deadline = waiter.since + limits.borrowTimeout
                #expect(timer.map { $0 <= deadline } ?? false, "step \(steps): no timer for \(request)")
                if afterTick { #expect(deadline > now, "step \(steps): \(request) outlived its deadline") }
            }
        }
        if idleSince.count > limits.maxIdleConnections, let oldest = idleSince.min() {
            let deadline = oldest + limits.idleTimeout
            #expect(timer.map { $0 <= deadline } ?? false, "step \(steps): no idle timer")
            if afterTick { #expect(deadline > now, "step \(steps): idle surplus outlived idleTimeout") }
        }
    }

    // MARK: Events

    mutating func pick<T>(_ items: [T]) -> T? {
        items.isEmpty ? nil : items[Int.random(in: 0..<items.count, using: &rng)]
    }

    func ids(where predicate: (ConnectionState) -> Bool) -> [ConnectionID] {
        connections.filter { predicate($0.value.state) }.keys.sorted()
    }

    mutating func borrow() {
        nextRequest += 1
        let request = RequestID(clientID: nextRequest)
        let key = pick(keys)!
        let loop = Int.random(in: 0..<loops, using: &rng)
        borrowed.append(request)
        waiting[request] = Waiting(key: key, since: now, eventLoopIndex: loop, order: nextRequest)
        run(pool.borrow(request: request, key: key, eventLoopIndex: loop, now: now))
    }

    mutating func establish() {
        guard let id = pick(ids { $0 == .connecting }) else { return }
        connections[id]?.state = .available
        run(pool.connectionEstablished(id, now: now))
    }

    mutating func failConnecting() {
        guard let id = pick(ids { $0 == .connecting }) else { return }
        connections[id] = nil
        let actions = pool.connectionFailed(id, error: ConnectionFailure(code: "08006", message: "refused"), now: now)
        for case .failRequest(_, let error) in actions {
            #expect(error == .connectionFailed(ConnectionFailure(code: "08006", message: "refused")) || error == .timeout)
        }
        run(actions)
    }

    mutating func release() {
        guard let id = pick(ids { if case .leased = $0 { return true } else { return false } }) else { return }
        let reusable = Int.random(in: 0..<5, using: &rng) != 0
        connections[id]?.state = .available
        let actions = pool.release(id, reusable: reusable, now: now)
        if !reusable { #expect(actions.contains(.closeConnection(id))) }
        run(actions)
    }

    /// The runtime reports a connection it was asked to close as closed (sometimes as a failure).
    mutating func finishClose() {
        guard let id = pick(ids { $0 == .closing }) else { return }
        connections[id] = nil
        let actions = Bool.random(using: &rng)
            ? pool.connectionClosed(id, now: now)
            : pool.connectionFailed(id, error: ConnectionFailure(message: "reset"), now: now)
        opensAfterClose += actions.created.count
        run(actions)
    }

    mutating func closeAny() {
        guard let id = pick(connections.keys.sorted()) else { return }
        connections[id] = nil
        run(pool.connectionClosed(id, now: now))
    }

    mutating func cancel() {
        guard let request = pick(waiting.keys.sorted { $0.clientID < $1.clientID }) else { return }
        let actions = pool.cancel(request: request, now: now)
        #expect(actions == [.failRequest(request, .cancelled)])
        run(actions)
    }

    mutating func advanceAndTick() {
        // Sometimes multiples of 250 ms, so waits land exactly on the affinity window.
        let step = Bool.random(using: &rng) ? Int64.random(in: 0...1500, using: &rng) : 250 * Int64.random(in: 0...3, using: &rng)
        var next = now + .milliseconds(step)
        if let timer, timer < next, Bool.random(using: &rng) { next = timer }  // sometimes exactly on time
        now = next
        if let armed = timer, armed <= now { timer = nil }
        run(pool.tick(now: now), afterTick: true)
    }

    mutating func changeLimits() {
        let limits = PoolLimits(
            maxConnections: Int.random(in: 0...6, using: &rng),
            maxIdleConnections: Int.random(in: 0...3, using: &rng),
            borrowTimeout: pick([.zero, .seconds(1), .seconds(3), .seconds(10)])!,
            idleTimeout: pick([.zero, .seconds(2), .seconds(5)])!,
            affinityWindow: pick([.zero, .milliseconds(2), .milliseconds(500), .seconds(2)])!)
        run(pool.updateLimits(limits, now: now))
    }

    /// Events with unknown ids or in the wrong state must do nothing.
    mutating func bogus() {
        let unknown = ConnectionID(highestConnectionID + 1000)
        #expect(pool.release(unknown, reusable: true, now: now).isEmpty)
        #expect(pool.connectionEstablished(unknown, now: now).isEmpty)
        #expect(pool.cancel(request: RequestID(clientID: .max), now: now).isEmpty)
        if let id = pick(ids { $0 != .connecting }) {
            #expect(pool.connectionEstablished(id, now: now).isEmpty)
        }
        if let id = pick(ids { if case .leased = $0 { return false } else { return true } }) {
            #expect(pool.release(id, reusable: true, now: now).isEmpty)
        }
        if let resolved = pick(borrowed.filter { waiting[$0] == nil }) {
            #expect(pool.cancel(request: resolved, now: now).isEmpty)
        }
        check(created: false, afterTick: false)
    }

    mutating func randomStep() {
        switch Int.random(in: 0..<110, using: &rng) {
        case 0..<30: borrow()
        case 30..<46: establish()
        case 46..<51: failConnecting()
        case 51..<71: release()
        case 71..<74: closeAny()
        case 74..<79: cancel()
        case 79..<95: advanceAndTick()
        case 95..<97: changeLimits()
        case 97..<100: bogus()
        default: finishClose()
        }
    }

    mutating func shutdownAndDrain() {
        run(pool.shutdown())
        #expect(waiting.isEmpty)
        while let id = connections.keys.sorted().first {
            switch connections[id]!.state {
            case .connecting:
                if Bool.random(using: &rng) {
                    connections[id]?.state = .available
                    let actions = pool.connectionEstablished(id, now: now)
                    #expect(actions.first == .closeConnection(id))
                    run(actions)
                } else {
                    connections[id] = nil
                    run(pool.connectionFailed(id, error: ConnectionFailure(message: "refused"), now: now))
                }
            case .leased:
                connections[id]?.state = .available
                let actions = pool.release(id, reusable: true, now: now)
                #expect(actions.first == .closeConnection(id))
                run(actions)
            case .closing:
                connections[id] = nil
                run(pool.connectionClosed(id, now: now))
            case .available, .idle:
                Issue.record("idle connection \(id) survived shutdown")
                connections[id] = nil
            }
        }
        #expect(pool.isDrained)
        #expect(shutdownCompletions == 1)
        for request in borrowed { #expect(outcomes[request] == 1, "\(request) unresolved") }
    }
}

@Suite struct RandomizedInvariantTests {
    @Test(arguments: 0..<12 as Range<UInt64>)
    func randomEventsKeepInvariants(seed: UInt64) {
        var model = RuntimeModel(seed: seed &* 0x1234_5678_9ABC_DEF1 &+ 7)
        for _ in 0..<4000 { model.randomStep() }
        #expect(model.borrowed.count > 500)
        #expect(model.affinityLeases > 0, "affinity never exercised")
        #expect(model.opensAfterClose > 0, "no open waited for a closing connection")
        model.shutdownAndDrain()
    }
}
