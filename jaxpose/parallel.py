"""Devices: multi-host initialisation, the ("data",) mesh, shardings and global batches.

One program runs on every host (JAX's multi-controller runtime). Each process feeds its own
share of every batch; `global_batch` assembles the shares into one `jax.Array` sharded along the
batch axis over all devices of all hosts. Parameters are replicated.
"""

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
