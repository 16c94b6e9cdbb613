"""Golden part "controls": transformers `generate` with HF's generation controls (logits processors,
stop strings, max_new_tokens, num_return_sequences) on the briefly trained model of part "generate".

It writes tests/golden/controls.json: for greedy and beam search, each control alone and a few
combinations, on single prompts and a left-padded batch: the inputs, the HF keyword arguments and
HF's sequences (plus sequences_scores for beam search). The banned ids (bad_words_ids,
suppress_tokens) are picked from the uncontrolled greedy output, so that each control changes the
output; the part checks that every control changes the uncontrolled output in at least two
cases (most change many more), so the parity tests cannot pass trivially. Needs part "generate" first (tests/golden/generate/model). Seconds on 2 cores.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["The cat", "A small bird", "We cooked", "The train left the"]
BATCH = ["The cat", "The dog ran to the park", "We cooked rice"]
PAD, EOS = 3, 2
NEW = 20  # max_new_tokens of the cases


def _left_pad(rows):
    P = max(len(r) for r in rows)
    return (
        [[PAD] * (P - len(r)) + r for r in rows],
        [[0] * (P - len(r)) + [1] * len(r) for r in rows],
    )


def make(out_dir: Path) -> None:
    import tokenizers
    import torch
    import transformers
    from transformers import BloomForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    torch.set_num_threads(2)
    model_dir = out_dir / "generate" / "model"
    model = BloomForCausalLM.from_pretrained(str(model_dir)).eval()
    model.generation_config.eos_token_id = None  # only what each case passes
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def run(ids, mask, **kw):
        cfg = GenerationConfig(
            bos_token_id=1,
            pad_token_id=PAD,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
        extra = {"tokenizer": hf_tok} if "stop_strings" in kw else {}
        with torch.no_grad():
            return model.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                generation_config=cfg,
                **extra,
            )

    singles = [([tok.encode(p).ids], [[1] * len(tok.encode(p).ids)], [p]) for p in PROMPTS]
    batch = (*_left_pad([tok.encode(p).ids for p in BATCH]), BATCH)

    def controls_for(ids, mask):
        """The controls of one prompt set, with banned ids taken from its uncontrolled output."""
        P = len(ids[0])
        plain = run(ids, mask, max_new_tokens=NEW, eos_token_id=EOS).sequences[0].tolist()[P:]
        new = [t for t in plain if t not in (EOS, PAD)] or [5]
        one = new[min(1, len(new) - 1)]
        pair = new[:2] if len(new) >= 2 else [new[0], new[0]]
        text = tok.decode(new[2:4]) if len(new) >= 4 else tok.decode(new[:1])
        return [
            dict(repetition_penalty=1.3),
            dict(repetition_penalty=0.8),
            dict(no_repeat_ngram_size=2),
            dict(no_repeat_ngram_size=3),
            dict(bad_words_ids=[[one], pair]),
            dict(suppress_tokens=[one, new[0]]),
            dict(min_new_tokens=12),
            dict(repetition_penalty=1.2, no_repeat_ngram_size=3, min_new_tokens=6),
            dict(repetition_penalty=1.5, bad_words_ids=[pair], suppress_tokens=[one]),
            dict(stop_strings=[text.strip() or text]),
        ]

    def case(search, text, ids, mask, kw, res, changed):
        out = dict(kind=search, text=text, token_ids=ids, padding_mask=mask, kwargs=kw)
        out["sequences"] = res.sequences.tolist()
        if search == "beam":
            out["sequences_scores"] = res.sequences_scores.tolist()
        out["changed"] = changed
        return out

    cases = []
    for ids, mask, text in singles + [batch]:
        plain = {}  # (search, eos) -> the uncontrolled sequences, run once for all controls
        for control in controls_for(ids, mask):
            for search in ("greedy", "beam"):
                # without a stop id the model runs past </s> into the next sentence and repeats
                # itself: that is where the penalties have work to do
                for eos in (EOS, None):
                    beam = dict(num_beams=3, num_return_sequences=3) if search == "beam" else {}
                    plain_kw = dict(max_new_tokens=NEW, eos_token_id=eos, **beam)
                    if (search, eos) not in plain:
                        plain[search, eos] = run(ids, mask, **plain_kw).sequences.tolist()
                    kw = dict(plain_kw, **control)
                    res = run(ids, mask, **kw)
                    changed = res.sequences.tolist() != plain[search, eos]
                    cases.append(case(search, text, ids, mask, kw, res, changed))
    # max_new_tokens on a left-padded batch without a stop id: every row gets exactly that many
    ids, mask, text = batch
    for search, beam in (("greedy", {}), ("beam", dict(num_beams=4, num_return_sequences=2))):
        kw = dict(max_new_tokens=7, eos_token_id=None, **beam)
        cases.append(case(search, text, ids, mask, kw, run(ids, mask, **kw), True))

    changed = sum(c["changed"] for c in cases)
    print(f"  {len(cases)} cases, {changed} differ from the uncontrolled run")
    by_control = {}
    for c in cases:
        key = tuple(
            sorted(
                set(c["kwargs"])
                - {"max_new_tokens", "eos_token_id", "num_beams", "num_return_sequences"}
            )
        )
        by_control.setdefault(key, []).append(c["changed"])
    for key, flags in sorted(by_control.items()):
        print(f"    {'+'.join(key) or 'max_new_tokens'}: {sum(flags)}/{len(flags)} changed")
        assert sum(flags) >= 2, f"{key} changes (almost) no output: its cases would test little"
    meta = dict(
        part="controls",
        versions=dict(torch=torch.__version__, transformers=transformers.__version__),
        cases=cases,
    )
    tmp = out_dir / "controls.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out_dir / "controls.json")
    print(f"  wrote {out_dir / 'controls.json'}")


if __name__ == "__main__":
    make(Path(__file__).resolve().parent.parent / "tests" / "golden")
