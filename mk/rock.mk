# make rock: luarocks lint, pack, install into fresh trees for 5.4 and 5.1.
.PHONY: rock
rock:
	@./scripts/deps.sh lua5.1 liblua5.1-0-dev luarocks git
	./scripts/rock.sh
