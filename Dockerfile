FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY emailq emailq
COPY config config
COPY core core
COPY producer producer
COPY worker worker
RUN pip install --no-cache-dir '.[sink]' && useradd --system --create-home emailq
USER emailq
# Files we write (the beat schedule, the sink's outbox) live here, not in /app. Created
# now, as this user: beat cannot open its schedule in a missing directory, and a named
# volume mounted on the outbox takes this directory's owner.
ENV EMAILQ_DATA_DIR=/home/emailq/data
# Two malloc arenas, not one per busy thread: a worker's RSS stays flat (benchmarks/RESULTS.md).
ENV MALLOC_ARENA_MAX=2
RUN mkdir -p "$EMAILQ_DATA_DIR/outbox"
WORKDIR /home/emailq
CMD ["celery", "-A", "emailq.worker", "worker", "-Q", "high,normal", "--loglevel=INFO"]
