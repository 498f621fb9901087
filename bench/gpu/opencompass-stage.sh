#!/usr/bin/env bash
# Stages OpenCompass for the GPU machine (no network, no OpenCompass; Python 3.12 with torch,
# transformers and NumPy 2 of its own; vLLM staged by shared/gpu/stage-vllm): the wheels of
# OpenCompass 0.5.4 and of what it imports that such a machine lacks, the compass_client wheel, and
# install.sh, split into carry folders DIR/c0 .. DIR/cN of at most CHUNK_MIB (default 50) each.
#
#   bench/gpu/opencompass-stage.sh DIR [CHUNK_MIB]
#
# DIR must be ignored by git (.gpu/ is). Carry each folder in its own device run, back to back:
#   carry ["DIR/cK"], command: "mkdir -p /tmp/oc-stage && cp DIR/cK/* /tmp/oc-stage/"
# then "bash /tmp/oc-stage/install.sh" installs everything into /tmp/site-oc (no dependency
# resolution, no index). OpenCompass pins NumPy < 2; it runs with the machine's NumPy 2 for what
# bench/gpu/opencompass.sh does, and the wheels here are releases built for NumPy 2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR=${1:?usage: opencompass-stage.sh DIR [CHUNK_MIB]}
CHUNK=${2:-50}
mkdir -p "$DIR/dl"
PLAT=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp)
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1 linux any; do
  PLAT+=(--platform "${p}_x86_64")
done
PLAT+=(--platform any)
# What `opencompass` imports on the paths bench/gpu/opencompass.sh takes (CLI, tasks, every dataset
# and model module, the evaluators), less what a torch + transformers + vLLM machine has. Not regex:
# the machine's transformers needs a newer one than OpenCompass's pin, and has it. yapf: mmengine's
# Config.dump (the run's config copy). Not ray (~70 MB): OpenCompass's VLLM type only asks
# ray.is_initialized() before loading; opencompass.sh puts a two-function stand-in on the path.
WHEELS=(opencompass==0.5.4 mmengine-lite==0.11.0rc3 addict==2.4.0 datasets==3.6.0 pyarrow==19.0.1 dill==0.3.8
  multiprocess==0.70.16 xxhash==3.5.0 fsspec==2025.3.0 aiohttp==3.11.18 aiohappyeyeballs==2.6.1 aiosignal==1.3.2
  frozenlist==1.6.0 multidict==6.4.3 propcache==0.3.1 yarl==1.20.0 attrs==25.3.0 evaluate==0.4.3 pandas==2.2.3
  python-dateutil==2.9.0.post0 pytz==2025.2 tzdata==2025.2 six==1.17.0 scipy==1.15.3 scikit-learn==1.5.0
  joblib==1.5.0 threadpoolctl==3.6.0 h5py==3.13.0 nltk==3.9.1 absl-py==2.2.2 rank-bm25==0.2.2
  retrying==1.3.4 tabulate==0.9.0 prettytable==3.16.0 wcwidth==0.2.13 termcolor==3.1.0 tiktoken==0.9.0
  rapidfuzz==3.13.0 levenshtein==0.27.1 python-levenshtein==0.27.1 tree-sitter==0.21.3 tree-sitter-languages==1.10.2
  jsonlines==4.0.0 colorama==0.4.6 lazy-importer==0.1.0 gradio-client==1.10.0 websockets==15.0.1 cloudpickle==3.1.1
  importlib-metadata==8.7.0 zipp==3.21.0 rich==14.0.0 markdown-it-py==3.0.0 mdurl==0.1.2 pygments==2.19.1
  einops==0.8.1 json5==0.12.0 immutabledict==4.2.1 sacrebleu==2.5.1 portalocker==3.1.1 lxml==5.4.0
  yapf==0.43.0 platformdirs==4.14.9)
python3 -m pip download -q "${PLAT[@]}" -d "$DIR/dl" "${WHEELS[@]}"
# Pure-Python packages published only as source, and compass_client (from a copy: setuptools builds
# in the source tree): build their wheels here.
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
cp -r "$ROOT/python/pyproject.toml" "$ROOT/python/README.md" "$ROOT/python/compass_client" "$SRC/"
python3 -m pip wheel -q --no-deps -w "$DIR/dl" jieba==0.42.1 rouge==1.0.1 rouge-chinese==1.0.3 fuzzywuzzy==0.18.0 \
  func-timeout==4.3.5 timeout-decorator==0.5.0 rouge-score==0.1.2 "$SRC"
rm -rf "$DIR"/c[0-9]* "$DIR/parts"
mkdir -p "$DIR/parts"
cp "$DIR"/dl/*.whl "$DIR/parts/"
cat >"$DIR/parts/install.sh" <<'INST'
#!/usr/bin/env bash
# Runs on the GPU machine from /tmp/oc-stage: installs every carried wheel into /tmp/site-oc.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-oc /tmp/oc-stage/*.whl
echo "OpenCompass staged in /tmp/site-oc: export PYTHONPATH=/tmp/site-oc:/tmp/site"
INST
chmod +x "$DIR/parts/install.sh"
i=0; used=0; mkdir -p "$DIR/c0"
for f in $(ls -S "$DIR"/parts/*); do
  sz=$(( ($(stat -c %s "$f") + 1048575) / 1048576 ))
  if [ $((used + sz)) -gt "$CHUNK" ] && [ "$used" -gt 0 ]; then i=$((i + 1)); used=0; mkdir -p "$DIR/c$i"; fi
  mv "$f" "$DIR/c$i/"; used=$((used + sz))
done
rm -rf "$DIR/parts"
echo "staged $(ls "$DIR"/dl | wc -l) wheels into $((i + 1)) carry folders:"
du -sm "$DIR"/c* | sed 's/^/  /'
