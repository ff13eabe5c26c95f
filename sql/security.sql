-- ===================================================================
-- security: who may set which options, who runs, sees and changes tasks
-- ===================================================================
SELECT setval('task_fdw.task_id_seq', 200000, false);
CREATE ROLE regress_alice LOGIN;
CREATE ROLE regress_bob LOGIN;
CREATE SERVER sec FOREIGN DATA WRAPPER task_fdw OPTIONS (pool_size '2');
GRANT USAGE ON FOREIGN SERVER sec TO regress_alice, regress_bob;
CREATE FOREIGN TABLE sec_tasks (id bigint, sql text, state text, submitted_by text,
                                result jsonb, notices text[], error text, sqlstate text,
                                error_detail text, batch text, run_at timestamptz)
    SERVER sec;
GRANT SELECT, INSERT, UPDATE, DELETE ON sec_tasks TO regress_alice, regress_bob;
CREATE USER MAPPING FOR CURRENT_USER SERVER sec;

-- only superusers may let a role connect without its password, or make the
-- server read its own files
SET ROLE regress_alice;
CREATE USER MAPPING FOR regress_alice SERVER sec OPTIONS (password_required 'false');
CREATE USER MAPPING FOR regress_alice SERVER sec OPTIONS (sslkey '/etc/ssl/private/server.key');
CREATE USER MAPPING FOR regress_alice SERVER sec OPTIONS (password 'pw', sslpassword 'x');
ALTER SERVER sec OPTIONS (ADD sslrootcert '/etc/ssl/certs/ca.pem');
-- without a password, a role that is not a superuser cannot submit tasks
CREATE USER MAPPING FOR regress_alice SERVER sec;
INSERT INTO sec_tasks(sql) VALUES ('SELECT 1');
SELECT count(*) FROM sec_tasks;
RESET ROLE;
-- a superuser may allow it (this test cluster trusts local connections)
ALTER USER MAPPING FOR regress_alice SERVER sec OPTIONS (ADD password_required 'false');
CREATE USER MAPPING FOR regress_bob SERVER sec OPTIONS (password_required 'false');
-- after which the role cannot change its mapping any more
SET ROLE regress_alice;
ALTER USER MAPPING FOR regress_alice SERVER sec OPTIONS (ADD password 'pw');

-- a task runs as the submitting role (the default remote user is its name)
INSERT INTO sec_tasks(sql, batch) VALUES ('SELECT current_user AS who', 'alice')
RETURNING id AS alice_task \gset
SELECT task_fdw.wait(:alice_task);
SELECT submitted_by, state, result FROM sec_tasks;
RESET ROLE;

-- roles see, cancel, delete and wait for their own tasks only
SET ROLE regress_bob;
SELECT pg_advisory_lock(77);
INSERT INTO sec_tasks(sql, batch) VALUES ('SELECT pg_advisory_xact_lock(77)', 'bob')
RETURNING id AS bob_task \gset
SELECT submitted_by, state FROM sec_tasks;
UPDATE sec_tasks SET state = 'cancelled' WHERE id = :alice_task RETURNING id;
DELETE FROM sec_tasks WHERE id = :alice_task RETURNING id;
SELECT task_fdw.wait(:alice_task);
SELECT * FROM task_fdw.wait(ARRAY[:alice_task, :bob_task]::bigint[], '10ms');
SELECT * FROM task_fdw.wait_batch('alice');
RESET ROLE;
SET ROLE regress_alice;
UPDATE sec_tasks SET state = 'cancelled' WHERE id = :bob_task RETURNING id;
SELECT state FROM task_fdw.wait_batch('bob');
RESET ROLE;
SELECT pg_advisory_unlock(77);
SELECT task_fdw.wait(:bob_task);

-- nor do they reach the task store or the internal functions
SET ROLE regress_alice;
SELECT count(*) FROM task_fdw.task;
SELECT task_fdw.check_table('sec_tasks');
SELECT nextval('task_fdw.task_id_seq');
RESET ROLE;

-- task_fdw_monitor sees every task, without results, notices or error details
INSERT INTO sec_tasks(sql) VALUES ($q$DO $d$ BEGIN
  RAISE NOTICE 'private notice';
  RAISE EXCEPTION 'boom' USING DETAIL = 'private detail'; END $d$$q$)
RETURNING id AS super_task \gset
SELECT task_fdw.wait(:super_task);
SELECT notices, error_detail FROM sec_tasks WHERE id = :super_task;
GRANT task_fdw_monitor TO regress_bob;
SET ROLE regress_bob;
SELECT CASE WHEN submitted_by LIKE 'regress_%' THEN submitted_by ELSE 'a superuser' END AS submitter,
       state, result IS NULL AS no_result, notices, error, error_detail
  FROM sec_tasks ORDER BY id;
-- but may not change them
UPDATE sec_tasks SET state = 'cancelled' WHERE submitted_by <> 'regress_bob' RETURNING id;
DELETE FROM sec_tasks WHERE submitted_by <> 'regress_bob' RETURNING id;
RESET ROLE;
REVOKE task_fdw_monitor FROM regress_bob;

-- a dropped mapping fails the tasks still queued for it, with a clear error
SET ROLE regress_alice;
INSERT INTO sec_tasks(sql, run_at) VALUES ('SELECT 1', now() + interval '1 hour')
RETURNING id AS orphan_task \gset
RESET ROLE;
DROP USER MAPPING FOR regress_alice SERVER sec;
SET ROLE regress_alice;
UPDATE sec_tasks SET run_at = NULL WHERE id = :orphan_task;
SELECT task_fdw.wait(:orphan_task);
SELECT state, sqlstate, error FROM sec_tasks WHERE id = :orphan_task;
RESET ROLE;

-- objects a role puts first on its search_path are not used by task_fdw
CREATE SCHEMA regress_trap AUTHORIZATION regress_alice;
CREATE USER MAPPING FOR regress_alice SERVER sec OPTIONS (password_required 'false');
SET ROLE regress_alice;
CREATE TABLE regress_trap.sprung (what text);
CREATE FUNCTION regress_trap.texteq_trap(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_trap.sprung VALUES ('=');
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR regress_trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_trap.texteq_trap);
CREATE FUNCTION regress_trap.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_trap.sprung VALUES ('now');
    RETURN pg_catalog.now();
END $$;
SET search_path = regress_trap, pg_catalog, public;
INSERT INTO public.sec_tasks(sql, batch) VALUES ('SELECT 1', 'trap'), ('SELECT 2', 'trap');
SELECT count(*) FROM task_fdw.wait_batch('trap');
SELECT task_fdw.wait(max(id)) FROM public.sec_tasks;
DELETE FROM public.sec_tasks WHERE id IN (SELECT max(id) FROM public.sec_tasks);
RESET search_path;
SELECT count(*) AS trap_sprung FROM regress_trap.sprung;
RESET ROLE;

-- functions of the extension: each pins search_path; the one SECURITY
-- DEFINER function is the event trigger's, for the reason given next to it
SELECT p.oid::regprocedure AS function, p.prosecdef AS security_definer, p.proconfig
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'task_fdw')
 ORDER BY 1::text;
-- what PUBLIC may use
SELECT p.oid::regprocedure AS function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p WHERE p.pronamespace = 'task_fdw'::regnamespace ORDER BY 1::text;
SELECT c.relname, has_table_privilege('public', c.oid, 'SELECT') AS public_select
  FROM pg_class c WHERE c.relnamespace = 'task_fdw'::regnamespace AND c.relkind IN ('r', 'S')
 ORDER BY 1;

DROP SCHEMA regress_trap CASCADE;
DROP FOREIGN TABLE sec_tasks;
SET client_min_messages = warning;  -- the notice would name the superuser
DROP SERVER sec CASCADE;
RESET client_min_messages;
DROP ROLE regress_alice, regress_bob;
