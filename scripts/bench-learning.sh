#!/usr/bin/env bash
# Learning benchmark: supervised, UDA and MPL on Fashion-MNIST with 1000 labels (100 per class),
# the same WRN-10-2 and the same step budget, printing test top-1 of every model side by side.
#   scripts/bench-learning.sh [STEPS] [OUT_DIR]
#   ALGORITHMS="uda mpl"  only these (default: supervised uda mpl)
#   AUGMENT='{"randaugment_magnitude": 5}', MPL='{"pseudo_label_view": "weak"}'  JSON merged
#                         into the spec's `augment` and `mpl` sections (ablations)
# Uses the release build of the trainer (cargo build -p mpl-trainer --release).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
steps="${1:-2000}"
out="${2:-$root/target/bench-learning}"
# shellcheck source=/dev/null
source "$root/scripts/torch-env.sh"
trainer="$root/target/release/trainer"
[ -x "$trainer" ] || cargo build -p mpl-trainer --release --manifest-path "$root/Cargo.toml" >&2
mkdir -p "$out"
fm=/usr/share/datasets/fashion-mnist

for algorithm in ${ALGORITHMS:-supervised uda mpl}; do
  python3 - "$algorithm" "$steps" "$fm" "${AUGMENT:-{\}}" "${MPL:-{\}}" > "$out/$algorithm.json" <<'PY'
import json, sys
algorithm, steps, fm = sys.argv[1], int(sys.argv[2]), sys.argv[3]
augment, mpl = json.loads(sys.argv[4]), json.loads(sys.argv[5])
def source(split):
    return {"path": f"{fm}/{split}-images-idx3-ubyte.gz",
            "labels_path": f"{fm}/{split}-labels-idx1-ubyte.gz", "format": "idx"}
optimizer = {"lr": 0.05, "warmup_steps": steps // 20}
print(json.dumps({
    "algorithm": algorithm,
    "model": {"arch": "wide_resnet", "depth": 10, "widen_factor": 2, "dropout": 0.2},
    "data": {"labeled": source("train"), "eval": source("t10k"), "num_labeled": 1000},
    "batch_size": 32, "mu": 4, "total_steps": steps,
    "teacher_optimizer": optimizer, "student_optimizer": optimizer,
    "student_wait_steps": steps // 10,
    "uda": {"weight": 1.0, "ramp_steps": steps // 4},
    "augment": {"flip": True, "randaugment_magnitude": 10, **augment},
    "mpl": mpl,
    "ema_decay": 0.99,
    "finetune": {"enabled": True, "steps": steps // 10, "batch_size": 128, "lr": 0.001},
    "eval": {"interval_steps": steps, "batch_size": 1000},
    "checkpoint": {"interval_steps": steps, "keep_latest": 1},
    "seed": 0, "device": {"device": "cpu"},
}, indent=2))
PY
  echo "==> $algorithm ($steps steps)" >&2
  "$trainer" run --spec "$out/$algorithm.json" --out "$out/$algorithm" \
    > "$out/$algorithm.events" 2> "$out/$algorithm.log"
done

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"{'algorithm':<12}{'teacher':>10}{'student':>10}{'ema':>10}{'finetuned':>11}")
for algorithm in ["supervised", "uda", "mpl"]:
    if not os.path.exists(f"{out}/{algorithm}.events"):
        continue
    top1 = {}
    for line in open(f"{out}/{algorithm}.events"):
        event = json.loads(line)
        if event["event"] == "eval" and event["split"] == "eval":
            top1[event["model"]] = event["top1"]
    cells = [f"{100 * top1[m]:.2f}" if m in top1 else "-"
             for m in ["teacher", "student", "ema", "finetuned"]]
    print(f"{algorithm:<12}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}{cells[3]:>11}")
# What the pseudo labels looked like while the student (mpl) or the model (uda) learned from them.
def accuracy(rows):
    values = [r["pseudo/accuracy"] for r in rows if "pseudo/accuracy" in r]
    if not values:
        return ""
    tenth = max(1, len(values) // 10)
    mean = lambda v: 100 * sum(v) / len(v)
    return (f", pseudo-label accuracy {mean(values):.1f} % (first tenth {mean(values[:tenth]):.1f} %, "
            f"last tenth {mean(values[-tenth:]):.1f} %)")
for algorithm in ["uda", "mpl"]:
    if not os.path.exists(f"{out}/{algorithm}.events"):
        continue
    rows = []
    for line in open(f"{out}/{algorithm}.events"):
        event = json.loads(line)
        if event["event"] == "metrics" and event["values"].get("lr/student", 0) > 0 \
                and "finetune/loss" not in event["values"]:
            rows.append(event["values"])
    if not rows:
        continue
    mean = lambda key: sum(r.get(key, 0.0) for r in rows) / len(rows)
    if algorithm == "uda":
        print(f"uda: mask rate {100 * mean('uda/mask_rate'):.0f} %{accuracy(rows)}")
        continue
    positive = sum(r.get("h", 0.0) > 0 for r in rows) / len(rows)
    print(f"mpl: {len(rows)} metrics events after the student wait, h > 0 on {100 * positive:.0f} %, mean h "
          f"{mean('h'):.4f}, pseudo-label confidence {mean('pseudo/confidence_mean'):.2f}, "
          f"strong/weak agreement {100 * mean('pseudo/agreement_with_weak'):.0f} %{accuracy(rows)}")
PY
