import ConnectionPool
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// A connection the pool hands out: a database connection of any engine.
///
/// Once opened (the factory's future succeeded), a connection reports its end to its pool with
/// `PoolDriver.connectionClosed` exactly once, whoever closed it: the database, the network,
/// `close()`, `abort()`, or its client releasing it as not reusable. The pool keeps a connection
/// it asked to close in its cap until then (the database counts the session until its backend
/// exits): a connection that never reports it holds a slot for good.
public protocol PooledConnection: AnyObject, Sendable {
    var id: ConnectionID { get }
    /// The loop its I/O runs on (a lease to a client on another loop is counted as crossing).
    var eventLoop: any EventLoop { get }
    /// The pool's generation when it was opened (see `PoolDriver.retire`).
    var generation: Int { get }
    /// Closes it politely (the engine's goodbye, then the socket), then reports
    /// `PoolDriver.connectionClosed`.
    func close()
    /// Closes the socket at once (its target stopped answering), then reports
    /// `PoolDriver.connectionClosed`.
    func abort()
    /// How a failure to open one (the factory's error) is told to the pool, and through it to the
    /// clients waiting for it: a stable code when the database gave one, and a message without
    /// secrets.
    static func poolFailure(_ error: any Error) -> ConnectionFailure
}

/// Why a client did not get a connection. Each engine renders it in its own wire format.
public enum BorrowError: Error, Sendable, Equatable {
    /// `connection_borrow_timeout` passed.
    case timeout
    /// The proxy is shutting down.
    case shuttingDown
    /// Opening a connection for it failed (the database's code, if it gave one, and why).
    case connectionFailed(ConnectionFailure)
}

/// Who waits for a connection: answered on its event loop (no closure is allocated per borrow).
public protocol PoolRequester<Connection>: AnyObject, Sendable {
    associatedtype Connection: PooledConnection
    var eventLoop: any EventLoop { get }
    func borrowCompleted(_ result: Result<Connection, BorrowError>)
}

/// Leases so far, and how many of them crossed from one event loop to another.
public struct LeaseCounters: Sendable {
    public var total = 0
    public var acrossEventLoops = 0
}

/// The NIO side of one proxy's pool: runs `PoolStateMachine` behind a lock and carries out its
/// actions (open, lease, fail, close, timers). It is touched once per transaction (borrow and
/// release), never per message.
///
/// Engine-neutral: it pools any `PooledConnection` (a PostgreSQL backend today, a MySQL one next)
/// and reports failures as `BorrowError`, which each engine renders in its own wire format.
// The hot methods are inlinable, with the state they touch `@usableFromInline`: the engine's
// module (the only one that names a `Connection` type) then specialises them. Unspecialised, this
// generic class looked up the metadata of its dictionaries and existentials on every borrow and
// release (measured: about 0.5% of the proxy's CPU in select-only).
public final class PoolDriver<Connection: PooledConnection>: @unchecked Sendable {
    public typealias Factory = @Sendable (ConnectionID, PoolKey, any EventLoop, PoolDriver<Connection>) -> EventLoopFuture<Connection>

    @usableFromInline typealias Waiter = any PoolRequester<Connection>

    @usableFromInline internal let lock = NIOLock()
    @usableFromInline internal var machine: PoolStateMachine
    @usableFromInline internal var waiters = RequestSlots<Waiter>()
    @usableFromInline internal var connections: [ConnectionID: Connection] = [:]
    @usableFromInline internal var nextRequest: UInt64 = 0
    @usableFromInline internal var counters = LeaseCounters()
    @usableFromInline internal var timer: Scheduled<Void>?
    @usableFromInline internal var timerDeadline: PoolInstant?
    @usableFromInline internal var drainedPromise: EventLoopPromise<Void>?

    @usableFromInline internal let eventLoops: [any EventLoop]
    @usableFromInline internal let factory: Factory
    /// Backends opened before the last `retire()` are closed when they come back.
    @usableFromInline internal let currentGeneration = Atomic<Int>(0)
    @inlinable public var generation: Int { currentGeneration.load(ordering: .relaxed) }

    public init(limits: PoolLimits, eventLoops: [any EventLoop], factory: @escaping Factory) {
        self.machine = PoolStateMachine(limits: limits)
        self.eventLoops = eventLoops
        self.factory = factory
    }

    @inlinable public static var now: PoolInstant { PoolInstant(nanoseconds: NIODeadline.now().uptimeNanoseconds) }

    public var limits: PoolLimits { lock.withLock { machine.limits } }
    public var stats: PoolStats { lock.withLock { machine.stats } }
    /// The counts of all keys together: cheaper than `stats` (which builds the per-key table),
    /// for the reader chosen at each borrow of a READ_ONLY endpoint.
    public var totals: PoolCounts { lock.withLock { machine.totalCounts } }

    public var leaseCounters: LeaseCounters { lock.withLock { counters } }

    @inlinable internal func loopIndex(of eventLoop: any EventLoop) -> Int {
        eventLoops.firstIndex { $0 === eventLoop } ?? 0
    }

    /// Asks for a backend for `key`; `requester.borrowCompleted` runs on its event loop exactly
    /// once (unless the request is cancelled first), possibly before `borrow` returns.
    @inlinable public func borrow(key: PoolKey, for requester: any PoolRequester<Connection>) -> RequestID {
        let eventLoop = requester.eventLoop
        let actions: PoolActions
        let request: RequestID
        var immediate: Connection?
        lock.lock()
        nextRequest &+= 1
        request = RequestID(clientID: nextRequest, sequence: waiters.reserve())
        actions = machine.borrow(request: request, key: key, eventLoopIndex: loopIndex(of: eventLoop), now: Self.now)
        // The usual case, an idle backend leased at once: answered under this one lock, without
        // parking the requester among the waiters.
        if actions.count == 1, case .lease(let id, let leasedTo) = actions[actions.startIndex], leasedTo == request,
           let connection = connections[id]
        {
            immediate = connection
            countLease(of: connection, to: requester)
            waiters.unreserve(request)
        } else {
            waiters.store(requester, for: request)
        }
        lock.unlock()
        if let immediate {
            deliver(.success(immediate), to: requester)
        } else {
            run(actions)
        }
        return request
    }

    /// The client went away while waiting.
    @inlinable public func cancel(_ request: RequestID) {
        let actions = lock.withLock { () -> PoolActions in
            _ = waiters.remove(request)
            return machine.cancel(request: request, now: Self.now)
        }
        run(actions)
    }

    /// A leased connection comes back: clean (`reusable`) or to be closed.
    @inlinable public func release(_ connection: Connection, reusable: Bool) {
        let reusable = reusable && connection.generation == generation
        var next: Waiter?
        lock.lock()
        let actions = machine.release(connection.id, reusable: reusable, now: Self.now)
        // The usual case with clients waiting, the backend handed on at once: answered under this
        // one lock (`run` would take it again to find the waiter, and look up the connection we
        // hold). The connection is in `connections`: the machine had it leased, and both forget
        // it together, under the lock.
        if actions.count == 1, case .lease(let id, let request) = actions[actions.startIndex], id == connection.id,
           let waiter = waiters.remove(request)
        {
            countLease(of: connection, to: waiter)
            next = waiter
        }
        lock.unlock()
        if let next {
            deliver(.success(connection), to: next)
        } else {
            run(actions)
        }
    }

    /// Every backend open now is stale (the target or the init query changed): idle ones are
    /// closed now, leased ones when their client gives them back. Clients are not interrupted.
    public func retire() {
        currentGeneration.add(1, ordering: .relaxed)
        let actions = lock.withLock { machine.closeIdleConnections(now: Self.now) }
        run(actions)
    }

    /// A lease arrived for a client that had already gone: the backend never left the idle
    /// state, so it goes straight back.
    @inlinable public func returnUnused(_ connection: Connection) {
        release(connection, reusable: true)
    }

    /// A connection closed: the database or the network closed it, or it was closed as the pool
    /// asked. Its slot of the cap is free from now on. Harmless for a connection the pool has
    /// forgotten already.
    @inlinable public func connectionClosed(_ connection: Connection) {
        let actions = lock.withLock { () -> PoolActions in
            connections[connection.id] = nil
            return machine.connectionClosed(connection.id, now: Self.now)
        }
        run(actions)
    }

    public func updateLimits(_ limits: PoolLimits) {
        let actions = lock.withLock { machine.updateLimits(limits, now: Self.now) }
        run(actions)
    }

    /// Fails waiters, closes idle backends now and leased ones as they come back; the future
    /// completes when every backend is closed.
    public func shutdown(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let actions = lock.withLock { () -> PoolActions in
            drainedPromise = promise
            return machine.shutdown()
        }
        run(actions)
        return promise.futureResult
    }

    /// Aborts every connection open now (`PooledConnection.abort`): their target stopped
    /// answering.
    public func abortAll() {
        let all = lock.withLock { Array(connections.values) }
        for connection in all { connection.abort() }
    }

    /// Closes every connection still open (after the drain deadline).
    public func closeAll() {
        let all = lock.withLock { Array(connections.values) }
        for connection in all { connection.close() }
    }

    // MARK: Running actions

    @inlinable internal func run(_ actions: PoolActions) {
        for action in actions {
            switch action {
            case .createConnection(let id, let key, let loopIndex):
                let eventLoop = eventLoops[loopIndex % eventLoops.count]
                factory(id, key, eventLoop, self).whenComplete { result in
                    switch result {
                    case .success(let connection):
                        let actions = self.lock.withLock { () -> PoolActions in
                            self.connections[id] = connection
                            return self.machine.connectionEstablished(id, now: Self.now)
                        }
                        self.run(actions)
                    case .failure(let error):
                        let failure = Connection.poolFailure(error)
                        let actions = self.lock.withLock {
                            self.machine.connectionFailed(id, error: failure, now: Self.now)
                        }
                        self.run(actions)
                    }
                }
            case .lease(let id, let request):
                let (waiter, connection) = lock.withLock { () -> (Waiter?, Connection?) in
                    let waiter = waiters.remove(request)
                    let connection = connections[id]
                    if let waiter, let connection { countLease(of: connection, to: waiter) }
                    return (waiter, connection)
                }
                switch (waiter, connection) {
                case (let waiter?, let connection?):
                    deliver(.success(connection), to: waiter)
                case (nil, let connection?):
                    release(connection, reusable: true)
                case (let waiter?, nil):
                    // The connection closed between the pool's decision and now: the client
                    // gets an error (and may retry) rather than waiting forever.
                    deliver(.failure(.connectionFailed(ConnectionFailure(message: "the database connection closed before it could be used"))), to: waiter)
                case (nil, nil):
                    break
                }
            case .failRequest(let request, let error):
                guard let waiter = lock.withLock({ waiters.remove(request) }) else { continue }
                let result: BorrowError
                switch error {
                case .timeout: result = .timeout
                case .shuttingDown, .cancelled: result = .shuttingDown
                case .connectionFailed(let failure): result = .connectionFailed(failure)
                }
                deliver(.failure(result), to: waiter)
            case .closeConnection(let id):
                // The machine keeps the slot until the connection reports it closed
                // (`connectionClosed`). If there is nothing here to close (it cannot happen while
                // each established connection is kept here until it reports its end), the slot
                // is freed now rather than held for ever.
                if let connection = lock.withLock({ connections.removeValue(forKey: id) }) {
                    connection.close()
                } else {
                    let actions = lock.withLock { machine.connectionClosed(id, now: Self.now) }
                    run(actions)
                }
            case .scheduleTimer(let at):
                schedule(at: at)
            case .shutdownComplete:
                let promise = lock.withLock { () -> EventLoopPromise<Void>? in
                    defer { drainedPromise = nil }
                    return drainedPromise
                }
                promise?.succeed(())
            }
        }
    }

    /// Called with the lock held.
    @inlinable internal func countLease(of connection: Connection, to waiter: Waiter) {
        counters.total += 1
        if waiter.eventLoop !== connection.eventLoop { counters.acrossEventLoops += 1 }
    }

    /// Runs a waiter's completion on its event loop: directly when already there.
    @inlinable internal func deliver(_ result: Result<Connection, BorrowError>, to waiter: Waiter) {
        let eventLoop = waiter.eventLoop
        if eventLoop.inEventLoop {
            waiter.borrowCompleted(result)
        } else {
            eventLoop.execute { waiter.borrowCompleted(result) }
        }
    }

    @inlinable internal func schedule(at instant: PoolInstant) {
        lock.lock()
        if let armed = timerDeadline, armed <= instant {
            lock.unlock()
            return
        }
        timer?.cancel()
        timerDeadline = instant
        let deadline = NIODeadline.uptimeNanoseconds(instant.nanoseconds)
        timer = eventLoops[0].scheduleTask(deadline: deadline) { [self] in
            let actions = self.lock.withLock { () -> PoolActions in
                self.timerDeadline = nil
                self.timer = nil
                return self.machine.tick(now: Self.now)
            }
            self.run(actions)
        }
        lock.unlock()
    }
}

/// The requesters waiting for a backend, each in a slot whose index the driver writes into its
/// `RequestID` (`sequence`): found and removed without hashing (a dictionary by `RequestID` cost
/// about 250 instructions per waiting borrow). A removal checks the whole id, since a slot is
/// reused once freed and an action may name a request that has gone since (cancelled, failed).
@usableFromInline
struct RequestSlots<Element> {
    /// The id each slot was last stored for (a freed slot keeps it: `elements` says whether it
    /// is in use). Apart from `elements`, so that a removal compares 16 bytes and moves the
    /// requester out of its slot without copying it.
    @usableFromInline var ids: [RequestID] = []
    @usableFromInline var elements: [Element?] = []
    @usableFromInline var free: [Int] = []
    @usableFromInline var stored = 0

    @inlinable init() {}

    /// A slot for the next request's id. Either `store` or `unreserve` follows, under the same
    /// lock.
    @inlinable mutating func reserve() -> UInt64 {
        if let slot = free.popLast() { return UInt64(slot) }
        ids.append(RequestID(clientID: 0, sequence: .max))
        elements.append(nil)
        return UInt64(ids.count - 1)
    }

    /// The request was answered at once: its slot was never used.
    @inlinable mutating func unreserve(_ id: RequestID) {
        free.append(Int(id.sequence))
    }

    @inlinable mutating func store(_ element: Element, for id: RequestID) {
        let slot = Int(id.sequence)
        ids[slot] = id
        elements[slot] = element
        stored += 1
    }

    /// The requester of `id`, if it is still waiting.
    @inlinable mutating func remove(_ id: RequestID) -> Element? {
        guard id.sequence < UInt64(ids.count) else { return nil }
        let slot = Int(id.sequence)
        guard ids[slot] == id, let element = elements[slot].take() else { return nil }
        stored -= 1
        if stored == 0, ids.count > 256 {
            // After a burst of waiters: give the memory back.
            ids = []
            elements = []
            free = []
        } else {
            free.append(slot)
        }
        return element
    }
}
