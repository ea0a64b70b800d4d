# The long-running jobs that stay outside the test suite. The suite itself is scripts/test.sh
# (the README's second command).
#
#   make fuzz [DURATION=60]    libFuzzer on the frame decoder and the handshake, for DURATION
#                              seconds (or 10m, 1h); inputs that reach new code are merged
#                              into Tests/FuzzCorpus, which the suite replays
#   make soak [DURATION=20m]   agents and a collector under resets and kill -9 (SoakTests)

DURATION ?=

.PHONY: fuzz soak test
fuzz:
	bash scripts/fuzz.sh $(or $(DURATION),60)

soak:
	bash scripts/soak.sh $(or $(DURATION),20m)

test:
	bash scripts/test.sh
