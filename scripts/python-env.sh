# Sourced by install.sh and test.sh: make `python3` the project's interpreter (pyenv's 3.11).
# Debian's /usr/bin/python3 is externally managed (PEP 668: pip refuses to install into it),
# so when it comes first on PATH and a pyenv install exists, pyenv's shims go in front.
python_is_usable() {
    command -v python3 >/dev/null 2>&1 || return 1
    python3 -m pip --version >/dev/null 2>&1 || return 1
    local stdlib
    stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))') || return 1
    [ ! -e "$stdlib/EXTERNALLY-MANAGED" ]
}
if ! python_is_usable; then
    shims=${PYENV_ROOT:-$HOME/.pyenv}/shims
    if [ -x "$shims/python3" ]; then
        export PATH="$shims:$PATH"
    fi
    if ! python_is_usable; then
        printf '%s\n' "no usable python3: $(command -v python3 || echo none) has no pip or is" \
            "Debian's externally managed one; put pyenv's Python 3.11 first on PATH" >&2
        exit 1
    fi
fi
