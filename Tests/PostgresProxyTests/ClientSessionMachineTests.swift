import ConnectionPool
import NIOCore
import PostgresProxy
import PostgresWire
import SQLClassifier
import Testing

/// The client session's life event by event, without a socket or a database: each scenario the
/// integration suite covers for it (pinning, pipelining during login, borrow failure with held
/// sync points, backend lost while idle, in a transaction or with unsynced messages, drain, idle
/// timeout, cancel), with time given by the test.
@Suite struct ClientSessionMachineTests {
    typealias Frontend = PGMessageType.Frontend
    static let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func message(_ type: UInt8, _ body: String = "") -> HeldMessage {
        HeldMessage(PGFrame(type: type, body: ByteBuffer(string: body)))
    }

    static var query: HeldMessage { message(Frontend.query, "SELECT 1\0") }
    static var parse: HeldMessage { message(Frontend.parse, "\0SELECT 1\0\0\0") }
    static var bind: HeldMessage { message(Frontend.bind, "\0\0\0\0\0\0\0\0") }
    static var execute: HeldMessage { message(Frontend.execute, "\0\0\0\0\0") }
    static var sync: HeldMessage { message(Frontend.sync) }

    /// A session that logged in without a probe and is between transactions.
    static func loggedIn(now: NIODeadline = t0) -> ClientSessionMachine {
        var machine = ClientSessionMachine(now: now)
        machine.connected(now: now)
        same(machine.authenticated(knowsParameters: true, now: now), .completeLogin)
        same(machine.loginCompleted(now: now), false)
        #expect(machine.state == .ready(.none))
        return machine
    }

    /// Sends `message` the way the handler does: through the gate, then routed (always sendable).
    static func arrive(_ message: HeldMessage, _ machine: inout ClientSessionMachine, now: NIODeadline = t0)
        -> ClientSessionMachine.Route?
    {
        guard machine.messageArrived(message.frame.type) == .proceed else { return nil }
        let type = message.frame.type
        if type == Frontend.parse || type == Frontend.bind || type == Frontend.execute || type == Frontend.describe {
            machine.pendingUnsynced = true
        } else if type == Frontend.sync || type == Frontend.query {
            machine.pendingUnsynced = false
        }
        return machine.route(message, now: now, sendable: true)
    }

    /// What the handler records when it writes a message to the backend.
    static func sent(_ message: HeldMessage, _ machine: inout ClientSessionMachine) {
        if ClientSessionMachine.isSyncPoint(message.frame.type) {
            _ = machine.responses.syncPointSent()
            machine.responses.sent(message.frame.type == Frontend.query ? .query : .sync)
            machine.sentUnsynced = false
        } else {
            machine.sentUnsynced = true
        }
    }

    /// The backend's ReadyForQuery messages forwarded to the client (as the handler does for an
    /// untracked burst: each answers one pending entry).
    static func answered(_ machine: inout ClientSessionMachine, _ count: Int, _ status: PGTransactionStatus)
        -> ClientSessionMachine.AfterReady
    {
        machine.responses.forwardedUntracked(readyForQueryCount: count)
        return machine.readyForQueryForwarded(count: count, status: status)
    }

    /// A session attached to a backend after borrowing and preparing it.
    static func attached() -> ClientSessionMachine {
        var machine = loggedIn()
        same(arrive(query, &machine), .borrow)
        machine.borrowRequested(RequestID(clientID: 1))
        same(machine.borrowSucceeded(now: t0 + .milliseconds(3)), .lease(probing: false, waited: .milliseconds(3)))
        same(machine.backendPrepared(), .sendHeld(thenCancel: false))
        let first = machine.popHeld()
        #expect(first?.frame.type == Frontend.query)
        sent(first!, &machine)
        same(machine.heldDrained(), true)
        return machine
    }

    // MARK: Borrow, send, release

    @Test func aQueryBorrowsIsSentAndTheBackendGoesBackAtReadyForQuery() {
        var machine = Self.attached()
        #expect(machine.state == .ready(.attached))
        #expect(!machine.isBetweenTransactions)
        same(Self.answered(&machine, 1, .idle), .release(thenClose: false))
        machine.backendReleased(now: Self.t0)
        #expect(machine.state == .ready(.none))
        #expect(machine.isBetweenTransactions)
        #expect(machine.answersLocally)
    }

    @Test func aTransactionKeepsItsBackendUntilItEnds() {
        var machine = Self.attached()
        same(Self.answered(&machine, 1, .inTransaction), .keep)
        #expect(machine.state == .ready(.attached))
        // The next statement goes straight to the backend.
        same(Self.arrive(Self.query, &machine), .send)
        Self.sent(Self.query, &machine)
        same(Self.answered(&machine, 1, .idle), .release(thenClose: false))
    }

    @Test func aBurstOfReadyForQueryCountsEverySyncPoint() {
        var machine = Self.attached()
        same(Self.arrive(Self.query, &machine), .send)
        Self.sent(Self.query, &machine)
        #expect(machine.responses.outstandingSyncs == 2)
        same(Self.answered(&machine, 0, .idle), .none)
        same(Self.answered(&machine, 1, .idle), .none)
        same(Self.answered(&machine, 1, .idle), .release(thenClose: false))
    }

    @Test func theBorrowAnsweredBeforeBorrowReturnsKeepsNoRequest() {
        var machine = Self.loggedIn()
        same(Self.arrive(Self.query, &machine), .borrow)
        // The pool answers synchronously, inside `borrow`...
        same(machine.borrowSucceeded(now: Self.t0), .lease(probing: false, waited: .zero))
        // ... and then `borrow` returns its request: it is not a wait any more.
        machine.borrowRequested(RequestID(clientID: 9))
        #expect(machine.state == .ready(.preparing))
    }

    @Test func messagesWhileBorrowingAreHeldInOrderAndReadsPauseBeyondTheLimit() {
        var machine = Self.loggedIn()
        same(Self.arrive(Self.parse, &machine), .borrow)
        same(Self.arrive(Self.bind, &machine), .held)
        same(Self.arrive(Self.execute, &machine), .held)
        same(Self.arrive(Self.sync, &machine), .held)
        #expect(machine.heldSyncPoints == 1)
        #expect(!machine.readsPaused)
        let big = Self.message(Frontend.query, String(repeating: "x", count: ClientSessionMachine.maxHeldBytes) + "\0")
        same(Self.arrive(big, &machine), .held)
        #expect(machine.readsPaused)
        _ = machine.borrowSucceeded(now: Self.t0)
        _ = machine.backendPrepared()
        var types: [UInt8] = []
        while let next = machine.popHeld() { types.append(next.frame.type) }
        #expect(types == [Frontend.parse, Frontend.bind, Frontend.execute, Frontend.sync, Frontend.query])
        same(machine.heldDrained(), true)
        #expect(!machine.readsPaused)
    }

    @Test func aMessageThatMustWaitForAnEarlierBatchIsHeldWithEverythingAfterIt() {
        var machine = Self.attached()
        // The handler says the Parse must wait for the answer to the batch before it; the Sync
        // waits behind it.
        same(machine.route(Self.parse, now: Self.t0, sendable: false), .held)
        same(machine.route(Self.sync, now: Self.t0, sendable: true), .held)
        #expect(machine.waitingForEarlierBatches)
        same(machine.heldDrained(), false)
        same(machine.popHeld()?.frame.type, Frontend.parse)
        same(machine.popHeld()?.frame.type, Frontend.sync)
        same(machine.heldDrained(), true)
        #expect(!machine.waitingForEarlierBatches)
    }

    // MARK: Pinning

    @Test func aPinnedSessionKeepsItsBackendAndDiscardsItAtTheEnd() {
        var machine = Self.attached()
        same(machine.pins.pin(.setVariable), .setVariable)
        same(Self.answered(&machine, 1, .idle), .keep)
        #expect(machine.state == .ready(.attached))
        #expect(machine.countsAsPinned)
        #expect(machine.isBetweenTransactions)
        same(machine.closed(), ClientSessionMachine.Teardown(cancelBorrow: nil, backend: .discard))
    }

    @Test func aPinnedSessionWhoseBackendDiesIsClosed() {
        var machine = Self.attached()
        _ = machine.pins.pin(.temporaryObject)
        same(machine.backendClosed(now: Self.t0), .fail)
    }

    @Test func aPinnedSessionClosedMidStatementCancelsAndClosesItsBackend() {
        var machine = Self.attached()
        _ = machine.pins.pin(.setVariable)
        same(machine.closed(), ClientSessionMachine.Teardown(cancelBorrow: nil, backend: .cancelAndClose))
        same(machine.closed(), nil)
    }

    // MARK: Login

    @Test func messagesPipelinedDuringLoginWaitForTheProbeAndThenUseItsBackend() {
        var machine = ClientSessionMachine(now: Self.t0)
        machine.connected(now: Self.t0)
        same(machine.authenticated(knowsParameters: false, now: Self.t0), .borrowProbe)
        #expect(machine.state == .loggingIn(.borrowing(nil)))
        #expect(machine.readsPaused)
        machine.borrowRequested(RequestID(clientID: 4))
        same(Self.arrive(Self.query, &machine), .held)
        same(machine.borrowSucceeded(now: Self.t0), .lease(probing: true, waited: .zero))
        same(machine.backendPrepared(), .completeLogin(release: false))
        same(machine.loginCompleted(now: Self.t0), false)  // the probe's backend serves them
        #expect(machine.state == .ready(.attached))
        same(machine.popHeld()?.frame.type, Frontend.query)
    }

    @Test func theLoginProbeIsGivenBackWhenNothingWaits() {
        var machine = ClientSessionMachine(now: Self.t0)
        _ = machine.authenticated(knowsParameters: false, now: Self.t0)
        _ = machine.borrowSucceeded(now: Self.t0)
        same(machine.backendPrepared(), .completeLogin(release: true))
        machine.backendReleased(now: Self.t0)
        same(machine.loginCompleted(now: Self.t0), false)
        #expect(machine.state == .ready(.none))
    }

    @Test func aFailedBorrowDuringLoginClosesTheSession() {
        var machine = ClientSessionMachine(now: Self.t0)
        _ = machine.authenticated(knowsParameters: false, now: Self.t0)
        same(machine.borrowFailed(closesSession: false), .fail)
    }

    @Test func theLoginMustFinishWithinTheAuthenticationTimeout() {
        var machine = ClientSessionMachine(now: Self.t0)
        machine.connected(now: Self.t0)
        same(machine.tick(now: Self.t0 + .seconds(59), idleTimeout: .seconds(1)), .none)
        same(machine.tick(now: Self.t0 + .seconds(60), idleTimeout: .seconds(1)), .authentication)
    }

    // MARK: Borrow failures

    @Test func aFailedBorrowAnswersEveryHeldSyncPointAndDiscardsTheUnsyncedRest() {
        var machine = Self.loggedIn()
        same(Self.arrive(Self.query, &machine), .borrow)
        same(Self.arrive(Self.parse, &machine), .held)
        same(Self.arrive(Self.sync, &machine), .held)
        same(Self.arrive(Self.query, &machine), .held)
        same(Self.arrive(Self.bind, &machine), .held)
        same(machine.borrowFailed(closesSession: false), .answer(syncPoints: 3, unsyncedError: false))
        #expect(machine.state == .ready(.none))
        #expect(machine.held.isEmpty)
        // PostgreSQL's rule: extended messages are discarded until the client's Sync.
        same(machine.messageArrived(Frontend.execute), .drop)
        same(machine.messageArrived(Frontend.sync), .replyReadyForQuery)
        same(machine.messageArrived(Frontend.query), .proceed)
    }

    @Test func aFailedBorrowOfUnsyncedMessagesAloneGivesOneError() {
        var machine = Self.loggedIn()
        same(Self.arrive(Self.parse, &machine), .borrow)
        same(Self.arrive(Self.bind, &machine), .held)
        same(machine.borrowFailed(closesSession: false), .answer(syncPoints: 0, unsyncedError: true))
        same(machine.messageArrived(Frontend.terminate), .close)
    }

    @Test func aShutdownWhileBorrowingClosesTheSession() {
        var machine = Self.loggedIn()
        _ = Self.arrive(Self.query, &machine)
        same(machine.borrowFailed(closesSession: true), .fail)
    }

    @Test func aBackendDeadBeforeUseIsReplacedThreeTimesThenTheStatementFails() {
        var machine = Self.loggedIn()
        _ = Self.arrive(Self.query, &machine)
        for _ in 0..<3 {
            _ = machine.borrowSucceeded(now: Self.t0)
            same(machine.backendPrepareFailed(serverError: false, now: Self.t0), .borrowAgain)
            #expect(machine.isBorrowing)
        }
        _ = machine.borrowSucceeded(now: Self.t0)
        same(machine.backendPrepareFailed(serverError: false, now: Self.t0), .unavailable)
        same(machine.borrowFailed(closesSession: false), .answer(syncPoints: 1, unsyncedError: false))
    }

    @Test func aDatabaseErrorWhilePreparingClosesTheSession() {
        var machine = Self.loggedIn()
        _ = Self.arrive(Self.query, &machine)
        _ = machine.borrowSucceeded(now: Self.t0)
        same(machine.backendPrepareFailed(serverError: true, now: Self.t0), .fail(serverError: true))
    }

    // MARK: Backend lost

    @Test func aBackendLostWhileIdleInATransactionFailsTheNextStatement() {
        var machine = Self.attached()
        _ = Self.answered(&machine, 1, .inTransaction)
        same(machine.backendClosed(now: Self.t0), .answer(syncPoints: 0, unsyncedError: false, borrow: false))
        #expect(machine.state == .ready(.none))
        // Its next statement gets the error, with ReadyForQuery; the one after runs.
        same(machine.messageArrived(Frontend.query), .transactionLost(thenReady: true))
        same(machine.messageArrived(Frontend.query), .proceed)
        #expect(machine.isBetweenTransactions)
    }

    @Test func aBackendLostAfterTheSessionGaveItBackIsNotTheSessions() {
        var machine = Self.attached()
        _ = Self.answered(&machine, 1, .idle)
        machine.backendReleased(now: Self.t0)
        same(machine.backendClosed(now: Self.t0), .none)
    }

    @Test func aBackendLostIdleInATransactionFailsTheNextExtendedBatch() {
        var machine = Self.attached()
        _ = Self.answered(&machine, 1, .inTransaction)
        _ = machine.backendClosed(now: Self.t0)
        same(machine.messageArrived(Frontend.parse), .transactionLost(thenReady: false))
        same(machine.messageArrived(Frontend.bind), .drop)
        same(machine.messageArrived(Frontend.sync), .replyReadyForQuery)
    }

    @Test func aBackendLostMidStatementAnswersItsSyncPoints() {
        var machine = Self.attached()
        same(Self.arrive(Self.query, &machine), .send)
        Self.sent(Self.query, &machine)
        same(machine.backendClosed(now: Self.t0), .answer(syncPoints: 2, unsyncedError: false, borrow: false))
        #expect(machine.state == .ready(.none))
        #expect(machine.responses.outstandingSyncs == 0)
        #expect(machine.isBetweenTransactions)
    }

    @Test func aBackendLostWithUnsyncedMessagesDiscardsUntilSync() {
        var machine = Self.attached()
        _ = Self.answered(&machine, 1, .inTransaction)
        same(Self.arrive(Self.parse, &machine), .send)
        Self.sent(Self.parse, &machine)
        same(machine.backendClosed(now: Self.t0), .answer(syncPoints: 0, unsyncedError: true, borrow: false))
        same(machine.messageArrived(Frontend.execute), .drop)
        same(machine.messageArrived(Frontend.sync), .replyReadyForQuery)
    }

    @Test func messagesHeldWhenTheBackendDiesGoToANewOne() {
        var machine = Self.attached()
        same(machine.route(Self.sync, now: Self.t0, sendable: false), .held)
        same(Self.arrive(Self.query, &machine), .held)
        same(machine.backendClosed(now: Self.t0), .answer(syncPoints: 1, unsyncedError: false, borrow: true))
        #expect(machine.state == .ready(.borrowing(nil)))
    }

    // MARK: Idle timeout, drain

    @Test func theIdleTimeoutCountsFromTheEndOfTheLastTransaction() {
        var machine = Self.attached()
        let timeout = TimeAmount.seconds(10)
        // A long transaction is not idleness.
        same(machine.tick(now: Self.t0 + .seconds(30), idleTimeout: timeout), .none)
        _ = Self.answered(&machine, 1, .idle)
        machine.backendReleased(now: Self.t0 + .seconds(31))
        same(machine.tick(now: Self.t0 + .seconds(40), idleTimeout: timeout), .none)
        same(machine.tick(now: Self.t0 + .seconds(41), idleTimeout: timeout), .idle)
    }

    @Test func clientActivityPostponesTheIdleTimeout() {
        var machine = Self.loggedIn()
        machine.clientActivity(now: Self.t0 + .seconds(9))
        same(machine.tick(now: Self.t0 + .seconds(10), idleTimeout: .seconds(10)), .none)
        same(machine.tick(now: Self.t0 + .seconds(19), idleTimeout: .seconds(10)), .idle)
    }

    @Test func aDrainClosesAnIdleClientAtOnceAndABusyOneAfterItsTransaction() {
        var idle = Self.loggedIn()
        same(idle.drain(), true)
        var busy = Self.attached()
        same(busy.drain(), false)
        same(Self.answered(&busy, 1, .inTransaction), .keep)
        same(Self.arrive(Self.query, &busy), .send)
        Self.sent(Self.query, &busy)
        same(Self.answered(&busy, 1, .idle), .release(thenClose: true))
        var loggingIn = ClientSessionMachine(now: Self.t0)
        _ = loggingIn.authenticated(knowsParameters: false, now: Self.t0)
        same(loggingIn.drain(), false)
        var authenticating = ClientSessionMachine(now: Self.t0)
        same(authenticating.drain(), true)
    }

    // MARK: Cancel

    @Test func aCancelWhileWaitingForABackendEndsTheWait() {
        var machine = Self.loggedIn()
        _ = Self.arrive(Self.query, &machine)
        machine.borrowRequested(RequestID(clientID: 7))
        same(machine.cancelRequested(), .cancelWait(RequestID(clientID: 7)))
        same(machine.borrowFailed(closesSession: false), .answer(syncPoints: 1, unsyncedError: false))
        // The pool's answer, if it crossed the cancel, is given back.
        same(machine.borrowSucceeded(now: Self.t0), .returnUnused)
        #expect(machine.state == .ready(.none))
    }

    @Test func aCancelWhileTheBackendIsPreparedFollowsTheStatement() {
        var machine = Self.loggedIn()
        _ = Self.arrive(Self.query, &machine)
        _ = machine.borrowSucceeded(now: Self.t0)
        same(machine.cancelRequested(), .afterSend)
        same(machine.backendPrepared(), .sendHeld(thenCancel: true))
    }

    @Test func aCancelInFlightKeepsTheBackendUntilTheDatabaseHasIt() {
        var machine = Self.attached()
        same(machine.cancelRequested(), .sendCancel)
        machine.cancelSent()
        // The statement ends before the cancel arrives: the backend stays.
        same(Self.answered(&machine, 1, .idle), .keep)
        same(machine.cancelDelivered(), .release(thenClose: false))
    }

    @Test func aCancelWithNothingRunningDoesNothing() {
        var machine = Self.loggedIn()
        same(machine.cancelRequested(), .none)
        var attached = Self.attached()
        _ = Self.answered(&attached, 1, .inTransaction)
        same(attached.cancelRequested(), .none)
    }

    // MARK: Resets, teardown

    @Test func aResetOnAKeptBackendReappliesTheClientsParametersBeforeItsNextMessages() {
        var machine = Self.attached()
        machine.needsParameterResync = true
        same(Self.answered(&machine, 1, .inTransaction), .reapply)
        #expect(machine.state == .ready(.preparing))
        same(Self.arrive(Self.query, &machine), .held)
        same(machine.backendPrepared(), .sendHeld(thenCancel: false))
    }

    @Test func teardownDisposesOfTheBackendByWhatItHolds() {
        var clean = Self.attached()
        _ = clean.cancelRequested()
        clean.cancelSent()
        same(Self.answered(&clean, 1, .idle), .keep)
        same(clean.closed()?.backend, .release)
        var busy = Self.attached()
        same(busy.closed()?.backend, .cancelAndClose)
        var inTransaction = Self.attached()
        _ = Self.answered(&inTransaction, 1, .inTransaction)
        same(inTransaction.closed()?.backend, .rollbackAndRelease)
        var idleAttached = Self.attached()
        _ = idleAttached.pins.pin(.setVariable)
        _ = Self.answered(&idleAttached, 1, .idle)
        same(idleAttached.closed()?.backend, .discard)
        var waiting = Self.loggedIn()
        _ = Self.arrive(Self.query, &waiting)
        waiting.borrowRequested(RequestID(clientID: 3))
        same(waiting.closed(), ClientSessionMachine.Teardown(cancelBorrow: RequestID(clientID: 3), backend: .none))
    }

    // MARK: The client's messages

    static func parseFrame(_ name: String, _ sql: String) -> PGFrame {
        PGFrame(type: Frontend.parse, body: ByteBuffer(string: name + "\0" + sql + "\0\0\0"))
    }

    static func queryFrame(_ sql: String) -> PGFrame {
        PGFrame(type: Frontend.query, body: ByteBuffer(string: sql + "\0"))
    }

    static func isRoute(_ action: ClientSessionMachine.FrontendAction) -> HeldMessage? {
        if case .route(let message) = action { return message }
        return nil
    }

    static func reply(_ action: ClientSessionMachine.FrontendAction) -> ClientSessionMachine.LocalReply? {
        if case .reply(let reply) = action { return reply }
        return nil
    }

    @Test func statementBookkeepingWithoutABackendIsAnsweredByTheProxy() throws {
        var machine = Self.loggedIn()
        same(Self.reply(try machine.frontendMessage(Self.parseFrame("s1", "SELECT 1")).action), .parseComplete)
        #expect(machine.catalogue["s1"] != nil)
        #expect(machine.pendingUnsynced)
        same(Self.reply(try machine.frontendMessage(PGFrame(type: Frontend.sync, body: ByteBuffer())).action), .readyForQuery)
        #expect(!machine.pendingUnsynced)
        let close = PGFrame(type: Frontend.close, body: ByteBuffer(string: "Ss1\0"))
        same(Self.reply(try machine.frontendMessage(close).action), .closeComplete)
        #expect(machine.catalogue["s1"] == nil)
        if case .flushClient = try machine.frontendMessage(PGFrame(type: Frontend.flush, body: ByteBuffer())).action {
        } else {
            Issue.record("a Flush with nothing in flight is the proxy's")
        }
        #expect(machine.state == .ready(.none))
    }

    @Test func aBindNeedsABackend() throws {
        var machine = Self.loggedIn()
        let decision = try machine.frontendMessage(Self.bind.frame)
        #expect(Self.isRoute(decision.action)?.frame.type == Frontend.bind)
        #expect(machine.pendingUnsynced)
    }

    @Test func sqlThatChangesSessionStatePinsAndSaysSoOnce() throws {
        var machine = Self.loggedIn()
        let first = try machine.frontendMessage(Self.queryFrame("CREATE TEMP TABLE t (x int)"))
        #expect(Self.isRoute(first.action) != nil)
        #expect(first.newPins == .temporaryObject && first.firstPin)
        let again = try machine.frontendMessage(Self.queryFrame("CREATE TEMP TABLE u (x int)"))
        #expect(again.newPins.isEmpty)
        let more = try machine.frontendMessage(Self.queryFrame("SELECT pg_advisory_lock(1)"))
        #expect(more.newPins == .advisoryLock && !more.firstPin)
        #expect(machine.pins.reasons == [.temporaryObject, .advisoryLock])
    }

    @Test func aLoneSetOfADriverSettingBetweenTransactionsDoesNotPin() throws {
        var machine = Self.loggedIn()
        let decision = try machine.frontendMessage(Self.queryFrame("SET extra_float_digits = 3"))
        #expect(decision.newPins.isEmpty)
        #expect(machine.parameters.pendingSetting == SessionParameters.PendingSetting(name: "extra_float_digits", value: "3", executed: false))
        // Inside a transaction (a backend kept) the same SET pins.
        var attached = Self.attached()
        _ = Self.answered(&attached, 1, .inTransaction)
        same(try attached.frontendMessage(Self.queryFrame("SET extra_float_digits = 3")).newPins, .setVariable)
    }

    @Test func deallocateOfAProtocolStatementIsAnsweredLocallyWhenNothingIsInFlight() throws {
        var machine = Self.loggedIn()
        _ = try machine.frontendMessage(Self.parseFrame("s1", "SELECT 1"))
        _ = try machine.frontendMessage(PGFrame(type: Frontend.sync, body: ByteBuffer()))
        let decision = try machine.frontendMessage(Self.queryFrame("DEALLOCATE s1"))
        same(Self.reply(decision.action), .deallocate(failedTransaction: false, status: .idle))
        #expect(machine.catalogue["s1"] == nil)
        // An unknown name goes to the database, which answers its error.
        let unknown = try machine.frontendMessage(Self.queryFrame("DEALLOCATE nope"))
        #expect(Self.isRoute(unknown.action)?.resets.deallocated == "nope")
    }

    @Test func invalidMessagesCloseTheClientWithAProtocolViolation() throws {
        var machine = Self.loggedIn()
        let bad = try machine.frontendMessage(PGFrame(type: UInt8(ascii: "z"), body: ByteBuffer()))
        if case .protocolViolation(let message) = bad.action {
            #expect(message.contains("invalid frontend message type"))
        } else {
            Issue.record("expected a protocol violation")
        }
        let badParse = try machine.frontendMessage(PGFrame(type: Frontend.parse, body: ByteBuffer(string: "no terminator")))
        if case .protocolViolation = badParse.action {} else { Issue.record("expected a protocol violation") }
        if case .close = try machine.frontendMessage(PGFrame(type: Frontend.terminate, body: ByteBuffer())).action {
        } else {
            Issue.record("Terminate closes")
        }
    }

}

/// `#expect(a == b)` where `a` is a mutating call (the macro cannot capture one).
func same<T: Equatable>(_ actual: T, _ expected: T, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(actual == expected, sourceLocation: sourceLocation)
}
