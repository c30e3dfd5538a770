import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The process's file descriptors, shared by every listener.
///
/// Out of descriptors, `accept` fails at once while connections wait, and SwiftNIO's listener
/// retries as long as the socket is readable: it spins (both event loops at 100%). So the proxy
/// never lets its clients take the last descriptors: beyond `clientLimit` open client sockets
/// (the open-file limit less a reserve for backends, the admin port, logs and listeners), a
/// new client is closed as it is accepted, which costs a descriptor only for that moment. Should
/// accept fail anyway, the listener's `AcceptBackoffHandler` pauses reads (SwiftNIO's own remedy)
/// and the log says so at most once a second.
public enum ListenerBackoff {
    public static let pause = TimeAmount.milliseconds(250)
    private static let lastWarning = Synchronization.Atomic<Int64>(0)
    private static let openClients = Synchronization.Atomic<Int>(0)
    private static let lastRefusal = Synchronization.Atomic<Int64>(0)

    /// Client sockets the process may hold open at once.
    public static let clientLimit: Int = {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(Int32.max) else {
            return Int.max
        }
        let nofile = Int(clamping: limit.rlim_cur)
        return max(16, nofile - max(128, nofile / 8))
    }()

    public static func handler(listener: String, logger: Logger) -> AcceptBackoffHandler {
        AcceptBackoffHandler(shouldForwardIOErrorCaught: false) { error in
            if once(per: 1, last: lastWarning) {
                logger.warning("could not accept a connection: accepting paused", metadata: [
                    "concierge.listener": "\(listener)",
                    "concierge.error": "\(error)",
                    "concierge.pause_ms": "\(pause.nanoseconds / 1_000_000)",
                ])
            }
            return pause
        }
    }

    /// A client socket was accepted: false (and the socket is to be closed) at `clientLimit`.
    /// The client counts from `clientOpened` (when its session is made) until `clientClosed`
    /// (when the session closes): the runtime pairs the two. Two event loops may both admit a
    /// client at the limit; the limit leaves a reserve of descriptors for that.
    /// (A callback on each channel's close future did the counting before: an allocation per
    /// connection, held by every idle client for its life.)
    public static func admitClient(logger: Logger) -> Bool {
        guard openClients.load(ordering: .relaxed) >= clientLimit else { return true }
        if once(per: 1, last: lastRefusal) {
            logger.warning("client connection refused: the process is at its open-file limit", metadata: [
                "concierge.client_limit": "\(clientLimit)"
            ])
        }
        return false
    }

    /// A client session was made (see `admitClient`).
    public static func clientOpened() {
        openClients.add(1, ordering: .relaxed)
    }

    /// A client session closed (see `admitClient`).
    public static func clientClosed() {
        openClients.subtract(1, ordering: .relaxed)
    }

    private static func once(per seconds: Int64, last: borrowing Synchronization.Atomic<Int64>) -> Bool {
        let now = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        let previous = last.load(ordering: .relaxed)
        guard now - previous >= seconds || previous == 0 else { return false }
        return last.compareExchange(expected: previous, desired: max(now, 1), ordering: .relaxed).exchanged
    }
}
