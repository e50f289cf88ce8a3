r"""Weights from PyTorch checkpoints, read without torch.

  python -m jaxpose.convert pytorch-pose hg_s8_b1/model_best.pth.tar --out_npz hg8.npz

`from_pytorch_pose(path)` turns a checkpoint of the PyTorch Stacked Hourglass port
(bearpaw/pytorch-pose; `benchmarks/torch_models.py` has its layout) into the variables
`{"params": ..., "batch_stats": ...}` that `models.hourglass.StackedHourglass(**kwargs).apply`
takes, with `kwargs = pytorch_pose_model_kwargs(state_dict)` inferred from tensor shapes.
The .npz holds the same variables flattened with "/" (`flax.traverse_util.unflatten_dict(
dict(np.load(f)), sep="/")` restores them).

Files are parsed here: torch's zip format (`<name>/data.pkl` with one raw storage per entry
`<name>/data/<key>`) and the legacy one (pickles, then the storages appended), through an
Unpickler that builds only numpy arrays, OrderedDicts and inert stand-in objects, so loading a file
runs none of its code. Conversions: convolution kernels OIHW -> HWIO; 1x1 convolutions, which
jaxpose writes as Dense layers (`layers.Conv1x1`), (O, I, 1, 1) -> (I, O); BatchNorm weight /
bias -> scale / bias, running_mean / running_var -> batch_stats mean / var
(num_batches_tracked is dropped).
"""

import argparse
import collections
import pickle
import re
import sys
import zipfile

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxpose.models import hourglass

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# ---------------------------------------------------------------------------------------------
# Reading torch.save files.


class _StorageType:
  """What `torch.FloatStorage` and its kin unpickle to: the element type."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Storage:
  """A storage named in the pickle; its bytes are looked up by `key` once all are read."""

  def __init__(self, key: str, dtype: np.dtype, offset: int = 0):
    self.key, self.dtype, self.offset = key, dtype, offset  # offset: elements (legacy views)


class _LazyTensor:
  """A tensor from `_rebuild_tensor*`: storage, offset, shape and stride, in elements."""

  def __init__(self, storage, offset, shape, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata.
    self.storage, self.offset = storage, int(offset)
    self.shape, self.stride = tuple(shape), tuple(stride)


class _Opaque:
  """Inert stand-in for any other class in the pickle (optimizer state, numpy scalars, ...)."""

  def __new__(cls, *args, **kwargs):
    del args, kwargs
    return object.__new__(cls)

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state

  def append(self, item):  # Pickled list and dict subclasses fill themselves with these.
    del item

  def extend(self, items):
    del items

  def __setitem__(self, key, value):
    del key, value


def _first_arg(data, *unused):
  """`_rebuild_parameter(data, requires_grad, hooks[, state])`: a Parameter as its tensor."""
  del unused
  return data


def _rebuild_from_type(func, new_type, args, state):
  """`torch._tensor._rebuild_from_type_v2`: the tensor, without its subclass."""
  del new_type, state
  return func(*args)


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _LazyTensor,
    ("torch._utils", "_rebuild_tensor"): _LazyTensor,
    ("torch._utils", "_rebuild_parameter"): _first_arg,
    ("torch._utils", "_rebuild_parameter_with_state"): _first_arg,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  """Resolves torch's globals to the stand-ins above and storages to `_Storage`s."""

  def __init__(self, file):
    super().__init__(file)
    self.storages: dict[str, _Storage] = {}  # By the key their bytes are saved under.
    self.views: dict[str, _Storage] = {}

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    return type(name, (_Opaque,), {})

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
    dtype, key = pid[1].dtype, str(pid[2])
    root = self.storages.setdefault(key, _Storage(key, dtype))
    view = pid[5] if len(pid) > 5 else None
    if view is not None:  # Legacy: a view (view key, offset, size) into the storage `key`.
      return self.views.setdefault(str(view[0]), _Storage(key, dtype, int(view[1])))
    return root


def _safe_load(file):
  """One pickle from `file` through `_Unpickler`."""
  return _Unpickler(file).load()


def _load_zip(path: str):
  """(unpickled object, {storage key: bytes}, byte order) of a zip-format file."""
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
      raise ValueError(f"{path}: a zip file without <name>/data.pkl, not a torch checkpoint.")
    prefix = pkl[0][:-len("data.pkl")]
    with zf.open(pkl[0]) as f:
      unpickler = _Unpickler(f)
      obj = unpickler.load()
    order = "little"
    if prefix + "byteorder" in names:
      order = zf.read(prefix + "byteorder").decode().strip()
    data = {}
    for key in unpickler.storages:
      if prefix + "data/" + key not in names:
        raise ValueError(f"{path}: storage {key!r} missing from the zip file.")
      data[key] = zf.read(prefix + "data/" + key)
  return obj, data, order


def _load_legacy(path: str):
  """(unpickled object, {storage key: bytes}, byte order) of a legacy-format file."""
  with open(path, "rb") as f:
    try:
      magic = _safe_load(f)
    except Exception:  # pylint: disable=broad-except
      magic = None
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path}: neither a zip nor a legacy torch.save file, not a torch "
                       "checkpoint.")
    _safe_load(f)  # Protocol version.
    sys_info = _safe_load(f)
    unpickler = _Unpickler(f)
    obj = unpickler.load()
    keys = _safe_load(f)
    data = {}
    for key in keys:
      key = str(key)
      if key not in unpickler.storages:
        raise ValueError(f"{path}: storage {key!r} is not used by the pickle.")
      itemsize = unpickler.storages[key].dtype.itemsize
      numel = int.from_bytes(f.read(8), "little", signed=True)
      data[key] = f.read(numel * itemsize)
      if len(data[key]) != numel * itemsize:
        raise ValueError(f"{path}: truncated storage {key!r}.")
  order = "little" if sys_info.get("little_endian", True) else "big"
  return obj, data, order


def _materialize(t: _LazyTensor, data: dict[str, bytes], order: str, path: str, name: str):
  """The numpy array a lazy tensor views (a copy, native byte order)."""
  if not isinstance(t.storage, _Storage) or t.storage.key not in data:
    raise ValueError(f"{path}: tensor {name!r} has no stored data.")
  dtype = t.storage.dtype.newbyteorder("<" if order == "little" else ">")
  flat = np.frombuffer(data[t.storage.key], dtype)[t.storage.offset + t.offset:]
  size = int(np.prod(t.shape))
  last = sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if size else -1
  if last >= flat.size or min(t.stride, default=0) < 0:
    raise ValueError(f"{path}: tensor {name!r} of shape {t.shape} reads past its storage.")
  view = np.lib.stride_tricks.as_strided(
      flat, t.shape, [s * dtype.itemsize for s in t.stride], writeable=False)
  return np.array(view, dtype=dtype.newbyteorder("="))


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """The model weights of a `torch.save`d file as numpy arrays, keys without `module.`.

  Accepts a training checkpoint (a dict with "state_dict", as pytorch-pose saves) or a bare
  state_dict; in zip or legacy format. Raises ValueError naming the file otherwise.
  """
  try:
    obj, data, order = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except OSError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, ValueError) and str(e).startswith(f"{path}:"):
      raise
    raise ValueError(f"{path}: unreadable torch checkpoint ({type(e).__name__}: {e}).") from None
  state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
  if not isinstance(state, dict) or not any(isinstance(v, _LazyTensor) for v in state.values()):
    raise ValueError(f"{path}: holds no state_dict of tensors (top level: {type(obj).__name__}"
                     f"{' with keys ' + str(list(obj)[:8]) if isinstance(obj, dict) else ''}).")
  out = {}
  for key, value in state.items():
    name = key[len("module."):] if key.startswith("module.") else key
    if not isinstance(value, _LazyTensor):
      raise ValueError(f"{path}: state_dict entry {key!r} is not a tensor.")
    out[name] = _materialize(value, data, order, path, key)
  return out


# ---------------------------------------------------------------------------------------------
# pytorch-pose's Stacked Hourglass -> jaxpose.models.hourglass.


def pytorch_pose_model_kwargs(state_dict: dict[str, np.ndarray], source: str = "state_dict"
                              ) -> dict[str, int]:
  """StackedHourglass keyword arguments (num_stacks, num_joints, features, depth, num_blocks)
  inferred from the key names and shapes of a pytorch-pose `hg` state_dict."""
  for key in ("score.0.weight", "hg.0.hg.0.0.0.bn1.weight", "res.0.0.bn1.weight"):
    if key not in state_dict:
      raise ValueError(f"{source}: missing key {key!r}; not a pytorch-pose hourglass.")
  num_joints, features = state_dict["score.0.weight"].shape[:2]

  def count(fmt):
    n = 0
    while fmt.format(n) in state_dict:
      n += 1
    return n

  return dict(num_stacks=count("score.{}.weight"), num_joints=int(num_joints),
              features=int(features), depth=count("hg.0.hg.{}.0.0.bn1.weight"),
              num_blocks=count("res.0.{}.bn1.weight"))


_RENAMES = [  # jaxpose path (after the stack / hourglass rules) -> pytorch-pose key.
    (r"^stem_conv/conv/", "conv1/"), (r"^stem_conv/bn/", "bn1/"),
    (r"^stem_res(\d)/", r"layer\1/0/"), (r"/proj/dense/", "/downsample/0/"),
    (r"/(conv[13])/dense/", r"/\1/"), (r"/res/block(\d+)/", r"/res/\1/"),
    (r"/fc/conv/dense/", "/fc/0/"), (r"/fc/bn/", "/fc/1/"), (r"/score/dense/", "/score/"),
    (r"/fc_back/dense/", "/fc_/"), (r"/score_back/dense/", "/score_/"),
]
_LEAVES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
           ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}
_BRANCHES = {"up": 0, "down": 1, "low": 2, "bottom": 3}


def _torch_key(collection: str, path: tuple[str, ...], depth: int) -> str:
  """The pytorch-pose state_dict key of one jaxpose variable."""
  p = "/".join(path[:-1]) + "/"
  m = re.match(r"^stack(\d+)/hourglass/((?:inner/)*)(up|down|low|bottom)/block(\d+)/(.*)$", p)
  if m:
    level = depth - 1 - m.group(2).count("inner/")
    p = f"hg/{m.group(1)}/hg/{level}/{_BRANCHES[m.group(3)]}/{m.group(4)}/{m.group(5)}"
  for pattern, repl in _RENAMES:
    p = re.sub(pattern, repl, p)
  m = re.match(r"^stack(\d+)/(res|fc|score|fc_|score_)/(.*)$", p)
  if m:
    p = f"{m.group(2)}/{m.group(1)}/{m.group(3)}"
  return (p + _LEAVES[(collection, path[-1])]).replace("/", ".")


def _torch_shape(jax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a jaxpose variable: HWIO -> OIHW, Dense (I, O) -> (O, I, 1, 1)."""
  if len(jax_shape) == 4:
    return (jax_shape[3], jax_shape[2], jax_shape[0], jax_shape[1])
  if len(jax_shape) == 2:
    return (jax_shape[1], jax_shape[0], 1, 1)
  return tuple(jax_shape)


def _to_jax_layout(array: np.ndarray, ndim: int) -> np.ndarray:
  """A PyTorch array for a jaxpose variable of `ndim` dimensions: OIHW -> HWIO, or
  (O, I, 1, 1) -> (I, O) for 1x1 convolutions, which jaxpose writes as Dense layers."""
  if ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if ndim == 2:
    return array[:, :, 0, 0].T
  return array


def pytorch_pose_variables(state_dict: dict[str, np.ndarray], model_kwargs: dict[str, int],
                           source: str = "state_dict") -> dict[str, dict]:
  """{"params", "batch_stats"} of `StackedHourglass(**model_kwargs)` from a state_dict.

  Every variable the model has must be there with its shape, and every state_dict entry must
  be used (num_batches_tracked aside); else a ValueError names `source` and the key.
  """
  model = hourglass.StackedHourglass(**model_kwargs)
  side = 4 * 2**model.depth
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3))))
  flat = {}
  used = set()
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    key = _torch_key(path[0], path[1:], model.depth)
    if key not in state_dict:
      raise ValueError(f"{source}: missing key {key!r} (for {'/'.join(path)}).")
    array, want = state_dict[key], _torch_shape(leaf.shape)
    if array.shape != want:
      raise ValueError(f"{source}: key {key!r} has shape {array.shape}, expected {want} for "
                       f"StackedHourglass({_kwargs_str(model_kwargs)}).")
    flat[path] = np.asarray(_to_jax_layout(array, len(leaf.shape)), np.float32)
    used.add(key)
  extra = sorted(k for k in state_dict
                 if k not in used and not k.endswith("num_batches_tracked"))
  if extra:
    raise ValueError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} unused) for "
                     f"StackedHourglass({_kwargs_str(model_kwargs)}).")
  return traverse_util.unflatten_dict(flat)


def _kwargs_str(kwargs: dict[str, int]) -> str:
  return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def read_pytorch_pose(path: str, num_stacks: int | None = None
                      ) -> tuple[dict[str, dict], dict[str, int]]:
  """(variables, model kwargs) of a pytorch-pose checkpoint: see `from_pytorch_pose`."""
  state_dict = load_torch_state_dict(path)
  kwargs = pytorch_pose_model_kwargs(state_dict, path)
  if num_stacks is not None and num_stacks != kwargs["num_stacks"]:
    raise ValueError(f"{path}: holds {kwargs['num_stacks']} stacks (score.0 .. score."
                     f"{kwargs['num_stacks'] - 1}), not num_stacks={num_stacks}.")
  return pytorch_pose_variables(state_dict, kwargs, path), kwargs


def from_pytorch_pose(path: str, num_stacks: int | None = None) -> dict[str, dict]:
  """Variables {"params", "batch_stats"} for `StackedHourglass(**kwargs)` from a pytorch-pose
  checkpoint (`.pth.tar`), kwargs being `pytorch_pose_model_kwargs` of its state_dict (both
  at once: `read_pytorch_pose`).

  `num_stacks`, when given, must match the file's. Raises ValueError naming the file and key
  for anything that is not such a checkpoint.
  """
  return read_pytorch_pose(path, num_stacks)[0]


def write_checkpoint(variables: dict, kwargs: dict, config_spec: str, workdir: str) -> str:
  """Writes `variables` as step 0 of an orbax checkpoint in WORKDIR/checkpoints that
  `eval.py --ckpt` and `predict.py` accept (parameters and BatchNorm statistics, no optimiser
  state). The config (`path[:arg]`) must describe the same model; returns the step folder."""
  from jaxpose import checkpoints  # pylint: disable=g-import-not-at-top
  from jaxpose import skeletons  # pylint: disable=g-import-not-at-top
  from jaxpose import summary  # pylint: disable=g-import-not-at-top
  config = summary.load_config(config_spec)
  model = dict(config.model)
  if model.get("name") != "hourglass":
    raise ValueError(f"{config_spec}: config.model.name is {model.get('name')!r}; pytorch-pose "
                     "checkpoints are hourglasses.")
  joints = skeletons.get(config.dataset.skeleton).num_joints
  wanted = {"num_joints": joints, **{k: model[k] for k in kwargs if k in model}}
  differ = {k: (kwargs[k], v) for k, v in wanted.items() if k in kwargs and kwargs[k] != v}
  if differ:
    raise ValueError(f"{config_spec} describes another hourglass than the checkpoint: "
                     + ", ".join(f"{k}: file {a}, config {b}" for k, (a, b) in differ.items()))
  manager = checkpoints.manager(f"{workdir}/checkpoints", config)
  if manager.latest_step() is not None:
    raise ValueError(f"{workdir} already holds checkpoints; convert into an empty workdir.")
  state = {"step": np.int32(0), "params": variables["params"],
           "model_state": {"batch_stats": variables["batch_stats"]}}
  checkpoints.save(manager, state, config, 0)
  manager.wait_until_finished()
  return f"{workdir}/checkpoints/0"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxpose.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="source", required=True)
  pp = sub.add_parser("pytorch-pose", help="a bearpaw/pytorch-pose hourglass checkpoint")
  pp.add_argument("checkpoint", help="a .pth.tar file (zip or legacy torch.save format)")
  pp.add_argument("--num_stacks", type=int, default=None,
                  help="expected number of stacks (default: as the file holds)")
  pp.add_argument("--out_npz", help="write the variables here (flattened with '/')")
  pp.add_argument("--config", help="with --out: the config describing the model, e.g. "
                  "configs/hourglass_mpii.py (8 stacks) or configs/hourglass_mpii.py:2")
  pp.add_argument("--out", help="a new workdir: an orbax checkpoint eval.py --ckpt reads")
  args = parser.parse_args(argv)
  if not (args.out_npz or args.out) or bool(args.out) != bool(args.config):
    parser.error("give --out_npz FILE, or --out WORKDIR with --config CONFIG (or both)")
  try:
    variables, kwargs = read_pytorch_pose(args.checkpoint, args.num_stacks)
    if args.out_npz:
      np.savez(args.out_npz, **traverse_util.flatten_dict(variables, sep="/"))
      print(f"{args.out_npz}: variables of StackedHourglass({_kwargs_str(kwargs)})")
    if args.out:
      step_dir = write_checkpoint(variables, kwargs, args.config, args.out)
      print(f"{step_dir}: checkpoint of StackedHourglass({_kwargs_str(kwargs)}); "
            f"python eval.py --ckpt {args.out}")
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from jaxpose import runtime  # pylint: disable=g-import-not-at-top
  runtime.exit_without_teardown(main)
