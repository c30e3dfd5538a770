import Testing
@testable import SQLClassifier

struct PinCase: Sendable, CustomTestStringConvertible {
    var sql: String
    var expected: PinReasons
    init(_ sql: String, _ expected: PinReasons) {
        self.sql = sql
        self.expected = expected
    }
    var testDescription: String { "\(sql.debugDescription) → \(expected)" }
}

// MARK: - Triggers

let triggerCases: [PinCase] = [
    // SET / RESET
    PinCase("SET search_path TO x", .setVariable),
    PinCase("set search_path = x, y", .setVariable),
    PinCase("SET SESSION work_mem = '64MB'", .setVariable),
    PinCase("SeT sEsSiOn statement_timeout TO 0", .setVariable),
    PinCase("SET /* c */ search_path TO x", .setVariable),
    PinCase("SET -- c\n search_path TO x", .setVariable),
    PinCase("SET myapp.user_id = 42", .setVariable),
    PinCase("SET \"DateStyle\" = ISO", .setVariable),
    PinCase("SET TIME ZONE 'UTC'", .setVariable),
    PinCase("SET NAMES 'UTF8'", .setVariable),
    PinCase("SET SCHEMA 'app'", .setVariable),
    PinCase("SET XML OPTION DOCUMENT", .setVariable),
    PinCase("SET x TO DEFAULT", .setVariable),
    PinCase("SET search_path FROM CURRENT", .setVariable),
    PinCase("RESET search_path", .setVariable),
    PinCase("reset time zone", .setVariable),
    PinCase("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", .setVariable),
    PinCase("SET ROLE admin", .setRole),
    PinCase("set role none", .setRole),
    PinCase("SET SESSION ROLE admin", .setRole),
    PinCase("SET role = 'admin'", .setRole),
    PinCase("SET SESSION AUTHORIZATION bob", .setRole),
    PinCase("SET SESSION AUTHORIZATION DEFAULT", .setRole),
    PinCase("SET session_authorization TO 'bob'", .setRole),
    PinCase("RESET ROLE", .setRole),
    PinCase("RESET SESSION AUTHORIZATION", .setRole),
    // set_config
    PinCase("SELECT set_config('search_path', 'x', false)", .setVariable),
    PinCase("select pg_catalog.set_config('a.b', 'c', false)", .setVariable),
    PinCase("select set_config('a', 'b', $1)", .setVariable),
    PinCase("select set_config('a', 'b', (true))", .setVariable),
    PinCase("select set_config('a', 'b', 'false')", .setVariable),
    PinCase("select set_config('a', 'b')", .setVariable),
    PinCase("SELECT set_config('role', 'admin', false)", .setRole),
    PinCase("SELECT \"set_config\"('a', 'b', false)", .setVariable),
    PinCase("SELECT x FROM t WHERE set_config('a', f(1, 2), false) IS NOT NULL", .setVariable),
    // PREPARE / DEALLOCATE
    PinCase("PREPARE p (int) AS SELECT $1", .sqlPrepare),
    PinCase("prepare p as select 1", .sqlPrepare),
    // temporary objects
    PinCase("CREATE TEMP TABLE t (x int)", .temporaryObject),
    PinCase("CREATE TEMPORARY TABLE t (x int)", .temporaryObject),
    PinCase("create global temporary table t (x int)", .temporaryObject),
    PinCase("CREATE LOCAL TEMP TABLE t (x int)", .temporaryObject),
    PinCase("CREATE TEMP SEQUENCE s", .temporaryObject),
    PinCase("CREATE TEMP VIEW v AS SELECT 1", .temporaryObject),
    PinCase("CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", .temporaryObject),
    PinCase("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", .temporaryObject),
    PinCase("CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1", .temporaryObject),
    PinCase("CREATE TEMP TABLE t AS SELECT 1", .temporaryObject),
    PinCase("CREATE TEMP TABLE IF NOT EXISTS temp (x int)", .temporaryObject),
    PinCase("CREATE TABLE pg_temp.x (a int)", .temporaryObject),
    PinCase("CREATE TABLE \"pg_temp\".x (a int)", .temporaryObject),
    PinCase("CREATE SEQUENCE pg_temp_3.s", .temporaryObject),
    PinCase("CREATE VIEW pg_temp . v AS SELECT 1", .temporaryObject),
    PinCase("SELECT * INTO TEMP t FROM x", .temporaryObject),
    PinCase("SELECT * INTO TEMPORARY TABLE t FROM x", .temporaryObject),
    PinCase("select 1 as a into local temp t", .temporaryObject),
    PinCase("SELECT 1 INTO TEMP temp", .temporaryObject),
    PinCase("SELECT 1 INTO pg_temp.t", .temporaryObject),
    PinCase("WITH a AS (SELECT 1) SELECT * INTO TEMP t FROM a", .temporaryObject),
    PinCase("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", .temporaryObject),
    PinCase("EXPLAIN (ANALYZE, BUFFERS) SELECT 1 INTO TEMP t", .temporaryObject),
    // cursors
    PinCase("DECLARE c CURSOR WITH HOLD FOR SELECT 1", .cursorWithHold),
    PinCase("declare c binary insensitive no scroll cursor with hold for select 1", .cursorWithHold),
    PinCase("DECLARE \"c\" SCROLL CURSOR WITH /* x */ HOLD FOR SELECT 1", .cursorWithHold),
    PinCase("DECLARE c ASENSITIVE CURSOR WITH HOLD FOR SELECT 1", .cursorWithHold),
    // DISCARD / LISTEN / LOAD
    PinCase("LISTEN ch", .listen),
    PinCase("listen \"Channel\"", .listen),
    PinCase("LOAD 'auto_explain'", .load),
    // advisory locks
    PinCase("SELECT pg_advisory_lock(1)", .advisoryLock),
    PinCase("SELECT pg_advisory_lock_shared(1, 2)", .advisoryLock),
    PinCase("SELECT pg_try_advisory_lock(1)", .advisoryLock),
    PinCase("SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)", .advisoryLock),
    PinCase("SELECT pg_catalog.pg_advisory_lock(1)", .advisoryLock),
    PinCase("SELECT pg_catalog . /* x */ pg_advisory_lock /* y */ (1)", .advisoryLock),
    PinCase("SELECT \"pg_catalog\".\"pg_advisory_lock\"(1)", .advisoryLock),
    PinCase("SELECT CASE WHEN pg_try_advisory_lock(42) THEN 1 END FROM t", .advisoryLock),
    // sequence functions
    PinCase("SELECT nextval('s')", .sequenceFunction),
    PinCase("SELECT nextval ('s')", .sequenceFunction),
    PinCase("SELECT \"nextval\"('s')", .sequenceFunction),
    PinCase("SELECT U&\"nextval\"('s')", .sequenceFunction),
    PinCase("SELECT nextval\n(\n's')", .sequenceFunction),
    PinCase("select setval('s', 10)", .sequenceFunction),
    PinCase("SELECT currval('s')", .sequenceFunction),
    PinCase("SELECT lastval()", .sequenceFunction),
    PinCase("SELECT pg_catalog.nextval('s')", .sequenceFunction),
    PinCase("INSERT INTO t (id) VALUES (NEXTVAL('s'))", .sequenceFunction),
    PinCase("WITH a AS (SELECT nextval('s') AS n) SELECT * FROM a", .sequenceFunction),
    PinCase("EXPLAIN ANALYZE SELECT nextval('s')", .sequenceFunction),
    PinCase("SELECT * FROM (SELECT currval('s')) sub", .sequenceFunction),
    PinCase("PREPARE p AS SELECT nextval('s')", [.sqlPrepare, .sequenceFunction]),
    // position in the string
    PinCase("  \n\t SET x = 1", .setVariable),
    PinCase("/* leading */ -- more\n SET x = 1", .setVariable),
    PinCase(";;  ; SET x = 1", .setVariable),
    PinCase("select 1; set x = 1", .setVariable),
    PinCase("select 1;listen ch;", .listen),
    PinCase("BEGIN; SET LOCAL a = 1; SELECT nextval('s'); COMMIT", .sequenceFunction),
    PinCase("SET x = 1; LISTEN y; SELECT pg_advisory_lock(1)", [.setVariable, .listen, .advisoryLock]),
    PinCase("select 'it''s'; listen ch", .listen),
    PinCase("select E'\\''; listen ch", .listen),
    PinCase("select $$;$$; listen ch", .listen),
    PinCase("select \";\"; listen ch", .listen),
    PinCase("/* a /* nested */ still comment; SET x = 1 */ LISTEN y", .listen),
]

@Test(arguments: triggerCases)
func triggers(_ c: PinCase) {
    #expect(SQLClassifier.classify(c.sql).pinReasons == c.expected)
}

// MARK: - Look-alikes

let lookAlikes: [String] = [
    "select 'SET x'",
    "-- SET x\nselect 1",
    "/* SET x */ select 1",
    "select $$ SET x $$",
    "select $a$ nextval( $a$",
    "select $a$ $b$ nextval( $b$ $a$",
    "select \"set\" from t",
    "select * from \"pg_advisory_lock\"",
    "select my_nextval(1)",
    "select nextvalue",
    "select nextval from t",
    "SELECT 1; -- LISTEN x",
    "SELECT 1; /* LISTEN x */",
    "select pg_advisory_xact_lock(1)",
    "select pg_try_advisory_xact_lock(1)",
    "select pg_advisory_xact_lock_shared(1)",
    "select pg_advisory_unlock(1)",
    "select pg_advisory_unlock_all()",
    "SET LOCAL search_path = x",
    "set local work_mem = '1GB'",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
    "SET CONSTRAINTS ALL DEFERRED",
    "RESET TRANSACTION ISOLATION LEVEL",
    "SET LOCAL ROLE admin",
    "SET LOCAL SESSION AUTHORIZATION bob",
    "SELECT set_config('a','b', true)",
    "SELECT set_config('a', 'b', TRUE)",
    "SELECT set_config('a', 'b', 'true')",
    "SELECT set_config('a', 'b', /* c */ true /* d */)",
    "SELECT set_config('role', 'admin', true)",
    "SELECT myschema.set_config('a', 'b', false)",
    "select set_config",
    "DECLARE c CURSOR FOR select 1",
    "DECLARE c CURSOR WITHOUT HOLD FOR select 1",
    "DECLARE c SCROLL CURSOR FOR select * from hold",
    "CREATE TABLE temp (x int)",
    "CREATE TABLE temporary (x int)",
    "CREATE TABLE t AS SELECT * FROM temp",
    "CREATE UNLOGGED TABLE t (x int)",
    "select 1 as set",
    "select 1 into temp",
    "select 1 into temp from t",
    "select 1 into t",
    "select 1 into temp.t",
    "select 1 into unlogged t",
    "insert into temp values (1)",
    "INSERT INTO temp SELECT 1",
    "WITH a AS (INSERT INTO temp VALUES (1) RETURNING *) SELECT * FROM a",
    "UNLISTEN ch",
    "UNLISTEN *",
    "NOTIFY ch, 'LISTEN x'",
    "PREPARE TRANSACTION 'gid1'",
    "COMMIT PREPARED 'gid1'",
    "EXECUTE p(1)",
    "UPDATE t SET x = 1",
    "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2",
    "ALTER ROLE bob SET search_path = x",
    "ALTER DATABASE d RESET ALL",
    "SHOW search_path",
    "select 'nextval(1)'",
    "select e'\\' nextval(1)'",
    "select u&'nextval(1)'",
    "select b'0101', x'ff', n'pg_advisory_lock(1)'",
    "select U&\"next\\0076al\"(1)",  // escapes are not decoded: no match (known limit)
    "select s.nextval(1)",
    "select t.nextval from t",
    "DROP FUNCTION nextval(regclass)",
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint) TO bob",
    "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT nextval('s'); SELECT 1; END",
    "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT setval('s', 1); END",
    "CREATE FUNCTION f() RETURNS void AS $$ BEGIN PERFORM pg_advisory_lock(1); SET x = 1; END $$ LANGUAGE plpgsql",
    "select $1, $2 from t where a = $3",
    "select nextval",
    "select 1 -- nextval(1)",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "",
    "   ",
    ";;;",
    "-- only a comment",
]

@Test(arguments: lookAlikes)
func lookAlikesDoNotPin(_ sql: String) {
    #expect(SQLClassifier.classify(sql).pinReasons == [])
}

// MARK: - EXCLUDE_VARIABLE_SETS

let filterCases: [PinCase] = [
    PinCase("SET search_path TO x", []),
    PinCase("SET SESSION work_mem = '64MB'", []),
    PinCase("RESET ALL", []),
    PinCase("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", []),
    PinCase("SELECT set_config('a', 'b', false)", []),
    PinCase("SELECT set_config($1, $2, false)", []),
    PinCase("SET ROLE admin", .setRole),
    PinCase("SET SESSION AUTHORIZATION bob", .setRole),
    PinCase("RESET ROLE", .setRole),
    PinCase("SELECT set_config('role', 'admin', false)", .setRole),
    PinCase("SET x = 1; LISTEN y", .listen),
    PinCase("PREPARE p AS SELECT 1", .sqlPrepare),
]

@Test(arguments: filterCases)
func excludeVariableSets(_ c: PinCase) {
    let options = ClassifierOptions(excludeVariableSets: true)
    #expect(SQLClassifier.classify(c.sql, options: options).pinReasons == c.expected)
}

@Test func trackedParametersDoNotPin() {
    let options = ClassifierOptions(trackedParameters: ["application_name", "datestyle", "timezone", "client_encoding"])
    #expect(SQLClassifier.classify("SET application_name = 'app'", options: options).pinReasons == [])
    #expect(SQLClassifier.classify("SET \"DateStyle\" = ISO", options: options).pinReasons == [])
    #expect(SQLClassifier.classify("SET TIME ZONE 'UTC'", options: options).pinReasons == [])
    #expect(SQLClassifier.classify("SET NAMES 'UTF8'", options: options).pinReasons == [])
    #expect(SQLClassifier.classify("RESET application_name", options: options).pinReasons == [])
    #expect(SQLClassifier.classify("SET application_name = 'a'; SET work_mem = '1MB'", options: options).pinReasons == .setVariable)
    // RESET ALL is a reset the session applies (to the client's startup values), not a pin.
    #expect(SQLClassifier.classify("RESET ALL", options: options).pinReasons == [])
    #expect(SQLClassifier.classify("RESET ALL", options: options).resets == .resetAll)
    #expect(SQLClassifier.classify("SELECT set_config('application_name', 'x', false)", options: options).pinReasons == .setVariable)
}

// MARK: - set commands

struct SetCase: Sendable, CustomTestStringConvertible {
    var sql: String
    var expected: [SetCommand]
    init(_ sql: String, _ expected: [SetCommand]) {
        self.sql = sql
        self.expected = expected
    }
    var testDescription: String { sql.debugDescription }
}

let setCases: [SetCase] = [
    SetCase("SET search_path TO a, b", [SetCommand(name: "search_path", value: "a, b")]),
    SetCase("SET search_path = \"$user\", public ; ", [SetCommand(name: "search_path", value: "\"$user\", public")]),
    SetCase("SET Search_Path TO a -- trailing\n", [SetCommand(name: "search_path", value: "a")]),
    SetCase("SET LOCAL x = 1", [SetCommand(name: "x", value: "1", scope: .local)]),
    SetCase("SET SESSION x = 1", [SetCommand(name: "x", value: "1", scope: .session)]),
    SetCase("SET x TO DEFAULT", [SetCommand(name: "x", value: nil, isReset: true)]),
    SetCase("SET x = default", [SetCommand(name: "x", value: nil, isReset: true)]),
    SetCase("SET x = 'default'", [SetCommand(name: "x", value: "'default'")]),
    SetCase("RESET x", [SetCommand(name: "x", value: nil, isReset: true)]),
    SetCase("RESET ALL", [SetCommand(name: "all", value: nil, isReset: true)]),
    SetCase("SET TIME ZONE 'UTC'", [SetCommand(name: "timezone", value: "'UTC'")]),
    SetCase("set time zone local", [SetCommand(name: "timezone", value: nil, isReset: true)]),
    SetCase("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE",
            [SetCommand(name: "timezone", value: "INTERVAL '+00:00' HOUR TO MINUTE")]),
    SetCase("RESET TIME ZONE", [SetCommand(name: "timezone", value: nil, isReset: true)]),
    SetCase("SET timezone = 'Europe/Paris'", [SetCommand(name: "timezone", value: "'Europe/Paris'")]),
    SetCase("SET NAMES 'UTF8'", [SetCommand(name: "client_encoding", value: "'UTF8'")]),
    SetCase("SET NAMES", [SetCommand(name: "client_encoding", value: nil, isReset: true)]),
    SetCase("SET SCHEMA 'app'", [SetCommand(name: "search_path", value: "'app'")]),
    SetCase("SET XML OPTION CONTENT", [SetCommand(name: "xmloption", value: "CONTENT")]),
    SetCase("SET \"DateStyle\" = ISO", [SetCommand(name: "DateStyle", value: "ISO")]),
    SetCase("SET DateStyle = 'ISO, MDY'", [SetCommand(name: "datestyle", value: "'ISO, MDY'")]),
    SetCase("SET \"a\"\"b\" = 1", [SetCommand(name: "a\"b", value: "1")]),
    SetCase("SET MyApp.User_Id = 42", [SetCommand(name: "myapp.user_id", value: "42")]),
    SetCase("SET /* c */ search_path /* d */ TO /* e */ x /* f */", [SetCommand(name: "search_path", value: "x")]),
    SetCase("SET ROLE admin", [SetCommand(name: "role", value: "admin")]),
    SetCase("SET LOCAL ROLE admin", [SetCommand(name: "role", value: "admin", scope: .local)]),
    SetCase("RESET ROLE", [SetCommand(name: "role", value: nil, isReset: true)]),
    SetCase("SET SESSION AUTHORIZATION 'bob'", [SetCommand(name: "session_authorization", value: "'bob'")]),
    SetCase("SET SESSION AUTHORIZATION DEFAULT", [SetCommand(name: "session_authorization", value: nil, isReset: true)]),
    SetCase("RESET SESSION AUTHORIZATION", [SetCommand(name: "session_authorization", value: nil, isReset: true)]),
    SetCase("SET application_name = 'caf\u{e9} ☕'", [SetCommand(name: "application_name", value: "'caf\u{e9} ☕'")]),
    SetCase("SET a = 1; select 2; SET LOCAL b TO 'x'; RESET c",
            [SetCommand(name: "a", value: "1"), SetCommand(name: "b", value: "'x'", scope: .local),
             SetCommand(name: "c", value: nil, isReset: true)]),
    SetCase("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", []),
    SetCase("SET CONSTRAINTS ALL DEFERRED", []),
    SetCase("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", []),
    SetCase("UPDATE t SET x = 1", []),
    SetCase("select set_config('a', 'b', false)", []),
    SetCase("select 'SET x = 1'", []),
]

@Test(arguments: setCases)
func setCommands(_ c: SetCase) {
    #expect(SQLClassifier.classify(c.sql).setCommands == c.expected)
}

// MARK: - Statements, bytes, robustness

@Test func statementCounting() {
    #expect(SQLClassifier.classify("").statementCount == 0)
    #expect(SQLClassifier.classify(" ; ;; -- x\n").statementCount == 0)
    #expect(SQLClassifier.classify("select 1").statementCount == 1)
    #expect(SQLClassifier.classify("select 1;").statementCount == 1)
    #expect(SQLClassifier.classify("select 1; select ';'; select 3").statementCount == 3)
    #expect(SQLClassifier.classify("select (1; 2); select 3").statementCount == 2)
    #expect(SQLClassifier.classify(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; LISTEN x"
    ) == Classification(pinReasons: .listen, statementCount: 2))
    // BEGIN without ATOMIC does not hide what follows.
    #expect(SQLClassifier.classify("CREATE FUNCTION begin() RETURNS int AS 'select 1' LANGUAGE sql; SET ROLE x")
        == Classification(pinReasons: .setRole, setCommands: [SetCommand(name: "role", value: "x")], statementCount: 2))
}

@Test func pgbenchSelectHasNoReasons() {
    let c = SQLClassifier.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123;")
    #expect(c.pinReasons.isEmpty)
    #expect(!c.pins)
    #expect(c.setCommands.isEmpty)
    #expect(c.statementCount == 1)
}

@Test func byteOverloads() {
    let sql = "SELECT 1; SET x = 1"
    let bytes = Array(sql.utf8)
    let expected = SQLClassifier.classify(sql)
    #expect(expected.pinReasons == .setVariable)
    #expect(SQLClassifier.classify(bytes) == expected)
    #expect(SQLClassifier.classify(bytes[...]) == expected)
    #expect(SQLClassifier.classify(sql.utf8) == expected)
    bytes.withUnsafeBytes { raw in
        #expect(SQLClassifier.classify(raw) == expected)
    }
    #expect(SQLClassifier.classify(UnsafeRawBufferPointer(start: nil, count: 0)) == Classification())
}

@Test func standardConformingStringsOff() {
    // With standard_conforming_strings off, '\'' is one string literal, so the SET is code.
    let sql = "select '\\''; set x = 1; select '"
    #expect(SQLClassifier.classify(sql, options: ClassifierOptions(standardConformingStrings: false)).pinReasons == .setVariable)
    // With it on (the default), the first literal is '\' and the rest is a string up to the final quote.
    let on = "select '\\' ; listen x; select '"
    #expect(SQLClassifier.classify(on).pinReasons == .listen)
    #expect(SQLClassifier.classify("select '\\'; listen x; '", options: ClassifierOptions(standardConformingStrings: false))
        .pinReasons == [])
}

let unterminatedInputs: [String] = [
    "select 'unterminated; SET x = 1",
    "select E'unterminated \\' ; SET x = 1",
    "select \"unterminated ; SET x = 1",
    "select U&\"unterminated ; SET x = 1",
    "select $$ unterminated ; SET x = 1",
    "select $tag$ unterminated $tag ; SET x = 1 $tagx$",
    "select 1 /* unterminated ; SET x = 1",
    "select 1 /* /* nested */ still open ; SET x = 1",
    "select 1 -- SET x = 1",
]

let truncatedInputs: [String] = [
    "select E'",
    "select E'\\",
    "select '",
    "select \"",
    "select $",
    "select $a",
    "select $a$",
    "select $1",
    "select /*",
    "select /",
    "select -",
    "select 1e",
    "select 1e+",
    "select 0x",
    "select .",
    "select U&",
    "select u&'",
    "set",
    "set session",
    "set local",
    "set x",
    "set x =",
    "reset",
    "declare",
    "declare c",
    "declare c cursor with",
    "prepare",
    "select nextval",
    "select nextval(",
    "select set_config('a', 'b', ",
    "select set_config(",
    "select * into",
    "select * into temp",
    "create",
    "create or",
    "explain (",
    "explain analyze",
    "\u{0}",
    "\u{FFFD}\u{FFFD}",
]

@Test(arguments: unterminatedInputs)
func unterminatedTokensSwallowTheRest(_ sql: String) {
    // The text after an unterminated string/comment is part of that token: it never pins.
    let c = SQLClassifier.classify(sql)
    #expect(c.pinReasons == [])
    #expect(c.statementCount == 1)
    assertEveryPrefixClassifies(sql)
}

@Test(arguments: truncatedInputs)
func truncatedInputsDoNotCrash(_ sql: String) {
    assertEveryPrefixClassifies(sql)
}

func assertEveryPrefixClassifies(_ sql: String) {
    let bytes = Array(sql.utf8)
    for end in 0...bytes.count {
        let c = SQLClassifier.classify(bytes[0..<end])
        #expect(c.statementCount <= 1)
    }
}

@Test func arbitraryBytesDoNotCrash() {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    let alphabet = Array("'\"$/*-;()[],.:=eEuU&xX_aZ09\\ \n\tsetSETnextval".utf8) + [0x00, 0x80, 0xFF, 0xC3, 0xA9]
    for _ in 0..<2000 {
        var bytes: [UInt8] = []
        for _ in 0..<48 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            bytes.append(alphabet[Int(state >> 33) % alphabet.count])
        }
        let c = SQLClassifier.classify(bytes)
        #expect(c.statementCount >= 0)
    }
}

@Test func nestedComments() {
    #expect(SQLClassifier.classify("/* a /* b */ SET x = 1 */ select 1").pinReasons == [])
    #expect(SQLClassifier.classify("/* a /* b */ */ SET x = 1").pinReasons == .setVariable)
    #expect(SQLClassifier.classify("/**/SET x = 1").pinReasons == .setVariable)
    #expect(SQLClassifier.classify("/*/ SET x = 1 */ select 1").pinReasons == [])
    #expect(SQLClassifier.classify("select 1 /* /* /* */ */ */; LISTEN x").pinReasons == .listen)
    #expect(SQLClassifier.classify("select 1 --- x\n; LISTEN x").pinReasons == .listen)
    #expect(SQLClassifier.classify("select 1 --x\r LISTEN x").pinReasons == [])  // one statement: `select 1 LISTEN x`
    #expect(SQLClassifier.classify("select 1 --x\r; LISTEN x").pinReasons == .listen)
}

@Test func reasonNames() {
    #expect(PinReasons.all.names == [
        "set_variable", "set_role", "sql_prepare", "temporary_object", "cursor_with_hold",
        "discard", "listen", "load", "advisory_lock", "sequence_function", "protocol_prepared_statement",
    ])
    #expect(([.listen, .setVariable] as PinReasons).names == ["set_variable", "listen"])
    #expect(PinReasons().names == [])
    #expect(PinReasons(name: "advisory_lock") == .advisoryLock)
    #expect(PinReasons(name: "nope") == nil)
    #expect(PinReasons([.load, .discard]).description == "[discard, load]")
}

// MARK: - Lexer

struct LexCase: Sendable, CustomTestStringConvertible {
    var sql: String
    var tokens: [String]
    init(_ sql: String, _ tokens: [String]) {
        self.sql = sql
        self.tokens = tokens
    }
    var testDescription: String { sql.debugDescription }
}

func lex(_ sql: String) -> [String] {
    let bytes = Array(sql.utf8)
    return bytes.withUnsafeBytes { raw in
        var lexer = Lexer(raw, backslashInPlainStrings: false)
        var out: [String] = []
        while true {
            let t = lexer.next()
            if t.kind == .end { break }
            out.append("\(t.kind):\(lexer.text(t.start, t.end))")
        }
        return out
    }
}

let lexCases: [LexCase] = [
    LexCase("select a.b, $1 from t;", ["identifier:select", "identifier:a", "punctuation:.", "identifier:b",
                                       "punctuation:,", "parameter:$1", "identifier:from", "identifier:t",
                                       "punctuation:;"]),
    LexCase("$$a$b$$ $x$ $$ $x$ $y", ["string:$$a$b$$", "string:$x$ $$ $x$", "operator:$", "identifier:y"]),
    LexCase("foo$$bar$$ x$1", ["identifier:foo$$bar$$", "identifier:x$1"]),
    LexCase("$1x $_a$b$_a$", ["parameter:$1", "identifier:x", "string:$_a$b$_a$"]),
    LexCase("'a''b' E'c\\'d' e'' B'01' X'0f' N'n' U&'u' U&\"q\"", [
        "string:'a''b'", "string:E'c\\'d'", "string:e''", "string:B'01'", "string:X'0f'", "string:N'n'",
        "string:U&'u'", "quotedIdentifier:U&\"q\"",
    ]),
    LexCase("\"a\"\"b\" \"\"", ["quotedIdentifier:\"a\"\"b\"", "quotedIdentifier:\"\""]),
    LexCase("1 1.5 .5 1e10 1.5e-3 0x1F 1_000 1..2", ["number:1", "number:1.5", "number:.5", "number:1e10",
                                                   "number:1.5e-3", "number:0x1F", "number:1_000", "number:1",
                                                   "punctuation:.", "number:.2"]),
    LexCase("a-b a--b\nc a/*x*/b", ["identifier:a", "operator:-", "identifier:b", "identifier:a", "identifier:c",
                                    "identifier:a", "identifier:b"]),
    LexCase("x::int[]", ["identifier:x", "punctuation::", "punctuation::", "identifier:int", "punctuation:[",
                         "punctuation:]"]),
    LexCase("café naïve", ["identifier:café", "identifier:naïve"]),
    LexCase("select 'open", ["identifier:select", "string:'open"]),
    LexCase("select $q$ open", ["identifier:select", "string:$q$ open"]),
    LexCase("a /* open", ["identifier:a"]),
]

@Test(arguments: lexCases)
func lexer(_ c: LexCase) {
    #expect(lex(c.sql) == c.tokens)
}


// MARK: - Session resets

struct ResetCase: Sendable, CustomTestStringConvertible {
    var sql: String
    var expected: SessionResets
    var deallocated: String?
    init(_ sql: String, _ expected: SessionResets, deallocated: String? = nil) {
        self.sql = sql
        self.expected = expected
        self.deallocated = deallocated
    }
    var testDescription: String { "\(sql.debugDescription) → \(expected)" }
}

/// Statements that return session state to its defaults: reported as resets, never as pins
/// (asyncpg's pool runs the first one on every connection it releases).
let resetCases: [ResetCase] = [
    ResetCase("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
              [.advisoryUnlockAll, .closeAll, .unlistenAll, .resetAll]),
    ResetCase("RESET ALL", .resetAll),
    ResetCase("reset all", .resetAll),
    ResetCase("DISCARD ALL", .discardAll),
    ResetCase("discard temp", .discardTemp),
    ResetCase("DISCARD TEMPORARY", .discardTemp),
    ResetCase("DISCARD SEQUENCES", .discardSequences),
    ResetCase("DISCARD PLANS", .discardPlans),
    ResetCase("DEALLOCATE ALL", .deallocateAll),
    ResetCase("deallocate prepare all", .deallocateAll),
    ResetCase("DEALLOCATE _pg3_1", .deallocate, deallocated: "_pg3_1"),
    ResetCase("DEALLOCATE PREPARE \"My Stmt\"", .deallocate, deallocated: "My Stmt"),
    ResetCase("deallocate S1;", .deallocate, deallocated: "s1"),
    ResetCase("DEALLOCATE a; DEALLOCATE b", .deallocate),
    ResetCase("SELECT pg_catalog.pg_advisory_unlock_all()", .advisoryUnlockAll),
    ResetCase("UNLISTEN ch", []),
    ResetCase("CLOSE c", []),
    ResetCase("SELECT 'RESET ALL', 'DISCARD ALL' -- DEALLOCATE ALL", []),
]

@Test(arguments: resetCases)
func resets(_ c: ResetCase) {
    let classification = SQLClassifier.classify(c.sql)
    #expect(classification.resets == c.expected)
    #expect(classification.pinReasons.isEmpty)
    #expect(classification.deallocatedName == c.deallocated)
}

@Test func twoPhaseCommitDoesNotPin() {
    for sql in ["PREPARE TRANSACTION 'x'", "prepare transaction 'gid-1'", "COMMIT PREPARED 'x'", "ROLLBACK PREPARED 'x'"] {
        #expect(SQLClassifier.classify(sql).pinReasons.isEmpty, "\(sql)")
    }
}

// MARK: - The plain-SELECT shortcut against the lexer

/// `classify` answers a plain SELECT from its bytes (`isPlainSelect`) without the lexer: for
/// every statement, written or generated, the answer must be the lexer's (`classifyByTokens`),
/// with standard-conforming strings on and off.
@Test func plainSelectShortcutAgreesWithTheLexer() {
    let written = triggerCases.map(\.sql) + lookAlikes + filterCases.map(\.sql) + setCases.map(\.sql)
        + unterminatedInputs + truncatedInputs + resetCases.map(\.sql) + [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;", "select 1", " \n\tSELECT 1 ;  ; \n",
            "select 1; select 2", "select 1;x", "selected", "select_1", "select$1", "select", "SELECT*FROM t",
            "select 'into'", "select \"Into\"", "select x from t where y = 'a(b'", "select 1 -- (\n",
            "select /* ; */ 1", "select 1 into temp t", "SELECT x INTO t FROM y", "select nextval ('s')",
            "select e'\\'; set role x; '", "select $$;$$", "select lastval", "sélect 1", "select\u{0}1",
        ]
    let fragments = [
        "select", "SELECT", "Select", " ", "\t", "\n", "\r\n", "\u{0B}", "into", "INTO", "iNtO", "int", "(", ")", ";",
        "'", "\"", "$$", "$a$", "--", "/*", "*/", "\\", "E'", "U&'", "nextval", "setval", "set_config",
        "pg_advisory_lock", "pg_catalog", ".", ",", "x", "1", "from", "t", "temp", "pg_temp", "table", "selected",
        "set", "reset", "listen", "with", "explain", "é", "\u{0}", "\u{08}", "\u{1B}", "abalance pgbench_accounts",
    ]
    var shortcuts = 0
    forEachShortcutCandidate(written, fragments: fragments) { sql, raw in
        if SQLClassifier.isPlainSelect(raw) { shortcuts += 1 }
        for conforming in [true, false] {
            let options = ClassifierOptions(standardConformingStrings: conforming)
            let expected = SQLClassifier.classifyByTokens(raw, options: options)
            let actual = SQLClassifier.classify(raw, options: options)
            #expect(actual == expected, "\(sql.debugDescription), standard_conforming_strings \(conforming)")
        }
    }
    // The shortcut is taken often enough for the comparison to mean something.
    #expect(shortcuts > 3_000)
    #expect(SQLClassifier.isPlainSelect(UnsafeRawBufferPointer(start: nil, count: 0)) == false)
}

/// Runs `body` on each written statement and on 30,000 generated ones (half start with SELECT,
/// then up to 12 of `fragments`), as UTF-8 bytes: the statements both dialects' plain-SELECT
/// shortcuts are compared with their lexers on. Deterministic, so that a failure repeats.
func forEachShortcutCandidate(_ written: [String], fragments: [String], _ body: (String, UnsafeRawBufferPointer) -> Void) {
    var random = MySQLTestRandom(seed: 20_261_205)
    var generated: [String] = []
    for n in 0..<30_000 {
        var sql = n % 2 == 0 ? (n % 4 == 0 ? "select " : "SELECT") : ""
        for _ in 0..<random.below(13) { sql += random.pick(fragments) }
        generated.append(sql)
    }
    for sql in written + generated {
        var copy = sql
        copy.withUTF8 { body(sql, UnsafeRawBufferPointer($0)) }
    }
}
