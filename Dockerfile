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
# Files we write (the beat schedule, the sink's outbox) live here, not in /app.
ENV EMAILQ_DATA_DIR=/home/emailq/data
WORKDIR /home/emailq
CMD ["celery", "-A", "emailq.worker", "worker", "-Q", "high,normal", "--loglevel=INFO"]
