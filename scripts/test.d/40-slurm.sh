# Sourced by scripts/test.sh. Starts a real single-node Slurm (installed from Debian's apt on
# first use, ~15 s; ~0.3 s when already running) for the `--executor slurm` acceptance tests, and
# exports HUBSWEEP_SLURM=1 (the tests read it). Daemons this piece started are stopped when the
# test command exits; a cluster that was already running is left as it was.
# Needs root (it installs packages and starts daemons): without it the piece only says so, and
# the slurm tests fail under HUBSWEEP_REQUIRE_PEERS=1.
slurm_local="$PWD/scripts/slurm-local.sh"
if [ "$(id -u)" != 0 ]; then
  echo "40-slurm: not root; cannot start a local Slurm (slurm tests will fail)" >&2
else
  slurm_was_running=0
  bash "$slurm_local" status >/dev/null 2>&1 && slurm_was_running=1
  # More CPUs than cores: the tests' jobs are tiny and mostly wait on the hub.
  SLURM_LOCAL_CPUS="${SLURM_LOCAL_CPUS:-8}" bash "$slurm_local" start
  if [ "$slurm_was_running" = 0 ]; then
    # shellcheck disable=SC2064
    trap "bash '$slurm_local' stop" EXIT
  fi
  export HUBSWEEP_SLURM=1
  unset slurm_was_running
fi
unset slurm_local
