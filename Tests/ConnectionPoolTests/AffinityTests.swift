import ConnectionPool
import Testing

/// Event-loop affinity for waiters, bounded by `PoolLimits.affinityWindow`.
@Suite struct AffinityTests {
    let window: Duration = .milliseconds(100)

    @Test func limitsDefaultToTwoMillisecondsAndKeepTheFourArgumentInit() {
        let limits = PoolLimits(maxConnections: 1, maxIdleConnections: 1, borrowTimeout: .seconds(1), idleTimeout: .seconds(1))
        #expect(limits.affinityWindow == .milliseconds(2))
        #expect(PoolLimits.defaultAffinityWindow == .milliseconds(2))
    }

    @Test func releasedConnectionPrefersSameLoopWaiterWithinTheWindow() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0)
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1)) == [])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1.01)) == [])
        // req(2) is older but has waited 50 ms < 100 ms: the loop-0 connection stays on loop 0.
        #expect(pool.release(c0, reusable: true, now: t(1.05)) == [.lease(c0, to: req(3))])
        #expect(pool.isWaiting(req(2)))
    }

    @Test func olderWaiterIsServedOnceItHasWaitedTheWindow() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0)
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1)) == [])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1.01)) == [])
        #expect(pool.borrow(request: req(4), key: keyA, eventLoopIndex: 0, now: t(1.02)) == [])
        #expect(pool.release(c0, reusable: true, now: t(1.099)) == [.lease(c0, to: req(3))])
        // Exactly the window: no longer passed over, although loop-0 waiters remain.
        #expect(pool.release(c0, reusable: true, now: t(1.1)) == [.lease(c0, to: req(2))])
        #expect(pool.release(c0, reusable: true, now: t(1.2)) == [.lease(c0, to: req(4))])
        #expect(pool.waitingCount == 0)
    }

    @Test func waitersPastTheWindowAreServedInFIFOOrder() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0)
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 2, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 1, now: t(1.01))
        _ = pool.borrow(request: req(4), key: keyA, eventLoopIndex: 0, now: t(1.02))
        _ = pool.borrow(request: req(5), key: keyA, eventLoopIndex: 2, now: t(1.5))
        // At t(2) req(2..4) have waited past the window; req(5) (same loop as nobody) has not.
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.lease(c0, to: req(2))])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.lease(c0, to: req(3))])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.lease(c0, to: req(4))])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.lease(c0, to: req(5))])
    }

    @Test func withoutSameLoopWaiterTheOldestIsServed() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0)
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 2, now: t(1))
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.lease(c0, to: req(2))])
    }

    @Test func zeroWindowIsStrictFIFO() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: .zero)
        let c0 = pool.leaseNew(req(1), loop: 0)
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1))
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.lease(c0, to: req(2))])
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.lease(c0, to: req(3))])
    }

    @Test func updatingTheWindowAppliesToTheNextHandOff() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: .zero)
        let c0 = pool.leaseNew(req(1), loop: 0)
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1))
        var limits = pool.limits
        limits.affinityWindow = window
        #expect(pool.updateLimits(limits, now: t(1)) == [])
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.lease(c0, to: req(3))])
    }

    @Test func establishedConnectionGoesToAWaiterOnItsLoop() {
        var pool = makePool(cap: 2, borrowTimeout: .seconds(10), affinityWindow: window)
        #expect(pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
            == [.createConnection(conn(0), keyA, eventLoopIndex: 0), .scheduleTimer(at: t(10))])
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(0))
            == [.createConnection(conn(1), keyA, eventLoopIndex: 1)])
        // With a zero window conn(1) would go to req(1) (see establishedConnectionGoesToOldestWaiterNotItsRequester).
        #expect(pool.connectionEstablished(conn(1), now: t(0.01)) == [.lease(conn(1), to: req(2))])
        #expect(pool.connectionEstablished(conn(0), now: t(0.02)) == [.lease(conn(0), to: req(1))])
    }

    @Test func coverageFollowsTheOldestWaitersWhenAffinitySkipsOne() {
        let failure = ConnectionFailure(message: "refused")
        var pool = makePool(cap: 3, borrowTimeout: .seconds(10), affinityWindow: window)
        _ = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))  // conn(0), loop 0
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(0))  // conn(1), loop 1
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(0))  // conn(2), loop 0
        #expect(pool.borrow(request: req(4), key: keyA, eventLoopIndex: 1, now: t(0)) == [])
        #expect(pool.borrow(request: req(5), key: keyA, eventLoopIndex: 0, now: t(0)) == [])
        // Same loop: req(2), not the older req(1).
        #expect(pool.connectionEstablished(conn(1), now: t(0.01)) == [.lease(conn(1), to: req(2))])
        // conn(0) and conn(2) cover req(1) and req(3). conn(0) fails: conn(2) still covers req(1), so
        // req(3) fails, and the freed slot opens a connection for req(4), on its loop.
        #expect(pool.connectionFailed(conn(0), error: failure, now: t(0.02))
            == [.failRequest(req(3), .connectionFailed(failure)), .createConnection(conn(3), keyA, eventLoopIndex: 1)])
        #expect(pool.connectionEstablished(conn(3), now: t(0.03)) == [.lease(conn(3), to: req(4))])
        #expect(pool.connectionEstablished(conn(2), now: t(0.04)) == [.lease(conn(2), to: req(1))])
        #expect(pool.release(conn(1), reusable: true, now: t(0.05)) == [.lease(conn(1), to: req(5))])
        #expect(pool.stats.totals == PoolCounts(leased: 3))
    }

    @Test func timeoutsFireAtEachWaitersOwnDeadline() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: .seconds(1))
        let c0 = pool.leaseNew(req(1), loop: 0, now: t(0))  // arms the timer for t(10)
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(0)) == [])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(0.5)) == [])
        #expect(pool.borrow(request: req(4), key: keyA, eventLoopIndex: 0, now: t(0.6)) == [])
        #expect(pool.borrow(request: req(5), key: keyA, eventLoopIndex: 0, now: t(2)) == [])
        // req(2) is passed over twice (within its window), then nobody releases again.
        #expect(pool.release(c0, reusable: true, now: t(0.7)) == [.lease(c0, to: req(3))])
        #expect(pool.release(c0, reusable: true, now: t(0.8)) == [.lease(c0, to: req(4))])
        #expect(pool.tick(now: t(9.999)) == [])
        #expect(pool.tick(now: t(10)) == [.failRequest(req(2), .timeout), .scheduleTimer(at: t(12))])
        #expect(pool.tick(now: t(11.999)) == [])
        #expect(pool.tick(now: t(12)) == [.failRequest(req(5), .timeout)])
        #expect(pool.waitingCount == 0)
    }

    @Test func cancellingWaitersInTheMiddleKeepsBothOrders() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0)
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1))
        _ = pool.borrow(request: req(4), key: keyA, eventLoopIndex: 0, now: t(1))
        _ = pool.borrow(request: req(5), key: keyA, eventLoopIndex: 1, now: t(1))
        #expect(pool.cancel(request: req(3), now: t(1)) == [.failRequest(req(3), .cancelled)])
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.lease(c0, to: req(4))])
        #expect(pool.cancel(request: req(2), now: t(1)) == [.failRequest(req(2), .cancelled)])
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.lease(c0, to: req(5))])
        #expect(pool.waitingCount == 0)
    }

    @Test func affinityIsPerKey() {
        var pool = makePool(cap: 2, borrowTimeout: .seconds(10), affinityWindow: window)
        let a0 = pool.leaseNew(req(1), key: keyA, loop: 0)
        _ = pool.leaseNew(req(2), key: keyB, loop: 0)
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 1, now: t(1))
        _ = pool.borrow(request: req(4), key: keyB, eventLoopIndex: 0, now: t(1))
        // A loop-0 waiter of another key does not count: keyA's only waiter gets it.
        #expect(pool.release(a0, reusable: true, now: t(1)) == [.lease(a0, to: req(3))])
    }
}
