FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY producer producer
COPY worker worker
COPY flowerconfig.py ./
RUN pip install --no-cache-dir . && useradd --system emailq
USER emailq
CMD ["celery", "-A", "worker", "worker", "-Q", "high,normal", "--loglevel=INFO"]
