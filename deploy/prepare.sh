#!/bin/sh
# Before the first `docker compose up`: a .env with random secrets, and a self-signed
# certificate for PUBLIC_HOST, each made only if it is not there yet (safe to run again).
#
#   PUBLIC_HOST=agent.example.com HTTPS_PORT=443 deploy/prepare.sh
#
# PUBLIC_HOST (default localhost) and HTTPS_PORT (default 443) are written into a new
# .env, which compose.yaml reads. Replace deploy/tls/cert.pem and key.pem with a
# certificate a CA signed for PUBLIC_HOST before the platform calls the agent: it
# does not trust a self-signed one. MFA_ENV_FILE and MFA_TLS_DIR choose other places
# (tests/test_deploy.py uses them).
set -eu
cd "$(dirname "$0")/.."
env_file="${MFA_ENV_FILE:-.env}"
tls_dir="${MFA_TLS_DIR:-deploy/tls}"
host="${PUBLIC_HOST:-localhost}"
umask 077  # the secrets and the private key are for this user only

secret() { openssl rand -hex 24; }

if [ -f "$env_file" ]; then
  echo "$env_file is there already: left as it is" >&2
else
  cat > "$env_file" <<ENV
# Made by deploy/prepare.sh. Secrets: keep this file private, and out of git and images.
# compose.yaml reads it; add SignalWire settings (README, "Configuration") here too.
PUBLIC_HOST=$host
HTTPS_PORT=${HTTPS_PORT:-443}
SWML_BASIC_AUTH_USER=signalwire
SWML_BASIC_AUTH_PASSWORD=$(secret)
SIGNALWIRE_SWAIG_SECRET=$(secret)
MFA_CODE_KEY=$(secret)
ENV
  echo "wrote $env_file (the Basic-auth password is in it)" >&2
fi

if [ -f "$tls_dir/cert.pem" ] && [ -f "$tls_dir/key.pem" ]; then
  echo "$tls_dir/cert.pem is there already: left as it is" >&2
else
  case "$host" in
    *[!0-9.]*) name="DNS:$host" ;;  # a name (an address has only digits and dots)
    *) name="IP:$host" ;;
  esac
  mkdir -p "$tls_dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$host" \
    -addext "subjectAltName=$name" \
    -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null
  echo "wrote a self-signed certificate for $host to $tls_dir (valid 365 days)" >&2
fi
