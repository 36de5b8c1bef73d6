#!/bin/bash
# The measurements of one short GPU session (docs/ldm.md, "On one GPU"): the training benchmark on the
# default params and on the gpu preset with each switch off in turn, each family's stage on its default
# params, the GAN at 64 px, generation latency, CUDA determinism of a tiny GAN twice, torch.compile.
#
#   bash benchmarks/gpu_session.sh                 # everything (about 8 minutes on an H200)
#   ONLY=bdef,bgpu bash benchmarks/gpu_session.sh  # some steps (names below)
#
# Run from the repository root with spritegen installed and the prepared data in data/prepared
# (`dvc pull` or `dvc repro prepare`). The 64 px GAN step needs benchmarks' 64 px data and params:
#   spritegen prepare --params P64 --out .gpu/data64   (P64: params.yaml with prepare.resolution 64 and
#   five-entry gan.g_channels/d_channels, e.g. [128,128,128,64,32] and [32,64,128,128,128]).
# Every stage runs in a scratch folder (/tmp/w): nothing in the repository is written.
# and logged; a failing step does not stop the next.
R=$PWD; W=/tmp/w; mkdir -p $W/data; cp params.yaml $W/; ln -sfn $R/data/prepared $W/data/prepared
export PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { local name=$1 lim=$2; shift 2; echo "=== $name (t=$(( $(date +%s)-T0 ))s)"; local s=$(date +%s%N);
  (cd $W && timeout $lim "$@") 2>&1 | grep -v -E "^\s*$|Warning: |warnings.warn" | tail -n ${TAILN:-40}
  echo "=== $name rc=${PIPESTATUS[0]} wall=$(( ($(date +%s%N)-s)/1000000 )) ms"; }
ONLY=${ONLY:-all}
want() { [[ $ONLY == all || ,$ONLY, == *,$1,* ]]; }
want env && step env 30 bash -c 'nvidia-smi -L; python3 -c "import torch,diffusers,dvclive,open_clip,spritegen;print(torch.__version__, torch.cuda.get_device_name(), diffusers.__version__)"'
want bdef && step bench_default 150 python3 $R/benchmarks/bench_train.py --params $W/params.yaml --data $W/data/prepared --steps 30
want bgpu && step bench_gpu 200 python3 $R/benchmarks/bench_train.py --params $W/params.yaml --data $W/data/prepared --preset gpu --steps 30 --compare train.channels_last=false --compare train.precision=fp32 --compare train.tf32=false
want text && step train_text 90 python3 -m spritegen train text
want gan && step train_gan_default 150 python3 -m spritegen train gan --fresh
want cvae && step train_cvae_default 150 python3 -m spritegen train cvae --fresh
want vae && step train_vae_gpu_30ep 100 python3 -m spritegen train ldm --stage vae --preset gpu --stop-after 30 --fresh
want evaluator && step evaluator_default 100 python3 -m spritegen evaluator
want gan64 && step train_gan64_10ep 100 python3 -m spritegen train gan --params $R/.gpu/params64.yaml --data $R/.gpu/data64 --out $W/gan64 --stop-after 10 --fresh
want gen && step generate_gan 60 python3 $R/benchmarks/bench_generate.py --family gan --model $W/models/gan --device cuda
want det && { step gan_tiny_a 60 python3 -m spritegen train gan --preset tiny --out $W/gt1 --fresh; step gan_tiny_b 60 python3 -m spritegen train gan --preset tiny --out $W/gt2 --fresh;
  (cd $W; md5sum gt1/model.safetensors gt2/model.safetensors); }
want compile && step bench_compile 200 python3 $R/benchmarks/bench_train.py --params $W/params.yaml --data $W/data/prepared --preset gpu --stages vae unet --steps 30 --compare train.compile=true
echo "=== done (t=$(( $(date +%s)-T0 ))s)"
