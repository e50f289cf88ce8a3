r"""Every family's CPU quickstart, trained and evaluated: the README's table of families.

  python benchmarks/family_quickstarts.py                     # all five (~1 hour on 2 cores)
  python benchmarks/family_quickstarts.py --families cpm,ief --out runs/families.json

For each family: `train.py --config configs/quickstart.py:FAMILY --workdir runs/quickstart_FAMILY`
(resumes if already there), then `eval.py --ckpt ... --output_json`. Prints a markdown table:
PCKh@0.5 Total (and per stage for the families that refine), minutes of training (the
trainer's own clock, evaluations excluded), parameters. Writes the numbers as JSON.
"""

import argparse
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("hourglass", "cpm", "tompson", "deeppose", "ief")


def run_family(name: str, runs: str) -> dict:
  workdir = os.path.join(runs, f"quickstart_{name}")
  config = f"configs/quickstart.py:{name}"
  subprocess.run([sys.executable, "train.py", "--config", config, "--workdir", workdir],
                 cwd=REPO, check=True)
  out = os.path.join(workdir, "eval.json")
  subprocess.run([sys.executable, "eval.py", "--ckpt", workdir, "--output_json", out],
                 cwd=REPO, check=True)
  with open(out) as f:
    result = json.load(f)
  with open(os.path.join(workdir, "logs", "train.log")) as f:
    minutes = [float(m) for m in re.findall(r"after ([\d.]+) min of training", f.read())]
  summary = subprocess.run([sys.executable, "-m", "jaxpose.summary", config], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout
  params = int(re.search(r"^params: (\d+)", summary, re.M).group(1))
  return {"family": name, "total": result["table"]["Total"],
          "stages": [s["Total"] for s in result.get("stages", [])],
          "minutes": minutes[-1] if minutes else None, "params": params,
          "step": result["step"]}


def markdown(rows: list[dict]) -> str:
  lines = ["| family | PCKh@0.5 Total | per stage / iteration | minutes of training | params |",
           "|---|---:|---|---:|---:|"]
  for r in rows:
    stages = " -> ".join(f"{t:.1f}" for t in r["stages"]) or "-"
    minutes = f"{r['minutes']:.1f}" if r["minutes"] is not None else "?"
    lines.append(f"| {r['family']} | {r['total']:.2f} | {stages} | {minutes} | "
                 f"{r['params']:,} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--families", default=",".join(FAMILIES))
  parser.add_argument("--runs", default=os.path.join(REPO, "runs"))
  parser.add_argument("--out", default=os.path.join(REPO, "runs", "families.json"))
  args = parser.parse_args()
  rows = []
  for name in args.families.split(","):
    rows.append(run_family(name, args.runs))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
    print(markdown(rows), flush=True)


if __name__ == "__main__":
  main()
