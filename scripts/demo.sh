#!/usr/bin/env bash
# One command: install everything, build/run the demo end to end, then serve the dashboard on localhost.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --disable-pip-version-check -q -r requirements.txt
python -m core demo
echo "Dashboard: http://localhost:${PORT:-8501}"
exec python -m streamlit run app.py --server.address 127.0.0.1 --server.port "${PORT:-8501}" --server.headless true
