# Two commands set everything up on a fresh machine: `make test` and `make demo`.
# JAX 0.11.2 needs Python 3.12; we look for it on PATH and in pyenv's versions.
PY312 := $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
          /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do \
          $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
          && echo $$p && break; done)
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo venv gpu-check clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PY312)" || { echo "error: Python 3.12 not found (JAX 0.11.2 needs >= 3.12); install it or put python3.12 on PATH"; exit 1; }
	test -x $(PY) || $(PY312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(PY) -m jattn.demo

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache
