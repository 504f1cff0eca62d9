"""suggest_rename on real naming schemes of three families, checked against hand-written truth.

Each family writes tiny real checkpoints whose names follow a public scheme exactly (tf-slim's
resnet_v2 against Keras' ResNet50V2; Keras' auto-numbered layers against a TF2 object-based
checkpoint written by tf.train.Checkpoint; Google's TF1 BERT against the Keras/HF-TF BERT), with
the shape collisions of the real nets (a bottleneck as wide as its input, every attention
projection of one shape). Then: the mapping equals the truth, no pair differs in shape, the
rules reproduce the mapping through `plan`, and values warm-started through them are identical.
"""
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import read, register_source, same_bits, write_checkpoint

import warmstart
from warmstart import _match, cli, sources
from warmstart._checkpoint import VariableInfo

F32 = np.float32


def _values(triples, seed):
  rng = np.random.RandomState(seed)
  return [rng.standard_normal(shape).astype(F32) for _, _, shape in triples]


# ---------------------------------------------------------------------------------------------
# Family 1: tf-slim resnet_v2_50 (checkpoint) -> Keras ResNet50V2 names (model), tiny widths.


def resnet_triples(units=(2, 2, 2, 2), base=2):
  """[(slim name, keras name, shape)] of a ResNet-v2 bottleneck net; heads are separate."""
  triples = []

  def conv(slim, keras, shape, bias):
    triples.append(("resnet_v2_50/%s/weights" % slim, keras + "/kernel", shape))
    if bias:
      triples.append(("resnet_v2_50/%s/biases" % slim, keras + "/bias", shape[-1:]))

  def batch_norm(slim, keras, channels):
    for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
      triples.append(("resnet_v2_50/%s/%s" % (slim, leaf), "%s/%s" % (keras, leaf), (channels,)))

  conv("conv1", "conv1_conv", (7, 7, 3, base), True)
  channels = base
  for block, count in enumerate(units):
    bottleneck, depth = base * 2 ** block, 4 * base * 2 ** block
    for unit in range(1, count + 1):
      slim = "block%d/unit_%d/bottleneck_v2/" % (block + 1, unit)
      keras = "conv%d_block%d_" % (block + 2, unit)
      batch_norm(slim + "preact", keras + "preact_bn", channels)
      if unit == 1:
        conv(slim + "shortcut", keras + "0_conv", (1, 1, channels, depth), True)
      conv(slim + "conv1", keras + "1_conv", (1, 1, channels, bottleneck), False)
      batch_norm(slim + "conv1/BatchNorm", keras + "1_bn", bottleneck)
      conv(slim + "conv2", keras + "2_conv", (3, 3, bottleneck, bottleneck), False)
      batch_norm(slim + "conv2/BatchNorm", keras + "2_bn", bottleneck)
      conv(slim + "conv3", keras + "3_conv", (1, 1, bottleneck, depth), True)
      channels = depth
  batch_norm("postnorm", "post_bn", channels)
  return triples, channels


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
  root = tmp_path_factory.mktemp("resnet")
  triples, channels = resnet_triples()
  values = _values(triples, 0)
  slim = {s: v for (s, _, _), v in zip(triples, values)}
  slim["resnet_v2_50/logits/weights"] = np.ones((1, 1, channels, 1001), F32)
  slim["resnet_v2_50/logits/biases"] = np.ones(1001, F32)
  slim["global_step"] = np.int64(50000)
  keras = {k: np.zeros(shape, F32) for _, k, shape in triples}
  keras["predictions/kernel"] = np.zeros((channels, 1000), F32)
  keras["predictions/bias"] = np.zeros(1000, F32)
  return dict(source=write_checkpoint(root / "slim", slim),
              target=write_checkpoint(root / "keras", keras),
              truth={k: s for s, k, _ in triples}, root=root)


def check(suggestion, truth, model_shapes, checkpoint_shapes):
  """Mapping == truth, and every pair agrees in shape."""
  wrong = {m: (c, truth.get(m)) for m, c in suggestion.mapping.items() if truth.get(m) != c}
  assert not wrong
  assert set(suggestion.mapping) == set(truth), sorted(set(truth) - set(suggestion.mapping))
  for model_name, checkpoint_name in suggestion.mapping.items():
    assert model_shapes[model_name] == checkpoint_shapes[checkpoint_name]


def shapes_of(path):
  return {v.name: v.shape for v in warmstart.list_variables(path)}


def loaded(plan):
  return {e.name: e.checkpoint_name for e in plan.report.loaded}


def test_slim_resnet_into_keras_names(resnet):
  s = warmstart.suggest_rename(resnet["source"], resnet["target"])
  check(s, resnet["truth"], shapes_of(resnet["target"]), shapes_of(resnet["source"]))
  # The heads differ in shape (1001 vs 1000 classes, 1x1 conv vs dense): unmatched, both shapes.
  assert s.unmatched_model == ["predictions/bias", "predictions/kernel"]
  assert "(1, 1, 64, 1001)" in s.reasons["predictions/kernel"]
  assert "(64, 1000)" in str(s)
  assert set(s.unmatched_checkpoint) == {"resnet_v2_50/logits/weights",
                                         "resnet_v2_50/logits/biases"}
  # The stage offset (conv2 = block1) takes one rule per stage, yet far fewer than pairs.
  assert any(p.startswith("conv3_block") and "block2/unit_\\1" in t for p, t in s.rules)
  assert len(s.rules) <= 30 < len(s.mapping)
  # The round trip: exactly the mapping loads, nothing else, no problem.
  assert loaded(warmstart.plan(resnet["source"], resnet["target"], rename=s.rules)) == s.mapping
  # The other direction (a slim-named model reading a Keras-named checkpoint).
  back = warmstart.suggest_rename(resnet["target"], resnet["source"])
  check(back, {k: m for m, k in resnet["truth"].items()}, shapes_of(resnet["source"]),
        shapes_of(resnet["target"]))
  assert loaded(warmstart.plan(resnet["target"], resnet["source"], rename=back.rules)) == (
      back.mapping)


def test_wrong_stage_offset_is_one_grouped_problem_naming_the_change(resnet):
  s = warmstart.suggest_rename(resnet["source"], resnet["target"])
  # The user's rules, with the stage arithmetic wrong for conv3_* (block3 instead of block2).
  rules = [(p, t.replace("/block2/", "/block3/")) if p.startswith("conv3_") else (p, t)
           for p, t in s.rules]
  with pytest.raises(warmstart.PlanError) as error:
    warmstart.plan(resnet["source"], resnet["target"], rename=rules)
  message = str(error.value)
  assert len(error.value.problems) > 20  # still one line per problem for programs
  assert len(message.splitlines()) < 8  # grouped for people
  assert re.search(r"\d+ x shape differs", message)
  assert "the number after 'block' is smaller by 1" in message


def test_no_rename_and_nothing_matches_points_at_suggest(resnet):
  with pytest.raises(warmstart.PlanError, match="warmstart suggest --from") as error:
    warmstart.plan(resnet["source"], resnet["target"])
  assert resnet["target"] in str(error.value)


def test_cli_suggest_output_pastes_as_flags(resnet):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.path.dirname(
      os.path.dirname(os.path.abspath(__file__))))
  suggest = subprocess.run(
      [sys.executable, "-m", "warmstart", "suggest", "--from", resnet["source"], "--to",
       resnet["target"]], capture_output=True, text=True, env=env, timeout=300, check=True)
  assert suggest.stdout.startswith("--rename=")
  assert "# unmatched model variables (2)" in suggest.stdout
  # Pasted after `warmstart plan --from SRC --to TARGET \`: the words the shell sees.
  words = shlex.split(suggest.stdout.replace("\\\n", " "), comments=True)
  assert all(w.startswith("--rename=") for w in words)
  rules = cli._rename_rules([w[len("--rename="):] for w in words])
  expected = warmstart.suggest_rename(resnet["source"], resnet["target"])
  assert rules == expected.rules
  assert loaded(warmstart.plan(resnet["source"], resnet["target"], rename=rules)) == (
      expected.mapping)


# ---------------------------------------------------------------------------------------------
# Family 2: a TF2 object-based checkpoint of a Keras model (tf.train.Checkpoint: the keys are
# layer indices) -> the same architecture with Keras' auto-numbered TF1 names, numbered from 17.


def keras_cnn():
  layers = [tf.keras.Input((8, 8, 3))]
  for _ in range(4):  # four conv/bn pairs of one shape: only structure tells them apart
    layers += [tf.keras.layers.Conv2D(4, 3, padding="same"), tf.keras.layers.BatchNormalization()]
  layers += [tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(4),
             tf.keras.layers.Dense(4)]
  return tf.keras.Sequential(layers)


@pytest.fixture(scope="module")
def keras_object(tmp_path_factory):
  root = tmp_path_factory.mktemp("tf2")
  model = keras_cnn()
  truth, paths = {}, {}
  counters = {"conv2d": 17, "batch_normalization": 17, "dense": 3}
  target = {}
  for index, layer in enumerate(layer for layer in model.layers if layer.weights):
    kind = {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization",
            "Dense": "dense"}[type(layer).__name__]
    scope = "%s_%d" % (kind, counters[kind])
    counters[kind] += 1
    for weight in layer.weights:
      leaf = weight.name.split("/")[-1].split(":")[0]
      weight.assign(np.random.RandomState(len(truth)).standard_normal(weight.shape))
      # The checkpoint lists each tensor under the name its variable had (from the object
      # graph); its key is the object path.
      truth["%s/%s" % (scope, leaf)] = weight.name.split(":")[0]
      paths["%s/%s" % (scope, leaf)] = (
          "model/layer_with_weights-%d/%s/.ATTRIBUTES/VARIABLE_VALUE" % (index, leaf))
      target["%s/%s" % (scope, leaf)] = np.zeros(weight.shape, F32)
  source = tf.train.Checkpoint(model=model).write(str(root / "tf2" / "ckpt"))
  register_source(source)
  return dict(source=source, target=write_checkpoint(root / "keras", target), truth=truth,
              paths=paths)


def test_keras_auto_numbered_names_from_tf2_object_checkpoint(keras_object):
  source, target, truth = keras_object["source"], keras_object["target"], keras_object["truth"]
  s = warmstart.suggest_rename(source, target)
  check(s, truth, shapes_of(target), shapes_of(source))
  assert s.unmatched_model == []
  plan = warmstart.plan(source, target, rename=s.rules)
  assert loaded(plan) == s.mapping
  # Without the names the object graph recorded (the tensors listed by object path), structure
  # alone (order within each class of tensor, shapes) still pairs the four same-shaped conv/bn
  # layers correctly.
  with sources.open_reader(warmstart.resolve_checkpoint(source)) as reader:
    by_path = [dataclasses.replace(v, name=reader.key_of(v.name))
               for v in reader.variables.values()]
  found = _match.match(warmstart.list_variables(target), by_path)
  assert found.mapping == keras_object["paths"]


# ---------------------------------------------------------------------------------------------
# Family 3: Google's TF1 BERT checkpoint -> Keras/HF-TF BERT names; warm start through a model_fn.

HIDDEN, INTERMEDIATE, LAYERS, VOCAB, POSITIONS = 4, 8, 3, 11, 7


def bert_triples():
  """[(TF1 name, HF-TF name, shape)] of a BERT encoder."""
  tf1, hf = "bert/", "tf_bert_model/bert/"
  out = [(tf1 + "embeddings/word_embeddings", hf + "embeddings/word_embeddings/weight",
          (VOCAB, HIDDEN)),
         (tf1 + "embeddings/token_type_embeddings",
          hf + "embeddings/token_type_embeddings/embeddings", (2, HIDDEN)),
         (tf1 + "embeddings/position_embeddings",
          hf + "embeddings/position_embeddings/embeddings", (POSITIONS, HIDDEN))]
  norm = [("gamma", (HIDDEN,)), ("beta", (HIDDEN,))]
  out += [(tf1 + "embeddings/LayerNorm/" + p, hf + "embeddings/LayerNorm/" + p, s)
          for p, s in norm]
  for layer in range(LAYERS):
    a, b = tf1 + "encoder/layer_%d/" % layer, hf + "encoder/layer_._%d/" % layer
    dense = [("attention/self/query", HIDDEN, HIDDEN), ("attention/self/key", HIDDEN, HIDDEN),
             ("attention/self/value", HIDDEN, HIDDEN), ("attention/output/dense", HIDDEN, HIDDEN),
             ("intermediate/dense", HIDDEN, INTERMEDIATE), ("output/dense", INTERMEDIATE, HIDDEN)]
    for scope, n_in, n_out in dense:
      out += [(a + scope + "/kernel", b + scope + "/kernel", (n_in, n_out)),
              (a + scope + "/bias", b + scope + "/bias", (n_out,))]
      if scope in ("attention/output/dense", "output/dense"):
        norm_scope = scope.replace("dense", "LayerNorm")
        out += [(a + norm_scope + "/" + p, b + norm_scope + "/" + p, s) for p, s in norm]
  out += [(tf1 + "pooler/dense/kernel", hf + "pooler/dense/kernel", (HIDDEN, HIDDEN)),
          (tf1 + "pooler/dense/bias", hf + "pooler/dense/bias", (HIDDEN,))]
  return out


def bert_model_fn(features, labels, mode, params):
  """Creates the HF-named variables (in HF's order), plus a new head; loss on the head."""
  del labels, params
  for _, name, shape in bert_triples():
    tf.compat.v1.get_variable(name, shape, initializer=tf.compat.v1.zeros_initializer())
  head = tf.compat.v1.get_variable("classifier/kernel", (HIDDEN, 3))
  loss = tf.reduce_sum(tf.matmul(features["x"], head))
  step = tf.compat.v1.train.get_global_step()
  train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, step)
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def bert_input_fn():
  return tf.data.Dataset.from_tensors(({"x": np.ones((2, HIDDEN), F32)}, np.zeros(2))).repeat()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  root = tmp_path_factory.mktemp("bert")
  triples = bert_triples()
  tensors = {a: v for (a, _, _), v in zip(triples, _values(triples, 3))}
  tensors.update({"cls/predictions/output_bias": np.ones(VOCAB, F32),
                  "cls/seq_relationship/output_weights": np.ones((2, HIDDEN), F32),
                  "global_step": np.int64(1000000)})
  return dict(source=write_checkpoint(root / "tf1", tensors),
              truth={b: a for a, b, _ in triples}, root=root)


def test_bert_tf1_into_hf_names_through_a_model_fn_values_identical(bert):
  s = warmstart.suggest_rename(bert["source"], bert_model_fn, input_fn=bert_input_fn)
  model_shapes = {b: shape for _, b, shape in bert_triples()}
  check(s, bert["truth"], model_shapes, shapes_of(bert["source"]))
  assert s.unmatched_model == ["classifier/kernel"]
  # Few rules: one for all encoder layers; the embedding names that differ in their last part.
  assert ("tf_bert_model/bert/encoder/layer_\\._(\\d+)/(.+)", "bert/encoder/layer_\\1/\\2") in (
      s.rules)
  assert len(s.rules) <= 6
  model_dir = str(bert["root"] / "model")
  estimator = warmstart.estimator_from(bert_model_fn, model_dir=model_dir,
                                       warm_start_from=bert["source"], rename=s.rules,
                                       freeze=True)
  estimator.train(bert_input_fn, steps=1)
  trained = tf.train.latest_checkpoint(model_dir)
  for model_name, checkpoint_name in s.mapping.items():
    assert same_bits(read(trained, model_name), read(bert["source"], checkpoint_name))
  assert not same_bits(read(trained, "classifier/kernel"), np.zeros((HIDDEN, 3), F32))


def test_bert_reverse_direction_and_json(bert, tmp_path):
  triples = bert_triples()
  target = write_checkpoint(tmp_path / "hf", {b: np.zeros(s, F32) for _, b, s in triples})
  s = warmstart.suggest_rename(target, bert["source"])
  check(s, {a: b for a, b, _ in triples}, shapes_of(bert["source"]), shapes_of(target))
  data = json.loads(s.to_json())
  assert data["mapping"] == s.mapping and data["rules"] == [list(r) for r in s.rules]
  assert {u["name"] for u in data["unmatched_model"]} == {
      "cls/predictions/output_bias", "cls/seq_relationship/output_weights"}


# ---------------------------------------------------------------------------------------------
# What is not suggested: indistinguishable candidates.


def test_indistinguishable_candidates_are_left_unmatched_and_said_so(tmp_path):
  source = write_checkpoint(tmp_path / "a", {"left/w": np.ones(3, F32),
                                             "right/w": np.zeros(3, F32),
                                             "stem/kernel": np.ones((2, 2), F32)})
  target = write_checkpoint(tmp_path / "b", {"net/p/kernel": np.ones(3, F32),
                                             "net/q/kernel": np.ones(3, F32),
                                             "net/stem/kernel": np.ones((2, 2), F32)})
  s = warmstart.suggest_rename(source, target)
  assert s.mapping == {"net/stem/kernel": "stem/kernel"}
  assert s.unmatched_model == ["net/p/kernel", "net/q/kernel"]
  assert "indistinguishable" in s.reasons["net/p/kernel"]
  assert loaded(warmstart.plan(source, target, rename=s.rules)) == s.mapping


def test_readme_different_names_example_runs_verbatim(tmp_path, monkeypatch, capsys):
  readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
  text = open(readme).read()
  section = text[text.index("## Different names"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  shown = re.search(r"`print\(s\)` shows:\n\n```\n(.*?)```", section, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
  assert shown.strip() in capsys.readouterr().out


def test_synonyms_pair_words_that_name_the_same_parameter():
  def infos(names, channels=5):
    return [VariableInfo.make(n, (channels,), "float32") for n in names]
  # Two same-shaped batch norms: only the words (with synonyms) and the numbers tell them apart.
  model = infos(["features/bn1/moving_mean", "features/bn1/moving_variance", "features/bn1/gamma",
                 "features/bn1/beta", "features/bn2/moving_mean", "features/bn2/gamma"])
  checkpoint = infos(["net/norm_2/scale", "net/norm_1/running_var", "net/norm_1/offset",
                      "net/norm_1/scale", "net/norm_1/running_mean", "net/norm_2/running_mean"])
  assert _match.match(model, checkpoint).mapping == {
      "features/bn1/moving_mean": "net/norm_1/running_mean",
      "features/bn1/moving_variance": "net/norm_1/running_var",
      "features/bn1/gamma": "net/norm_1/scale", "features/bn1/beta": "net/norm_1/offset",
      "features/bn2/moving_mean": "net/norm_2/running_mean",
      "features/bn2/gamma": "net/norm_2/scale"}
