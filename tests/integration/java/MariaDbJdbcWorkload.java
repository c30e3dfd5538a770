import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;

/**
 * A MariaDB Connector/J workload (Debian's libmariadb-java) whose output is the same directly on
 * the server and through a proxy: each line is something a thread saw, in the thread's order.
 *
 * Usage: java -cp mariadb-java-client.jar MariaDbJdbcWorkload.java URL USER PASSWORD THREADS ITERATIONS
 * Each thread has its own connection and table (jdbc_my_T): result metadata, ITERATIONS rounds of
 * an autocommit insert with getGeneratedKeys, an explicit transaction (committed, or rolled back
 * every third round) and a check of its rows, then a PreparedStatement batch with its generated
 * keys, a Statement batch, errors (SQLState and the server's code) and a final summary. Prints
 * the lines of thread 0, then 1, ..., then "ok THREADS"; exits 1 after printing any thread's
 * unexpected exception.
 */
public class MariaDbJdbcWorkload {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        int threads = Integer.parseInt(args[3]);
        int iterations = Integer.parseInt(args[4]);

        List<List<String>> outputs = new ArrayList<>();
        List<Throwable> errors = java.util.Collections.synchronizedList(new ArrayList<>());
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            final int thread = t;
            final List<String> out = new ArrayList<>();
            outputs.add(out);
            Thread worker = new Thread(() -> {
                try (Connection c = DriverManager.getConnection(url, props)) {
                    run(c, thread, iterations, out);
                } catch (Throwable e) {
                    errors.add(new RuntimeException("thread " + thread + " after " + out.size() + " lines", e));
                }
            });
            workers.add(worker);
            worker.start();
        }
        for (Thread worker : workers) worker.join();
        for (List<String> out : outputs) {
            for (String line : out) System.out.println(line);
        }
        if (!errors.isEmpty()) {
            for (Throwable e : errors) e.printStackTrace(System.out);
            System.exit(1);
        }
        System.out.println("ok " + threads);
    }

    static void run(Connection c, int thread, int iterations, List<String> out) throws SQLException {
        String table = "jdbc_my_" + thread;
        String p = "t" + thread + " ";
        out.add(p + "autocommit " + c.getAutoCommit() + ", isolation " + c.getTransactionIsolation()
                + ", catalog " + c.getCatalog());
        try (Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS " + table);
            s.execute("CREATE TABLE " + table + " (id BIGINT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL UNIQUE, "
                    + "v VARCHAR(20), amount DECIMAL(10,2), created DATETIME(3), flag BOOLEAN NOT NULL DEFAULT 0)");
            try (ResultSet rs = s.executeQuery("SELECT id, k, v AS label, amount, created, flag, k * 2 AS twice FROM " + table)) {
                ResultSetMetaData md = rs.getMetaData();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    out.add(p + "column " + i + ": " + md.getColumnName(i) + " / " + md.getColumnLabel(i)
                            + " " + md.getColumnTypeName(i) + " (" + md.getColumnType(i) + ") precision "
                            + md.getPrecision(i) + " scale " + md.getScale(i) + " nullable " + md.isNullable(i)
                            + " auto " + md.isAutoIncrement(i) + " signed " + md.isSigned(i) + " table "
                            + md.getTableName(i) + " class " + md.getColumnClassName(i));
                }
                out.add(p + "empty " + !rs.next());
            }
        }

        PreparedStatement insert = c.prepareStatement(
                "INSERT INTO " + table + " (k, v, amount, created) VALUES (?, ?, ?, ?)", Statement.RETURN_GENERATED_KEYS);
        PreparedStatement update = c.prepareStatement("UPDATE " + table + " SET amount = amount + ? WHERE k = ?");
        PreparedStatement count = c.prepareStatement("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM " + table + " WHERE k >= ?");
        int committed = 0;
        for (int i = 0; i < iterations; i++) {
            // Autocommit insert and its generated key.
            insert.setInt(1, i * 10);
            insert.setString(2, "row " + i + " \u00e9\u2603");
            insert.setBigDecimal(3, new java.math.BigDecimal(i + ".25"));
            insert.setTimestamp(4, java.sql.Timestamp.valueOf("2024-02-29 12:34:56." + String.format("%03d", i % 1000)));
            int inserted = insert.executeUpdate();
            long key;
            try (ResultSet keys = insert.getGeneratedKeys()) {
                keys.next();
                key = keys.getLong(1);
            }
            out.add(p + i + " inserted " + inserted + " key " + key);
            committed++;

            // An explicit transaction: two inserts and an update, committed or rolled back.
            c.setAutoCommit(false);
            for (int j = 1; j <= 2; j++) {
                insert.setInt(1, i * 10 + j);
                insert.setString(2, null);
                insert.setBigDecimal(3, java.math.BigDecimal.ONE);
                insert.setNull(4, java.sql.Types.TIMESTAMP);
                insert.executeUpdate();
            }
            update.setBigDecimal(1, new java.math.BigDecimal("0.50"));
            update.setInt(2, i * 10 + 1);
            int updated = update.executeUpdate();
            count.setInt(1, i * 10);
            String inside;
            try (ResultSet rs = count.executeQuery()) {
                rs.next();
                inside = rs.getInt(1) + " " + rs.getBigDecimal(2);
            }
            boolean rollback = i % 3 == 2;
            if (rollback) {
                c.rollback();
            } else {
                c.commit();
                committed += 2;
            }
            c.setAutoCommit(true);
            try (ResultSet rs = count.executeQuery()) {
                rs.next();
                out.add(p + i + " updated " + updated + ", inside " + inside + ", after "
                        + (rollback ? "rollback " : "commit ") + rs.getInt(1) + " " + rs.getBigDecimal(2));
            }
        }

        // A PreparedStatement batch and its generated keys.
        PreparedStatement batch = c.prepareStatement(
                "INSERT INTO " + table + " (k, v) VALUES (?, ?)", Statement.RETURN_GENERATED_KEYS);
        for (int b = 0; b < 25; b++) {
            batch.setInt(1, 100000 + b);
            batch.setString(2, "batch " + b);
            batch.addBatch();
        }
        int[] counts = batch.executeBatch();
        List<Long> keys = new ArrayList<>();
        try (ResultSet rs = batch.getGeneratedKeys()) {
            while (rs.next()) keys.add(rs.getLong(1));
        }
        out.add(p + "batch counts " + Arrays.toString(counts) + " keys " + keys);

        // A Statement batch.
        try (Statement s = c.createStatement()) {
            s.addBatch("UPDATE " + table + " SET flag = 1 WHERE k >= 100000");
            s.addBatch("DELETE FROM " + table + " WHERE k = 100024");
            s.addBatch("INSERT INTO " + table + " (k, v) VALUES (200000, 'statement batch')");
            out.add(p + "statement batch " + Arrays.toString(s.executeBatch()));
        }

        // Errors: SQLState, the server's code and message; the connection carries on.
        String[] failing = {
            "INSERT INTO " + table + " (k) VALUES (0)",
            "SELEC 1",
            "SELECT no_such_column FROM " + table,
            "SELECT * FROM no_such_table",
            "INSERT INTO " + table + " (k, v) VALUES (300000, 'this text is too long for it')",
        };
        for (String sql : failing) {
            try (Statement s = c.createStatement()) {
                s.execute(sql);
                out.add(p + "no error for " + sql);
            } catch (SQLException e) {
                out.add(p + "error " + e.getClass().getSimpleName() + " " + e.getSQLState() + " " + e.getErrorCode()
                        + " " + serverMessage(e));
            }
        }
        // A failing batch: the rows before the duplicate are in, then BatchUpdateException.
        for (int b = 0; b < 3; b++) {
            batch.setInt(1, b == 2 ? 0 : 300000 + b);
            batch.setString(2, "failing batch");
            batch.addBatch();
        }
        try {
            batch.executeBatch();
            out.add(p + "no error for the failing batch");
        } catch (BatchUpdateException e) {
            out.add(p + "batch error " + e.getSQLState() + " " + e.getErrorCode() + " counts "
                    + Arrays.toString(e.getUpdateCounts()));
        }
        // An error inside a transaction ends only the statement.
        c.setAutoCommit(false);
        try (Statement s = c.createStatement()) {
            s.executeUpdate("INSERT INTO " + table + " (k, v) VALUES (400000, 'in transaction')");
            try {
                s.executeUpdate("INSERT INTO " + table + " (k, v) VALUES (400000, 'duplicate')");
            } catch (SQLException e) {
                out.add(p + "error in transaction " + e.getSQLState() + " " + e.getErrorCode());
            }
            c.commit();
        }
        c.setAutoCommit(true);

        try (Statement s = c.createStatement();
             ResultSet rs = s.executeQuery("SELECT COUNT(*), SUM(k), SUM(amount), SUM(flag), MAX(id), "
                     + "GROUP_CONCAT(DISTINCT v ORDER BY v SEPARATOR '|') FROM " + table)) {
            rs.next();
            out.add(p + "final " + rs.getLong(1) + " " + rs.getLong(2) + " " + rs.getBigDecimal(3) + " "
                    + rs.getLong(4) + " " + rs.getLong(5) + " " + rs.getString(6));
        }
        out.add(p + "committed in the loop " + committed);
        try (Statement s = c.createStatement()) {
            s.execute("DROP TABLE " + table);
        }
    }

    /** The server's message without the driver's prefix and query text (which vary by option). */
    static String serverMessage(SQLException e) {
        String message = e.getMessage();
        int start = message.indexOf(")") + 1;
        if (message.startsWith("(conn=")) message = message.substring(start).trim();
        int query = message.indexOf("\nQuery is:");
        return query >= 0 ? message.substring(0, query) : message;
    }
}
