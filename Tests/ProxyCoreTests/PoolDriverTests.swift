import ConnectionPool
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ProxyCore
import Testing

/// A connection of no engine: records what the driver asks of it.
private final class FakeConnection: PooledConnection, @unchecked Sendable {
    let id: ConnectionID
    let eventLoop: any EventLoop
    let generation: Int
    weak var pool: PoolDriver<FakeConnection>?
    /// A close is reported by the test (as a socket's close completes later), not at once.
    let reportsCloseLater: Bool
    private let calls = NIOLockedValueBox<[String]>([])
    var recorded: [String] { calls.withLockedValue { $0 } }

    init(id: ConnectionID, eventLoop: any EventLoop, generation: Int, pool: PoolDriver<FakeConnection>, reportsCloseLater: Bool) {
        self.id = id
        self.eventLoop = eventLoop
        self.generation = generation
        self.pool = pool
        self.reportsCloseLater = reportsCloseLater
    }

    func close() {
        calls.withLockedValue { $0.append("close") }
        if !reportsCloseLater { pool?.connectionClosed(self) }
    }

    func abort() {
        calls.withLockedValue { $0.append("abort") }
        pool?.connectionClosed(self)
    }

    static func poolFailure(_ error: any Error) -> ConnectionFailure {
        (error as? Refused).map { ConnectionFailure(code: $0.code, message: $0.message) }
            ?? ConnectionFailure(message: "\(error)")
    }
}

private struct Refused: Error {
    var code: String
    var message: String
}

/// A client waiting for a connection: its answer, awaited rather than slept for.
private final class Requester: PoolRequester, @unchecked Sendable {
    let eventLoop: any EventLoop
    let answer: EventLoopPromise<Result<FakeConnection, BorrowError>>
    /// How many answers it got: exactly one for a request that was not cancelled.
    let answers = NIOLockedValueBox(0)
    private let settled = NIOLockedValueBox(false)

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.answer = eventLoop.makePromise()
        // A pool that never answers fails the test that awaits it (after 30 s) rather than
        // hanging it: an awaited future is not cancelled by Swift Testing's time limit.
        eventLoop.scheduleTask(in: .seconds(30)) { [weak self] in self?.settle(.failure(.shuttingDown)) }
    }

    func borrowCompleted(_ result: Result<FakeConnection, BorrowError>) {
        answers.withLockedValue { $0 += 1 }
        settle(result)
    }

    /// Completes the promise once: the pool's answer or the test's own deadline, whichever is first.
    func settle(_ result: Result<FakeConnection, BorrowError>) {
        if settled.withLockedValue({ done in defer { done = true }; return !done }) { answer.succeed(result) }
    }

    func connection() async throws -> FakeConnection {
        try await answer.futureResult.get().get()
    }

    func error() async throws -> BorrowError? {
        if case .failure(let error) = try await answer.futureResult.get() { return error }
        return nil
    }
}

private let key = PoolKey(user: "app", database: "orders")

private func limits(cap: Int = 2, borrowTimeout: Duration = .seconds(10)) -> PoolLimits {
    PoolLimits(maxConnections: cap, maxIdleConnections: cap, borrowTimeout: borrowTimeout, idleTimeout: .seconds(60))
}

/// One event loop, and a pool whose factory the test steers: it opens connections or refuses them.
private final class Harness: @unchecked Sendable {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    var loop: any EventLoop { group.next() }
    let refusal = NIOLockedValueBox<Refused?>(nil)
    let opened = NIOLockedValueBox<[FakeConnection]>([])
    private(set) var pool: PoolDriver<FakeConnection>!

    init(limits: PoolLimits, closesReportedLater: Bool = false) {
        pool = PoolDriver(limits: limits, eventLoops: [group.next()]) { [refusal, opened] id, _, eventLoop, pool in
            if let refused = refusal.withLockedValue({ $0 }) { return eventLoop.makeFailedFuture(refused) }
            let connection = FakeConnection(
                id: id, eventLoop: eventLoop, generation: pool.generation, pool: pool, reportsCloseLater: closesReportedLater)
            opened.withLockedValue { $0.append(connection) }
            return eventLoop.makeSucceededFuture(connection)
        }
    }

    func borrow(key: PoolKey = key) -> Requester {
        let requester = Requester(eventLoop: loop)
        _ = pool.borrow(key: key, for: requester)
        return requester
    }

    deinit { try? group.syncShutdownGracefully() }
}

@Suite struct PoolDriverTests {
    @Test func aReleasedConnectionIsLeasedAgainWithoutOpeningAnother() async throws {
        let harness = Harness(limits: limits())
        let first = try await harness.borrow().connection()
        harness.pool.release(first, reusable: true)
        let second = try await harness.borrow().connection()
        #expect(second === first)
        #expect(harness.opened.withLockedValue { $0.count } == 1)
        #expect(harness.pool.leaseCounters.total == 2)
        #expect(harness.pool.stats.totals.leased == 1)
    }

    @Test func aRefusedOpenFailsTheWaiterWithTheDatabasesCode() async throws {
        let harness = Harness(limits: limits())
        harness.refusal.withLockedValue { $0 = Refused(code: "28P01", message: "password authentication failed") }
        let error = try await harness.borrow().error()
        #expect(error == .connectionFailed(ConnectionFailure(code: "28P01", message: "password authentication failed")))
    }

    @Test func aWaiterAtTheCapGetsTheBorrowTimeout() async throws {
        let harness = Harness(limits: limits(cap: 1, borrowTimeout: .milliseconds(50)))
        let holder = try await harness.borrow().connection()
        let error = try await harness.borrow().error()
        #expect(error == .timeout)
        harness.pool.release(holder, reusable: true)
    }

    @Test func aWaiterGetsTheConnectionAnotherClientReleases() async throws {
        let harness = Harness(limits: limits(cap: 1))
        let holder = try await harness.borrow().connection()
        let waiter = harness.borrow()
        harness.pool.release(holder, reusable: true)
        #expect(try await waiter.connection() === holder)
    }

    /// Waiters are kept in slots their request ids name, and a freed slot is reused: a waiter
    /// that takes a cancelled one's slot waits its turn, the cancelled ones never get an answer,
    /// and each of the others gets exactly one, in order.
    @Test func waitersAreServedInOrderAcrossCancelsAndReusedSlots() async throws {
        let harness = Harness(limits: limits(cap: 1))
        var current = try await harness.borrow().connection()
        var waiting: [(requester: Requester, id: RequestID)] = []
        for _ in 0..<300 {
            let requester = Requester(eventLoop: harness.loop)
            waiting.append((requester, harness.pool.borrow(key: key, for: requester)))
        }
        for (n, waiter) in waiting.enumerated() where n % 2 == 1 { harness.pool.cancel(waiter.id) }
        let late = harness.borrow()
        // Cancelled again, now that `late` holds one of their slots: nothing changes.
        for (n, waiter) in waiting.enumerated() where n % 2 == 1 { harness.pool.cancel(waiter.id) }
        for (n, waiter) in waiting.enumerated() where n % 2 == 0 {
            harness.pool.release(current, reusable: true)
            current = try await waiter.requester.connection()
        }
        harness.pool.release(current, reusable: true)
        #expect(try await late.connection() === current)
        for (n, waiter) in waiting.enumerated() {
            #expect(waiter.requester.answers.withLockedValue { $0 } == (n % 2 == 0 ? 1 : 0), "waiter \(n)")
        }
        #expect(late.answers.withLockedValue { $0 } == 1)
        // Cancelling requests that were served or cancelled already changes nothing.
        for waiter in waiting { harness.pool.cancel(waiter.id) }
        #expect(harness.pool.stats.totals.leased == 1)
        #expect(harness.pool.stats.totals.waiting == 0)
        // The cancelled ones' promises, which nothing answered, are completed here (NIO traps
        // on a promise dropped unfulfilled).
        for (n, waiter) in waiting.enumerated() where n % 2 == 1 { waiter.requester.settle(.failure(.shuttingDown)) }
    }

    @Test func retiringClosesIdleConnectionsNowAndLeasedOnesWhenReturned() async throws {
        let harness = Harness(limits: limits())
        let idle = try await harness.borrow().connection()
        let leased = try await harness.borrow().connection()
        harness.pool.release(idle, reusable: true)
        harness.pool.retire()
        #expect(idle.recorded == ["close"])
        #expect(leased.recorded == [])
        // Returned as reusable, but opened before the retirement: closed, and the next client
        // gets a connection of the new generation.
        harness.pool.release(leased, reusable: true)
        #expect(leased.recorded == ["close"])
        let fresh = try await harness.borrow().connection()
        #expect(fresh !== idle && fresh !== leased)
        #expect(fresh.generation == 1)
    }

    @Test func abortAllAbortsEveryOpenConnection() async throws {
        let harness = Harness(limits: limits())
        let a = try await harness.borrow().connection()
        let b = try await harness.borrow().connection()
        harness.pool.release(b, reusable: true)
        harness.pool.abortAll()
        #expect(a.recorded == ["abort"])
        #expect(b.recorded == ["abort"])
        #expect(harness.pool.stats.totals.total == 0)
    }

    /// The cap is shared by every key: a connection of one key closed to make room for another
    /// keeps its slot until it reports its close, and only then is the other key's opened (else
    /// the database would briefly hold one session more than the cap).
    @Test func anOpenForAnotherKeyWaitsUntilTheClosedConnectionReportsItsEnd() async throws {
        let harness = Harness(limits: limits(cap: 1), closesReportedLater: true)
        let first = try await harness.borrow().connection()
        harness.pool.release(first, reusable: true)
        let other = harness.borrow(key: PoolKey(user: "app", database: "billing"))
        // Asked to close (synchronously, within the borrow), and nothing opened yet.
        #expect(first.recorded == ["close"])
        #expect(harness.opened.withLockedValue { $0.count } == 1)
        #expect(harness.pool.stats.totals == PoolCounts(connecting: 1, waiting: 1))
        harness.pool.connectionClosed(first)
        let second = try await other.connection()
        #expect(second !== first)
        #expect(harness.opened.withLockedValue { $0.count } == 2)
        #expect(harness.pool.stats.totals == PoolCounts(leased: 1))
        harness.pool.connectionClosed(first)  // reported twice: harmless
        #expect(harness.pool.stats.totals == PoolCounts(leased: 1))
    }

    @Test func shutdownFailsWaitersAndCompletesWhenTheLastConnectionCloses() async throws {
        let harness = Harness(limits: limits(cap: 1))
        let holder = try await harness.borrow().connection()
        let waiter = harness.borrow()
        let drained = harness.pool.shutdown(on: harness.loop)
        #expect(try await waiter.error() == .shuttingDown)
        harness.pool.release(holder, reusable: true)
        try await drained.get()
        #expect(holder.recorded == ["close"])
    }
}
