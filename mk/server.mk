# make server [SERVER_PORT=8080] [SERVER_ARGS=--verbose]: the local Acquire server
# (spec/server/acquire_server.py) in the foreground on 127.0.0.1, until Ctrl-C. It prints its
# URL and key as the two variables a script reads (acquire.create_case with no configure,
# acquire-case), so `export …` of that line points any script at it. SERVER_PORT 0 (the
# default) is a free port. Its flags and /_control/ endpoint: doc/development.md.
SERVER_PORT ?= 0
SERVER_ARGS ?=
.PHONY: server
server:
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/acquire-server.XXXXXX") || exit 1; \
	trap 'kill $$pid 2>/dev/null; rm -rf "$$dir"' EXIT; trap 'exit 130' INT TERM; \
	$(PYTHON) spec/server/acquire_server.py --port $(SERVER_PORT) --port-file "$$dir/port" $(SERVER_ARGS) >/dev/null & pid=$$!; \
	while [ ! -s "$$dir/port" ]; do kill -0 $$pid 2>/dev/null || exit 1; sleep 0.05; done; \
	read -r port _ < "$$dir/port"; \
	echo "the local Acquire server, until Ctrl-C: URL http://127.0.0.1:$$port, key test-key"; \
	echo "export ACQUIRE_BASE_URL=http://127.0.0.1:$$port ACQUIRE_API_KEY=test-key"; \
	wait $$pid
