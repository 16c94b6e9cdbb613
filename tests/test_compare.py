"""`compare`, the port checker, and float64 as a model dtype (the truth `compare` measures against).

The ports judged here are real: transformers itself (float32, bfloat16, and float32 with a 1e-3
error injected into one block by a forward hook), and minibloom's own `dump`. Nothing is checked
against a hand-typed number: every expectation is an exit status, a verdict or a located key.
"""

import json

import numpy as np
import pytest
from conftest import GOLDEN, assert_close, requires_numba, requires_transformers

from minibloom.causal_lm import BloomCausalLM
from minibloom.cli import main
from minibloom.compare import alias, forward_order
from minibloom.io.safetensors import write_safetensors

MODEL = GOLDEN / "model" / "h6_prefix"  # float32, 2 blocks, 6 heads, hidden 48, vocabulary 300
IDS = np.array([[5, 17, 250, 3, 99, 42, 7, 7, 120, 1], [0, 0, 0, 5, 17, 250, 3, 99, 42, 7]])
MASK = np.ones(IDS.shape, dtype=bool)
MASK[1, :3] = False  # row 1 left-padded: pads are not compared
INJECTED = 1e-3


def _hf_model(dtype):
    """transformers' BloomForCausalLM on MODEL in `dtype` (eager attention)."""
    import torch
    from transformers import BloomForCausalLM

    return BloomForCausalLM.from_pretrained(
        MODEL, dtype=getattr(torch, dtype), attn_implementation="eager"
    ).eval()


def _hf_run(model, ids=IDS, mask=MASK):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            output_hidden_states=True,
            use_cache=False,
        )
    return [h.double().numpy() for h in out.hidden_states], out.logits.double().numpy()


def _hf_dump(path, dtype="float32", inject_block=None):
    """What a porter would write: transformers' hidden states (HF order, aliases) and logits."""
    model = _hf_model(dtype)
    if inject_block is not None:

        def scale_output(module, inputs, output):  # a 1e-3 relative error in the block's output
            if isinstance(output, tuple):
                return (output[0] * (1 + INJECTED),) + tuple(output[1:])
            return output * (1 + INJECTED)

        model.transformer.h[inject_block].register_forward_hook(scale_output)
    hidden, logits = _hf_run(model)
    arrays = {f"hidden_states.{i}": h.astype(np.float32) for i, h in enumerate(hidden)}
    np.savez(path, token_ids=IDS, padding_mask=MASK, logits=logits.astype(np.float32), **arrays)
    return path


def _compare(capsys, path, *flags):
    rc = main(["compare", str(path), "--preset", str(MODEL), "--json", *flags])
    out = capsys.readouterr().out
    return rc, json.loads(out)


# --- float64 as a model dtype -------------------------------------------------------------------


def test_float64_model_runs_in_float64_and_agrees_with_float32():
    lm64 = BloomCausalLM.from_preset(MODEL, preprocessor=None, dtype="float64")
    lm32 = BloomCausalLM.from_preset(MODEL, preprocessor=None)
    assert {p.dtype for p in lm64.backbone.params.values()} == {np.dtype(np.float64)}
    for name, p in lm64.backbone.params.items():  # widening is exact
        np.testing.assert_array_equal(p, lm32.backbone.params[name])
    h64 = lm64.backbone.forward(IDS, MASK).hidden
    assert h64.dtype == np.float64
    assert_close(
        "float32 vs float64",
        lm32.backbone.forward(IDS, MASK).hidden,
        h64,
        1e-5,
        where=MASK[..., None],
    )


@requires_numba
def test_float64_forward_is_the_same_with_the_fast_tier(monkeypatch):
    lm64 = BloomCausalLM.from_preset(MODEL, preprocessor=None, dtype="float64")
    monkeypatch.setenv("MINIBLOOM_NUMBA", "1")
    fast = lm64.backbone.forward(IDS, MASK, output_hidden_states=True)
    monkeypatch.setenv("MINIBLOOM_NUMBA", "0")
    ref = lm64.backbone.forward(IDS, MASK, output_hidden_states=True)
    for i, (a, b) in enumerate(zip(fast.hidden_states, ref.hidden_states)):
        assert a.dtype == np.float64
        assert_close(f"hidden_states[{i}] fast vs reference", a, b, 1e-13, where=MASK[..., None])


@requires_transformers
def test_float64_minibloom_equals_float64_transformers(monkeypatch):
    """To 1e-12 relative. transformers' BLOOM attention computes its softmax in float32 whatever
    the model dtype (`F.softmax(..., dtype=torch.float32)`): unpatched, it differs from float64 by
    ~2e-7 and, with left padding, turns float64's most negative mask value into -inf and gives NaN.
    This test lets that softmax run in float64."""
    import torch
    import torch.nn.functional as torch_f
    from transformers.models.bloom import modeling_bloom

    class Float64Softmax:
        def __getattr__(self, name):
            return getattr(torch_f, name)

        @staticmethod
        def softmax(x, dim=-1, dtype=None):
            return torch_f.softmax(
                x, dim=dim, dtype=torch.float64 if x.dtype == torch.float64 else dtype
            )

    monkeypatch.setattr(modeling_bloom, "F", Float64Softmax())
    hidden, logits = _hf_run(_hf_model("float64"))
    lm64 = BloomCausalLM.from_preset(MODEL, preprocessor=None, dtype="float64")
    fwd = lm64.backbone.forward(IDS, MASK, output_hidden_states=True)
    ours = fwd.hidden_states + [lm64.backbone.logits(fwd.hidden)]
    for i, (a, b) in enumerate(zip(ours, hidden + [logits])):
        scale = float(np.abs(b[MASK]).max())
        assert_close(f"float64 output {i}", a, b, 1e-12 * scale, where=MASK[..., None])


# --- compare judging real ports -----------------------------------------------------------------


@requires_transformers
def test_transformers_float32_passes(tmp_path, capsys):
    rc, report = _compare(capsys, _hf_dump(tmp_path / "hf.npz"))
    assert rc == 0 and report["ok"] and report["first_divergence"] is None
    assert [r["key"] for r in report["keys"]] == [
        "word_embeddings_layernorm",
        "h.0.output",
        "ln_f",
        "logits",
    ]
    assert all(r["ok"] and r["max_abs"] > 0 for r in report["keys"])  # a real, nonzero difference


@requires_transformers
def test_injected_error_is_caught_and_located(tmp_path, capsys):
    rc, report = _compare(capsys, _hf_dump(tmp_path / "bad.npz", inject_block=0))
    assert rc == 1 and not report["ok"]
    first = report["first_divergence"]
    assert first["key"] == "h.0.output" and first["previous_good"] == "word_embeddings_layernorm"
    assert any(op.startswith("h.0:") for op in first["ops"])
    row = next(r for r in report["keys"] if r["key"] == "h.0.output")
    assert row["relative"] >= 0.5 * INJECTED  # the injected error is what is measured
    rc = main(["compare", str(tmp_path / "bad.npz"), "--preset", str(MODEL)])
    text = capsys.readouterr().out
    assert rc == 1 and "first divergence: h.0.output" in text


@requires_transformers
@pytest.mark.parametrize("dtype, precision", [("bfloat16", "bf16"), ("float16", "fp16")])
def test_transformers_16_bit_passes_at_its_precision_and_fails_at_fp32(
    tmp_path, capsys, dtype, precision
):
    path = _hf_dump(tmp_path / "half.npz", dtype=dtype)
    rc, report = _compare(capsys, path, "--precision", precision)
    assert rc == 0 and report["ok"], report
    rc, report = _compare(capsys, path, "--precision", "fp32")
    assert rc == 1 and report["first_divergence"]["key"] == "word_embeddings_layernorm"


def test_our_dump_passes_every_key_and_reads_safetensors(tmp_path, capsys):
    """minibloom's own dump (every key) is a float32 port; as .safetensors too (ids stored as F32)."""
    out = tmp_path / "ours.npz"
    assert (
        main(["dump", str(MODEL), "--prompt", "x", "--ids", "5,17,250,3,99", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    rc, report = _compare(capsys, out)
    assert rc == 0 and [r["key"] for r in report["keys"]] == [k for k, _ in forward_order(2)]
    with np.load(out) as f:
        arrays = {k: f[k].astype(np.float32) for k in f.files if k != "meta"}
    write_safetensors(tmp_path / "ours.safetensors", arrays, "F32")
    rc, report = _compare(capsys, tmp_path / "ours.safetensors")
    assert rc == 0 and len(report["keys"]) == len(forward_order(2))
    arrays["h.1.mlp.gelu"] = arrays["h.1.mlp.gelu"] * np.float32(1 + INJECTED)  # a wrong GeLU
    write_safetensors(tmp_path / "gelu.safetensors", arrays, "F32")
    rc, report = _compare(capsys, tmp_path / "gelu.safetensors")
    first = report["first_divergence"]
    assert (
        rc == 1
        and first["key"] == "h.1.mlp.gelu"
        and first["previous_good"] == "h.1.mlp.dense_h_to_4h"
    )


def test_hidden_state_aliases_follow_hf_order():
    assert [alias(f"hidden_states.{i}", 3) for i in range(5)] == [
        "word_embeddings_layernorm", "h.0.output", "h.1.output", "ln_f", None,
    ]  # fmt: skip


# --- bad input: exit 2, one line ----------------------------------------------------------------


def _good_arrays():
    lm = BloomCausalLM.from_preset(MODEL, preprocessor=None)
    fwd = lm.backbone.forward(IDS, MASK)
    return {"token_ids": IDS, "padding_mask": MASK, "ln_f": fwd.hidden}


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda a: a.pop("token_ids"), "no 'token_ids'"),
        (lambda a: a.update(ln_f=a["ln_f"][:, :-1]), "ln_f: expected shape (2, 10, 48)"),
        (lambda a: a.update(padding_mask=a["padding_mask"][:1]), "padding_mask: expected shape (2, 10)"),
        (lambda a: a.update({"h.0.attn_out": a["ln_f"], "hidden_states.9": a["ln_f"]}), "unknown keys h.0.attn_out, hidden_states.9"),
        (lambda a: a.update({"hidden_states.2": a["ln_f"]}), "are both 'ln_f'"),
        (lambda a: a.update(token_ids=a["token_ids"] + 1000), "token_ids: expected ids in [0, 300)"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, edit, words):
    arrays = _good_arrays()
    assert main(["compare", str(_save(tmp_path, arrays)), "--preset", str(MODEL)]) == 0
    capsys.readouterr()
    edit(arrays)
    assert main(["compare", str(_save(tmp_path, arrays)), "--preset", str(MODEL)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minibloom: error: ") and "\n" not in err and words in err, err


def test_unreadable_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "port.npz"
    bad.write_bytes(b"not a zip file")
    assert main(["compare", str(bad), "--preset", str(MODEL)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable .npz" in err and "\n" not in err
    assert main(["compare", str(tmp_path / "absent.npz"), "--preset", str(MODEL)]) == 2


def test_nonfinite_port_values_are_outside_and_json_stays_strict(tmp_path, capsys):
    arrays = _good_arrays()
    arrays["ln_f"][0, 4, 7] = np.nan
    rc, report = _compare(capsys, _save(tmp_path, arrays))
    assert (
        rc == 1
        and report["first_divergence"]["key"] == "ln_f"
        and report["keys"][0]["max_abs"] == "inf"
    )


def test_integer_safetensors_inputs_get_a_hint(tmp_path, capsys):
    from minibloom.io.safetensors import write_safetensors as write

    path = tmp_path / "port.safetensors"
    write(path, {"ln_f": _good_arrays()["ln_f"]}, "F32")
    header = b'{"token_ids":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    assert main(["compare", str(path), "--preset", str(MODEL)]) == 2
    err = capsys.readouterr().err.strip()
    assert "I64" in err and "store token_ids / padding_mask as F32" in err and "\n" not in err


def _save(tmp_path, arrays):
    path = tmp_path / "port.npz"
    np.savez(path, **arrays)
    return path


@requires_transformers
def test_parity_truth_shows_both_against_float64(capsys):
    assert main(["parity", str(MODEL), "--ids", "5,17,250,3,99", "--truth"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("quantity"))
    assert "hf-vs-f64" in lines[header] and "ours-vs-f64" in lines[header]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    for row in rows:  # both float32 runs are within float32 rounding of the truth, and nonzero
        hf, ours, nearer = float(row[-3]), float(row[-2]), row[-1]
        assert 0 < hf < 1e-5 and 0 < ours < 1e-5
        assert nearer == ("hf" if hf < ours else "ours" if ours < hf else "same")
