import SQLClassifier

/// Why a client's session is pinned to its backend, and when each reason was last pinned.
///
/// A reset (RESET ALL, DISCARD ALL, UNLISTEN *, ...) releases the reasons it undoes, but only
/// those pinned before the reset was classified: a LISTEN sent after an UNLISTEN * in the same
/// write stays pinned. So every pin ticks a clock, and each reason remembers its last tick.
public struct PinState: Sendable, Equatable {
    public private(set) var reasons: PinReasons = []
    /// Ticks once per pin; a reset records the clock when it is classified (`Resets.pinClock`).
    public private(set) var clock: UInt64 = 0
    /// `times[bit]`: the clock of the last pin of that reason. Empty until the first pin, so an
    /// unpinned session carries no array.
    private var times: [UInt64] = []

    public init() {}

    public var isPinned: Bool { !reasons.isEmpty }

    /// Pins for `reasons`; returns those the session was not pinned for yet (empty: nothing to
    /// report, though the clock ticked and the reasons' times moved on).
    public mutating func pin(_ reasons: PinReasons) -> PinReasons {
        clock &+= 1
        if times.isEmpty { times = Array(repeating: 0, count: UInt16.bitWidth) }
        for bit in 0..<UInt16.bitWidth where reasons.rawValue & (1 << UInt16(bit)) != 0 { times[bit] = clock }
        let new = reasons.subtracting(self.reasons)
        self.reasons.formUnion(new)
        return new
    }

    /// Releases `reasons` that a reset classified at `resetClock` undid, except `kept` (what the
    /// reset's own statement pins) and reasons pinned after it. Returns the reasons released.
    public mutating func unpin(_ reasons: PinReasons, except kept: PinReasons, pinnedAfter resetClock: UInt64) -> PinReasons {
        var reasons = reasons.subtracting(kept)
        if !times.isEmpty {
            for bit in 0..<UInt16.bitWidth where times[bit] > resetClock { reasons.remove(PinReasons(rawValue: 1 << UInt16(bit))) }
        }
        let removed = self.reasons.intersection(reasons)
        self.reasons.subtract(removed)
        return removed
    }
}
