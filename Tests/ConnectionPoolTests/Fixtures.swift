import ConnectionPool
import Testing

let keyA = PoolKey(user: "app", database: "orders")
let keyB = PoolKey(user: "app", database: "billing")
let keyC = PoolKey(user: "report", database: "orders")

func req(_ n: UInt64) -> RequestID { RequestID(clientID: n) }
func conn(_ n: Int) -> ConnectionID { ConnectionID(n) }

/// An instant `seconds` after zero.
func t(_ seconds: Double) -> PoolInstant { .zero + .milliseconds(Int64(seconds * 1000)) }

func makePool(
    cap: Int = 10,
    maxIdle: Int = 10,
    borrowTimeout: Duration = .seconds(10),
    idleTimeout: Duration = .seconds(60),
    affinityWindow: Duration = .zero  // strict FIFO unless a test asks for event-loop affinity
) -> PoolStateMachine {
    PoolStateMachine(limits: PoolLimits(
        maxConnections: cap, maxIdleConnections: maxIdle, borrowTimeout: borrowTimeout, idleTimeout: idleTimeout,
        affinityWindow: affinityWindow))
}

extension PoolActions {
    var created: [ConnectionID] {
        compactMap { if case .createConnection(let id, _, _) = $0 { return id } else { return nil } }
    }
    var closed: [ConnectionID] {
        compactMap { if case .closeConnection(let id) = $0 { return id } else { return nil } }
    }
    var failed: [RequestID] {
        compactMap { if case .failRequest(let id, _) = $0 { return id } else { return nil } }
    }
    var timers: [PoolInstant] {
        compactMap { if case .scheduleTimer(let at) = $0 { return at } else { return nil } }
    }
    var withoutTimers: PoolActions {
        PoolActions(filter { if case .scheduleTimer = $0 { return false } else { return true } })
    }
}

extension PoolStateMachine {
    /// Borrow, open and establish a connection for `request`: returns the leased connection id.
    mutating func leaseNew(_ request: RequestID, key: PoolKey = keyA, loop: Int = 0, now: PoolInstant = .zero) -> ConnectionID {
        let actions = borrow(request: request, key: key, eventLoopIndex: loop, now: now)
        guard let id = actions.created.first else {
            Issue.record("expected a creation, got \(actions)")
            return ConnectionID(-1)
        }
        let established = connectionEstablished(id, now: now)
        if !established.contains(.lease(id, to: request)) {
            Issue.record("expected a lease to \(request), got \(established)")
        }
        return id
    }
}
