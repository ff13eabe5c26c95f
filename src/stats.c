/*-------------------------------------------------------------------------
 *
 * stats.c
 *		  Observability: the status of its pools that a dispatcher publishes
 *		  in shared memory, and the SQL functions that report it together
 *		  with counts from the task store.
 *
 * A dispatcher publishes into its slot of shared memory only after
 * something changed: the code that changes a pool (a connection opened,
 * closed or given a task, a task finished, a server found unreachable)
 * calls StatsMarkChanged(), which sets a flag, and the event loop calls
 * StatsPublish() once per turn, before it waits, which copies the status of
 * every pool under the slot's own lock if the flag is set.  A turn that
 * changed nothing costs a test of the flag.  At most TFDW_MAX_POOL_STATS
 * pools are published, those in use (with connections, claimed or queued
 * tasks, or unreachable) first; the others still count in the activity.
 * StatsPublish also reports a one-line summary as the dispatcher's activity
 * in pg_stat_activity, when the summary changes.
 *
 * task_fdw.pool_status() merges what the current database's dispatcher
 * published with the counts of queued and running tasks in the task store,
 * so that a pool with tasks shows even when no dispatcher runs.
 * task_fdw.task_statistics() counts tasks by server and state, with how many
 * finished in the last minute.  Both show superusers and members of
 * task_fdw_monitor every pool and task, and other roles those of roles whose
 * privileges they have, as the foreign tables do.
 *
 * IDENTIFICATION
 *		  src/stats.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "dispatcher.h"

PG_FUNCTION_INFO_V1(task_fdw_pool_status);
PG_FUNCTION_INFO_V1(task_fdw_task_statistics);

/* Task states in the order task_statistics() reports them. */
static const char *const task_states[] = {
	TFDW_STATE_QUEUED, TFDW_STATE_RUNNING, TFDW_STATE_DONE, TFDW_STATE_FAILED,
	TFDW_STATE_CANCELLED
};
#define NUM_TASK_STATES lengthof(task_states)

/* Dispatcher side. */
bool		StatsChanged = true;
static DispatcherSlot *stats_slot = NULL;
static TaskFdwPoolStats staged[TFDW_MAX_POOL_STATS];
static char reported_activity[128];

/* One pool as pool_status() reports it. */
typedef struct PoolRow
{
	Oid			serverid;		/* hash key, with userid */
	Oid			userid;
	TaskFdwPoolStats *published;	/* what the dispatcher published, or NULL */
	int64		queued;
	int64		running;
	char	   *server;			/* names, or NULL if dropped */
	char	   *username;
} PoolRow;

/* Tasks of one (server, role, state), for task_statistics(). */
typedef struct StateCountKey
{
	Oid			serverid;
	Oid			userid;
	int			state;			/* index into task_states */
} StateCountKey;

typedef struct StateCount
{
	StateCountKey key;
	int64		count;
	int64		recent;			/* finished within the last minute */
	char	   *server;
} StateCount;

static void stage_pool(TaskFdwPoolStats *entry, Pool *pool);
static void report_activity(int running, int waiting, int npools, int down);
static HTAB *new_hash(const char *name, Size keysize, Size entrysize);
static void count_store_task(HeapTuple tup, TupleDesc desc, bool running, void *rows);
static void count_state(HTAB *counts, HeapTuple tup, TupleDesc desc, bool recent);
static int	state_index(Datum state);
static int	compare_pool_rows(const void *a, const void *b);
static int	compare_state_counts(const void *a, const void *b);
static int	compare_names(const char *a, const char *b);

/*
 * StatsAttach makes the calling dispatcher the publisher of slot's pool
 * status, starting from none.
 */
void
StatsAttach(DispatcherSlot *slot)
{
	LWLockAcquire(slot->stats_lock, LW_EXCLUSIVE);
	slot->stats_pid = MyProcPid;
	slot->npools = 0;
	LWLockRelease(slot->stats_lock);
	stats_slot = slot;
	StatsChanged = true;
}

/*
 * StatsDetach withdraws what the calling dispatcher published, at its exit;
 * a dispatcher that took over the slot meanwhile keeps its own.
 */
void
StatsDetach(void)
{
	if (stats_slot == NULL)
		return;
	LWLockAcquire(stats_slot->stats_lock, LW_EXCLUSIVE);
	if (stats_slot->stats_pid == MyProcPid)
	{
		stats_slot->stats_pid = 0;
		stats_slot->npools = 0;
	}
	LWLockRelease(stats_slot->stats_lock);
	stats_slot = NULL;
}

/*
 * stage_pool fills entry with the status of pool.
 */
static void
stage_pool(TaskFdwPoolStats *entry, Pool *pool)
{
	entry->serverid = pool->key.serverid;
	entry->userid = pool->key.userid;
	entry->pool_size = pool->pool_size;
	entry->busy = PoolBusy(pool);
	entry->idle = PoolCountState(pool, CONN_IDLE);
	entry->connecting = PoolCountState(pool, CONN_CONNECTING);
	entry->waiting = pool->nheld;
	entry->down_since = pool->down_since;
	entry->last_error_at = pool->last_error_at;
	entry->started = pool->tasks_started;
	entry->finished = pool->tasks_finished;
	strlcpy(entry->last_error, pool->last_error, sizeof(entry->last_error));
}

/*
 * StatsPublish copies the status of the dispatcher's pools to its slot if
 * any changed since the last call, and reports its activity if that
 * changed.  The event loop calls it once per turn, before it waits.
 */
void
StatsPublish(void)
{
	HASH_SEQ_STATUS status;
	Pool	   *pool;
	TaskFdwPoolStats *entry;
	TaskFdwPoolStats scratch;
	int			n = 0;
	int			omitted = 0;
	int			running = 0;
	int			waiting = 0;
	int			down = 0;
	int			pass;

	if (!StatsChanged || stats_slot == NULL)
		return;
	StatsChanged = false;

	/* Pools in use first, so that idle ones are those left out. */
	for (pass = 0; pass < 2; pass++)
	{
		hash_seq_init(&status, PoolTable());
		while ((pool = hash_seq_search(&status)) != NULL)
		{
			bool		in_use = pool->nconns > 0 || pool->nheld > 0 ||
				pool->has_queued || pool->down_since != 0;

			if (in_use != (pass == 0))
				continue;
			if (n < TFDW_MAX_POOL_STATS)
				entry = &staged[n++];
			else
			{
				entry = &scratch;	/* left out, but counted in the activity */
				omitted++;
			}
			stage_pool(entry, pool);
			running += entry->busy;
			waiting += entry->waiting;
			if (pool->down_since != 0)
				down++;
		}
	}

	LWLockAcquire(stats_slot->stats_lock, LW_EXCLUSIVE);
	memcpy(stats_slot->pools, staged, sizeof(TaskFdwPoolStats) * n);
	stats_slot->npools = n;
	LWLockRelease(stats_slot->stats_lock);

	report_activity(running, waiting, n + omitted, down);
}

/*
 * report_activity shows what the dispatcher does in pg_stat_activity's
 * query column, if that changed since it last did.
 */
static void
report_activity(int running, int waiting, int npools, int down)
{
	char		activity[sizeof(reported_activity)];

	snprintf(activity, sizeof(activity),
			 "%d running, %d waiting for a connection; %d pools, %d unreachable",
			 running, waiting, npools, down);
	if (strcmp(activity, reported_activity) == 0)
		return;
	strlcpy(reported_activity, activity, sizeof(reported_activity));
	pgstat_report_activity(STATE_IDLE, reported_activity);
}

/*
 * new_hash creates a hash table in the current memory context, for one call
 * of a function.
 */
static HTAB *
new_hash(const char *name, Size keysize, Size entrysize)
{
	HASHCTL		ctl;

	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = CurrentMemoryContext;
	return hash_create(name, 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * state_index returns the index in task_states of the text Datum state, or
 * -1.
 */
static int
state_index(Datum state)
{
	int			i;

	for (i = 0; i < NUM_TASK_STATES; i++)
		if (TaskStateIs(state, task_states[i]))
			return i;
	return -1;
}

/*
 * count_store_task adds the unfinished task tup of the task store to rows
 * (PoolRow, by server and role): a TaskStoreForEachUnfinished callback.
 */
static void
count_store_task(HeapTuple tup, TupleDesc desc, bool running, void *rows)
{
	Oid			ids[2];
	bool		isnull;
	bool		found;
	PoolRow    *row;

	ids[0] = DatumGetObjectId(heap_getattr(tup, Anum_task_server_id, desc, &isnull));
	ids[1] = DatumGetObjectId(heap_getattr(tup, Anum_task_userid, desc, &isnull));
	row = hash_search((HTAB *) rows, ids, HASH_ENTER, &found);
	if (!found)
	{
		row->published = NULL;
		row->queued = row->running = 0;
	}
	if (running)
		row->running++;
	else
		row->queued++;
}

/*
 * compare_names orders names, NULL (a dropped object) last.
 */
static int
compare_names(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return (a == NULL) - (b == NULL);
	return strcmp(a, b);
}

/*
 * compare_pool_rows orders pool rows by server name, then role name.
 */
static int
compare_pool_rows(const void *a, const void *b)
{
	const PoolRow *ra = *(PoolRow *const *) a;
	const PoolRow *rb = *(PoolRow *const *) b;
	int			c = compare_names(ra->server, rb->server);

	return c != 0 ? c : compare_names(ra->username, rb->username);
}

/*
 * task_fdw_pool_status
 *		Return one row for each pool of the current database: what its
 *		dispatcher published, and its queued and running tasks.
 */
Datum
task_fdw_pool_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TaskFdwPoolStats *published = palloc(sizeof(TaskFdwPoolStats) * TFDW_MAX_POOL_STATS);
	int			npublished = 0;
	bool		all = superuser() || TaskStoreIsMonitor();
	DispatcherSlot *slot;
	Relation	rel;
	Snapshot	snapshot;
	HTAB	   *rows;
	HASH_SEQ_STATUS status;
	PoolRow    *row;
	PoolRow   **sorted;
	int			nrows = 0;
	int			i;

	TaskFdwCheckPreloaded();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(TaskFdwState->lock, LW_SHARED);
	slot = TaskFdwFindSlot(MyDatabaseId);
	if (slot != NULL)
	{
		LWLockAcquire(slot->stats_lock, LW_SHARED);
		if (slot->stats_pid != 0)
		{
			npublished = slot->npools;
			memcpy(published, slot->pools, sizeof(TaskFdwPoolStats) * npublished);
		}
		LWLockRelease(slot->stats_lock);
	}
	LWLockRelease(TaskFdwState->lock);

	rows = new_hash("task_fdw pool rows", sizeof(Oid) * 2, sizeof(PoolRow));
	rel = TaskStoreOpen(AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TaskStoreForEachUnfinished(rel, snapshot, count_store_task, rows);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	for (i = 0; i < npublished; i++)
	{
		Oid			ids[2] = {published[i].serverid, published[i].userid};
		bool		found;

		row = hash_search(rows, ids, HASH_ENTER, &found);
		if (!found)
			row->queued = row->running = 0;
		row->published = &published[i];
	}

	sorted = palloc(sizeof(PoolRow *) * hash_get_num_entries(rows));
	hash_seq_init(&status, rows);
	while ((row = hash_seq_search(&status)) != NULL)
	{
		if (!all && !TaskStoreTaskVisible(row->userid))
			continue;
		row->server = TaskFdwServerName(row->serverid);
		row->username = GetUserNameFromId(row->userid, true);
		sorted[nrows++] = row;
	}
	qsort(sorted, nrows, sizeof(PoolRow *), compare_pool_rows);

	for (i = 0; i < nrows; i++)
	{
		TaskFdwPoolStats *pub = sorted[i]->published;
		Datum		values[14];
		bool		nulls[14];

		row = sorted[i];
		memset(nulls, false, sizeof(nulls));
		values[0] = row->server ? CStringGetTextDatum(row->server) : (Datum) 0;
		nulls[0] = row->server == NULL;
		values[1] = row->username ? CStringGetTextDatum(row->username) : (Datum) 0;
		nulls[1] = row->username == NULL;
		if (pub != NULL)
		{
			values[2] = Int32GetDatum(pub->pool_size);
			values[3] = Int32GetDatum(pub->busy + pub->idle);
			values[4] = Int32GetDatum(pub->busy);
			values[5] = Int32GetDatum(pub->idle);
			values[6] = Int32GetDatum(pub->connecting);
		}
		else
		{
			/* No dispatcher has this pool: its size is that of the server. */
			ForeignServer *server = GetForeignServerExtended(row->serverid, FSV_MISSING_OK);
			TaskServerOptions opts;

			if (server != NULL)
			{
				TaskFdwGetServerOptions(server, &opts);
				values[2] = Int32GetDatum(opts.pool_size);
			}
			nulls[2] = server == NULL;
			nulls[3] = nulls[4] = nulls[5] = nulls[6] = true;
		}
		values[7] = Int64GetDatum(row->queued);
		values[8] = Int64GetDatum(row->running);
		values[9] = pub ? TimestampTzGetDatum(pub->down_since) : (Datum) 0;
		nulls[9] = pub == NULL || pub->down_since == 0;
		values[10] = pub ? CStringGetTextDatum(pub->last_error) : (Datum) 0;
		nulls[10] = pub == NULL || pub->last_error[0] == '\0';
		values[11] = pub ? TimestampTzGetDatum(pub->last_error_at) : (Datum) 0;
		nulls[11] = pub == NULL || pub->last_error_at == 0;
		values[12] = pub ? Int64GetDatum((int64) pub->started) : (Datum) 0;
		nulls[12] = pub == NULL;
		values[13] = pub ? Int64GetDatum((int64) pub->finished) : (Datum) 0;
		nulls[13] = pub == NULL;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * count_state counts task tup (of the task store, with descriptor desc) in
 * counts, as a task or, with recent, as a task finished in the last minute.
 */
static void
count_state(HTAB *counts, HeapTuple tup, TupleDesc desc, bool recent)
{
	StateCountKey k;
	StateCount *count;
	bool		isnull;
	bool		found;

	memset(&k, 0, sizeof(k));
	k.serverid = DatumGetObjectId(heap_getattr(tup, Anum_task_server_id, desc, &isnull));
	k.userid = DatumGetObjectId(heap_getattr(tup, Anum_task_userid, desc, &isnull));
	k.state = state_index(heap_getattr(tup, Anum_task_state, desc, &isnull));
	if (k.state < 0)
		return;
	count = hash_search(counts, &k, HASH_ENTER, &found);
	if (!found)
		count->count = count->recent = 0;
	if (recent)
		count->recent++;
	else
		count->count++;
}

/*
 * compare_state_counts orders counts by server name, then state.
 */
static int
compare_state_counts(const void *a, const void *b)
{
	const StateCount *ca = *(StateCount *const *) a;
	const StateCount *cb = *(StateCount *const *) b;
	int			c = compare_names(ca->server, cb->server);

	if (c != 0)
		return c;
	if (ca->key.serverid != cb->key.serverid)
		return ca->key.serverid < cb->key.serverid ? -1 : 1;
	return ca->key.state - cb->key.state;
}

/*
 * task_fdw_task_statistics
 *		Return the number of tasks of each server (the one a task runs on)
 *		in each state, and how many of them finished in the last minute.
 *
 * It reads the whole task store, and the finished tasks of the last minute
 * through task_finished_idx.
 */
Datum
task_fdw_task_statistics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		all = superuser() || TaskStoreIsMonitor();
	TimestampTz since = GetCurrentTimestamp() - 60 * USECS_PER_SEC;
	HTAB	   *counts;
	HTAB	   *totals;
	Relation	rel;
	TupleDesc	desc;
	Snapshot	snapshot;
	TableScanDesc heapscan;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	HASH_SEQ_STATUS status;
	StateCount *count;
	StateCount **sorted;
	int			n = 0;
	int			i;

	TaskFdwCheckPreloaded();
	InitMaterializedSRF(fcinfo, 0);
	counts = new_hash("task_fdw state counts", sizeof(StateCountKey), sizeof(StateCount));
	rel = TaskStoreOpen(AccessShareLock);
	desc = RelationGetDescr(rel);
	snapshot = RegisterSnapshot(GetLatestSnapshot());

	/* Every task, then those finished since a minute ago. */
	heapscan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tup = heap_getnext(heapscan, ForwardScanDirection)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		count_state(counts, tup, desc, false);
	}
	table_endscan(heapscan);
	ScanKeyInit(&key, Anum_task_finished_at, BTGreaterEqualStrategyNumber,
				F_TIMESTAMPTZ_GE, TimestampTzGetDatum(since));
	scan = systable_beginscan(rel, TaskStoreIndex("task_finished_idx"), true,
							  snapshot, 1, &key);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();
		count_state(counts, tup, desc, true);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	/* The visible roles' counts, added up by server and state. */
	totals = new_hash("task_fdw state totals", sizeof(StateCountKey), sizeof(StateCount));
	hash_seq_init(&status, counts);
	while ((count = hash_seq_search(&status)) != NULL)
	{
		StateCountKey k = count->key;
		StateCount *total;
		bool		found;

		if (!all && !TaskStoreTaskVisible(k.userid))
			continue;
		k.userid = InvalidOid;
		total = hash_search(totals, &k, HASH_ENTER, &found);
		if (!found)
		{
			total->count = total->recent = 0;
			total->server = TaskFdwServerName(k.serverid);
		}
		total->count += count->count;
		total->recent += count->recent;
	}

	sorted = palloc(sizeof(StateCount *) * (hash_get_num_entries(totals) + 1));
	hash_seq_init(&status, totals);
	while ((count = hash_seq_search(&status)) != NULL)
		if (count->count > 0)
			sorted[n++] = count;
	qsort(sorted, n, sizeof(StateCount *), compare_state_counts);

	for (i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4];
		bool		final = TaskStateIsFinal(task_states[sorted[i]->key.state]);

		values[0] = sorted[i]->server ? CStringGetTextDatum(sorted[i]->server) : (Datum) 0;
		nulls[0] = sorted[i]->server == NULL;
		values[1] = CStringGetTextDatum(task_states[sorted[i]->key.state]);
		nulls[1] = false;
		values[2] = Int64GetDatum(sorted[i]->count);
		nulls[2] = false;
		/* Only tasks in a final state have finished. */
		values[3] = Int64GetDatum(sorted[i]->recent);
		nulls[3] = !final;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
