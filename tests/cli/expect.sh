#!/usr/bin/env bash
# expect.sh CODE REGEX CMD...: runs CMD, passes if it exits with CODE and its output (stdout and
# stderr together) matches the extended regular expression REGEX.
set -u
want_code=$1 pattern=$2
shift 2
out=$("$@" 2>&1)
code=$?
if [[ $code -ne $want_code ]]; then
  printf 'exit code %s, expected %s\n--- output ---\n%s\n' "$code" "$want_code" "$out"
  exit 1
fi
if ! grep -Eq -- "$pattern" <<<"$out"; then
  printf 'output does not match /%s/\n--- output ---\n%s\n' "$pattern" "$out"
  exit 1
fi
echo "ok: exit $code, output matches /$pattern/"
