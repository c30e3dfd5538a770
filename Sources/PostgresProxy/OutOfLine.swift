/// An optional value kept out of line: one word while nil, a heap box while set.
///
/// For a session's rare states (a reset on its way): every connected client carries its
/// session's fields, so a large value that is nearly always nil costs memory per idle client
/// (README "Performance"). Copy-on-write: a copy of the holder shares the box until one of them
/// changes the value, and a change made through `value` in place (`_modify`) takes the value out
/// of a box it owns alone, so the value's own storage is not copied either.
@usableFromInline
struct OutOfLine<Value> {
    @usableFromInline
    final class Box {
        @usableFromInline var value: Value?

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
        _read { yield box?.value }
        _modify {
            var value: Value?
            if isKnownUniquelyReferenced(&box) {
                value = box!.value
                box!.value = nil
            } else {
                value = box?.value
            }
            defer {
                if let value {
                    if isKnownUniquelyReferenced(&box) {
                        box!.value = value
                    } else {
                        box = Box(value)
                    }
                } else {
                    box = nil
                }
            }
            yield &value
        }
    }
}
