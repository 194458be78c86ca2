# The calendar-sync consumer image (used by docker-compose.yml).
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY sql ./sql
COPY schemas ./schemas
# Editable install keeps sql/ next to the package, where `calsync migrate` reads it.
RUN pip install -e . && useradd --system --uid 10001 calsync
USER calsync
ENV CALSYNC_LOG_FORMAT=json
ENTRYPOINT ["calsync"]
CMD ["consume"]
