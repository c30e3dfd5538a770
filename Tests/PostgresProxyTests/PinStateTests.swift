import PostgresProxy
import SQLClassifier
import Testing

@Suite struct PinStateTests {
    @Test func aPinReportsOnlyNewReasons() {
        var pins = PinState()
        #expect(!pins.isPinned)
        #expect(pins.pin([.listen]) == [.listen])
        #expect(pins.pin([.listen, .advisoryLock]) == [.advisoryLock])
        #expect(pins.pin([.listen]) == [])
        #expect(pins.reasons == [.listen, .advisoryLock])
        #expect(pins.clock == 3)
    }

    @Test func aResetReleasesWhatWasPinnedBeforeIt() {
        var pins = PinState()
        _ = pins.pin([.listen, .setVariable])
        let resetAt = pins.clock
        #expect(pins.unpin([.listen, .setVariable], except: [], pinnedAfter: resetAt) == [.listen, .setVariable])
        #expect(!pins.isPinned)
    }

    @Test func aReasonPinnedAgainAfterTheResetStays() {
        // LISTEN a; UNLISTEN *; LISTEN b in one write: the second LISTEN keeps the pin.
        var pins = PinState()
        _ = pins.pin([.listen])
        let resetAt = pins.clock
        _ = pins.pin([.listen])
        #expect(pins.unpin([.listen], except: [], pinnedAfter: resetAt) == [])
        #expect(pins.reasons == [.listen])
    }

    @Test func whatTheResetsOwnStatementPinsStays() {
        // DISCARD ALL releases everything but pins for DISCARD itself.
        var pins = PinState()
        _ = pins.pin([.temporaryObject, .discard])
        let resetAt = pins.clock
        #expect(pins.unpin([.temporaryObject, .discard], except: [.discard], pinnedAfter: resetAt) == [.temporaryObject])
        #expect(pins.reasons == [.discard])
    }

    @Test func releasingWhatIsNotPinnedChangesNothing() {
        var pins = PinState()
        _ = pins.pin([.load])
        let before = pins
        #expect(pins.unpin([.listen], except: [], pinnedAfter: pins.clock) == [])
        #expect(pins == before)
    }
}
