# The two commands of the README. Both create .venv on first use.
.PHONY: workbook test setup gpu-wheels gpu-check

setup:
	@bash scripts/setup-env.sh

workbook: setup
	.venv/bin/python -m nlu_helpers run --profile $(or $(PROFILE),cpu-demo) --readme README.md

test: setup
	@bash scripts/ensure-chromium.sh
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

# GPU check (issue 16). Here: fetch the wheels a GPU machine without a package index lacks, into .whl/.
# There: install them, run pytest -m cuda, the benchmarks and DeepSpeed; figures in $OUT or runs/gpu-check/.
# GPU_CHECK_ARGS=--dry-run rehearses the same run on the CPU with the tiny model.
GPU_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

gpu-wheels: setup
	.venv/bin/python scripts/gpu_wheels.py

gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)
