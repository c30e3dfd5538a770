import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A JDBC workload through the proxy with the PostgreSQL driver's defaults (prepareThreshold=5:
 * from the fifth execution a PreparedStatement becomes a named server-side statement).
 *
 * Usage: java -cp postgresql.jar JdbcWorkload.java URL USER PASSWORD THREADS ITERATIONS
 * Each thread has its own connection and runs, ITERATIONS times: a prepared select checked
 * against its parameters, a transaction of a prepared insert and update on its own rows, and
 * a batch. Prints "ok TOTAL" and exits 0, or prints the first error and exits 1.
 */
public class JdbcWorkload {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        int threads = Integer.parseInt(args[3]);
        int iterations = Integer.parseInt(args[4]);

        try (Connection setup = DriverManager.getConnection(url, props); Statement s = setup.createStatement()) {
            s.execute("drop table if exists jdbc_rows");
            s.execute("create table jdbc_rows (thread int, n int, v int, primary key (thread, n))");
        }

        AtomicInteger done = new AtomicInteger();
        List<Throwable> errors = java.util.Collections.synchronizedList(new ArrayList<>());
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            final int thread = t;
            Thread worker = new Thread(() -> {
                try (Connection c = DriverManager.getConnection(url, props)) {
                    PreparedStatement select = c.prepareStatement("select ?::int * 3, ?::text || '-' || ?::int");
                    PreparedStatement insert = c.prepareStatement("insert into jdbc_rows values (?, ?, ?)");
                    PreparedStatement update = c.prepareStatement("update jdbc_rows set v = v + ? where thread = ? and n = ?");
                    PreparedStatement check = c.prepareStatement("select v from jdbc_rows where thread = ? and n = ?");
                    for (int i = 0; i < iterations; i++) {
                        select.setInt(1, i);
                        select.setString(2, "t" + thread);
                        select.setInt(3, i);
                        try (ResultSet rs = select.executeQuery()) {
                            rs.next();
                            if (rs.getInt(1) != i * 3 || !rs.getString(2).equals("t" + thread + "-" + i)) {
                                throw new AssertionError("wrong row for " + thread + "/" + i + ": " + rs.getInt(1) + " " + rs.getString(2));
                            }
                        }
                        c.setAutoCommit(false);
                        insert.setInt(1, thread);
                        insert.setInt(2, i);
                        insert.setInt(3, i);
                        insert.executeUpdate();
                        update.setInt(1, 1000);
                        update.setInt(2, thread);
                        update.setInt(3, i);
                        if (update.executeUpdate() != 1) throw new AssertionError("update missed a row");
                        c.commit();
                        c.setAutoCommit(true);
                        check.setInt(1, thread);
                        check.setInt(2, i);
                        try (ResultSet rs = check.executeQuery()) {
                            rs.next();
                            if (rs.getInt(1) != i + 1000) throw new AssertionError("row " + thread + "/" + i + " has " + rs.getInt(1));
                        }
                        done.incrementAndGet();
                    }
                } catch (Throwable e) {
                    errors.add(e);
                }
            });
            workers.add(worker);
            worker.start();
        }
        for (Thread worker : workers) worker.join();
        if (!errors.isEmpty()) {
            errors.get(0).printStackTrace();
            System.out.println("error " + errors.get(0));
            System.exit(1);
        }
        System.out.println("ok " + done.get());
    }
}
