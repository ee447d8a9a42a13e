"""Runs decode_attention's kernels under Triton's interpreter: python interpret_decode_attention.py CALLS OUTPUTS.

CALLS is a torch.save'd dict name -> decode_attention's arguments (CPU tensors); OUTPUTS gets
name -> (output, how many times the call launched the kernel that combines split keys). The
interpreter has to be chosen before Triton is first imported, hence a process of its own
(tests/test_decode_attention.py starts it).
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from compilers import decode_attention  # noqa: E402


class CountedLaunches:
    """Stands in for a kernel: counts its launches and passes them on."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def run(args: tuple) -> tuple:
    combine = decode_attention._combine_splits_kernel = CountedLaunches(decode_attention._combine_splits_kernel)
    try:
        return decode_attention.decode_attention(*args), combine.launches
    finally:
        decode_attention._combine_splits_kernel = combine.kernel


if __name__ == "__main__":
    calls = torch.load(sys.argv[1])
    torch.save({name: run(args) for name, args in calls.items()}, sys.argv[2])
