/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		  The dispatcher background worker of one database: its event loop.
 *
 * Each turn of the loop waits once, on the latch and every pooled
 * connection's socket together (one WaitEventSet), advances the connections
 * that are ready, then does all bookkeeping in one short transaction:
 * record finished tasks, look for running tasks their submitters cancelled,
 * send the cancel requests that are due (cancels and timeouts), find pools
 * with queued tasks (when woken by a commit, a scheduled time or the
 * periodic recheck), claim as many as the pools can run, and record their
 * start.  After the commit it sends the started tasks, and the tasks claimed
 * ahead go in their connection's pipeline.  Expired finished
 * tasks are removed in small batches, one short transaction per turn at
 * most.  Nothing in the loop sleeps or blocks in libpq: connections, and the
 * cancellers that carry cancel requests, are all non-blocking.  Before it
 * waits, the loop publishes the status of the pools if it changed (stats.c).
 *
 * IDENTIFICATION
 *		  src/dispatcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "compat.h"
#include "dispatcher.h"

#define MAX_EVENTS	64

/* A finished task whose row is locked is recorded again after this long. */
#define DEFERRED_RETRY_MS	100
/*
 * Outcomes are recorded together: once a task finishes, the dispatcher waits
 * up to this long for the tasks that started with it on other connections
 * (those running for less than this long) before recording them all in one
 * transaction.
 */
#define GATHER_MS			3
/* A cancel request is sent again this often while the task still runs. */
#define CANCEL_RESEND_MS	1000
/* An exiting dispatcher waits this long at most for its cancel requests. */
#define EXIT_CANCEL_MS		5000
/* The outcome of a task that ran, or was sent, when the dispatcher exited */
#define SHUTDOWN_INTERRUPTED \
	"task was interrupted: the dispatcher was shut down while it ran, " \
	"and the remote server may or may not have completed it"
/* Retention removes at most this many tasks per transaction. */
#define PURGE_BATCH			500

PGDLLEXPORT void TaskFdwDispatcherMain(Datum main_arg);

static DispatcherSlot *my_slot = NULL;
static MemoryContext TaskContext = NULL;

static dlist_head finished = DLIST_STATIC_INIT(finished); /* outcome to record */
static dlist_head deferred = DLIST_STATIC_INIT(deferred); /* row was locked */

static WaitEventSet *wait_set = NULL;
static bool conns_changed = true;	/* wait_set must be rebuilt */
static bool discover = true;	/* look for pools with queued tasks */
static bool check_cancels = false;	/* look for cancelled running tasks */
static TimestampTz next_recheck = 0;
static TimestampTz next_run_at = 0; /* next scheduled task, or 0 */
static TimestampTz deferred_retry_at = 0;
static TimestampTz next_purge = 0;
static TimestampTz last_activity = 0;
static TimestampTz store_retry_at = 0;	/* the store was locked by others */
static TimestampTz first_finished_at = 0;	/* of the unrecorded outcomes */
static TimestampTz orphans_retry_at = 0;	/* tasks an earlier dispatcher left
											 * running are locked: try again
											 * then, or 0 */
static int	orphans_failed = 0;	/* recorded, not logged yet */
static int	orphans_requeued = 0;
static char *my_dbname = NULL;

static void dispatcher_exit(int code, Datum arg);
static void dispatcher_loop(void);
static void advance_ready(WaitEvent *events, int nevents);
static void take_hints(void);
static void recover_orphans(TimestampTz now);
static bool orphans_due(TimestampTz now);
static bool after_recovery_commit(void);
static bool bookkeeping_needed(TimestampTz now);
static bool gathering(TimestampTz now);
static void bookkeeping(TimestampTz now);
static void expire_connects(TimestampTz now);
static void update_wait_set(void);
static long next_timeout(TimestampTz now);
static bool dispatcher_idle(void);
static void dispatcher_shutdown(void);
static List *running_tasks(bool ahead);
static bool conn_runs_task(Conn *conn);
static void release_ahead(TimestampTz now, bool cancelled);
static TimestampTz cancel_due_at(Task *task);
static bool cancels_due(TimestampTz now);
static void start_cancel(Task *task);
static void send_due_cancels(List *running, TimestampTz now);
static void record_finished(void);
static void purge_expired(TimestampTz now);
static bool begin_transaction(TimestampTz now);
static void cancel_running(void);
static bool conn_is_local(Conn *conn);
static void wait_for_cancellers(void);
static void dispatcher_store_gone(void);

/*
 * DispatcherNewTask creates a task held by pool, in its own memory context.
 */
Task *
DispatcherNewTask(Pool *pool, int64 id, const char *sql)
{
	MemoryContext cxt = AllocSetContextCreate(TaskContext, "task_fdw task",
											  ALLOCSET_SMALL_SIZES);
	Task	   *task = MemoryContextAllocZero(cxt, sizeof(Task));
	MemoryContext old = MemoryContextSwitchTo(cxt);

	task->id = id;
	task->sql = pstrdup(sql);
	task->cxt = cxt;
	task->pool = pool;
	initStringInfo(&task->result);
	MemoryContextSwitchTo(old);
	return task;
}

/*
 * DispatcherTaskFinished stamps task's end and queues its outcome to be
 * recorded.
 */
void
DispatcherTaskFinished(Task *task)
{
	task->pool->tasks_finished++;
	DispatcherRecordLater(task);
}

/*
 * DispatcherRecordLater stamps task's end and queues what TaskResolveOutcome
 * says of it to be recorded, without counting it as finished: a task handed
 * back unsent has not run.
 */
void
DispatcherRecordLater(Task *task)
{
	task->finished_at = GetCurrentTimestamp();
	if (dlist_is_empty(&finished))
		first_finished_at = task->finished_at;
	dlist_push_tail(&finished, &task->node);
	StatsMarkChanged();
}

/*
 * DispatcherConnChanged notes that a connection was added, removed or
 * changed sockets, so the wait set must be rebuilt.
 */
void
DispatcherConnChanged(void)
{
	conns_changed = true;
	StatsMarkChanged();
}

/*
 * dispatcher_exit closes the pooled connections and frees the slot.
 */
static void
dispatcher_exit(int code, Datum arg)
{
	StatsDetach();
	PoolCloseAll();
	if (my_slot)
		TaskFdwSlotDetach(my_slot, false);
}

/*
 * Settings the dispatcher's own transactions run with, whatever ALTER
 * DATABASE or ALTER ROLE SET says for the database.  The dispatcher has no
 * way to recover from an error: an error in its bookkeeping ends it, and
 * with it every running task, again at each restart.
 */
static const struct
{
	const char *name;
	const char *value;
}			dispatcher_settings[] =
{
	/* Its statements name everything in full; nothing may stand in anyway. */
	{"search_path", "pg_catalog, pg_temp"},

	/*
	 * Its statements touch a few rows each through the task store's indexes,
	 * with generic plans made once.  Made while the store is small (a new
	 * installation), a plan would otherwise scan the whole table or hash it,
	 * and keep doing so as the table grows until the next ANALYZE.
	 */
	{"enable_seqscan", "off"},
	{"enable_hashjoin", "off"},
	{"enable_mergejoin", "off"},

	/*
	 * It writes task rows that sessions update and delete concurrently: it
	 * must be able to write, and handles concurrent changes itself, as read
	 * committed lets it.  Its transactions are short and never idle.
	 */
	{"default_transaction_read_only", "off"},
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_deferrable", "off"},
	{"statement_timeout", "0"},
	{"lock_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	TFDW_VERSION_SETTINGS

	/*
	 * It runs as the bootstrap superuser, not as a role ALTER DATABASE ...
	 * SET role names (PUBLIC has no privilege on the task store).
	 */
	{"role", "none"},

	/*
	 * It reads interval options of servers (connect_retry_timeout) as the
	 * validator did, in the postgres style.
	 */
	{"IntervalStyle", "postgres"},
};

/*
 * TaskFdwDispatcherMain is the entry point of a dispatcher; its argument is
 * the OID of the database it serves.
 */
void
TaskFdwDispatcherMain(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	bool		installed;
	int			i;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("task_fdw dispatcher");
	for (i = 0; i < lengthof(dispatcher_settings); i++)
		SetConfigOption(dispatcher_settings[i].name, dispatcher_settings[i].value,
						PGC_SUSET, PGC_S_OVERRIDE);

	my_slot = TaskFdwSlotAttach(dboid);
	if (my_slot == NULL)
	{
		ereport(DEBUG1,
				(errmsg("task_fdw dispatcher for database %u is already running", dboid)));
		proc_exit(0);
	}
	before_shmem_exit(dispatcher_exit, (Datum) 0);

	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("task_fdw", true));
	CommitTransactionCommand();
	if (!installed)
	{
		/* Nothing to do here, now or after a restart. */
		TaskFdwSlotDetach(my_slot, true);
		my_slot = NULL;
		proc_exit(0);
	}

	TaskContext = AllocSetContextCreate(TopMemoryContext, "task_fdw tasks",
										ALLOCSET_DEFAULT_SIZES);
	PoolInit();

	if (QueueBegin(false) != QUEUE_OK)
	{
		ereport(LOG,
				(errmsg("task_fdw dispatcher not started for database %u: the extension is missing or must be updated",
						dboid)));
		TaskFdwSlotDetach(my_slot, true);
		my_slot = NULL;
		proc_exit(0);
	}
	QueuePrepare();
	QueueFindOrphans();
	recover_orphans(GetCurrentTimestamp());
	my_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	ereport(LOG,
			(errmsg("task_fdw dispatcher started for database \"%s\"", my_dbname)));
	QueueCommit();
	StatsAttach(my_slot);
	if (after_recovery_commit())
		TaskFdwWakeWaiters();

	last_activity = GetCurrentTimestamp();
	dispatcher_loop();
}

/*
 * dispatcher_loop is the dispatcher's one event loop.
 */
static void
dispatcher_loop(void)
{
	WaitEvent	events[MAX_EVENTS];
	MemoryContext loop_cxt = AllocSetContextCreate(TopMemoryContext,
												   "task_fdw dispatcher loop",
												   ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		TimestampTz now;
		int			nevents;

		/* Whatever a turn allocates, outside tasks and connections, is freed. */
		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* task_fdw.retention may have changed: apply it now. */
			next_purge = 0;
		}
		if (ShutdownRequestPending)
			dispatcher_shutdown();

		now = GetCurrentTimestamp();
		if (pg_atomic_exchange_u32(&my_slot->work_pending, 0) != 0)
		{
			take_hints();
			deferred_retry_at = now;
		}
		if (pg_atomic_exchange_u32(&my_slot->cancel_pending, 0) != 0)
			check_cancels = true;
		if (now >= next_recheck)
			discover = check_cancels = true;
		if (next_run_at != 0 && now >= next_run_at)
			discover = true;
		if (!dlist_is_empty(&deferred) && now >= deferred_retry_at)
		{
			while (!dlist_is_empty(&deferred))
				dlist_push_tail(&finished, dlist_pop_head_node(&deferred));
		}
		expire_connects(now);
		AcceptInvalidationMessages();
		PoolRetireIdle();

		if (bookkeeping_needed(now))
			bookkeeping(now);
		purge_expired(GetCurrentTimestamp());

		if (dispatcher_idle() &&
			TimestampDifferenceExceeds(last_activity, GetCurrentTimestamp(),
									   TaskFdwIdleTimeout) &&
			TaskFdwIdleTimeout > 0)
		{
			if (TaskFdwSlotIdleExit(my_slot))
			{
				my_slot = NULL;
				ereport(LOG,
						(errmsg("task_fdw dispatcher for database \"%s\" exiting: it had nothing to do for task_fdw.idle_timeout",
								my_dbname)));
				proc_exit(0);
			}
			continue;
		}

		StatsPublish();
		update_wait_set();
		nevents = WaitEventSetWait(wait_set, next_timeout(GetCurrentTimestamp()),
								   events, MAX_EVENTS, TFDW_WAIT_EVENT_MAIN);

		/*
		 * A server shutdown also ends loopback sessions: record their tasks
		 * as interrupted before reading them as lost connections.
		 */
		if (ShutdownRequestPending)
			dispatcher_shutdown();
		advance_ready(events, nevents);

		/*
		 * Only now, with what the sockets had to say read, does a task
		 * that has not ended really run long: not while a turn kept its
		 * results unread.
		 */
		release_ahead(GetCurrentTimestamp(), false);
	}
}

/*
 * advance_ready advances the connections that the wait reported ready in
 * events, and resets the latch if it was set.
 */
static void
advance_ready(WaitEvent *events, int nevents)
{
	int			i;

	for (i = 0; i < nevents; i++)
	{
		if (events[i].events & WL_LATCH_SET)
			ResetLatch(MyLatch);
		else if (events[i].user_data != NULL)
			ConnAdvance((Conn *) events[i].user_data, events[i].events);
	}
}

/*
 * take_hints looks at the queues of the pools that committed transactions
 * submitted tasks to, or at the whole queue if they did not say or did more.
 */
static void
take_hints(void)
{
	TaskFdwPoolKey hints[TFDW_MAX_HINTS];
	int			n = TaskFdwSlotTakeHints(my_slot, hints);
	int			i;

	if (n < 0)
		discover = true;
	for (i = 0; i < n; i++)
	{
		Pool	   *pool = PoolLookup(hints[i].serverid, hints[i].userid, true);

		pool->has_queued = true;
		pool->cursor_valid = false;
	}
}

/*
 * recover_orphans records as interrupted the tasks an earlier dispatcher
 * left running, in the caller's transaction, for after_recovery_commit to
 * report once it commits.  Rows that other transactions have locked (a
 * submitter cancelling the task, say) are not waited for: they are tried
 * again DEFERRED_RETRY_MS later, while the dispatcher runs other tasks.
 */
static void
recover_orphans(TimestampTz now)
{
	int			failed;
	int			requeued;
	int			locked;

	if (!QueueRecoverOrphans(&failed, &requeued, &locked))
		return;
	orphans_failed += failed;
	orphans_requeued += requeued;
	if (locked > 0 && orphans_retry_at == 0)
		ereport(LOG,
				(errmsg_plural("task_fdw found %d task left running by an earlier dispatcher that another transaction has locked",
							   "task_fdw found %d tasks left running by an earlier dispatcher that other transactions have locked",
							   locked, locked),
				 errdetail("They are recorded as interrupted once those transactions end.")));
	orphans_retry_at = locked > 0 ? TimestampTzPlusMilliseconds(now, DEFERRED_RETRY_MS) : 0;
}

/*
 * orphans_due returns whether tasks an earlier dispatcher left running, and
 * that were locked, are due to be tried again.
 */
static bool
orphans_due(TimestampTz now)
{
	return orphans_retry_at != 0 && now >= orphans_retry_at;
}

/*
 * after_recovery_commit reports the tasks that recover_orphans recorded,
 * once their transaction has committed, and has the queue looked at for
 * those queued again.  Returns whether it recorded any: the caller wakes
 * the sessions waiting for tasks.
 */
static bool
after_recovery_commit(void)
{
	if (orphans_failed == 0 && orphans_requeued == 0)
		return false;
	ereport(LOG,
			(errmsg("task_fdw recorded %d interrupted tasks as failed and queued %d again (on_interrupt 'retry')",
					orphans_failed, orphans_requeued)));
	if (orphans_requeued > 0)
		discover = true;
	orphans_failed = orphans_requeued = 0;
	return true;
}

/*
 * bookkeeping_needed returns whether this turn has anything to record,
 * cancel or claim.
 */
static bool
bookkeeping_needed(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;

	if (now < store_retry_at)
		return false;
	if (check_cancels || cancels_due(now) || orphans_due(now))
		return true;
	if (gathering(now))
		return false;
	if (discover || !dlist_is_empty(&finished))
		return true;
	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		if (PoolWantsTurn(pool, now))
		{
			hash_seq_term(&status);
			return true;
		}
	}
	return false;
}

/*
 * gathering returns whether finished tasks wait a little longer for others
 * to finish, to be recorded with them: until GATHER_MS after the first one
 * finished, while a task sent less than GATHER_MS ago still runs.
 */
static bool
gathering(TimestampTz now)
{
	ConnWalk	walk;
	Conn	   *conn;

	if (dlist_is_empty(&finished) ||
		now >= TimestampTzPlusMilliseconds(first_finished_at, GATHER_MS))
		return false;
	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		if (conn_runs_task(conn) &&
			now < TimestampTzPlusMilliseconds(conn->task->started_at, GATHER_MS))
		{
			ConnWalkEnd(&walk);
			return true;
		}
	}
	return false;
}

/*
 * conn_runs_task returns whether conn's task has been sent to the remote (or
 * its session reset is under way) and has not ended.
 */
static bool
conn_runs_task(Conn *conn)
{
	return conn->task != NULL &&
		(conn->state == CONN_RESETTING || conn->state == CONN_RUNNING);
}

/*
 * running_tasks returns the tasks that are running on a connection, and
 * with ahead those claimed ahead too.
 */
static List *
running_tasks(bool ahead)
{
	ConnWalk	walk;
	Conn	   *conn;
	List	   *running = NIL;

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		dlist_iter	iter;

		if (conn_runs_task(conn))
			running = lappend(running, conn->task);
		if (!ahead)
			continue;
		dlist_foreach(iter, &conn->piped)
			running = lappend(running, dlist_container(Task, node, iter.cur));
		dlist_foreach(iter, &conn->ahead)
			running = lappend(running, dlist_container(Task, node, iter.cur));
	}
	return running;
}

/*
 * release_ahead hands back to the queue all the tasks claimed ahead that
 * wait behind a task that has run long by now, and with cancelled those
 * their submitters have cancelled (only QueueMarkCancelled marks them, so
 * only then is there any to look for).
 */
static void
release_ahead(TimestampTz now, bool cancelled)
{
	ConnWalk	walk;
	Conn	   *conn;

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		TimestampTz stalled_at = ConnStalledAt(conn);
		bool		stalled = stalled_at != 0 && now >= stalled_at;

		if (conn->nahead > 0 && (stalled || cancelled))
			ConnReleaseAhead(conn, stalled);
	}
}

/*
 * cancel_due_at returns when a cancel request for running task is next due:
 * its deadline, until it is cancelled for some reason, then the time to
 * send the request again; 0 if never.
 */
static TimestampTz
cancel_due_at(Task *task)
{
	if (task->cancel_at != 0)
		return task->cancel_at;
	return task->cancel_reason == TASK_CANCEL_NONE ? task->deadline : 0;
}

/*
 * cancels_due returns whether a running task has timed out or has a cancel
 * request to (re)send.
 */
static bool
cancels_due(TimestampTz now)
{
	ConnWalk	walk;
	Conn	   *conn;

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		TimestampTz at = conn_runs_task(conn) ? cancel_due_at(conn->task) : 0;

		if (at != 0 && now >= at)
		{
			ConnWalkEnd(&walk);
			return true;
		}
	}
	return false;
}

/*
 * start_cancel opens a canceller for running task, or says why none can be
 * opened: the task then runs until it ends.  That is logged once per task;
 * the later tries, at DEBUG1.
 */
static void
start_cancel(Task *task)
{
	const char *problem;

	/* Tasks in the pipeline after it must not catch the request. */
	problem = PoolStartCancel(task->pool, task->remote_pid,
							  task->conn != NULL && task->conn->npiped > 0 ? task->id : 0);

	if (problem == NULL)
		return;
	if (task->cancel_problem_logged)
		ereport(DEBUG1,
				(errmsg_internal("task_fdw still cannot cancel task " INT64_FORMAT ": %s",
								 task->id, problem)));
	else
		ereport(LOG,
				(errmsg("task_fdw cannot cancel task " INT64_FORMAT ": %s; it runs until it ends",
						task->id, problem)));
	task->cancel_problem_logged = true;
}

/*
 * send_due_cancels starts a canceller for each running task that timed out
 * or whose cancel request is due, and schedules the next request in case
 * the task goes on running.
 */
static void
send_due_cancels(List *running, TimestampTz now)
{
	ListCell   *lc;

	foreach(lc, running)
	{
		Task	   *task = lfirst(lc);
		TimestampTz at = cancel_due_at(task);

		if (at == 0 || now < at)
			continue;
		if (task->cancel_reason == TASK_CANCEL_NONE)
			task->cancel_reason = TASK_CANCEL_TIMEOUT;
		start_cancel(task);
		task->cancel_at = TimestampTzPlusMilliseconds(now, CANCEL_RESEND_MS);
	}
}

/*
 * record_finished records the outcomes of finished tasks and frees them;
 * one whose row a submitter has locked is kept for a later turn.
 */
static void
record_finished(void)
{
	dlist_mutable_iter iter;

	if (dlist_is_empty(&finished))
		return;
	QueueRecordFinishes(&finished);
	dlist_foreach_modify(iter, &finished)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		dlist_delete(&task->node);
		if (!task->recorded)
		{
			dlist_push_tail(&deferred, &task->node);
			deferred_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															DEFERRED_RETRY_MS);
			continue;
		}
		/* A retry is due later: look for it then. */
		if (strcmp(task->final_state, TFDW_STATE_QUEUED) == 0)
			discover = true;
		MemoryContextDelete(task->cxt);
	}
}

/*
 * bookkeeping records finished tasks, sends due cancel requests, claims and
 * starts queued tasks, in one transaction, then sends the started tasks.
 */
static void
bookkeeping(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	dlist_mutable_iter iter;
	dlist_head	starting;		/* claimed, start to record */
	dlist_head	sendable;		/* start recorded, to send */
	bool		recorded = !dlist_is_empty(&finished);
	List	   *running;
	ConnWalk	walk;
	Conn	   *conn;

	dlist_init(&starting);
	dlist_init(&sendable);
	if (!begin_transaction(now))
		return;

	record_finished();
	if (orphans_due(now))
		recover_orphans(now);

	running = running_tasks(false);
	if (check_cancels)
	{
		List	   *claimed = running_tasks(true);

		QueueMarkCancelled(claimed);
		list_free(claimed);
		release_ahead(now, true);
		check_cancels = false;
	}
	send_due_cancels(running, now);
	list_free(running);

	if (discover)
	{
		QueueFindPools();
		next_run_at = QueueNextRunAt(now);
		discover = false;
		next_recheck = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   TaskFdwRecheckInterval);
	}

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		int			capacity = PoolCapacity(pool, now);

		if (pool->has_queued && capacity > 0)
			QueueFetch(pool, capacity, now);
		PoolAssignHeld(pool, &starting, now);
		PoolConnect(pool);
	}

	if (!dlist_is_empty(&starting))
	{
		dlist_iter	start_iter;

		StatsMarkChanged();
		dlist_foreach(start_iter, &starting)
		{
			Task	   *task = dlist_container(Task, node, start_iter.cur);

			if (task->conn->task == task)
				ConnResetEarly(task->conn);
		}
		QueueRecordStarts(&starting);
	}
	dlist_foreach_modify(iter, &starting)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		dlist_delete(&task->node);
		if (PoolStartRecorded(task))
			dlist_push_tail(&sendable, &task->node);
	}

	QueueCommit();
	/* One wake-up for this turn's outcomes and recovered tasks alike. */
	if (after_recovery_commit() || recorded)
		TaskFdwWakeWaiters();

	if (recorded || !dlist_is_empty(&sendable))
		last_activity = GetCurrentTimestamp();
	dlist_foreach_modify(iter, &sendable)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		dlist_delete(&task->node);
		ConnSendTask(task->conn);
	}

	/* Tasks claimed ahead this turn join their connection's pipeline. */
	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
		ConnPipeAhead(conn);
}

/*
 * purge_expired removes a batch of tasks that finished longer than
 * task_fdw.retention ago, when it is time to: again at once while there are
 * more, otherwise after a tenth of the retention time (at most a minute).
 */
static void
purge_expired(TimestampTz now)
{
	int			removed;
	int64		pause_ms;

	if (TaskFdwRetention <= 0 || now < next_purge || !begin_transaction(now))
		return;
	removed = QueuePurge(now - (int64) TaskFdwRetention * USECS_PER_SEC, PURGE_BATCH);
	QueueCommit();
	pause_ms = Min((int64) TaskFdwRetention * 100, 60000);
	next_purge = removed == PURGE_BATCH ? now :
		TimestampTzPlusMilliseconds(now, Max(pause_ms, 100));
	if (removed > 0)
		ereport(DEBUG1,
				(errmsg("task_fdw removed %d tasks older than task_fdw.retention", removed)));
}

/*
 * expire_connects gives up on connections that are still connecting after
 * their server's connect_timeout (libpq ignores it under PQconnectPoll): the
 * server counts as unreachable for now.
 */
static void
expire_connects(TimestampTz now)
{
	ConnWalk	walk;
	Conn	   *conn;

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		if (conn->deadline == 0 || now < conn->deadline)
			continue;
		if (conn->cancel_pid != 0)
		{
			/* A canceller that got nowhere: the request is sent again later. */
			ereport(LOG,
					(errmsg("task_fdw gave up a cancel request for remote backend %d: timeout expired",
							conn->cancel_pid)));
			PoolCloseConn(conn);
			continue;
		}
		if (conn->state != CONN_CONNECTING)
			continue;
		PoolUnreachable(conn->pool,
						psprintf("could not connect to the server: timeout expired after %d seconds",
								 conn->pool->connect_timeout));
		PoolCloseConn(conn);
	}
}

/*
 * update_wait_set makes the wait set match the connections: rebuilt when
 * they changed, otherwise only the events each one waits for are adjusted.
 */
static void
update_wait_set(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	ConnWalk	walk;
	Conn	   *conn;
	int			nconns = 0;

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
		nconns += pool->nconns + pool->ncancellers;

	if (conns_changed)
	{
		if (wait_set)
			FreeWaitEventSet(wait_set);
		wait_set = tfdw_create_wait_event_set(nconns + 2);
		AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	}

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		if (conns_changed)
		{
			conn->wait_pos = AddWaitEventToSet(wait_set, conn->wait_events,
											   conn->sock, NULL, conn);
			conn->registered_events = conn->wait_events;
		}
		else if (conn->registered_events != conn->wait_events)
		{
			ModifyWaitEvent(wait_set, conn->wait_pos, conn->wait_events, NULL);
			conn->registered_events = conn->wait_events;
		}
	}
	conns_changed = false;
}

/*
 * next_timeout returns how long the loop may wait, in milliseconds: not at
 * all if there is bookkeeping to do, otherwise until the next recheck,
 * scheduled task, timeout, cancel, connect deadline, purge or idle exit.
 */
static long
next_timeout(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	ConnWalk	walk;
	Conn	   *conn;
	TimestampTz wake = next_recheck;

	/* Bookkeeping itself may have failed tasks, or asked for another look. */
	if (now >= store_retry_at && check_cancels)
		return 0;
	if (now >= store_retry_at && (!dlist_is_empty(&finished) || discover))
	{
		if (!gathering(now))
			return 0;
		wake = Min(wake, TimestampTzPlusMilliseconds(first_finished_at, GATHER_MS));
	}
	if (store_retry_at > now)
		wake = Min(wake, store_retry_at);

#define WAKE_BY(t) do { if ((t) != 0 && (t) < wake) wake = (t); } while (0)
	if (TaskFdwIdleTimeout > 0)
		WAKE_BY(TimestampTzPlusMilliseconds(last_activity, TaskFdwIdleTimeout));
	WAKE_BY(next_run_at);
	WAKE_BY(orphans_retry_at);
	if (!dlist_is_empty(&deferred))
		WAKE_BY(deferred_retry_at);
	if (TaskFdwRetention > 0)
		WAKE_BY(next_purge);
	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
		WAKE_BY(PoolNextAttention(pool));
	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		WAKE_BY(conn->deadline);
		if (conn->nahead > 0)
			WAKE_BY(ConnStalledAt(conn));
		if (conn->task != NULL)
			WAKE_BY(cancel_due_at(conn->task));
	}
#undef WAKE_BY
	if (wake <= now)
		return 1;
	return (long) Min((wake - now + 999) / 1000, INT_MAX);
}

/*
 * dispatcher_idle returns whether the dispatcher has nothing in hand:
 * no task held, running or to record, no cancel under way, and no known
 * queued task, due now or later.
 */
static bool
dispatcher_idle(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	bool		idle = !discover && dlist_is_empty(&finished) &&
		dlist_is_empty(&deferred) && next_run_at == 0 && orphans_retry_at == 0;

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		if (pool->has_queued || pool->nheld > 0 || PoolBusy(pool) > 0 ||
			pool->ncancellers > 0)
			idle = false;
	}
	return idle;
}

/*
 * begin_transaction starts a bookkeeping transaction and returns true, or
 * returns false without one when the task store is locked by another
 * transaction (tried again shortly), or exits if the extension was dropped.
 */
static bool
begin_transaction(TimestampTz now)
{
	switch (QueueBegin(true))
	{
		case QUEUE_OK:
			store_retry_at = 0;
			return true;
		case QUEUE_BUSY:
			store_retry_at = TimestampTzPlusMilliseconds(now, DEFERRED_RETRY_MS);
			return false;
		case QUEUE_GONE:
		case QUEUE_OUTDATED:
			dispatcher_store_gone();
			break;
	}
	return false;				/* keep compiler quiet */
}

/*
 * cancel_running asks the remote to cancel every running task, ends the
 * tasks as interrupted, and waits up to EXIT_CANCEL_MS for the requests to
 * get through; this runs only when the dispatcher is about to exit.
 *
 * A task on a server reached through a Unix socket gets libpq's cancel
 * request: its postmaster is on this machine (this cluster's own, for the
 * loopback), and it takes cancel requests even while it shuts down, when
 * it no longer lets a canceller log in.  A server reached over the network
 * gets a canceller, non-blocking like every connection: PQcancel would
 * wait, with no limit, for a server that does not answer (one frozen, or
 * behind a firewall that drops packets), and hold up the server's shutdown
 * for as long.
 */
static void
cancel_running(void)
{
	ConnWalk	walk;
	Conn	   *conn;
	char		errbuf[256];

	StartTransactionCommand();
	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		Task	   *task = conn->task;

		if (!conn_runs_task(conn))
			continue;
		if (conn_is_local(conn))
		{
			PGcancel   *cancel = PQgetCancel(conn->conn);

			if (cancel)
			{
				(void) PQcancel(cancel, errbuf, sizeof(errbuf));
				PQfreeCancel(cancel);
			}
		}
		else
			start_cancel(task);
		TaskFail(task, "57P01", SHUTDOWN_INTERRUPTED);
		DispatcherTaskFinished(task);
		conn->task = NULL;
		ConnFailPiped(conn, "57P01", SHUTDOWN_INTERRUPTED);
		ConnReleaseAhead(conn, true);
	}
	CommitTransactionCommand();
	wait_for_cancellers();
}

/*
 * conn_is_local returns whether conn reaches its server through a Unix
 * socket.
 */
static bool
conn_is_local(Conn *conn)
{
	struct sockaddr_storage addr;
	socklen_t	len = sizeof(addr);

	return getpeername(PQsocket(conn->conn), (struct sockaddr *) &addr, &len) == 0 &&
		addr.ss_family == AF_UNIX;
}

/*
 * wait_for_cancellers closes every connection without a task, the
 * cancellers under way aside, then runs the cancellers until they are all
 * through, for at most EXIT_CANCEL_MS, and logs the ones still waiting for
 * their server then: the dispatcher exits without them.  The connections
 * whose tasks were just ended as interrupted have nothing more to say that
 * is wanted, and are not to be read.
 */
static void
wait_for_cancellers(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   EXIT_CANCEL_MS);
	WaitEvent	events[MAX_EVENTS];
	ConnWalk	walk;
	Conn	   *conn;

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		if (conn->cancel_pid == 0 && conn->task == NULL)
			PoolCloseConn(conn);
	}

	for (;;)
	{
		long		timeout;
		int			nevents;
		bool		any = false;

		CHECK_FOR_INTERRUPTS();
		ConnWalkBegin(&walk);
		while ((conn = ConnWalkNext(&walk)) != NULL)
			any |= conn->cancel_pid != 0;
		timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (!any || timeout <= 0)
			break;
		update_wait_set();
		nevents = WaitEventSetWait(wait_set, timeout, events, MAX_EVENTS,
								   TFDW_WAIT_EVENT_MAIN);
		advance_ready(events, nevents);
	}

	ConnWalkBegin(&walk);
	while ((conn = ConnWalkNext(&walk)) != NULL)
	{
		if (conn->cancel_pid != 0)
			ereport(LOG,
					(errmsg("task_fdw could not cancel remote backend %d before exiting: its server did not answer within %d ms",
							conn->cancel_pid, EXIT_CANCEL_MS)));
	}
}

/*
 * dispatcher_store_gone stops the dispatcher of a database whose task_fdw
 * extension was dropped: running statements are cancelled, and there is
 * nothing left to record them in.
 */
static void
dispatcher_store_gone(void)
{
	cancel_running();
	ereport(LOG,
			(errmsg("task_fdw dispatcher exiting: the extension was dropped from database \"%s\", or must be updated",
					my_dbname)));
	TaskFdwSlotDetach(my_slot, true);
	my_slot = NULL;
	proc_exit(0);
}

/*
 * dispatcher_shutdown cancels running tasks, records them as interrupted,
 * and exits; the launcher starts a new dispatcher unless the server is
 * shutting down.
 */
static void
dispatcher_shutdown(void)
{
	cancel_running();
	if (!dlist_is_empty(&finished) && begin_transaction(GetCurrentTimestamp()))
	{
		record_finished();
		QueueCommit();
		TaskFdwWakeWaiters();
	}
	ereport(LOG, (errmsg("task_fdw dispatcher shutting down")));
	proc_exit(0);
}
