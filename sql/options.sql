-- ===================================================================
-- validation of server, user mapping, table and wrapper options
-- ===================================================================
\set VERBOSITY default
-- task_fdw's own options: value checks name the option
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '0');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '-3');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size 'four');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (port '70000');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (connect_timeout '-1');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (reset_session 'sometimes');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pipeline_depth '-1');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pipeline_depth '1001');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (pipeline_depth 'deep');
-- unknown options list the valid ones
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (no_such_option 'x');
-- options in the wrong place
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (user 'alice');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (password 'secret');
CREATE USER MAPPING FOR PUBLIC SERVER loopback OPTIONS (pool_size '3');
CREATE USER MAPPING FOR PUBLIC SERVER loopback OPTIONS (reset_session 'false');
CREATE USER MAPPING FOR PUBLIC SERVER loopback OPTIONS (host 'localhost');
-- options task_fdw sets itself, and unsafe ones
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (application_name 'x');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (client_encoding 'LATIN1');
CREATE SERVER bad FOREIGN DATA WRAPPER task_fdw OPTIONS (replication 'database');
-- the wrapper takes no options; foreign tables only task attribute defaults
ALTER FOREIGN DATA WRAPPER task_fdw OPTIONS (ADD pool_size '2');
CREATE FOREIGN TABLE bad_table (id bigint) SERVER loopback OPTIONS (pool_size '2');
ALTER SERVER loopback OPTIONS (ADD nonsense 'x');
-- nothing was created by the failed statements
SELECT srvname FROM pg_foreign_server ORDER BY 1;
-- valid options of a remote server and its user mapping
CREATE SERVER remote FOREIGN DATA WRAPPER task_fdw
    OPTIONS (host 'db.example.com', port '5433', dbname 'app', connect_timeout '5',
             sslmode 'prefer', pool_size '8', reset_session 'off', pipeline_depth '0');
CREATE USER MAPPING FOR CURRENT_USER SERVER remote OPTIONS (user 'app', password 'secret');
ALTER SERVER remote OPTIONS (SET pool_size '16');
SELECT srvname, srvoptions FROM pg_foreign_server WHERE srvname = 'remote';
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER remote CASCADE;
RESET client_min_messages;

-- the configuration parameters, as the README's table lists them: all are
-- set in postgresql.conf (sighup), and none may be changed with SET
SELECT name, setting, unit, context, min_val, max_val, boot_val
  FROM pg_settings WHERE name LIKE 'task_fdw.%' ORDER BY name;
SET task_fdw.max_interrupted_attempts = 5;
