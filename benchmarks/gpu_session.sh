#!/usr/bin/env bash
# The GPU figures of the README, as run on a lent H100 (the workplace's `device` tool): first
# the clean speed figures alone on the GPU, then long JSB runs in the background (setsid, so they
# outlive this command), then the CUDA tests and the stability benchmark.
#   bash benchmarks/gpu_session.sh start DATA_DIR RUNS   # DATA_DIR: the polyphonic pickles
#   bash benchmarks/gpu_session.sh status RUNS OUT       # val lines so far, logs into OUT
#   bash benchmarks/gpu_session.sh collect RUNS OUT      # stop; logs and GPU checkpoints
# The fifth session's lease (the other three data sets, and JSB's importance sampling with large K):
#   bash benchmarks/gpu_session.sh others DATA_DIR RUNS   # Nottingham, Piano-midi, MuseData
#   bash benchmarks/gpu_session.sh is_k CHECKPOINT K...    # val and test NLL for each K
#   bash benchmarks/gpu_session.sh evaluate RUNS OUT K     # stop; evaluate every checkpoint
# The speed figures against Pyro on the GPU (CUDA graphs, deferred reads), one call of the
# device tool, about 5 minutes; Pyro is not on that machine, so carry its wheels (.whl, which
# .git/info/exclude ignores; pure Python, made here with
# `pip download --no-deps -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2`):
#   bash benchmarks/gpu_session.sh speed OUT     # run with carry [".whl"]
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
stamp() { while IFS= read -r l; do printf '%s %s\n' "$(date +%s)" "$l"; done; }
# a long run in the background (outlives the command), 5000-epoch schedule, checkpoints every
# 25 epochs into $runs/NAME, log $runs/NAME.log
launch() {  # name, cores, arguments
  setsid bash -c "$(declare -f stamp); taskset -c $2 python3 benchmarks/dmm_jsb.py \
    --epochs 5000 --eval-every 25 --out $runs/$1 --samples 0 ${*:3} 2>&1 | stamp" \
    > "$runs/$1.log" 2>&1 < /dev/null &
}
logs() { tar czf "$2/logs.tgz" -C "$1" $(cd "$1" && ls *.log); }  # RUNS OUT
case $1 in
speed)  # OUT: the CUDA tests (graphs against the eager scan, float64), then Pyro against ours
  out=$2
  if ! python3 -c "import pyro" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=$PWD:/tmp/site || exit 1
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -15
  python3 benchmarks/dmm_speed.py --vs-pyro --device cuda --epochs 3 --krishnan 2>"$out/flow_free.err" \
    | tee "$out/flow_free.txt"
  python3 benchmarks/dmm_speed.py --vs-pyro --device cuda --epochs 2 --num-iafs 2 2>"$out/iaf2.err" \
    | tee "$out/iaf2.txt"
  ;;
all)  # OUT [MNIST_DIR]: speed (above), then the dashboard on the GPU (gpu_dashboard.py: the page
  # trains a DMM with device cuda; its checkpoint comes back for the CPU test), then the MNIST
  # VAE's test NLL (K = 5000) after a bounded number of epochs; carry [".whl", ".gpudata"]
  out=$2 mnist=${3:-.gpudata/mnist}
  timeout 350 bash "$0" speed "$out"
  export PYTHONPATH=$PWD:/tmp/site
  timeout 90 python3 benchmarks/gpu_dashboard.py "$out" 2>"$out/dashboard.err" | tee "$out/dashboard.txt"
  timeout 130 python3 benchmarks/vae_mnist.py --data "$mnist" --epochs 20 --device cuda \
    --samples 5000 2>"$out/mnist.err" | tee "$out/mnist.txt"
  ;;
start)
  data=$2 runs=$3; mkdir -p "$runs"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  # speed, the GPU to itself: JSB 20 epochs, the others 3 (the first epoch is warm-up)
  python3 benchmarks/dmm_jsb.py --device cuda --epochs 20 --eval-every 0 --samples 0 2>&1 | tail -4
  python3 benchmarks/dmm_jsb.py --device cuda --num-iafs 2 --epochs 10 --eval-every 0 --samples 0 2>&1 | tail -4
  python3 benchmarks/dmm_jsb.py --device cuda --dataset nottingham piano_midi musedata \
      --data-dir "$data" --epochs 3 --eval-every 0 --samples 0 2>&1 | grep '^{'
  # long runs, checkpoints every 25 epochs: two on the GPU, seeds and Pyro's settings on the
  # spare CPU cores (one thread each), to compare validation curves at equal epochs
  launch dmm_gpu 0-1 --device cuda
  launch iaf2_gpu 2-3 --device cuda --num-iafs 2
  cpu="--device cpu --threads 1"
  launch cpu_seed1 5 $cpu --seed 1
  launch cpu_seed2 6 $cpu --seed 2
  launch cpu_seed3 7 $cpu --seed 3
  launch cpu_shuffle0 8 $cpu --bucket-jitter inf
  launch cpu_shuffle1 9 $cpu --bucket-jitter inf --seed 1
  launch cpu_mckl0 10 $cpu --mc-kl
  launch cpu_mckl1 11 $cpu --mc-kl --seed 1
  launch cpu_pyro0 12 $cpu --rnn-nonlinearity relu --clip-value-sum 10 --bucket-jitter inf
  python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tail -3
  python3 benchmarks/dmm_stability.py --device cuda 2>&1 | tail -3
  ;;
others)  # the same settings as JSB's (Pyro's), 5000-epoch schedule, checkpoints every 25 epochs;
  # a run whose checkpoint is already in RUNS/NAME/NAME (an earlier lease, or CPU slices of
  # dmm_jsb.py --time-limit copied there) continues with --resume
  data=$2 runs=$3; mkdir -p "$runs"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  for d in nottingham piano_midi musedata; do
    resume=; [ -f "$runs/$d/$d/checkpoint.pt" ] && resume=--resume
    launch $d 0-15 --device cuda --dataset $d --data-dir "$data" $resume
  done
  ;;
is_k)  # CHECKPOINT K...: the importance-sampled NLL of one checkpoint as K grows
  for k in "${@:3}"; do
    /usr/bin/time -f "K=$k: %e s" python3 -m vaelab evaluate --checkpoint "$2" --data jsb --device cuda \
      --samples "$k" --chunk-size 1000 --elbo-samples 100
  done
  ;;
evaluate)  # RUNS OUT K: stop the runs; evaluate each last checkpoint (val, test), in parallel;
  # the checkpoints come back to OUT so that a later lease can --resume them
  pkill -f benchmarks/dmm_jsb.py; sleep 3
  for c in "$2"/*/*/checkpoint.pt; do
    name=$(basename "$(dirname "$c")")
    python3 -m vaelab evaluate --checkpoint "$c" --device cuda --samples "$4" --chunk-size 250 \
      > "$3/eval_$name.json" 2> "$3/eval_$name.err" &
    cp "$c" "$3/${name}_checkpoint.pt"
  done
  wait; cat "$3"/eval_*.json
  logs "$2" "$3"
  ;;
status)  # RUNS OUT: the last lines, and all logs into OUT
  for f in "$2"/*.log; do echo "== $f"; tail -n 2 "$f"; done
  logs "$2" "$3"
  ;;
collect)  # RUNS OUT: stop every run (checkpoints are atomic), bring back logs and GPU weights
  pkill -f benchmarks/dmm_jsb.py; sleep 3
  logs "$2" "$3"
  for n in dmm_gpu iaf2_gpu; do
    for f in checkpoint best; do cp "$2/$n/jsb_chorales/$f.pt" "$3/${n}_$f.pt"; done
  done
  ;;
esac
