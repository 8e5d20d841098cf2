#!/bin/sh
# The image's build step (a RUN in the Dockerfile), also run by tests/test_deploy.py
# into a temporary folder: a virtualenv at VENV with the packages of REQUIREMENTS.
#
#   sh deploy/install.sh VENV [REQUIREMENTS]     (REQUIREMENTS: requirements.txt)
#
# Wheels only: the slim base image has no compiler, so a package that would need one
# fails here, on any machine, instead of in the image build. PYTHON picks the
# interpreter (python3 by default).
set -eu
venv="${1:?usage: sh deploy/install.sh VENV [REQUIREMENTS]}"
requirements="${2:-requirements.txt}"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
  --requirement "$requirements"
