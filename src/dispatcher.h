/*-------------------------------------------------------------------------
 *
 * dispatcher.h
 *		  Structures of the dispatcher process, shared by dispatcher.c (the
 *		  event loop), pool.c (connections), task_exec.c (the per-connection
 *		  state machine) and queue.c (bookkeeping in the task store).
 *
 * IDENTIFICATION
 *		  src/dispatcher.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef TASK_FDW_DISPATCHER_H
#define TASK_FDW_DISPATCHER_H

#include "lib/ilist.h"
#include "storage/itemptr.h"
#include "libpq-fe.h"
#include "utils/hsearch.h"

struct Pool;
struct Conn;

/* Why the dispatcher asked the remote to cancel a task. */
typedef enum TaskCancelReason
{
	TASK_CANCEL_NONE,
	TASK_CANCEL_USER,			/* cancelled or deleted by UPDATE/DELETE */
	TASK_CANCEL_TIMEOUT			/* ran longer than its timeout */
} TaskCancelReason;

/* What a task's SQL is, for how it may be sent (task_exec.c). */
typedef enum TaskSqlKind
{
	TASK_SQL_UNKNOWN = 0,		/* not looked at yet */
	TASK_SQL_SEVERAL,			/* several statements: a simple query */
	TASK_SQL_ONE,				/* one statement, alone in its pipeline */
	TASK_SQL_SHAREABLE			/* one that may share a pipeline */
} TaskSqlKind;

/* A task's connection's application_name, when its pool resets sessions */
#define TASK_APPNAME_FORMAT "task_fdw task " INT64_FORMAT

/*
 * A task the dispatcher holds: claimed from the queue, running, or finished
 * and waiting for its outcome to be recorded.  Everything it owns lives in
 * its own memory context, deleted once the outcome is recorded.
 */
typedef struct Task
{
	int64		id;
	char	   *sql;
	TimestampTz submitted_at;
	ItemPointerData row_tid;	/* its row's version the dispatcher last read
								 * or wrote, or invalid */
	MemoryContext cxt;
	struct Pool *pool;
	struct Conn *conn;			/* connection running it, or NULL */
	dlist_node	node;			/* in pool->held, conn->ahead, conn->piped,
								 * starting or finished */

	/* control, from the task's row */
	int64		timeout;		/* microseconds, 0 = none */
	int			max_attempts;
	int			attempts;		/* including this one */
	List	   *retry_sqlstates;	/* of char *, besides classes 08 and 40 */
	int64		retry_delay;	/* microseconds before the first retry */
	bool		retry_interrupted;	/* on_interrupt 'retry' */
	TimestampTz deadline;		/* when it times out, or 0 */
	TaskCancelReason cancel_reason;
	TimestampTz cancel_at;		/* when to (re)send a cancel request, or 0 */
	bool		cancel_problem_logged;	/* said once that it cannot be cancelled */
	TaskSqlKind sql_kind;		/* see task_sql_kind */

	/* outcome */
	const char *final_state;	/* TFDW_STATE_DONE or TFDW_STATE_FAILED */
	TimestampTz started_at;
	TimestampTz finished_at;
	int			remote_pid;
	char	   *command_tag;
	bool		has_rows;
	int64		rows;
	bool		in_result;		/* between a result set's first row and its end */
	bool		has_result;		/* the last result was a row set */
	StringInfoData result;		/* JSON array text of the last row set */
	int			result_rows;	/* rows kept in result */
	bool		truncated;
	bool		result_has_json;	/* it embeds json or jsonb values */
	char	   *error;
	char	   *sqlstate;
	char	   *error_detail;
	char	   *error_hint;
	char	   *error_context;
	List	   *notices;		/* of char *: messages the remote sent */
	int			notice_bytes;
	int			notices_dropped;
	TimestampTz retry_at;		/* set when the outcome is a retry */
	bool		resolved;		/* TaskResolveOutcome has run */
	bool		recorded;		/* set by QueueRecordStarts/Finishes */
} Task;

/* States of a pooled connection; ConnAdvance has the one switch over them. */
typedef enum ConnState
{
	CONN_CONNECTING,			/* PQconnectPoll under way */
	CONN_IDLE,					/* connected, no task */
	CONN_ASSIGNED,				/* task waits for its start to be recorded */
	CONN_RESETTING,				/* session reset before the task is sent (or
								 * without a task, if it did not start) */
	CONN_RUNNING,				/* task sent, reading its results */
	CONN_CANCELLING,			/* canceller: cancel request sent */
	CONN_CLOSED					/* to be freed */
} ConnState;

typedef struct Conn
{
	dlist_node	node;			/* in pool->conns */
	struct Pool *pool;
	PGconn	   *conn;
	ConnState	state;
	pgsocket	sock;			/* socket registered in the wait set */
	uint32		wait_events;	/* events it waits for */
	uint32		registered_events;	/* events registered in the wait set */
	int			wait_pos;		/* its position in the wait set, or -1 */
	bool		used;			/* ran a task since its last session reset */
	bool		sql_pipelined;	/* its task's SQL follows the session reset */
	bool		reset_failed;	/* and the reset failed: not to be reused */
	int64		appname_task;	/* task named by its application_name, or 0 */
	TimestampTz deadline;		/* connect (or cancel) deadline, or 0 */
	Task	   *task;
	dlist_head	ahead;			/* started tasks to send after task */
	int			nahead;			/* those, and those whose start is being
								 * recorded */
	dlist_head	piped;			/* tasks sent after task, in its pipeline */
	int			npiped;			/* how many */
	int			cancel_pid;		/* canceller: the remote backend to cancel, or 0 */
	int64		cancel_task;	/* canceller: only while it runs this task,
								 * or 0 for whatever it runs */
	bool		counted;		/* counts toward task_fdw.max_connections */
} Conn;

typedef struct Pool
{
	TaskFdwPoolKey key;
	int			pool_size;
	int			connect_timeout;	/* seconds, 0 = none */
	int64		connect_retry_timeout;	/* microseconds */
	bool		reset_session;	/* reset sessions between tasks, and name
								 * them after their task */
	int			pipeline_depth; /* tasks a connection may send after the one
								 * it runs (ConnPipeAhead) */
	TimestampTz down_since;		/* unreachable since then, or 0 */
	TimestampTz next_connect_at;	/* while unreachable: next attempt */
	int			connect_failures;	/* in a row */
	char		last_error[TFDW_POOL_ERROR_LEN];	/* why the last attempt
													 * failed */
	TimestampTz blocked_until;	/* no connection could be opened: retry then */
	dlist_head	conns;			/* its connections, and cancellers */
	int			nconns;			/* connections, not counting cancellers */
	int			ncancellers;
	dlist_head	held;			/* claimed tasks waiting for a connection */
	int			nheld;
	bool		has_queued;		/* the queue may hold tasks for this pool */
	/*
	 * Where the last fetch stopped in the pool's queue order (priority
	 * descending, then id): the next fetch goes on from there rather than
	 * wading again through index entries of tasks claimed since.  Reset
	 * whenever the queue is looked at afresh (a commit, a retry, a
	 * scheduled time, the periodic recheck).
	 */
	bool		cursor_valid;
	int32		cursor_priority;
	int64		cursor_id;
	/*
	 * How long its tasks ran lately (an exponential moving average of the
	 * time from sending a task to its last result, in microseconds; -1 until
	 * one ran): connections claim short tasks ahead (PoolAhead).
	 */
	int64		run_usecs;
	bool		require_password;	/* connections must have used the password */
	bool		invalidated;	/* server or mapping changed: reconnect */

	/* For logs and task_fdw.pools (stats.c) */
	char		server_name[NAMEDATALEN];	/* as of the last connection */
	char		role_name[NAMEDATALEN];
	TimestampTz last_error_at;	/* when last_error was set, or 0 */
	bool		refused;		/* a refusal was logged since the last success */
	uint64		tasks_started;	/* attempts whose start was recorded */
	uint64		tasks_finished; /* attempts that ended, also before starting */
} Pool;

/* in dispatcher.c */
extern void DispatcherTaskFinished(Task *task);
extern void DispatcherRecordLater(Task *task);
extern void DispatcherConnChanged(void);
extern Task *DispatcherNewTask(Pool *pool, int64 id, const char *sql);

/* in pool.c */
/* A walk over every connection of every pool (ConnWalkBegin). */
typedef struct ConnWalk
{
	HASH_SEQ_STATUS pools;
	struct Pool *pool;			/* pool being walked, or NULL */
	dlist_node *next;			/* its connection to return next */
} ConnWalk;

extern void PoolInit(void);
extern Pool *PoolLookup(Oid serverid, Oid userid, bool create);
extern HTAB *PoolTable(void);
extern int	PoolCountState(Pool *pool, ConnState state);
extern int	PoolBusy(Pool *pool);
extern int	PoolCapacity(Pool *pool, TimestampTz now);
extern int	PoolAhead(Pool *pool);
extern bool PoolTakesAhead(Conn *conn, TimestampTz now);
extern void PoolNoteRunTime(Pool *pool, int64 usecs);
extern bool PoolWantsTurn(Pool *pool, TimestampTz now);
extern Task *PoolTakeHeld(Pool *pool);
extern void PoolAssignHeld(Pool *pool, dlist_head *starting, TimestampTz now);
extern bool PoolStartRecorded(Task *task);
extern void PoolConnect(Pool *pool);
extern void PoolCloseConn(Conn *conn);
extern void PoolFailHeld(Pool *pool, const char *sqlstate, const char *message,
						 const char *detail, const char *hint);
extern void PoolRetireIdle(void);
extern void PoolCloseAll(void);
extern const char *PoolStartCancel(Pool *pool, int remote_pid, int64 only_task);
extern void PoolUnreachable(Pool *pool, const char *message);
extern void PoolReachable(Pool *pool);
extern void PoolRefused(Pool *pool, const char *message);
extern TimestampTz PoolNextAttention(Pool *pool);
extern void ConnWalkBegin(ConnWalk *walk);
extern Conn *ConnWalkNext(ConnWalk *walk);
extern void ConnWalkEnd(ConnWalk *walk);

/* in task_exec.c */
extern void ConnAdvance(Conn *conn, uint32 events);
extern void ConnLost(Conn *conn);
extern void ConnResetEarly(Conn *conn);
extern void ConnSendTask(Conn *conn);
extern void ConnPipeAhead(Conn *conn);
extern void ConnFailPiped(Conn *conn, const char *sqlstate, const char *message);
extern void ConnReleaseAhead(Conn *conn, bool all);
extern TimestampTz ConnStalledAt(Conn *conn);
extern void TaskFail(Task *task, const char *sqlstate, const char *message);
extern void TaskFailWithDetail(Task *task, const char *sqlstate, const char *message,
							   const char *detail, const char *hint);
extern void TaskFailFromConn(Task *task, PGconn *conn, const char *sqlstate);
extern const char *TaskResolveOutcome(Task *task);
extern char *ConnErrorMessage(PGconn *pgconn, char *sqlstate);

/* in stats.c */
extern bool StatsChanged;
/* Pool status changed: publish it before the dispatcher next waits. */
#define StatsMarkChanged() (StatsChanged = true)
extern void StatsAttach(DispatcherSlot *slot);
extern void StatsPublish(void);
extern void StatsDetach(void);

/* in queue.c */
/* What QueueBegin found. */
typedef enum QueueStatus
{
	QUEUE_OK,					/* in a transaction, store locked */
	QUEUE_BUSY,					/* the store is locked by others: try later */
	QUEUE_GONE,					/* the extension was dropped */
	QUEUE_OUTDATED				/* the extension needs ALTER EXTENSION UPDATE */
} QueueStatus;

extern QueueStatus QueueBegin(bool nowait);
extern void QueueCommit(void);
extern void QueuePrepare(void);
extern void QueueFindOrphans(void);
extern bool QueueRecoverOrphans(int *failed, int *requeued, int *locked);
extern void QueueFindPools(void);
extern void QueueFetch(Pool *pool, int limit, TimestampTz now);
extern void QueueRecordStarts(dlist_head *tasks);
extern void QueueRecordFinishes(dlist_head *tasks);
extern void QueueMarkCancelled(List *running);
extern TimestampTz QueueNextRunAt(TimestampTz now);
extern int	QueuePurge(TimestampTz cutoff, int limit);

#endif							/* TASK_FDW_DISPATCHER_H */
