"""Runs decode_attention's kernel under Triton's interpreter: python interpret_decode_attention.py CALLS OUTPUTS.

CALLS is a torch.save'd dict name -> (q, k, v, scale, sliding_window, query_positions) of CPU tensors;
OUTPUTS gets name -> output. The interpreter has to be chosen before Triton is first imported, hence
a process of its own (tests/test_decode_attention.py starts it).
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from decode_attention import decode_attention  # noqa: E402

if __name__ == "__main__":
    calls = torch.load(sys.argv[1])
    torch.save({name: decode_attention(*args) for name, args in calls.items()}, sys.argv[2])
