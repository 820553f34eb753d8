# Tally build. `make` leaves the server at ./tally; `make test` runs every test.
#
# Objects go under build/<variant>/: `release` (default, -O2) and `asan` (AddressSanitizer and
# UBSan, used by the unit tests too). Every .c under src/ except src/cli/ is library code that
# tests link against; src/cli/ holds the commands and main().

CC ?= gcc
VARIANT ?= release
BUILD := build/$(VARIANT)

CFLAGS_BASE := -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wvla \
	-Isrc -D_GNU_SOURCE -g -fno-strict-aliasing -MMD -MP
ifeq ($(VARIANT),asan)
CFLAGS_VARIANT := -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -DTALLY_DEBUG=1
LDFLAGS_VARIANT := -fsanitize=address,undefined
else
CFLAGS_VARIANT := -O2
LDFLAGS_VARIANT :=
endif
CFLAGS := $(CFLAGS_BASE) $(CFLAGS_VARIANT) $(EXTRA_CFLAGS)
LDFLAGS := $(LDFLAGS_VARIANT) $(EXTRA_LDFLAGS)

LIB_SRC := $(shell find src -name '*.c' -not -path 'src/cli/*' | sort)
CLI_SRC := $(shell find src/cli -name '*.c' | sort)
TEST_SRC := $(shell find tests/unit -name 'test_*.c' | sort)
TOOL_SRC := $(shell find tests/server bench -name '*.c' 2>/dev/null | sort)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOL_BIN := $(TOOL_SRC:%.c=$(BUILD)/%)

.PHONY: all test unit-test clean format soak
all: tally

tally: $(BUILD)/tally
	cp -f $< $@

$(BUILD)/tally: $(CLI_OBJ) $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# `tally version --verbose` prints the flags the build used.
$(BUILD)/src/cli/main.o: CFLAGS += -DTALLY_BUILD_CFLAGS='"$(CC) $(CFLAGS_VARIANT) $(EXTRA_CFLAGS)"'

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(LIB_OBJ) $(LDFLAGS)

$(BUILD)/tests/server/%: tests/server/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(LIB_OBJ) $(LDFLAGS)

$(BUILD)/bench/%: bench/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIB_OBJ) $(LDFLAGS)

unit-bins: $(TEST_BIN)
tool-bins: $(TOOL_BIN)

# Unit tests only, in this variant.
unit-test: $(TEST_BIN)
	tests/run_unit.sh $(BUILD)/tests

# Everything: unit tests in release and sanitizer builds, server tests, Node client tests,
# conformance replay. tests/run_all.sh prints the closing "N passed, N failed" line.
test:
	tests/run_all.sh

# Crash recovery until stopped: rounds of 200 SIGKILLs with a new seed each.
soak: all tool-bins
	mkdir -p build/soak; seed=$$(date +%s); while true; do \
	  build/release/tests/server/crash ./tally build/soak 200 $$seed || exit 1; seed=$$((seed + 1)); done

clean:
	rm -rf build tally

format:
	clang-format -i $$(find src tests bench -name '*.[ch]')

-include $(shell find build -name '*.d' 2>/dev/null)

# The deterministic simulator on new seeds (1, 2, 3 and 5 replicas each) until stopped or until
# one fails; the failing run prints the command that replays it.
.PHONY: sim-soak
sim-soak: all
	seed=$$(date +%s); while true; do for replicas in 1 2 3 5; do \
	  ./tally sim --seed=$$seed --replicas=$$replicas || exit 1; done; seed=$$((seed + 1)); done
