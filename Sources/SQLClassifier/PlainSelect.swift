/// The byte scan behind both dialects' plain-SELECT shortcuts (`SQLClassifier.isPlainSelect`,
/// `MySQLClassifier.isPlainSelect`): a statement that starts with the word SELECT and holds no
/// byte a rule could start from is classified without the lexer, which costs about 50
/// instructions a byte where this scan reads eight bytes at a time.
///
/// Common to both: no opening parenthesis anywhere (every function rule, subquery and
/// `VALUES` list needs one) and no semicolon other than trailing ones followed by whitespace (a
/// second statement). Each dialect adds its own bytes (`stops`, after folding every byte with
/// 0x20) and decides at each of them (`decide`: nil goes on, true or false is the answer).
/// Nothing here knows about literals or comments: a stop byte inside one sends the statement
/// to the lexer, which is always right.
@inline(__always)
func scanPlainSelect(
    _ sql: UnsafeRawBufferPointer, stops: (UInt64) -> UInt64, decide: (UInt8, Int) -> Bool?
) -> Bool {
    let count = sql.count
    var i = 0
    while i < count, isPlainSpace(sql[i]) { i += 1 }
    guard i + 6 <= count,
          sql[i] | 0x20 == UInt8(ascii: "s"), sql[i + 1] | 0x20 == UInt8(ascii: "e"),
          sql[i + 2] | 0x20 == UInt8(ascii: "l"), sql[i + 3] | 0x20 == UInt8(ascii: "e"),
          sql[i + 4] | 0x20 == UInt8(ascii: "c"), sql[i + 5] | 0x20 == UInt8(ascii: "t")
    else { return false }
    i += 6
    // `selected`, `select_1`, `select$x`: another identifier (the same bytes in both dialects).
    if i < count, isIdentCont(sql[i]) { return false }
    while i < count {
        // Eight bytes at a time where none of them can matter. With bit 0x20 set in each byte,
        // `(` (0x28) and `;` (0x3B) stay themselves; the bytes that become one of them (0x08,
        // 0x1B) only send their word to the byte loop. The lowest byte flagged is a stop (see
        // `plainZeroBytes`): the byte loop starts there.
        if i + 8 <= count {
            let word = UInt64(littleEndian: sql.loadUnaligned(fromByteOffset: i, as: UInt64.self)) | 0x2020_2020_2020_2020
            let flagged = plainZeroBytes(word ^ 0x2828_2828_2828_2828) | plainZeroBytes(word ^ 0x3B3B_3B3B_3B3B_3B3B)
                | stops(word)
            if flagged == 0 {
                i += 8
                continue
            }
            i += flagged.trailingZeroBitCount >> 3  // read little-endian: the lowest bits are the first byte
        }
        let c = sql[i]
        switch c {
        case openParen:
            return false
        case semicolon:
            var j = i + 1
            while j < count, isPlainSpace(sql[j]) || sql[j] == semicolon { j += 1 }
            return j == count
        default:
            if let answer = decide(c, i) { return answer }
        }
        i += 1
    }
    return true
}

/// The high bit of each zero byte of `word`, and possibly of bytes above a zero one (a
/// borrow): zero when no byte is, and its lowest set bit is always a zero byte's.
@inline(__always)
func plainZeroBytes(_ word: UInt64) -> UInt64 {
    (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080
}

/// Each byte of `word` that is `byte`, flagged as `plainZeroBytes` flags them.
@inline(__always)
func plainBytes(_ word: UInt64, equalTo byte: UInt8) -> UInt64 {
    plainZeroBytes(word ^ (UInt64(byte) &* 0x0101_0101_0101_0101))
}

/// Whitespace to both lexers: space, `\t`, `\n`, `\v`, `\f`, `\r`.
@inline(__always)
func isPlainSpace(_ c: UInt8) -> Bool {
    c == 0x20 || (c >= 0x09 && c <= 0x0D)
}

/// Whether the bytes at `i` are `word` (lowercase ASCII letters and `_`), in any case.
@inline(__always)
func plainWordFollows(_ sql: UnsafeRawBufferPointer, at i: Int, _ word: StaticString) -> Bool {
    let length = word.utf8CodeUnitCount
    guard i + length <= sql.count else { return false }
    let expected = word.utf8Start
    for k in 0..<length where sql[i + k] | 0x20 != expected[k] | 0x20 {
        return false
    }
    return true
}
