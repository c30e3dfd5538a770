/// An optional value kept out of line: one word while nil, a heap box while set.
///
/// For a session's rare states (a reset on its way, a lone `SET` awaiting its answer): every
/// connected client carries its session's fields, so a large value that is nearly always nil
/// costs memory per idle client (README "Performance"). Copy-on-write: a copy of the holder
/// shares the box until one of them sets the value.
///
/// `value` has a getter and a setter, not `_read`/`_modify`: a coroutine accessor keeps the
/// value it yields in its frame, and a frame larger than the caller's fixed buffer is allocated
/// on the heap at every access (measured: one allocation per query, where `send` checks the
/// pending setting). A change through `value` therefore copies the value out and back, which
/// copies its own storage when that is shared with the box; for these rare states that is cheap.
@usableFromInline
struct OutOfLine<Value> {
    @usableFromInline
    final class Box {
        @usableFromInline var value: Value

        @usableFromInline
        init(_ value: Value) {
            self.value = value
        }
    }

    @usableFromInline var box: Box?

    @inlinable
    init() {}

    @inlinable
    var value: Value? {
        get { box?.value }
        set {
            guard let newValue else {
                box = nil
                return
            }
            if isKnownUniquelyReferenced(&box) {
                box!.value = newValue
            } else {
                box = Box(newValue)
            }
        }
    }
}
