-- A connection storm for sysbench (bench/mysql_bench.py): each event is one new connection that
-- runs `SELECT 1` and disconnects, as pgbench -C does on the PostgreSQL side. sysbench's own
-- report counts the events (= connections); a connection or statement that fails is counted
-- here instead of ending the thread (sysbench would abort on the first one), and each thread
-- prints its counts when it finishes.

local drv
local connects, errors = 0, 0
local first_error

function thread_init()
   drv = sysbench.sql.driver()
end

local function note(err)
   errors = errors + 1
   if first_error == nil then first_error = tostring(err) end
end

function event()
   local ok, con = pcall(drv.connect, drv)
   if not ok or con == nil then
      note(con)
      return
   end
   local ran, err = pcall(con.query, con, "SELECT 1")
   if not ran then note(err) end
   con:disconnect()
   connects = connects + 1
end

function thread_done()
   print(string.format("storm: connects=%d errors=%d first_error=%s", connects, errors,
                       first_error or "-"))
end
