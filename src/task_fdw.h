/*-------------------------------------------------------------------------
 *
 * task_fdw.h
 *		  Shared definitions of task_fdw: the task attribute contract, the
 *		  shared-memory registry of dispatchers, GUCs and cross-file functions.
 *
 * Vocabulary used throughout the sources:
 *	- a task is one row of the task store: a SQL string to run on a server
 *	  on behalf of the role that inserted it;
 *	- the dispatcher is the background worker (one per database) that runs
 *	  queued tasks through pools of libpq connections;
 *	- a pool is the set of connections for one (server, submitting role);
 *	- the launcher is the background worker that starts dispatchers.
 *
 * IDENTIFICATION
 *		  src/task_fdw.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef TASK_FDW_H
#define TASK_FDW_H

#include "access/attnum.h"
#include "access/genam.h"
#include "access/htup.h"
#include "access/xact.h"
#include "datatype/timestamp.h"
#include "foreign/foreign.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/itemptr.h"
#include "storage/lockdefs.h"
#include "storage/lwlock.h"
#include "utils/relcache.h"

/*
 * Columns of the task store, task_fdw.task, in the order the extension script
 * creates them.  Upgrade scripts may only append columns.
 */
#define Anum_task_id				1
#define Anum_task_server_id			2
#define Anum_task_userid			3
#define Anum_task_sql				4
#define Anum_task_state				5
#define Anum_task_submitted_by		6
#define Anum_task_submitted_at		7
#define Anum_task_started_at		8
#define Anum_task_finished_at		9
#define Anum_task_remote_pid		10
#define Anum_task_command_tag		11
#define Anum_task_rows				12
#define Anum_task_result			13
#define Anum_task_result_truncated	14
#define Anum_task_error				15
#define Anum_task_sqlstate			16
#define Anum_task_error_detail		17
#define Anum_task_error_hint		18
#define Anum_task_error_context		19
#define Anum_task_priority			20
#define Anum_task_run_at			21
#define Anum_task_timeout			22
#define Anum_task_max_attempts		23
#define Anum_task_attempts			24
#define Anum_task_batch				25
#define Anum_task_notices			26
#define Anum_task_retry_sqlstates	27
#define Anum_task_retry_delay		28
#define Anum_task_cancel_requested_at 29
#define Anum_task_retry_interrupted	30
#define Anum_task_origin_server_id	31
#define Natts_task					31

/* The role whose members see all tasks, without their results. */
#define TFDW_MONITOR_ROLE		"task_fdw_monitor"

/* The channel of completion notifications. */
#define TFDW_NOTIFY_CHANNEL		"task_fdw"

/*
 * The hint recorded on an interrupted task that on_interrupt 'retry' did not
 * queue again, its attempts used up.
 */
#define TFDW_INTERRUPTED_HINT \
	"on_interrupt 'retry' queues an interrupted task again only while it has made " \
	"fewer attempts than task_fdw.max_interrupted_attempts, or than its max_attempts if that is higher."

/* The error of a task cancelled before it started (SQLSTATE 57014). */
#define TFDW_CANCELLED_BEFORE_START "task was cancelled before it started"

/*
 * The SQLSTATE of a remote error that came without one, as postgres_fdw
 * reports such errors: every failed task has a SQLSTATE (task_failed_idx).
 */
#define TFDW_NO_SQLSTATE "08006"

/* Task states, as stored and shown. */
#define TFDW_STATE_QUEUED		"queued"
#define TFDW_STATE_RUNNING		"running"
#define TFDW_STATE_DONE			"done"
#define TFDW_STATE_FAILED		"failed"
#define TFDW_STATE_CANCELLED	"cancelled"

/*
 * One attribute a foreign table of task_fdw may declare: its name and type
 * are the contract; task_attnum says where it lives in the task store.
 */
typedef struct TaskAttribute
{
	const char *name;
	Oid			typid;
	AttrNumber	task_attnum;
	bool		writable;		/* may be given by INSERT */
	bool		updatable;		/* may be changed by UPDATE */
} TaskAttribute;

/*
 * Per-foreign-table mapping from its columns to task attributes, built once
 * per scan or modify.  attrs[i] describes column i + 1, or is NULL for a
 * dropped column.  The attribute "server" shows the name of the task
 * store's server_id; each server's name is looked up once per map.
 */
typedef struct TaskColumnMap
{
	int			natts;
	const TaskAttribute **attrs;
	MemoryContext cxt;			/* where the map and the names live */
	int			nservers;		/* servers whose names are known */
	Oid		   *server_oids;	/* room for max_servers of them */
	Datum	   *server_names;	/* text, or 0 if that server was dropped */
	int			max_servers;
} TaskColumnMap;

/* Pools a dispatcher publishes the status of (see stats.c). */
#define TFDW_MAX_POOL_STATS		64
/* Bytes kept of a pool's last error message, with its terminating zero. */
#define TFDW_POOL_ERROR_LEN		256

/* The status of one pool, as its dispatcher last published it. */
typedef struct TaskFdwPoolStats
{
	Oid			serverid;
	Oid			userid;
	int			pool_size;
	int			busy;			/* connections with a task */
	int			idle;			/* connections without one */
	int			connecting;		/* connections being opened */
	int			waiting;		/* tasks claimed, waiting for a connection */
	TimestampTz down_since;		/* unreachable since then, or 0 */
	TimestampTz last_error_at;	/* when last_error happened, or 0 */
	uint64		started;		/* attempts started by this dispatcher */
	uint64		finished;		/* attempts ended, also without starting */
	char		last_error[TFDW_POOL_ERROR_LEN];	/* why the last connection
													 * attempt failed, or "" */
} TaskFdwPoolStats;

/*
 * A pool's key: the server, and the role that submitted the tasks.  The
 * dispatcher's pools are hashed by it, and a slot's hints name the pools
 * that committed transactions submitted tasks to, so that the dispatcher
 * can look at those pools' queues rather than search the whole queue; at
 * most TFDW_MAX_HINTS.
 */
#define TFDW_MAX_HINTS			8

typedef struct TaskFdwPoolKey
{
	Oid			serverid;
	Oid			userid;
} TaskFdwPoolKey;

/* One dispatcher slot in shared memory. */
typedef struct DispatcherSlot
{
	Oid			dboid;			/* database, or InvalidOid if the slot is free */
	pid_t		pid;			/* running dispatcher, or 0 */
	int			procno;			/* its PGPROC index, for SetLatch */
	bool		wanted;			/* a dispatcher should run for dboid */
	bool		clean_exit;		/* the last one exited on purpose: restart at once */
	pg_atomic_uint32 work_pending;	/* set by committing submitters */
	pg_atomic_uint32 cancel_pending;	/* set when running tasks are cancelled */
	/* With work_pending, under the shared lock: where to look for it. */
	bool		hints_unknown;	/* anywhere: search the whole queue */
	int			nhints;
	TaskFdwPoolKey hints[TFDW_MAX_HINTS];

	/* Published by a dispatcher, read by pool_status() (see stats.c). */
	LWLock	   *stats_lock;		/* protects the fields below */
	pid_t		stats_pid;		/* the dispatcher that published them, or 0 */
	int			npools;			/* entries of pools in use */
	TaskFdwPoolStats pools[TFDW_MAX_POOL_STATS];
} DispatcherSlot;

/* The shared state of task_fdw, one per cluster. */
typedef struct TaskFdwShared
{
	LWLock	   *lock;			/* protects the slots and launcher fields */
	pid_t		launcher_pid;
	int			launcher_procno;
	ConditionVariable task_finished; /* broadcast after tasks finish */
	pg_atomic_uint32 connections;	/* open task connections, all dispatchers */
	int			nslots;
	DispatcherSlot slots[FLEXIBLE_ARRAY_MEMBER];
} TaskFdwShared;

/* in scan.c */
struct PlannerInfo;
struct RelOptInfo;
struct ForeignPath;
struct ForeignScanState;
struct ExplainState;
struct ModifyTableState;
struct ResultRelInfo;
struct EState;
struct TupleTableSlot;
struct ForeignScan;
struct Plan;
struct ModifyTable;
struct ImportForeignSchemaStmt;
struct RangeTblEntry;
struct TupleTableSlot;

extern void taskGetForeignRelSize(struct PlannerInfo *root, struct RelOptInfo *baserel,
								  Oid foreigntableid);
extern void taskGetForeignPaths(struct PlannerInfo *root, struct RelOptInfo *baserel,
								Oid foreigntableid);
extern struct ForeignScan *taskGetForeignPlan(struct PlannerInfo *root,
											  struct RelOptInfo *baserel,
											  Oid foreigntableid,
											  struct ForeignPath *best_path,
											  List *tlist, List *scan_clauses,
											  struct Plan *outer_plan);
extern void taskBeginForeignScan(struct ForeignScanState *node, int eflags);
extern struct TupleTableSlot *taskIterateForeignScan(struct ForeignScanState *node);
extern void taskReScanForeignScan(struct ForeignScanState *node);
extern void taskEndForeignScan(struct ForeignScanState *node);
extern void taskExplainForeignScan(struct ForeignScanState *node,
								   struct ExplainState *es);

/* in modify.c */
extern int	taskIsForeignRelUpdatable(Relation rel);
extern List *taskPlanForeignModify(struct PlannerInfo *root, struct ModifyTable *plan,
								   Index resultRelation, int subplan_index);
extern void taskBeginForeignModify(struct ModifyTableState *mtstate,
								   struct ResultRelInfo *rinfo, List *fdw_private,
								   int subplan_index, int eflags);
extern struct TupleTableSlot *taskExecForeignInsert(struct EState *estate,
													struct ResultRelInfo *rinfo,
													struct TupleTableSlot *slot,
													struct TupleTableSlot *planSlot);
extern void taskAddForeignUpdateTargets(struct PlannerInfo *root, Index rtindex,
										struct RangeTblEntry *target_rte,
										Relation target_relation);
extern struct TupleTableSlot *taskExecForeignUpdate(struct EState *estate,
													struct ResultRelInfo *rinfo,
													struct TupleTableSlot *slot,
													struct TupleTableSlot *planSlot);
extern struct TupleTableSlot *taskExecForeignDelete(struct EState *estate,
													struct ResultRelInfo *rinfo,
													struct TupleTableSlot *slot,
													struct TupleTableSlot *planSlot);
extern void taskEndForeignModify(struct EState *estate, struct ResultRelInfo *rinfo);
extern void taskBeginForeignInsert(struct ModifyTableState *mtstate,
								   struct ResultRelInfo *rinfo);
extern void taskEndForeignInsert(struct EState *estate, struct ResultRelInfo *rinfo);

/* in task_fdw.c */
extern bool TaskFdwPreloaded;
extern int	TaskFdwMaxResultRows;
extern int	TaskFdwMaxResultBytes;
extern int	TaskFdwIdleTimeout;
extern int	TaskFdwRecheckInterval;
extern int	TaskFdwMaxNotices;
extern int	TaskFdwMaxNoticeBytes;
extern int	TaskFdwRetention;
extern int	TaskFdwMaxConnections;
extern double TaskFdwNotifyQueueLimit;
extern int	TaskFdwClaimAhead;
extern int	TaskFdwClaimAheadStall;
extern int	TaskFdwMaxInterruptedAttempts;
extern void TaskFdwCheckPreloaded(void);

/* in option.c */
typedef struct TaskServerOptions
{
	int			pool_size;
	int			connect_timeout;	/* seconds, 0 = none */
	int64		connect_retry_timeout;	/* microseconds tasks wait for an
										 * unreachable server */
	bool		reset_session;	/* reset a pooled session before each task */
	int			pipeline_depth; /* tasks a connection sends ahead, at most */
} TaskServerOptions;
extern void TaskFdwGetServerOptions(ForeignServer *server,
									TaskServerOptions *opts);

/* Defaults of the per-task attributes, from a foreign table and its server. */
typedef struct TaskDefaults
{
	int			priority;
	Interval   *timeout;		/* NULL: none */
	int			max_attempts;
	List	   *retry_sqlstates;	/* of char *, five-character codes */
	Interval   *retry_delay;	/* NULL: the built-in one */
	char	   *batch;			/* NULL: none */
	bool		retry_interrupted;	/* on_interrupt 'retry' */
} TaskDefaults;
extern void TaskFdwGetTaskDefaults(ForeignTable *table, ForeignServer *server,
								   TaskDefaults *defaults);
extern int64 TaskFdwIntervalUsecs(const Interval *interval);
#define TFDW_MAX_INTERVAL_USECS	(INT64CONST(1) << 60)
extern bool TaskFdwPasswordRequired(UserMapping *user);
extern const char *TaskFdwPasswordProblem(ForeignServer *server, UserMapping *user,
										  const char **detail, const char **hint);
extern void TaskFdwCheckPassword(ForeignServer *server, UserMapping *user);
extern int	TaskFdwBuildConnParams(ForeignServer *server, UserMapping *user,
								   const char *appname,
								   const char ***keywords, const char ***values);

/* in attrs.c */
extern const TaskAttribute *TaskAttributeLookup(const char *name);
extern TaskColumnMap *TaskColumnMapBuild(Relation rel);
extern void TaskColumnMapProject(TaskColumnMap *map, const Datum *store_values,
								 const bool *store_nulls, Datum *values, bool *nulls);
extern Oid	TaskStoreLock(LOCKMODE lockmode, bool nowait, bool *busy);
extern bool TaskStoreIsCurrent(Relation rel);
extern Relation TaskStoreOpen(LOCKMODE lockmode);
extern Oid	TaskStoreIndex(const char *indexname);
extern SysScanDesc TaskStoreBeginStateScan(Relation rel, Snapshot snapshot,
											   const char *state);
extern bool TaskStoreRowInState(HeapTuple tup, TupleDesc desc, const char *state);
extern bool IsTaskFdwServer(Oid serverid);
extern char *TaskFdwServerName(Oid serverid);
extern List *taskImportForeignSchema(struct ImportForeignSchemaStmt *stmt,
									 Oid serverOid);

/* in shmem.c */
extern TaskFdwShared *TaskFdwState;
extern void TaskFdwShmemRequest(void);
extern void TaskFdwShmemStartup(void);
/* What a transaction did to tasks, for TaskFdwRequestDispatcher. */
#define TFDW_XACT_SUBMITTED		0x01	/* submitted or rescheduled tasks */
#define TFDW_XACT_CANCELLED		0x02	/* cancelled or deleted running tasks */
#define TFDW_XACT_FINISHED		0x04	/* cancelled queued tasks */
#define TFDW_XACT_LOCKED		0x08	/* locked task rows */
extern void TaskFdwRequestDispatcher(int what);
extern void TaskFdwNoteSubmission(Oid serverid, Oid userid, bool scheduled);
extern int	TaskFdwSlotTakeHints(DispatcherSlot *slot, TaskFdwPoolKey *hints);
extern void TaskFdwXactCallback(XactEvent event, void *arg);
extern DispatcherSlot *TaskFdwSlotAttach(Oid dboid);
extern DispatcherSlot *TaskFdwFindSlot(Oid dboid);
extern bool TaskFdwSlotIdleExit(DispatcherSlot *slot);
extern void TaskFdwSlotDetach(DispatcherSlot *slot, bool forget);
extern void TaskFdwSetProcLatch(int procno);
extern void TaskFdwStopDispatcher(Oid dboid);

/* in utility.c */
extern void TaskFdwInstallUtilityHook(void);

/* in launcher.c */
extern void TaskFdwRegisterLauncher(void);

/* in store.c */
typedef struct TaskInsertState TaskInsertState;

/* A task being submitted, with its attributes resolved. */
typedef struct TaskSubmission
{
	Oid			serverid;		/* where it runs */
	Oid			origin_serverid;	/* the server of the table it went through */
	Oid			userid;
	const char *submitted_by;
	Datum		sql;
	TimestampTz submitted_at;
	int			priority;
	bool		has_run_at;
	TimestampTz run_at;
	Interval   *timeout;		/* NULL: none */
	int			max_attempts;
	Datum		batch;			/* text, or 0 for none */
	Datum		retry_sqlstates;	/* text[], or 0 for none */
	Interval   *retry_delay;	/* NULL: the built-in one */
	bool		retry_interrupted;	/* queue again if interrupted */
} TaskSubmission;

extern struct ResultRelInfo *TaskStoreOpenForWriting(void);
extern void TaskStoreCloseForWriting(struct ResultRelInfo *rri);
extern TaskInsertState *TaskStoreBeginInsert(struct EState *estate);
extern void TaskStoreInsert(TaskInsertState *state, const TaskSubmission *sub,
							Datum *values, bool *nulls);
extern void TaskStoreEndInsert(TaskInsertState *state);
extern bool TaskStateIsFinal(const char *state);
extern bool TaskStateIs(Datum state, const char *name);
extern bool TaskStoreTaskVisible(Oid task_userid);
extern bool TaskStoreIsMonitor(void);
extern char *TaskStoreReadState(Relation rel, int64 id, bool *mine);
extern int64 TaskStoreTaskIdAt(Relation rel, ItemPointer tid, Oid *userid);
extern HeapTuple TaskStoreLockTask(Relation rel, int64 id);
extern HeapTuple TaskStoreChangeTask(Relation rel, int64 id, Datum *values, bool *nulls);
extern HeapTuple TaskStoreDeleteTask(Relation rel, int64 id);
extern void TaskStoreNotifyFinished(int64 id, const char *state);
typedef void (*TaskStoreTaskCallback) (HeapTuple tup, TupleDesc desc, bool running,
									   void *arg);
extern void TaskStoreForEachUnfinished(Relation rel, Snapshot snapshot,
									   TaskStoreTaskCallback fn, void *arg);
extern int64 TaskStoreCountUnfinished(void);

/* in wait.c */
extern void TaskFdwWakeWaiters(void);

#endif							/* TASK_FDW_H */
