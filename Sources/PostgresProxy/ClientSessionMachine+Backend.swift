import ConnectionPool
import NIOCore
import PostgresWire

// The client session machine's events from its backend, cancel requests, time, drain and close.
extension ClientSessionMachine {
    // MARK: The backend

    public enum Prepared: Equatable {
        /// The login probe: learn what it reported, finish login, then give it back if nothing
        /// waits (`release`) or send what waits.
        case completeLogin(release: Bool)
        /// Send what waits; `thenCancel`: a cancel came meanwhile (it follows the statement).
        case sendHeld(thenCancel: Bool)
        case none
    }

    /// The leased backend has the client's parameters.
    public mutating func backendPrepared() -> Prepared {
        guard link == .preparing else { return .none }
        setLink(.attached)
        if isLoggingIn {
            if held.isEmpty {
                return .completeLogin(release: true)
            }
            return .completeLogin(release: false)
        }
        deadBackendsLeased = 0
        let cancel = cancelWhenSent
        cancelWhenSent = false
        return .sendHeld(thenCancel: cancel)
    }

    public enum PrepareFailure: Equatable {
        /// Close the session: `serverError` with the database's error, or as lost.
        case fail(serverError: Bool)
        /// The backend was dead before use: borrow another for what waits.
        case borrowAgain
        /// Answer what waits with "backend unavailable" (as a borrow failure).
        case unavailable
    }

    /// Preparing the leased backend failed. `serverError`: the database refused (its error goes
    /// to the client, FATAL); otherwise the connection broke.
    public mutating func backendPrepareFailed(serverError: Bool, now: NIODeadline) -> PrepareFailure {
        setLink(.none)
        if serverError { return .fail(serverError: true) }
        guard isReady, !pins.isPinned else { return .fail(serverError: false) }
        // Nothing of the client's reached the database: the backend was gone before it was used
        // (a restart closed the pool's idle backends). Its waiting messages go to another one;
        // after a few such, they get an error and the connection stays.
        if !held.isEmpty, deadBackendsLeased < 3 {
            deadBackendsLeased += 1
            startBorrow(now: now)
            return .borrowAgain
        }
        return .unavailable
    }

    public enum AfterReady: Equatable {
        case none
        /// The transaction is over: answer the client now, then give the backend back (and close
        /// if draining). The response latency ends here.
        case release(thenClose: Bool)
        /// All sync points answered; the session keeps the backend.
        case keep
        /// As `keep`, and the backend needs the client's parameters again (after a reset): its
        /// next messages wait (the link is `preparing` until `backendPrepared`).
        case reapply
    }

    /// The backend's ReadyForQuery messages (`count`, the last with `status`) reached the client.
    public mutating func readyForQueryForwarded(count: Int, status: PGTransactionStatus) -> AfterReady {
        guard count > 0 else { return .none }
        responses.syncPointsAnswered(count)
        transactionStatus = status
        guard responses.outstandingSyncs == 0 else { return .none }
        if mayRelease {
            // The next lease brings the backend to the client's values.
            needsParameterResync = false
            return .release(thenClose: draining)
        }
        if needsParameterResync, status != .failed, !sentUnsynced, responses.isEmpty {
            needsParameterResync = false
            setLink(.preparing)
            return .reapply
        }
        return .keep
    }

    var mayRelease: Bool {
        responses.outstandingSyncs == 0 && !pendingUnsynced && transactionStatus == .idle && !pins.isPinned && held.isEmpty
            && responses.isEmpty && cancelsInFlight == 0
    }

    /// The backend went back to the pool (`.release`, or a cancel that arrived after the end).
    public mutating func backendReleased(now: NIODeadline) {
        responses.removeAllPending()
        preparingForQuery = false
        syncInsteadOfQuery = false
        cancelWhenSent = false
        backendBlocked = false
        setLink(.none)
        lastActivity = now
    }

    public enum Lost: Equatable {
        case none
        /// A pinned session's state lived on that backend (or it was logging in): it cannot go on.
        case fail
        /// The client gets an error (with ReadyForQuery) for each unanswered sync point; for
        /// extended messages after them, the error (if not given already) and discarding until
        /// Sync. Idle in a transaction, its next statement gets the error. `borrow`: messages
        /// that arrived meanwhile go to a new backend.
        case answer(syncPoints: Int, unsyncedError: Bool, borrow: Bool)
    }

    /// The backend's connection closed under the session.
    public mutating func backendClosed(now: NIODeadline) -> Lost {
        guard link == .preparing || link == .attached else { return .none }
        setLink(.none)
        guard isReady, !pins.isPinned else { return .fail }
        let syncPoints = responses.outstandingSyncs
        let unsynced = pendingUnsynced
        let inTransaction = transactionStatus != .idle
        responses.reset()
        preparingForQuery = false
        syncInsteadOfQuery = false
        waitingForEarlierBatches = false
        skippingUntilSync = false
        sentUnsynced = false
        copyInActive = false
        needsParameterResync = false
        pendingUnsynced = false
        transactionStatus = .idle
        backendBlocked = false
        if unsynced {
            discardUntilSync = true
        } else if syncPoints == 0, inTransaction {
            transactionLost = true
        }
        lastActivity = now
        let borrow = !held.isEmpty
        if borrow { startBorrow(now: now) }
        return .answer(syncPoints: syncPoints, unsyncedError: unsynced && syncPoints == 0, borrow: borrow)
    }

    // MARK: Cancel

    public enum Cancel: Equatable {
        /// Nothing runs.
        case none
        /// Still waiting for a backend: the wait ends (cancel `request` at the pool, if any) and
        /// what waits gets "canceling statement due to user request" as a failed borrow.
        case cancelWait(RequestID?)
        /// Waiting for its backend to be prepared: the cancel follows the statement.
        case afterSend
        /// Send a CancelRequest to the backend (then `cancelSent`).
        case sendCancel
    }

    /// A CancelRequest carrying this session's key.
    public mutating func cancelRequested() -> Cancel {
        guard isReady else { return .none }
        switch link {
        case .borrowing(let request):
            return .cancelWait(request)
        case .none:
            return held.isEmpty ? .none : .cancelWait(nil)
        case .preparing:
            guard !held.isEmpty else { return .none }
            cancelWhenSent = true
            return .afterSend
        case .attached:
            return responses.outstandingSyncs > 0 || pendingUnsynced ? .sendCancel : .none
        }
    }

    /// A cancel request is on its way to the database.
    public mutating func cancelSent() {
        cancelsInFlight += 1
    }

    /// The database has it (or sending it failed). `.release`: the transaction ended meanwhile and
    /// the backend may go back now.
    public mutating func cancelDelivered() -> AfterReady {
        cancelsInFlight -= 1
        guard cancelsInFlight == 0, link == .attached, mayRelease else { return .none }
        needsParameterResync = false
        return .release(thenClose: draining)
    }

    // MARK: Time, drain, close

    public enum Timeout: Equatable {
        case none
        case authentication
        case idle
    }

    /// About once a second. `idleTimeout`: the configuration's (it may change on reload).
    public mutating func tick(now: NIODeadline, idleTimeout: TimeAmount) -> Timeout {
        switch state {
        case .authenticating:
            return now >= loginDeadline ? .authentication : .none
        case .ready:
            guard isBetweenTransactions else {
                // A long transaction is not idleness: the idle period starts when it ends.
                lastActivity = now
                return .none
            }
            return now >= lastActivity + idleTimeout ? .idle : .none
        case .loggingIn, .closed:
            return .none
        }
    }

    /// Graceful shutdown: true if the session must close now (between transactions, or not
    /// logged in); otherwise it closes after its current transaction.
    public mutating func drain() -> Bool {
        draining = true
        switch state {
        case .ready: return isBetweenTransactions
        case .authenticating: return true
        case .loggingIn, .closed: return false
        }
    }

    public enum BackendDisposal: Equatable {
        case none
        /// Clean: back to the pool for anyone.
        case release
        /// Session state (pins) or half-prepared: closed, never handed to anyone else.
        case discard
        /// Something runs on it: cancel it, then close.
        case cancelAndClose
        /// Idle in a transaction: roll back, then back to the pool.
        case rollbackAndRelease
    }

    public struct Teardown: Equatable {
        /// The pool request to cancel.
        public var cancelBorrow: RequestID?
        public var backend: BackendDisposal

        public init(cancelBorrow: RequestID?, backend: BackendDisposal) {
            self.cancelBorrow = cancelBorrow
            self.backend = backend
        }
    }

    /// The session ends (client gone, error, timeout, drain). Nil if it had already.
    public mutating func closed() -> Teardown? {
        guard !isClosed else { return nil }
        let link = self.link
        state = .closed
        held.removeAll()
        heldBytes = 0
        heldSyncPoints = 0
        var teardown = Teardown(cancelBorrow: nil, backend: .none)
        switch link {
        case .none:
            break
        case .borrowing(let request):
            teardown.cancelBorrow = request
        case .preparing, .attached:
            if link == .preparing || pins.isPinned {
                teardown.backend = responses.outstandingSyncs > 0 ? .cancelAndClose : .discard
            } else if responses.outstandingSyncs > 0 || pendingUnsynced {
                teardown.backend = .cancelAndClose
            } else if transactionStatus != .idle {
                teardown.backend = .rollbackAndRelease
            } else {
                teardown.backend = .release
            }
        }
        return teardown
    }
}
