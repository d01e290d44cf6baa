# One image for every role: `tg-gateway ingress|worker|sender|pipeline|emulator`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY workers ./workers
RUN pip install . && useradd --system --uid 10001 gateway
USER gateway
EXPOSE 8080
ENTRYPOINT ["tg-gateway"]
CMD ["--help"]
