# make rock: both rockspecs (scm-1 and the release's) through luarocks lint,
# luarocks pack from this checkout's committed files, luarocks install into
# fresh trees for 5.4 and 5.1, and a case created through each install
# (scripts/rock.sh says what that proves and what it does not).
.PHONY: rock
rock:
	@./scripts/deps.sh -t rock $(DEPS_DEMO) lua5.4 liblua5.4-dev lua5.1 liblua5.1-0-dev luarocks git
	./scripts/rock.sh
