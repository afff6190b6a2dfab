"""The Redis keys both sides use, in one place so a rename cannot split them."""

QUEUES = ("high", "normal")  # broker lists, named after the priorities; `high` is taken first
DEAD_LETTER = "dead_letter"  # a broker queue no worker consumes

IDEMPOTENCY = "emailq:idempotency:"  # + key -> the job id that owns it
BATCH = "emailq:batch:"  # + batch id -> hash of total, skipped, created_at
JOB = "emailq:job:"  # + job id -> the delivery ledger's hash (and + ":lock")
DELAYED = "emailq:delayed"  # sorted set of parked jobs, scored by due time
DELAYED_CLAIMED = "emailq:delayed:claimed"  # entries a mover took and has not published yet
COOLDOWN = "emailq:cooldown:"  # + check:host -> set while an alert cools down
EVENTS = "emailq:events"  # tracking events from producers, written to the store by workers
QUARANTINE = "emailq:quarantine"  # broker-queue items no worker could read, as JSON records
WAKE = "emailq:wake:"  # + queue -> entries a publish pushes to wake idle consumers (fetch.py)
CIRCUIT = "emailq:circuit:"  # + relay:port:login -> the circuit breaker's keys
MARKER = "emailq:marker"  # written once by the first worker: its absence means Redis lost its data
COUNTERS = "emailq:counters"  # job outcomes counted by workers, exported by /metrics
MONITOR = "emailq:monitor:"  # + host -> the worker process elected to watch that host
