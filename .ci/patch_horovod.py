"""Patch an unpacked Horovod 0.28.1 source tree so it builds against torch >= 2.13.

1. C++ standard 14 -> 20 in CMakeLists.txt and horovod/torch/CMakeLists.txt (torch headers demand it).
2. cmake/Modules/FindPytorch.cmake: report a CPU-only torch unless HOROVOD_GPU_OPERATIONS is set,
   so a CUDA build of torch on a machine with nvcc but no GPU toolkit config does not fail configure.
Each edit asserts it matched, so a different Horovod version fails loudly instead of silently.
"""
import os
import re
import sys
from pathlib import Path


def sub_once(path: Path, pattern: str, repl: str, count_min: int = 1) -> None:
    text = path.read_text()
    new, n = re.subn(pattern, repl, text)
    if n < count_min:
        sys.exit(f"patch_horovod: pattern {pattern!r} not found in {path}")
    path.write_text(new)


def main(src: str) -> None:
    root = Path(src)
    for rel in ("CMakeLists.txt", "horovod/torch/CMakeLists.txt"):
        sub_once(root / rel, r"set\(CMAKE_CXX_STANDARD 14\)", "set(CMAKE_CXX_STANDARD 20)")
    if not os.environ.get("HOROVOD_GPU_OPERATIONS"):
        sub_once(root / "cmake/Modules/FindPytorch.cmake",
                 r"print\(True if \(\(torch\.version\.cuda is not None\) and \(CUDA_HOME is not None\)\) else False\)",
                 "print(False)")
    print(f"patch_horovod: patched {root}")


if __name__ == "__main__":
    main(sys.argv[1])
