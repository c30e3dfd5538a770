import ConnectionPool
import Testing

/// Event-loop affinity for waiters, bounded by `PoolLimits.affinityWindow`.
@Suite struct AffinityTests {
    let window: Duration = .milliseconds(100)

    @Test func limitsDefaultToTwentyMillisecondsAndKeepTheFourArgumentInit() {
        let limits = PoolLimits(maxConnections: 1, maxIdleConnections: 1, borrowTimeout: .seconds(1), idleTimeout: .seconds(1))
        #expect(limits.affinityWindow == .milliseconds(20))
        #expect(PoolLimits.defaultAffinityWindow == .milliseconds(20))
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

    @Test func aWaiterIsNotOvertakenByOneThatArrivedAWindowLater() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0)
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1)) == [])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1.01)) == [])
        #expect(pool.borrow(request: req(4), key: keyA, eventLoopIndex: 0, now: t(1.099)) == [])
        #expect(pool.borrow(request: req(5), key: keyA, eventLoopIndex: 0, now: t(1.1)) == [])
        // req(3) and req(4) arrived less than the window after req(2): they go first, on the
        // connection's loop, however long everybody has waited by then.
        #expect(pool.release(c0, reusable: true, now: t(5)) == [.lease(c0, to: req(3))])
        #expect(pool.release(c0, reusable: true, now: t(5)) == [.lease(c0, to: req(4))])
        // req(5) arrived exactly the window after req(2): req(2) is served first.
        #expect(pool.release(c0, reusable: true, now: t(5)) == [.lease(c0, to: req(2))])
        #expect(pool.release(c0, reusable: true, now: t(5)) == [.lease(c0, to: req(5))])
        #expect(pool.waitingCount == 0)
    }

    @Test func underSteadyOverloadConnectionsStayOnTheirLoop() {
        // Two loops, one connection each, waiters arriving on both loops faster than they are
        // served: every waiter waits far longer than the window, yet no hand-off crosses loops
        // while the two queues advance at the same pace.
        var pool = makePool(cap: 2, borrowTimeout: .seconds(100), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0, now: t(0))
        let c1 = pool.leaseNew(req(2), loop: 1, now: t(0))
        var next: UInt64 = 3
        var clock = 0.0
        for _ in 0..<50 {
            _ = pool.borrow(request: req(next), key: keyA, eventLoopIndex: 0, now: t(clock))
            _ = pool.borrow(request: req(next + 1), key: keyA, eventLoopIndex: 1, now: t(clock))
            next += 2
            clock += 0.001
        }
        var crossings = 0
        for round in 0..<50 {
            let now = t(1 + Double(round))
            for (connection, loop) in [(c0, 0), (c1, 1)] {
                let actions = pool.release(connection, reusable: true, now: now)
                guard case .lease(_, let request)? = actions.first else {
                    Issue.record("no lease")
                    return
                }
                // Waiters on loop 0 have odd ids, on loop 1 even ones.
                if (request.clientID % 2 == 1 ? 0 : 1) != loop { crossings += 1 }
            }
        }
        #expect(crossings == 0)
        #expect(pool.waitingCount == 0)
    }

    @Test func aLoopWithoutConnectionsIsServedOnceItFallsAWindowBehind() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100), affinityWindow: window)
        let c0 = pool.leaseNew(req(1), loop: 0, now: t(0))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1))
        for i in 0..<20 {
            _ = pool.borrow(request: req(10 + UInt64(i)), key: keyA, eventLoopIndex: 0, now: t(1 + 0.01 * Double(i)))
        }
        // Loop-0 waiters that arrived within 100 ms of req(2) (1.00 ... 1.09) go first: 10 of them.
        var served: [RequestID] = []
        for _ in 0..<11 {
            if case .lease(_, let request)? = pool.release(c0, reusable: true, now: t(10)).first { served.append(request) }
        }
        #expect(served == (0..<10).map { req(10 + UInt64($0)) } + [req(2)])
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
