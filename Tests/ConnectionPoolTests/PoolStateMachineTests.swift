@_spi(Testing) import ConnectionPool
import Testing

@Suite struct BorrowAndReleaseTests {
    @Test func borrowOpensLeasesAndReuses() {
        var pool = makePool()
        #expect(pool.borrow(request: req(1), key: keyA, eventLoopIndex: 2, now: t(0))
            == [.createConnection(conn(0), keyA, eventLoopIndex: 2), .scheduleTimer(at: t(10))])
        #expect(pool.stats.totals == PoolCounts(connecting: 1, waiting: 1))
        #expect(pool.connection(conn(0))?.state == .connecting)

        #expect(pool.connectionEstablished(conn(0), now: t(0.1)) == [.lease(conn(0), to: req(1))])
        #expect(pool.stats.perKey[keyA] == PoolCounts(leased: 1))
        #expect(pool.connection(conn(0))?.state == .leased(to: req(1)))

        #expect(pool.release(conn(0), reusable: true, now: t(1)) == [])
        #expect(pool.connection(conn(0))?.state == .idle(since: t(1)))
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(2)) == [.lease(conn(0), to: req(2))])
        #expect(pool.stats.totals == PoolCounts(leased: 1))
    }

    @Test func closeIdleConnectionsClosesOnlyIdleOnesAndServesWaitersWithNewOnes() {
        var pool = makePool(cap: 2)
        let c0 = pool.leaseNew(req(1))
        let c1 = pool.leaseNew(req(2))
        _ = pool.release(c1, reusable: true, now: t(0.5))  // c1 idle, c0 leased
        #expect(pool.stats.totals == PoolCounts(idle: 1, leased: 1))
        let actions = pool.closeIdleConnections(now: t(1))
        #expect(actions.closed == [c1])
        #expect(pool.stats.totals == PoolCounts(leased: 1, closing: 1))
        #expect(pool.connection(c1)?.state == .closing)
        // The leased one is the caller's to close on return; a new borrow opens a fresh one, once
        // a closed one is gone.
        #expect(pool.release(c0, reusable: false, now: t(1.5)).closed == [c0])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(2)).created.isEmpty)
        #expect(pool.connectionClosed(c1, now: t(2.5)).created.count == 1)
    }

    @Test func capIsRespectedUnderManyBorrowers() {
        var pool = makePool(cap: 3)
        var created: [ConnectionID] = []
        for i in 1...10 {
            let key = [keyA, keyB, keyC][i % 3]
            created += pool.borrow(request: req(UInt64(i)), key: key, eventLoopIndex: i % 4, now: t(0)).created
            #expect(pool.totalConnections <= 3)
        }
        #expect(created == [conn(0), conn(1), conn(2)])
        #expect(pool.stats.totals == PoolCounts(connecting: 3, waiting: 10))
        #expect(pool.waitingCount == 10)
        // Each connection goes to the oldest waiter of its key.
        #expect(pool.connectionEstablished(conn(0), now: t(1)) == [.lease(conn(0), to: req(1))])  // keyB
        #expect(pool.connectionEstablished(conn(1), now: t(1)) == [.lease(conn(1), to: req(2))])  // keyC
        #expect(pool.connectionEstablished(conn(2), now: t(1)) == [.lease(conn(2), to: req(3))])  // keyA
        #expect(pool.stats.totals == PoolCounts(leased: 3, waiting: 7))
        #expect(pool.stats.perKey[keyA] == PoolCounts(leased: 1, waiting: 2))
    }

    @Test func waitersAreServedInFIFOOrder() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        let c0 = pool.leaseNew(req(1))
        for i in 2...5 {
            #expect(pool.borrow(request: req(UInt64(i)), key: keyA, eventLoopIndex: i, now: t(Double(i))) == [])
        }
        for i in 2...5 {
            #expect(pool.release(c0, reusable: true, now: t(10)) == [.lease(c0, to: req(UInt64(i)))])
        }
        #expect(pool.waitingCount == 0)
    }

    /// Waiters live in reusable slots: a burst of them, cancelled in an order unlike arrival, then
    /// a second burst, still gets served oldest first with consistent indexes.
    @Test func waiterSlotsAreReusedAfterABurst() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        let c0 = pool.leaseNew(req(1))
        for round in 0..<2 {
            let base = UInt64(1000 * (round + 1))
            for i in 0..<400 {
                let actions = pool.borrow(request: req(base + UInt64(i)), key: i % 3 == 0 ? keyB : keyA,
                                          eventLoopIndex: i % 2, now: t(Double(i) / 100))
                #expect(actions.created.isEmpty && actions.failed.isEmpty)
            }
            #expect(pool.waiterIndexProblems().isEmpty)
            for i in stride(from: 399, through: 0, by: -2) {
                #expect(pool.cancel(request: req(base + UInt64(i)), now: t(5)) == [.failRequest(req(base + UInt64(i)), .cancelled)])
            }
            #expect(pool.waiterIndexProblems().isEmpty)
            #expect(pool.waitingCount == 200)
            for i in stride(from: 0, to: 399, by: 2) {
                #expect(pool.cancel(request: req(base + UInt64(i)), now: t(5)) == [.failRequest(req(base + UInt64(i)), .cancelled)])
            }
            #expect(pool.waiterIndexProblems().isEmpty)
            #expect(pool.waitingCount == 0)
        }
        // After the bursts, waiters are still served in arrival order.
        for i in 2...4 {
            #expect(pool.borrow(request: req(UInt64(i)), key: keyA, eventLoopIndex: i, now: t(20)) == [])
        }
        for i in 2...4 {
            #expect(pool.release(c0, reusable: true, now: t(21)) == [.lease(c0, to: req(UInt64(i)))])
        }
        #expect(pool.waiterIndexProblems().isEmpty)
    }

    /// Keys' records live in an array that is given back when the last key goes. Expiring,
    /// failing or shutting down the waiters of many keys at once drops every key in the middle
    /// of the walk over that array (which must not read past its new end), and keys that come
    /// later get fresh records.
    @Test(arguments: ["expire", "fail", "shutdown"])
    func waitersOfManyKeysAllGoAtOnce(how: String) {
        let keys = (0..<100).map { PoolKey(user: "user\($0)", database: "db") }
        // A cap of zero: every borrow waits.
        var pool = makePool(cap: 0, borrowTimeout: .seconds(10))
        for round in 0..<2 {
            let base = UInt64(round * 1_000)
            for (i, key) in keys.enumerated() {
                #expect(pool.borrow(request: req(base + UInt64(i)), key: key, eventLoopIndex: i % 3, now: t(Double(round * 100))).withoutTimers == [])
            }
            #expect(pool.stats.perKey.count == 100)
            #expect(pool.waiterIndexProblems().isEmpty)
            let gone: PoolActions
            switch how {
            case "expire": gone = pool.tick(now: t(Double(round * 100 + 10)))
            case "fail": gone = pool.updateLimits(makePool(cap: 0, borrowTimeout: .zero).limits, now: t(Double(round * 100 + 1)))
            default: gone = round == 0 ? pool.shutdown() : PoolActions()
            }
            if how == "shutdown", round == 1 { break }
            #expect(gone.failed == (0..<100).map { req(base + UInt64($0)) })
            #expect(pool.stats.perKey.isEmpty)
            #expect(pool.waitingCount == 0)
            #expect(pool.waiterIndexProblems().isEmpty)
            if how == "fail" { _ = pool.updateLimits(makePool(cap: 0, borrowTimeout: .seconds(10)).limits, now: t(Double(round * 100 + 2))) }
            if how == "shutdown" {
                #expect(pool.borrow(request: req(9_999), key: keyA, eventLoopIndex: 0, now: t(50)) == [.failRequest(req(9_999), .shuttingDown)])
                break
            }
        }
        guard how != "shutdown" else { return }
        // A key after all that gets a working record.
        _ = pool.updateLimits(makePool(cap: 1, borrowTimeout: .seconds(10)).limits, now: t(300))
        let created = pool.borrow(request: req(5_000), key: keyA, eventLoopIndex: 0, now: t(300)).created
        #expect(created.count == 1)
        #expect(pool.connectionEstablished(created[0], now: t(301)) == [.lease(created[0], to: req(5_000))])
        #expect(pool.stats.perKey == [keyA: PoolCounts(leased: 1)])
        #expect(pool.waiterIndexProblems().isEmpty)
    }

    @Test func freedSlotGoesToOldestWaiterAcrossKeys() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        let c0 = pool.leaseNew(req(1), key: keyA)
        #expect(pool.borrow(request: req(2), key: keyB, eventLoopIndex: 1, now: t(1)) == [])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(2)) == [])
        #expect(pool.borrow(request: req(4), key: keyB, eventLoopIndex: 3, now: t(3)) == [])
        // A connection only serves its own key: keyA's waiter, although keyB's is older.
        #expect(pool.release(c0, reusable: true, now: t(4)) == [.lease(c0, to: req(3))])
        // A freed slot goes to the oldest waiter overall, on its event loop (once it is free).
        #expect(pool.release(c0, reusable: false, now: t(5)) == [.closeConnection(c0)])
        #expect(pool.connectionClosed(c0, now: t(5.5)) == [.createConnection(conn(1), keyB, eventLoopIndex: 1)])
        #expect(pool.connectionEstablished(conn(1), now: t(6)) == [.lease(conn(1), to: req(2))])
        #expect(pool.release(conn(1), reusable: true, now: t(7)) == [.lease(conn(1), to: req(4))])
    }

    @Test func leasePrefersSameEventLoopThenMostRecentlyUsed() {
        var pool = makePool()
        let c0 = pool.leaseNew(req(1), loop: 0)
        let c1 = pool.leaseNew(req(2), loop: 1)
        let c2 = pool.leaseNew(req(3), loop: 1)
        let c3 = pool.leaseNew(req(4), loop: 2)
        let b0 = pool.leaseNew(req(5), key: keyB, loop: 3)
        _ = pool.release(c0, reusable: true, now: t(1))
        _ = pool.release(c1, reusable: true, now: t(2))
        _ = pool.release(c2, reusable: true, now: t(3))
        _ = pool.release(c3, reusable: true, now: t(4))
        _ = pool.release(b0, reusable: true, now: t(5))
        // Same loop, most recent there.
        #expect(pool.borrow(request: req(10), key: keyA, eventLoopIndex: 1, now: t(6)) == [.lease(c2, to: req(10))])
        #expect(pool.borrow(request: req(11), key: keyA, eventLoopIndex: 0, now: t(6)) == [.lease(c0, to: req(11))])
        // No idle of keyA on loop 3 (keyB's does not count): the most recently used of keyA.
        #expect(pool.borrow(request: req(12), key: keyA, eventLoopIndex: 3, now: t(6)) == [.lease(c3, to: req(12))])
        #expect(pool.borrow(request: req(13), key: keyA, eventLoopIndex: 3, now: t(6)) == [.lease(c1, to: req(13))])
        #expect(pool.stats.perKey[keyB] == PoolCounts(idle: 1))
    }

    @Test func releaseHandsToWaiterWithoutNewConnection() {
        var pool = makePool(cap: 1)
        let c0 = pool.leaseNew(req(1))
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1)) == [])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.lease(c0, to: req(2))])
        #expect(pool.stats.totals == PoolCounts(leased: 1))
    }

    @Test func releasedConnectionServesOldestWaiterAndInFlightOneParks() {
        var pool = makePool(cap: 2)
        let c0 = pool.leaseNew(req(1))
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1)).created == [conn(1)])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.lease(c0, to: req(2))])
        #expect(pool.connectionEstablished(conn(1), now: t(3)) == [])
        #expect(pool.stats.totals == PoolCounts(idle: 1, leased: 1))
    }

    @Test func duplicateWaitingRequestIsIgnored() {
        var pool = makePool(cap: 1)
        _ = pool.leaseNew(req(1))
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1)) == [])
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1)) == [])
        #expect(pool.waitingCount == 1)
    }
}

@Suite struct CrossKeyTests {
    @Test func borrowAtCapStealsLeastRecentlyUsedIdleOfAnotherKey() {
        var pool = makePool(cap: 2)
        let c0 = pool.leaseNew(req(1))
        let c1 = pool.leaseNew(req(2))
        _ = pool.release(c0, reusable: true, now: t(1))
        _ = pool.release(c1, reusable: true, now: t(2))
        #expect(pool.borrow(request: req(3), key: keyB, eventLoopIndex: 1, now: t(3)) == [.closeConnection(c0)])
        #expect(pool.totalConnections == 2)
        #expect(pool.connection(conn(2))?.state == .awaitingSlot(freedBy: c0))
        #expect(pool.connectionClosed(c0, now: t(3.5)) == [.createConnection(conn(2), keyB, eventLoopIndex: 1)])
        #expect(pool.connectionEstablished(conn(2), now: t(4)) == [.lease(conn(2), to: req(3))])
    }

    @Test func releaseAtCapServesWaiterOfAnotherKey() {
        var pool = makePool(cap: 1)
        let c0 = pool.leaseNew(req(1), key: keyA)
        #expect(pool.borrow(request: req(2), key: keyB, eventLoopIndex: 2, now: t(1)) == [])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.closeConnection(c0)])
        #expect(pool.connectionClosed(c0, now: t(2.5)) == [.createConnection(conn(1), keyB, eventLoopIndex: 2)])
        #expect(pool.connectionEstablished(conn(1), now: t(3)) == [.lease(conn(1), to: req(2))])
    }

    @Test func releaseDoesNotStealForCoveredWaiters() {
        var pool = makePool(cap: 2)
        let c0 = pool.leaseNew(req(1), key: keyA)
        #expect(pool.borrow(request: req(2), key: keyB, eventLoopIndex: 0, now: t(1)).created == [conn(1)])
        // keyB's waiter is covered by conn(1): the keyA connection parks.
        #expect(pool.release(c0, reusable: true, now: t(2)) == [])
        #expect(pool.stats.totals == PoolCounts(connecting: 1, idle: 1, waiting: 1))
    }
}

@Suite struct TimeoutTests {
    @Test func expiresExactlyTheExpiredWaitersAndRearms() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10))
        let first = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
        #expect(first.timers == [t(10)])
        let c0 = first.created[0]
        _ = pool.connectionEstablished(c0, now: t(0))
        // Later deadlines than the armed timer: no new timer.
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1)) == [])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(2)) == [])
        #expect(pool.borrow(request: req(4), key: keyA, eventLoopIndex: 0, now: t(5)) == [])
        #expect(pool.tick(now: t(9.999)) == [])
        #expect(pool.tick(now: t(10)) == [.scheduleTimer(at: t(11))])
        #expect(pool.tick(now: t(10.999)) == [])
        #expect(pool.tick(now: t(11)) == [.failRequest(req(2), .timeout), .scheduleTimer(at: t(12))])
        #expect(pool.tick(now: t(11.5)) == [])
        #expect(pool.tick(now: t(12)) == [.failRequest(req(3), .timeout), .scheduleTimer(at: t(15))])
        #expect(pool.waitingCount == 1)
        #expect(pool.release(c0, reusable: true, now: t(13)) == [.lease(c0, to: req(4))])
        #expect(pool.tick(now: t(15)) == [])
        #expect(pool.scheduledTimer == nil)
    }

    @Test func lateTickExpiresAllOverdueOldestFirst() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(10))
        _ = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyB, eventLoopIndex: 0, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(2))
        _ = pool.borrow(request: req(4), key: keyC, eventLoopIndex: 0, now: t(3))
        _ = pool.borrow(request: req(5), key: keyA, eventLoopIndex: 0, now: t(30))
        #expect(pool.tick(now: t(20)) == [
            .failRequest(req(2), .timeout), .failRequest(req(3), .timeout), .failRequest(req(4), .timeout),
            .scheduleTimer(at: t(40)),
        ])
        #expect(pool.isWaiting(req(5)))
    }

    @Test func newEarlierDeadlineArmsTimer() {
        var pool = makePool(cap: 1, maxIdle: 0, borrowTimeout: .seconds(10), idleTimeout: .seconds(60))
        let c0 = pool.leaseNew(req(1))
        #expect(pool.tick(now: t(10)) == [])  // the first borrow's timer: nothing left to time
        #expect(pool.scheduledTimer == nil)
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(11)) == [.scheduleTimer(at: t(21))])
        #expect(pool.release(c0, reusable: true, now: t(12)) == [.lease(c0, to: req(2))])
        #expect(pool.tick(now: t(21)) == [])
        // Release into idle above maxIdle arms the idle timer.
        #expect(pool.release(c0, reusable: true, now: t(22)) == [.scheduleTimer(at: t(82))])
        #expect(pool.tick(now: t(82)) == [.closeConnection(c0)])
    }

    @Test func zeroBorrowTimeoutFailsAtCapButWaitsForCreation() {
        var pool = makePool(cap: 1, borrowTimeout: .zero)
        #expect(pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
            == [.createConnection(conn(0), keyA, eventLoopIndex: 0)])
        #expect(pool.tick(now: t(100)) == [])
        #expect(pool.isWaiting(req(1)))
        #expect(pool.connectionEstablished(conn(0), now: t(100)) == [.lease(conn(0), to: req(1))])
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(101)) == [.failRequest(req(2), .timeout)])
        #expect(pool.waitingCount == 0)
        // At the cap with an idle connection of another key: steal rather than fail.
        _ = pool.release(conn(0), reusable: true, now: t(102))
        #expect(pool.borrow(request: req(3), key: keyB, eventLoopIndex: 0, now: t(103)) == [.closeConnection(conn(0))])
        #expect(pool.connectionClosed(conn(0), now: t(104)) == [.createConnection(conn(1), keyB, eventLoopIndex: 0)])
    }

    @Test func updatingBorrowTimeoutAppliesToWaiters() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        _ = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(8))
        var limits = pool.limits
        limits.borrowTimeout = .seconds(5)
        #expect(pool.updateLimits(limits, now: t(9))
            == [.failRequest(req(2), .timeout), .scheduleTimer(at: t(13))])
        limits.borrowTimeout = .zero
        #expect(pool.updateLimits(limits, now: t(10)) == [.failRequest(req(3), .timeout)])
    }
}

@Suite struct ConnectionFailureTests {
    let failure = ConnectionFailure(code: "28P01", message: "password authentication failed")

    @Test func singleWaiterFailsWithTheError() {
        var pool = makePool()
        _ = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
        #expect(pool.connectionFailed(conn(0), error: failure, now: t(1)) == [.failRequest(req(1), .connectionFailed(failure))])
        #expect(pool.stats.totals == PoolCounts())
        #expect(pool.stats.perKey.isEmpty)
    }

    @Test func oneWaiterFailsPerFailedAttempt() {
        var pool = makePool(cap: 2, borrowTimeout: .seconds(100))
        #expect(pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0)).created == [conn(0)])
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(0)).created == [conn(1)])
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 2, now: t(0)) == [])
        #expect(pool.borrow(request: req(4), key: keyA, eventLoopIndex: 3, now: t(0)) == [])
        // req(1) stays covered by conn(1); the oldest uncovered one fails; the slot serves req(3).
        #expect(pool.connectionFailed(conn(0), error: failure, now: t(1))
            == [.failRequest(req(2), .connectionFailed(failure)), .createConnection(conn(2), keyA, eventLoopIndex: 2)])
        #expect(pool.connectionFailed(conn(1), error: failure, now: t(2))
            == [.failRequest(req(3), .connectionFailed(failure)), .createConnection(conn(3), keyA, eventLoopIndex: 3)])
        #expect(pool.connectionFailed(conn(2), error: failure, now: t(3)) == [.failRequest(req(4), .connectionFailed(failure))])
        #expect(pool.connectionFailed(conn(3), error: failure, now: t(4)) == [.failRequest(req(1), .connectionFailed(failure))])
        #expect(pool.stats.totals == PoolCounts())
    }

    @Test func failureWithoutUncoveredWaiterFailsNobody() {
        var pool = makePool(cap: 3)
        _ = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(0))
        _ = pool.cancel(request: req(2), now: t(0))
        // req(1) is covered by conn(1).
        #expect(pool.connectionFailed(conn(0), error: failure, now: t(1)) == [])
        #expect(pool.connectionEstablished(conn(1), now: t(1)) == [.lease(conn(1), to: req(1))])
    }

    @Test func closedWhileConnectingCountsAsFailure() {
        var pool = makePool()
        _ = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
        #expect(pool.connectionClosed(conn(0), now: t(1))
            == [.failRequest(req(1), .connectionFailed(ConnectionFailure(message: "connection closed during startup")))])
    }

    @Test func closedConnectionFreesSlotForWaiter() {
        var pool = makePool(cap: 1)
        let c0 = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyB, eventLoopIndex: 4, now: t(1))
        #expect(pool.connectionClosed(c0, now: t(2)) == [.createConnection(conn(1), keyB, eventLoopIndex: 4)])
        #expect(pool.connectionClosed(c0, now: t(2)) == [])  // already gone
    }
}

@Suite struct IdleTrimmingTests {
    @Test func closesIdleAboveMaxIdleAfterIdleTimeoutOldestFirst() {
        var pool = makePool(cap: 5, maxIdle: 1, borrowTimeout: .seconds(10), idleTimeout: .seconds(60))
        let c0 = pool.leaseNew(req(1))
        let c1 = pool.leaseNew(req(2))
        let c2 = pool.leaseNew(req(3))
        #expect(pool.release(c0, reusable: true, now: t(0)) == [])
        #expect(pool.release(c1, reusable: true, now: t(1)) == [])  // timer at 10 already armed
        #expect(pool.release(c2, reusable: true, now: t(2)) == [])
        #expect(pool.tick(now: t(10)) == [.scheduleTimer(at: t(60))])
        #expect(pool.tick(now: t(59.9)) == [])
        #expect(pool.tick(now: t(60)) == [.closeConnection(c0), .scheduleTimer(at: t(61))])
        #expect(pool.tick(now: t(61)) == [.closeConnection(c1)])
        // Down to maxIdle: kept however long it idles.
        #expect(pool.tick(now: t(10_000)) == [])
        #expect(pool.stats.totals == PoolCounts(idle: 1, closing: 2))
        _ = pool.connectionClosed(c0, now: t(10_001))
        _ = pool.connectionClosed(c1, now: t(10_001))
        #expect(pool.stats.totals == PoolCounts(idle: 1))
        #expect(pool.connection(c2)?.state == .idle(since: t(2)))
    }

    @Test func reuseRestartsIdleClock() {
        var pool = makePool(cap: 5, maxIdle: 0, borrowTimeout: .seconds(1), idleTimeout: .seconds(60))
        let c0 = pool.leaseNew(req(1))
        _ = pool.tick(now: t(1))
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.scheduleTimer(at: t(62))])
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(30)) == [.lease(c0, to: req(2))])
        #expect(pool.release(c0, reusable: true, now: t(40)) == [])
        #expect(pool.tick(now: t(62)) == [.scheduleTimer(at: t(100))])
        #expect(pool.tick(now: t(100)) == [.closeConnection(c0)])
    }

    @Test func zeroIdleTimeoutClosesSurplusRightAway() {
        var pool = makePool(maxIdle: 0, idleTimeout: .zero)
        let c0 = pool.leaseNew(req(1))
        #expect(pool.release(c0, reusable: true, now: t(1)) == [.closeConnection(c0)])
        #expect(pool.totalConnections == 1)  // until reported closed
        #expect(pool.connectionClosed(c0, now: t(2)) == [])
        #expect(pool.totalConnections == 0)
    }
}

@Suite struct LimitChangeTests {
    @Test func loweringCapDrainsLeasedAsReleasedWithoutFailingAnyone() {
        var pool = makePool(cap: 4)
        let ids = (1...4).map { pool.leaseNew(req(UInt64($0))) }
        var limits = pool.limits
        limits.maxConnections = 2
        #expect(pool.updateLimits(limits, now: t(1)) == [])
        #expect(pool.totalConnections == 4)
        #expect(pool.release(ids[0], reusable: true, now: t(2)) == [.closeConnection(ids[0])])
        #expect(pool.release(ids[1], reusable: true, now: t(3)) == [.closeConnection(ids[1])])
        // The two closing ones are on their way out: this one is within the cap.
        #expect(pool.release(ids[2], reusable: true, now: t(4)) == [])
        #expect(pool.stats.totals == PoolCounts(idle: 1, leased: 1, closing: 2))
    }

    @Test func loweringCapWithWaitersServesThemOnceBelowCap() {
        var pool = makePool(cap: 2, borrowTimeout: .seconds(100))
        let c0 = pool.leaseNew(req(1))
        let c1 = pool.leaseNew(req(2))
        #expect(pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(1)) == [])
        var limits = pool.limits
        limits.maxConnections = 1
        #expect(pool.updateLimits(limits, now: t(2)) == [])
        #expect(pool.release(c0, reusable: true, now: t(3)) == [.closeConnection(c0)])
        #expect(pool.isWaiting(req(3)))
        #expect(pool.release(c1, reusable: true, now: t(4)) == [.lease(c1, to: req(3))])
    }

    @Test func loweringCapClosesIdleSurplusRightAway() {
        var pool = makePool(cap: 4)
        let ids = (1...4).map { pool.leaseNew(req(UInt64($0))) }
        _ = pool.release(ids[1], reusable: true, now: t(1))
        _ = pool.release(ids[0], reusable: true, now: t(2))
        var limits = pool.limits
        limits.maxConnections = 1
        #expect(pool.updateLimits(limits, now: t(3)) == [.closeConnection(ids[1]), .closeConnection(ids[0])])
        #expect(pool.stats.totals == PoolCounts(leased: 2, closing: 2))
    }

    @Test func establishedConnectionOverLoweredCapIsClosed() {
        var pool = makePool(cap: 2, borrowTimeout: .seconds(100))
        _ = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1))
        var limits = pool.limits
        limits.maxConnections = 1
        _ = pool.updateLimits(limits, now: t(1))
        #expect(pool.connectionEstablished(conn(1), now: t(2)) == [.closeConnection(conn(1))])
        #expect(pool.isWaiting(req(2)))
    }

    @Test func raisingCapServesWaiters() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        _ = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(1))
        _ = pool.borrow(request: req(3), key: keyB, eventLoopIndex: 2, now: t(2))
        _ = pool.borrow(request: req(4), key: keyC, eventLoopIndex: 3, now: t(3))
        var limits = pool.limits
        limits.maxConnections = 3
        #expect(pool.updateLimits(limits, now: t(4)) == [
            .createConnection(conn(1), keyA, eventLoopIndex: 1), .createConnection(conn(2), keyB, eventLoopIndex: 2),
        ])
        #expect(pool.connectionEstablished(conn(2), now: t(5)) == [.lease(conn(2), to: req(3))])
        #expect(pool.isWaiting(req(4)))
    }

    @Test func zeroCapBootstrapThenRealCap() {
        var pool = makePool(cap: 0)
        #expect(pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0)) == [.scheduleTimer(at: t(10))])
        var limits = pool.limits
        limits.maxConnections = 50
        #expect(pool.updateLimits(limits, now: t(1)) == [.createConnection(conn(0), keyA, eventLoopIndex: 0)])
    }
}

@Suite struct CancelAndShutdownTests {
    @Test func cancelRemovesWaiter() {
        var pool = makePool(cap: 1)
        let c0 = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(1))
        _ = pool.borrow(request: req(3), key: keyA, eventLoopIndex: 0, now: t(2))
        #expect(pool.cancel(request: req(2), now: t(3)) == [.failRequest(req(2), .cancelled)])
        #expect(pool.cancel(request: req(2), now: t(3)) == [])
        #expect(pool.cancel(request: req(1), now: t(3)) == [])  // leased, not waiting
        #expect(pool.release(c0, reusable: true, now: t(4)) == [.lease(c0, to: req(3))])
    }

    @Test func cancelledCoveredWaiterLeavesConnectionIdle() {
        var pool = makePool()
        _ = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
        #expect(pool.cancel(request: req(1), now: t(1)) == [.failRequest(req(1), .cancelled)])
        #expect(pool.connectionEstablished(conn(0), now: t(2)) == [])
        #expect(pool.stats.totals == PoolCounts(idle: 1))
    }

    @Test func shutdownClosesIdleFailsWaitersAndDrains() {
        var pool = makePool(cap: 4)
        let c0 = pool.leaseNew(req(1))
        let c1 = pool.leaseNew(req(2))
        _ = pool.release(c1, reusable: true, now: t(1))
        #expect(pool.borrow(request: req(3), key: keyB, eventLoopIndex: 0, now: t(2)).created == [conn(2)])
        #expect(pool.borrow(request: req(4), key: keyC, eventLoopIndex: 0, now: t(3)).created == [conn(3)])
        #expect(pool.shutdown() == [
            .failRequest(req(3), .shuttingDown), .failRequest(req(4), .shuttingDown), .closeConnection(c1),
        ])
        #expect(pool.isShuttingDown && !pool.isDrained)
        #expect(pool.borrow(request: req(5), key: keyA, eventLoopIndex: 0, now: t(4)) == [.failRequest(req(5), .shuttingDown)])
        #expect(pool.connectionEstablished(conn(2), now: t(5)) == [.closeConnection(conn(2))])
        #expect(pool.connectionFailed(conn(3), error: ConnectionFailure(message: "refused"), now: t(5)) == [])
        #expect(pool.tick(now: t(100)) == [])
        #expect(pool.release(c0, reusable: true, now: t(6)) == [.closeConnection(c0)])
        // Drained once every connection closed is reported closed.
        #expect(pool.connectionClosed(c1, now: t(7)) == [])
        #expect(pool.connectionClosed(conn(2), now: t(7)) == [])
        #expect(!pool.isDrained)
        #expect(pool.connectionClosed(c0, now: t(7)) == [.shutdownComplete])
        #expect(pool.isDrained)
        #expect(pool.shutdown() == [])
        #expect(pool.stats.totals == PoolCounts())
    }

    @Test func shutdownOfEmptyPoolCompletesAtOnce() {
        var pool = makePool()
        #expect(pool.shutdown() == [.shutdownComplete])
        #expect(pool.isDrained)
    }

    @Test func shutdownDrainsThroughFailuresAndCloses() {
        var pool = makePool()
        let c0 = pool.leaseNew(req(1))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(0))
        #expect(pool.shutdown() == [.failRequest(req(2), .shuttingDown)])
        #expect(pool.connectionFailed(conn(1), error: ConnectionFailure(message: "x"), now: t(1)) == [])
        #expect(pool.connectionClosed(c0, now: t(2)) == [.shutdownComplete])
    }

    @Test func establishedConnectionGoesToOldestWaiterNotItsRequester() {
        var pool = makePool()
        _ = pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(0))
        _ = pool.borrow(request: req(2), key: keyA, eventLoopIndex: 1, now: t(0))
        #expect(pool.connectionEstablished(conn(1), now: t(1)) == [.lease(conn(1), to: req(1))])
        _ = pool.shutdown()  // fails req(2)
        #expect(pool.connectionFailed(conn(0), error: ConnectionFailure(message: "x"), now: t(1)) == [])
        #expect(pool.connectionClosed(conn(1), now: t(2)) == [.shutdownComplete])
    }

    @Test func unknownIdsAreIgnored() {
        var pool = makePool()
        let c0 = pool.leaseNew(req(1))
        #expect(pool.release(conn(42), reusable: true, now: t(1)) == [])
        #expect(pool.connectionEstablished(conn(42), now: t(1)) == [])
        #expect(pool.connectionFailed(conn(42), error: ConnectionFailure(message: "x"), now: t(1)) == [])
        #expect(pool.connectionClosed(conn(42), now: t(1)) == [])
        #expect(pool.cancel(request: req(42), now: t(1)) == [])
        // Known ids in the wrong state.
        #expect(pool.connectionEstablished(c0, now: t(1)) == [])
        _ = pool.release(c0, reusable: true, now: t(2))
        #expect(pool.release(c0, reusable: true, now: t(3)) == [])
        #expect(pool.stats.totals == PoolCounts(idle: 1))
    }
}

@Suite struct ValueTypeTests {
    @Test func actionsStoreInlineThenGrow() {
        var actions = PoolActions()
        #expect(actions.isEmpty)
        actions.append(.closeConnection(conn(1)))
        actions.append(.closeConnection(conn(2)))
        #expect(actions == [.closeConnection(conn(1)), .closeConnection(conn(2))])
        actions.append(.shutdownComplete)
        actions.append(.scheduleTimer(at: t(1)))
        #expect(actions.count == 4)
        #expect(actions[2] == .shutdownComplete)
        #expect(Array(actions) == [.closeConnection(conn(1)), .closeConnection(conn(2)), .shutdownComplete, .scheduleTimer(at: t(1))])
        #expect(actions != [.closeConnection(conn(1))])
    }

    @Test func instantArithmeticSaturates() {
        #expect(t(1) + .milliseconds(500) == t(1.5))
        #expect(t(1) + .seconds(-5) == t(1))
        #expect(PoolInstant(nanoseconds: .max - 1) + .seconds(1) == .distantFuture)
        #expect(t(3) - t(1) == .seconds(2))
        #expect(t(1) - t(3) == .seconds(-2))
    }

    @Test func hugeBorrowTimeoutArmsNoTimer() {
        var pool = makePool(cap: 0, borrowTimeout: .seconds(Int64.max))
        #expect(pool.borrow(request: req(1), key: keyA, eventLoopIndex: 0, now: t(1)) == [])
        #expect(pool.tick(now: t(1_000_000)) == [])
        #expect(pool.isWaiting(req(1)))
    }
}

/// A connection the machine asks to close keeps its slot until the runtime reports it gone
/// (`connectionClosed`): PostgreSQL ends the backend session only then, and an open started
/// earlier would briefly give the database cap + 1 sessions (the flaky
/// `test_pools_per_database_share_one_cap`).
@Suite struct ClosingConnectionTests {
    /// Three idle connections of keyA fill the cap.
    func fullOfIdleA(cap: Int = 3, borrowTimeout: Duration = .seconds(10)) -> (PoolStateMachine, [ConnectionID]) {
        var pool = makePool(cap: cap, borrowTimeout: borrowTimeout)
        let ids = (1...cap).map { pool.leaseNew(req(UInt64($0))) }
        for (index, id) in ids.enumerated() { _ = pool.release(id, reusable: true, now: t(Double(index + 1))) }
        return (pool, ids)
    }

    @Test func anotherKeyOpensOnlyOnceTheStolenConnectionIsClosed() {
        var (pool, ids) = fullOfIdleA()
        // The least recently used idle one is closed for keyB; no open yet.
        #expect(pool.borrow(request: req(10), key: keyB, eventLoopIndex: 1, now: t(10)).withoutTimers
            == [.closeConnection(ids[0])])
        #expect(pool.isWaiting(req(10)))
        // Other events in between open nothing either.
        #expect(pool.tick(now: t(11)).created.isEmpty)
        #expect(pool.release(conn(99), reusable: true, now: t(11)) == [])
        // Gone: the open for keyB starts, in the slot it leaves.
        #expect(pool.connectionClosed(ids[0], now: t(12)) == [.createConnection(conn(3), keyB, eventLoopIndex: 1)])
        #expect(pool.connectionEstablished(conn(3), now: t(13)) == [.lease(conn(3), to: req(10))])
        #expect(pool.connectionClosed(ids[0], now: t(14)) == [])  // reported twice: harmless
        #expect(pool.stats.totals == PoolCounts(idle: 2, leased: 1))
    }

    @Test func aClosingConnectionCountsAgainstTheCapForEveryKey() {
        var (pool, ids) = fullOfIdleA()
        _ = pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(10))
        // keyC: the next least recently used keyA connection is stolen, and keyC waits for it.
        #expect(pool.borrow(request: req(11), key: keyC, eventLoopIndex: 2, now: t(11)).withoutTimers
            == [.closeConnection(ids[1])])
        #expect(pool.totalConnections == 3)
        // The closes end in any order; each starts the open it made room for.
        #expect(pool.connectionClosed(ids[1], now: t(12)) == [.createConnection(conn(4), keyC, eventLoopIndex: 2)])
        #expect(pool.connectionClosed(ids[0], now: t(13)) == [.createConnection(conn(3), keyB, eventLoopIndex: 0)])
        #expect(pool.totalConnections == 3)
    }

    @Test func closeIdleConnectionsHoldsTheSlotsUntilClosed() {
        var (pool, ids) = fullOfIdleA()
        #expect(pool.closeIdleConnections(now: t(10)).closed == ids)
        #expect(pool.totalConnections == 3)
        // A borrow of any key waits for one of them to be gone (and is covered meanwhile).
        #expect(pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(11)).withoutTimers == [])
        #expect(pool.borrow(request: req(11), key: keyA, eventLoopIndex: 0, now: t(11)).withoutTimers == [])
        #expect(pool.connectionClosed(ids[0], now: t(12)) == [.createConnection(conn(3), keyB, eventLoopIndex: 0)])
        #expect(pool.connectionClosed(ids[1], now: t(12)) == [.createConnection(conn(4), keyA, eventLoopIndex: 0)])
        // Nobody else waits: the last slot is simply free.
        #expect(pool.connectionClosed(ids[2], now: t(12)) == [])
        #expect(pool.totalConnections == 2)
    }

    @Test func aConnectionReleasedAsNotReusableHoldsItsSlotUntilClosed() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        let c0 = pool.leaseNew(req(1), key: keyA)
        #expect(pool.borrow(request: req(2), key: keyB, eventLoopIndex: 1, now: t(1)) == [])
        #expect(pool.release(c0, reusable: false, now: t(2)) == [.closeConnection(c0)])
        #expect(pool.connectionClosed(c0, now: t(3)) == [.createConnection(conn(1), keyB, eventLoopIndex: 1)])
    }

    @Test func aConnectionClosedForAnotherKeysWaiterHoldsItsSlotUntilClosed() {
        var pool = makePool(cap: 1, borrowTimeout: .seconds(100))
        let c0 = pool.leaseNew(req(1), key: keyA)
        #expect(pool.borrow(request: req(2), key: keyB, eventLoopIndex: 2, now: t(1)) == [])
        #expect(pool.release(c0, reusable: true, now: t(2)) == [.closeConnection(c0)])
        #expect(pool.connectionClosed(c0, now: t(3)) == [.createConnection(conn(1), keyB, eventLoopIndex: 2)])
    }

    @Test func idleTrimmedConnectionHoldsItsSlotUntilClosed() {
        var pool = makePool(cap: 1, maxIdle: 0, borrowTimeout: .seconds(100), idleTimeout: .seconds(5))
        let c0 = pool.leaseNew(req(1))
        _ = pool.release(c0, reusable: true, now: t(1))
        #expect(pool.tick(now: t(6)) == [.closeConnection(c0)])
        #expect(pool.borrow(request: req(2), key: keyA, eventLoopIndex: 0, now: t(7)).withoutTimers == [])
        #expect(pool.connectionClosed(c0, now: t(8)) == [.createConnection(conn(1), keyA, eventLoopIndex: 0)])
    }

    @Test func aClosingConnectionIsNeverLeased() {
        var (pool, ids) = fullOfIdleA()
        _ = pool.closeIdleConnections(now: t(10))
        // keyA's borrower does not get any of its closing connections.
        let actions = pool.borrow(request: req(10), key: keyA, eventLoopIndex: 0, now: t(11))
        #expect(!actions.contains { if case .lease = $0 { return true } else { return false } })
        // Nor do events in the wrong state bring one back.
        #expect(pool.release(ids[1], reusable: true, now: t(12)) == [])
        #expect(pool.connectionEstablished(ids[1], now: t(12)) == [])
        #expect(pool.isWaiting(req(10)))
        #expect(pool.connectionClosed(ids[0], now: t(13)) == [.createConnection(conn(3), keyA, eventLoopIndex: 0)])
        #expect(pool.connectionEstablished(conn(3), now: t(14)) == [.lease(conn(3), to: req(10))])
    }

    @Test func zeroBorrowTimeoutWaitsForASlotBeingFreed() {
        var (pool, ids) = fullOfIdleA(borrowTimeout: .zero)
        // The slot is coming: the borrower waits for it rather than failing with a timeout.
        #expect(pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(10)) == [.closeConnection(ids[0])])
        #expect(pool.isWaiting(req(10)))
        #expect(pool.connectionClosed(ids[0], now: t(11)) == [.createConnection(conn(3), keyB, eventLoopIndex: 0)])
    }

    @Test func connectionClosedForAnUnknownIdIsHarmless() {
        var (pool, ids) = fullOfIdleA()
        #expect(pool.connectionClosed(conn(42), now: t(10)) == [])
        #expect(pool.connectionFailed(conn(42), error: ConnectionFailure(message: "x"), now: t(10)) == [])
        _ = pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(10))
        // The id of the open waiting for the slot is not known to the runtime yet: reports of it
        // change nothing.
        #expect(pool.connectionClosed(conn(3), now: t(11)) == [])
        #expect(pool.connectionEstablished(conn(3), now: t(11)) == [])
        #expect(pool.totalConnections == 3)
        #expect(pool.connectionClosed(ids[0], now: t(12)) == [.createConnection(conn(3), keyB, eventLoopIndex: 0)])
    }

    @Test func closeReportedAsAFailureCountsAsClosed() {
        var (pool, ids) = fullOfIdleA()
        _ = pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(10))
        #expect(pool.connectionFailed(ids[0], error: ConnectionFailure(message: "reset"), now: t(11))
            == [.createConnection(conn(3), keyB, eventLoopIndex: 0)])
    }

    @Test func cancelledWaiterLeavesTheOpenToParkIdle() {
        var (pool, ids) = fullOfIdleA()
        _ = pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(10))
        #expect(pool.cancel(request: req(10), now: t(11)) == [.failRequest(req(10), .cancelled)])
        // The open still starts (as one already under way would), and parks.
        #expect(pool.connectionClosed(ids[0], now: t(12)) == [.createConnection(conn(3), keyB, eventLoopIndex: 0)])
        #expect(pool.connectionEstablished(conn(3), now: t(13)) == [])
        #expect(pool.stats.perKey[keyB] == PoolCounts(idle: 1))
    }

    @Test func shutdownCompletesOnlyOnceClosingConnectionsAreGone() {
        var (pool, ids) = fullOfIdleA()
        #expect(pool.shutdown() == [.closeConnection(ids[0]), .closeConnection(ids[1]), .closeConnection(ids[2])])
        #expect(!pool.isDrained)
        #expect(pool.connectionClosed(ids[0], now: t(10)) == [])
        #expect(pool.connectionClosed(ids[2], now: t(10)) == [])
        #expect(pool.connectionClosed(ids[1], now: t(10)) == [.shutdownComplete])
        #expect(pool.isDrained)
        #expect(pool.connectionClosed(ids[1], now: t(10)) == [])
    }

    @Test func shutdownWhileAnOpenWaitsForASlotDropsTheOpen() {
        var (pool, ids) = fullOfIdleA()
        _ = pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(10))
        #expect(pool.shutdown() == [
            .failRequest(req(10), .shuttingDown), .closeConnection(ids[1]), .closeConnection(ids[2]),
        ])
        // The stolen connection's close ends: no open starts for a pool shutting down.
        #expect(pool.connectionClosed(ids[0], now: t(11)) == [])
        #expect(pool.connectionClosed(ids[1], now: t(11)) == [])
        #expect(pool.connectionClosed(ids[2], now: t(11)) == [.shutdownComplete])
    }

    @Test func loweredCapCountsClosingSurplusOnce() {
        var pool = makePool(cap: 4, borrowTimeout: .seconds(100))
        let ids = (1...4).map { pool.leaseNew(req(UInt64($0))) }
        _ = pool.release(ids[0], reusable: true, now: t(1))
        _ = pool.release(ids[1], reusable: true, now: t(2))
        var limits = pool.limits
        limits.maxConnections = 2
        // Two idle closed: the two leased ones are within the new cap, and stay so when released
        // while the two others are still closing.
        #expect(pool.updateLimits(limits, now: t(3)) == [.closeConnection(ids[0]), .closeConnection(ids[1])])
        #expect(pool.release(ids[2], reusable: true, now: t(4)) == [])
        #expect(pool.stats.totals.idle == 1)
        // A borrow of another key waits: the cap is exceeded until both closes end.
        #expect(pool.borrow(request: req(10), key: keyB, eventLoopIndex: 0, now: t(5)).withoutTimers == [])
        #expect(pool.connectionClosed(ids[0], now: t(6)) == [])
        #expect(pool.connectionClosed(ids[1], now: t(7)).withoutTimers == [.closeConnection(ids[2])])
        #expect(pool.connectionClosed(ids[2], now: t(8)) == [.createConnection(conn(4), keyB, eventLoopIndex: 0)])
    }
}
