"""Golden part "generate": a briefly trained tiny BLOOM and what transformers `generate` makes of it.

A randomly initialised model repeats one token under greedy or beam search, which would make
sequence parity trivially true. So this part first trains, in torch:

1. a small byte-level BPE tokenizer with BLOOM's pipeline (HF `tokenizers`: the Split regex,
   ByteLevel without its regex, `<unk> <s> </s> <pad>` at ids 0-3), on the text below;
2. a tiny BloomForCausalLM (L=2, C=64, H=4) for a few hundred AdamW steps on that text, one
   sentence per document with `</s>` after each, so that the model also learns to stop.

It writes tests/golden/generate/:

    model/        save_pretrained (config.json, model.safetensors) + tokenizer.json
    cases.json    prompts (ids), settings and HF outputs: greedy ids for single prompts and for a
                  left-padded batch, with and without a stop token; beam search sequences and
                  sequences_scores for several num_beams / length_penalty / early_stopping values

and checks that the greedy continuations are varied (many distinct tokens) and that some stop
early on `</s>`, so the parity tests cannot pass trivially. Runs in about a minute on 2 cores.
"""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED = 1234
VOCAB_SIZE = 400
STEPS = 300
SEQ = 48
BATCH = 16

# Short sentences (one document each). Accents, CJK and an emoji make multi-byte characters that
# BPE splits across tokens, which the UTF-8-safe streaming test needs.
SENTENCES = """\
The cat sat on the mat and looked at the door.
The dog ran to the park and played with a red ball.
A small bird sang in the tree near the river.
The children walked to school in the morning rain.
My friend made a cup of tea and read the news.
The sun rose over the hills and the farm woke up.
We cooked rice and beans for dinner on Friday.
She wrote a letter to her brother in the city.
The old man fixed the bike in his garden.
The train left the station at seven o'clock.
Le chat dort près de la fenêtre ouverte.
Café au lait et crème brûlée pour le déjeuner.
Das Mädchen läuft schnell über die Straße.
我们在学校学习中文和数学。
今天天气很好，我们去公园。
The robot 🤖 waved at the happy crowd 🎉 today.
Numbers like 12, 345 and 6789 appear in the report.
The river flows past the mill and into the sea.
A farmer grows wheat, corn and potatoes every year.
The teacher asked the class a simple question.
""".splitlines()

PROMPTS = [
    "The cat",
    "The dog ran to",
    "A small bird",
    "We cooked",
    "Le chat",
    "我们在",
    "The robot",
    "The train left the",
]
BATCHES = [
    ["The cat", "The dog ran to the park", "We cooked rice"],
    ["Le chat dort", "The", "The teacher asked"],
]


def _train_tokenizer(tokenizers):
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(" ?[^(\\s|[.,!?…。，、।۔،])]+"), behavior="isolated", invert=False
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return tok


def _train_model(torch, transformers, stream_ids, vocab):
    torch.manual_seed(SEED)
    config = transformers.BloomConfig(
        vocab_size=vocab,
        hidden_size=64,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model = transformers.BloomForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    data = torch.tensor(stream_ids, dtype=torch.long)
    g = torch.Generator().manual_seed(SEED)
    for step in range(STEPS):
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=g)
        x = torch.stack([data[s : s + SEQ] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    return model


def _left_pad(rows, pad):
    P = max(len(r) for r in rows)
    ids = [[pad] * (P - len(r)) + r for r in rows]
    mask = [[0] * (P - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


def make(out_dir: Path) -> None:
    import numpy as np
    import tokenizers
    import torch
    import transformers
    from transformers import GenerationConfig

    torch.set_num_threads(2)
    out = out_dir / "generate"
    shutil.rmtree(out, ignore_errors=True)
    (out / "model").mkdir(parents=True)

    tok = _train_tokenizer(tokenizers)
    vocab = tok.get_vocab_size()
    stream_ids = []
    for s in SENTENCES:
        stream_ids += tok.encode(s).ids + [2]
    model = _train_model(torch, transformers, stream_ids * 3, vocab)
    model.save_pretrained(out / "model", safe_serialization=True)
    # generate() fills unset settings from model.generation_config (eos 2): clear it so that
    # eos_token_id=None below really means "no stop token"
    model.generation_config.eos_token_id = None
    tok.save(str(out / "model" / "tokenizer.json"))

    def run(ids, mask, **kw):
        cfg = GenerationConfig(
            bos_token_id=1,
            pad_token_id=3,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )
        with torch.no_grad():
            res = model.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                generation_config=cfg,
            )
        return res

    cases = []
    encode = [tok.encode(p).ids for p in PROMPTS]
    for prompt, ids in zip(PROMPTS, encode):
        for eos in (None, 2):
            res = run([ids], [[1] * len(ids)], max_length=len(ids) + 20, eos_token_id=eos)
            cases.append(
                dict(
                    kind="greedy",
                    text=[prompt],
                    token_ids=[ids],
                    padding_mask=[[1] * len(ids)],
                    max_length=len(ids) + 20,
                    eos_token_id=eos,
                    sequences=res.sequences.tolist(),
                )
            )
    for batch in BATCHES:
        ids, mask = _left_pad([tok.encode(p).ids for p in batch], 3)
        for eos in (None, 2):
            res = run(ids, mask, max_length=len(ids[0]) + 16, eos_token_id=eos)
            cases.append(
                dict(
                    kind="greedy",
                    text=batch,
                    token_ids=ids,
                    padding_mask=mask,
                    max_length=len(ids[0]) + 16,
                    eos_token_id=eos,
                    sequences=res.sequences.tolist(),
                )
            )
    beam_settings = [
        dict(num_beams=3, length_penalty=1.0, early_stopping=False),
        dict(num_beams=4, length_penalty=0.5, early_stopping=True),
        dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
        dict(num_beams=2, length_penalty=-1.0, early_stopping=False),
    ]
    for i, setting in enumerate(beam_settings):
        for prompt in PROMPTS[i::4][:2]:
            ids = tok.encode(prompt).ids
            res = run(
                [ids],
                [[1] * len(ids)],
                max_length=len(ids) + 16,
                eos_token_id=2,
                num_return_sequences=setting["num_beams"],
                **setting,
            )
            cases.append(
                dict(
                    kind="beam",
                    text=[prompt],
                    token_ids=[ids],
                    padding_mask=[[1] * len(ids)],
                    max_length=len(ids) + 16,
                    eos_token_id=2,
                    **setting,
                    sequences=res.sequences.tolist(),
                    sequences_scores=res.sequences_scores.tolist(),
                )
            )
    ids, mask = _left_pad([tok.encode(p).ids for p in BATCHES[0]], 3)
    for eos in (None, 2):
        res = run(
            ids,
            mask,
            max_length=len(ids[0]) + 12,
            eos_token_id=eos,
            num_beams=3,
            num_return_sequences=3,
        )
        cases.append(
            dict(
                kind="beam",
                text=BATCHES[0],
                token_ids=ids,
                padding_mask=mask,
                max_length=len(ids[0]) + 12,
                eos_token_id=eos,
                num_beams=3,
                length_penalty=1.0,
                early_stopping=False,
                sequences=res.sequences.tolist(),
                sequences_scores=res.sequences_scores.tolist(),
            )
        )

    # The parity tests are only meaningful if the outputs vary and sometimes stop on </s>.
    greedy_new = [
        tok_id
        for c in cases
        if c["kind"] == "greedy"
        for row in c["sequences"]
        for tok_id in row[len(c["token_ids"][0]) :]
    ]
    distinct = len(set(greedy_new))
    stopped = sum(
        1
        for c in cases
        if c["kind"] == "greedy"
        and c["eos_token_id"] == 2
        and len(c["sequences"][0]) < c["max_length"]
    )
    no_stop = [c for c in cases if c["kind"] == "greedy" and c["eos_token_id"] is None]
    assert all(len(c["sequences"][0]) == c["max_length"] for c in no_stop), (
        "eos_token_id=None runs must reach max_length"
    )
    assert any(2 in row for c in no_stop for row in c["sequences"]), (
        "no run without a stop id goes past a </s>"
    )
    print(
        f"  greedy continuations: {distinct} distinct tokens; {stopped} stop-token cases ended early"
    )
    assert distinct >= 40, (
        f"greedy outputs too repetitive ({distinct} distinct tokens): train longer"
    )
    assert stopped >= 3, "too few greedy runs stopped on </s>"
    greedy_of = {
        (c["text"][0], c["eos_token_id"]): c["sequences"][0]
        for c in cases
        if c["kind"] == "greedy" and len(c["text"]) == 1
    }
    differ = sum(
        1
        for c in cases
        if c["kind"] == "beam"
        and len(c["text"]) == 1
        and c["sequences"][0] != greedy_of[(c["text"][0], 2)]
    )
    print(f"  beam search differs from greedy in {differ} single-prompt cases")
    assert differ >= 2, (
        "beam search equals greedy almost everywhere: the beam cases would not test much"
    )

    meta = dict(
        part="generate",
        seed=SEED,
        steps=STEPS,
        versions=dict(
            torch=torch.__version__,
            transformers=transformers.__version__,
            tokenizers=tokenizers.__version__,
            numpy=np.__version__,
        ),
        cases=cases,
    )
    tmp = out / "cases.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out / "cases.json")
    print(f"  wrote {out} ({len(cases)} cases)")


if __name__ == "__main__":
    make(Path(__file__).resolve().parent.parent / "tests" / "golden")
