/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		  The dispatcher background worker of one database: its event loop.
 *
 * Each turn of the loop waits once, on the latch and every pooled
 * connection's socket together (one WaitEventSet), advances the connections
 * that are ready, then does all bookkeeping in one short transaction:
 * record finished tasks, find pools with queued tasks (when woken by a
 * commit or by the periodic recheck), claim as many as the pools can run,
 * and record their start.  After the commit it sends the started tasks and
 * opens connections the pools need.  Nothing in the loop sleeps or blocks
 * in libpq.
 *
 * IDENTIFICATION
 *		  src/dispatcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

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
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "compat.h"
#include "dispatcher.h"

#define MAX_EVENTS	64

PGDLLEXPORT void TaskFdwDispatcherMain(Datum main_arg);

static DispatcherSlot *my_slot = NULL;
static MemoryContext TaskContext = NULL;

static dlist_head starting = DLIST_STATIC_INIT(starting); /* start to record */
static dlist_head finished = DLIST_STATIC_INIT(finished); /* outcome to record */

static WaitEventSet *wait_set = NULL;
static bool conns_changed = true;	/* wait_set must be rebuilt */
static bool discover = true;	/* look for pools with queued tasks */
static TimestampTz next_recheck = 0;
static TimestampTz last_activity = 0;

static void dispatcher_exit(int code, Datum arg);
static void dispatcher_loop(void);
static bool bookkeeping_needed(void);
static void bookkeeping(void);
static void expire_connects(TimestampTz now);
static void update_wait_set(void);
static long next_timeout(TimestampTz now);
static bool dispatcher_idle(void);
static void dispatcher_shutdown(void);

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
	task->finished_at = GetCurrentTimestamp();
	dlist_push_tail(&finished, &task->node);
}

/*
 * DispatcherConnChanged notes that a connection was added, removed or
 * changed sockets, so the wait set must be rebuilt.
 */
void
DispatcherConnChanged(void)
{
	conns_changed = true;
}

/*
 * dispatcher_exit closes the pooled connections and frees the slot.
 */
static void
dispatcher_exit(int code, Datum arg)
{
	PoolCloseAll();
	if (my_slot)
		TaskFdwSlotDetach(my_slot, false);
}

/*
 * TaskFdwDispatcherMain is the entry point of a dispatcher; its argument is
 * the OID of the database it serves.
 */
void
TaskFdwDispatcherMain(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	bool		installed;
	int			interrupted;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("task_fdw dispatcher");

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

	QueueBegin();
	QueuePrepare();
	interrupted = QueueRecoverInterrupted();
	ereport(LOG,
			(errmsg("task_fdw dispatcher started for database \"%s\"",
					get_database_name(dboid))));
	QueueCommit();
	if (interrupted > 0)
		ereport(LOG,
				(errmsg("task_fdw marked %d interrupted tasks as failed", interrupted)));

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

	for (;;)
	{
		TimestampTz now;
		int			nevents;
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (ShutdownRequestPending)
			dispatcher_shutdown();

		if (pg_atomic_exchange_u32(&my_slot->work_pending, 0) != 0)
			discover = true;
		now = GetCurrentTimestamp();
		if (now >= next_recheck)
			discover = true;
		expire_connects(now);
		AcceptInvalidationMessages();
		PoolRetireIdle();

		if (bookkeeping_needed())
			bookkeeping();

		if (dispatcher_idle() &&
			TimestampDifferenceExceeds(last_activity, GetCurrentTimestamp(),
									   TaskFdwIdleTimeout) &&
			TaskFdwIdleTimeout > 0)
		{
			if (TaskFdwSlotIdleExit(my_slot))
			{
				my_slot = NULL;
				proc_exit(0);
			}
			continue;
		}

		update_wait_set();
		nevents = WaitEventSetWait(wait_set, next_timeout(GetCurrentTimestamp()),
								   events, MAX_EVENTS, TFDW_WAIT_EVENT_MAIN);

		/*
		 * A server shutdown also ends loopback sessions: record their tasks
		 * as interrupted before reading them as lost connections.
		 */
		if (ShutdownRequestPending)
			dispatcher_shutdown();
		for (i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (events[i].user_data != NULL)
				ConnAdvance((Conn *) events[i].user_data, events[i].events);
		}
	}
}

/*
 * bookkeeping_needed returns whether this turn has anything to record or
 * claim.
 */
static bool
bookkeeping_needed(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	bool		needed = discover || !dlist_is_empty(&finished);

	if (needed)
		return true;
	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		if ((pool->has_queued && PoolCapacity(pool) > 0) ||
			(pool->nheld > 0 && pool->nconns > PoolBusy(pool)))
		{
			hash_seq_term(&status);
			return true;
		}
	}
	return false;
}

/*
 * bookkeeping records finished tasks, claims and starts queued ones, in one
 * transaction, then sends the started tasks.
 */
static void
bookkeeping(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	dlist_mutable_iter iter;
	dlist_head	sendable;
	bool		recorded = false;

	dlist_init(&sendable);
	QueueBegin();

	while (!dlist_is_empty(&finished))
	{
		Task	   *task = dlist_container(Task, node, dlist_pop_head_node(&finished));

		QueueRecordFinish(task);
		MemoryContextDelete(task->cxt);
		recorded = true;
	}

	if (discover)
	{
		QueueFindPools();
		discover = false;
		next_recheck = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   TaskFdwRecheckInterval);
	}

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		int			capacity = PoolCapacity(pool);

		if (pool->has_queued && capacity > 0)
			QueueFetch(pool, capacity);
		PoolAssignHeld(pool, &starting);
		PoolConnect(pool);
	}

	dlist_foreach_modify(iter, &starting)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		dlist_delete(&task->node);
		if (QueueRecordStart(task))
			dlist_push_tail(&sendable, &task->node);
		else
		{
			/* Gone from the queue meanwhile: free the connection again. */
			task->conn->task = NULL;
			task->conn->state = CONN_IDLE;
			task->pool->has_queued = true;
			MemoryContextDelete(task->cxt);
		}
	}

	QueueCommit();
	if (recorded)
		TaskFdwWakeWaiters();

	dlist_foreach_modify(iter, &sendable)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		dlist_delete(&task->node);
		ConnSendTask(task->conn);
		recorded = true;
	}
	if (recorded)
		last_activity = GetCurrentTimestamp();
}

/*
 * expire_connects gives up on connections that are still connecting after
 * their server's connect_timeout; libpq ignores it under PQconnectPoll.
 */
static void
expire_connects(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		dlist_mutable_iter iter;

		dlist_foreach_modify(iter, &pool->conns)
		{
			Conn	   *conn = dlist_container(Conn, node, iter.cur);

			if (conn->state != CONN_CONNECTING || conn->deadline == 0 ||
				now < conn->deadline)
				continue;
			if (pool->nheld > 0)
			{
				Task	   *task = dlist_container(Task, node,
												   dlist_pop_head_node(&pool->held));

				pool->nheld--;
				TaskFail(task, "08001",
						 psprintf("could not connect to the server: timeout expired after %d seconds",
								  pool->connect_timeout));
				DispatcherTaskFinished(task);
			}
			PoolCloseConn(conn);
		}
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
	int			nconns = 0;

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
		nconns += pool->nconns;

	if (conns_changed)
	{
		if (wait_set)
			FreeWaitEventSet(wait_set);
		wait_set = tfdw_create_wait_event_set(nconns + 2);
		AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	}

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		dlist_iter	iter;

		dlist_foreach(iter, &pool->conns)
		{
			Conn	   *conn = dlist_container(Conn, node, iter.cur);

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
	}
	conns_changed = false;
}

/*
 * next_timeout returns how long the loop may wait, in milliseconds: until
 * the next recheck, connect deadline or idle exit.
 */
static long
next_timeout(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	TimestampTz wake = next_recheck;

	if (TaskFdwIdleTimeout > 0)
	{
		TimestampTz idle_at = TimestampTzPlusMilliseconds(last_activity, TaskFdwIdleTimeout);

		if (idle_at < wake)
			wake = idle_at;
	}
	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		dlist_iter	iter;

		dlist_foreach(iter, &pool->conns)
		{
			Conn	   *conn = dlist_container(Conn, node, iter.cur);

			if (conn->state == CONN_CONNECTING && conn->deadline != 0 &&
				conn->deadline < wake)
				wake = conn->deadline;
		}
	}
	if (wake <= now)
		return 1;
	return (long) Min((wake - now + 999) / 1000, INT_MAX);
}

/*
 * dispatcher_idle returns whether the dispatcher has nothing in hand:
 * no task held, running or to record, and no known queued task.
 */
static bool
dispatcher_idle(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	bool		idle = !discover && dlist_is_empty(&finished);

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		if (pool->has_queued || pool->nheld > 0 || PoolBusy(pool) > 0)
			idle = false;
	}
	return idle;
}

/*
 * dispatcher_shutdown cancels running tasks, records them as interrupted,
 * and exits; the launcher starts a new dispatcher unless the server is
 * shutting down.
 */
static void
dispatcher_shutdown(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	char		errbuf[256];

	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
	{
		dlist_iter	iter;

		dlist_foreach(iter, &pool->conns)
		{
			Conn	   *conn = dlist_container(Conn, node, iter.cur);
			PGcancel   *cancel;

			if (conn->state != CONN_RESETTING && conn->state != CONN_RUNNING)
				continue;
			/* PQcancel waits only for the cancel request to be sent. */
			cancel = PQgetCancel(conn->conn);
			if (cancel)
			{
				(void) PQcancel(cancel, errbuf, sizeof(errbuf));
				PQfreeCancel(cancel);
			}
			TaskFail(conn->task, "57P01",
					 "task was interrupted: the dispatcher was shut down while it ran, "
					 "and the remote server may or may not have completed it");
			DispatcherTaskFinished(conn->task);
			conn->task = NULL;
		}
	}

	if (!dlist_is_empty(&finished))
	{
		QueueBegin();
		while (!dlist_is_empty(&finished))
			QueueRecordFinish(dlist_container(Task, node, dlist_pop_head_node(&finished)));
		QueueCommit();
		TaskFdwWakeWaiters();
	}
	ereport(LOG, (errmsg("task_fdw dispatcher shutting down")));
	proc_exit(0);
}
