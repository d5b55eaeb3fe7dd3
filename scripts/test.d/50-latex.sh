# Sourced by scripts/test.sh. Makes a real LaTeX and poppler available for the emit tests
# (tests/it/emit_latex.rs: the example paper in examples/paper/ built with pdflatex, its text
# read back with pdftotext, the emitted figure rendered with pdftoppm). When all three are on
# PATH already, the machine's TeX is left alone; otherwise Debian's packages are installed:
# texlive-latex-base (LaTeX, graphicx, hyperref), texlive-latex-recommended (booktabs) and
# poppler-utils. Idempotent. Needs root (CI runs as root) or passwordless sudo for apt-get.
#   HUBSWEEP_PDFLATEX    path of pdflatex
#   HUBSWEEP_PDFTOTEXT   path of pdftotext
#   HUBSWEEP_PDFTOPPM    path of pdftoppm

if ! command -v pdflatex >/dev/null 2>&1 || ! command -v pdftotext >/dev/null 2>&1 \
    || ! command -v pdftoppm >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  apt_get="apt-get"
  [ "$(id -u)" -eq 0 ] || apt_get="sudo apt-get"
  $apt_get update -qq
  DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq --no-install-recommends \
    texlive-latex-base texlive-latex-recommended poppler-utils make >/dev/null
fi

HUBSWEEP_PDFLATEX="$(command -v pdflatex)"
HUBSWEEP_PDFTOTEXT="$(command -v pdftotext)"
HUBSWEEP_PDFTOPPM="$(command -v pdftoppm)"
export HUBSWEEP_PDFLATEX HUBSWEEP_PDFTOTEXT HUBSWEEP_PDFTOPPM
