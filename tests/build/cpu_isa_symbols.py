#!/usr/bin/env python3
"""A binary built on an AVX-512 machine must run on an AVX2 one: only the AVX-512 copy of the
CPU kernels (kernels/isa.h: namespace `avx512`) may hold AVX-512 instructions.

Disassembles the executable and finds every EVEX-encoded instruction (first byte 0x62 after
legacy prefixes; in 64-bit mode 0x62 is nothing else). Fails if one lies in a function whose
name does not carry the `avx512` namespace (such a function could run on any CPU: SIGILL on an
AVX2 node), or if the AVX-512 copy holds none (then it was not compiled for AVX-512 at all and
the dispatch would pick a copy no faster than the baseline).
"""
import argparse
import re
import subprocess
import sys

LEGACY_PREFIXES = {0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x64, 0x65, 0x36, 0xF0}
FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
INSN = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$")


def evex_functions(binary):
    """{function name: (EVEX instruction count, first such instruction)}."""
    out = subprocess.run(["objdump", "-d", "-C", "--insn-width=15", binary], check=True,
                         capture_output=True, text=True).stdout
    found, func = {}, None
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        m = INSN.match(line)
        if not m or func is None:
            continue
        code = [int(b, 16) for b in m.group(1).split()]
        i = 0
        while i < len(code) and code[i] in LEGACY_PREFIXES:
            i += 1
        if i < len(code) and code[i] == 0x62:
            n, first = found.get(func, (0, m.group(2).strip()))
            found[func] = (n + 1, first)
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    args = ap.parse_args()
    found = evex_functions(args.binary)
    stray = {f: v for f, v in found.items() if "avx512::" not in f}
    ours = sum(n for f, (n, _) in found.items() if "avx512::" in f)
    for f, (n, first) in sorted(stray.items()):
        print(f"AVX-512 outside the avx512 copy: {f}: {n} instructions, e.g. {first}")
    print(f"{args.binary}: {ours} EVEX instructions in {len(found) - len(stray)} functions of the "
          f"avx512 copy, {sum(n for n, _ in stray.values())} elsewhere")
    if stray:
        return 1
    if ours == 0:
        print("the avx512 copy of the CPU kernels holds no AVX-512 instruction")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
