/*-------------------------------------------------------------------------
 *
 * task_exec.c
 *		  The per-connection state machine: connecting, resetting the session,
 *		  sending a task, reading its results, and capturing its outcome.
 *
 * Nothing here waits: ConnAdvance is called by the dispatcher's event loop
 * when a connection's socket is ready, does what libpq can do without
 * blocking (PQconnectPoll, PQflush, PQconsumeInput, PQgetResult only while
 * !PQisBusy) and returns.  Results are read in single-row mode, so a huge
 * result never sits in memory: the first task_fdw.max_result_rows rows
 * (within task_fdw.max_result_bytes) are kept as JSON, the rest counted.
 * While a pool's tasks are short, a connection also sends the tasks it
 * claimed ahead in the pipeline of the one it runs (ConnPipeAhead), and
 * reads their results one task after another.
 *
 * IDENTIFICATION
 *		  src/task_exec.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "parser/scansup.h"
#include "storage/latch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "dispatcher.h"

/*
 * A pooled connection that ran a task is reset before the next one with
 * DISCARD ALL, then named after the new task, in one pipelined transaction
 * ahead of the task: DISCARD ALL commits on its own as the first statement
 * after a sync, but cannot run inside the implicit transaction of a
 * multi-statement query string.  A task of one statement follows in the
 * same pipeline, after a sync of its own, so that it runs on its own as
 * well and the whole takes one round trip.  A task of several statements
 * must go as a simple query, which a pipeline cannot hold: it is sent once
 * the reset is through.  A server with reset_session 'false' skips all of
 * this: each task goes as a simple query on the session as it is.
 */
#define SESSION_RESET_SQL "DISCARD ALL"

/*
 * Tasks claimed ahead go in the pipeline of the task before them (see
 * ConnPipeAhead) while the pool's tasks take at most this long.
 */
#define PIPE_MAX_USECS		2000

static void conn_poll_connect(Conn *conn);
static void conn_io(Conn *conn, uint32 events);
static void conn_refuse_unauthenticated(Conn *conn);
static bool conn_task_done(Conn *conn, bool reusable);
static void task_unstart(Task *task);
static bool conn_reset_result(Conn *conn, PGresult *res);
static bool conn_send_sql(Conn *conn);
static bool conn_begin(Conn *conn, bool send_sql);
static bool conn_needs_reset(Conn *conn);
static bool sql_is_plain_query(const char *sql);
static TaskSqlKind task_sql_kind(Task *task);
static void task_start_clock(Task *task);
static bool conn_queue_task(Conn *conn, Task *task, bool reset, bool with_sql);
static void conn_next_piped(Conn *conn);
static bool conn_flush(Conn *conn);
static void capture_result(Task *task, PGresult *res);
static void capture_row(Task *task, PGresult *res);
static void capture_error(Task *task, PGresult *res, PGconn *pgconn);
static int	replace_invalid_bytes(char *s);
static bool row_fits(Task *task, PGresult *res);
static int64 escaped_length(const char *s);
static void make_text_valid(Task *task);
static void append_json_value(StringInfo buf, PGresult *res, int col);
static void receive_notice(void *arg, const PGresult *res);
static void conn_cancel_io(Conn *conn, uint32 events);
static bool is_retryable(Task *task);
static char *format_usecs(int64 usecs);
static bool is_json_number(const char *s);
static char *task_strdup(Task *task, const char *s);

/*
 * sql_is_plain_query returns whether sql is, at a glance, one statement that
 * reads or writes rows: no semicolon, and SELECT, INSERT, UPDATE, DELETE,
 * WITH, VALUES or TABLE first (spaces aside).  Most short tasks are, and
 * need no parse (task_sql_kind); false only means "parse it".
 */
static bool
sql_is_plain_query(const char *sql)
{
	static const char *const keywords[] = {
		"select", "insert", "update", "delete", "with", "values", "table"
	};
	const char *word;
	int			len;
	int			i;

	if (strchr(sql, ';') != NULL)
		return false;
	while (scanner_isspace(*sql))
		sql++;
	word = sql;
	while ((*sql >= 'a' && *sql <= 'z') || (*sql >= 'A' && *sql <= 'Z'))
		sql++;
	len = sql - word;
	if (*sql != '\0' && !scanner_isspace(*sql) && *sql != '(')
		return false;
	for (i = 0; i < lengthof(keywords); i++)
	{
		if (len == strlen(keywords[i]) && pg_strncasecmp(word, keywords[i], len) == 0)
			return true;
	}
	return false;
}

/*
 * task_sql_kind returns what task's SQL is, as this server's parser reads
 * it: several statements, one, or one that may share a pipeline with other
 * tasks (neither a transaction command, as one that opens a transaction
 * block would leave the tasks after it inside, nor a COPY, whose client
 * side has no place in a pipeline).  The answer is kept in the task.
 *
 * A plain query (sql_is_plain_query) needs no parse.  SQL the parser
 * rejects (a newer server's syntax, or a mistake the remote will report),
 * and SQL of no statement (only comments), share no pipeline, and count as
 * several statements, so that they go as a simple query, unless they have
 * no semicolon: then they cannot hold two, and the remote answers them the
 * same way in a pipeline as in a simple query.
 */
static TaskSqlKind
task_sql_kind(Task *task)
{
	MemoryContext cxt;
	MemoryContext old;
	volatile TaskSqlKind kind;

	if (task->sql_kind != TASK_SQL_UNKNOWN)
		return task->sql_kind;
	if (sql_is_plain_query(task->sql))
		return task->sql_kind = TASK_SQL_SHAREABLE;
	kind = strchr(task->sql, ';') == NULL ? TASK_SQL_ONE : TASK_SQL_SEVERAL;
	cxt = AllocSetContextCreate(CurrentMemoryContext, "task_fdw statement kind",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		List	   *stmts = raw_parser(task->sql, RAW_PARSE_DEFAULT);

		if (list_length(stmts) > 1)
			kind = TASK_SQL_SEVERAL;
		else if (list_length(stmts) == 1)
		{
			Node	   *stmt = linitial_node(RawStmt, stmts)->stmt;

			kind = IsA(stmt, TransactionStmt) || IsA(stmt, CopyStmt) ?
				TASK_SQL_ONE : TASK_SQL_SHAREABLE;
		}
	}
	PG_CATCH();
	{
		/* The parser holds no resources: dropping its memory is enough. */
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return task->sql_kind = kind;
}

/*
 * ConnAdvance moves conn's state machine on after its socket reported events.
 */
void
ConnAdvance(Conn *conn, uint32 events)
{
	switch (conn->state)
	{
		case CONN_CONNECTING:
			conn_poll_connect(conn);
			break;
		case CONN_IDLE:
			/* An idle connection only becomes readable when it is closing. */
			if (!PQconsumeInput(conn->conn) || PQstatus(conn->conn) == CONNECTION_BAD)
				ConnLost(conn);
			else
			{
				PGnotify   *notify;

				while ((notify = PQnotifies(conn->conn)) != NULL)
					PQfreemem(notify);
			}
			break;
		case CONN_ASSIGNED:
			/* Its start is recorded before the loop waits again. */
			break;
		case CONN_RESETTING:
		case CONN_RUNNING:
			conn_io(conn, events);
			break;
		case CONN_CANCELLING:
			conn_cancel_io(conn, events);
			break;
		case CONN_CLOSED:
			break;
	}
}

/*
 * conn_poll_connect continues establishing conn; once connected, the pool
 * gives it a held task.
 */
static void
conn_poll_connect(Conn *conn)
{
	switch (PQconnectPoll(conn->conn))
	{
		case PGRES_POLLING_READING:
			conn->wait_events = WL_SOCKET_READABLE;
			break;
		case PGRES_POLLING_WRITING:
			conn->wait_events = WL_SOCKET_WRITEABLE;
			break;
		case PGRES_POLLING_OK:
			if (conn->pool->require_password && !PQconnectionUsedPassword(conn->conn))
			{
				conn_refuse_unauthenticated(conn);
				return;
			}
			PQsetNoticeReceiver(conn->conn, receive_notice, conn);
			PQsetErrorVerbosity(conn->conn, PQERRORS_DEFAULT);
			PoolReachable(conn->pool);
			if (conn->cancel_pid != 0)
			{
				/* A canceller: ask for the cancel, then wait for the answer. */
				conn->state = CONN_CANCELLING;
				if (!PQsendQuery(conn->conn, conn->cancel_task == 0 ?
								 psprintf("SELECT pg_catalog.pg_cancel_backend(%d)",
										  conn->cancel_pid) :
								 psprintf("SELECT pg_catalog.pg_cancel_backend(pid) "
										  "FROM pg_catalog.pg_stat_activity "
										  "WHERE pid = %d AND application_name = '" TASK_APPNAME_FORMAT "'",
										  conn->cancel_pid, conn->cancel_task)) ||
					!conn_flush(conn))
				{
					ConnLost(conn);
					return;
				}
				break;
			}
			conn->state = CONN_IDLE;
			conn->wait_events = WL_SOCKET_READABLE;
			conn->deadline = 0;
			break;
		case PGRES_POLLING_FAILED:
		default:
			ConnLost(conn);
			return;
	}
	/* libpq may switch sockets while connecting (several hosts, SSL retry). */
	if (PQsocket(conn->conn) != conn->sock)
	{
		conn->sock = PQsocket(conn->conn);
		DispatcherConnChanged();
	}
}

/*
 * ConnLost fails whatever conn was doing because the connection broke or
 * could not be made, and closes it.
 */
void
ConnLost(Conn *conn)
{
	Pool	   *pool = conn->pool;
	Task	   *task = conn->task;

	if (conn->cancel_pid != 0)
	{
		/* The task's cancel is sent again while it still runs. */
		ereport(LOG,
				(errmsg("task_fdw could not send a cancel request for remote backend %d: %s",
						conn->cancel_pid, pchomp(PQerrorMessage(conn->conn)))));
		conn->state = CONN_CLOSED;
		PoolCloseConn(conn);
		return;
	}
	if (task == NULL && conn->state == CONN_CONNECTING)
	{
		/*
		 * A failure that may pass keeps the tasks queued while the pool
		 * tries again: no server answered (refused, timed out), or it
		 * answered that it cannot take the connection now (starting up or
		 * shutting down: 57P03; out of connection slots or resources: class
		 * 53; a connection exception: class 08).  Any other answer (bad
		 * credentials, unknown database or role) fails the task the
		 * connection was opened for, with the server's SQLSTATE.
		 */
		char		sqlstate[6];
		char	   *message = ConnErrorMessage(conn->conn, sqlstate);

		if (sqlstate[0] == '\0' || strncmp(sqlstate, "08", 2) == 0 ||
			strncmp(sqlstate, "53", 2) == 0 || strcmp(sqlstate, "57P03") == 0)
		{
			PoolUnreachable(pool, message[0] ? message : "could not connect to the server");
			conn->state = CONN_CLOSED;
			PoolCloseConn(conn);
			return;
		}
		PoolRefused(pool, message);
		task = PoolTakeHeld(pool);
	}
	if (task != NULL)
	{
		TaskFailFromConn(task, conn->conn,
						 conn->state == CONN_CONNECTING ? "08001" : "08006");
		task->conn = NULL;
		conn->task = NULL;
		DispatcherTaskFinished(task);
	}
	conn->state = CONN_CLOSED;
	PoolCloseConn(conn);
}

/*
 * conn_refuse_unauthenticated closes conn, which the server accepted without
 * the user mapping's password although the submitter must use it, and fails
 * the task it was opened for.  Otherwise a role could act as another one
 * through trust or peer authentication, or a password file of the server.
 */
static void
conn_refuse_unauthenticated(Conn *conn)
{
	Task	   *task = conn->cancel_pid == 0 ? PoolTakeHeld(conn->pool) : NULL;

	if (task != NULL)
	{
		TaskFailWithDetail(task, "2F003",
						   "the server accepted the connection of the task without the password of its user mapping",
						   "Tasks of roles that are not superusers must authenticate with the password of their user mapping; the server used trust or peer authentication, or a password file of its own.",
						   "Require password authentication (scram-sha-256) for this user in the server's pg_hba.conf, or have a superuser set password_required 'false' on the user mapping.");
		DispatcherTaskFinished(task);
	}
	conn->state = CONN_CLOSED;
	PoolCloseConn(conn);
}

/*
 * conn_flush sends what libpq has buffered and returns false if the
 * connection broke.  Until everything is sent, conn also waits to write.
 */
static bool
conn_flush(Conn *conn)
{
	int			rc = PQflush(conn->conn);

	if (rc < 0)
		return false;
	conn->wait_events = WL_SOCKET_READABLE | (rc > 0 ? WL_SOCKET_WRITEABLE : 0);
	return true;
}

/*
 * ConnResetEarly starts the session reset of conn, whose task was just
 * assigned, while the task's start is being recorded: the remote resets
 * while the dispatcher commits.  Only ConnSendTask, after the commit, lets
 * the task's SQL follow, and finds the connection broken if sending failed.
 */
void
ConnResetEarly(Conn *conn)
{
	if (conn_needs_reset(conn))
		(void) conn_begin(conn, false);
}

/*
 * conn_needs_reset returns whether conn's session must be reset before its
 * task runs: a task ran since the last reset, or its application_name names
 * another task.  A pool with reset_session off never resets: each task
 * finds the session as the one before left it.
 */
static bool
conn_needs_reset(Conn *conn)
{
	if (!conn->pool->reset_session)
		return false;
	return conn->used || conn->appname_task != conn->task->id;
}

/*
 * ConnSendTask sends conn's task, once its start has been recorded: first,
 * if it needs them, the session reset and the application_name that names
 * the task, pipelined, then (once they are through) the task's SQL.
 */
void
ConnSendTask(Conn *conn)
{
	task_start_clock(conn->task);
	if (PQstatus(conn->conn) == CONNECTION_BAD)
		ConnLost(conn);
	else if (conn->state == CONN_RESETTING)
		return;					/* conn_reset_result sends it */
	else if (!conn_begin(conn, true))
		ConnLost(conn);
	else
		ConnPipeAhead(conn);
}

/*
 * ConnPipeAhead sends the tasks conn claimed ahead (their start recorded)
 * in the pipeline of the task it runs, each after a session reset of its
 * own and a sync, while the pool's tasks are short (PIPE_MAX_USECS): the
 * remote goes from one to the next without waiting for the dispatcher,
 * which reads their results as they come, also after a bookkeeping turn.
 * Tasks go only behind a task sent in a pipeline, on a connection that may
 * take tasks ahead of it (PoolTakesAhead: its task is not being cancelled
 * nor running long), and only while they may share a pipeline
 * (task_sql_kind) and are not cancelled; the others wait their turn,
 * unsent.
 */
void
ConnPipeAhead(Conn *conn)
{
	Pool	   *pool = conn->pool;
	bool		sent = false;

	if (dlist_is_empty(&conn->ahead) || conn->npiped >= pool->pipeline_depth ||
		!pool->reset_session || !conn->sql_pipelined ||
		(conn->state != CONN_RESETTING && conn->state != CONN_RUNNING) ||
		pool->run_usecs < 0 || pool->run_usecs > PIPE_MAX_USECS ||
		!PoolTakesAhead(conn, GetCurrentTimestamp()) ||
		task_sql_kind(conn->task) != TASK_SQL_SHAREABLE)
		return;

	while (!dlist_is_empty(&conn->ahead) && conn->npiped < pool->pipeline_depth)
	{
		Task	   *task = dlist_head_element(Task, node, &conn->ahead);

		if (task->cancel_reason != TASK_CANCEL_NONE || task_sql_kind(task) != TASK_SQL_SHAREABLE)
			break;
		dlist_delete(&task->node);
		conn->nahead--;
		dlist_push_tail(&conn->piped, &task->node);
		conn->npiped++;
		if (!conn_queue_task(conn, task, true, true))
		{
			ConnLost(conn);
			return;
		}
		sent = true;
	}
	if (sent && !conn_flush(conn))
		ConnLost(conn);
}

/*
 * conn_queue_task queues in conn's pipeline what task needs: with reset,
 * DISCARD ALL; the application_name naming it; a sync; then, with_sql, its
 * SQL and a sync of its own, so that it runs as the first statement of a
 * transaction of its own.  Returns false if the connection broke.
 */
static bool
conn_queue_task(Conn *conn, Task *task, bool reset, bool with_sql)
{
	return (!reset ||
			PQsendQueryParams(conn->conn, SESSION_RESET_SQL, 0, NULL, NULL, NULL, NULL, 0)) &&
		PQsendQueryParams(conn->conn,
						  psprintf("SET application_name = '" TASK_APPNAME_FORMAT "'", task->id),
						  0, NULL, NULL, NULL, NULL, 0) &&
		PQpipelineSync(conn->conn) &&
		(!with_sql ||
		 (PQsendQueryParams(conn->conn, task->sql, 0, NULL, NULL, NULL, NULL, 0) &&
		  PQpipelineSync(conn->conn)));
}

/*
 * conn_next_piped makes the first task in conn's pipeline its task, now
 * that the one before it has ended: the remote starts it at once.  Its
 * session reset's results come first.
 */
static void
conn_next_piped(Conn *conn)
{
	Task	   *task = dlist_container(Task, node, dlist_pop_head_node(&conn->piped));

	conn->npiped--;
	conn->task = task;
	conn->state = CONN_RESETTING;
	conn->sql_pipelined = true;
	conn->used = true;
	conn->reset_failed = false;
	conn->appname_task = task->id;
	task_start_clock(task);
}

/*
 * task_start_clock notes that task starts now, on its connection: its
 * started_at, and the deadline its timeout sets.
 */
static void
task_start_clock(Task *task)
{
	task->started_at = GetCurrentTimestamp();
	if (task->timeout > 0)
		task->deadline = task->started_at + task->timeout;
}

/*
 * ConnFailPiped ends the tasks in conn's pipeline as failed, with sqlstate
 * and message, or libpq's message for the connection if message is NULL:
 * the connection is closing or broke, and they may or may not have run.
 */
void
ConnFailPiped(Conn *conn, const char *sqlstate, const char *message)
{
	while (!dlist_is_empty(&conn->piped))
	{
		Task	   *task = dlist_container(Task, node, dlist_pop_head_node(&conn->piped));

		conn->npiped--;
		/* Sent, so it may have run: it counts as started (TaskResolveOutcome). */
		if (task->started_at == 0)
			task->started_at = GetCurrentTimestamp();
		if (message != NULL)
			TaskFail(task, sqlstate, message);
		else
			TaskFailFromConn(task, conn->conn, sqlstate);
		task->conn = NULL;
		DispatcherTaskFinished(task);
	}
}

/*
 * conn_begin sends the session reset conn needs before its task (DISCARD
 * ALL if a task ran since the last one, and the application_name naming
 * the task), or if it needs none the task's SQL.  With send_sql (its start
 * is recorded), a task of one statement goes in the same pipeline.
 * Returns false if the connection broke.
 */
static bool
conn_begin(Conn *conn, bool send_sql)
{
	Task	   *task = conn->task;
	bool		reset = conn->used;

	if (!conn_needs_reset(conn))
		return conn_send_sql(conn);
	conn->state = CONN_RESETTING;
	conn->appname_task = task->id;
	conn->sql_pipelined = send_sql && task_sql_kind(task) != TASK_SQL_SEVERAL;
	if (conn->sql_pipelined)
		conn->used = true;
	return PQenterPipelineMode(conn->conn) &&
		conn_queue_task(conn, task, reset, conn->sql_pipelined) &&
		conn_flush(conn);
}

/*
 * conn_send_sql sends the SQL of conn's task, to be read in single-row
 * mode, and returns false if the connection broke.
 */
static bool
conn_send_sql(Conn *conn)
{
	conn->state = CONN_RUNNING;
	conn->used = true;
	conn->sql_pipelined = false;
	return PQsendQuery(conn->conn, conn->task->sql) &&
		PQsetSingleRowMode(conn->conn) && conn_flush(conn);
}

/*
 * conn_reset_result handles one result of conn's session reset, and once
 * the reset is through goes on with the task: reads the results of its SQL
 * if that followed in the pipeline, or else sends it (resetting again if it
 * is another task than the one the reset named), unless the reset failed
 * (then the task ends with that error, unsent).  A reset begun early for a
 * task that did not start leaves conn idle.  Returns false if the
 * connection broke, or a reset without a task failed.
 */
static bool
conn_reset_result(Conn *conn, PGresult *res)
{
	if (res == NULL)
		return true;			/* the end of one statement's results */
	if (PQresultStatus(res) == PGRES_FATAL_ERROR)
	{
		if (conn->task == NULL)
			return false;
		if (conn->sql_pipelined)
		{
			/*
			 * The task runs all the same, after the sync: its own outcome is
			 * recorded, and the session it ran in is not used again.
			 */
			ereport(LOG,
					(errmsg("task_fdw could not reset the session of task " INT64_FORMAT " before it ran: %s",
							conn->task->id, pchomp(PQresultErrorMessage(res)))));
			conn->reset_failed = true;
			/* A cancel request the reset took is sent again for the task. */
			if (conn->task->cancel_reason != TASK_CANCEL_NONE)
				conn->task->cancel_at = GetCurrentTimestamp();
		}
		else
			capture_error(conn->task, res, conn->conn);
	}
	if (PQresultStatus(res) != PGRES_PIPELINE_SYNC)
		return true;
	if (conn->sql_pipelined)
	{
		/* The task's results come next: read them row by row. */
		conn->state = CONN_RUNNING;
		return PQsetSingleRowMode(conn->conn);
	}
	if (!PQexitPipelineMode(conn->conn))
		return false;
	if (conn->task == NULL)
	{
		conn->used = false;
		conn->state = CONN_IDLE;
		conn->wait_events = WL_SOCKET_READABLE;
		return true;
	}
	if (conn->task->final_state != NULL)
	{
		conn->state = CONN_RUNNING;
		return true;
	}
	conn->used = false;
	return conn_begin(conn, true);
}

/*
 * conn_io flushes, reads and consumes results of conn's running command
 * for as long as that can be done without blocking.
 */
static void
conn_io(Conn *conn, uint32 events)
{
	PGresult   *res;

	if ((events & WL_SOCKET_WRITEABLE) && !conn_flush(conn))
	{
		ConnLost(conn);
		return;
	}
	if ((events & WL_SOCKET_READABLE) && !PQconsumeInput(conn->conn))
	{
		ConnLost(conn);
		return;
	}

	while (!PQisBusy(conn->conn))
	{
		res = PQgetResult(conn->conn);
		if (conn->state == CONN_RESETTING)
		{
			bool		ok = conn_reset_result(conn, res);

			PQclear(res);
			if (!ok)
			{
				ConnLost(conn);
				return;
			}
			if (conn->state == CONN_IDLE)
				return;
			continue;
		}
		if (res == NULL)
		{
			/* A pipelined task is through after its sync. */
			if (PQpipelineStatus(conn->conn) != PQ_PIPELINE_OFF)
				continue;
			conn_task_done(conn, true);
			return;
		}
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
		{
			PQclear(res);
			if (dlist_is_empty(&conn->piped) && !PQexitPipelineMode(conn->conn))
			{
				ConnLost(conn);
				return;
			}
			/* The next task in the pipeline: its results may be here too. */
			if (conn_task_done(conn, true))
				continue;
			return;
		}
		if (PQresultStatus(res) == PGRES_COPY_IN ||
			PQresultStatus(res) == PGRES_COPY_OUT ||
			PQresultStatus(res) == PGRES_COPY_BOTH)
		{
			/* There is no client to copy from or to; the session cannot go on. */
			PQclear(res);
			TaskFailWithDetail(conn->task, "0A000",
							   "COPY from stdin or to stdout is not supported in a task",
							   "A task has no client to read from or write to.",
							   "COPY to or from a file or program on the server, or use INSERT ... SELECT.");
			conn_task_done(conn, false);
			return;
		}
		capture_result(conn->task, res);
		PQclear(res);
	}
	/* Tasks claimed ahead take the places of those that ended. */
	ConnPipeAhead(conn);
}

/*
 * conn_task_done ends conn's task once its last result has been read, and
 * keeps conn for the next task if reusable and its session is clean.
 * Returns true if the next task in conn's pipeline is now its task, whose
 * results are to be read next; otherwise conn may have been closed.
 */
static bool
conn_task_done(Conn *conn, bool reusable)
{
	Task	   *task = conn->task;

	/*
	 * Work left in an open transaction is rolled back when the session is
	 * closed below: the task did not do what it says.
	 */
	if (PQtransactionStatus(conn->conn) == PQTRANS_INTRANS)
		TaskFailWithDetail(task, "25001",
						   "task left a transaction open, and its work was rolled back",
						   NULL,
						   "End the task's SQL with COMMIT, or leave out BEGIN.");
	if (task->final_state == NULL)
		task->final_state = TFDW_STATE_DONE;
	task->conn = NULL;
	conn->task = NULL;
	DispatcherTaskFinished(task);
	PoolNoteRunTime(conn->pool, task->finished_at - task->started_at);

	/*
	 * Tasks already in the pipeline run on this session whatever it is
	 * like: the next one is under way, after a reset of its own.
	 */
	if (!dlist_is_empty(&conn->piped) && reusable && PQstatus(conn->conn) == CONNECTION_OK)
	{
		conn_next_piped(conn);
		return true;
	}

	/*
	 * A task that left a transaction open, or a broken session, is not
	 * reused; nor is a session that a late cancel request could still reach,
	 * nor one whose client encoding a task changed, as results must arrive
	 * in the database's encoding (a session kept without a reset would send
	 * the next task's in the other one).
	 */
	if (!reusable || task->cancel_reason != TASK_CANCEL_NONE || conn->reset_failed ||
		PQstatus(conn->conn) != CONNECTION_OK ||
		PQtransactionStatus(conn->conn) != PQTRANS_IDLE ||
		PQclientEncoding(conn->conn) != GetDatabaseEncoding() ||
		conn->pool->invalidated)
	{
		conn->state = CONN_CLOSED;
		PoolCloseConn(conn);
		return false;
	}
	conn->state = CONN_IDLE;
	conn->wait_events = WL_SOCKET_READABLE;

	/* The next task claimed ahead goes at once, without waiting for a turn. */
	if (!dlist_is_empty(&conn->ahead))
	{
		conn->task = dlist_container(Task, node, dlist_pop_head_node(&conn->ahead));
		conn->nahead--;
		ConnSendTask(conn);
	}
	return false;
}

/*
 * ConnReleaseAhead hands the tasks conn claimed ahead back to the queue:
 * all of them, or only those cancelled since.
 */
void
ConnReleaseAhead(Conn *conn, bool all)
{
	dlist_mutable_iter iter;
	int			released = 0;

	dlist_foreach_modify(iter, &conn->ahead)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		if (!all && task->cancel_reason == TASK_CANCEL_NONE)
			continue;
		dlist_delete(&task->node);
		conn->nahead--;
		task_unstart(task);
		released++;
	}
	if (released > 0 && all && conn->task != NULL)
		ereport(DEBUG1,
				(errmsg_internal("task_fdw: %d tasks claimed ahead on a connection to server \"%s\" go back to the queue, as task " INT64_FORMAT " before them runs long",
								 released, conn->pool->server_name, conn->task->id)));
}

/*
 * ConnStalledAt returns when the task conn runs will have run so long that
 * no task should wait behind it, claimed ahead, or 0 if it runs none:
 * after task_fdw.claim_ahead_stall, or four times as long as the pool's
 * tasks usually take if that is longer, as other connections may be free
 * for them.
 */
TimestampTz
ConnStalledAt(Conn *conn)
{
	if (conn->task == NULL || conn->state == CONN_ASSIGNED)
		return 0;
	return conn->task->started_at +
		Max((int64) TaskFdwClaimAheadStall * 1000, 4 * conn->pool->run_usecs);
}

/*
 * task_unstart queues task, whose start was recorded but which was never
 * sent, to have its start undone: it is recorded as queued again, as it
 * was (or as cancelled, if its submitter cancelled it meanwhile).  It no
 * longer counts as started, nor as finished.
 */
static void
task_unstart(Task *task)
{
	Pool	   *pool = task->pool;

	task->conn = NULL;
	task->attempts--;
	task->started_at = 0;
	task->final_state = TFDW_STATE_QUEUED;
	task->resolved = true;
	pool->tasks_started--;
	DispatcherRecordLater(task);
}

/*
 * capture_result records one result of a task's SQL; the last one wins.
 */
static void
capture_result(Task *task, PGresult *res)
{
	char	   *tuples;

	switch (PQresultStatus(res))
	{
		case PGRES_SINGLE_TUPLE:
			capture_row(task, res);
			break;
		case PGRES_TUPLES_OK:
			if (!task->in_result)
			{
				/* A row set with no rows. */
				resetStringInfo(&task->result);
				appendStringInfoChar(&task->result, '[');
				task->rows = 0;
				task->result_rows = 0;
				task->truncated = false;
				task->result_has_json = false;
			}
			appendStringInfoChar(&task->result, ']');
			task->in_result = false;
			task->has_result = true;
			task->has_rows = true;
			task->command_tag = task_strdup(task, PQcmdStatus(res));
			break;
		case PGRES_COMMAND_OK:
			task->has_result = false;
			task->command_tag = task_strdup(task, PQcmdStatus(res));
			tuples = PQcmdTuples(res);
			task->has_rows = tuples[0] != '\0';
			task->rows = task->has_rows ? strtoi64(tuples, NULL, 10) : 0;
			break;
		case PGRES_EMPTY_QUERY:
			task->has_result = false;
			task->has_rows = false;
			task->command_tag = NULL;
			break;
		default:
			capture_error(task, res, task->conn->conn);
			break;
	}
}

/*
 * capture_row appends one row of a row set to the task's JSON result, or
 * only counts it once the row or byte cap is reached.
 */
static void
capture_row(Task *task, PGresult *res)
{
	int			ncols = PQnfields(res);
	int			col;

	if (!task->in_result)
	{
		resetStringInfo(&task->result);
		appendStringInfoChar(&task->result, '[');
		task->in_result = true;
		task->rows = 0;
		task->result_rows = 0;
		task->truncated = false;
		task->result_has_json = false;
		for (col = 0; col < ncols; col++)
			if (PQftype(res, col) == JSONOID || PQftype(res, col) == JSONBOID)
				task->result_has_json = true;
	}
	task->rows++;
	if (task->truncated || task->result_rows >= TaskFdwMaxResultRows ||
		!row_fits(task, res))
	{
		task->truncated = true;
		return;
	}

	if (task->result_rows > 0)
		appendStringInfoChar(&task->result, ',');
	appendStringInfoChar(&task->result, '{');
	for (col = 0; col < ncols; col++)
	{
		if (col > 0)
			appendStringInfoChar(&task->result, ',');
		escape_json(&task->result, PQfname(res, col));
		appendStringInfoChar(&task->result, ':');
		append_json_value(&task->result, res, col);
	}
	appendStringInfoChar(&task->result, '}');
	task->result_rows++;
}

/*
 * row_fits returns whether res's row, as JSON, fits in what is left of
 * task_fdw.max_result_bytes in the task's result.  Only a row that fits is
 * kept, so the result never grows past the limit, however large one row.
 * The row's bytes are counted as if each needed a \u escape, and only a
 * row that might not fit that way is measured exactly.
 */
static bool
row_fits(Task *task, PGresult *res)
{
	int			ncols = PQnfields(res);
	int64		room = (int64) TaskFdwMaxResultBytes - task->result.len;
	int64		bytes = 2;		/* {} */
	int			col;

	for (col = 0; col < ncols; col++)
		bytes += PQgetlength(res, 0, col) + strlen(PQfname(res, col)) + 8;
	if (bytes * 6 <= room)
		return true;
	if (bytes > room)
		return false;
	bytes = 2;
	for (col = 0; col < ncols; col++)
		bytes += escaped_length(PQgetvalue(res, 0, col)) +
			escaped_length(PQfname(res, col)) + 8;
	return bytes <= room;
}

/*
 * escaped_length returns how many bytes s takes as a JSON string, quotes
 * excluded, at most.
 */
static int64
escaped_length(const char *s)
{
	int64		n = 0;

	for (; *s; s++)
	{
		if (*s == '"' || *s == '\\' || *s == '\b' || *s == '\f' ||
			*s == '\n' || *s == '\r' || *s == '\t')
			n += 2;
		else if ((unsigned char) *s < ' ')
			n += 6;
		else
			n++;
	}
	return n;
}

/*
 * append_json_value appends field col of res's row as JSON: numbers and
 * booleans as such, json and jsonb as they are, anything else as a string.
 */
static void
append_json_value(StringInfo buf, PGresult *res, int col)
{
	const char *value;

	if (PQgetisnull(res, 0, col))
	{
		appendStringInfoString(buf, "null");
		return;
	}
	value = PQgetvalue(res, 0, col);
	switch (PQftype(res, col))
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
			if (is_json_number(value))
				appendStringInfoString(buf, value);
			else
				escape_json(buf, value);	/* NaN, Infinity */
			break;
		case BOOLOID:
			appendStringInfoString(buf, value[0] == 't' ? "true" : "false");
			break;
		case JSONOID:
		case JSONBOID:
			appendStringInfoString(buf, value);
			break;
		default:
			escape_json(buf, value);
			break;
	}
}

/*
 * is_json_number returns whether s is a number as JSON writes numbers, and
 * one that jsonb can hold: at most numeric's 131072 digits before the
 * point and 16383 after it, and, with an exponent, a short mantissa and an
 * exponent of at most three digits (numeric's limit is 1000).  What a
 * PostgreSQL server sends always is; anything else goes as a string.
 */
static bool
is_json_number(const char *s)
{
	const char *p = s;
	const char *start;

	if (*p == '-')
		p++;
	if (!isdigit((unsigned char) *p))
		return false;
	if (*p == '0' && isdigit((unsigned char) p[1]))
		return false;
	start = p;
	while (isdigit((unsigned char) *p))
		p++;
	if (p - start > 131072)
		return false;
	if (*p == '.')
	{
		p++;
		if (!isdigit((unsigned char) *p))
			return false;
		start = p;
		while (isdigit((unsigned char) *p))
			p++;
		if (p - start > 16383)
			return false;
	}
	if (*p == 'e' || *p == 'E')
	{
		if (p - s > 32)
			return false;
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!isdigit((unsigned char) *p))
			return false;
		start = p;
		while (isdigit((unsigned char) *p))
			p++;
		if (p - start > 3)
			return false;
	}
	return *p == '\0';
}

/*
 * Longest error field or command tag kept, in bytes.  Results and notices
 * have limits of their own; a remote error can quote a value of any size
 * (invalid input syntax for type integer: "...").
 */
#define MAX_FIELD_BYTES		(64 * 1024)

/*
 * task_strdup copies s into the task's memory context (NULL stays NULL),
 * clipped to MAX_FIELD_BYTES at a character boundary.
 */
static char *
task_strdup(Task *task, const char *s)
{
	MemoryContext old;
	char	   *copy;
	int			len;

	if (s == NULL)
		return NULL;
	len = strlen(s);
	if (len > MAX_FIELD_BYTES)
		len = pg_mbcliplen(s, len, MAX_FIELD_BYTES);
	old = MemoryContextSwitchTo(task->cxt);
	copy = pnstrdup(s, len);
	MemoryContextSwitchTo(old);
	return copy;
}

/*
 * replace_invalid_bytes replaces, in place, each byte of s that does not
 * start a valid character of the database's encoding by '?', and returns
 * how many it replaced.  ASCII bytes are valid in every server encoding,
 * so JSON text stays JSON.
 */
static int
replace_invalid_bytes(char *s)
{
	int			encoding = GetDatabaseEncoding();
	int			len = s ? strlen(s) : 0;
	int			replaced = 0;

	while (len > 0)
	{
		int			valid = pg_encoding_verifymbstr(encoding, s, len);

		if (valid >= len)
			break;
		s[valid] = '?';
		s += valid + 1;
		len -= valid + 1;
		replaced++;
	}
	return replaced;
}

/*
 * make_text_valid makes the text a task captured valid in the database's
 * encoding.  The dispatcher asks the remote for that encoding, but a task
 * may set another client encoding, and the remote reports the change only
 * once the task's statements are over, or not at all if the task set it
 * back.  So all of it is checked, which costs little next to the rest of a
 * task's bookkeeping.  The store must hold valid text: bytes that are not
 * are replaced by '?', and a message among the task's notices says so.
 */
static void
make_text_valid(Task *task)
{
	int			replaced = 0;
	ListCell   *lc;

	if (task->has_result)
		replaced += replace_invalid_bytes(task->result.data);
	replaced += replace_invalid_bytes(task->command_tag);
	replaced += replace_invalid_bytes(task->error);
	replaced += replace_invalid_bytes(task->sqlstate);
	replaced += replace_invalid_bytes(task->error_detail);
	replaced += replace_invalid_bytes(task->error_hint);
	replaced += replace_invalid_bytes(task->error_context);
	foreach(lc, task->notices)
		replaced += replace_invalid_bytes((char *) lfirst(lc));
	if (replaced > 0)
		task->notices = lappend(task->notices,
								psprintf(replaced == 1 ?
										 "task_fdw: %d byte of the task's output was not valid in encoding %s and was stored as \"?\"" :
										 "task_fdw: %d bytes of the task's output were not valid in encoding %s and were stored as \"?\"",
										 replaced, GetDatabaseEncodingName()));
}

/*
 * capture_error records a failed result's error fields on the task; only
 * the first error of a task is kept, as later statements never ran.
 */
static void
capture_error(Task *task, PGresult *res, PGconn *pgconn)
{
	const char *message;
	const char *sqlstate;

	if (task->final_state != NULL)
		return;
	message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (message == NULL)
	{
		TaskFailFromConn(task, pgconn, "08006");
		return;
	}
	task->final_state = TFDW_STATE_FAILED;
	task->error = task_strdup(task, message);
	sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	task->sqlstate = task_strdup(task, sqlstate ? sqlstate : TFDW_NO_SQLSTATE);
	task->error_detail = task_strdup(task, PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
	task->error_hint = task_strdup(task, PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
	task->error_context = task_strdup(task, PQresultErrorField(res, PG_DIAG_CONTEXT));
	task->has_result = false;
	task->has_rows = false;
	task->command_tag = NULL;
}

/*
 * TaskFail ends task as failed with sqlstate and message, unless it already
 * failed.
 */
void
TaskFail(Task *task, const char *sqlstate, const char *message)
{
	if (task->final_state != NULL && strcmp(task->final_state, TFDW_STATE_FAILED) == 0)
		return;
	task->final_state = TFDW_STATE_FAILED;
	task->error = task_strdup(task, message);
	task->sqlstate = task_strdup(task, sqlstate);
	task->has_result = false;
	task->has_rows = false;
	task->command_tag = NULL;
}

/*
 * TaskFailWithDetail ends task as failed with sqlstate, message, detail and
 * hint (either may be NULL), unless it already failed.
 */
void
TaskFailWithDetail(Task *task, const char *sqlstate, const char *message,
				   const char *detail, const char *hint)
{
	if (task->final_state != NULL && strcmp(task->final_state, TFDW_STATE_FAILED) == 0)
		return;
	TaskFail(task, sqlstate, message);
	task->error_detail = task_strdup(task, detail);
	task->error_hint = task_strdup(task, hint);
}

/*
 * ConnErrorMessage returns libpq's message for pgconn without the SQLSTATE
 * and location that verbose errors add, and stores the SQLSTATE the server
 * sent, if any, in sqlstate (six bytes; empty if none).  Connections are
 * made with verbose errors so that the SQLSTATE of a refused connection is
 * known.
 */
char *
ConnErrorMessage(PGconn *pgconn, char *sqlstate)
{
	char	   *raw = pstrdup(PQerrorMessage(pgconn));
	StringInfoData buf;
	char	   *line;
	char	   *save;

	sqlstate[0] = '\0';
	initStringInfo(&buf);
	for (line = strtok_r(raw, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char	   *sep = strstr(line, ":  ");

		if (strncmp(line, "LOCATION:", 9) == 0)
			continue;
		if (buf.len > 0)
			appendStringInfoChar(&buf, '\n');
		/* "FATAL:  28P01: message" -> "FATAL:  message" */
		if (sep && strlen(sep) > 10 && sep[8] == ':' && sep[9] == ' ' &&
			strspn(sep + 3, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5)
		{
			if (sqlstate[0] == '\0')
				strlcpy(sqlstate, sep + 3, 6);
			appendBinaryStringInfo(&buf, line, sep + 3 - line);
			appendStringInfoString(&buf, sep + 10);
		}
		else
			appendStringInfoString(&buf, line);
	}
	return buf.data;
}

/*
 * TaskFailFromConn ends task as failed with libpq's message for pgconn, and
 * the SQLSTATE the server sent, or else sqlstate.
 */
void
TaskFailFromConn(Task *task, PGconn *pgconn, const char *sqlstate)
{
	char		server_state[6];
	char	   *message = ConnErrorMessage(pgconn, server_state);

	if (message[0] == '\0')
		message = "connection to the server was lost";
	TaskFail(task, server_state[0] ? server_state : sqlstate, message);
}

/*
 * receive_notice keeps a notice, warning or info message the remote sends
 * while conn runs a task, within task_fdw.max_notices and
 * task_fdw.max_notice_bytes; it drops others, which libpq would otherwise
 * print to the server log.
 */
static void
receive_notice(void *arg, const PGresult *res)
{
	Conn	   *conn = (Conn *) arg;
	Task	   *task = conn->task;
	const char *severity;
	const char *message;
	char	   *notice;
	MemoryContext old;

	if (task == NULL || conn->state != CONN_RUNNING)
		return;
	severity = PQresultErrorField(res, PG_DIAG_SEVERITY);
	message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (message == NULL)
		return;
	if (list_length(task->notices) >= TaskFdwMaxNotices ||
		task->notice_bytes + strlen(message) > TaskFdwMaxNoticeBytes)
	{
		task->notices_dropped++;
		return;
	}
	old = MemoryContextSwitchTo(task->cxt);
	notice = psprintf("%s:  %s", severity ? severity : "NOTICE", message);
	task->notices = lappend(task->notices, notice);
	task->notice_bytes += strlen(notice);
	MemoryContextSwitchTo(old);
}

/*
 * conn_cancel_io reads the answer to a canceller's cancel request, then
 * closes the canceller.
 */
static void
conn_cancel_io(Conn *conn, uint32 events)
{
	if (((events & WL_SOCKET_WRITEABLE) && !conn_flush(conn)) ||
		((events & WL_SOCKET_READABLE) && !PQconsumeInput(conn->conn)))
	{
		ConnLost(conn);
		return;
	}
	while (!PQisBusy(conn->conn))
	{
		PGresult   *res = PQgetResult(conn->conn);

		if (res == NULL)
		{
			conn->state = CONN_CLOSED;
			PoolCloseConn(conn);
			return;
		}
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			ereport(LOG,
					(errmsg("task_fdw could not cancel remote backend %d: %s",
							conn->cancel_pid, pchomp(PQresultErrorMessage(res)))));
		PQclear(res);
	}
}

/*
 * is_retryable returns whether task's failure is worth another attempt:
 * a lost or failed connection (class 08), a serialization failure or
 * deadlock (class 40), or a code listed in its retry_sqlstates.
 */
static bool
is_retryable(Task *task)
{
	ListCell   *lc;

	if (task->sqlstate == NULL)
		return false;
	if (strncmp(task->sqlstate, "08", 2) == 0 || strncmp(task->sqlstate, "40", 2) == 0)
		return true;
	foreach(lc, task->retry_sqlstates)
		if (strcmp((char *) lfirst(lc), task->sqlstate) == 0)
			return true;
	return false;
}

/*
 * format_usecs returns a duration for messages: "200 ms", "5 s", "1.5 s".
 */
static char *
format_usecs(int64 usecs)
{
	if (usecs < USECS_PER_SEC || usecs % 1000 != 0)
		return psprintf(INT64_FORMAT " ms", usecs / 1000);
	if (usecs % USECS_PER_SEC == 0)
		return psprintf(INT64_FORMAT " s", usecs / USECS_PER_SEC);
	return psprintf("%.3f s", (double) usecs / USECS_PER_SEC);
}

/*
 * TaskResolveOutcome decides what to record for a finished task, and returns
 * the state: a remote cancel the submitter asked for makes it cancelled, one
 * its timeout caused a timeout failure, and a retryable failure with
 * attempts left queues it again at task->retry_at (at once for an
 * interruption with on_interrupt 'retry').  A task that ended some other
 * way keeps its real outcome.
 */
const char *
TaskResolveOutcome(Task *task)
{
	bool		cancelled_remotely;
	MemoryContext old;

	if (task->resolved)
		return task->final_state;
	task->resolved = true;
	old = MemoryContextSwitchTo(task->cxt);
	make_text_valid(task);
	if (task->notices_dropped > 0)
		task->notices = lappend(task->notices,
								psprintf("task_fdw: %d more messages were not kept",
										 task->notices_dropped));
	if (task->final_state == NULL)
		TaskFail(task, "XX000", "task ended without an outcome");
	if (strcmp(task->final_state, TFDW_STATE_FAILED) != 0)
	{
		MemoryContextSwitchTo(old);
		return task->final_state;
	}

	cancelled_remotely = task->sqlstate && strcmp(task->sqlstate, "57014") == 0;
	if (task->cancel_reason == TASK_CANCEL_USER && cancelled_remotely)
		task->final_state = TFDW_STATE_CANCELLED;
	else if (task->cancel_reason == TASK_CANCEL_TIMEOUT && cancelled_remotely)
	{
		task->error_detail = psprintf("The remote server reported: %s", task->error);
		task->error = psprintf("task timed out after %s", format_usecs(task->timeout));
	}
	else if (task->started_at == 0)
	{
		/*
		 * It never started (its server was dropped or stayed unreachable,
		 * its user mapping went away): trying again would not help.
		 */
	}
	else if (task->retry_interrupted && task->sqlstate &&
			 (strncmp(task->sqlstate, "57P0", 4) == 0 ||
			  strncmp(task->sqlstate, "08", 2) == 0))
	{
		/*
		 * Interrupted (a shutdown or crash of either side, or a lost
		 * connection), and allowed to run again, a bounded number of times:
		 * a statement that ends its own session or crashes its server must
		 * not do so forever.
		 */
		if (task->attempts < Max(task->max_attempts, TaskFdwMaxInterruptedAttempts))
		{
			task->retry_at = GetCurrentTimestamp();
			task->final_state = TFDW_STATE_QUEUED;
		}
		else if (task->error_hint == NULL)
			task->error_hint = pstrdup(TFDW_INTERRUPTED_HINT);
	}
	else if (task->cancel_reason == TASK_CANCEL_NONE &&
			 task->attempts < task->max_attempts && is_retryable(task))
	{
		int64		delay = task->retry_delay;
		int64		cap = Max(task->retry_delay, USECS_PER_HOUR);
		int			i;

		/* Exponential backoff, doubling up to an hour (or retry_delay). */
		for (i = 1; i < task->attempts && delay < cap; i++)
			delay *= 2;
		task->retry_at = GetCurrentTimestamp() + Min(delay, cap);
		task->final_state = TFDW_STATE_QUEUED;
	}
	MemoryContextSwitchTo(old);
	return task->final_state;
}