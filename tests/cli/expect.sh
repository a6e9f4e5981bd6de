#!/usr/bin/env bash
# expect.sh CODE REGEX CMD...: runs CMD and passes if it exits with CODE and
#   - CODE 0: its output (stdout and stderr together) matches the extended regular expression
#     REGEX;
#   - any other CODE (an error): its stderr is exactly one line, and that line matches REGEX.
#     A user error is one line naming the problem (README, "Exit codes"): a usage dump, a
#     second "error" line or a library's trace after it fails the case.
set -u
want_code=$1 pattern=$2
shift 2
err_file=$(mktemp)
trap 'rm -f "$err_file"' EXIT
out=$("$@" 2>"$err_file")
code=$?
err=$(<"$err_file")
show() { printf -- '--- stdout ---\n%s\n--- stderr ---\n%s\n' "$out" "$err"; }
if [[ $code -ne $want_code ]]; then
  printf 'exit code %s, expected %s\n' "$code" "$want_code"
  show
  exit 1
fi
if [[ $want_code -eq 0 ]]; then
  if ! grep -Eq -- "$pattern" <<<"$out"$'\n'"$err"; then
    printf 'output does not match /%s/\n' "$pattern"
    show
    exit 1
  fi
  echo "ok: exit 0, output matches /$pattern/"
  exit 0
fi
lines=$(printf '%s\n' "$err" | grep -c '')
if [[ -z $err || $lines -ne 1 ]]; then
  printf 'stderr has %s lines, expected exactly one error line\n' "$([[ -z $err ]] && echo 0 || echo "$lines")"
  show
  exit 1
fi
if ! grep -Eq -- "$pattern" <<<"$err"; then
  printf 'the error line does not match /%s/\n' "$pattern"
  show
  exit 1
fi
echo "ok: exit $code, one error line matching /$pattern/: $err"
