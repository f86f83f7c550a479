# The two commands of the README. Both create .venv on first use.
.PHONY: workbook test setup

setup:
	@bash scripts/setup-env.sh

workbook: setup
	.venv/bin/python -m nlu_helpers run --profile $(or $(PROFILE),cpu-demo)

test: setup
	@bash scripts/ensure-chromium.sh
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)
