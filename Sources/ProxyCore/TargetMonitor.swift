import ConnectionPool
import Logging
import NIOCore

/// A health check that got no answer within its timeout.
public struct HealthCheckTimedOut: Error, CustomStringConvertible {
    public var target: String
    public var timeoutMS: Int
    public var description: String { "\(target): no answer to the health check within \(timeoutMS) ms" }
}

/// How a monitor checks its target: the login its probe connection uses, and the check's pace.
public struct TargetCheckSettings: Sendable {
    public var login: BackendLogin
    /// Between the end of one check and the start of the next.
    public var intervalMS: Int
    /// A check (including opening its connection) that takes longer fails, and drops its
    /// connection.
    public var timeoutMS: Int

    public init(login: BackendLogin, intervalMS: Int, timeoutMS: Int) {
        self.login = login
        self.intervalMS = intervalMS
        self.timeoutMS = timeoutMS
    }
}

/// Checks one target every `intervalMS`, through its engine's probe, and reports each check to the
/// target group as a neutral `TargetProbeResult`. The probe runs over a connection the monitor
/// keeps (a login per check would cost a database session each time). A check that fails or takes
/// longer than `timeoutMS` drops the connection; the next check reconnects. A check that takes
/// too long is reported (as unresponsive) only when the one run at once after it, on a fresh
/// connection, takes too long as well. `checkNow()` runs one at once (a backend connection to this
/// target broke).
///
/// Engine-neutral: what a check asks and how its errors read is the engine's (`DatabaseEngine`);
/// the schedule, the deadline and what a stale kept connection means are the same for every
/// engine, here.
///
/// Confined to `eventLoop`.
public final class TargetMonitor<Engine: DatabaseEngine, Target: Hashable & Sendable & CustomStringConvertible>:
    @unchecked Sendable
{
    public let target: Target
    public let eventLoop: any EventLoop
    private let engine: Engine
    private let settings: @Sendable () -> TargetCheckSettings?
    private let report: @Sendable (Target, TargetProbeResult) -> Void
    private let logger: Logger
    private var connection: Engine.ProbeConnection?
    private var running = false
    private var checkInFlight = false
    private var timer: Scheduled<Void>?
    private var stopped = false
    /// The last check missed its deadline. One miss is not yet news: it is confirmed at once on a
    /// fresh connection, and only a second miss in a row reports the target unresponsive (which
    /// aborts its connections). A single stall of the database or of this loop (a checkpoint, a
    /// busy host) then costs no transaction; a hung target is still found within two deadlines.
    private var lastCheckTimedOut = false

    public init(
        target: Target, engine: Engine, eventLoop: any EventLoop, logger: Logger,
        settings: @escaping @Sendable () -> TargetCheckSettings?,
        report: @escaping @Sendable (Target, TargetProbeResult) -> Void
    ) {
        self.target = target
        self.engine = engine
        self.eventLoop = eventLoop
        self.settings = settings
        self.report = report
        self.logger = logger
    }

    public func start() {
        eventLoop.execute {
            guard !self.running, !self.stopped else { return }
            self.running = true
            self.check()
        }
    }

    public func stop() {
        eventLoop.execute {
            self.stopped = true
            self.timer?.cancel()
            self.dropConnection()
        }
    }

    /// A check now (unless one is running); the regular schedule continues after it.
    public func checkNow() {
        eventLoop.execute {
            guard self.running, !self.stopped, !self.checkInFlight else { return }
            self.timer?.cancel()
            self.check()
        }
    }

    private func dropConnection() {
        if let connection { engine.closeProbe(connection) }
        connection = nil
    }

    /// `afterStaleConnection`: this check replaces one that failed on the connection kept from an
    /// earlier check (see below).
    private func check(afterStaleConnection: Bool = false) {
        guard !stopped, let config = settings() else { return }
        let reused = connection != nil
        checkInFlight = true
        let timeout = TimeAmount.milliseconds(Int64(config.timeoutMS))
        // The check's outcome: the probe's answer, or the deadline's failure, whichever comes
        // first. A check must end even when its connection never answers (a path that drops
        // packets): otherwise no check is ever scheduled again.
        let checked = eventLoop.makePromise(of: ProbedTarget.self)
        let settled = Settled()
        let target = self.target
        let deadline = eventLoop.scheduleTask(in: timeout) { [weak self] in
            guard !settled.value else { return }
            settled.value = true
            // Too slow: drop the connection (the next check opens a new one).
            self?.dropConnection()
            checked.fail(HealthCheckTimedOut(target: "\(target)", timeoutMS: config.timeoutMS))
        }
        let result: EventLoopFuture<ProbedTarget>
        if let connection {
            result = engine.probe(connection)
        } else {
            let opened = engine.openProbe(login: config.login, on: eventLoop, timeout: timeout)
            result = opened.flatMap { connection in
                guard !settled.value else {
                    self.engine.closeProbe(connection)  // opened after the deadline: not kept
                    return self.eventLoop.makeFailedFuture(ProbeOpenedTooLate())
                }
                self.connection = connection
                return self.engine.probe(connection)
            }
        }
        result.whenComplete { outcome in
            guard !settled.value else { return }
            settled.value = true
            checked.completeWith(outcome)
        }
        checked.futureResult.whenComplete { [self] outcome in
            deadline.cancel()
            checkInFlight = false
            switch outcome {
            case .success(let probed):
                lastCheckTimedOut = false
                report(target, .up(probed.role, maxConnections: probed.maxConnections))
            case .failure(let error):
                dropConnection()
                let timedOut = error is HealthCheckTimedOut
                let confirmsAMiss = lastCheckTimedOut
                lastCheckTimedOut = timedOut
                if timedOut, !confirmsAMiss, !stopped {
                    // The first miss: confirmed now, on a fresh connection (dropped above).
                    logger.info("a health check missed its deadline: checking again at once", metadata: [
                        "concierge.target": "\(target)", "concierge.timeout_ms": "\(config.timeoutMS)",
                    ])
                    check()
                    return
                }
                if reused, !afterStaleConnection, !timedOut, !stopped {
                    // The connection kept since the last check was closed meanwhile (the database
                    // ended it: an administrator ended the session, a restart): no news about the
                    // target yet. A fresh connection decides, now.
                    check(afterStaleConnection: true)
                    return
                }
                if let timedOut = error as? HealthCheckTimedOut {
                    report(target, .down(
                        TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: timedOut.description),
                        unresponsive: true))
                } else if let health = engine.targetHealth(after: error) {
                    report(target, .down(health, unresponsive: false))
                } else {
                    report(target, .upUnknownRole(why: "\(error)"))
                }
            }
            guard !stopped else { return }
            timer = eventLoop.scheduleTask(in: .milliseconds(Int64(config.intervalMS))) { [weak self] in self?.check() }
        }
    }
}

/// A probe connection that opened only after its check's deadline (never reported: the deadline
/// already settled the check).
struct ProbeOpenedTooLate: Error {}

/// Whether a check has its outcome (touched only on the monitor's event loop).
private final class Settled: @unchecked Sendable {
    var value = false
}
