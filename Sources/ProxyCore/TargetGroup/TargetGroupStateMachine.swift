import NIOCore

/// The target group's brain: the targets' health and roles from health checks, which target is the
/// writer, whether new backends may be opened to it now, wait for one (a failover) or fail with a
/// reason, how many opens run at once, and which readers READ_ONLY endpoints use.
///
/// Pure: no I/O, no locks, time passed in. The runtime holds it under its lock, feeds it events
/// and carries out the actions it returns outside the lock (resume or fail the opens it keeps
/// under `OpenWaiterID`s, retire or abort pools, log). Generic over the target's address so that
/// the core stays free of the configuration model (and tests use plain strings).
public struct TargetGroupStateMachine<Target: Hashable & Sendable & CustomStringConvertible>: Sendable {
    /// The writer, and whether new backends may be opened to it.
    enum WriterState: Hashable, Sendable {
        /// No health check has reported on the first writer yet (the first target, until checks
        /// elect one): opens wait for one. Nil once that target is deregistered.
        case unchecked(Target?)
        /// The writer answers; `since` counts the writer-available seconds.
        case available(Target, since: NIODeadline)
        /// No writer answers. `lostAt`: when an available writer was lost; for the failover window
        /// after it, opens wait for a writer, outside it they fail at once with the reason. Nil
        /// when there has been no writer since checks began.
        case unavailable(Target?, lostAt: NIODeadline?)
    }

    private(set) var writerState: WriterState
    /// The registered targets, in order (the first writer found in this order is elected).
    public private(set) var targets: [Target]
    /// `connection_borrow_timeout`: how long after the writer is lost new opens wait for one.
    public private(set) var failoverWindow: TimeAmount
    /// Whether reader membership is tracked (the proxy has a READ_ONLY endpoint).
    private let tracksReaders: Bool

    /// Each target's health, as its last check (or a refused login) found it.
    public private(set) var health: [Target: TargetHealth] = [:]
    /// Each target's role as its last check found it.
    public private(set) var roles: [Target: TargetRoleState] = [:]
    /// Each target's connection limit, as its checks read it.
    private var targetMaxConnections: [Target: Int] = [:]
    /// The writer's connection limit, once read (by a check before it became the writer, or by its
    /// first backend): the writer's pool is sized from it.
    public private(set) var writerMaxConnections: Int?
    /// Targets whose last health check got no answer.
    private var unresponsiveTargets: Set<Target> = []
    /// Opens waiting for a writer, with when each began (which decides whether it is in a failover).
    private var writerWaiters: [OpenWaiterID: NIODeadline] = [:]
    /// Opens under way, and those queued for a slot (oldest first).
    private var opening = 0
    private var openQueue: [OpenWaiterID] = []
    /// The readers READ_ONLY endpoints' transactions may go to now.
    public private(set) var activeReaders: Set<Target> = []
    private var lastWaiterID: UInt64 = 0
    /// Seconds with an available writer, up to the start of the current available spell, and the
    /// total already reported to the metrics.
    private var writerAvailableSeconds: Double = 0
    private var reportedWriterAvailableSeconds: Double = 0

    /// `targets.first` is the writer until health checks say otherwise.
    public init(targets: [Target], failoverWindow: TimeAmount, tracksReaders: Bool) {
        self.targets = targets
        self.failoverWindow = failoverWindow
        self.tracksReaders = tracksReaders
        self.writerState = .unchecked(targets.first)
    }

    // MARK: Queries

    /// The target new backends go to (nil: none, e.g. the writer was deregistered).
    public var writer: Target? {
        switch writerState {
        case .unchecked(let writer): return writer
        case .available(let writer, _): return writer
        case .unavailable(let writer, _): return writer
        }
    }

    /// The writer answers: new backends may be opened to it at once.
    public var writerAvailable: Bool {
        if case .available = writerState { return true }
        return false
    }

    /// A target's connection limit as its checks read it.
    public func maxConnections(of target: Target) -> Int? { targetMaxConnections[target] }

    /// The role the admin API shows for a target (RDS's names).
    public func roleName(of target: Target) -> String {
        switch roles[target] {
        case .writer?: return writer == target ? "READ_WRITE" : "UNKNOWN"
        case .reader?: return "READ_ONLY"
        case .unknown?, nil: return writer == target && writerAvailable ? "READ_WRITE" : "UNKNOWN"
        }
    }

    /// How many backend opens may run at once, so that a new writer is not hit by a reconnection
    /// storm: a quarter of the writer pool's cap, at least 4.
    public static func openLimit(poolMaxConnections: Int) -> Int { max(4, poolMaxConnections / 4) }

    /// The writer: the current one while it still is; else the first target (in order) that is;
    /// else the current one if it is up with its role unknown and no target claims to be the writer.
    static func electWriter(
        current: Target?, targets: [Target], health: [Target: TargetHealth], roles: [Target: TargetRoleState]
    ) -> Target? {
        func available(_ target: Target) -> Bool { health[target]?.state == .available }
        if let current, available(current), roles[current] == .writer { return current }
        if let found = targets.first(where: { available($0) && roles[$0] == .writer }) { return found }
        if let current, available(current), roles[current] == .unknown,
           !targets.contains(where: { roles[$0] == .writer })
        {
            return current
        }
        return nil
    }

    // MARK: Health checks

    /// A health check's result: the target's health and role, then the writer, the waiting opens and
    /// the readers. A target no longer registered changes nothing (its check was under way when it
    /// was deregistered) but the reader set is still brought up to date.
    public mutating func targetChecked(_ target: Target, _ result: TargetProbeResult, now: NIODeadline) -> TargetCheckedAction {
        var action = TargetCheckedAction()
        if targets.contains(target) {
            record(target, result, now: now, into: &action)
            electAndAnswerWaiters(now: now, into: &action)
        }
        action.readers = updateReaders()
        return action
    }

    private mutating func record(_ target: Target, _ result: TargetProbeResult, now: NIODeadline, into action: inout TargetCheckedAction) {
        if case .unchecked(let first?) = writerState, first == target {
            writerState = .unavailable(first, lostAt: nil)  // checked now; the election below decides
        }
        switch result {
        case .up(let role, let maxConnections):
            unresponsiveTargets.remove(target)
            health[target] = TargetHealth(state: .available)
            if role == .reader, case .available(let current, _) = writerState, current == target {
                // The writer answers as a reader now (MySQL: `SET GLOBAL read_only = 1`, a
                // switchover's first step): its backends are to a server that refuses writes.
                action.writerDemoted = target
            }
            roles[target] = role == .reader ? .reader : .writer
            if let maxConnections { targetMaxConnections[target] = maxConnections }
        case .upUnknownRole(let why):
            unresponsiveTargets.remove(target)
            health[target] = TargetHealth(state: .available, description: "The health check could not tell the role: \(why)")
            if roles[target] == nil { roles[target] = .unknown }
        case .down(let targetHealth, let unresponsive):
            health[target] = targetHealth
            roles[target] = .unknown
            if unresponsive {
                let newly = unresponsiveTargets.insert(target).inserted
                action.unresponsive = Unresponsive(target: target, wasWriter: target == writer, newly: newly)
            } else {
                unresponsiveTargets.remove(target)
            }
        }
    }

    private mutating func electAndAnswerWaiters(now: NIODeadline, into action: inout TargetCheckedAction) {
        let elected = Self.electWriter(current: writer, targets: targets, health: health, roles: roles)
        if let elected {
            if elected != writer {
                action.writerChange = WriterChange(old: writer, new: elected, maxConnections: targetMaxConnections[elected])
                writerMaxConnections = targetMaxConnections[elected]
            }
            switch writerState {
            case .available(_, let since):
                writerState = .available(elected, since: since)
            case .unchecked, .unavailable:
                writerState = .available(elected, since: now)
                action.writerBecameAvailable = true
            }
        } else if case .available(let current, let since) = writerState {
            loseWriter(keeping: current, since: since, now: now)
            action.writerBecameUnavailable = true
        }
        guard !writerWaiters.isEmpty else { return }
        if writerAvailable {
            action.resume = writerWaiters.keys.sorted()
            writerWaiters = [:]
        } else {
            // Not a failover (no writer was lost lately when they began): waiting would only delay
            // the error. Those that began during one wait out their borrow timeout.
            for (id, began) in writerWaiters.sorted(by: { $0.key < $1.key }) {
                guard let reason = noWriterReason(began: began) else { continue }
                action.refuse.append(id)
                action.refusal = reason
                writerWaiters[id] = nil
            }
        }
    }

    /// The writer stops being available (kept as the writer, or nil): the failover window opens.
    private mutating func loseWriter(keeping writer: Target?, since: NIODeadline, now: NIODeadline) {
        writerAvailableSeconds += Double((now - since).nanoseconds) / 1e9
        writerState = .unavailable(writer, lostAt: now)
    }

    /// A backend open to `target` failed to connect: if it is the writer, until a health check says
    /// otherwise new opens wait (the runtime runs that check now). Returns whether the writer was lost.
    @discardableResult
    public mutating func writerSuspect(_ target: Target, now: NIODeadline) -> Bool {
        guard case .available(let current, let since) = writerState, current == target else { return false }
        loseWriter(keeping: current, since: since, now: now)
        return true
    }

    /// Something other than a check learned a target's health (the database refused the proxy's
    /// credentials on a backend open): shown until the next check.
    public mutating func healthObserved(_ target: Target, _ targetHealth: TargetHealth) {
        health[target] = targetHealth
    }

    /// A backend of the writer read the database's connection limit. Returns true when it was not
    /// known yet: the writer's pool is then sized from it.
    public mutating func writerMaxConnectionsRead(_ value: Int) -> Bool {
        guard writerMaxConnections == nil else { return false }
        writerMaxConnections = value
        return true
    }

    // MARK: Configuration

    /// The registered targets changed. Returns true when the writer left the group: there is none
    /// until health checks pick the next (its pool retires; new opens wait or fail meanwhile).
    public mutating func targetsChanged(_ targets: [Target], now: NIODeadline) -> Bool {
        self.targets = targets
        health = health.filter { targets.contains($0.key) }
        guard let writer, !targets.contains(writer) else { return false }
        switch writerState {
        case .unchecked: writerState = .unchecked(nil)
        case .available(_, let since): loseWriter(keeping: nil, since: since, now: now)
        case .unavailable(_, let lostAt): writerState = .unavailable(nil, lostAt: lostAt)
        }
        return true
    }

    /// Targets whose health checker stopped (deregistered): their roles and limits are forgotten, so
    /// a target registered again starts unknown.
    public mutating func forget(_ forgotten: [Target]) {
        for target in forgotten {
            roles[target] = nil
            targetMaxConnections[target] = nil
        }
    }

    /// A new `connection_borrow_timeout`: the failover window of waits decided from now on.
    public mutating func failoverWindowChanged(_ window: TimeAmount) {
        failoverWindow = window
    }

    // MARK: Opening backends

    /// A backend open that `began` (its first attempt; a retry keeps the time) asks whether it may
    /// connect to the writer now.
    public mutating func openRequested(began: NIODeadline) -> OpenDecision {
        if writerAvailable { return .proceed }
        if let reason = noWriterReason(began: began) { return .fail(reason) }
        let id = nextWaiterID()
        writerWaiters[id] = began
        return .wait(id)
    }

    /// A waiting open's deadline passed. Returns the reason to fail it with, or nil when it was
    /// answered meanwhile.
    public mutating func waiterTimedOut(_ id: OpenWaiterID) -> NoWriterReason? {
        writerWaiters.removeValue(forKey: id) == nil ? nil : .waitTimedOut
    }

    /// Why an open that `began` then cannot proceed without waiting, or nil to wait: waiting makes
    /// sense during a failover (the writer was lost less than the failover window before the open
    /// began: its client waits out its own borrow timeout) and before the first health check has
    /// answered.
    public func noWriterReason(began: NIODeadline) -> NoWriterReason? {
        switch writerState {
        case .available:
            return nil
        case .unchecked(let writer):
            return writer == nil ? noWriterAtAll : nil
        case .unavailable(let writer, let lostAt):
            if let lostAt, began < lostAt + failoverWindow { return nil }
            guard let writer else { return noWriterAtAll }
            let writerHealth = health[writer]
            if writerHealth?.state == .available { return .noTargetIsWriter }
            return .writerUnavailable(writer, description: writerHealth?.description)
        }
    }

    private var noWriterAtAll: NoWriterReason { targets.isEmpty ? .noTargetRegistered : .noTargetIsWriter }

    /// An open (with a writer to go to) asks for one of the `openLimit` slots.
    public mutating func openSlotRequested(poolMaxConnections: Int) -> OpenSlotDecision {
        if opening < Self.openLimit(poolMaxConnections: poolMaxConnections) {
            opening += 1
            return .granted
        }
        let id = nextWaiterID()
        openQueue.append(id)
        return .queued(id)
    }

    /// An open that held a slot finished (either way). Returns the queued open the slot passes to
    /// (oldest first), or nil when none waits (the slot is free).
    public mutating func openFinished() -> OpenWaiterID? {
        if openQueue.isEmpty {
            opening -= 1
            return nil
        }
        return openQueue.removeFirst()
    }

    private mutating func nextWaiterID() -> OpenWaiterID {
        lastWaiterID &+= 1
        return OpenWaiterID(lastWaiterID)
    }

    // MARK: Readers

    /// The readers are the available targets whose role is reader; those that leave the set retire,
    /// those that join it are activated (in target order).
    private mutating func updateReaders() -> ReaderChanges {
        guard tracksReaders else { return ReaderChanges() }
        let readers = targets.filter { roles[$0] == .reader && health[$0]?.state == .available }
        var changes = ReaderChanges()
        let current = Set(readers)
        changes.retire = activeReaders.subtracting(current).sorted { $0.description < $1.description }
        for target in readers where !activeReaders.contains(target) {
            changes.activate.append(ReaderActivation(target: target, maxConnections: targetMaxConnections[target]))
        }
        activeReaders = current
        return changes
    }

    // MARK: Metrics

    /// The seconds with an available writer not yet reported (TargetGroupWriterAvailableDuration),
    /// counting the current spell up to `now`.
    public mutating func writerAvailableSecondsToReport(now: NIODeadline) -> Double {
        var seconds = writerAvailableSeconds
        if case .available(_, let since) = writerState { seconds += Double((now - since).nanoseconds) / 1e9 }
        let unreported = max(0, seconds - reportedWriterAvailableSeconds)
        reportedWriterAvailableSeconds = max(reportedWriterAvailableSeconds, seconds)
        return unreported
    }
}
