import ConciergeConfig
import ConnectionPool
import Logging
import NIOCore
import NIOSSL
import PostgresWire

/// What one health check found.
enum TargetCheckResult: Sendable {
    /// The target answered: a standby (`inRecovery`) or a primary. `maxConnections` is read once
    /// per health-check connection.
    case up(inRecovery: Bool, maxConnections: Int?)
    /// The target answered but the check could not tell its role (e.g. the check's database does
    /// not exist): it is up, role unknown.
    case upUnknownRole(String)
    case down(TargetHealth)
}

/// Checks one target every `interval` over a connection it keeps (a login per check would cost
/// a PostgreSQL backend fork each time): `SELECT pg_is_in_recovery()`. A check that fails or
/// takes longer than `timeout` drops the connection; the next check reconnects. `checkNow()`
/// runs one at once (a backend connection to this target broke).
///
/// Confined to `eventLoop`.
final class TargetMonitor: @unchecked Sendable {
    let target: HostPort
    let eventLoop: any EventLoop
    private let settings: @Sendable () -> (BackendSettings, HealthCheckConfiguration)?
    private let report: @Sendable (HostPort, TargetCheckResult) -> Void
    private let logger: Logger
    private var connection: BackendConnection?
    private var running = false
    private var checkInFlight = false
    private var timer: Scheduled<Void>?
    private var stopped = false

    init(
        target: HostPort, eventLoop: any EventLoop, logger: Logger,
        settings: @escaping @Sendable () -> (BackendSettings, HealthCheckConfiguration)?,
        report: @escaping @Sendable (HostPort, TargetCheckResult) -> Void
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

    private func check() {
        guard !stopped, let (backendSettings, config) = settings() else { return }
        checkInFlight = true
        let timeout = TimeAmount.milliseconds(Int64(config.timeoutMS))
        let deadline = eventLoop.scheduleTask(in: timeout) { [weak self] in
            // Too slow: drop the connection; its pending check fails.
            self?.connection?.close()
            self?.connection = nil
        }
        let result: EventLoopFuture<Bool>
        if let connection {
            result = connection.checkRecovery()
        } else {
            let opened = BackendConnection.connect(
                id: ConnectionID(-1), key: PoolKey(user: backendSettings.username, database: config.database),
                on: eventLoop, settings: backendSettings, pool: nil, connectTimeout: timeout)
            result = opened.flatMap { connection in
                self.connection = connection
                return connection.checkRecovery()
            }
        }
        result.whenComplete { [self] outcome in
            deadline.cancel()
            checkInFlight = false
            switch outcome {
            case .success(let inRecovery):
                report(target, .up(inRecovery: inRecovery, maxConnections: connection?.maxConnections))
            case .failure(let error):
                connection?.close()
                connection = nil
                if let health = TargetHealth(after: error) {
                    report(target, .down(health))
                } else {
                    report(target, .upUnknownRole("\(error)"))
                }
            }
            guard !stopped else { return }
            timer = eventLoop.scheduleTask(in: .milliseconds(Int64(config.intervalMS))) { [weak self] in self?.check() }
        }
    }
}
