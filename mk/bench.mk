# make bench: BENCHMARKS.md and bench/batch.png; make bench-smoke: a short
# run with no report, so the bench cannot rot (CI runs it). HAPROXY_PKGS
# (mk/haproxy.mk, read after this file: named in the recipes) for the HAProxy rows.
BENCH_PKGS := nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev lua5.1 liblua5.1-0-dev \
	lua-socket lua-cjson lua-curl lua-cqueues lua-luv wrk gnuplot-nox curl
.PHONY: bench bench-smoke
bench:
	@./scripts/deps.sh -t bench $(DEPS_BUILD) $(BENCH_PKGS) $(HAPROXY_PKGS)
	./bench/bench.sh
bench-smoke:
	@./scripts/deps.sh -t bench $(DEPS_BUILD) $(BENCH_PKGS) $(HAPROXY_PKGS)
	BENCH_SMOKE=1 ./bench/bench.sh
