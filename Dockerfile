# One image for every role: `tg-gateway ingress|worker|sender|pipeline|emulator`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first, from the lock alone: every package pinned and hash-checked (`make
# lock` regenerates it from pyproject.toml), including the setuptools that builds the
# project, so nothing unpinned is fetched. Its own layer: code edits do not reinstall it.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY workers ./workers
RUN pip install --no-deps --no-build-isolation . && useradd --system --uid 10001 gateway
USER gateway
EXPOSE 8080
ENTRYPOINT ["tg-gateway"]
CMD ["--help"]
