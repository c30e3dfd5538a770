import ConnectionPool
import ProxyCore
import Testing

@Suite struct PoolKeyTableTests {
    @Test func equalLoginsShareOneKeyAndDifferentOnesDoNot() {
        let table = PoolKeyTable()
        let first = table.key(user: "app", database: "shop")
        #expect(first == PoolKey(user: "app", database: "shop"))
        #expect(table.key(user: "app", database: "shop") == first)
        #expect(table.count == 1)
        #expect(table.shared(PoolKey(user: "app", database: "shop")) == first)
        #expect(table.count == 1)
        #expect(table.key(user: "app", database: "shop", variant: "binary") != first)
        #expect(table.key(user: "app", database: "other") != first)
        #expect(table.key(user: "other", database: "shop") != first)
        #expect(table.count == 4)
    }

    @Test func pastTheLimitKeysAreStillCorrectButNotKept() {
        let table = PoolKeyTable()
        for n in 0..<PoolKeyTable.limit { _ = table.key(user: "u\(n)", database: "d") }
        #expect(table.count == PoolKeyTable.limit)
        let extra = table.key(user: "one more", database: "d")
        #expect(extra == PoolKey(user: "one more", database: "d"))
        #expect(table.count == PoolKeyTable.limit)
    }
}
