/*
 * PROTOTYPE (issue 13, fourth pass, optional part; not installed by idxr-pg): DELETE captured
 * without a transition table. A BEFORE DELETE FOR EACH ROW trigger (idxr_capture_collect)
 * appends the row's entity keys to a backend-local list (TopTransactionContext; dropped at
 * transaction end, trimmed on subtransaction abort), and an AFTER DELETE FOR EACH STATEMENT
 * trigger without REFERENCING (idxr_capture_flush) queues the keys of its table and kind
 * with the same rules as idxr_capture. Plain tables only (a partition's cloned row trigger
 * sees the partition, the statement trigger the parent). Built from the integrated sources
 * (included, so their static functions are shared) as a library of its own,
 * idxr_capture_rows, used by bench/capture_ab.py variant c_rowdel.
 */
#include "../../idxr_pg/capture/c/idxr_capture.c"

typedef struct PendingKey
{
	Oid			relid;
	const char *kind;
	char	   *key;
	int			level;
} PendingKey;

static PendingKey *pending_keys = NULL;
static int	npending = 0;
static int	spending = 0;
static bool callbacks_registered = false;

static void
rows_xact_callback(XactEvent event, void *arg)
{
	/* the list lives in TopTransactionContext: forget it whenever the transaction ends */
	pending_keys = NULL;
	npending = spending = 0;
}

static void
rows_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			i,
				n = 0;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		for (i = 0; i < npending; i++)
			if (pending_keys[i].level < level)
				pending_keys[n++] = pending_keys[i];
		npending = n;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = 0; i < npending; i++)
			if (pending_keys[i].level >= level)
				pending_keys[i].level = level - 1;
	}
}

static void
pending_add(Oid relid, const char *kind, char *key)
{
	if (npending == spending)
	{
		spending = spending ? spending * 2 : 64;
		pending_keys = pending_keys
			? repalloc(pending_keys, sizeof(PendingKey) * spending)
			: MemoryContextAlloc(TopTransactionContext, sizeof(PendingKey) * spending);
	}
	pending_keys[npending].relid = relid;
	pending_keys[npending].kind = kind;
	pending_keys[npending].key = key;
	pending_keys[npending].level = GetCurrentTransactionNestLevel();
	npending++;
}

PG_FUNCTION_INFO_V1(idxr_capture_collect);
PG_FUNCTION_INFO_V1(idxr_capture_flush);

Datum
idxr_capture_collect(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Capture    *c;
	MemoryContext caller;
	Oid			relid;
	const char *kind;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idxr_capture_collect: must be BEFORE DELETE ... FOR EACH ROW")));
	refuse_outside_idxr(fcinfo);
	if (!callbacks_registered)
	{
		RegisterXactCallback(rows_xact_callback, NULL);
		RegisterSubXactCallback(rows_subxact_callback, NULL);
		callbacks_registered = true;
	}
	c = capture_for(td);
	relid = RelationGetRelid(td->tg_relation);
	caller = MemoryContextSwitchTo(TopTransactionContext);
	kind = (npending > 0 && strcmp(pending_keys[npending - 1].kind, c->kind) == 0)
		? pending_keys[npending - 1].kind : pstrdup(c->kind);
	for (i = 0; i < c->nreaders; i++)
	{
		bool		isnull;
		Datum		value = slot_getattr(td->tg_trigslot, c->readers[i].key, &isnull);

		if (!isnull)
			pending_add(relid, kind, key_text(&c->readers[i].text, value));
	}
	MemoryContextSwitchTo(caller);
	return PointerGetDatum(td->tg_trigtuple);
}

Datum
idxr_capture_flush(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Capture    *c;
	Keys		keys = {0};
	Oid			relid;
	bool		enqueued;
	int			i,
				n = 0;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) || !TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idxr_capture_flush: must be AFTER DELETE ... FOR EACH STATEMENT")));
	refuse_outside_idxr(fcinfo);
	c = capture_for(td);
	relid = RelationGetRelid(td->tg_relation);
	for (i = 0; i < npending; i++)
	{
		if (pending_keys[i].relid == relid && strcmp(pending_keys[i].kind, c->kind) == 0)
			keys_add(&keys, pending_keys[i].key);
		else
			pending_keys[n++] = pending_keys[i];
	}
	npending = n;
	if (keys.n > BATCH_THRESHOLD && !c->unique)
		keys_distinct(&keys);
	if (keys.n == 0)
		return PointerGetDatum(NULL);
	if (keys.n > BATCH_THRESHOLD || IsolationUsesXactSnapshot())
	{
		queue_batch(c, &keys, "DELETE");
		enqueued = true;
	}
	else
	{
		keys_distinct(&keys);
		enqueued = queue_keys(c, &keys, "DELETE");
	}
	if (enqueued && c->notify)
		wake(c);
	return PointerGetDatum(NULL);
}
