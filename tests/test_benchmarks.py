"""benchmarks/models.py and its PyTorch twins: a measurement's record, the report, and twins
with jaxpose's parameter counts (the PyTorch parts are skipped without torch); and the scripts
built on its jaxpose side (paired blocks, the step's profile, IEF's probes)."""

import ast
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import models as bench
from configs import quickstart
from jaxpose import families
from jaxpose import summary
from jaxpose.models import cpm

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "quickstart.py") + ":hourglass-tiny"


def _task(framework, kind, spec=TINY, **overrides):
  return dict(framework=framework, kind=kind, spec=spec, batch=2, warmup=1, steps=2, threads=1,
              device_augment=False, channels_last=False, **overrides)


def _jax_params(spec):
  variables = families.eval_shape_variables(families.create_family(bench.load_config(spec, 2)))
  return summary.count(variables["params"])


def test_jax_measurement_record_has_positive_times_and_rss():
  record = bench.measure(_task("jax", "train"))  # In this process: its compilations are cached.
  assert record["params"] == _jax_params(TINY) > 0
  assert record["median_s"] > 0 and len(record["times_s"]) == 2
  assert all(t > 0 for t in record["times_s"])
  assert record["peak_rss_mb"] >= record["import_rss_mb"] > 0
  assert record["import_s"] > 0
  assert record["phase"] == "train (1 of 1)"
  assert list(record["stages_s"]) == ["abstract", "trace_lower", "init", "compile_wait",
                                      "release"]
  # Where an earlier run of the program (this suite's cache) left its sizes and its executable:
  # the prefault's and the kept step's read (steps.compile_ahead).
  stages = record["step_stages_s"]
  assert {"trace", "lower", "compile"} <= set(stages)
  assert set(stages) <= {"trace", "lower", "compile", "stored_read", "prefault_mb", "prefault_s"}
  assert all(t is None or t >= 0 for t in [*record["stages_s"].values(), *stages.values()])
  fusions = record["step_library_fusions"]
  assert all(k.startswith("__") and n > 0 for k, n in fusions.items())
  assert record["step_calls"] > sum(fusions.values())
  assert record["step_temporaries_mb"] > 0


def test_the_program_is_read_after_peak_rss_and_not_before_a_first_step(monkeypatch):
  # Reading the compiled program (its memory analysis, its text) costs time and memory that
  # train.py does not spend: it must not land in peak RSS or in the time to the first step.
  log = []

  def builder(config, host, task):
    del config, host, task
    run = lambda: log.append("step")
    run.report = lambda: log.append("report") or {}
    return {}, run

  monkeypatch.setitem(bench.BUILDERS, ("jax", "train"), builder)
  monkeypatch.setattr(bench, "peak_rss_mb", lambda: log.append("peak") or 1.0)
  bench.measure(_task("jax", "train"))
  assert log[-2:] == ["peak", "report"] and log.count("step") == 3
  log.clear()
  monkeypatch.setitem(bench.BUILDERS, ("jax", "train"), lambda *a: (
      {}, lambda: log.append("step") or time.sleep(0.1)))
  record = bench.measure(_task("jax", "startup"))
  assert "report" not in log and log.count("step") == 1
  assert 0 < record["ready_s"] <= record["first_step_s"] - 0.09  # The step in hand, then run.


def test_library_fusions_are_counted_by_kind_and_root_operation():
  line = ('  %ynn_fusion.{i} = f32[64]{{0}} fusion(%a, %b), kind=kCustom, calls=%c.{i}, '
          'metadata={{op_name="jit(train_step)/jvp(M)/bn/{op}" stack_frame_id=9}}, '
          'backend_config={{"fusion_config":{{"kind":"__ynn_fusion"}}}}')
  text = "\n".join([line.format(i=0, op="reduce_sum"), line.format(i=1, op="reduce_sum"),
                    line.format(i=2, op="dot_general"),
                    '  %fusion.3 = f32[8]{0} fusion(%a), kind=kLoop, calls=%d',
                    '  %e = f32[8]{0} add(%a, %b)'])
  assert bench.library_fusions(text) == {"__ynn_fusion dot_general": 1,
                                         "__ynn_fusion reduce_sum": 2}


def test_runtime_calls_are_the_entry_computations_instructions_that_run():
  text = "\n".join([
      "%fused_computation.1 (p: f32[8]) -> f32[8] {",
      "  %p = f32[8]{0} parameter(0)",
      "  ROOT %n = f32[8]{0} negate(%p)",
      "}",
      "",
      "ENTRY %main.2 (a: f32[8], b: f32[8,1]) -> (f32[8], f32[8]) {",
      "  %a = f32[8]{0} parameter(0)",
      "  %b = f32[8,1]{1,0} parameter(1)",
      "  %c = f32[] constant(1)",
      "  %bc = f32[8]{0} bitcast(%b)",
      "  %fusion.1 = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1",
      "  %copy.2 = f32[8]{0} copy(%bc)",
      "  %w = (s32[], f32[8]{0}) while(%t), condition=%cond, body=%body",
      "  %g = f32[8]{0} get-tuple-element(%w), index=1",
      "  ROOT %tuple.3 = (f32[8]{0}, f32[8]{0}) tuple(%fusion.1, %copy.2)",
      "}"])
  assert bench.runtime_calls(text) == 3  # The fusion, the copy and the loop.


def test_report_ratios_and_missing_twins():
  jax_r = {"params": 10, "train_step_s": 0.2, "inference_s": 0.05, "peak_rss_mb": 800.0,
           "first_step_cold_s": 30.0, "first_step_warm_s": 5.0}
  torch_r = dict(jax_r, train_step_s=0.4, peak_rss_mb=None)
  r = bench.ratios(jax_r, torch_r)
  assert r == {"train_step_s": 0.5, "inference_s": 1.0, "first_step_cold_s": 1.0,
               "first_step_warm_s": 1.0}
  assert bench.ratios(jax_r, None) == {}
  records = [{"model": "a", "jax": jax_r, "torch": torch_r, "ratios": r},
             {"model": "b", "jax": jax_r, "torch": None, "ratios": {}}]
  host = {"cpu": "Some CPU", "cores": 2, "jax": "1", "jaxlib": "1", "torch": None,
          "date": "today"}
  settings = dict(batch=8, warmup=2, steps=3, threads=2, torch_channels_last=False,
                  device_augment=False)
  lines = bench.markdown(records, host, settings).splitlines()
  assert lines[0].startswith("Some CPU, 2 cores") and "Batch 8" in lines[0]
  assert lines[4].startswith("| a | 10 | 200 | 400 | 0.50 |")
  assert lines[5].startswith("| b | 10 | 200 | - | - |")
  assert len(lines[5].split("|")) == len(lines[2].split("|"))
  settings["set"] = ["remat=True"]
  assert "--config.remat=True" in bench.markdown(records, host, settings).splitlines()[0]


def test_inference_record_carries_the_batch_model_flops():
  record = bench.measure(_task("jax", "infer"))  # Batch 2.
  per_image = summary.summarize(bench.load_config(TINY, 2))["gflops"] * 1e9
  assert record["forward_flops"] == pytest.approx(2 * per_image, rel=1e-9)
  assert record["forward_flops"] > 0


def test_peak_flops_by_device_kind_dtype_or_flag():
  assert bench.peak_flops("NVIDIA H200", "bfloat16") == pytest.approx(989.4e12)
  assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
  assert bench.peak_flops("TPU v5 lite", "bfloat16") == pytest.approx(197e12)  # Not v5p's.
  assert bench.peak_flops("TPU v5", "bfloat16") == pytest.approx(459e12)
  assert bench.peak_flops("NVIDIA H200", "float32") is None  # No float32 peak is assumed.
  assert bench.peak_flops("cpu", "bfloat16") is None and bench.peak_flops(None, "float32") is None
  assert bench.peak_flops("cpu", "float32", tflops=2.5) == pytest.approx(2.5e12)


def test_utilisation_counts_a_train_step_as_three_forward_passes():
  record = {"train_step_s": 0.5, "inference_s": 0.1}
  out = bench.utilisation(record, forward_flops=10e12, peak=100e12, batch=32)
  assert out == pytest.approx({"train_images_per_s": 64.0, "train_mfu": 0.6,
                               "inference_mfu": 1.0})
  assert bench.utilisation(record, 10e12, None, 32) == {"train_images_per_s": 64.0}
  assert bench.utilisation({"train_step_s": None}, 10e12, 1e12, 32) == {}


def test_accelerator_columns_appear_only_when_measured():
  base = {"params": 10, "train_step_s": 0.2, "inference_s": 0.05, "peak_rss_mb": 800.0,
          "first_step_cold_s": 30.0, "first_step_warm_s": 5.0}
  host = {"cpu": "Some CPU", "cores": 16, "jax": "1", "jaxlib": "1", "torch": "2",
          "date": "today"}
  settings = dict(batch=32, warmup=2, steps=3, threads=16, torch_channels_last=False,
                  device_augment=False, torch_device="cuda")
  cpu = [{"model": "a", "jax": base, "torch": None, "ratios": {}}]
  assert "MFU" not in bench.markdown(cpu, host, settings)
  gpu = dict(base, peak_device_mb=5000.0, train_mfu=0.41, inference_mfu=0.3,
             peak_flops=989.4e12)
  records = [{"model": "a", "jax": gpu, "torch": dict(gpu, train_mfu=0.2), "ratios": {}}]
  lines = bench.markdown(records, host, settings).splitlines()
  assert "PyTorch on cuda" in lines[0] and "989.4 TFLOP/s" in lines[0]
  assert "peak device memory (MB)" in lines[2] and "train MFU (%)" in lines[2]
  cells = [c.strip() for c in lines[4].split("|")]
  assert cells[-7:-1] == ["41.0", "20.0", "-", "30.0", "30.0", "-"]  # Never a ratio.
  assert len(lines[4].split("|")) == len(lines[2].split("|"))


def test_fresh_memory_pass_and_host_facts():
  from benchmarks import fresh_memory  # pylint: disable=g-import-not-at-top
  assert fresh_memory.touch_pass(4 << 20, huge=True) > 0
  assert fresh_memory.touch_pass(4 << 20, huge=False) > 0
  facts = fresh_memory.host_facts()
  assert set(facts) == {"thp", "page_reporting_order", "balloon_free_page_reporting"}


def test_huge_pages_go_to_the_frameworks_asked_for(monkeypatch):
  from jaxpose import huge_pages  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(huge_pages, "_glibc_at_least", lambda major, minor: True)
  monkeypatch.setattr(huge_pages, "kernel_thp_mode", lambda: "madvise")
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv(huge_pages.OFF_VARIABLE, raising=False)

  def tunables(framework, who):
    return bench.child_environment(framework, who).get("GLIBC_TUNABLES")

  ours = huge_pages.SETTING
  assert ours.startswith("glibc.malloc.hugetlb=1:")
  assert tunables("jax", "jaxpose") == ours  # As train.py starts itself.
  assert tunables("torch", "jaxpose") is None
  assert tunables("torch", "both") == tunables("jax", "both") == ours
  assert tunables("jax", "none") is None


def test_keeping_freed_memory_is_timed_in_alternating_blocks(capsys):
  from benchmarks import keep_freed_memory  # pylint: disable=g-import-not-at-top
  keep_freed_memory.main(["--config", TINY, "--batch", "2", "--blocks", "2", "--per_block", "1",
                          "--huge_pages", "off"])
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[1].split()[0] for line in lines[:4]] == ["mmap", "keep", "keep", "mmap"]
  assert "keep / mmap = " in lines[-1] and float(lines[-1].split("= ")[-1]) > 0


def test_step_memory_compiles_both_ways_and_alternates_blocks(capsys):
  from benchmarks import step_memory  # pylint: disable=g-import-not-at-top
  record = step_memory.main(["--config", TINY, "--batch", "2", "--blocks", "2", "--per_block",
                             "1", "--huge_pages", "off"])
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[1].split()[0] for line in lines[2:6]] == [
      "after", "hoisted", "hoisted", "after"]
  # The gradients' residual work kept out of the forward pass holds fewer temporaries.
  assert 0 < record["temporaries_mb"]["after"] < record["temporaries_mb"]["hoisted"]
  assert all(t > 0 for t in record["median_step_s"].values())
  assert "after / hoisted" in lines[-1]


def test_step_profile_names_the_pass_and_layer_of_a_source_operation():
  from benchmarks import step_profile  # pylint: disable=g-import-not-at-top
  layer = step_profile.layer_of
  name = "jit(train_step)/transpose(jvp(StackedHourglass))/stack0/res/block0/conv2/cond/" + (
      "branch_0_fun/while/body/closed_call/dot_general")
  assert layer(name, 3) == ("bwd", "StackedHourglass/stack0/res")
  assert layer(name, 9) == ("bwd", "StackedHourglass/stack0/res/block0/conv2")
  assert layer("jit(train_step)/jvp(IEF.correction)/net/conv1/dot_general", 2) == (
      "fwd", "IEF.correction/net")
  assert layer("jit(train_step)/mul", 3) == ("-", "(no layer)")
  assert layer("transpose(jvp(M))/net/jit(_pad)/pad", 3) == ("bwd", "M/net")
  # A train step's two programs (steps.TrainStep) may name instructions alike.
  program = step_profile.instructions(
      'HloModule jit_gradients_step, entry_computation_layout={}\n'
      '  %fusion.3 = f32[8,4]{1,0} fusion(%p), kind=kLoop, metadata={op_name="jit(gradients_step)/'
      'jvp(M)/conv/add" stack_frame_id=2}\n  ROOT %copy.1 = f32[4,8]{1,0} copy(%fusion.3)\n',
      'HloModule jit_update_step\n'
      '  %fusion.3 = f32[4]{0} fusion(%q), kind=kLoop, metadata={op_name="jit(update_step)/mul"}\n')
  assert program == {
      ("jit_gradients_step", "fusion.3"): ("f32[8,4]{1,0}", "jit(gradients_step)/jvp(M)/conv/add"),
      ("jit_gradients_step", "copy.1"): ("f32[4,8]{1,0}", ""),
      ("jit_update_step", "fusion.3"): ("f32[4]{0}", "jit(update_step)/mul")}


def test_step_profile_attributes_a_traced_step_to_its_layers(tmp_path, capsys):
  from benchmarks import step_profile  # pylint: disable=g-import-not-at-top
  out = tmp_path / "profile.json"
  record = step_profile.main(["--config", TINY, "--batch", "2", "--warmup", "1", "--timed", "1",
                              "--steps", "2", "--depth", "2", "--top", "5", "--huge_pages",
                              "off", "--out", str(out)])
  assert json.loads(out.read_text()) == record
  rows = {(r["pass"], r["layer"]): r["ms"] for r in record["layers"]}
  # Both passes of the model's layers, and the optimiser's update outside them.
  assert any(p == "fwd" and l.startswith("StackedHourglass/stem") for p, l in rows)
  assert any(p == "bwd" and l.startswith("StackedHourglass/stem") for p, l in rows)
  assert ("-", "(no layer)") in rows
  assert all(ms >= 0 for ms in rows.values())
  # The layer table and the kind table share out the same time.
  assert sum(rows.values()) == pytest.approx(sum(k["ms"] for k in record["kinds"]), rel=1e-6)
  assert len(record["top"]) == 5 and record["wall_ms"] > 0
  assert "| ms | share | pass | layer |" in capsys.readouterr().out


def test_paired_configs_time_two_variants_in_alternating_blocks(capsys):
  from benchmarks import paired_configs  # pylint: disable=g-import-not-at-top
  record = paired_configs.main(["--config", TINY, "--batch", "2", "--blocks", "2", "--per_block",
                                "1", "--huge_pages", "off", "--b", "model.features=8"])
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[1].split()[0] for line in lines[:4]] == ["A", "B", "B", "A"]
  assert len(record["block_medians_s"]["A"]) == len(record["block_medians_s"]["B"]) == 2
  assert 0 <= record["b_faster"] <= 2 and all(t > 0 for t in record["median_step_s"].values())
  # B's narrower network holds fewer temporaries than A's.
  assert 0 < record["temporaries_mb"]["B"] < record["temporaries_mb"]["A"]
  assert "B: model.features=8" in lines[-2] and "B / A" in lines[-1]


def test_paired_configs_set_layers_constants_while_each_side_is_traced(capsys, monkeypatch):
  """--a_layers MIN_WORK_FOR_TAPS=0 --a_layers MIN_CHANNELS_FOR_TAPS=1: A's tiny convolutions
  take the tap products (other temporaries), B's XLA's gradients; the constants are as they
  were after."""
  from benchmarks import paired_configs  # pylint: disable=g-import-not-at-top
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(layers, "WINOGRAD", False)  # The quickstart's 3x3 at stride 1: taps.
  before = (layers.MIN_WORK_FOR_TAPS, layers.MIN_CHANNELS_FOR_TAPS)
  record = paired_configs.main(["--config", TINY, "--batch", "2", "--blocks", "1", "--per_block",
                                "1", "--huge_pages", "off", "--a_layers", "MIN_WORK_FOR_TAPS=0",
                                "--a_layers", "MIN_CHANNELS_FOR_TAPS=1"])
  assert (layers.MIN_WORK_FOR_TAPS, layers.MIN_CHANNELS_FOR_TAPS) == before
  assert record["temporaries_mb"]["A"] != record["temporaries_mb"]["B"]
  assert ("A: layers.MIN_WORK_FOR_TAPS=0 layers.MIN_CHANNELS_FOR_TAPS=1"
          in capsys.readouterr().out)
  for bad in ("NO_SUCH=1", "WINOGRAD=maybe", "WINOGRAD"):
    with pytest.raises(SystemExit):
      paired_configs.main(["--config", TINY, "--huge_pages", "off", "--b_layers", bad])
    assert bad in capsys.readouterr().err


def _product_parts(x):
  """A function `layers.on_cpu` is handed as is, so JAX keeps its trace: it reads a layers
  constant when traced."""
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  return x.reshape(layers.TAP_PRODUCT_PARTS, -1).sum(0)


def test_layers_set_reaches_settings_read_inside_traces_jax_has_kept():
  """A constant read inside a function whose trace JAX keeps (here a branch of `layers.on_cpu`,
  as a custom gradient's CPU branch) takes each side's value, one side after the other."""
  from benchmarks import paired_configs  # pylint: disable=g-import-not-at-top
  from jaxpose.models import layers  # pylint: disable=g-import-not-at-top
  x = jnp.ones((16,))

  def program(parts):
    with paired_configs.layers_set({"TAP_PRODUCT_PARTS": parts}):
      return jax.jit(lambda x: layers.on_cpu(_product_parts, _product_parts, x)).lower(x)

  for _ in range(2):  # Either side first: each traced afresh.
    assert program(2).out_info.shape == (8,) and program(4).out_info.shape == (4,)
  assert layers.TAP_PRODUCT_PARTS == 2


def test_paired_configs_name_a_bad_override_of_b(capsys):
  from benchmarks import paired_configs  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    paired_configs.main(["--config", TINY, "--huge_pages", "off", "--b", "model.no_such_key=1"])
  assert "--b model.no_such_key=1" in capsys.readouterr().err


def test_config_overrides_reach_the_model_and_are_checked():
  config = bench.load_config(TINY, 2, ("remat=True", "model.num_stacks=2"))
  assert config.remat is True and config.model.num_stacks == 2
  with pytest.raises(ValueError, match="--set no_such_key=1: not a valid override.*no_such_key"):
    bench.load_config(TINY, 2, ("no_such_key=1",))


def test_frameworks_and_measurements_are_chosen_and_checked():
  args = bench.parse_args(["--models", "hourglass2"])
  assert args.frameworks == ("jax",) and not args.torch
  assert args.measure == ("train", "infer", "cold", "warm")
  assert bench.parse_args(["--torch"]).frameworks == ("jax", "torch")
  args = bench.parse_args(["--frameworks", "torch,jax", "--measure", "infer,train"])
  assert args.frameworks == ("jax", "torch") and args.torch
  assert args.measure == ("train", "infer")
  assert bench.parse_args(["--frameworks", "torch"]).torch
  assert bench.parse_args(["--frameworks", "jax", "--torch"]).frameworks == ("jax", "torch")
  for argv in (["--frameworks", "tf"], ["--measure", "warm"], ["--measure", ""]):
    with pytest.raises(SystemExit):
      bench.parse_args(argv)


def test_only_the_measurements_asked_for_run(monkeypatch):
  spawned = []

  def spawn(task, timeout=None):
    del timeout
    spawned.append((task["framework"], task["kind"]))
    return {"flops": {"forward_flops": 4e12}, "train": {"median_s": 0.5, "params": 7,
                                                        "device": "NVIDIA H200"},
            "infer": {"median_s": 0.1}}.get(task["kind"], {"first_step_s": 3.0})

  monkeypatch.setattr(bench, "spawn", spawn)
  config = bench.load_config(TINY, 2)
  args = bench.parse_args(["--frameworks", "torch", "--measure", "train", "--batch", "32",
                           "--peak_tflops", "989.4"])
  record = bench.run_model("tiny", TINY, config, args)
  # PyTorch's train step alone, then the FLOPs traced by jaxpose for its MFU on a known device.
  assert spawned == [("torch", "train"), ("jax", "flops")]
  assert record["jax"] is None and record["ratios"] == {} and record["forward_flops"] == 4e12
  assert record["torch"]["train_step_s"] == 0.5 and record["torch"]["inference_s"] is None
  assert record["torch"]["train_mfu"] == pytest.approx(3 * 4e12 / 0.5 / 989.4e12)
  host = {"cpu": "Some CPU", "cores": 16, "jax": "1", "jaxlib": "1", "torch": "2",
          "date": "today"}
  settings = dict(batch=32, warmup=2, steps=3, threads=16, torch_channels_last=False,
                  device_augment=False, torch_device="cuda")
  row = bench.markdown([record], host, settings).splitlines()[4]
  assert row.startswith("| tiny | 7 | - | 500 | - | - | - | - |")
  spawned.clear()
  args = bench.parse_args(["--measure", "infer,cold,warm"])  # The CPU: no peak, no trace.
  record = bench.run_model("tiny", TINY, config, args)
  assert spawned == [("jax", "infer"), ("jax", "startup"), ("jax", "startup")]
  assert record["torch"] is None and record["jax"]["first_step_warm_s"] == 3.0


def test_model_flops_are_traced_without_running_the_model():
  record = bench.measure(_task("jax", "flops"))  # Batch 2.
  per_image = summary.summarize(bench.load_config(TINY, 2))["gflops"] * 1e9
  assert record["forward_flops"] == pytest.approx(2 * per_image, rel=1e-9)
  assert record["params"] == _jax_params(TINY)


def test_heatmap_targets_peak_at_the_joints():
  config = bench.load_config(TINY, 2)  # 64 px in, 16 px out.
  host = bench.random_batch(2, config.input_size)
  maps, weights = bench.heatmap_targets(config, host, background=True)
  assert maps.shape == (2, 17, 16, 16) and weights.shape == (2, 17)
  peak = np.unravel_index(np.argmax(maps[0, 3]), maps.shape[2:])
  expected = (host["joints"][0, 3] + 0.5) / 4 - 0.5
  np.testing.assert_allclose(peak[::-1], expected, atol=0.5)


def test_jaxpose_never_imports_torch():
  for path in (REPO / "jaxpose").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.split(".")[0] == "torch" for n in names), path


# ---------------------------------------------------------------------------------------------
# With PyTorch.


def test_torch_measurement_in_a_fresh_process_matches_the_parameter_count():
  pytest.importorskip("torch")
  record = bench.spawn(_task("torch", "train"), timeout=120)
  assert "error" not in record, record
  assert record["params"] == _jax_params(TINY)
  assert record["median_s"] > 0 and record["peak_rss_mb"] > 0
  startup = bench.spawn(_task("torch", "startup"), timeout=120)
  assert startup["first_step_s"] > startup["import_s"] > 0


def test_torch_bfloat16_runs_under_autocast():
  pytest.importorskip("torch")
  task = _task("torch", "train", overrides=["mixed_precision=bfloat16"])
  record = bench.spawn(task, timeout=120)
  assert "error" not in record, record
  assert record["median_s"] > 0 and "peak_device_mb" not in record  # On the CPU.
  config = bench.load_config(TINY, 2, ("mixed_precision=bfloat16",))
  assert bench.torch_autocast(config, "cpu").fast_dtype == __import__("torch").bfloat16


def test_torch_cpm_has_jaxpose_parameter_counts():
  pytest.importorskip("torch")
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  for spec in ("configs/cpm_mpii.py", "configs/cpm_flic.py"):
    config = bench.load_config(str(REPO / spec), 2)
    assert torch_models.num_params(bench.torch_model(config)) == _jax_params(str(REPO / spec))
  # The quickstart is CPM's VGG variant, which has no PyTorch twin.
  assert bench.torch_model(bench.load_config(str(REPO / "configs/quickstart.py:cpm"), 2)) is None
  assert torch_models.num_params(torch_models.CPM()) == 31_219_866  # The release's LSP model.


def _from_torch(params, state_dict):
  """jaxpose CPM parameters (the release's layout) with a torch_models.CPM's state_dict."""

  def value(path, leaf):
    keys = [p.key for p in path]
    module, layer = keys[0], keys[1]
    if module == "stage1" and layer in ("conv1", "conv2", "conv3"):
      prefix = f"stage1.trunk.{layer}"
    elif module.startswith("stage") and module != "stage1":
      prefix = f"stages.{int(module[5:]) - 2}.{layer}"
    else:
      prefix = f"{module}.{layer}"
    if layer not in ("conv7", "mconv5"):  # Inside conv-ReLU blocks.
      prefix += ".conv"
    w = state_dict[prefix + (".bias" if keys[-1] == "bias" else ".weight")].numpy()
    if keys[-1] != "bias":
      w = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
      w = w[0, 0] if leaf.ndim == 2 else w  # A 1x1 convolution as a dense kernel.
    return jnp.asarray(w)

  return jax.tree_util.tree_map_with_path(value, params)


@pytest.mark.parametrize("num_pools", [3, 2])
def test_torch_cpm_computes_what_jaxpose_cpm_computes(num_pools):
  torch = pytest.importorskip("torch")
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  kw = dict(num_stages=3, num_parts=5, trunk_features=8, stage_features=4, head_features=16,
            mconv_features=8, big_kernel=3, stage_kernel=5, feature_kernel=3, dropout_rate=0.0,
            num_pools=num_pools)
  torch.manual_seed(0)
  twin = torch_models.CPM(**kw).eval()
  for p in twin.parameters():
    torch.nn.init.normal_(p, std=0.3)
  # 72 px: the pools hang over the edge (72 -> 36 -> 18 -> 9), the centre pool's last window too.
  size = 72
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  center = np.array(cpm.center_map(size, jnp.array([[30.0, 40.0], [50.0, 20.0]]), sigma=5.0))
  model = cpm.CPM(**kw)
  params = jax.eval_shape(model.init, jax.random.key(0), x, center)["params"]
  outputs = model.apply({"params": _from_torch(params, twin.state_dict())}, x, center)
  with torch.no_grad():
    expected = twin(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                    torch.from_numpy(center.transpose(0, 3, 1, 2)))
  for got, want in zip(outputs, expected, strict=True):
    want = want.numpy().transpose(0, 2, 3, 1)
    assert got.shape == want.shape == (2, size // 2**num_pools, size // 2**num_pools, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_ief_oracle_moves_from_the_mean_pose_to_the_truth(tmp_path):
  """benchmarks/ief_bound.py: with a bound too small to move, the oracle is the mean pose; with
  one larger than the crop, one step lands on the truth; in between it improves step by step."""
  from benchmarks import ief_bound  # pylint: disable=g-import-not-at-top
  from benchmarks import quickstart_curve  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("ief-tiny")
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.model.max_step = 1e-9
  still = ief_bound.oracle_tables(config, 1)[0]
  assert still["Total"] == pytest.approx(quickstart_curve.mean_pose_baseline(config)["Total"])
  config.model.max_step = 10.0
  assert ief_bound.oracle_tables(config, 1)[0]["Total"] == 100.0
  config.model.max_step = 0.05
  totals = [t["Total"] for t in ief_bound.oracle_tables(config, 3)]
  assert still["Total"] < totals[0] < totals[1] < totals[2] <= 100.0


def test_ief_feedback_probes_tell_a_reading_network_from_a_blind_one():
  """benchmarks/ief_feedback.py: the oracle's correction (the bounded step toward the truth)
  points at the truth from y_0, stays at the truth, undoes min(1, 1 / radius) of a displacement;
  a correction that ignores the pose undoes none of it on average."""
  from benchmarks import ief_feedback  # pylint: disable=g-import-not-at-top
  from jaxpose.models import ief  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  truth = rng.uniform(-0.4, 0.4, (64, 5, 2)).astype(np.float32)
  mean, step = truth.mean(axis=0), 0.05
  oracle = lambda images, y: ief.bounded_correction(y, truth, step)  # noqa: E731
  for radius, undone in ((0.5, 1.0), (2.0, 0.5)):
    probes = ief_feedback.feedback_probes(oracle, None, truth, mean, step, radius, rng)
    np.testing.assert_allclose(probes["from y_0: cosine"], 1.0, atol=1e-5)
    assert np.all(probes["from y_0: |f|/L"] <= 1.0 + 1e-5)
    np.testing.assert_allclose(probes["at the truth: |f|/L"], 0.0, atol=1e-5)
    np.testing.assert_allclose(probes["truth + d: undone"], undone, atol=1e-4)
    np.testing.assert_allclose(probes["truth + d: cosine"], 1.0, atol=1e-4)
  fixed = rng.normal(0.0, step, (64, 5, 2)).astype(np.float32)
  blind = ief_feedback.feedback_probes(lambda images, y: fixed, None, truth, mean, step, 1.0, rng)
  assert abs(blind["truth + d: undone"].mean()) < 0.15
  assert abs(blind["truth + d: cosine"].mean()) < 0.1
  np.testing.assert_allclose(blind["at the truth: |f|/L"], np.linalg.norm(fixed, axis=-1) / step,
                             rtol=1e-5)


def test_ief_feedback_probes_a_checkpoint_and_refuses_another_family(tmp_path):
  """benchmarks/ief_feedback.py end to end on an ief-tiny checkpoint (random weights, as saved
  by the trainer): every probe, a value per PCK column and Total, each in its range; a
  hourglass checkpoint is refused with a line that names it."""
  import helpers  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from benchmarks import ief_feedback  # pylint: disable=g-import-not-at-top
  from jaxpose import checkpoints, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxpose.data import datasets  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("ief-tiny")
  config.dataset.data_dir = str(tmp_path / "tfds")
  family = families.create_family(config)
  state = train.create_train_state(family, train.create_optimizer(config, 100),
                                   jax.random.key(0), parallel.make_mesh())
  manager = checkpoints.manager(tmp_path / "ief" / "checkpoints", config)
  checkpoints.save(manager, state, config, 1)
  manager.wait_until_finished()
  table = ief_feedback.probe_checkpoint(str(tmp_path / "ief"), num_people=12, radius=1.0)
  skeleton = datasets.load_source(config.dataset, config.dataset.eval_split).skeleton
  assert list(table) == list(ief_feedback.PROBES)
  for probe, row in table.items():
    assert list(row) == [name for name, _ in skeleton.groups] + ["Total"]
    values = np.array(list(row.values()))
    assert np.all(np.isfinite(values)), probe
    if "cosine" in probe:
      assert np.all(np.abs(values) <= 1.0 + 1e-6), probe
    if "|f|/L" in probe:
      assert np.all(values >= 0.0) and values.max() > 0.0, probe
  with pytest.raises(app.UsageError, match="'hourglass'"):
    ief_feedback.probe_checkpoint(str(helpers.tiny_checkpoint(tmp_path / "hg")), 12, 1.0)
  # The same checkpoint, for eval.py: --decode_upsample decodes heat maps, named, not ignored.
  from jaxpose import evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="decode_upsample=4 decodes heat maps; the 'ief'"):
    evaluate.evaluate_checkpoint(str(tmp_path / "ief"), decode_upsample=4, write_outputs=False)


def test_ief_stem_times_both_layouts_of_the_same_network():
  from benchmarks import ief_stem  # pylint: disable=g-import-not-at-top
  from jaxpose.models import ief  # pylint: disable=g-import-not-at-top
  kwargs = dict(inception=ief.INCEPTION_V1[:1], width_divisor=16, batch_norm=True,
                dropout_rate=0.0)
  out = ief_stem.compare(32, kwargs, batch=2, joints=3, repeats=1, rounds=1)
  assert all(ms > 0 for parts in out["ms"].values() for ms in parts.values())
  assert set(out["ms"]) == {"closed form", "rendered"}
  assert out["iterates"] < 1e-5 and out["gradients"] < 1e-2 and out["rounding"] < 1e-2


def test_conv_gradient_times_the_kernel_gradients_and_counts_the_work_a_tap():
  from benchmarks import conv_gradient  # pylint: disable=g-import-not-at-top
  out = conv_gradient.measure(2, 9, 16, 8, 3, 2)  # 9 px, stride 2, padding 1: 5 x 5 outputs.
  assert out["work"] == 2 * 5 * 5 * 16 * 8
  assert out["xla"] > 0 and out["taps"] > 0 and "winograd" not in out
  out = conv_gradient.measure(2, 9, 16, 8, 3, 1)  # Stride 1: Winograd's too.
  assert out["work"] == 2 * 9 * 9 * 16 * 8 and out["winograd"] > 0 and "fft" not in out
  assert "patches" not in out  # 3x3: below PATCHES_MIN_KERNEL.
  out = conv_gradient.measure(1, 12, 16, 8, 7, 1)  # A 7x7 kernel at stride 1: the FFT's too.
  assert out["fft"] > 0 and out["patches"] > 0 and "winograd" not in out
  out = conv_gradient.measure(1, 12, 16, 8, 7, 2)  # Stride 2: neither.
  assert "fft" not in out and "patches" not in out


@pytest.mark.parametrize("image_format", ["jpeg", "raw"])
def test_pipeline_throughput_counts_the_bytes_each_mode_sends(tmp_path, image_format):
  """benchmarks/pipeline_throughput.py: the uint8 crop sends the input's bytes, the float32 crop
  four times that, the stored pixels the padded pre-crop's; from the cache, in either format."""
  import helpers  # pylint: disable=g-import-not-at-top
  from benchmarks import pipeline_throughput as bench_input  # pylint: disable=g-import-not-at-top
  size = bench_input.INPUT_SIZE
  source, cost = bench_input.precropped(helpers.dots_source(n=4, size=96), str(tmp_path),
                                        image_format)
  assert cost > 0 and source.images.paths[0].endswith("jpegs" if image_format == "jpeg" else "raw")
  small = 1024  # Joints, visibility, the crop's matrix and gains.
  for mode, pixels in (("uint8 crop", size * size * 3), ("host", size * size * 3 * 4),
                       ("stored pixels", source.side**2 * 3)):
    rate, sent = bench_input.train_rate(source, None, threads=1, batch_size=2, batches=1,
                                        mode=mode)
    assert rate > 0 and pixels <= sent < pixels + small, (mode, sent)


def test_only_a_measured_process_step_prefaults(tmp_path, monkeypatch):
  """benchmarks/models.py's step prefaults as train.py's (a process's one step: "train",
  "startup"); the scripts that build two steps in a process pass no kind and do not."""
  from jaxpose import host_memory  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(host_memory.PREFAULT_VARIABLE, raising=False)
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  try:
    config = bench.load_config(TINY, 2)
    host = bench.random_batch(2, config.input_size)
    _, unmeasured = bench.jax_train(config, host, {"device_augment": False})
    _, measured = bench.jax_train(config, host, {"device_augment": False, "kind": "startup"})
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  assert not isinstance(unmeasured.compiled, host_memory.FirstCall)
  # Measured: its first call records the temporaries (nothing known yet in this cache).
  assert isinstance(measured.compiled, host_memory.FirstCall) == sys.platform.startswith("linux")


def test_module_pairs_times_a_module_under_two_settings_of_the_layers(capsys):
  """benchmarks/module_pairs.py: B's convolution takes Winograd's kernel gradient at any size
  (the thresholds lowered for B), A's XLA's: the same gradients to Winograd's rounding."""
  from benchmarks import module_pairs  # pylint: disable=g-import-not-at-top
  record = module_pairs.main(["--module", "bottleneck", "--batch", "2", "--size", "8",
                              "--features", "32", "--blocks", "1", "--per_block", "1",
                              "--huge_pages", "off", "--b_layers", "MIN_WORK_FOR_TAPS=0",
                              "--b_layers", "MIN_CHANNELS_FOR_TAPS=1"])
  assert 1e-9 < record["difference"] < 1e-4
  assert all(t > 0 for t in record["median_s"].values()) and 0 <= record["b_faster"] <= 1
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[1].split()[0] for line in lines[:2]] == ["A", "B"]
  assert "B: MIN_WORK_FOR_TAPS=0 MIN_CHANNELS_FOR_TAPS=1" in lines[-2]
  assert lines[-2].startswith("bottleneck, batch 2, 8 px, 32 features")
