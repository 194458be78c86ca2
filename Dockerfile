# The calendar-sync consumer image (used by docker-compose.yml).
# Stage 1 builds the wheel (the migrations in sql/ and the pages' templates ship inside it;
# the dev tooling in calsync_dev/ is a distribution of its own and never does);
# stage 2 installs that wheel and its dependencies, nothing editable, and runs as a user.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY consumer ./consumer
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel's dependencies include tzdata: IANA zones without /usr/share/zoneinfo.
COPY --from=build /dist /dist
RUN pip install /dist/*.whl && rm -rf /dist \
    && useradd --system --uid 10001 --no-create-home calsync
USER calsync
WORKDIR /tmp
ENV CALSYNC_LOG_FORMAT=json
ENTRYPOINT ["calsync"]
CMD ["consume"]
