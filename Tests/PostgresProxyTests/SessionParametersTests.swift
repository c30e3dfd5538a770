import NIOCore
import PostgresProxy
import PostgresWire
import Testing

/// The client's session parameters: reports filtered against what it last saw, a lone SET kept
/// once the database accepts it, PostgreSQL's spellings learnt at login.
@Suite struct SessionParametersTests {
    static func report(_ name: String, _ value: String) -> ByteBuffer {
        var out = ByteBuffer()
        PGEncode.parameterStatus(name: name, value: value, into: &out)
        return out
    }

    static func ready() -> ByteBuffer {
        var out = ByteBuffer()
        PGEncode.readyForQuery(.idle, into: &out)
        return out
    }

    @Test func aReportOfWhatTheClientAlreadySawIsDroppedAndAChangeIsKept() {
        var parameters = SessionParameters()
        parameters.current = ["timezone": "UTC"]
        var burst = Self.report("TimeZone", "UTC")
        var changed = Self.report("DateStyle", "ISO, DMY")
        var ready = Self.ready()
        burst.writeBuffer(&changed)
        burst.writeBuffer(&ready)
        let filtered = parameters.filterReports(burst) { $0 == "datestyle" ? "ISO, MDY" : nil }
        var expected = Self.report("DateStyle", "ISO, DMY")
        var tail = Self.ready()
        expected.writeBuffer(&tail)
        #expect(filtered == expected)
        #expect(parameters.current["datestyle"] == "ISO, DMY")
    }

    @Test func untrackedReportsPassUntouched() {
        var parameters = SessionParameters()
        let burst = Self.report("is_superuser", "on")
        #expect(parameters.filterReports(burst) { _ in "on" } == burst)
        #expect(parameters.current.isEmpty)
    }

    @Test func aLoneSetIsTheClientsOnceAcceptedOutsideATransaction() {
        var parameters = SessionParameters()
        parameters.pendingSetting = .init(name: "extra_float_digits", value: "3", executed: true)
        #expect(parameters.backendAnswered(readyForQueryCount: 0, firstStatus: .idle, sawError: false) == .none)
        #expect(parameters.pendingSetting != nil)
        #expect(
            parameters.backendAnswered(readyForQueryCount: 1, firstStatus: .idle, sawError: false)
                == .applied(name: "extra_float_digits", value: "3"))
        #expect(parameters.current["extra_float_digits"] == "3")
    }

    @Test func aLoneSetThatFailedOrWasOnlyParsedChangesNothing() {
        var failed = SessionParameters()
        failed.pendingSetting = .init(name: "statement_timeout", value: "5s", executed: true)
        #expect(failed.backendAnswered(readyForQueryCount: 0, firstStatus: .idle, sawError: true) == .none)
        #expect(failed.pendingSetting == nil && failed.current.isEmpty)
        var parsed = SessionParameters()
        parsed.pendingSetting = .init(name: "statement_timeout", value: "5s", executed: false)
        #expect(parsed.backendAnswered(readyForQueryCount: 1, firstStatus: .idle, sawError: false) == .none)
    }

    @Test func aLoneSetInsideATransactionPins() {
        var parameters = SessionParameters()
        parameters.pendingSetting = .init(name: "lock_timeout", value: "1s", executed: true)
        #expect(parameters.backendAnswered(readyForQueryCount: 1, firstStatus: .inTransaction, sawError: false) == .pin(name: "lock_timeout"))
        #expect(parameters.current.isEmpty)
    }

    @Test func postgresSpellingsAreLearntAtLoginAndUsedAfterwards() {
        var first = SessionParameters()
        first.current = ["datestyle": "iso", "application_name": "app"]
        var learnt: [String: String] = [:]
        first.learnCanonicalValues(from: ["DateStyle": "ISO, MDY", "application_name": "app"]) { learnt[$1] = $2 }
        #expect(learnt == ["iso": "ISO, MDY"])
        #expect(first.current["datestyle"] == "ISO, MDY")

        let template = LoginTemplate([StartupParameter(name: "DateStyle", value: "ISO, MDY")])
        var second = SessionParameters()
        second.current = ["datestyle": "iso"]
        #expect(second.knowsCanonicalValues(template: template) { _, value in learnt[value] })
        #expect(second.current["datestyle"] == "ISO, MDY")
        var third = SessionParameters()
        third.current = ["timezone": "utc"]
        #expect(!third.knowsCanonicalValues(template: template) { _, _ in nil })
    }

    @Test func theLoginValuesAreWhatResetsReturnTo() {
        var parameters = SessionParameters()
        parameters.loggedIn(with: ["timezone": "UTC"])
        parameters.current["timezone"] = "Europe/Paris"
        #expect(parameters.startup == ["timezone": "UTC"])
    }

    // MARK: Reset windows

    static let template = LoginTemplate([
        StartupParameter(name: "DateStyle", value: "ISO, MDY"), StartupParameter(name: "TimeZone", value: "UTC"),
        StartupParameter(name: "application_name", value: ""),
    ])

    static func reports(_ pairs: [(String, String)]) -> ByteBuffer {
        var out = ByteBuffer()
        for (name, value) in pairs { PGEncode.parameterStatus(name: name, value: value, into: &out) }
        return out
    }

    /// The login's ParameterStatus messages come from one buffer, in runs: every run is exactly
    /// the messages of its parameters, in order.
    @Test func aTemplatesEncodedRunsAreItsParameterStatusMessages() {
        let pairs = Self.template.parameters.map { ($0.name, $0.value) }
        #expect(Self.template.encodedAll == Self.reports(pairs))
        for start in 0...pairs.count {
            for end in start...pairs.count {
                #expect(Self.template.encoded(start..<end) == Self.reports(Array(pairs[start..<end])))
            }
        }
    }

    @Test func resetAllReturnsToTheLoginValuesAndReportsWhatChangedInPostgresOrder() {
        var parameters = SessionParameters()
        parameters.loggedIn(with: ["application_name": "app"])
        parameters.current["timezone"] = "Europe/Paris"
        parameters.current["datestyle"] = "German, DMY"
        let window = ResetWindow(parameters: nil, before: parameters.current, syncsBefore: 0)
        let closed = parameters.closeResetWindow(window, status: .idle, template: Self.template)
        #expect(closed.reset && closed.backendDefaults == nil && closed.setVariable == .unpin)
        #expect(parameters.current == ["application_name": "app"])
        #expect(closed.reports == Self.reports([("DateStyle", "ISO, MDY"), ("TimeZone", "UTC")]))
    }

    @Test func resetAllInsideATransactionBlockPins() {
        var parameters = SessionParameters()
        let window = ResetWindow(parameters: nil, before: [:], syncsBefore: 0)
        #expect(parameters.closeResetWindow(window, status: .inTransaction, template: nil).setVariable == .pin)
        var discard = ResetWindow(parameters: nil, before: [:], syncsBefore: 0)
        discard.discarded = true
        #expect(parameters.closeResetWindow(discard, status: .inTransaction, template: nil).setVariable == .unchanged)
    }

    @Test func aFailedResetChangesNothingAndPassesTheBackendsReportsOn() {
        var parameters = SessionParameters()
        parameters.current = ["timezone": "Europe/Paris"]
        var window = ResetWindow(parameters: ["timezone"], before: parameters.current, syncsBefore: 0)
        window.failed = true
        window.reports = Self.reports([("TimeZone", "Asia/Tokyo")])
        let closed = parameters.closeResetWindow(window, status: .idle, template: Self.template)
        #expect(!closed.reset)
        #expect(closed.reports == Self.reports([("TimeZone", "Asia/Tokyo")]))
        #expect(parameters.current == ["timezone": "Europe/Paris"])
    }

    @Test func resetOfOneParameterKeepsOneSetAgainAfterIt() {
        var parameters = SessionParameters()
        parameters.loggedIn(with: [:])
        parameters.current = ["timezone": "Asia/Tokyo", "datestyle": "German, DMY"]
        var window = ResetWindow(parameters: ["timezone", "datestyle"], before: ["timezone": "Europe/Paris", "datestyle": "German, DMY"], syncsBefore: 0)
        window.setAfter = ["timezone"]
        window.reports = Self.reports([("TimeZone", "Asia/Tokyo")])
        let closed = parameters.closeResetWindow(window, status: .idle, template: Self.template)
        #expect(closed.backendDefaults == ["datestyle"])
        #expect(closed.backendApplied.map(\.name) == ["timezone"])
        #expect(parameters.current == ["timezone": "Asia/Tokyo"])
        #expect(closed.reports == Self.reports([("DateStyle", "ISO, MDY"), ("TimeZone", "Asia/Tokyo")]))
    }
}
