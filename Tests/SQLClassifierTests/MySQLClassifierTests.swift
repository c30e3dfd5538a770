import Testing
@testable import SQLClassifier

struct MySQLPinCase: Sendable, CustomTestStringConvertible {
    var sql: String
    var expected: MySQLPinReasons
    init(_ sql: String, _ expected: MySQLPinReasons) {
        self.sql = sql
        self.expected = expected
    }
    var testDescription: String { "\(sql.debugDescription) → \(expected)" }
}

// MARK: - Triggers

let mysqlTriggerCases: [MySQLPinCase] = [
    // user variables: assigned, read, selected into, in any statement
    MySQLPinCase("SET @x = 1", .userVariable),
    MySQLPinCase("set @x := 1", .userVariable),
    MySQLPinCase("SELECT @x", .userVariable),
    MySQLPinCase("SELECT 1 INTO @x", .userVariable),
    MySQLPinCase("SELECT a, b INTO @a, @b FROM t LIMIT 1", .userVariable),
    MySQLPinCase("SELECT @x := 1", .userVariable),
    MySQLPinCase("SELECT @rownum := @rownum + 1 AS n, t.* FROM t", .userVariable),
    MySQLPinCase("SELECT * FROM t WHERE id = @id", .userVariable),
    MySQLPinCase("SET @'my var' = 1", .userVariable),
    MySQLPinCase("SET @\"my var\" = 1", .userVariable),
    MySQLPinCase("SET @`my var` = 1", .userVariable),
    MySQLPinCase("CALL p(@out)", .userVariable),
    MySQLPinCase("EXECUTE s USING @a, @b", .userVariable),
    MySQLPinCase("LOAD DATA INFILE 'f' INTO TABLE t (@c1) SET c = @c1", .userVariable),
    MySQLPinCase("SELECT@x", .userVariable),
    MySQLPinCase("SELECT 1 FROM t WHERE a = 1 AND@x", .userVariable),
    MySQLPinCase("SELECT (@x)", .userVariable),
    MySQLPinCase("SELECT @", .userVariable),  // a bare `@`: no operator in MySQL; conservative
    MySQLPinCase("UPDATE t SET a = @x", .userVariable),
    MySQLPinCase("SELECT @@version, @x", .userVariable),
    // temporary tables
    MySQLPinCase("CREATE TEMPORARY TABLE t (id INT)", .temporaryTable),
    MySQLPinCase("create temporary table if not exists t like u", .temporaryTable),
    MySQLPinCase("CREATE OR REPLACE TEMPORARY TABLE t AS SELECT 1", .temporaryTable),
    MySQLPinCase("CREATE TEMPORARY SEQUENCE s", .temporaryTable),
    MySQLPinCase("CREATE /* c */ TEMPORARY TABLE t (id INT)", .temporaryTable),
    // LOCK TABLES
    MySQLPinCase("LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("lock table t read", .lockTables),
    MySQLPinCase("LOCK TABLES t1 READ, t2 AS a WRITE", .lockTables),
    MySQLPinCase("LOCK TABLES `t` READ LOCAL", .lockTables),
    // FLUSH TABLES ... WITH READ LOCK / FOR EXPORT
    MySQLPinCase("FLUSH TABLES WITH READ LOCK", .globalReadLock),
    MySQLPinCase("flush tables t1, t2 with read lock", .globalReadLock),
    MySQLPinCase("FLUSH TABLE t WITH READ LOCK", .globalReadLock),
    MySQLPinCase("FLUSH TABLES t FOR EXPORT", .globalReadLock),
    MySQLPinCase("FLUSH NO_WRITE_TO_BINLOG TABLES WITH READ LOCK", .globalReadLock),
    MySQLPinCase("FLUSH LOCAL TABLES WITH READ LOCK", .globalReadLock),
    MySQLPinCase("FLUSH TABLES WITH READ LOCK AND DISABLE CHECKPOINT", .globalReadLock),
    // GET_LOCK
    MySQLPinCase("SELECT GET_LOCK('x', 10)", .namedLock),
    MySQLPinCase("select get_lock ('x', 1)", .namedLock),
    MySQLPinCase("SELECT get_lock /* c */ ('x', 1)", .namedLock),
    MySQLPinCase("DO GET_LOCK('a', 0)", .namedLock),
    MySQLPinCase("SELECT `get_lock`('x', 1)", .namedLock),
    MySQLPinCase("SELECT IF(GET_LOCK('a', 1), 1, 0)", .namedLock),
    MySQLPinCase("SELECT * FROM t WHERE GET_LOCK(CONCAT('job-', t.id), 0) = 1", .namedLock),
    // PREPARE
    MySQLPinCase("PREPARE s FROM 'SELECT 1'", .sqlPrepare),
    MySQLPinCase("prepare `s` from 'select ?'", .sqlPrepare),
    MySQLPinCase("PREPARE s FROM @sql", [.sqlPrepare, .userVariable]),
    // SQL_CALC_FOUND_ROWS
    MySQLPinCase("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 10", .foundRows),
    MySQLPinCase("select distinct sql_calc_found_rows a from t", .foundRows),
    // ROW_COUNT() / FOUND_ROWS(): the session lifts it where it answers or holds the backend
    MySQLPinCase("SELECT FOUND_ROWS(), ROW_COUNT(), LAST_INSERT_ID()", .sessionFunction),
    MySQLPinCase("INSERT INTO log VALUES (ROW_COUNT())", .sessionFunction),
    // HANDLER
    MySQLPinCase("HANDLER t OPEN", .handler),
    MySQLPinCase("handler t read first", .handler),
    MySQLPinCase("HANDLER t READ idx NEXT WHERE a > 1 LIMIT 10", .handler),
    MySQLPinCase("HANDLER t CLOSE", .handler),
    // XA
    MySQLPinCase("XA START 'x'", .xa),
    MySQLPinCase("xa begin 'x', 'b', 1", .xa),
    // SETs of untracked variables
    MySQLPinCase("SET sql_log_bin = 0", .setVariable),
    MySQLPinCase("SET SESSION sort_buffer_size = 1000000", .setVariable),
    MySQLPinCase("SET LOCAL foreign_key_checks = 0", .setVariable),
    MySQLPinCase("SET @@session.max_execution_time = 10", .setVariable),
    MySQLPinCase("SET @@local.max_execution_time = 10", .setVariable),
    MySQLPinCase("SET @@max_execution_time = 10", .setVariable),
    MySQLPinCase("SET @@session.`sql_log_bin` = 0", .setVariable),
    MySQLPinCase("SET `foreign_key_checks` = 0", .setVariable),
    MySQLPinCase("SET unique_checks = 0, time_zone = '+00:00'", .setVariable),
    MySQLPinCase("SET time_zone = '+00:00', unique_checks = 0", .setVariable),
    MySQLPinCase("SET GLOBAL a = 1, SESSION b = 2", .setVariable),
    MySQLPinCase("SET @@global.a = 1, b = 2", .setVariable),
    MySQLPinCase("SET max_statement_time := 5", .setVariable),
    MySQLPinCase("SET RESOURCE GROUP rg", .setVariable),
    MySQLPinCase("SET NAMES utf8mb4, sql_log_bin = 0", .setVariable),
    MySQLPinCase("SET x", .setVariable),  // malformed: conservative
    MySQLPinCase("SET @x = 1, sql_log_bin = 0", [.userVariable, .setVariable]),
    // SET ROLE
    MySQLPinCase("SET ROLE admin", .setRole),
    MySQLPinCase("set role none", .setRole),
    MySQLPinCase("SET ROLE ALL EXCEPT r1", .setRole),
    MySQLPinCase("SET ROLE DEFAULT", .setRole),
    // backup locks
    MySQLPinCase("LOCK INSTANCE FOR BACKUP", .backupLock),
    MySQLPinCase("BACKUP STAGE START", .backupLock),
    MySQLPinCase("BACKUP LOCK t", .backupLock),
    // executable comments are code
    MySQLPinCase("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */", .userVariable),
    MySQLPinCase("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE */;", .userVariable),
    MySQLPinCase("/*! LOCK TABLES t WRITE */", .lockTables),
    MySQLPinCase("/*!LOCK TABLES t WRITE*/", .lockTables),
    MySQLPinCase("/*!50700 LOCK TABLES t WRITE */", .lockTables),
    MySQLPinCase("/*!999999 LOCK TABLES t WRITE */", .lockTables),  // every version is taken as run
    MySQLPinCase("/*M! LOCK TABLES t WRITE */", .lockTables),
    MySQLPinCase("/*M!100100 CREATE TEMPORARY TABLE t (a INT) */", .temporaryTable),
    MySQLPinCase("SELECT /*!SQL_CALC_FOUND_ROWS*/ * FROM t", .foundRows),
    MySQLPinCase("SELECT 1 /*!50700 , @x */", .userVariable),
    MySQLPinCase("SELECT 1 /*!50700 , GET_LOCK('a', 1) */ FROM t", .namedLock),
    MySQLPinCase("/*!40101 SET NAMES utf8 */; LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */", [.userVariable, .setVariable]),
    MySQLPinCase("/*! SELECT '*/' */ , @x", .userVariable),  // `*/` in a string does not close it; after it, code
    // multi-statements
    MySQLPinCase("SELECT 1; LOCK TABLES t WRITE; SELECT GET_LOCK('a', 1)", [.lockTables, .namedLock]),
    MySQLPinCase("SELECT ';'; SET @x = 1", .userVariable),
    MySQLPinCase("SELECT 'it''s'; HANDLER t OPEN", .handler),
    MySQLPinCase("SELECT 'it\\'s'; HANDLER t OPEN", .handler),
    MySQLPinCase("SELECT \";\"; HANDLER t OPEN", .handler),
    MySQLPinCase("SELECT `;`; HANDLER t OPEN", .handler),
    MySQLPinCase("SELECT 1 # ;\n; HANDLER t OPEN", .handler),
    MySQLPinCase("SELECT 1 -- x\n; HANDLER t OPEN", .handler),
    MySQLPinCase("SELECT 1 /* ; */; HANDLER t OPEN", .handler),
    MySQLPinCase(";;  ; LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("  \n\t LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("/* leading */ # more\n LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("-- \nLOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("--\nLOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("--\tx\nLOCK TABLES t WRITE", .lockTables),
    // MariaDB: per-statement SET, dynamic SQL, compound statements
    MySQLPinCase("SET STATEMENT max_statement_time = 1 FOR SELECT @x", .userVariable),
    MySQLPinCase("SET STATEMENT max_statement_time = 1 FOR LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("EXECUTE IMMEDIATE 'LOCK TABLES t WRITE'", .lockTables),
    MySQLPinCase("EXECUTE IMMEDIATE \"CREATE TEMPORARY TABLE t (a INT)\"", .temporaryTable),
    MySQLPinCase("EXECUTE IMMEDIATE 'SELECT \\'a\\', @x'", .userVariable),
    MySQLPinCase("EXECUTE IMMEDIATE 'SELECT ''a'', GET_LOCK(''x'', 1)'", .namedLock),
    MySQLPinCase("EXECUTE IMMEDIATE CONCAT('SELECT ', 1)", .sqlPrepare),
    MySQLPinCase("EXECUTE IMMEDIATE @s", .userVariable),
    MySQLPinCase("EXECUTE IMMEDIATE 'SELECT ?' USING @a", .userVariable),
    MySQLPinCase("BEGIN NOT ATOMIC SET @x = 1; SELECT @x; END", .userVariable),
    MySQLPinCase("BEGIN NOT ATOMIC LOCK TABLES t WRITE; END", .lockTables),
    MySQLPinCase("BEGIN NOT ATOMIC DECLARE v INT; BEGIN CREATE TEMPORARY TABLE t (a INT); END; END", .temporaryTable),
    MySQLPinCase("IF @a THEN SELECT 1; END IF", .userVariable),
    MySQLPinCase("IF 1 THEN SELECT 1; ELSE HANDLER t OPEN; END IF", .handler),
    MySQLPinCase("lbl: LOOP CREATE TEMPORARY TABLE t (a INT); LEAVE lbl; END LOOP", .temporaryTable),
    MySQLPinCase("WHILE 1 DO XA START 'x'; END WHILE", .xa),
    // after a stored program's definition, statements are classified again
    MySQLPinCase("CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END; LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("CREATE FUNCTION f() RETURNS INT RETURN 1; SELECT @x", .userVariable),
]

@Test(arguments: mysqlTriggerCases)
func mysqlTriggers(_ c: MySQLPinCase) {
    #expect(MySQLClassifier.classify(c.sql).pinReasons == c.expected)
}

// MARK: - Look-alikes

let mysqlLookAlikes: [String] = [
    // from the brief
    "SELECT '@x'",
    "SELECT \"@x\"",
    "/* LOCK TABLES */ SELECT 1",
    "-- LOCK TABLES\nSELECT 1",
    "# GET_LOCK(\nSELECT 1",
    "SELECT `get_lock` FROM t",
    "SELECT @@session.time_zone",
    "SELECT 'a\\'@x'",
    // literals and comments
    "SELECT 'LOCK TABLES t WRITE'",
    "SELECT 'SET @x = 1', \"GET_LOCK('a', 1)\"",
    "SELECT `@x` FROM t",
    "SELECT `a``@x` FROM t",
    "SELECT 'a''@x'",
    "SELECT \"a\"\"@x\"",
    "SELECT \"a\\\"@x\"",
    "SELECT 'a' '@x'",
    "SELECT _utf8mb4'@x' COLLATE utf8mb4_bin",
    "SELECT N'GET_LOCK(1)'",
    "SELECT X'40', x'4745545F4C4F434B28', B'01', 0x40",
    "SELECT 'a\\\\' -- @x",
    "SELECT '\\\\', '@x'",
    "SELECT 1 -- @x",
    "SELECT 1 # @x",
    "SELECT 1 #@x",
    "SELECT 1 /* @x */",
    "SELECT 1 /* /* nested? */ SELECT 1",
    "SELECT 1 /*+ SET_VAR(sort_buffer_size = 16M) GET_LOCK( */",
    "SELECT /*+ BKA(t1) */ * FROM t1",
    "/*M SET @x = 1 */ SELECT 1",
    "SELECT 1; -- LOCK TABLES t WRITE",
    "SELECT 1; /* LOCK TABLES t WRITE */",
    "SELECT 1; # LOCK TABLES t WRITE",
    "SELECT 1 --x",  // `--x` is two minus signs: 1 - (-x)
    "SELECT 1 /* unterminated ; LOCK TABLES t WRITE",
    "SELECT 'unterminated ; LOCK TABLES t WRITE",
    "SELECT `unterminated ; LOCK TABLES t WRITE",
    // system variables
    "SELECT @@version",
    "SELECT @@global.max_connections",
    "select @@local.sql_mode, @@SESSION.time_zone",
    "SELECT @@`version`",
    "SELECT@@version",
    // names that are not the built-in
    "SELECT t.get_lock FROM t",
    "SELECT db.get_lock('a', 1)",
    "SELECT get_lock FROM t",
    "SELECT get_locks('x')",
    "SELECT my_get_lock('x')",
    "SELECT is_used_lock('x'), release_lock('x'), is_free_lock('x'), release_all_locks()",
    "DROP FUNCTION IF EXISTS get_lock",
    "SELECT sql_calc_found_rows_x FROM t",
    "SELECT `sql_calc_found_rows` FROM t",
    "SELECT LAST_INSERT_ID(), db.ROW_COUNT(), `x`.found_rows()",
    // accounts: `user@host` is not a user variable
    "GRANT SELECT ON db.* TO 'app'@'%'",
    "GRANT SELECT ON db.* TO `app`@`localhost`",
    "CREATE USER app@localhost IDENTIFIED BY 'x'",
    "CREATE USER 'app'@'10.0.%' IDENTIFIED WITH caching_sha2_password BY 'x'",
    "DROP USER IF EXISTS 'a'@'b', c@d",
    "RENAME USER 'a'@'h' TO 'b'@'h'",
    "SHOW GRANTS FOR 'u'@'%'",
    "GRANT PROXY ON ''@'' TO 'u'@'h'",
    "REVOKE ALL ON *.* FROM u@'%'",
    "CREATE DEFINER=`root`@`localhost` VIEW v AS SELECT 1",
    "CREATE ALGORITHM=UNDEFINED DEFINER=root@localhost SQL SECURITY DEFINER VIEW v AS SELECT 1",
    "ALTER USER 'u'@'%' PASSWORD EXPIRE",
    // statements that release, end or only name state
    "UNLOCK TABLES",
    "unlock table",
    "DROP TEMPORARY TABLE t",
    "DROP TEMPORARY TABLE IF EXISTS t",
    "CREATE TABLE temporary_t (a INT)",
    "CREATE TABLE t (temporary INT)",
    "EXECUTE s",
    "DEALLOCATE PREPARE s",
    "DROP PREPARE s",
    "XA END 'x'",
    "XA PREPARE 'x'",
    "XA COMMIT 'x'",
    "XA COMMIT 'x' ONE PHASE",
    "XA ROLLBACK 'x'",
    "XA RECOVER",
    "SELECT * FROM handler",
    "SELECT 1 AS lock_tables",
    "FLUSH TABLES",
    "FLUSH TABLES t",
    "FLUSH PRIVILEGES",
    "FLUSH LOGS",
    "LOCK",
    "UNLOCK INSTANCE",
    "BACKUP",
    "PREPARE",
    "EXECUTE IMMEDIATE 'SELECT ''@x'''",
    "EXECUTE IMMEDIATE 'SELECT 1; SELECT 2'",
    "UPDATE t SET a = 1",
    "INSERT INTO t SET a = 1, b = 'x'",
    "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
    // tracked, global and per-transaction SETs
    "SET autocommit = 0",
    "SET autocommit=1",
    "SET NAMES utf8mb4",
    "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_ci'",
    "SET NAMES DEFAULT",
    "SET CHARACTER SET utf8",
    "SET CHARSET DEFAULT",
    "SET time_zone = '+00:00'",
    "SET @@session.time_zone = 'UTC'",
    "SET @@SESSION.TIME_ZONE='UTC'",
    "SET sql_mode = 'ANSI'",
    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')",
    "SET character_set_client = utf8mb4, character_set_results = NULL, collation_connection = utf8mb4_bin",
    "set tx_isolation = 'READ-COMMITTED'",
    "SET SESSION transaction_isolation = 'REPEATABLE-READ'",
    "SET wait_timeout = 28800, interactive_timeout = 28800, net_write_timeout = 60",
    "SET auto_increment_increment = 2",
    "SET GLOBAL max_connections = 1000",
    "SET @@global.max_connections = 1000",
    "SET PERSIST max_connections = 1000",
    "SET PERSIST_ONLY back_log = 100",
    "SET @@persist.max_connections = 1000",
    "SET GLOBAL a = 1, b = 2",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION READ ONLY",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ",
    "SET GLOBAL TRANSACTION READ WRITE",
    "SET PASSWORD = 'x'",
    "SET PASSWORD FOR 'u'@'%' = 'x'",
    "SET DEFAULT ROLE ALL TO 'u'@'%'",
    "SET STATEMENT max_statement_time = 1 FOR SELECT 1",
    "SET",
    "SET;",
    // transactions, schema, everything ordinary
    "USE db",
    "BEGIN",
    "BEGIN WORK",
    "START TRANSACTION",
    "START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "SHOW VARIABLES LIKE 'sql_mode'",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
    "CALL p()",
    "CALL p(1, 'x')",
    "DO SLEEP(1)",
    "DELIMITER //",
    "",
    "   ",
    ";;;",
    "-- only a comment",
    "#only a comment",
    "/*!*/",
    "/*!40101*/",
    "/*!40101 */;",
    // the definitions of stored programs do not run
    "CREATE PROCEDURE p() BEGIN SET @x = 1; LOCK TABLES t WRITE; CREATE TEMPORARY TABLE t (a INT); SELECT GET_LOCK('a', 1); END",
    "CREATE DEFINER=`root`@`localhost` TRIGGER trg BEFORE INSERT ON t FOR EACH ROW SET NEW.a = @x",
    "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW BEGIN IF NEW.a > 0 THEN SET NEW.b = @x; ELSE SET @y = 2; END IF; END",
    "CREATE FUNCTION get_lock2() RETURNS INT RETURN 1",
    "CREATE FUNCTION f() RETURNS INT DETERMINISTIC RETURN GET_LOCK('a', 1)",
    "CREATE OR REPLACE AGGREGATE FUNCTION agg(x INT) RETURNS INT BEGIN DECLARE CONTINUE HANDLER FOR NOT FOUND RETURN @s; LOOP FETCH GROUP NEXT ROW; SET @s = @s + x; END LOOP; END",
    "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO BEGIN SET @x = 1; DELETE FROM t; END",
    "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER trg AFTER INSERT ON t FOR EACH ROW SET @n = @n + 1 */",
    "ALTER EVENT e DO BEGIN SET @x = 1; END",
]

@Test(arguments: mysqlLookAlikes)
func mysqlLookAlikesDoNotPin(_ sql: String) {
    #expect(MySQLClassifier.classify(sql).pinReasons == [])
}

// MARK: - EXCLUDE_VARIABLE_SETS and tracked variables

let mysqlFilterCases: [MySQLPinCase] = [
    MySQLPinCase("SET sql_log_bin = 0", []),
    MySQLPinCase("SET SESSION max_execution_time = 5", []),
    MySQLPinCase("SET @@session.foreign_key_checks = 0, unique_checks = 0", []),
    MySQLPinCase("SET RESOURCE GROUP rg", []),
    MySQLPinCase("SET x", []),
    MySQLPinCase("SET @x = 1", .userVariable),
    MySQLPinCase("SELECT @x := 1", .userVariable),
    MySQLPinCase("SET ROLE r", .setRole),
    MySQLPinCase("SET sql_log_bin = 0; LOCK TABLES t WRITE", .lockTables),
    MySQLPinCase("PREPARE s FROM 'SELECT 1'", .sqlPrepare),
    MySQLPinCase("CREATE TEMPORARY TABLE t (a INT)", .temporaryTable),
]

@Test(arguments: mysqlFilterCases)
func mysqlExcludeVariableSets(_ c: MySQLPinCase) {
    let options = MySQLClassifierOptions(excludeVariableSets: true)
    #expect(MySQLClassifier.classify(c.sql, options: options).pinReasons == c.expected)
}

@Test func mysqlTrackedVariables() {
    // The defaults: RDS Proxy's tracked variables.
    for name in ["autocommit", "time_zone", "sql_mode", "character_set_client", "character_set_connection",
                 "character_set_results", "collation_connection", "transaction_isolation", "tx_isolation",
                 "transaction_read_only", "tx_read_only", "auto_increment_increment", "wait_timeout",
                 "interactive_timeout", "net_write_timeout"]
    {
        #expect(MySQLClassifierOptions.defaultTrackedVariables.contains(name), "\(name)")
        #expect(MySQLClassifier.classify("SET \(name) = 1").pinReasons == [], "\(name)")
        #expect(MySQLClassifier.classify("SET SESSION \(name) = 1").pinReasons == [], "\(name)")
        #expect(MySQLClassifier.classify("SET @@\(name) = 1").pinReasons == [], "\(name)")
        #expect(MySQLClassifier.classify("SET @@session.\(name) = 1").pinReasons == [], "\(name)")
    }
    // Names compare case-insensitively.
    #expect(MySQLClassifier.classify("SET TIME_ZONE = 'UTC'").pinReasons == [])
    #expect(MySQLClassifier.classify("SET `Time_Zone` = 'UTC'").pinReasons == [])
    // A custom set.
    let custom = MySQLClassifierOptions(trackedVariables: ["sql_log_bin"])
    #expect(MySQLClassifier.classify("SET sql_log_bin = 0", options: custom).pinReasons == [])
    #expect(MySQLClassifier.classify("SET autocommit = 0", options: custom).pinReasons == .setVariable)
    #expect(MySQLClassifier.classify("SET SESSION TRANSACTION READ ONLY", options: custom).pinReasons == .setVariable)
    let none = MySQLClassifierOptions(trackedVariables: [])
    #expect(MySQLClassifier.classify("SET time_zone = 'UTC'", options: none).pinReasons == .setVariable)
    // Global, persisted and next-transaction SETs never pin, tracked or not.
    #expect(MySQLClassifier.classify("SET GLOBAL time_zone = 'UTC'", options: none).pinReasons == [])
    #expect(MySQLClassifier.classify("SET TRANSACTION READ ONLY", options: none).pinReasons == [])
    // SET NAMES is tracked whatever the set holds (the server reports the variables it changes).
    #expect(MySQLClassifier.classify("SET NAMES utf8mb4", options: none).pinReasons == [])
}

// MARK: - SET assignments

struct MySQLSetCase: Sendable, CustomTestStringConvertible {
    var sql: String
    var expected: [MySQLSetAssignment]
    init(_ sql: String, _ expected: [MySQLSetAssignment]) {
        self.sql = sql
        self.expected = expected
    }
    var testDescription: String { sql.debugDescription }
}

let mysqlSetCases: [MySQLSetCase] = [
    MySQLSetCase("SET time_zone = '+00:00'", [MySQLSetAssignment(name: "time_zone", scope: .session, value: "'+00:00'")]),
    MySQLSetCase("SET SESSION time_zone = 'UTC'", [MySQLSetAssignment(name: "time_zone", value: "'UTC'")]),
    MySQLSetCase("SET LOCAL time_zone = 'UTC'", [MySQLSetAssignment(name: "time_zone", value: "'UTC'")]),
    MySQLSetCase("SET @@session.time_zone = 'UTC'", [MySQLSetAssignment(name: "time_zone", value: "'UTC'")]),
    MySQLSetCase("SET @@SESSION.Time_Zone='UTC'", [MySQLSetAssignment(name: "time_zone", value: "'UTC'")]),
    MySQLSetCase("SET @@local.sql_mode = ''", [MySQLSetAssignment(name: "sql_mode", value: "''")]),
    MySQLSetCase("SET @@sql_mode := 'ANSI'", [MySQLSetAssignment(name: "sql_mode", value: "'ANSI'")]),
    MySQLSetCase("SET `time_zone` = 'UTC'", [MySQLSetAssignment(name: "time_zone", value: "'UTC'")]),
    MySQLSetCase("SET @@global.max_connections = 10", [MySQLSetAssignment(name: "max_connections", scope: .global, value: "10")]),
    MySQLSetCase("SET GLOBAL max_connections = 10, wait_timeout = 5", [
        MySQLSetAssignment(name: "max_connections", scope: .global, value: "10"),
        MySQLSetAssignment(name: "wait_timeout", scope: .global, value: "5"),
    ]),
    MySQLSetCase("SET GLOBAL a = 1, SESSION b = 2, c = 3", [
        MySQLSetAssignment(name: "a", scope: .global, value: "1"),
        MySQLSetAssignment(name: "b", scope: .session, value: "2"),
        MySQLSetAssignment(name: "c", scope: .session, value: "3"),
    ]),
    MySQLSetCase("SET @@global.a = 1, b = 2", [
        MySQLSetAssignment(name: "a", scope: .global, value: "1"),
        MySQLSetAssignment(name: "b", scope: .session, value: "2"),
    ]),
    MySQLSetCase("SET PERSIST a = 1", [MySQLSetAssignment(name: "a", scope: .persist, value: "1")]),
    MySQLSetCase("SET PERSIST_ONLY a = 1", [MySQLSetAssignment(name: "a", scope: .persistOnly, value: "1")]),
    MySQLSetCase("SET @@persist.a = 1, @@persist_only.b = 2", [
        MySQLSetAssignment(name: "a", scope: .persist, value: "1"),
        MySQLSetAssignment(name: "b", scope: .persistOnly, value: "2"),
    ]),
    MySQLSetCase("SET @X = 1, @`Y` := 'a', @'z''q' = 2", [
        MySQLSetAssignment(name: "x", scope: .user, value: "1"),
        MySQLSetAssignment(name: "y", scope: .user, value: "'a'"),
        MySQLSetAssignment(name: "z'q", scope: .user, value: "2"),
    ]),
    MySQLSetCase("SET @x = (SELECT a FROM t WHERE b IN (1, 2) LIMIT 1), sql_log_bin = 0", [
        MySQLSetAssignment(name: "x", scope: .user, value: "(SELECT a FROM t WHERE b IN (1, 2) LIMIT 1)"),
        MySQLSetAssignment(name: "sql_log_bin", value: "0"),
    ]),
    MySQLSetCase("SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
                 [MySQLSetAssignment(name: "sql_mode", value: "CONCAT(@@sql_mode, ',ANSI_QUOTES')")]),
    MySQLSetCase("SET x = DEFAULT", [MySQLSetAssignment(name: "x", value: "DEFAULT")]),
    MySQLSetCase("SET x =", [MySQLSetAssignment(name: "x", value: "")]),
    MySQLSetCase("SET /* a */ time_zone /* b */ = /* c */ 'UTC' /* d */ ;",
                 [MySQLSetAssignment(name: "time_zone", value: "'UTC'")]),
    MySQLSetCase("SET time_zone = 'caf\u{e9} ☕'", [MySQLSetAssignment(name: "time_zone", value: "'caf\u{e9} ☕'")]),
    MySQLSetCase("/*!40101 SET character_set_client = utf8 */", [MySQLSetAssignment(name: "character_set_client", value: "utf8")]),
    MySQLSetCase("SET validate_password.policy = LOW", [MySQLSetAssignment(name: "validate_password.policy", value: "LOW")]),
    MySQLSetCase("SET GLOBAL keycache1.key_buffer_size = 128*1024",
                 [MySQLSetAssignment(name: "keycache1.key_buffer_size", scope: .global, value: "128*1024")]),
    MySQLSetCase("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY", [
        MySQLSetAssignment(name: "transaction_isolation", value: "'READ-COMMITTED'"),
        MySQLSetAssignment(name: "transaction_read_only", value: "ON"),
    ]),
    MySQLSetCase("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                 [MySQLSetAssignment(name: "transaction_isolation", scope: .nextTransaction, value: "'SERIALIZABLE'")]),
    MySQLSetCase("set transaction isolation level repeatable read",
                 [MySQLSetAssignment(name: "transaction_isolation", scope: .nextTransaction, value: "'REPEATABLE-READ'")]),
    MySQLSetCase("SET LOCAL TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
                 [MySQLSetAssignment(name: "transaction_isolation", value: "'READ-UNCOMMITTED'")]),
    MySQLSetCase("SET GLOBAL TRANSACTION READ WRITE",
                 [MySQLSetAssignment(name: "transaction_read_only", scope: .global, value: "OFF")]),
    MySQLSetCase("SET NAMES utf8mb4 COLLATE utf8mb4_bin, time_zone = '+00:00'",
                 [MySQLSetAssignment(name: "time_zone", value: "'+00:00'")]),
    MySQLSetCase("SET autocommit = 0; SELECT 1; SET sql_log_bin = 0", [
        MySQLSetAssignment(name: "autocommit", value: "0"),
        MySQLSetAssignment(name: "sql_log_bin", value: "0"),
    ]),
    MySQLSetCase("SET NAMES utf8", []),
    MySQLSetCase("SET CHARACTER SET utf8", []),
    MySQLSetCase("SET PASSWORD = 'secret'", []),
    MySQLSetCase("SET PASSWORD FOR 'u'@'%' = 'secret'", []),
    MySQLSetCase("SET ROLE r", []),
    MySQLSetCase("SET DEFAULT ROLE r TO u@h", []),
    MySQLSetCase("SET STATEMENT max_statement_time = 1 FOR SELECT 1", []),
    MySQLSetCase("UPDATE t SET a = 1", []),
    MySQLSetCase("SELECT 'SET x = 1'", []),
    MySQLSetCase("CREATE PROCEDURE p() SET @x = 1", []),
]

@Test(arguments: mysqlSetCases)
func mysqlSetAssignments(_ c: MySQLSetCase) {
    #expect(MySQLClassifier.classify(c.sql).sets == c.expected)
}

// MARK: - The other facts of a classification

@Test func mysqlFlags() {
    #expect(MySQLClassifier.classify("UNLOCK TABLES") == MySQLClassification(statementCount: 1, unlocksTables: true))
    #expect(MySQLClassifier.classify("unlock table").unlocksTables)
    #expect(!MySQLClassifier.classify("SELECT 'UNLOCK TABLES'").unlocksTables)
    let lockThenUnlock = MySQLClassifier.classify("LOCK TABLES t WRITE; UPDATE t SET a = 1; UNLOCK TABLES")
    #expect(lockThenUnlock.pinReasons == .lockTables)
    #expect(lockThenUnlock.unlocksTables)

    for sql in ["BEGIN", "begin work", "START TRANSACTION", "start transaction read only", "START TRANSACTION WITH CONSISTENT SNAPSHOT",
                "/*!BEGIN*/", "SELECT 1; BEGIN"]
    {
        #expect(MySQLClassifier.classify(sql).startsTransaction, "\(sql)")
    }
    for sql in ["XA START 'x'", "BEGIN NOT ATOMIC SELECT 1; END", "START SLAVE", "COMMIT", "SELECT 'BEGIN'"] {
        #expect(!MySQLClassifier.classify(sql).startsTransaction, "\(sql)")
    }

    for sql in ["SET NAMES utf8mb4", "SET CHARACTER SET utf8mb4", "SET CHARSET utf8mb4", "/*!40101 SET NAMES utf8 */",
                "SET autocommit = 1, NAMES latin1"]
    {
        let c = MySQLClassifier.classify(sql)
        #expect(c.setsNames, "\(sql)")
        #expect(c.pinReasons == [], "\(sql)")
    }
    #expect(!MySQLClassifier.classify("SET time_zone = 'UTC'").setsNames)

    #expect(MySQLClassifier.classify("USE db") == MySQLClassification(statementCount: 1, changesSchema: true))
    #expect(MySQLClassifier.classify("use `my db`").changesSchema)
    #expect(!MySQLClassifier.classify("SELECT 'USE db'").changesSchema)

    let plain = MySQLClassifier.classify("SELECT abalance FROM accounts WHERE aid = 123;")
    var plainExpected = MySQLClassification(statementCount: 1)
    plainExpected.kind = .select
    #expect(plain == plainExpected)
    #expect(!plain.pins)
    #expect(MySQLClassifier.classify("LOCK TABLES t READ").pins)
}

@Test func mysqlStatementCounting() {
    #expect(MySQLClassifier.classify("").statementCount == 0)
    #expect(MySQLClassifier.classify(" ; ;; # x\n -- y\n /* z */").statementCount == 0)
    #expect(MySQLClassifier.classify("select 1").statementCount == 1)
    #expect(MySQLClassifier.classify("select 1;").statementCount == 1)
    #expect(MySQLClassifier.classify("select 1; select ';'; select 3").statementCount == 3)
    #expect(MySQLClassifier.classify("select 1 /*!; select 2 */").statementCount == 2)
    #expect(MySQLClassifier.classify("DELIMITER //").statementCount == 1)
    // A stored program is one statement, whatever its body holds.
    let procedure = """
        CREATE PROCEDURE p(IN n INT)
        BEGIN
          DECLARE i INT DEFAULT 0;
          IF n > 0 THEN SELECT 1; ELSEIF n < 0 THEN SELECT 2; ELSE SELECT 3; END IF;
          WHILE i < n DO SET i = i + 1; END WHILE;
          lbl: LOOP LEAVE lbl; END LOOP lbl;
          REPEAT SET i = i - 1; UNTIL i = 0 END REPEAT;
          CASE n WHEN 1 THEN SELECT 1; ELSE BEGIN END; END CASE;
          SET i = CASE WHEN n > 0 THEN IF(n > 1, 2, 1) ELSE 0 END;
          SELECT REPEAT('a', 3);
        END;
        LOCK TABLES t WRITE
        """
    #expect(MySQLClassifier.classify(procedure) == MySQLClassification(pinReasons: .lockTables, statementCount: 2))
    let trigger = "CREATE TRIGGER trg BEFORE INSERT ON x FOR EACH ROW BEGIN IF NEW.a > 0 THEN SET NEW.b = 1; "
        + "ELSE SET NEW.b = 2; END IF; END; SELECT @x"
    #expect(MySQLClassifier.classify(trigger) == MySQLClassification(pinReasons: .userVariable, statementCount: 2))
    let rowTrigger = "CREATE TRIGGER trg BEFORE INSERT ON x FOR EACH ROW IF NEW.a > 0 THEN SET NEW.b = 1; END IF; HANDLER t OPEN"
    #expect(MySQLClassifier.classify(rowTrigger) == MySQLClassification(pinReasons: .handler, statementCount: 2))
    let event = "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO BEGIN SET @x = 1; DELETE FROM t; END; SELECT 1"
    #expect(MySQLClassifier.classify(event) == MySQLClassification(statementCount: 2))
    let function = "CREATE FUNCTION f(a INT) RETURNS INT BEGIN DECLARE r INT; SET r = CASE WHEN a > 0 THEN 1 ELSE 0 END; "
        + "RETURN r; END; SELECT GET_LOCK('a', 1)"
    #expect(MySQLClassifier.classify(function) == MySQLClassification(pinReasons: .namedLock, statementCount: 2))
    #expect(MySQLClassifier.classify("BEGIN NOT ATOMIC SELECT 1; SELECT 2; END; SELECT 3").statementCount == 2)
    #expect(MySQLClassifier.classify("IF 1 THEN SELECT 1; END IF; SELECT 2").statementCount == 2)
    // An END without an opener closes nothing: the statement still ends at the next `;`.
    #expect(MySQLClassifier.classify("CREATE PROCEDURE p() SELECT a, end FROM t; LOCK TABLES t WRITE")
        == MySQLClassification(pinReasons: .lockTables, statementCount: 2))
}

@Test func mysqlNoBackslashEscapes() {
    let nbe = MySQLClassifierOptions(noBackslashEscapes: true)
    // With backslash escapes (the default) `\'` continues the string; without, `'a\'` ends there.
    let sql = "SELECT 'a\\'; LOCK TABLES t WRITE; SELECT '"
    var one = MySQLClassification(statementCount: 1)
    one.kind = .select
    var three = MySQLClassification(pinReasons: .lockTables, statementCount: 3)
    three.kind = .select
    #expect(MySQLClassifier.classify(sql) == one)
    #expect(MySQLClassifier.classify(sql, options: nbe) == three)
    #expect(MySQLClassifier.classify("SELECT 'a\\' , @x").pinReasons == [])
    #expect(MySQLClassifier.classify("SELECT 'a\\' , @x", options: nbe).pinReasons == .userVariable)
    #expect(MySQLClassifier.classify("SELECT \"a\\\" , @x").pinReasons == [])
    #expect(MySQLClassifier.classify("SELECT \"a\\\" , @x", options: nbe).pinReasons == .userVariable)
    // `''` escapes in both modes.
    #expect(MySQLClassifier.classify("SELECT 'a'', @x'", options: nbe).pinReasons == [])
    #expect(MySQLClassifier.classify("SELECT 'a\\\\', @x").pinReasons == .userVariable)
    // A quoted user variable name follows the same rules.
    #expect(MySQLClassifier.classify("SET @'a\\' = 1; LOCK TABLES t WRITE; SELECT '", options: nbe).pinReasons
        == [.userVariable, .lockTables])
    #expect(MySQLClassifier.classify("SET @'a\\' = 1; LOCK TABLES t WRITE; SELECT '").statementCount == 1)
}

@Test func mysqlANSIQuotes() {
    let ansi = MySQLClassifierOptions(ansiQuotes: true)
    #expect(MySQLClassifier.classify("SELECT \"@x\"", options: ansi).pinReasons == [])
    // Under ANSI_QUOTES a double-quoted name is an identifier: a call of GET_LOCK.
    #expect(MySQLClassifier.classify("SELECT \"get_lock\"('a', 1)").pinReasons == [])
    #expect(MySQLClassifier.classify("SELECT \"get_lock\"('a', 1)", options: ansi).pinReasons == .namedLock)
    // Identifiers take no backslash escapes.
    #expect(MySQLClassifier.classify("SELECT \"a\\\", @x").pinReasons == [])
    #expect(MySQLClassifier.classify("SELECT \"a\\\", @x", options: ansi).pinReasons == .userVariable)
    #expect(MySQLClassifier.classify("SET \"time_zone\" = 'UTC'", options: ansi).sets
        == [MySQLSetAssignment(name: "time_zone", value: "'UTC'")])
    // Single quotes are strings in every mode.
    #expect(MySQLClassifier.classify("SELECT '@x'", options: ansi).pinReasons == [])
}

@Test func mysqlOptionsFromSQLMode() {
    var options = MySQLClassifierOptions()
    options.update(fromSQLMode: "STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES")
    #expect(options.noBackslashEscapes && !options.ansiQuotes)
    options.update(fromSQLMode: "REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ONLY_FULL_GROUP_BY,ANSI")
    #expect(!options.noBackslashEscapes && options.ansiQuotes)
    options.update(fromSQLMode: "ansi")
    #expect(options.ansiQuotes)
    options.update(fromSQLMode: "'no_backslash_escapes, ansi_quotes'")
    #expect(options.noBackslashEscapes && options.ansiQuotes)
    options.update(fromSQLMode: "")
    #expect(!options.noBackslashEscapes && !options.ansiQuotes)
    #expect(options.trackedVariables == MySQLClassifierOptions.defaultTrackedVariables)
}

@Test func mysqlByteOverloads() {
    let sql = "SELECT 1; SET @x = 1"
    let bytes = Array(sql.utf8)
    let expected = MySQLClassifier.classify(sql)
    #expect(expected.pinReasons == .userVariable)
    #expect(MySQLClassifier.classify(bytes) == expected)
    #expect(MySQLClassifier.classify(bytes[...]) == expected)
    #expect(MySQLClassifier.classify(sql.utf8) == expected)
    #expect(MySQLClassifier.classify(bytes.lazy.map { $0 }) == expected)
    bytes.withUnsafeBytes { raw in
        #expect(MySQLClassifier.classify(raw) == expected)
    }
    #expect(MySQLClassifier.classify(UnsafeRawBufferPointer(start: nil, count: 0)) == MySQLClassification())
}

@Test func mysqlReasonNames() {
    #expect(MySQLPinReasons.all.names == [
        "user_variable", "temporary_table", "lock_tables", "flush_tables_with_read_lock", "get_lock",
        "sql_prepare", "sql_calc_found_rows", "handler", "xa_transaction", "set_variable",
        "session_state_change", "set_role", "backup_lock", "row_count_found_rows",
    ])
    for name in MySQLPinReasons.all.names {
        let reason = MySQLPinReasons(name: name)
        #expect(reason?.names == [name])
    }
    #expect(MySQLPinReasons(name: "nope") == nil)
    #expect(MySQLPinReasons(name: "user_variable") == .userVariable)
    #expect(MySQLPinReasons(name: "get_lock") == .namedLock)
    #expect(MySQLPinReasons(name: "flush_tables_with_read_lock") == .globalReadLock)
    #expect(MySQLPinReasons(name: "binary_prepared_statement") == nil, "prepared statements no longer pin")
    // Every bit has its name, in order: the metrics' counters are indexed by bit.
    #expect(MySQLPinReasons.all.rawValue == (1 << MySQLPinReasons.all.names.count) - 1)
    #expect(MySQLPinReasons(name: "session_state_change") == .sessionStateChange)
    #expect(([.lockTables, .userVariable] as MySQLPinReasons).names == ["user_variable", "lock_tables"])
    #expect(MySQLPinReasons().names == [])
    #expect(MySQLPinReasons([.xa, .handler]).description == "[handler, xa_transaction]")
    // The session's reasons are never produced from SQL.
    var everything = MySQLPinReasons()
    for c in mysqlTriggerCases { everything.formUnion(MySQLClassifier.classify(c.sql).pinReasons) }
    #expect(everything == MySQLPinReasons.all.subtracting([.sessionStateChange]))
}

// MARK: - Lexer

func mysqlLex(_ sql: String, options: MySQLClassifierOptions = MySQLClassifierOptions()) -> [String] {
    let bytes = Array(sql.utf8)
    return bytes.withUnsafeBytes { raw in
        var lexer = MySQLLexer(raw, backslashEscapes: !options.noBackslashEscapes, ansiQuotes: options.ansiQuotes)
        var out: [String] = []
        while true {
            let t = lexer.next()
            if t.kind == .end { break }
            out.append("\(t.kind):\(lexer.text(t.start, t.end))")
        }
        return out
    }
}

let mysqlLexCases: [LexCase] = [
    // comments
    LexCase("a#b\nc", ["identifier:a", "identifier:c"]),
    LexCase("a#b\rc", ["identifier:a"]),  // only a newline ends it
    LexCase("a -- b\nc", ["identifier:a", "identifier:c"]),
    LexCase("a --b", ["identifier:a", "operator:-", "operator:-", "identifier:b"]),
    LexCase("a--1", ["identifier:a", "operator:-", "operator:-", "number:1"]),
    LexCase("a --\tb\nc", ["identifier:a", "identifier:c"]),
    LexCase("a --\u{1}b\nc", ["identifier:a", "identifier:c"]),
    LexCase("a --", ["identifier:a"]),
    LexCase("a --\nb", ["identifier:a", "identifier:b"]),
    LexCase("a/*b*/c", ["identifier:a", "identifier:c"]),
    LexCase("/* a /* b */ c */", ["identifier:c", "operator:*", "operator:/"]),  // not nested
    LexCase("/*/ a */ b", ["identifier:b"]),
    LexCase("/**/a", ["identifier:a"]),
    LexCase("/*+ a */ b", ["identifier:b"]),
    LexCase("/*M a */ b", ["identifier:b"]),
    LexCase("a /* open", ["identifier:a"]),
    // executable comments
    LexCase("/*! a */ b", ["identifier:a", "identifier:b"]),
    LexCase("/*!50700 a*/b", ["identifier:a", "identifier:b"]),
    LexCase("/*!123 a */", ["number:123", "identifier:a"]),  // a version has 5 or 6 digits
    LexCase("/*!1234567 a */", ["number:7", "identifier:a"]),
    LexCase("/*M!100100 a */ b", ["identifier:a", "identifier:b"]),
    LexCase("/*M! a */", ["identifier:a"]),
    LexCase("/*!a*/*/", ["identifier:a", "operator:*", "operator:/"]),
    LexCase("/*! a # */ b\n c */", ["identifier:a", "identifier:c"]),
    LexCase("/*! a /* b */ c */", ["identifier:a", "identifier:c"]),
    LexCase("/*! a", ["identifier:a"]),
    LexCase("a */", ["identifier:a", "operator:*", "operator:/"]),
    // quoting
    LexCase("`a``b` `c` ``", ["quotedIdentifier:`a``b`", "quotedIdentifier:`c`", "quotedIdentifier:``"]),
    LexCase("`a\\` b", ["quotedIdentifier:`a\\`", "identifier:b"]),
    LexCase("'a''b' 'c\\'d' \"e\"\"f\" \"g\\\"h\"", ["string:'a''b'", "string:'c\\'d'", "string:\"e\"\"f\"", "string:\"g\\\"h\""]),
    LexCase("'\\\\' x", ["string:'\\\\'", "identifier:x"]),
    LexCase("_utf8mb4'x' N'y' X'0F' b'01' 0x1F 0b01", [
        "identifier:_utf8mb4", "string:'x'", "identifier:N", "string:'y'", "string:X'0F'", "string:b'01'",
        "number:0x1F", "number:0b01",
    ]),
    LexCase("X'\\' a", ["string:X'\\'", "identifier:a"]),  // no escapes in hexadecimal literals
    LexCase("'open", ["string:'open"]),
    LexCase("X'open", ["string:X'open"]),
    LexCase("`open", ["quotedIdentifier:`open"]),
    // variables
    LexCase("@a @'b c' @\"d\" @`e` @ @@f @@session.g @@`h`", [
        "userVariable:@a", "userVariable:@'b c'", "userVariable:@\"d\"", "userVariable:@`e`", "userVariable:@",
        "systemVariable:@@f", "systemVariable:@@session", "punctuation:.", "identifier:g", "systemVariable:@@`h`",
    ]),
    LexCase("@a.b$c_1=@@x", ["userVariable:@a.b$c_1", "operator:=", "systemVariable:@@x"]),
    LexCase("'u'@'h' u@h", ["string:'u'", "userVariable:@'h'", "identifier:u", "userVariable:@h"]),
    LexCase("@'a\\'b'", ["userVariable:@'a\\'b'"]),
    // words, numbers, punctuation
    LexCase("a:=1 l: x", ["identifier:a", "operator::=", "number:1", "identifier:l", "punctuation::", "identifier:x"]),
    LexCase("1.5e-3 .5 1e10 1E+2 t1.c", ["number:1.5e-3", "number:.5", "number:1e10", "number:1E+2", "identifier:t1",
                                         "punctuation:.", "identifier:c"]),
    LexCase("$a a$b 1abc", ["identifier:$a", "identifier:a$b", "number:1abc"]),
    LexCase("café naïve", ["identifier:café", "identifier:naïve"]),
    LexCase("f(a, b);", ["identifier:f", "punctuation:(", "identifier:a", "punctuation:,", "identifier:b",
                         "punctuation:)", "punctuation:;"]),
    LexCase("a<=>b", ["identifier:a", "operator:<", "operator:=", "operator:>", "identifier:b"]),
]

@Test(arguments: mysqlLexCases)
func mysqlLexer(_ c: LexCase) {
    #expect(mysqlLex(c.sql) == c.tokens)
}

@Test func mysqlLexerModes() {
    let nbe = MySQLClassifierOptions(noBackslashEscapes: true)
    #expect(mysqlLex("'a\\' b", options: nbe) == ["string:'a\\'", "identifier:b"])
    #expect(mysqlLex("\"a\\\" b", options: nbe) == ["string:\"a\\\"", "identifier:b"])
    #expect(mysqlLex("'a\\' b") == ["string:'a\\' b"])
    let ansi = MySQLClassifierOptions(ansiQuotes: true)
    #expect(mysqlLex("\"a\"\"b\" 'c'", options: ansi) == ["quotedIdentifier:\"a\"\"b\"", "string:'c'"])
    #expect(mysqlLex("\"a\\\" b", options: ansi) == ["quotedIdentifier:\"a\\\"", "identifier:b"])
}

// MARK: - Robustness

let mysqlTruncatedInputs: [String] = [
    "select '", "select '\\", "select \"", "select `", "select @", "select @'", "select @`", "select @@", "select @@`",
    "select /*", "select /*!", "select /*!5", "select /*M", "select /*M!", "select /", "select -", "select --",
    "select #", "select 1e", "select 1e+", "select 0x", "select X'", "select .", "select :", "set", "set session",
    "set @@session.", "set @@session", "set global", "set x", "set x =", "set @x", "set names", "set character",
    "set transaction", "set transaction isolation", "set transaction isolation level", "set transaction isolation level read",
    "set session transaction read", "set statement", "set statement x = 1 for", "set password", "set role", "lock", "unlock",
    "flush", "flush tables", "flush tables with read", "create", "create or", "create definer =", "create definer = u",
    "create definer = current_user(", "create temporary", "prepare", "xa", "handler", "execute", "execute immediate",
    "execute immediate 'lock tables t write", "begin not", "begin not atomic", "lbl:", "if", "create procedure p() begin",
    "create procedure p() begin end", "select get_lock", "select get_lock(", "\u{0}", "\u{FFFD}\u{FFFD}",
]

@Test(arguments: mysqlTruncatedInputs)
func mysqlTruncatedInputsDoNotCrash(_ sql: String) {
    mysqlAssertEveryPrefixClassifies(sql)
}

@Test(arguments: mysqlTriggerCases.map(\.sql) + mysqlLookAlikes)
func mysqlEveryPrefixClassifies(_ sql: String) {
    mysqlAssertEveryPrefixClassifies(sql)
}

func mysqlAssertEveryPrefixClassifies(_ sql: String) {
    let bytes = Array(sql.utf8)
    for end in 0...bytes.count {
        for options in [MySQLClassifierOptions(), MySQLClassifierOptions(noBackslashEscapes: true, ansiQuotes: true)] {
            let c = MySQLClassifier.classify(bytes[0..<end], options: options)
            #expect(c.statementCount <= end)
        }
    }
}

@Test func mysqlArbitraryBytesDoNotCrash() {
    var random = MySQLTestRandom(seed: 0x9E37_79B9_7F4A_7C15)
    let alphabet = Array("'\"`@#/*!-;:()=,.\\ \n\tM0159xXbB_aZsetSETlockget_@@".utf8) + [0x00, 0x01, 0x80, 0xFF, 0xC3, 0xA9]
    for _ in 0..<3000 {
        var bytes: [UInt8] = []
        for _ in 0..<random.below(64) { bytes.append(alphabet[random.below(alphabet.count)]) }
        for options in [MySQLClassifierOptions(), MySQLClassifierOptions(noBackslashEscapes: true, ansiQuotes: true)] {
            let c = MySQLClassifier.classify(bytes, options: options)
            #expect(c.statementCount <= bytes.count)
        }
    }
}

// MARK: - Randomized property: literals and comments never pin

/// A small deterministic generator (SplitMix64), so failures reproduce.
struct MySQLTestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
    mutating func chance(_ oneIn: Int) -> Bool { below(oneIn) == 0 }
}

/// Text that would pin if it were code, and characters that end or start literals and comments.
let mysqlPinPayloads: [String] = [
    "@x", "@'x'", "@`x`", "@\"x\"", "SET @x = 1", "SELECT @x := 1", "INTO @x", "GET_LOCK(", "get_lock ('a', 1)",
    "LOCK TABLES t WRITE", "; LOCK TABLES t WRITE;", "SQL_CALC_FOUND_ROWS", "CREATE TEMPORARY TABLE t (a INT)",
    "SET sql_log_bin = 0", "PREPARE s FROM 'x'", "HANDLER t OPEN", "XA START 'x'", "FLUSH TABLES WITH READ LOCK",
    "SET ROLE r", "/*!LOCK TABLES t WRITE*/", "/*M! HANDLER t OPEN */", "*/", "/*", "/*!", "--", "-- ", "#", "'", "''",
    "\"", "\"\"", "`", "``", "\\", "\\\\", "\\'", "\\\"", "\n", "\r", "\t", ";", "*/ LOCK TABLES t WRITE /*",
    "' ; LOCK TABLES t WRITE; '", "\" , @x , \"", "` , @x , `", "BEGIN NOT ATOMIC", "END", "é", "☕", " ", "x", "0",
]

struct MySQLLiteralGenerator {
    var random: MySQLTestRandom
    let options: MySQLClassifierOptions

    mutating func payload(excluding forbidden: [String] = []) -> String {
        var text = ""
        for _ in 0..<(1 + random.below(5)) { text += random.pick(mysqlPinPayloads) }
        // Bytewise: "\r\n" is one Character, and a `\n` inside it still ends a comment.
        var bytes = Array(text.utf8)
        for f in forbidden { bytes = bytes.replacingAll(Array(f.utf8), with: 0x20) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A quoted literal with `quote`, its content escaped as the mode requires.
    mutating func quoted(_ content: String, quote: Character, backslashes: Bool) -> String {
        var out = String(quote)
        for scalar in content.unicodeScalars {
            if Character(scalar) == quote {
                out += backslashes && random.chance(2) ? "\\\(quote)" : "\(quote)\(quote)"
            } else if scalar == "\\", backslashes {
                out += "\\\\"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        out.append(quote)
        return out
    }

    /// A literal, identifier, comment or system variable whose text holds pin keywords.
    mutating func inert() -> String {
        let backslashes = !options.noBackslashEscapes
        switch random.below(9) {
        case 0:
            return random.pick(["", "_utf8mb4", "N", "_latin1 "]) + quoted(payload(), quote: "'", backslashes: backslashes)
        case 1:
            if options.ansiQuotes {
                // an identifier: no backslash escapes; never followed by `(` here
                return quoted(payload(), quote: "\"", backslashes: false)
            }
            return quoted(payload(), quote: "\"", backslashes: backslashes)
        case 2:
            return quoted(payload(), quote: "`", backslashes: false)
        case 3:
            return random.pick(["-- ", "--\t", "--\u{1}"]) + payload(excluding: ["\n"]) + "\n1"
        case 4:
            return "#" + payload(excluding: ["\n"]) + "\n1"
        case 5:
            // a comment: not executable (`/*` then a space), without `*/` inside
            return "/* " + payload(excluding: ["*/"]) + " */ 1"
        case 6:
            return "/*+ " + payload(excluding: ["*/"]) + " */ 1"
        case 7:
            return random.pick(["@@session.time_zone", "@@version", "@@GLOBAL.sql_mode", "@@`version`", "@@local.autocommit"])
        default:
            return random.pick(["X'4C4F434B'", "x''", "B'01'", "0x40", "1.5e-3", "`get_lock`", "t.get_lock", "db.get_lock ()", "'u'@'h'"])
        }
    }

    mutating func statement() -> String {
        var parts: [String] = []
        for _ in 0..<(1 + random.below(4)) { parts.append(inert()) }
        return "SELECT " + parts.joined(separator: " , ") + (random.chance(2) ? " FROM t" : "")
    }
}

extension Array where Element == UInt8 {
    /// Every occurrence of `target` replaced by one `byte`.
    func replacingAll(_ target: [UInt8], with byte: UInt8) -> [UInt8] {
        var result: [UInt8] = []
        var i = 0
        while i < count {
            if i + target.count <= count, self[i..<(i + target.count)].elementsEqual(target) {
                result.append(byte)
                i += target.count
            } else {
                result.append(self[i])
                i += 1
            }
        }
        return result
    }
}

@Test(arguments: [false, true], [false, true])
func mysqlLiteralsAndCommentsNeverPin(noBackslashEscapes: Bool, ansiQuotes: Bool) {
    let options = MySQLClassifierOptions(noBackslashEscapes: noBackslashEscapes, ansiQuotes: ansiQuotes)
    var generator = MySQLLiteralGenerator(
        random: MySQLTestRandom(seed: 42 &+ UInt64(noBackslashEscapes ? 1 : 0) &+ UInt64(ansiQuotes ? 2 : 0)),
        options: options)
    for _ in 0..<1500 {
        var statements: [String] = []
        for _ in 0..<(1 + generator.random.below(3)) { statements.append(generator.statement()) }
        let sql = statements.joined(separator: ";\n")
        let plain = MySQLClassifier.classify(sql, options: options)
        #expect(plain.pinReasons == [], "\(sql.debugDescription)")
        #expect(plain.statementCount == statements.count, "\(sql.debugDescription)")
        #expect(plain.sets.isEmpty && !plain.unlocksTables && !plain.setsNames, "\(sql.debugDescription)")
        // Where every literal and comment ends is where the code after it starts: a pinning
        // statement after them is seen, and only it.
        let pinningStatements: [(String, MySQLPinReasons)] = [
            ("LOCK TABLES t WRITE", .lockTables), ("SET @x = 1", .userVariable),
            ("SELECT GET_LOCK('a', 1)", .namedLock), ("HANDLER t OPEN", .handler),
            ("/*!40101 SET sql_log_bin = 0 */", .setVariable),
        ]
        let pinning = generator.random.pick(pinningStatements)
        let followed = MySQLClassifier.classify(sql + "; " + pinning.0, options: options)
        #expect(followed.pinReasons == pinning.1, "\(sql.debugDescription)")
        #expect(followed.statementCount == statements.count + 1, "\(sql.debugDescription)")
        // ... and inside one statement too.
        let inside = MySQLClassifier.classify(sql + " , @x", options: options)
        #expect(inside.pinReasons == .userVariable, "\(sql.debugDescription)")
    }
}

// MARK: - The plain-SELECT shortcut against the lexer

/// `classify` answers a plain SELECT from its bytes (`isPlainSelect`) without the lexer: for
/// every statement, written or generated, the answer must be the lexer's (`classifyByTokens`),
/// with backslash escapes and ANSI quotes on and off.
@Test func mysqlPlainSelectShortcutAgreesWithTheLexer() {
    let written = mysqlTriggerCases.map(\.sql) + mysqlLookAlikes + mysqlFilterCases.map(\.sql) + mysqlSetCases.map(\.sql)
        + mysqlTruncatedInputs + mysqlPinPayloads + [
            "SELECT c FROM sbtest1 WHERE id=5001", "select 1", " \n\tSELECT 1 ;  ; \n", "\u{0B}\u{0C}select 1",
            "select 1; select 2", "select 1;x", "selected", "select_1", "select$1", "select", "SELECT*FROM t",
            "select 1 union select 2", "SELECT a FROM t UNION ALL SELECT b FROM u", "select 'select'",
            "select SQL_CALC_FOUND_ROWS a from t", "select sql_no_cache a from t", "select a into outfile '/tmp/x' from t",
            "select a from t for update", "select a from t lock in share mode", "select @x", "select @@version",
            "select a from t where b = 'x@y'", "select: begin end", "select: loop select 1; end loop",
            "select 1 /*! ; */", "select 1 -- x\n", "select 1 # @x\n", "select `a` from `t`", "select \"a\" from t",
            "select 1 /*!50000 , @x */", "sélect 1", "select\u{0}1", "selectñ", "SELECT kill", "select a\\b",
        ]
    let fragments = [
        "select", "SELECT", "Select", " ", "\t", "\n", "\r\n", "\u{0B}", "\u{0C}", "into", "(", ")", ";", ":", "@", "@@",
        "'", "\"", "`", "#", "-- ", "--", "/*", "/*!", "/*M!", "*/", "\\", "union", "sql_calc_found_rows", "SQL_",
        "sql", "s", "found_rows", "get_lock", "row_count", "last_insert_id", "connection_id", "kill", "lock",
        "tables", "begin", "end", "loop", ".", ",", "x", "1", "from", "t", "sbtest1", "where", "id=5", "é", "\u{0}",
        "\u{08}", "\u{1A}", "\u{1B}", "\u{40}", "\u{60}", "set", "use", "show", "for update",
    ]
    var shortcuts = 0
    forEachShortcutCandidate(written, fragments: fragments) { sql, raw in
        if MySQLClassifier.isPlainSelect(raw) { shortcuts += 1 }
        for options in [MySQLClassifierOptions(), MySQLClassifierOptions(noBackslashEscapes: true, ansiQuotes: true)] {
            let expected = MySQLClassifier.classifyByTokens(raw, options: options)
            let actual = MySQLClassifier.classify(raw, options: options)
            #expect(actual == expected, "\(sql.debugDescription), \(options)")
        }
    }
    // The shortcut is taken often enough for the comparison to mean something.
    #expect(shortcuts > 3_000)
    #expect(MySQLClassifier.isPlainSelect(UnsafeRawBufferPointer(start: nil, count: 0)) == false)
}
