/*-------------------------------------------------------------------------
 *
 * pool.c
 *		  The dispatcher's pools of libpq connections, one per (server,
 *		  submitting role), each with at most pool_size connections.
 *
 * A pool holds the tasks claimed for it in FIFO order and hands them to
 * idle connections; when it holds more tasks than it has connections that
 * could take them, it opens new ones (up to pool_size) without blocking.
 * Connection options are read from the catalogs each time a connection is
 * opened, so ALTER SERVER and ALTER USER MAPPING apply to new connections;
 * a catalog change also retires the existing connections once they are idle.
 *
 * IDENTIFICATION
 *		  src/pool.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_user_mapping.h"
#include "foreign/foreign.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "dispatcher.h"

/*
 * Connections claim tasks ahead while that is about this much work
 * (PoolAhead): enough to keep them busy through a bookkeeping turn, little
 * enough that a task claimed behind a long one is soon handed back.
 */
#define AHEAD_BUDGET_USECS	8000

static HTAB *pools = NULL;

static void pool_inval_callback(Datum arg, int cacheid, uint32 hashvalue);
static const char *pool_dropped(Pool *pool, ForeignServer **server, const char **sqlstate);
static bool user_mapping_exists(Oid userid, Oid serverid);
static bool pool_read_options(Pool *pool, ForeignServer *server, TaskServerOptions *opts);
static void pool_set_error(Pool *pool, const char *message, TimestampTz at);
static void pool_expire_held(Pool *pool, TimestampTz now);
static void pool_close_idle_elsewhere(Pool *pool);
static void pool_retire_idle(Pool *pool);
static Conn *pool_open_conn(Pool *pool, ForeignServer *server, int64 appname_task,
							int cancel_pid);
static void pool_note_names(Pool *pool, ForeignServer *server);

/*
 * PoolInit creates the pool table and registers the catalog callbacks.
 */
void
PoolInit(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(TaskFdwPoolKey);
	ctl.entrysize = sizeof(Pool);
	ctl.hcxt = TopMemoryContext;
	pools = hash_create("task_fdw pools", 16, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterSyscacheCallback(FOREIGNSERVEROID, pool_inval_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(USERMAPPINGOID, pool_inval_callback, (Datum) 0);
	/* A role that stops being a superuser must start using its password. */
	CacheRegisterSyscacheCallback(AUTHOID, pool_inval_callback, (Datum) 0);
}

/*
 * pool_inval_callback marks every pool's connections as out of date when a
 * server, user mapping or role changes.  Changes are rare, so there is no point in
 * telling which pools they touch; it only sets flags.
 */
static void
pool_inval_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;

	hash_seq_init(&status, pools);
	while ((pool = hash_seq_search(&status)) != NULL)
		pool->invalidated = true;
}

/*
 * PoolTable returns the hash table of pools, for iterating over them.
 */
HTAB *
PoolTable(void)
{
	return pools;
}

/*
 * PoolLookup returns the pool for (serverid, userid), creating it when
 * create is true; otherwise returns NULL if there is none.
 */
Pool *
PoolLookup(Oid serverid, Oid userid, bool create)
{
	TaskFdwPoolKey key;
	Pool	   *pool;
	bool		found;

	key.serverid = serverid;
	key.userid = userid;
	pool = hash_search(pools, &key, create ? HASH_ENTER : HASH_FIND, &found);
	if (pool != NULL && !found)
	{
		pool->pool_size = 1;
		pool->connect_timeout = 0;
		pool->connect_retry_timeout = 0;
		pool->reset_session = true;
		pool->pipeline_depth = 0;
		pool->down_since = 0;
		pool->next_connect_at = 0;
		pool->connect_failures = 0;
		pool->last_error[0] = '\0';
		pool->blocked_until = 0;
		dlist_init(&pool->conns);
		pool->nconns = 0;
		pool->ncancellers = 0;
		dlist_init(&pool->held);
		pool->nheld = 0;
		pool->has_queued = true;
		pool->cursor_valid = false;
		pool->invalidated = false;
		pool->server_name[0] = '\0';
		pool->role_name[0] = '\0';
		pool->last_error_at = 0;
		pool->refused = false;
		pool->tasks_started = 0;
		pool->tasks_finished = 0;
		pool->run_usecs = -1;
		StatsMarkChanged();
	}
	return pool;
}

/*
 * PoolCountState returns how many of pool's connections (cancellers aside)
 * are in state.
 */
int
PoolCountState(Pool *pool, ConnState state)
{
	dlist_iter	iter;
	int			n = 0;

	dlist_foreach(iter, &pool->conns)
	{
		Conn	   *conn = dlist_container(Conn, node, iter.cur);

		if (conn->state == state && conn->cancel_pid == 0)
			n++;
	}
	return n;
}

/*
 * PoolBusy returns how many of pool's connections have a task.
 */
int
PoolBusy(Pool *pool)
{
	return pool->nconns - PoolCountState(pool, CONN_IDLE) -
		PoolCountState(pool, CONN_CONNECTING);
}

/*
 * PoolCapacity returns how many more tasks pool can claim now: one for each
 * connection it may still open or that is idle, and those its connections
 * may claim ahead (see PoolTakesAhead).
 */
int
PoolCapacity(Pool *pool, TimestampTz now)
{
	int			ahead = PoolAhead(pool);
	int			free = pool->pool_size - PoolBusy(pool) - pool->nheld;
	dlist_iter	iter;

	if (ahead > 0)
	{
		dlist_foreach(iter, &pool->conns)
		{
			Conn	   *conn = dlist_container(Conn, node, iter.cur);

			if (conn->state == CONN_IDLE)
				free += ahead;
			else if (PoolTakesAhead(conn, now))
				free += Max(ahead - conn->nahead - conn->npiped, 0);
		}
	}
	return free > 0 ? free : 0;
}

/*
 * PoolTakesAhead returns whether conn, which runs a task, may claim tasks
 * ahead of it now, and send them in its pipeline: not a canceller, nor
 * while its task is being cancelled or has run long.
 */
bool
PoolTakesAhead(Conn *conn, TimestampTz now)
{
	TimestampTz stalled_at = ConnStalledAt(conn);

	return conn->task != NULL && conn->cancel_pid == 0 &&
		conn->task->cancel_reason == TASK_CANCEL_NONE &&
		(stalled_at == 0 || now < stalled_at);
}

/*
 * PoolAhead returns how many tasks each of pool's connections may claim
 * ahead of the one it runs: none until all pool_size connections are open
 * (opening more comes first) or while its tasks take AHEAD_BUDGET_USECS or
 * longer, otherwise about that much work, within task_fdw.claim_ahead.
 *
 * A connection then sends its next task as soon as the last one ends,
 * instead of waiting for a bookkeeping turn, and a turn records many starts
 * and outcomes with one commit.  A task claimed ahead is recorded as
 * running before it is sent, like any other, so it is never sent twice; if
 * it is not sent after all (the task before it runs long, the connection
 * breaks, it is cancelled) it goes back to the queue.
 */
int
PoolAhead(Pool *pool)
{
	if (TaskFdwClaimAhead <= 0 || pool->run_usecs < 0 ||
		pool->nconns < pool->pool_size || pool->invalidated)
		return 0;
	return (int) Min(TaskFdwClaimAhead, AHEAD_BUDGET_USECS / Max(pool->run_usecs, 1));
}

/*
 * PoolNoteRunTime adds the run time of one of pool's tasks, in microseconds,
 * to the moving average that PoolAhead goes by.
 */
void
PoolNoteRunTime(Pool *pool, int64 usecs)
{
	if (pool->run_usecs < 0)
		pool->run_usecs = usecs;
	else
		pool->run_usecs += (usecs - pool->run_usecs) / 8;
}

/*
 * PoolWantsTurn returns whether pool needs a bookkeeping turn now: to claim
 * queued tasks it has room for, to give held tasks to an idle connection
 * or open connections for them (what PoolAssignHeld and PoolConnect would
 * do), or because its unreachable server is due another attempt or its
 * tasks have waited too long for it.
 */
bool
PoolWantsTurn(Pool *pool, TimestampTz now)
{
	TimestampTz attention = PoolNextAttention(pool);

	if (attention != 0 && now >= attention)
		return true;
	if (pool->down_since != 0)
		return false;
	if (pool->has_queued && PoolCapacity(pool, now) > 0)
		return true;
	if (pool->nheld == 0)
		return false;
	return PoolCountState(pool, CONN_IDLE) > 0 ||
		(pool->nheld > PoolCountState(pool, CONN_CONNECTING) &&
		 pool->nconns < pool->pool_size && now >= pool->blocked_until);
}

/*
 * PoolTakeHeld removes and returns the oldest task pool holds, or NULL.
 */
Task *
PoolTakeHeld(Pool *pool)
{
	if (pool->nheld == 0)
		return NULL;
	pool->nheld--;
	return dlist_container(Task, node, dlist_pop_head_node(&pool->held));
}

/*
 * PoolAssignHeld gives pool's held tasks, oldest first, to its idle
 * connections, then as many as PoolAhead allows to its busy ones (not those
 * whose task has run long by now), one by one in turn, and appends them to
 * starting: their start is recorded before they are sent.  A task claimed
 * ahead counts in conn->nahead already, and joins conn->ahead once its
 * start is recorded.
 */
void
PoolAssignHeld(Pool *pool, dlist_head *starting, TimestampTz now)
{
	dlist_iter	iter;
	int			ahead;
	int			level;

	/*
	 * The queue read that found the tasks took its own snapshot: a user
	 * mapping or server dropped or changed before it may have committed
	 * since the dispatcher last read invalidations.  Read them now, so that
	 * such a pool's idle connections are retired rather than given a task.
	 */
	AcceptInvalidationMessages();
	pool_retire_idle(pool);
	ahead = PoolAhead(pool);

	dlist_foreach(iter, &pool->conns)
	{
		Conn	   *conn = dlist_container(Conn, node, iter.cur);
		Task	   *task;

		if (pool->nheld == 0)
			break;
		if (conn->state != CONN_IDLE)
			continue;
		task = PoolTakeHeld(pool);
		conn->task = task;
		conn->state = CONN_ASSIGNED;
		task->conn = conn;
		task->remote_pid = PQbackendPID(conn->conn);
		dlist_push_tail(starting, &task->node);
	}

	for (level = 1; level <= ahead && pool->nheld > 0; level++)
	{
		dlist_foreach(iter, &pool->conns)
		{
			Conn	   *conn = dlist_container(Conn, node, iter.cur);
			Task	   *task;

			if (pool->nheld == 0)
				break;
			if (conn->nahead + conn->npiped >= level || !PoolTakesAhead(conn, now))
				continue;
			task = PoolTakeHeld(pool);
			task->conn = conn;
			task->remote_pid = PQbackendPID(conn->conn);
			conn->nahead++;
			dlist_push_tail(starting, &task->node);
		}
	}
}

/*
 * PoolStartRecorded settles task, taken from the list PoolAssignHeld built,
 * once QueueRecordStarts has run, and returns whether it is to be sent now.
 * A task whose start was not recorded (cancelled, deleted, postponed or
 * locked meanwhile) is freed, and its connection freed too once the reset
 * begun for it is through.  A task claimed ahead joins its connection's
 * ahead list, or goes first if the task it was claimed behind did not start.
 */
bool
PoolStartRecorded(Task *task)
{
	Conn	   *conn = task->conn;
	bool		ahead = conn->task != task;

	if (!task->recorded)
	{
		if (ahead)
			conn->nahead--;
		else
		{
			conn->task = NULL;
			if (conn->state != CONN_RESETTING || PQstatus(conn->conn) == CONNECTION_BAD)
				conn->state = CONN_IDLE;
		}
		MemoryContextDelete(task->cxt);
		return false;
	}
	task->pool->tasks_started++;
	if (!ahead)
		return true;
	if (conn->task != NULL)
	{
		dlist_push_tail(&conn->ahead, &task->node);
		return false;
	}
	conn->nahead--;
	conn->task = task;
	if (conn->state != CONN_RESETTING)
		conn->state = CONN_ASSIGNED;
	return true;
}

/*
 * pool_dropped returns what of pool's server, submitting role and that
 * role's user mapping was dropped, as "... was dropped", with the SQLSTATE
 * to fail its tasks with; or NULL, with *server set, if all are there.
 * Nothing ties a task to its role: a role a PUBLIC mapping serves can be
 * dropped while its tasks are queued or running.
 */
static const char *
pool_dropped(Pool *pool, ForeignServer **server, const char **sqlstate)
{
	*server = GetForeignServerExtended(pool->key.serverid, FSV_MISSING_OK);
	if (*server == NULL)
	{
		*sqlstate = "08001";
		return "the foreign server of the task was dropped";
	}
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(pool->key.userid)))
	{
		*sqlstate = "42704";
		return "the role that submitted the task was dropped";
	}
	if (!user_mapping_exists(pool->key.userid, pool->key.serverid))
	{
		*sqlstate = "28000";
		return psprintf("user mapping for the submitting role on server \"%s\" was dropped",
						(*server)->servername);
	}
	return NULL;
}

/*
 * user_mapping_exists returns whether userid (or PUBLIC) has a user mapping
 * for serverid; GetUserMapping would raise an error instead.
 */
static bool
user_mapping_exists(Oid userid, Oid serverid)
{
	return SearchSysCacheExists2(USERMAPPINGUSERSERVER, ObjectIdGetDatum(userid),
								 ObjectIdGetDatum(serverid)) ||
		SearchSysCacheExists2(USERMAPPINGUSERSERVER, ObjectIdGetDatum(InvalidOid),
							  ObjectIdGetDatum(serverid));
}

/*
 * pool_read_options reads server's task_fdw options into opts and returns
 * true, or fails pool's held tasks with the error and returns false.  The
 * options were valid when stored, but a value an older version accepted
 * may no longer be, and an error here would end the dispatcher (and would
 * again after each restart).  Parsing holds no resources, so dropping the
 * error is enough.
 */
static bool
pool_read_options(Pool *pool, ForeignServer *server, TaskServerOptions *opts)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		TaskFdwGetServerOptions(server, opts);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	if (edata == NULL)
		return true;
	PoolFailHeld(pool, unpack_sql_state(edata->sqlerrcode),
				 psprintf("server \"%s\": %s", server->servername, edata->message),
				 NULL, "Correct the option with ALTER SERVER.");
	FreeErrorData(edata);
	return false;
}

/*
 * PoolConnect starts the connections pool needs for its held tasks, within
 * pool_size.  Runs inside a dispatcher transaction, as it reads the catalogs;
 * starting a connection does not wait for it.
 */
void
PoolConnect(Pool *pool)
{
	ForeignServer *server;
	UserMapping *user;
	TaskServerOptions opts;
	const char *problem;
	const char *sqlstate;
	const char *detail;
	const char *hint;

	if (pool->nheld == 0)
		return;

	problem = pool_dropped(pool, &server, &sqlstate);
	if (problem != NULL)
	{
		PoolFailHeld(pool, sqlstate, problem, NULL, NULL);
		return;
	}
	/* Checked again now: the mapping or the role may have changed since. */
	user = GetUserMapping(pool->key.userid, pool->key.serverid);
	problem = TaskFdwPasswordProblem(server, user, &detail, &hint);
	if (problem != NULL)
	{
		PoolFailHeld(pool, "2F003", problem, detail, hint);
		return;
	}
	pool->require_password = TaskFdwPasswordRequired(user);
	pool_note_names(pool, server);
	if (!pool_read_options(pool, server, &opts))
		return;
	pool->pool_size = opts.pool_size;
	pool->connect_timeout = opts.connect_timeout;
	pool->connect_retry_timeout = opts.connect_retry_timeout;
	pool->reset_session = opts.reset_session;
	pool->pipeline_depth = opts.pipeline_depth;

	if (pool->down_since != 0)
		pool_expire_held(pool, GetCurrentTimestamp());

	while (pool->nheld > PoolCountState(pool, CONN_CONNECTING) &&
		   pool->nconns < pool->pool_size)
	{
		Task	   *first = dlist_head_element(Task, node, &pool->held);
		Conn	   *conn;

		/* While unreachable: one attempt at a time, after a pause. */
		if (pool->down_since != 0 &&
			(GetCurrentTimestamp() < pool->next_connect_at ||
			 PoolCountState(pool, CONN_CONNECTING) > 0))
			break;
		/* At a connection limit: try again once the pause is over. */
		if (pool->blocked_until != 0 && GetCurrentTimestamp() < pool->blocked_until)
			break;
		conn = pool_open_conn(pool, server, first->id, 0);
		if (conn == NULL)
			break;
		pool->blocked_until = 0;
		/* Failed at once (no such socket, say): judged like any failure. */
		if (PQstatus(conn->conn) == CONNECTION_BAD)
			ConnLost(conn);
	}
}

/*
 * pool_note_names keeps the names of pool's server and role, as of now, for
 * the log messages about the pool, which are written outside transactions.
 * Called whenever the pool is about to open connections, so that renames
 * show.
 */
static void
pool_note_names(Pool *pool, ForeignServer *server)
{
	char	   *role = GetUserNameFromId(pool->key.userid, true);

	strlcpy(pool->server_name, server->servername, sizeof(pool->server_name));
	strlcpy(pool->role_name, role ? role : "?", sizeof(pool->role_name));
}

/*
 * PoolUnreachable notes that a connection to pool's server could not be
 * made for a reason that may pass (the server is down, starting, refusing
 * connections or slow to answer), with libpq's message.  The pool's held
 * tasks stay queued; it tries again after a pause that doubles up to ten
 * seconds, and tasks fail only once they have waited the server's
 * connect_retry_timeout.  The first failure in a row is logged.
 */
void
PoolUnreachable(Pool *pool, const char *message)
{
	TimestampTz now = GetCurrentTimestamp();
	int			pause_ms = 250;
	int			i;

	if (pool->down_since == 0)
	{
		pool->down_since = now;
		ereport(LOG,
				(errmsg("task_fdw cannot reach server \"%s\" for the tasks of role \"%s\"; they stay queued while it tries again",
						pool->server_name, pool->role_name),
				 errdetail_internal("%s", message)));
	}
	pool->connect_failures++;
	for (i = 1; i < pool->connect_failures && pause_ms < 10000; i++)
		pause_ms *= 2;
	pool->next_connect_at = TimestampTzPlusMilliseconds(now, Min(pause_ms, 10000));
	pool_set_error(pool, message, now);
	pool_expire_held(pool, now);
}

/*
 * PoolReachable notes that a connection to pool's server succeeded, and
 * logs that it is reachable again after PoolUnreachable.
 */
void
PoolReachable(Pool *pool)
{
	if (pool->down_since != 0)
	{
		long		secs;
		int			usecs;

		TimestampDifference(pool->down_since, GetCurrentTimestamp(), &secs, &usecs);
		ereport(LOG,
				(errmsg("task_fdw reached server \"%s\" again for the tasks of role \"%s\", after %ld.%03d s",
						pool->server_name, pool->role_name, secs, usecs / 1000)));
	}
	pool->down_since = 0;
	pool->next_connect_at = 0;
	pool->connect_failures = 0;
	pool->refused = false;
	StatsMarkChanged();
}

/*
 * PoolRefused notes that pool's server refused a connection for a reason
 * that will not pass by itself (bad credentials, no such database), with
 * libpq's message; the task the connection was for fails.  Only the first
 * refusal since the last successful connection is logged, so that a wrong
 * password does not log a line for every task.
 */
void
PoolRefused(Pool *pool, const char *message)
{
	if (!pool->refused)
		ereport(LOG,
				(errmsg("task_fdw's connection to server \"%s\" for the tasks of role \"%s\" was refused; the task fails",
						pool->server_name, pool->role_name),
				 errdetail_internal("%s", message)));
	pool->refused = true;
	pool_set_error(pool, message, GetCurrentTimestamp());
}

/*
 * pool_set_error keeps message as pool's last error, which happened at
 * the given time, cut at a character boundary if it is longer than kept:
 * it is shown in task_fdw.pools and may become a task's error.
 */
static void
pool_set_error(Pool *pool, const char *message, TimestampTz at)
{
	int			len = pg_mbcliplen(message, strlen(message), sizeof(pool->last_error) - 1);

	memcpy(pool->last_error, message, len);
	pool->last_error[len] = '\0';
	pool->last_error_at = at;
	StatsMarkChanged();
}

/*
 * pool_expire_held fails the held tasks of an unreachable pool that have
 * waited longer than connect_retry_timeout for it: since the server became
 * unreachable, or since they were submitted if that was later.
 */
static void
pool_expire_held(Pool *pool, TimestampTz now)
{
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &pool->held)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);
		TimestampTz since = Max(pool->down_since, task->submitted_at);

		if (now - since < pool->connect_retry_timeout)
			continue;
		dlist_delete(&task->node);
		pool->nheld--;
		TaskFailWithDetail(task, "08001", pool->last_error,
						   psprintf("The server could not be reached for %d s, the server's connect_retry_timeout.",
									(int) (pool->connect_retry_timeout / USECS_PER_SEC)),
						   NULL);
		DispatcherTaskFinished(task);
	}
}

/*
 * PoolNextAttention returns when an unreachable pool with held tasks next
 * needs the dispatcher (to try again, or to fail tasks that waited too
 * long), or 0.
 */
TimestampTz
PoolNextAttention(Pool *pool)
{
	TimestampTz next = pool->next_connect_at;
	dlist_iter	iter;

	if (pool->nheld > 0 && pool->blocked_until != 0 && pool->down_since == 0)
		return pool->nheld > PoolCountState(pool, CONN_CONNECTING) ? pool->blocked_until : 0;
	if (pool->down_since == 0 || pool->nheld == 0)
		return 0;
	if (PoolCountState(pool, CONN_CONNECTING) > 0)
		next = DT_NOEND;		/* an attempt is under way */
	dlist_foreach(iter, &pool->held)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);
		TimestampTz expiry = Max(pool->down_since, task->submitted_at) +
			pool->connect_retry_timeout;

		next = Min(next, expiry);
	}
	return next;
}

/*
 * pool_close_idle_elsewhere closes one idle connection of a pool other than
 * pool, so that pool, at task_fdw.max_connections, can open one: idle
 * connections must not keep another pool's tasks waiting.
 */
static void
pool_close_idle_elsewhere(Pool *pool)
{
	ConnWalk	walk;
	Conn	   *conn;

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		if (conn->pool != pool && conn->state == CONN_IDLE && conn->cancel_pid == 0)
		{
			ConnWalkEnd(&walk);
			PoolCloseConn(conn);
			return;
		}
	}
}

/*
 * PoolStartCancel opens a canceller: a connection of pool that asks the
 * remote to cancel the statement of backend remote_pid, then closes.  It
 * uses the pool's own credentials, so it may cancel the pool's backends
 * and nothing else.  With only_task, the request goes only while that
 * backend's application_name names task only_task: other tasks wait in
 * its pipeline, and a request that arrives once the task has ended must
 * not cancel the next one.  Returns NULL, or why no canceller can be
 * opened (see pool_dropped).  Runs inside a dispatcher transaction.
 */
const char *
PoolStartCancel(Pool *pool, int remote_pid, int64 only_task)
{
	ForeignServer *server;
	const char *sqlstate;
	const char *problem = pool_dropped(pool, &server, &sqlstate);
	Conn	   *conn;

	if (problem != NULL)
		return problem;
	pool_note_names(pool, server);
	conn = pool_open_conn(pool, server, 0, remote_pid);
	if (conn != NULL)
		conn->cancel_task = only_task;
	if (conn != NULL && PQstatus(conn->conn) == CONNECTION_BAD)
		ConnLost(conn);
	return NULL;
}

/*
 * pool_open_conn starts a connection of pool to server without waiting for
 * it, named after task appname_task (just "task_fdw" if the pool does not
 * reset sessions), or a canceller of remote backend cancel_pid.  Returns
 * NULL when out of file descriptors; a connection that libpq could not even
 * start is returned with status CONNECTION_BAD, for the caller to report.
 */
static Conn *
pool_open_conn(Pool *pool, ForeignServer *server, int64 appname_task, int cancel_pid)
{
	UserMapping *user = GetUserMapping(pool->key.userid, pool->key.serverid);
	const char **keywords;
	const char **values;
	char	   *appname;
	PGconn	   *pgconn;
	Conn	   *conn;
	bool		conn_counted;

	/*
	 * At task_fdw.max_connections, or out of file descriptors: the tasks
	 * wait in the queue for a connection to close.  Cancellers are exempt
	 * from the limit, as they stop tasks.
	 */
	if (cancel_pid == 0 && TaskFdwMaxConnections > 0 &&
		pg_atomic_fetch_add_u32(&TaskFdwState->connections, 1) >= TaskFdwMaxConnections)
	{
		pg_atomic_fetch_sub_u32(&TaskFdwState->connections, 1);
		/* An idle connection of another pool gives way, and we wait a turn. */
		pool_close_idle_elsewhere(pool);
		pool->blocked_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		return NULL;
	}
	if (!AcquireExternalFD())
	{
		if (cancel_pid == 0 && TaskFdwMaxConnections > 0)
			pg_atomic_fetch_sub_u32(&TaskFdwState->connections, 1);
		pool->blocked_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		return NULL;
	}
	conn_counted = cancel_pid == 0 && TaskFdwMaxConnections > 0;

	/* Without session resets, a session is not renamed for each task. */
	if (!pool->reset_session)
		appname_task = 0;
	if (cancel_pid != 0)
		appname = pstrdup("task_fdw canceller");
	else if (appname_task == 0)
		appname = pstrdup("task_fdw");
	else
		appname = psprintf(TASK_APPNAME_FORMAT, appname_task);
	(void) TaskFdwBuildConnParams(server, user, appname, &keywords, &values);
	pgconn = PQconnectStartParams(keywords, values, false);
	if (pgconn == NULL)
	{
		ReleaseExternalFD();
		if (conn_counted)
			pg_atomic_fetch_sub_u32(&TaskFdwState->connections, 1);
		ereport(ERROR,
				(errcode(ERRCODE_FDW_OUT_OF_MEMORY),
				 errmsg("out of memory while starting a connection to server \"%s\"",
						server->servername)));
	}

	conn = MemoryContextAllocZero(TopMemoryContext, sizeof(Conn));
	conn->pool = pool;
	conn->conn = pgconn;
	conn->state = CONN_CONNECTING;
	conn->sock = PQsocket(pgconn);
	conn->wait_events = WL_SOCKET_WRITEABLE;
	conn->wait_pos = -1;
	conn->appname_task = appname_task;
	conn->cancel_pid = cancel_pid;
	conn->counted = conn_counted;
	dlist_init(&conn->ahead);
	dlist_init(&conn->piped);
	if (pool->connect_timeout > 0)
		conn->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 (int64) pool->connect_timeout * 1000);
	else if (cancel_pid != 0)
		conn->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
	PQsetnonblocking(pgconn, 1);
	/* With the SQLSTATE of a refused connection in its message. */
	PQsetErrorVerbosity(pgconn, PQERRORS_VERBOSE);
	dlist_push_tail(&pool->conns, &conn->node);
	if (cancel_pid != 0)
		pool->ncancellers++;
	else
		pool->nconns++;
	DispatcherConnChanged();
	return conn;
}

/*
 * PoolCloseConn closes conn and forgets it.  Its task, if any, must already
 * have been finished or handed back by the caller; the tasks it claimed
 * ahead go back to the queue.
 */
void
PoolCloseConn(Conn *conn)
{
	Pool	   *pool = conn->pool;

	ConnFailPiped(conn, "08006", NULL);
	ConnReleaseAhead(conn, true);
	PQfinish(conn->conn);
	ReleaseExternalFD();
	if (conn->counted)
		pg_atomic_fetch_sub_u32(&TaskFdwState->connections, 1);
	dlist_delete(&conn->node);
	if (conn->cancel_pid != 0)
		pool->ncancellers--;
	else
		pool->nconns--;
	pfree(conn);
	DispatcherConnChanged();
}

/*
 * PoolFailHeld ends every task pool holds as failed, with sqlstate, message,
 * and detail and hint (which may be NULL).
 */
void
PoolFailHeld(Pool *pool, const char *sqlstate, const char *message,
			 const char *detail, const char *hint)
{
	while (pool->nheld > 0)
	{
		Task	   *task = PoolTakeHeld(pool);

		TaskFailWithDetail(task, sqlstate, message, detail, hint);
		DispatcherTaskFinished(task);
	}
}

/*
 * pool_retire_idle closes pool's idle connections if its server, user
 * mapping or role changed; busy ones are closed when their task ends.
 */
static void
pool_retire_idle(Pool *pool)
{
	dlist_mutable_iter iter;

	if (!pool->invalidated)
		return;
	dlist_foreach_modify(iter, &pool->conns)
	{
		Conn	   *conn = dlist_container(Conn, node, iter.cur);

		if (conn->state == CONN_IDLE)
			PoolCloseConn(conn);
	}
	if (PoolBusy(pool) == 0 && PoolCountState(pool, CONN_CONNECTING) == 0)
		pool->invalidated = false;
}

/*
 * PoolRetireIdle closes the idle connections of pools whose server or user
 * mapping changed.
 */
void
PoolRetireIdle(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;

	hash_seq_init(&status, pools);
	while ((pool = hash_seq_search(&status)) != NULL)
		pool_retire_idle(pool);
}

/*
 * PoolCloseAll closes every connection of every pool, at dispatcher exit.
 */
void
PoolCloseAll(void)
{
	ConnWalk	walk;
	Conn	   *conn;

	if (pools == NULL)
		return;
	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
		PoolCloseConn(conn);
}

/*
 * ConnWalkBegin starts a walk over every connection of every pool, in no
 * particular order: ConnWalkNext returns them one by one.
 */
void
ConnWalkBegin(ConnWalk *walk)
{
	hash_seq_init(&walk->pools, pools);
	walk->pool = NULL;
	walk->next = NULL;
}

/*
 * ConnWalkNext returns the next connection of walk, or NULL once all have
 * been returned.  The caller may close the connection it was returned
 * (only that one) before asking for the next.
 */
Conn *
ConnWalkNext(ConnWalk *walk)
{
	Conn	   *conn;

	while (walk->pool == NULL || walk->next == &walk->pool->conns.head)
	{
		walk->pool = hash_seq_search(&walk->pools);
		if (walk->pool == NULL)
			return NULL;
		walk->next = walk->pool->conns.head.next;
	}
	conn = dlist_container(Conn, node, walk->next);
	walk->next = walk->next->next;
	return conn;
}

/*
 * ConnWalkEnd ends walk before ConnWalkNext has returned NULL.
 */
void
ConnWalkEnd(ConnWalk *walk)
{
	if (walk->pool != NULL)
		hash_seq_term(&walk->pools);
	walk->pool = NULL;
}
