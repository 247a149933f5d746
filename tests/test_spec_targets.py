"""ValuationSpec validation, JSON round trip and fingerprint; target resolution errors."""

from __future__ import annotations

import pytest
import torch
from helpers import GPT2_TARGETS, add_lora, make_bert, make_gpt2

from tip_hf import GradientSketcher, TargetError, ValuationSpec


def test_json_round_trip(tmp_path):
    spec = ValuationSpec(
        targets=["transformer.h.*.mlp.c_fc"],
        proj_dim=512,
        seed=9,
        damping=0.3,
        task="causal_lm",
        proj_factor=32,
        proj_blocks=2,
        preconditioner="fisher",
    )
    assert ValuationSpec.from_json(spec.to_json()) == spec
    spec.save(tmp_path / "spec.json")
    assert ValuationSpec.load(tmp_path / "spec.json") == spec
    assert ValuationSpec.from_json(ValuationSpec().to_json()) == ValuationSpec()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"proj_dim": 0}, "proj_dim"),
        ({"seed": -1}, "seed"),
        ({"task": "regression"}, "task"),
        ({"targets": []}, "targets"),
        ({"damping": 0.0}, "damping"),
        ({"proj_blocks": 0}, "proj_blocks"),
        ({"preconditioner": "kfac"}, "preconditioner"),
        ({"projection_version": "kron-fold-0"}, "projection version"),
    ],
)
def test_invalid_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ValuationSpec(**kwargs)


def test_unknown_json_field_is_refused():
    with pytest.raises(ValueError, match="Unknown ValuationSpec fields"):
        ValuationSpec.from_dict({"proj_dim": 8, "proj_dims": 9})


def test_fingerprint_binds_weights_settings_and_config():
    model = make_gpt2()
    spec = ValuationSpec(targets=GPT2_TARGETS, proj_dim=64)
    fp = spec.fingerprint(model)
    assert fp == spec.fingerprint(make_gpt2()) and len(fp) == 64
    assert fp == ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, damping=5.0, preconditioner="fisher").fingerprint(
        model
    )
    assert fp != ValuationSpec(targets=GPT2_TARGETS, proj_dim=64, seed=1).fingerprint(model)
    assert fp != ValuationSpec(targets=GPT2_TARGETS, proj_dim=128).fingerprint(model)
    assert fp != ValuationSpec(targets=GPT2_TARGETS[:1], proj_dim=64).fingerprint(model)
    other = make_gpt2()
    with torch.no_grad():
        other.transformer.wte.weight[3, 0] += 1e-3  # a non-target weight still changes gradients
    assert fp != spec.fingerprint(other)


def test_pattern_matching_nothing_lists_modules():
    with pytest.raises(TargetError, match=r"matched no module.*transformer\.h\.0\.attn\.c_attn"):
        GradientSketcher(make_gpt2(), ValuationSpec(targets=["transformer.h.*.mlp.nope"]))


def test_unhookable_module_is_named():
    with pytest.raises(TargetError, match=r"LayerNorm.*Supported module types"):
        GradientSketcher(make_gpt2(), ValuationSpec(targets=["transformer.h.*.ln_1"]))


def test_lora_on_plain_model_explains_fix():
    with pytest.raises(TargetError, match="get_peft_model"):
        GradientSketcher(make_bert(), ValuationSpec(targets="lora", task="sequence_classification"))


def test_patterns_relative_to_base_model_under_peft():
    model = add_lora(make_gpt2(), ["c_attn"])
    sketcher = GradientSketcher(
        model, ValuationSpec(targets=["transformer.h.*.mlp.c_fc", "transformer.h.0.attn.c_attn"])
    )
    names = [t.name for t, _ in sketcher.targets]
    assert names == [
        "base_model.model.transformer.h.0.attn.c_attn.base_layer",
        "base_model.model.transformer.h.0.mlp.c_fc",
        "base_model.model.transformer.h.1.mlp.c_fc",
    ]


def test_target_order_follows_the_model():
    sketcher = GradientSketcher(
        make_gpt2(), ValuationSpec(targets=["transformer.h.*.mlp.c_proj", "transformer.h.0.attn.*"])
    )
    names = [t.name for t, _ in sketcher.targets]
    assert names == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_proj",
    ]
