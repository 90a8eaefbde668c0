# vemviz: `make demo` and `make test` work on a fresh machine.
# Two Python worlds: .venv (core: numpy 2, torch) and .venv-blender (bpy 5.0 wheel, numpy < 2).
PY ?= python3.11
VENV := .venv
BVENV := .venv-blender
DEMO_OUT ?= demo-out
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test lint addon clean test-tools

# torch first: `pip install torch==2.13.0` takes the local CPU build on our machines; installed
# afterwards as a dependency, pip would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[learn,distributed,dev]"
	touch $@

$(BVENV)/.installed:
	$(PY) -m venv $(BVENV)
	$(BVENV)/bin/pip install -q "bpy==5.0.*"
	touch $@

venv: $(VENV)/.installed $(BVENV)/.installed

demo: venv
	$(VENV)/bin/vemviz demo --out $(DEMO_OUT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The Khronos glTF validator (npm) for the GLB checks; tests skip with a reason without it.
tests/.node/node_modules/gltf-validator:
	-npm install --silent --prefix tests/.node --no-audit --no-fund gltf-validator@2.0.0-dev.3.10

test-tools: tests/.node/node_modules/gltf-validator

test: venv lint test-tools
	$(VENV)/bin/pytest -q -rs

addon: $(VENV)/.installed
	$(VENV)/bin/python scripts/build_addon.py

clean:
	rm -rf $(VENV) $(BVENV) $(DEMO_OUT) dist
