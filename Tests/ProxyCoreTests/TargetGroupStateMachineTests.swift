import NIOCore
@testable import ProxyCore
import Testing

// The target group machine driven event by event, with targets named by strings and an injected
// clock (`t(seconds)`): no sockets, no sleeping.

typealias Group = TargetGroupStateMachine<String>

private func t(_ seconds: Double) -> NIODeadline {
    .uptimeNanoseconds(1_000_000_000_000 + UInt64(seconds * 1e9))
}

private func makeGroup(_ targets: [String] = ["a", "b", "c"], window: Int64 = 30, readers: Bool = false) -> Group {
    Group(targets: targets, failoverWindow: .seconds(window), tracksReaders: readers)
}

private let writerUp = TargetProbeResult.up(.writer, maxConnections: nil)
private let readerUp = TargetProbeResult.up(.reader, maxConnections: nil)

private func down(_ description: String = "connection refused", unresponsive: Bool = false) -> TargetProbeResult {
    .down(TargetHealth(state: .unavailable, reason: "CONNECTION_FAILURE", description: description), unresponsive: unresponsive)
}

private func waiterID(_ decision: Group.OpenDecision) -> OpenWaiterID? {
    if case .wait(let id) = decision { return id }
    return nil
}

@Suite struct WriterElectionTests {
    @Test func firstTargetIsTheWriterUntilChecked() {
        var group = makeGroup()
        #expect(group.writer == "a")
        #expect(!group.writerAvailable)
        #expect(group.roleName(of: "a") == "UNKNOWN")
        let action = group.targetChecked("a", writerUp, now: t(1))
        #expect(action.writerChange == nil)
        #expect(action.writerBecameAvailable)
        #expect(group.writerAvailable)
        #expect(group.roleName(of: "a") == "READ_WRITE")
    }

    @Test func currentWriterIsKeptWhileItIsOne() {
        var group = makeGroup()
        _ = group.targetChecked("a", writerUp, now: t(1))
        // b says it is a writer too (split brain, or a check racing a failover): a stays.
        let action = group.targetChecked("b", writerUp, now: t(2))
        #expect(action.writerChange == nil)
        #expect(!action.writerBecameAvailable)
        #expect(group.writer == "a")
        #expect(group.roleName(of: "b") == "UNKNOWN")
    }

    @Test func firstWriterInTargetOrderOtherwise() {
        var group = makeGroup()
        _ = group.targetChecked("a", writerUp, now: t(1))
        _ = group.targetChecked("c", .up(.writer, maxConnections: 300), now: t(2))
        _ = group.targetChecked("b", .up(.writer, maxConnections: 200), now: t(3))
        // a is demoted: b precedes c in the target order.
        let action = group.targetChecked("a", readerUp, now: t(4))
        #expect(action.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: 200))
        #expect(!action.writerBecameAvailable)  // it never stopped being available
        #expect(group.writer == "b")
        #expect(group.writerMaxConnections == 200)
        #expect(Group.electWriter(
            current: "a", targets: ["a", "b", "c"],
            health: ["b": TargetHealth(state: .available), "c": TargetHealth(state: .available)],
            roles: ["a": .writer, "b": .writer, "c": .writer]) == "b")
        // An unavailable writer-role target is not elected.
        #expect(Group.electWriter(
            current: nil, targets: ["a", "b"],
            health: ["a": TargetHealth(state: .unavailable), "b": TargetHealth(state: .available)],
            roles: ["a": .writer, "b": .writer]) == "b")
    }

    @Test func upWithUnknownRoleKeepsTheWriterWhenNobodyClaimsIt() {
        var group = makeGroup()
        let action = group.targetChecked("a", .upUnknownRole(why: "database \"x\" does not exist"), now: t(1))
        #expect(action.writerBecameAvailable)
        #expect(group.writer == "a")
        #expect(group.roles["a"] == .unknown)
        #expect(group.health["a"] == TargetHealth(
            state: .available, description: "The health check could not tell the role: database \"x\" does not exist"))
        #expect(group.roleName(of: "a") == "READ_WRITE")
        // Someone claims the writer role: it wins over the unknown one.
        let claimed = group.targetChecked("b", writerUp, now: t(2))
        #expect(claimed.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: nil))
        #expect(group.roleName(of: "a") == "UNKNOWN")
    }

    @Test func upWithUnknownRoleKeepsAKnownRole() {
        var group = makeGroup()
        _ = group.targetChecked("a", writerUp, now: t(1))
        let action = group.targetChecked("a", .upUnknownRole(why: "timeout"), now: t(2))
        #expect(group.roles["a"] == .writer)
        #expect(action == Group.TargetCheckedAction())
        #expect(group.writerAvailable)
    }

    @Test func aWriterGoingDownHandsOverToTheNextWriterInOrder() {
        var group = makeGroup(["a", "b"])
        _ = group.targetChecked("b", down(), now: t(0))
        _ = group.targetChecked("b", readerUp, now: t(0.5))
        _ = group.targetChecked("a", writerUp, now: t(1))
        _ = group.targetChecked("b", writerUp, now: t(2))  // b claims writer; a is kept
        // a goes down (its role unknown): b, which claims the role, is elected.
        let action = group.targetChecked("a", down(), now: t(3))
        #expect(action.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: nil))
    }

    @Test func aCheckOfAnUnregisteredTargetChangesNothing() {
        var group = makeGroup(["a"])
        let action = group.targetChecked("z", writerUp, now: t(1))
        #expect(action == Group.TargetCheckedAction())
        #expect(group.health["z"] == nil)
        #expect(group.writer == "a")
        #expect(!group.writerAvailable)
    }

    @Test func adminRoleNames() {
        var group = makeGroup()
        _ = group.targetChecked("a", writerUp, now: t(1))
        _ = group.targetChecked("b", readerUp, now: t(1))
        _ = group.targetChecked("c", writerUp, now: t(1))
        #expect(group.roleName(of: "a") == "READ_WRITE")
        #expect(group.roleName(of: "b") == "READ_ONLY")
        #expect(group.roleName(of: "c") == "UNKNOWN")  // a writer, but not the one in use
        #expect(group.roleName(of: "z") == "UNKNOWN")
        _ = group.targetChecked("a", down(), now: t(2))  // c takes over; a is unknown
        #expect(group.roleName(of: "a") == "UNKNOWN")
        #expect(group.roleName(of: "c") == "READ_WRITE")
    }
}

@Suite struct FailoverWaitTests {
    @Test func beforeTheFirstCheckOpensWaitThenTheCheckAnswersThem() {
        var group = makeGroup(["a", "b"])
        let first = waiterID(group.openRequested(began: t(0)))
        let second = waiterID(group.openRequested(began: t(0.1)))
        #expect(first != nil && second != nil && first != second)
        // A check of b (not the first writer) decides nothing for them.
        let other = group.targetChecked("b", readerUp, now: t(0.5))
        #expect(other.refuse.isEmpty && other.resume.isEmpty)
        let action = group.targetChecked("a", writerUp, now: t(1))
        #expect(action.resume == [first!, second!])
        #expect(group.openRequested(began: t(2)) == .proceed)
    }

    @Test func theFirstCheckFindingTheWriterDownRefusesWithItsReason() {
        var group = makeGroup(["a"])
        let id = waiterID(group.openRequested(began: t(0)))!
        let action = group.targetChecked("a", down("connection refused"), now: t(1))
        #expect(action.refuse == [id])
        #expect(action.refusal == .writerUnavailable("a", description: "connection refused"))
        #expect(action.refusal?.text == "a: connection refused")
        #expect(!action.writerBecameUnavailable)  // it was never available
        #expect(group.openRequested(began: t(2)) == .fail(.writerUnavailable("a", description: "connection refused")))
    }

    @Test func writerLostOpensWaitWithinTheWindowAndResumeWhenAWriterAppears() {
        var group = makeGroup(["a", "b"], window: 30)
        _ = group.targetChecked("a", writerUp, now: t(0))
        let lost = group.targetChecked("a", down(), now: t(10))
        #expect(lost.writerBecameUnavailable)
        #expect(group.writer == "a")
        let first = waiterID(group.openRequested(began: t(11)))!
        let second = waiterID(group.openRequested(began: t(39)))!
        // Still no writer: those that began in the window keep waiting.
        let still = group.targetChecked("a", down(), now: t(45))
        #expect(still.refuse.isEmpty && still.resume.isEmpty)
        let found = group.targetChecked("b", .up(.writer, maxConnections: 500), now: t(46))
        #expect(found.writerChange == Group.WriterChange(old: "a", new: "b", maxConnections: 500))
        #expect(found.writerBecameAvailable)
        #expect(found.resume == [first, second])
        #expect(group.writerMaxConnections == 500)
    }

    @Test func outsideTheWindowOpensFailAtOnceWithTodaysTexts() {
        var group = makeGroup(["a", "b"], window: 30)
        _ = group.targetChecked("a", writerUp, now: t(0))
        _ = group.targetChecked("a", down("could not connect: connection refused"), now: t(10))
        let reason = Group.NoWriterReason.writerUnavailable("a", description: "could not connect: connection refused")
        #expect(group.openRequested(began: t(40)) == .fail(reason))
        #expect(reason.text == "a: could not connect: connection refused")
        // The writer's health without a description.
        _ = group.targetChecked("a", .down(TargetHealth(state: .unavailable), unresponsive: false), now: t(50))
        #expect(group.noWriterReason(began: t(60))?.text == "a: unavailable")
        // The old writer answers again, as a standby: nobody is a writer.
        _ = group.targetChecked("a", readerUp, now: t(70))
        #expect(group.openRequested(began: t(71)) == .fail(.noTargetIsWriter))
        #expect(Group.NoWriterReason.noTargetIsWriter.text == "no target is a writer (every reachable target is in recovery)")
        #expect(Group.NoWriterReason.waitTimedOut.text == "no writer is available (the target group has no healthy primary)")
        #expect(Group.NoWriterReason.noTargetRegistered.text == "no database target is registered")
    }

    @Test func aWaiterOfTheWindowWaitsOutItsOwnTimeout() {
        var group = makeGroup(["a"], window: 30)
        _ = group.targetChecked("a", writerUp, now: t(0))
        _ = group.targetChecked("a", down(), now: t(100))
        let id = waiterID(group.openRequested(began: t(110)))!
        // The window ends 30 s after the loss; a waiter of the window is still kept at t(200).
        #expect(group.targetChecked("a", down(), now: t(200)).refuse.isEmpty)
        #expect(group.waiterTimedOut(id) == .waitTimedOut)
    }

    @Test func noTargetsRefusesAtOnce() {
        var group = makeGroup([])
        #expect(group.writer == nil)
        #expect(group.openRequested(began: t(0)) == .fail(.noTargetRegistered))
    }

    @Test func waiterTimeoutAnswersOnce() {
        var group = makeGroup(["a"])
        let id = waiterID(group.openRequested(began: t(0)))!
        #expect(group.waiterTimedOut(id) == .waitTimedOut)
        #expect(group.waiterTimedOut(id) == nil)
        // A writer found later resumes nobody: the waiter is gone.
        #expect(group.targetChecked("a", writerUp, now: t(5)).resume.isEmpty)
    }

    @Test func writerSuspectAfterAFailedConnect() {
        var group = makeGroup(["a", "b"])
        _ = group.targetChecked("a", writerUp, now: t(0))
        #expect(group.writerSuspect("b", now: t(1)) == false)  // not the writer
        #expect(group.writerAvailable)
        #expect(group.writerSuspect("a", now: t(2)) == true)
        #expect(!group.writerAvailable)
        #expect(group.writerSuspect("a", now: t(3)) == false)  // already lost
        // The failover window runs from the suspicion: opens wait for the check the runtime runs now.
        let id = waiterID(group.openRequested(began: t(3)))!
        let action = group.targetChecked("a", writerUp, now: t(4))
        #expect(action.writerBecameAvailable)
        #expect(action.resume == [id])
    }

    @Test func failoverWindowFollowsTheBorrowTimeout() {
        var group = makeGroup(["a"], window: 30)
        _ = group.targetChecked("a", writerUp, now: t(0))
        _ = group.targetChecked("a", down(), now: t(10))
        #expect(waiterID(group.openRequested(began: t(20))) != nil)
        group.failoverWindowChanged(.seconds(5))
        #expect(group.failoverWindow == .seconds(5))
        #expect(group.openRequested(began: t(20)) == .fail(.writerUnavailable("a", description: "connection refused")))
    }
}

@Suite struct TargetGroupChangesTests {
    @Test func deregisteringTheWriterLeavesNoneUntilAChecksElectsOne() {
        var group = makeGroup(["a", "b"], window: 30)
        _ = group.targetChecked("a", writerUp, now: t(0))
        _ = group.targetChecked("b", readerUp, now: t(0))
        #expect(group.targetsChanged(["a", "b", "c"], now: t(1)) == false)
        #expect(group.targetsChanged(["b"], now: t(2)) == true)
        #expect(group.writer == nil)
        #expect(!group.writerAvailable)
        #expect(group.health["a"] == nil)
        #expect(group.health["b"] != nil)
        // Within the window (the writer left at t(2)): wait. After it: nobody is a writer.
        let id = waiterID(group.openRequested(began: t(3)))!
        #expect(group.openRequested(began: t(40)) == .fail(.noTargetIsWriter))
        let action = group.targetChecked("b", writerUp, now: t(5))
        #expect(action.writerChange == Group.WriterChange(old: nil, new: "b", maxConnections: nil))
        #expect(action.resume == [id])
    }

    @Test func deregisteringEveryTarget() {
        var group = makeGroup(["a"], window: 30)
        #expect(group.targetsChanged([], now: t(1)) == true)
        #expect(group.openRequested(began: t(2)) == .fail(.noTargetRegistered))
    }

    @Test func forgottenTargetsLoseTheirRolesAndLimits() {
        var group = makeGroup(["a", "b"])
        _ = group.targetChecked("b", .up(.reader, maxConnections: 50), now: t(0))
        #expect(group.maxConnections(of: "b") == 50)
        group.forget(["b"])
        #expect(group.roles["b"] == nil)
        #expect(group.maxConnections(of: "b") == nil)
    }

    @Test func writerMaxConnectionsIsLearntOnce() {
        var group = makeGroup(["a", "b"])
        #expect(group.writerMaxConnections == nil)
        #expect(group.writerMaxConnectionsRead(100) == true)
        #expect(group.writerMaxConnectionsRead(200) == false)
        #expect(group.writerMaxConnections == 100)
        // A new writer brings its own (unknown here: read again by its first backend).
        _ = group.targetChecked("b", writerUp, now: t(1))
        #expect(group.writer == "b")
        #expect(group.writerMaxConnections == nil)
    }

    @Test func observedHealthShowsUntilTheNextCheck() {
        var group = makeGroup(["a"])
        let refused = TargetHealth(state: .unavailable, reason: "AUTH_FAILURE", description: "The database refused the proxy's credentials: no")
        group.healthObserved("a", refused)
        #expect(group.health["a"] == refused)
        _ = group.targetChecked("a", writerUp, now: t(1))
        #expect(group.health["a"] == TargetHealth(state: .available))
    }
}
