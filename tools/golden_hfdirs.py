"""Golden part "hfdirs": a model directory exactly as transformers 5 saves it, without a tokenizer.

transformers 5's `BloomConfig` writes `"pad_token_id": null`, and `generate` takes its stop ids
from generation_config.json (one id or a list) and pads finished rows with the first of them when
there is no pad id. minibloom must load such a directory and generate the same ids. This part
takes the briefly trained model of the "generate" part (so continuations vary and some stop),
re-saves it with transformers as

    hf5_no_tokenizer/  config.json (pad_token_id null), generation_config.json (eos_token_id
                       [2, X]: the end token plus a token the model emits early), model.safetensors
    hf5_cases.json     prompts and transformers' greedy `generate` ids with the saved defaults

and refuses to write files in which no row stops at the second stop id (the case would not test
the list). Needs the "generate" part's output.
"""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    [[269, 266, 275]],
    [[269, 344, 74, 267, 292, 291]],
    [[3, 3, 3, 269, 266, 275], [269, 344, 74, 267, 292, 291]],
]
MAX_LENGTH = 24


def make(out_dir: Path) -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import BloomForCausalLM, GenerationConfig

    model = BloomForCausalLM.from_pretrained(out_dir / "generate" / "model").eval()
    model.config.pad_token_id = None  # what transformers 5's BloomConfig() writes
    with (
        torch.no_grad()
    ):  # a token the first prompt's greedy continuation emits early becomes stop id 2
        first = model.generate(
            torch.tensor(PROMPTS[0]),
            max_length=MAX_LENGTH,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(PROMPTS[0][0]) :].tolist()
    second = next(t for t in first[2:] if t != 2)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=[2, second], pad_token_id=None
    )
    out = out_dir / "hf5_no_tokenizer"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    assert not (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["pad_token_id"] is None

    cases = []
    reloaded = BloomForCausalLM.from_pretrained(out).eval()
    for rows in PROMPTS:
        ids = np.array(rows)
        mask = (ids != 3) | (np.arange(ids.shape[1]) >= np.argmax(ids != 3, axis=1)[:, None])
        with torch.no_grad():  # the saved generation_config's defaults: greedy, stop at [2, second]
            seq = reloaded.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask.astype(np.int64)),
                max_length=MAX_LENGTH,
            )
        cases.append(
            {
                "token_ids": rows,
                "padding_mask": mask.astype(int).tolist(),
                "max_length": MAX_LENGTH,
                "sequences": seq.tolist(),
            }
        )
    stopped = [
        any(t == second for t in row[len(c["token_ids"][0]) :])
        for c in cases
        for row in c["sequences"]
    ]
    assert any(stopped), "no row stopped at the second stop id: the golden case would not test it"
    meta = {
        "part": "hfdirs",
        "eos_token_id": [2, second],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cases": cases,
    }
    (out_dir / "hf5_cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"wrote {out} and hf5_cases.json: stop ids [2, {second}], {sum(stopped)} row(s) stop at {second}"
    )
