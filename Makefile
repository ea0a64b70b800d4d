# The long-running jobs that stay outside the test suite. The suite itself is scripts/test.sh
# (the README's second command).
#
#   make fuzz [DURATION=60]    libFuzzer on the frame decoder and the handshake, for DURATION
#                              seconds (or 10m, 1h); inputs that reach new code are merged
#                              into Tests/FuzzCorpus, which the suite replays
#   make soak [DURATION=20m]   agents and a collector under resets and kill -9 (SoakTests)
#   make bench [ARGS=--quick]  spoolship against bare C and rsync (bench/bench.sh)

DURATION ?=

.PHONY: fuzz soak test bench
fuzz:
	bash scripts/fuzz.sh $(or $(DURATION),60)

soak:
	bash scripts/soak.sh $(or $(DURATION),20m)

test:
	bash scripts/test.sh

# make bench [ARGS=--quick]: the benchmark of issue 6 (bench/bench.sh); results in bench/out.
bench:
	bash bench/bench.sh $(ARGS)
