# Convenience targets; each installs the pinned CPU build of torch first.
PYTHON ?= python3

.PHONY: install dev serve test lint docs docs-check proto proto-check bench ci

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[server]'

dev:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e '.[dev]'

serve: install
	jacserve serve

test: dev
	$(PYTHON) -m pytest

lint:
	ruff check .
	ruff format --check .
	buf lint
	$(PYTHON) scripts/gen_proto.py --check

docs:
	mkdocs build --strict   # site/; mkdocs serve for a live preview

docs-check:  # the built site: doctests as highlighted code, no literal roles, nothing remote
	$(PYTHON) -m pytest -q tests/test_docs_site.py

proto:
	buf lint
	$(PYTHON) scripts/gen_proto.py

proto-check:
	$(PYTHON) scripts/gen_proto.py --check

bench:
	$(PYTHON) -m pip install -e '.[bench]'
	$(PYTHON) bench/suite.py
	$(PYTHON) bench/service.py
	$(PYTHON) bench/streaming.py
	$(PYTHON) bench/scaleout.py
	$(PYTHON) bench/analysis.py
	$(PYTHON) bench/compilation.py
	$(PYTHON) bench/upload.py
	$(PYTHON) bench/request_path.py
	$(PYTHON) bench/global_sensitivity.py
	$(PYTHON) bench/checkpointing.py

ci:
	CI=true bash .ci/run
