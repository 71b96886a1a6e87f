#!/usr/bin/env bash
# One command: install everything (Python packages, and Debian's chromium for the browser tests when this
# user may install it), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --disable-pip-version-check -q -r requirements.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "WARNING: could not install chromium; browser tests will be skipped"
  else
    echo "WARNING: chromium missing and not root; browser tests will be skipped"
  fi
fi
exec python -m pytest -q -p no:cacheprovider "$@" tests
