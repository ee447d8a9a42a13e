"""What ModelOpt calibrates on, offline: random tokens (the default) or the text built in below (--calib_data text).

Max calibration records each quantized activation's largest magnitude. Random tokens exercise every
embedding row the same way and need nothing; they are what a model with --random_weights should see.
For a trained model, ordinary text gives activations closer to a real prompt's; the built-in passage
(a few hundred words of plain prose on varied subjects, written for this project) is enough for a
per-tensor maximum, which a few thousand tokens settle, and keeps calibration offline and repeatable.
SmoothQuant's per-channel factors come from the same maxima.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CALIBRATION_TEXT = """\
The river rose after three days of rain, and the ferry stopped running before noon. In the village the bakery
stayed open late, selling bread to people who had walked in from the farms along the valley road.
A compiler turns a program into instructions a machine can run. Good compilers also rearrange the work, so
that values stay in fast memory and the processor waits less for data.
She measured the length of the table twice, wrote down 182 centimetres, and ordered a cloth a little longer.
Photosynthesis uses light to turn water and carbon dioxide into sugar and oxygen. Most of the oxygen in the air
comes from this process, in forests, grasslands and the upper layers of the ocean.
The committee met on Tuesday to discuss the budget for next year. Two members asked for more money for the
library; the treasurer replied that the roof of the school had to be repaired first.
How many prime numbers are smaller than one hundred? There are twenty-five of them, starting with 2, 3, 5 and 7.
When the train left the station, the boy pressed his face to the window and counted the bridges until he fell
asleep somewhere between the second tunnel and the coast.
To make a simple tomato sauce, soften an onion in olive oil, add chopped tomatoes and a pinch of salt, and let
it cook slowly for twenty minutes, stirring now and then.
The museum's new wing shows tools from the Bronze Age: axes, fish hooks, needles and a small bronze mirror that
still reflects light after three thousand years.
def mean(values):
    return sum(values) / len(values) if values else 0.0
In 1969 two astronauts walked on the Moon while a third orbited above them, waiting to bring them home.
Please summarise the following paragraph in one sentence, and then translate the sentence into French.
The market closed slightly higher on Friday, as energy prices fell and investors waited for the central bank.
A good night's sleep helps memory: the brain replays the day's events and keeps what seems to matter.
"""

CALIBRATION_ROWS, CALIBRATION_BATCHES, CALIBRATION_LENGTH = 4, 4, 128


@dataclass(frozen=True)
class CalibrationData:
    ids: list[torch.Tensor]  # batches of token ids [rows, length]
    description: str  # what the run says it calibrated on


def random_batches(vocab_size: int, length: int, device) -> CalibrationData:
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, vocab_size, (CALIBRATION_ROWS, length), generator=generator).to(device)
           for _ in range(CALIBRATION_BATCHES)]
    return CalibrationData(ids, f"{CALIBRATION_BATCHES * CALIBRATION_ROWS} sequences of {length} random tokens")


def text_batches(tokenizer, length: int, device) -> CalibrationData:
    """The built-in text cut into rows of `length` tokens (the last partial row dropped, repeated if short)."""
    tokens = torch.tensor(tokenizer.encode(CALIBRATION_TEXT))
    rows = max(len(tokens) // length, 1)
    tokens = tokens.repeat(-(-rows * length // len(tokens)))[:rows * length].reshape(rows, length)
    ids = [tokens[i:i + CALIBRATION_ROWS].to(device) for i in range(0, rows, CALIBRATION_ROWS)]
    return CalibrationData(ids, f"the built-in calibration text, {rows} sequences of {length} tokens")


def calibration_batches(kind: str, vocab_size: int, max_length: int, tokenizer, device) -> CalibrationData:
    length = min(CALIBRATION_LENGTH, max_length)
    return text_batches(tokenizer, length, device) if kind == "text" else random_batches(vocab_size, length, device)
