# The two commands a newcomer needs: `make run` and `make test`.
# Everything is installed into a project-local virtualenv; nothing global.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed

.PHONY: run test test-pgbouncer pgbouncer browser screenshots lint format check-migrations bench bench-invoke bench-fairness bench-cron bench-queues bench-admin bench-log bench-scale upgrade-drill chaos chaos-short failover db-stop clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_demo
	$(PY) manage.py runstack

test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The admin's browser tests drive Debian's Chromium (Playwright's own browser
# download is not used). Installed once, as root with apt; elsewhere install
# the `chromium` package yourself or point PICLOUD_CHROMIUM at a Chromium.
CHROMIUM ?= $(or $(PICLOUD_CHROMIUM),/usr/bin/chromium)
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "no Chromium at $(CHROMIUM): install the chromium package (the browser tests need it)"; \
	  fi; }

# The acceptance suite through Debian's PgBouncer in transaction mode, twice:
# LISTEN on a direct connection, then polling (docs/operations.md, "Connection pooling").
test-pgbouncer: $(STAMP) browser pgbouncer
	$(PY) -m topology.pgbouncer $(PYTEST_ARGS)

# Debian's PgBouncer, installed once as root with apt, like the browser above.
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's pgbouncer for the pooling drill"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; \
	  else \
	    echo "no pgbouncer: install the pgbouncer package (make test-pgbouncer needs it)"; \
	  fi; }

# Runs the browser tests and keeps their screenshots in docs/screenshots/.
screenshots: $(STAMP) browser
	PICLOUD_SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest tests/acceptance/test_admin_browser.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The dispatcher beside its peers, noop rows and 100 ms webhooks, and synchronous
# invocation; each writes its section of docs/benchmarks.md (minutes, not for CI).
bench: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/webhooks.py
	$(PY) benchmarks/invoke_load.py
	$(PY) benchmarks/fairness.py
	$(PY) benchmarks/claim_fair.py
	$(PY) benchmarks/cron_lateness.py
	$(PY) benchmarks/queues.py
	$(PY) benchmarks/delivery_log.py
	$(PY) benchmarks/admin_pages.py
	$(PY) benchmarks/scaleout.py

# Fairness across apps (B's latency while A is loaded; C's throughput while A hangs).
bench-fairness: $(STAMP)
	$(PY) benchmarks/fairness.py $(BENCH_ARGS)

# Cron tick lateness, idle and beside a busy outbox.
bench-cron: $(STAMP)
	$(PY) benchmarks/cron_lateness.py $(BENCH_ARGS)

# Topics and queues: publish to first subscriber start, and a queue trigger's
# throughput beside pgmq's read/delete floor.
bench-queues: $(STAMP)
	$(PY) benchmarks/queues.py $(BENCH_ARGS)

# The delivery log's disk use per million attempts.
bench-log: $(STAMP)
	$(PY) benchmarks/delivery_log.py $(BENCH_ARGS)

# Every event source under node kills, lost sessions and database restarts,
# ending with a ledger (0 lost, 0 stuck, every duplicate explained) written to
# docs/reliability.md (minutes). chaos-short is CI's one-minute version.
CHAOS_ARGS ?= --seconds 500 --rate 80 --min-events 100000 --doc docs/reliability.md
chaos: $(STAMP)
	$(PY) -m topology.chaos $(CHAOS_ARGS)
chaos-short: $(STAMP)
	$(PY) -m topology.chaos --seconds 60 --rate 40 --fault-every 7

# Failover drill: primary + synchronous standby, the primary killed mid-drain and the standby promoted (minutes).
failover: $(STAMP)
	$(PY) -m pytest -p no:django -s topology/test_failover.py $(PYTEST_ARGS)

# Rolling upgrade from the previous release: old node, migrate, new node beside it (minutes).
upgrade-drill: $(STAMP)
	$(PY) -m pytest topology/test_rolling_upgrade.py -s $(PYTEST_ARGS)

# Admin pages (every list, change page and common filter) on 1,000,000 waiting
# outbox rows, 1,000,000 dead letters and 10,000,000 delivery log rows, as a
# superuser and as an app admin.
bench-admin: $(STAMP)
	$(PY) benchmarks/admin_pages.py $(BENCH_ARGS)

# 1, 2 and 3 qcluster nodes on one PostgreSQL: drains, steady-load start latency, CPU split.
bench-scale: $(STAMP)
	$(PY) benchmarks/scaleout.py $(BENCH_ARGS)

# Synchronous invocation over HTTP under load; writes its section of docs/benchmarks.md.
bench-invoke: $(STAMP)
	$(PY) benchmarks/invoke_load.py $(BENCH_ARGS)

check-migrations: $(STAMP)
	$(PY) manage.py makemigrations --check --dry-run

# Stops the embedded PostgreSQL (it keeps running between commands on purpose).
db-stop: $(STAMP)
	$(PY) -m picloud.db.embedded stop

clean: db-stop
	rm -rf $(VENV) .pgdata
