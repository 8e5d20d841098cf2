# syntax=docker/dockerfile:1
# The agent as an image:  docker build -t mfa-agent .
# tests/test_deploy.py runs this file's steps without a container runtime: deploy/install.sh
# into a temporary folder, the app as `COPY . .` and .dockerignore give it, the CMD as a
# user that owns only the data folder, and the HEALTHCHECK against it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# A user of its own, with no login and no home. The app's files stay root's, so the
# agent cannot change its own code; it writes only to /data (0700, its own).
RUN groupadd --system --gid 10001 mfa \
 && useradd --system --uid 10001 --gid mfa --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mfa \
 && install -d -o mfa -g mfa -m 0700 /data

WORKDIR /app
# The requirements first, so a change to the code alone reuses this layer.
COPY requirements.txt ./
COPY deploy/install.sh deploy/
RUN sh deploy/install.sh /opt/venv requirements.txt
COPY . .

# The SQLite store and the development outbox live on the volume; in a fleet, set
# MFA_STORE=redis://... (compose.yaml does). Every other setting: README, "Configuration".
ENV PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=3000 \
    MFA_STORE=sqlite:////data/mfa.sqlite3 \
    MFA_OUTBOX=/data/outbox.jsonl
VOLUME ["/data"]
EXPOSE 3000

# Numeric, so an orchestrator's "run as non-root" check can verify it without /etc/passwd.
USER 10001:10001
# /health needs no credentials; the slim image has no curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "deploy/healthcheck.py"]
# uvicorn ends on SIGTERM (docker stop) after finishing the requests in flight.
CMD ["python", "agent.py"]
