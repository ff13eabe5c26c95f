-- ===================================================================
-- foreign table definitions: any subset of the attributes, in any order
-- ===================================================================
CREATE FOREIGN TABLE few (state text, sql text, id bigint) SERVER loopback;
-- unknown column names and wrong types are rejected at CREATE
CREATE FOREIGN TABLE bad1 (id bigint, colour text) SERVER loopback;
CREATE FOREIGN TABLE bad2 (id integer) SERVER loopback;
CREATE FOREIGN TABLE bad3 (result json) SERVER loopback;
-- and at ALTER
ALTER FOREIGN TABLE few ADD COLUMN bogus int;
ALTER FOREIGN TABLE few ALTER COLUMN id TYPE int;
ALTER FOREIGN TABLE few RENAME COLUMN state TO status;
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'few'::regclass AND attnum > 0 ORDER BY attnum;
-- IMPORT FOREIGN SCHEMA: only the schema task_fdw, LIMIT TO and EXCEPT apply
CREATE SCHEMA imp;
IMPORT FOREIGN SCHEMA public FROM SERVER loopback INTO imp;
IMPORT FOREIGN SCHEMA task_fdw LIMIT TO (other) FROM SERVER loopback INTO imp;
IMPORT FOREIGN SCHEMA task_fdw EXCEPT (tasks) FROM SERVER loopback INTO imp;
SELECT count(*) FROM pg_class WHERE relnamespace = 'imp'::regnamespace;
IMPORT FOREIGN SCHEMA task_fdw LIMIT TO (tasks) FROM SERVER loopback INTO imp;
SELECT count(*) FROM pg_attribute WHERE attrelid = 'imp.tasks'::regclass AND attnum > 0;
DROP SCHEMA imp CASCADE;
-- a table without "sql" can show tasks but not submit them
CREATE FOREIGN TABLE nosql (id bigint, state text) SERVER loopback;
INSERT INTO nosql(id) VALUES (1);
-- UPDATE can only cancel or reschedule tasks, whatever the table's columns
UPDATE few SET sql = 'SELECT 2';
UPDATE nosql SET id = 5;
DROP FOREIGN TABLE few, nosql;
