"""suggest_rename on real architectures: fraction mapped correctly per naming-scheme pair, and time.

    python benchmarks/suggest_bench.py            # every pair whose packages are installed
    python benchmarks/suggest_bench.py --json out.json

The names and shapes come from the real code of each family, built here with random weights
(nothing is downloaded): tf-slim's `resnet_v2_50` and `inception_v3` (pip install tf-slim),
Keras' applications (ResNet50V2, InceptionV3 with its auto-numbered `conv2d_N` layers,
MobileNetV2, DenseNet121, EfficientNetB0), TF2 object-based checkpoints of those written by
`tf.train.Checkpoint` (keys `model/layer_with_weights-N/...`), and BERT-base in Google's TF1
names against the Keras/HF-TF names (`tf_bert_model/bert/encoder/layer_._N/...`).

Ground truth, never taken from the matcher:
  * slim resnet_v2 -> Keras ResNet50V2: a hand-written name translation (stage = block + 1,
    unit = block index, shortcut = `_0_conv`, preact, postnorm = post_bn).
  * slim inception_v3 -> Keras InceptionV3: both build the same convolutions in the same order
    (Keras numbers them `conv2d`, `conv2d_1`, ... in creation order; slim's graph creates them
    in the same order); AuxLogits and the heads have no counterpart.
  * Keras -> TF2 object checkpoint: every weight is set to a distinct value before saving and
    found again by value.
  * BERT: the TF1 and HF-TF names of one tensor are written side by side.
A pair is correct when it equals the truth; "wrong shape" counts pairs whose shapes differ (the
matcher never forms one). Time is that of `suggest_rename` itself on name/shape lists (matching
and rule induction), plus one end-to-end run through checkpoints files for the ResNet pair.
"""
import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import tensorflow as tf

import warmstart
from warmstart import _checkpoint, _suggest, sources


def infos(triples):
  return [_checkpoint.VariableInfo.make(n, s, d) for n, s, d in triples]


def graph_variables(build):
  with tf.Graph().as_default():
    build()
    return [(v.op.name, v.shape.as_list(), v.dtype.base_dtype.name)
            for v in tf.compat.v1.global_variables()]


def slim_nets():
  """{'resnet_v2_50': triples, 'inception_v3': triples} from tf-slim, or {} without it."""
  try:
    # tf-slim's batch_norm loads TF's legacy layers from `tf_keras`; Keras 2.15 has them.
    from keras.src.legacy_tf_layers import normalization
    for name in ("tf_keras", "tf_keras.legacy_tf_layers"):
      sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", normalization)
    import tf_slim as slim
    from tf_slim.nets import inception_v3, resnet_v1, resnet_v2, vgg
  except ImportError as err:
    print("tf-slim not installed (%s): slim pairs skipped" % err)
    return {}

  def resnet():
    with slim.arg_scope(resnet_v2.resnet_arg_scope()):
      resnet_v2.resnet_v2_50(tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3]), 1001)

  def inception():
    with slim.arg_scope(inception_v3.inception_v3_arg_scope()):
      inception_v3.inception_v3(tf.compat.v1.placeholder(tf.float32, [1, 299, 299, 3]), 1001)

  def resnet1():  # slim's released resnet_v1 and vgg checkpoints have 1000 classes
    with slim.arg_scope(resnet_v1.resnet_arg_scope()):
      resnet_v1.resnet_v1_50(tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3]), 1000)

  def vgg16():
    with slim.arg_scope(vgg.vgg_arg_scope()):
      vgg.vgg_16(tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3]), 1000)
  return {"resnet_v2_50": graph_variables(resnet), "inception_v3": graph_variables(inception),
          "resnet_v1_50": graph_variables(resnet1), "vgg_16": graph_variables(vgg16)}


def keras_weights(model):
  return [(w.name.split(":")[0], w.shape.as_list(), w.dtype.base_dtype.name)
          for w in model.weights]


def slim_resnet_to_keras(name):
  """resnet_v2_50/block1/unit_2/bottleneck_v2/conv1/weights -> conv2_block2_1_conv/kernel."""
  leaf = {"weights": "kernel", "biases": "bias"}
  name = name[len("resnet_v2_50/"):]
  match = re.fullmatch(r"block(\d)/unit_(\d+)/bottleneck_v2/(.*)", name)
  if match:
    prefix = "conv%d_block%s_" % (int(match.group(1)) + 1, match.group(2))
    rest = match.group(3)
    for pattern, template in ((r"conv(\d)/BatchNorm/(\w+)", r"\1_bn/\2"),
                              (r"conv(\d)/(\w+)", r"\1_conv/\2"), (r"shortcut/(\w+)", r"0_conv/\1"),
                              (r"preact/(\w+)", r"preact_bn/\1")):
      found = re.fullmatch(pattern, rest)
      if found:
        parts = found.expand(template).rsplit("/", 1)
        return prefix + parts[0] + "/" + leaf.get(parts[1], parts[1])
  if name.startswith("conv1/"):
    return "conv1_conv/" + leaf[name.split("/")[1]]
  if name.startswith("postnorm/"):
    return "post_bn/" + name.split("/")[1]
  return None


def slim_resnet_v1_to_keras(name):
  """resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/BatchNorm/beta -> conv2_block1_0_bn/beta."""
  name = name[len("resnet_v1_50/"):]
  match = re.fullmatch(r"block(\d)/unit_(\d+)/bottleneck_v1/(shortcut|conv(\d))/(BatchNorm/)?(\w+)",
                       name)
  if match:
    block, unit, _, conv, norm, leaf = match.groups()
    return "conv%d_block%s_%s_%s/%s" % (int(block) + 1, unit, conv or "0", "bn" if norm else "conv",
                                        "kernel" if leaf == "weights" else leaf)
  if name == "conv1/weights":
    return "conv1_conv/kernel"
  if name.startswith("conv1/BatchNorm/"):
    return "conv1_bn/" + name.split("/")[-1]
  return {"logits/biases": "predictions/bias"}.get(name)


def slim_vgg_to_keras(name):
  """vgg_16/conv2/conv2_1/weights -> block2_conv1/kernel; fc6..fc8 biases -> fc1, fc2, predictions."""
  leaf = {"weights": "kernel", "biases": "bias"}
  match = re.fullmatch(r"vgg_16/conv(\d)/conv\d_(\d)/(\w+)", name)
  if match:
    return "block%s_conv%s/%s" % (match.group(1), match.group(2), leaf[match.group(3)])
  return {"vgg_16/fc6/biases": "fc1/bias", "vgg_16/fc7/biases": "fc2/bias",
          "vgg_16/fc8/biases": "predictions/bias"}.get(name)


def inception_truth(slim_triples, keras_triples):
  """Keras InceptionV3 name -> slim name: the n-th conv (and its BN) of each, in creation order."""
  slim_convs = [n.rsplit("/", 1)[0] for n, _, _ in slim_triples if n.endswith("/weights")
                and "AuxLogits" not in n and "/Logits/" not in n]
  truth = {}
  for name, _, _ in keras_triples:
    match = re.match(r"(conv2d|batch_normalization)(?:_(\d+))?/(\w+)", name)
    if match:
      scope = slim_convs[int(match.group(2) or 0)]
      leaf = match.group(3)
      truth[name] = scope + ("/weights" if leaf == "kernel" else "/BatchNorm/" + leaf)
  return truth


def tf2_object_pair(model, directory):
  """(keras triples, TF2 checkpoint prefix, truth {keras name: checkpoint key}) by values."""
  names = keras_weights(model)
  for index, weight in enumerate(model.weights):
    weight.assign(np.full(weight.shape, index, weight.dtype.as_numpy_dtype))
  prefix = tf.train.Checkpoint(model=model).write(os.path.join(directory, "ckpt"))
  reader = tf.train.load_checkpoint(prefix)
  truth = {}
  for key, shape in tf.train.list_variables(prefix):
    if key.startswith("model/") and np.prod(shape) > 0:
      truth[names[int(reader.get_tensor(key).flat[0])][0]] = key
  return names, prefix, truth


def bert_base():
  """(TF1 triples, HF-TF triples, truth {HF name: TF1 name}) of BERT-base with its heads."""
  hidden, inner, layers, vocab, positions = 768, 3072, 12, 30522, 512
  pairs = [("bert/embeddings/word_embeddings", "bert/embeddings/word_embeddings/weight",
            (vocab, hidden)),
           ("bert/embeddings/token_type_embeddings",
            "bert/embeddings/token_type_embeddings/embeddings", (2, hidden)),
           ("bert/embeddings/position_embeddings",
            "bert/embeddings/position_embeddings/embeddings", (positions, hidden))]
  for leaf in ("gamma", "beta"):
    pairs.append(("bert/embeddings/LayerNorm/" + leaf, "bert/embeddings/LayerNorm/" + leaf,
                  (hidden,)))
  for n in range(layers):
    for scope, size in (("attention/self/query", (hidden, hidden)),
                        ("attention/self/key", (hidden, hidden)),
                        ("attention/self/value", (hidden, hidden)),
                        ("attention/output/dense", (hidden, hidden)),
                        ("intermediate/dense", (hidden, inner)), ("output/dense", (inner, hidden))):
      for leaf, shape in (("kernel", size), ("bias", size[-1:])):
        pairs.append(("bert/encoder/layer_%d/%s/%s" % (n, scope, leaf),
                      "bert/encoder/layer_._%d/%s/%s" % (n, scope, leaf), shape))
    for scope in ("attention/output/LayerNorm", "output/LayerNorm"):
      for leaf in ("gamma", "beta"):
        pairs.append(("bert/encoder/layer_%d/%s/%s" % (n, scope, leaf),
                      "bert/encoder/layer_._%d/%s/%s" % (n, scope, leaf), (hidden,)))
  for leaf, shape in (("kernel", (hidden, hidden)), ("bias", (hidden,))):
    pairs.append(("bert/pooler/dense/" + leaf, "bert/pooler/dense/" + leaf, shape))
  truth = {"tf_bert_model/" + b: a for a, b, _ in pairs}
  tf1 = [(a, s, "float32") for a, _, s in pairs] + [
      ("cls/predictions/output_bias", (vocab,), "float32"),
      ("cls/seq_relationship/output_weights", (2, hidden), "float32"),
      ("cls/seq_relationship/output_bias", (2,), "float32"), ("global_step", (), "int64")]
  hf = [("tf_bert_model/" + b, s, "float32") for _, b, s in pairs]
  return tf1, hf, truth


@dataclasses.dataclass
class Result:
  pair: str
  model_variables: int
  truth_pairs: int
  correct: int
  wrong: int
  wrong_shape: int
  unmatched: int
  rules: int
  seconds: float

  @property
  def fraction(self):
    return self.correct / self.truth_pairs


def run(label, model, checkpoint, truth, *, ordered=False):
  model, checkpoint = infos(model), infos(checkpoint)
  ref = _checkpoint.CheckpointRef("(names)", None, "names")
  start = time.perf_counter()
  suggestion = _suggest._suggest(ref, checkpoint, model, "(names)", ordered)
  seconds = time.perf_counter() - start
  shapes = {v.name: v.shape for v in model}
  ckpt_shapes = {v.name: v.shape for v in checkpoint}
  correct = sum(truth.get(m) == c for m, c in suggestion.mapping.items())
  result = Result(label, len(model), len(truth), correct, len(suggestion.mapping) - correct,
                  sum(shapes[m] != ckpt_shapes[c] for m, c in suggestion.mapping.items()),
                  len(truth) - correct - (len(suggestion.mapping) - correct),
                  len(suggestion.rules), seconds)
  print("%-58s %4d vars %4d truth  %6.1f%% correct  %3d wrong (%d of another shape)  %3d "
        "unmatched  %3d rules  %.2f s" % (
            label, result.model_variables, result.truth_pairs, 100 * result.fraction,
            result.wrong, result.wrong_shape, result.unmatched, result.rules, seconds))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args()
  results = []
  slim = slim_nets()
  keras = {}
  for name in ("ResNet50V2", "InceptionV3", "MobileNetV2", "DenseNet121", "EfficientNetB0",
               "ResNet50", "VGG16"):
    tf.keras.backend.clear_session()
    keras[name] = getattr(tf.keras.applications, name)(weights=None)
  if slim:
    resnet = keras_weights(keras["ResNet50V2"])
    keras_names = {n for n, _, _ in resnet}
    truth = {slim_resnet_to_keras(n): n for n, _, _ in slim["resnet_v2_50"]
             if slim_resnet_to_keras(n) in keras_names}
    results.append(run("slim resnet_v2_50 -> Keras ResNet50V2", resnet,
                       slim["resnet_v2_50"], truth))
    results.append(run("Keras ResNet50V2 -> slim resnet_v2_50", slim["resnet_v2_50"], resnet,
                       {s: k for k, s in truth.items()}))
    inception = keras_weights(keras["InceptionV3"])
    truth = inception_truth(slim["inception_v3"], inception)
    results.append(run("slim inception_v3 -> Keras InceptionV3 (auto-numbered)", inception,
                       slim["inception_v3"], truth))
    results.append(run("Keras InceptionV3 (auto-numbered) -> slim inception_v3",
                       slim["inception_v3"], inception, {s: k for k, s in truth.items()}))
  if slim:
    for slim_name, keras_name, translate in (("resnet_v1_50", "ResNet50", slim_resnet_v1_to_keras),
                                             ("vgg_16", "VGG16", slim_vgg_to_keras)):
      names = keras_weights(keras[keras_name])
      known = {n for n, _, _ in names}
      truth = {translate(n): n for n, _, _ in slim[slim_name] if translate(n) in known}
      results.append(run("slim %s -> Keras %s" % (slim_name, keras_name), names,
                         slim[slim_name], truth))
  tf1, hf, truth = bert_base()
  results.append(run("BERT-base TF1 -> HF-TF names", hf, tf1, truth))
  results.append(run("BERT-base HF-TF -> TF1 names", tf1, hf, {b: a for a, b in truth.items()}))
  with tempfile.TemporaryDirectory() as directory:
    for name, model in list(keras.items())[:5]:
      names, prefix, truth = tf2_object_pair(model, os.path.join(directory, name))
      # The reader lists a TF2 checkpoint under the names the object graph recorded; "structure
      # only" lists it by object path (the keys) instead.
      with sources.open_reader(warmstart.resolve_checkpoint(prefix)) as reader:
        listed = list(reader.variables.values())
        name_of = {reader.key_of(v.name): v.name for v in listed}
      checkpoint = [(v.name, v.shape, v.dtype) for v in listed]
      by_path = [(key, v.shape, v.dtype) for key, v in zip(name_of, listed)]
      results.append(run("TF2 object ckpt -> Keras %s" % name, names, checkpoint,
                         {m: name_of[k] for m, k in truth.items()}))
      results.append(run("TF2 object ckpt -> Keras %s, structure only" % name, names,
                         by_path, truth))
    if slim:
      # End to end through checkpoint files (real shapes, zeros): reading names included.
      source = os.path.join(directory, "slim", "model.ckpt")
      target = os.path.join(directory, "keras", "model.ckpt")
      for prefix, triples in ((source, slim["resnet_v2_50"]),
                              (target, keras_weights(keras["ResNet50V2"]))):
        os.makedirs(os.path.dirname(prefix))
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[n for n, _, _ in triples],
                          shape_and_slices=[""] * len(triples),
                          tensors=[tf.zeros(s, d) for _, s, d in triples])
      start = time.perf_counter()
      suggestion = warmstart.suggest_rename(source, target)
      seconds = time.perf_counter() - start
      start = time.perf_counter()
      warmstart.list_variables(source)
      warmstart.list_variables(target)
      floor = time.perf_counter() - start  # reading both name lists: what any tool must do
      print("end to end, suggest_rename(slim resnet_v2_50 ckpt, Keras ResNet50V2 ckpt): %d "
            "pairs, %d rules, %.2f s; list_variables of both: %.3f s" % (
                len(suggestion.mapping), len(suggestion.rules), seconds, floor))
  print("machine: %s, %d CPUs, Python %s, TensorFlow %s" % (
      platform.processor() or platform.machine(), os.cpu_count(), platform.python_version(),
      tf.__version__))
  if args.json:
    with open(args.json, "w") as f:
      json.dump([dataclasses.asdict(r) | {"fraction": r.fraction} for r in results], f, indent=2)


if __name__ == "__main__":
  main()
