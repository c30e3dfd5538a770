import ConciergeConfig
import ConnectionPool
import Logging
import NIOCore
import NIOSSL
import PostgresWire
import ProxyCore

/// A health check that got no answer within its timeout.
struct HealthCheckTimedOut: Error, CustomStringConvertible {
    var target: HostPort
    var timeoutMS: Int
    var description: String { "\(target): no answer to the health check within \(timeoutMS) ms" }
}

/// PostgreSQL's probe of a target's role, reported to the target group as a neutral
/// `TargetProbeResult`. Checks one target every `interval` over a connection it keeps (a login
/// per check would cost a PostgreSQL backend fork each time): `SELECT pg_is_in_recovery()`. A
/// check that fails or takes longer than `timeout` drops the connection; the next check
/// reconnects. `checkNow()` runs one at once (a backend connection to this target broke).
///
/// Confined to `eventLoop`.
final class TargetMonitor: @unchecked Sendable {
    let target: HostPort
    let eventLoop: any EventLoop
    private let settings: @Sendable () -> (BackendSettings, HealthCheckConfiguration)?
    private let report: @Sendable (HostPort, TargetProbeResult) -> Void
    private let logger: Logger
    private var connection: BackendConnection?
    private var running = false
    private var checkInFlight = false
    private var timer: Scheduled<Void>?
    private var stopped = false

    init(
        target: HostPort, eventLoop: any EventLoop, logger: Logger,
        settings: @escaping @Sendable () -> (BackendSettings, HealthCheckConfiguration)?,
        report: @escaping @Sendable (HostPort, TargetProbeResult) -> Void
    ) {
        self.target = target
        self.eventLoop = eventLoop
        self.settings = settings
        self.report = report
        self.logger = logger
    }

    func start() {
        eventLoop.execute {
            guard !self.running, !self.stopped else { return }
            self.running = true
            self.check()
        }
    }

    func stop() {
        eventLoop.execute {
            self.stopped = true
            self.timer?.cancel()
            self.connection?.close()
            self.connection = nil
        }
    }

    /// A check now (unless one is running); the regular schedule continues after it.
    func checkNow() {
        eventLoop.execute {
            guard self.running, !self.stopped, !self.checkInFlight else { return }
            self.timer?.cancel()
            self.check()
        }
    }

    /// `afterStaleConnection`: this check replaces one that failed on the connection kept from an
    /// earlier check (see below).
    private func check(afterStaleConnection: Bool = false) {
        guard !stopped, let (backendSettings, config) = settings() else { return }
        let reused = connection != nil
        checkInFlight = true
        let timeout = TimeAmount.milliseconds(Int64(config.timeoutMS))
        // The check's outcome: the query's answer, or the deadline's failure, whichever comes
        // first. A check must end even when its connection never answers (a path that drops
        // packets): otherwise no check is ever scheduled again.
        let checked = eventLoop.makePromise(of: Bool.self)
        let settled = Settled()
        let target = self.target
        let deadline = eventLoop.scheduleTask(in: timeout) { [weak self] in
            guard !settled.value else { return }
            settled.value = true
            // Too slow: drop the connection (the next check opens a new one).
            self?.connection?.close()
            self?.connection = nil
            checked.fail(HealthCheckTimedOut(target: target, timeoutMS: config.timeoutMS))
        }
        let result: EventLoopFuture<Bool>
        if let connection {
            result = connection.checkRecovery()
        } else {
            let opened = BackendConnection.connect(
                id: ConnectionID(-1), key: PoolKey(user: backendSettings.username, database: config.database),
                on: eventLoop, settings: backendSettings, pool: nil, connectTimeout: timeout)
            result = opened.flatMap { connection in
                guard !settled.value else {
                    connection.close()  // opened after the deadline: not kept
                    return self.eventLoop.makeFailedFuture(BackendError.connection("opened too late"))
                }
                self.connection = connection
                return connection.checkRecovery()
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
            case .success(let inRecovery):
                report(target, .up(inRecovery ? .reader : .writer, maxConnections: connection?.maxConnections))
            case .failure(let error):
                connection?.close()
                connection = nil
                if reused, !afterStaleConnection, !(error is HealthCheckTimedOut), !stopped {
                    // The connection kept since the last check was closed meanwhile (the database
                    // ended it: pg_terminate_backend, a restart): no news about the target yet. A
                    // fresh connection decides, now.
                    check(afterStaleConnection: true)
                    return
                }
                if let timedOut = error as? HealthCheckTimedOut {
                    report(target, .down(
                        TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: timedOut.description),
                        unresponsive: true))
                } else if let health = PostgresTargetErrors.targetHealth(after: error) {
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

/// Whether a check has its outcome (touched only on the monitor's event loop).
private final class Settled: @unchecked Sendable {
    var value = false
}
