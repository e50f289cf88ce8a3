"""Devices: multi-host initialisation, the ("data",) mesh, shardings and global batches.

One program runs on every host (JAX's multi-controller runtime). Each process feeds its own
share of every batch; `global_batch` assembles the shares into one `jax.Array` sharded along the
batch axis over all devices of all hosts. Parameters are replicated.
"""

import functools
import os

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's distributed runtime when more than one process takes part.

  Explicit arguments win; otherwise JAX's own auto-detection (TPU pod slices, SLURM, Open MPI)
  or the environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  A plain single-process run (none of these present) does nothing.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  auto = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                         "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS"))
  if not (explicit or auto):
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("Distributed: process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def make_mesh() -> Mesh:
  """A 1-D ("data",) mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def is_cpu_mesh(mesh: Mesh) -> bool:
  """Whether `mesh`'s devices are CPUs (a mesh holds devices of one platform)."""
  return mesh.devices.flat[0].platform == "cpu"


def tracing_on(mesh: Mesh, fn):
  """`fn`, traced with `mesh` as JAX's abstract mesh (`jax.sharding.use_abstract_mesh`): what
  it calls then knows the data axis at trace time and can split its work over it by hand
  (`per_device`). The trainer's jitted programs. On one device, `fn` itself."""
  if mesh.devices.size == 1:
    return fn

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


def data_devices() -> int:
  """The devices over which the current trace splits the batch by hand: the size of the data
  axis of JAX's abstract mesh (`tracing_on`), 1 with none, or inside `jax.shard_map` over it."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names or DATA_AXIS in mesh.manual_axes:
    return 1
  return mesh.shape[DATA_AXIS]


def device_shares(x):
  """Batch-leading `x` [N, ...] as [devices, N / devices, ...]: each device's share of a batch
  split over the data axis (`data_devices`) on a leading axis of its own, which XLA's
  partitioner leaves on its device, so reducing the other axes needs no communication. None
  where nothing is split (one device, or a batch the devices do not divide)."""
  n = _splitting(x.shape[0])
  return None if n is None else x.reshape(n, x.shape[0] // n, *x.shape[1:])


def _splitting(batch: int) -> int | None:
  """The devices of the data axis a batch of `batch` is split over: None where it is not split
  (one device, or a batch they do not divide)."""
  n = data_devices()
  return None if n == 1 or batch % n else n


def per_device(fn, *args, batched: tuple[bool, ...], summed: bool):
  """fn(*args), each device of the data axis (`data_devices`) calling it on its own images:
  the leading axis of the `batched` arguments split over the axis, the others whole on every
  device. Its result is the sum over the devices (`summed`; e.g. a kernel gradient) or their
  results along the leading axis. For work XLA's partitioner does not split over a batch (an
  FFT, a loop over groups of images): it would gather the whole batch onto every device, and
  each would do all of the work. fn(*args) itself where nothing is split (one device, or a
  batch the devices do not divide)."""
  if data_devices() == 1 or any(b and _splitting(x.shape[0]) is None
                                for x, b in zip(args, batched)):
    return fn(*args)
  specs = tuple(P(DATA_AXIS) if b else P() for b in batched)
  if summed:
    return jax.shard_map(lambda *a: jax.lax.psum(fn(*a), DATA_AXIS), in_specs=specs,
                         out_specs=P())(*args)
  return jax.shard_map(fn, in_specs=specs, out_specs=P(DATA_AXIS))(*args)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local: dict, mesh: Mesh) -> dict:
  """This process's share of a batch (numpy) -> global jax.Arrays sharded on the batch axis."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def global_batch_spec(local: dict, mesh: Mesh) -> dict:
  """The global arrays' `jax.ShapeDtypeStruct`s (shardings included) that `global_batch` makes
  of this process's shares, from their (shape, dtype) pairs: what a step is compiled for
  before its first batch exists (`steps.compile_ahead`)."""
  sharding = batch_sharded(mesh)
  return {k: jax.ShapeDtypeStruct((shape[0] * jax.process_count(), *shape[1:]), dtype,
                                  sharding=sharding)
          for k, (shape, dtype) in local.items()}


def check_batch_size(global_batch_size: int, mesh: Mesh,
                     what: str = "config.batch_size") -> None:
  """A global batch must split evenly over the devices and over the processes."""
  n = mesh.devices.size
  if global_batch_size <= 0:
    raise ValueError(f"{what}={global_batch_size} must be positive.")
  if global_batch_size % n:
    raise ValueError(f"{what}={global_batch_size} must be divisible by the number "
                     f"of devices ({n}).")
  if global_batch_size % jax.process_count():
    raise ValueError(f"{what}={global_batch_size} must be divisible by the number "
                     f"of processes ({jax.process_count()}).")
