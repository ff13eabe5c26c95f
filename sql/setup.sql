-- ===================================================================
-- create the extension, a loopback server and the task table
-- ===================================================================
CREATE EXTENSION task_fdw;
\dx task_fdw
CREATE SERVER loopback FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '2');
CREATE USER MAPPING FOR CURRENT_USER SERVER loopback;
IMPORT FOREIGN SCHEMA task_fdw FROM SERVER loopback INTO public;
\d tasks
-- the task store is not for ordinary users
SELECT has_table_privilege('public', 'task_fdw.task', 'SELECT') AS public_can_read,
       has_table_privilege('public', 'task_fdw.task', 'INSERT') AS public_can_write;
-- a table to see side effects of tasks in
CREATE TABLE side (i int);
GRANT ALL ON side TO PUBLIC;
