"""The most one core can do: the throughput of the instructions the GEMM kernels are built on, measured.

    .venv/bin/python scripts/bench/instruction_peak.py [--seconds 0.5]

For each instruction this CPU has (``vfmadd231ps``: the float32 GEMM; ``vpdpbusd``: the int8 GEMM with VNNI;
``vpmaddwd``: the int8 GEMM on AVX2; ``vpmaddubsw``: ONNX Runtime's int8 GEMM on AVX2, for comparison), a loop of
12 independent instructions on registers (no memory, no dependency chain shorter than 12) is assembled with
LLVM (llvmlite, which Numba already needs) and timed on one core. It prints instructions per second and
operations per second (a multiply-add is 2): the ceiling against which a kernel's GOP/s reads as a fraction.
Run it on a quiet machine; a VM's clock moves, so compare it with kernel rates from the same minutes.
"""

from __future__ import annotations

import argparse
import ctypes
import time

# (name, assembler mnemonic, register width, operations per instruction, CPU features it needs)
INSTRUCTIONS = (
    ("vfmadd231ps zmm", "vfmadd231ps", "zmm", 2 * 16, ("avx512f",)),
    ("vfmadd231ps ymm", "vfmadd231ps", "ymm", 2 * 8, ("fma",)),
    ("vpdpbusd zmm", "vpdpbusd", "zmm", 2 * 64, ("avx512vnni", "avx512bw")),
    ("vpdpbusd ymm", "vpdpbusd", "ymm", 2 * 32, ("avx512vnni", "avx512vl")),
    ("vpmaddwd ymm (+ vpaddd not counted)", "vpmaddwd", "ymm", 2 * 16, ("avx2",)),
    ("vpmaddubsw ymm (int16 sums: saturates)", "vpmaddubsw", "ymm", 2 * 32, ("avx2",)),
)


def _loop(mnemonic: str, reg: str, n_acc: int = 12) -> str:
    """AT&T assembly: zero the registers, then n times: n_acc independent instructions, reading registers
    12 and 13 and writing registers 0 .. n_acc - 1 (for vpmaddwd and vpmaddubsw, which do not accumulate, the
    results are independent too)."""
    zero = "".join(f"vpxor %xmm{i}, %xmm{i}, %xmm{i}\n" for i in range(14))  # zeroes the whole register
    body = "".join(f"{mnemonic} %{reg}12, %{reg}13, %{reg}{i}\n" for i in range(n_acc))
    return zero + "1:\n" + body + "dec $0\njnz 1b\nvzeroupper\n"


def _compile(asm: str):
    """A function void f(int64 n) running ``asm`` with n in a register, compiled for the host CPU."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    i64 = ir.IntType(64)
    module = ir.Module(name="peak")
    module.triple = llvm.get_process_triple()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64]), name="peak")
    builder = ir.IRBuilder(fn.append_basic_block())
    clobbers = ",".join(f"~{{xmm{i}}}" for i in range(14))
    builder.asm(ir.FunctionType(i64, [i64]), asm, f"=r,0,{clobbers},~{{dirflag}},~{{fpsr}},~{{flags}}",
                [fn.args[0]], side_effect=True)  # fmt: skip
    builder.ret_void()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    features = llvm.get_host_cpu_features().flatten()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=features, opt=2)
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    return engine, ctypes.CFUNCTYPE(None, ctypes.c_int64)(engine.get_function_address("peak"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="about how long to time each instruction")
    args = ap.parse_args()
    import llvmlite.binding as llvm

    try:  # llvmlite < 0.45 wants these; newer ones initialise themselves and refuse the call
        llvm.initialize()
    except RuntimeError:
        pass
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()  # the loops are inline assembly
    have = {name for name, on in llvm.get_host_cpu_features().items() if on}
    print(f"CPU: {llvm.get_host_cpu_name()}; one core, 12 independent instructions per loop iteration")
    for name, mnemonic, reg, ops, needs in INSTRUCTIONS:
        if not set(needs) <= have:
            print(f"{name:<40} (this CPU lacks {', '.join(sorted(set(needs) - have))})")
            continue
        engine, f = _compile(_loop(mnemonic, reg))
        n = 1_000_000
        f(n)  # warm up, and find a count that takes about --seconds
        t = time.perf_counter()
        f(n)
        n = max(n, int(n * args.seconds / max(time.perf_counter() - t, 1e-6)))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            f(n)
            best = min(best, time.perf_counter() - t)
        rate = 12 * n / best
        print(f"{name:<40} {rate / 1e9:6.2f} G instructions/s  {rate * ops / 1e9:7.0f} G ops/s")
        del engine


if __name__ == "__main__":
    main()
