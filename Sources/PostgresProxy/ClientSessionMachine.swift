import ConnectionPool
import DequeModule
import NIOCore
import PostgresWire
import SQLClassifier

/// A client message on its way to a backend, with what the classifier found it resets.
public struct HeldMessage {
    public var frame: PGFrame
    public var resets: Resets

    public init(_ frame: PGFrame, resets: Resets = Resets()) {
        self.frame = frame
        self.resets = resets
    }
}

/// The client session's life, as a pure machine: logging in, between transactions without a
/// backend, waiting for one, having it prepared, attached to it, closed; and what the client sent
/// meanwhile. The NIO handler (`ClientSession`) runs its actions: it borrows, leases, writes and
/// closes, and it keeps the backend object itself (the machine knows only how it stands with
/// one). Time is an input (`now`), so timeouts are tested without sleeping.
///
/// What happens to each message once it reaches an attached backend (statement bookkeeping,
/// resets, the response stream) is decided by the smaller machines the session also holds:
/// `ResponseTracker`, `PinState` and the statement catalogue.
public struct ClientSessionMachine {
    /// How the session stands with a backend.
    public enum Link: Equatable, Sendable {
        /// No backend, none asked for.
        case none
        /// Asked the pool for one. The pool's request id, once `borrow` returned it: the pool may
        /// answer before it returns (an idle backend on the same loop), then there is none.
        case borrowing(RequestID?)
        /// Leased; the backend is being brought to the client's parameters (or, during login,
        /// probed for what PostgreSQL reports).
        case preparing
        /// Ready: the client's messages go to it.
        case attached
    }

    public enum State: Equatable, Sendable {
        /// Before and during authentication (`ClientLogin` decides), until `loginDeadline`.
        case authenticating
        /// Authenticated; ReadyForQuery not sent yet (a login probe may be borrowing a backend).
        case loggingIn(Link)
        /// Serving queries.
        case ready(Link)
        case closed
    }

    public internal(set) var state: State = .authenticating

    /// What the client sent while no backend could take it, in order.
    public internal(set) var held: Deque<HeldMessage> = []
    public internal(set) var heldBytes = 0
    /// Query, Sync and FunctionCall messages among `held`: each owes the client a ReadyForQuery.
    public internal(set) var heldSyncPoints = 0
    /// Some of `held` wait for the answer to an earlier batch (not for a backend).
    public var waitingForEarlierBatches = false

    /// What the backend owes, in order, for what was sent to it (see `ResponseTracker`).
    public var responses = ResponseTracker()
    /// Why the session is pinned (see `PinState`).
    public var pins = PinState()
    /// The client's prepared statements, unnamed statement and portals (see `StatementCatalogue`).
    public var catalogue = StatementCatalogue()
    /// The client's session parameters (see `SessionParameters`).
    public var parameters = SessionParameters()
    /// A parameter reset on its way (see `ResetWindow`).
    @inlinable public var resetWindow: ResetWindow? {
        get { resetWindowStorage.value }
        set { resetWindowStorage.value = newValue }
    }
    /// Out of line: a window is open only during a RESET ALL or DISCARD ALL, and inline it made
    /// every session, idle ones included, about 100 bytes larger.
    @usableFromInline var resetWindowStorage = OutOfLine<ResetWindow>()
    /// The reset query at the head of `responses` failed (some statement in it did).
    public var resetQueryFailed = false
    /// The reset at the head of `responses` removed statements (its command tag arrived).
    public var statementResetConfirmed = false
    /// How the classifier reads this server's SQL (set at login).
    public var classifierOptions = ClassifierOptions()

    // The extended-query batch, as PostgreSQL sees it.
    /// Extended-protocol messages sent (or held) since the last Sync: the backend holds their
    /// state.
    public var pendingUnsynced = false
    /// Messages other than a Sync or Query have gone to the backend since the last of those:
    /// the backend is inside the client's batch (an implicit transaction), where the proxy must
    /// not send a Sync of its own. (`pendingUnsynced` also counts messages still held.)
    public var sentUnsynced = false
    /// An extended-protocol message failed and no Sync has been sent since: PostgreSQL skips
    /// everything the client sends until its Sync, so the proxy neither answers nor records it.
    public var skippingUntilSync = false
    /// The client gets an error for what it sends until its next Sync (PostgreSQL's rule after an
    /// error in an extended batch), answered by the proxy.
    public internal(set) var discardUntilSync = false
    /// The backend of an open transaction died while the client was idle in it: its next
    /// statement is answered with an error (and the transaction is over).
    public internal(set) var transactionLost = false
    /// The backend is in copy-in mode through the extended protocol and the client has not sent
    /// CopyDone or CopyFail yet: its Syncs meanwhile are ignored by PostgreSQL.
    public var copyInActive = false
    /// The proxy parsed a statement for a simple Query that runs it (`EXECUTE name`), and that
    /// Parse failed: PostgreSQL skips everything up to a Sync, where it would have run the
    /// client's Query and failed it with the same error. The Query is replaced by a Sync, whose
    /// ReadyForQuery answers it.
    public var syncInsteadOfQuery = false
    /// The Parse the client's messages wait for (the statement catalogue's row-type check)
    /// prepares a statement for a simple Query: if it fails, the Query must still be answered.
    public var preparingForQuery = false
    /// The last ReadyForQuery's status.
    public var transactionStatus = PGTransactionStatus.idle
    /// After RESET ALL, RESET name or DISCARD ALL on a backend the session keeps: the client's
    /// values go back to it before its next messages.
    public var needsParameterResync = false

    // Cancel.
    /// A cancel arrived while the backend was being prepared for the client (its session
    /// parameters set), before the held statement reached it: it is sent once the statement is.
    public internal(set) var cancelWhenSent = false
    /// Cancel requests sent for the backend this client holds and not yet answered (the database
    /// closes a cancel connection once it has signalled the backend). The backend is not given
    /// back before: a late signal would cancel whatever another client runs on it next.
    public internal(set) var cancelsInFlight = 0
    /// Backends leased in a row that were dead before use (see `backendPrepareFailed`).
    public internal(set) var deadBackendsLeased = 0

    /// Shutting down: close between transactions.
    public internal(set) var draining = false
    /// The backend's socket is full (e.g. a large COPY IN): stop reading from the client.
    public var backendBlocked = false

    // Time.
    public internal(set) var lastActivity: NIODeadline
    public internal(set) var loginDeadline: NIODeadline
    public internal(set) var borrowStarted = NIODeadline.uptimeNanoseconds(0)

    /// PostgreSQL's authentication_timeout: a client must log in within a minute.
    public static let authenticationTimeout = TimeAmount.seconds(60)
    /// How much a client may send ahead while it waits for a backend before we stop reading it.
    public static let maxHeldBytes = 65_536

    public init(now: NIODeadline) {
        self.lastActivity = now
        self.loginDeadline = .distantFuture
    }

    // MARK: Derived state
    //
    // Inlinable, like every small getter the handler reads on the data path: the handler keeps
    // the machine in a class, and a call into this module on it would copy the whole machine (see
    // `popSendable`); inlined, a getter reads the fields it needs in place.

    @inlinable public var link: Link {
        switch state {
        case .loggingIn(let link), .ready(let link): return link
        case .authenticating, .closed: return .none
        }
    }

    mutating func setLink(_ link: Link) {
        switch state {
        case .loggingIn: state = .loggingIn(link)
        case .ready: state = .ready(link)
        case .authenticating, .closed: break
        }
    }

    @inlinable public var isClosed: Bool { state == .closed }
    @inlinable public var isReady: Bool {
        if case .ready = state { return true }
        return false
    }
    @inlinable public var isLoggingIn: Bool {
        if case .loggingIn = state { return true }
        return false
    }
    @inlinable public var isBackendReady: Bool { link == .attached }
    @inlinable public var isBorrowing: Bool {
        if case .borrowing = link { return true }
        return false
    }

    /// Nothing in flight and no transaction open (pinned or not): the client may be closed
    /// (idle timeout, shutdown) without losing anything.
    @inlinable public var isBetweenTransactions: Bool {
        !isBorrowing && held.isEmpty && responses.outstandingSyncs == 0 && !pendingUnsynced && transactionStatus == .idle
    }

    /// No backend serves this client and nothing waits for one: statement bookkeeping (Parse,
    /// Close of named statements, Flush, and the Sync after them) is answered by the proxy.
    @inlinable public var answersLocally: Bool {
        state == .ready(.none) && held.isEmpty
    }

    /// `DEALLOCATE name` of a protocol-level statement may be answered by the proxy: nothing is
    /// in flight or waiting.
    @inlinable public var mayAnswerDeallocateLocally: Bool {
        guard isReady, !isBorrowing else { return false }
        return responses.outstandingSyncs == 0 && !pendingUnsynced && !sentUnsynced && responses.isEmpty && held.isEmpty
    }

    /// Whether to stop reading from the client.
    @inlinable public var readsPaused: Bool {
        switch state {
        case .loggingIn: return true
        // Reading on while a few messages wait for a backend saves two epoll_ctl calls per
        // transaction; a client that pipelines more than `maxHeldBytes` meanwhile is paused.
        case .ready: return heldBytes > Self.maxHeldBytes || backendBlocked
        case .authenticating, .closed: return false
        }
    }

    /// For the gauges: attached and pinned, attached and in a transaction.
    @inlinable public var countsAsPinned: Bool { link != .none && pins.isPinned }
    @inlinable public var countsInTransaction: Bool {
        link != .none && (transactionStatus != .idle || responses.outstandingSyncs > 0 || pendingUnsynced)
    }

    // MARK: Login

    /// The client's connection is up: it must log in by `now + authenticationTimeout`.
    public mutating func connected(now: NIODeadline) {
        loginDeadline = now + Self.authenticationTimeout
    }

    public enum LoginStart: Equatable {
        /// PostgreSQL's spelling of what the client asked for is known: answer now.
        case completeLogin
        /// Borrow a backend to learn it (see `backendPrepared`).
        case borrowProbe
    }

    /// The client authenticated. `knowsParameters`: PostgreSQL's spelling of every tracked
    /// startup parameter is known; otherwise the first backend tells (the login probe).
    public mutating func authenticated(knowsParameters: Bool, now: NIODeadline) -> LoginStart {
        guard state == .authenticating else { return .completeLogin }
        state = .loggingIn(.none)
        if knowsParameters { return .completeLogin }
        startBorrow(now: now)
        return .borrowProbe
    }

    /// ReadyForQuery went to the client. True: messages it pipelined meanwhile need a backend
    /// (the borrow has started).
    public mutating func loginCompleted(now: NIODeadline) -> Bool {
        guard case .loggingIn(let link) = state else { return false }
        state = .ready(link)
        guard !held.isEmpty, link == .none else { return false }
        startBorrow(now: now)
        return true
    }

    // MARK: Messages from the client

    public enum Gate: Equatable {
        /// Handle the message.
        case proceed
        /// Discarded (PostgreSQL's rule after an error, until Sync).
        case drop
        /// The Sync that ends a discarded batch: ReadyForQuery (idle).
        case replyReadyForQuery
        /// The transaction's backend was lost: the client gets that error, with a ReadyForQuery
        /// if the message was a sync point.
        case transactionLost(thenReady: Bool)
        case close
    }

    /// The client sent something (once per read).
    public mutating func clientActivity(now: NIODeadline) {
        lastActivity = now
    }

    /// Every message from the client passes here first.
    public mutating func messageArrived(_ type: UInt8) -> Gate {
        if transactionLost, type != PGMessageType.Frontend.terminate {
            transactionLost = false
            let syncPoint = Self.isSyncPoint(type)
            if !syncPoint { discardUntilSync = true }
            return .transactionLost(thenReady: syncPoint)
        }
        if discardUntilSync {
            if type == PGMessageType.Frontend.sync {
                discardUntilSync = false
                return .replyReadyForQuery
            }
            return type == PGMessageType.Frontend.terminate ? .close : .drop
        }
        return .proceed
    }

    public enum Route: Equatable {
        /// Write it to the attached backend.
        case send
        /// Kept until a backend is ready, or an earlier batch is answered.
        case held
        /// Kept; ask the pool for a backend (`borrowRequested` follows).
        case borrow
    }

    /// Where a message goes. `sendable`: the attached backend may take it now (the handler asks
    /// only when nothing is held, see `mayTakeNow`); otherwise it must wait for an earlier batch's
    /// answer. `now` is read only when a borrow starts (a clock read per message otherwise).
    public mutating func route(_ message: HeldMessage, now: @autoclosure () -> NIODeadline, sendable: Bool) -> Route {
        if link == .attached {
            if held.isEmpty, sendable { return .send }
            // Behind a batch whose outcome decides how this message is to be sent: it waits
            // (and everything after it, to keep the order) until that batch is answered.
            hold(message)
            waitingForEarlierBatches = true
            return .held
        }
        hold(message)
        if state == .ready(.none) {
            startBorrow(now: now())
            return .borrow
        }
        return .held
    }

    /// Whether a new message could go straight to the backend, if it need not wait for an
    /// earlier batch: the handler checks that only then.
    @inlinable public var mayTakeNow: Bool { link == .attached && held.isEmpty }

    private mutating func hold(_ message: HeldMessage) {
        held.append(message)
        heldBytes += message.frame.bytes.readableBytes
        if Self.isSyncPoint(message.frame.type) { heldSyncPoints += 1 }
    }

    public static func isSyncPoint(_ type: UInt8) -> Bool {
        type == PGMessageType.Frontend.query || type == PGMessageType.Frontend.sync
            || type == PGMessageType.Frontend.functionCall
    }

    /// Takes the first held message, to send to the attached backend. The handler decides first
    /// whether it may go now (or must wait for the answer to an earlier batch); when nothing in
    /// flight could free it, it goes anyway: a client is never stalled on a guess.
    public mutating func popHeld() -> HeldMessage? {
        guard link == .attached, !held.isEmpty else { return nil }
        let first = held.removeFirst()
        heldBytes -= first.frame.bytes.readableBytes
        if Self.isSyncPoint(first.frame.type) { heldSyncPoints -= 1 }
        if held.isEmpty { heldBytes = 0 }
        return first
    }

    /// Puts back at the head of `held` the message `popHeld` just returned (it must wait).
    mutating func unpopHeld(_ message: HeldMessage) {
        heldBytes += message.frame.bytes.readableBytes
        if Self.isSyncPoint(message.frame.type) { heldSyncPoints += 1 }
        held.prepend(message)
    }

    /// After the held messages that could go went: true if the queue is empty now (reads may
    /// resume).
    public mutating func heldDrained() -> Bool {
        guard held.isEmpty else { return false }
        waitingForEarlierBatches = false
        heldBytes = 0
        return true
    }

    // MARK: The pool

    mutating func startBorrow(now: NIODeadline) {
        borrowStarted = now
        setLink(.borrowing(nil))
    }

    /// Ask for a backend (login probe, or a new one after a dead lease).
    public mutating func borrowStarting(now: NIODeadline) {
        startBorrow(now: now)
    }

    /// `borrow` returned: the request to cancel if the client gives up, unless the pool already
    /// answered (it may, before returning).
    public mutating func borrowRequested(_ request: RequestID) {
        if link == .borrowing(nil) { setLink(.borrowing(request)) }
    }

    public enum BorrowAnswer: Equatable {
        /// Nobody wants it any more (the client left, or cancelled its wait): give it back.
        case returnUnused
        /// Lease it; `probing`: the login probe, which sets the startup packet's values as the
        /// client wrote them. `waited`: for the borrow latency.
        case lease(probing: Bool, waited: TimeAmount)
    }

    public mutating func borrowSucceeded(now: NIODeadline) -> BorrowAnswer {
        // A cancelled wait that the pool answered meanwhile has nothing held any more.
        guard isBorrowing, !(isReady && held.isEmpty) else {
            if isBorrowing { setLink(.none) }
            return .returnUnused
        }
        let probing = isLoggingIn
        setLink(.preparing)
        return .lease(probing: probing, waited: now - borrowStarted)
    }

    public enum BorrowFailure: Equatable {
        case none
        /// Close the session with the error (FATAL).
        case fail
        /// PostgreSQL's own semantics for a failed statement: the error and a ReadyForQuery for
        /// each held sync point; when extended messages came after the last one, the error (if not
        /// given already) and they are discarded until the client's Sync. The connection stays.
        case answer(syncPoints: Int, unsyncedError: Bool)
    }

    /// The pool could not give a backend (or the client cancelled its wait: `borrowCancelled`).
    public mutating func borrowFailed(closesSession: Bool) -> BorrowFailure {
        guard !isClosed else { return .none }
        setLink(.none)
        if isLoggingIn || closesSession { return .fail }
        let syncPoints = heldSyncPoints
        var unsyncedError = false
        if pendingUnsynced {
            unsyncedError = syncPoints == 0
            discardUntilSync = true
            pendingUnsynced = false
        }
        held.removeAll(keepingCapacity: true)
        heldBytes = 0
        heldSyncPoints = 0
        return .answer(syncPoints: syncPoints, unsyncedError: unsyncedError)
    }
}
