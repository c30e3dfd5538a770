import NIOCore
import ProxyCore

/// The client sessions of one event loop, checked for timeouts (authentication, idle) once a
/// second by one repeated task: no timer per client. A per-client `Scheduled` task cost an
/// allocation and two heap operations per login, and memory for every idle client.
///
/// Confined to `eventLoop`, like the sessions it holds.
public final class LoopSessions<Session: SweptClientSession>: @unchecked Sendable {
    public let eventLoop: any EventLoop
    @usableFromInline var sessions: [Session] = []
    @usableFromInline var sweeper: RepeatedTask?
    /// Queries received by this loop's sessions (`QueryRequests`), summed over loops at scrape.
    public var queryRequests = 0
    /// `DatabaseConnectionsBorrowLatency` and `QueryDatabaseResponseLatency` of this loop's
    /// sessions, summed over loops at scrape (no lock on the per-transaction path).
    public var borrowLatency = LatencyBuckets(bounds: ProxyMetrics.borrowLatencyBuckets)
    public var queryLatency = LatencyBuckets(bounds: ProxyMetrics.queryLatencyBuckets)

    static var sweepInterval: TimeAmount { .seconds(1) }

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Adds a session (on the loop); `session.loopSlot` remembers where. Inlinable, like
    /// `remove`: the engine's session calls both from its own module, once per connection.
    @inlinable
    public func add(_ session: Session) {
        eventLoop.preconditionInEventLoop()
        session.loopSlot = sessions.count
        sessions.append(session)
        if sweeper == nil { startSweeping() }
    }

    @usableFromInline
    func startSweeping() {
        sweeper = eventLoop.scheduleRepeatedTask(initialDelay: Self.sweepInterval, delay: Self.sweepInterval) {
            [weak self] _ in self?.sweep()
        }
    }

    /// Removes a session (on the loop) in O(1); harmless if it is not here.
    @inlinable
    public func remove(_ session: Session) {
        let slot = session.loopSlot
        guard slot >= 0, slot < sessions.count, sessions[slot] === session else { return }
        session.loopSlot = -1
        let last = sessions.removeLast()
        if slot < sessions.count {
            sessions[slot] = last
            last.loopSlot = slot
        }
    }

    private func sweep() {
        let now = NIODeadline.now()
        var index = 0
        while index < sessions.count {
            let session = sessions[index]
            session.checkTimeouts(now: now)
            // A session that closed was swapped out for the last one: look at this slot again.
            if index < sessions.count, sessions[index] === session { index += 1 }
        }
    }

    /// This loop's share of the gauges, read at scrape time (on the loop).
    func sample(endpoints: Int) -> LoopMetricsSample {
        eventLoop.preconditionInEventLoop()
        var sample = LoopMetricsSample(endpoints: endpoints)
        for session in sessions { session.addMetrics(to: &sample) }
        sample.queryRequests = queryRequests
        sample.borrowLatency = borrowLatency
        sample.queryLatency = queryLatency
        return sample
    }

    func stop() {
        eventLoop.execute {
            self.sweeper?.cancel()
            self.sweeper = nil
        }
    }
}
