# Two commands from a fresh clone: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The pin is for the set-up path only (a CPU build from local disk on our machines);
# pyproject.toml allows a range so users can keep their own torch.
TORCH_PIN ?= torch==2.13.0
OUT ?= out

.PHONY: setup demo test lint bench notebooks graphviz browser clean

setup: $(VENV)/.installed graphviz

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_PIN)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# Graphviz's `dot` draws the nicer pictures; without it autogradlens falls back to matplotlib.
graphviz:
	@if command -v dot >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Graphviz (dot) with apt-get ..."; \
	  (apt-get install -y -qq graphviz >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq graphviz >/dev/null 2>&1)) \
	  || echo "could not install Graphviz; continuing with the matplotlib fallback"; \
	else echo "Graphviz 'dot' not found (install it with apt/brew/conda for nicer pictures); continuing without it"; fi

# The picture tests open the notebook displays and the report in a real headless Chromium (driven by Playwright,
# which never downloads a browser of its own here): Debian's `chromium` with apt when run as root; elsewhere
# install Chromium or Chrome yourself (or set CHROMIUM=/path/to/it). Without one the browser tests fail and say so.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || command -v google-chrome >/dev/null 2>&1 || [ -n "$$CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium for the browser tests with apt-get ..."; \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) \
	  || echo "could not install Chromium: the browser tests will fail until one is installed"; \
	else echo "Chromium not found: install it (apt/brew) or set CHROMIUM=/path/to/chrome; the browser tests need it"; fi

demo: setup
	$(PY) -m autogradlens demo --out $(OUT)

# Python's default, bytecode caching, even where the environment turns it off: pytest then keeps the assertion
# rewrite of the test modules between runs (1.5 s of every worker's start otherwise).
test: setup browser
	PYTHONDONTWRITEBYTECODE= MPLBACKEND=Agg $(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check autogradlens tests tutorials benchmarks

bench: setup
	$(PY) benchmarks/bench_trace.py

# The tutorials are jupytext scripts; JupyterLab with jupytext opens each .py as a notebook (right-click a .py:
# Open With > Notebook). JupyterLab refuses to run as root unless told: --allow-root only then.
notebooks: setup
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,notebooks]"
	$(VENV)/bin/jupyter lab --notebook-dir=tutorials $$([ "$$(id -u)" = 0 ] && echo --allow-root)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
